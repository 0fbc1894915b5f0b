#include "common/rpc/client.h"

#include <openssl/rand.h>

#include <algorithm>
#include <condition_variable>
#include <cstdlib>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/posix_file.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"

namespace coldfuse::rpc {
namespace {

void SetDeadline(grpc::ClientContext* ctx, const CallOptions& options) {
  ctx->set_deadline(std::chrono::system_clock::now() + options.deadline);
}

// Whether a failed transfer is worth resuming at once (the connection or server went away).
bool Retryable(const absl::Status& s) { return Retryability(s) == RetryWhen::kNow; }

std::vector<uint64_t> Lengths(const v1::Manifest& m) {
  std::vector<uint64_t> out;
  for (const auto& t : m.tensors()) out.push_back(ByteLength(t).value_or(0));
  return out;
}

// Writes header, chunks from (tensor, offset) on, and the trailer (SHA-256 of every
// byte from the start, so bytes before the resume point are read and hashed, not sent).
// A failed write means the server ended the call; its status comes from Finish().
// What a transfer stopped by CallOptions::cancel returns.
absl::Status UploadStopped() {
  return absl::CancelledError(
      "the upload was stopped (a signal); what the server stored is kept: sending the same "
      "contribution again resumes it");
}
absl::Status DownloadStopped() {
  return absl::CancelledError(
      "the download was stopped (a signal); it starts again where it stopped next time");
}

bool Cancelled(const CallOptions& options) {
  return options.cancel != nullptr && options.cancel->load();
}

// Cancels `ctx` from a helper thread once options.cancel becomes true, so that a call
// blocked in a read or in a write (a peer that stopped reading) stops too. No thread
// without options.cancel. Destroy it before `ctx`.
class CancelWatcher {
 public:
  CancelWatcher(grpc::ClientContext* ctx, const CallOptions& options) {
    if (options.cancel == nullptr) return;
    thread_ = std::thread([this, ctx, flag = options.cancel] {
      std::unique_lock<std::mutex> l(mu_);
      while (!done_) {
        if (flag->load()) {
          ctx->TryCancel();
          return;
        }
        cv_.wait_for(l, std::chrono::milliseconds(50));
      }
    });
  }
  ~CancelWatcher() {
    if (!thread_.joinable()) return;
    {
      std::lock_guard<std::mutex> l(mu_);
      done_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  CancelWatcher(const CancelWatcher&) = delete;
  CancelWatcher& operator=(const CancelWatcher&) = delete;

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  bool done_ = false;
  std::thread thread_;
};

template <typename Request>
absl::Status WriteTensorStream(grpc::ClientContext* ctx, grpc::ClientWriter<Request>* writer,
                               Request first, const v1::Manifest& manifest, TensorSource* source,
                               uint32_t start_tensor, uint64_t start_offset, TransferStats* stats,
                               const CallOptions& options) {
  const std::vector<uint64_t> lengths = Lengths(manifest);
  uint64_t grand_total = 0;
  for (uint64_t n : lengths) grand_total += n;
  Sha256 sha;
  uint64_t total = 0;
  std::string buf;
  bool ok = writer->Write(first);
  Request request;
  for (uint32_t t = 0; ok && t < lengths.size(); ++t) {
    for (uint64_t off = 0; ok && off < lengths[t]; off += kMaxChunkBytes) {
      if (Cancelled(options)) {
        ctx->TryCancel();
        writer->Finish();
        return UploadStopped();
      }
      const uint64_t len = std::min<uint64_t>(kMaxChunkBytes, lengths[t] - off);
      RETURN_IF_ERROR(source->Read(t, off, len, &buf));
      if (buf.size() != len) {
        return absl::InternalError(absl::StrCat("source gave ", buf.size(), " bytes for tensor #",
                                                t, " at ", off, "; wanted ", len));
      }
      sha.Update(buf);
      total += len;
      if (t < start_tensor || (t == start_tensor && off < start_offset)) continue;
      request.Clear();
      auto* chunk = request.mutable_chunk();
      chunk->set_tensor_index(t);
      chunk->set_offset(off);
      chunk->set_data(std::move(buf));
      ok = writer->Write(request);
      if (ok && stats != nullptr) stats->bytes_on_wire += len;
      if (ok && options.on_progress) options.on_progress(total, grand_total);
    }
  }
  if (ok) {
    request.Clear();
    request.mutable_trailer()->set_sha256(sha.Finish());
    request.mutable_trailer()->set_total_bytes(total);
    writer->Write(request);
  }
  writer->WritesDone();
  return absl::OkStatus();
}

// Whether to try again after a failed attempt, and waiting until then (RetryOptions).
class Retrier {
 public:
  Retrier(std::shared_ptr<grpc::Channel> channel, const RetryOptions& retry)
      : channel_(std::move(channel)), retry_(retry) {}

  // An attempt moved data: a later failure starts a new streak.
  void Progress() {
    failing_ = false;
    streak_ = 0;
  }

  // After attempt number `attempts` (1-based) failed with a kNow error.
  bool Again(int attempts) {
    if (attempts >= std::max(1, retry_.max_attempts)) return false;
    const auto now = std::chrono::steady_clock::now();
    if (!failing_) {
      failing_ = true;
      failing_since_ = now;
    }
    const auto left = retry_.ride_out - (now - failing_since_);
    if (left <= std::chrono::milliseconds(0)) return false;
    auto wait = retry_.initial_backoff * (1 << std::min(streak_++, 10));
    wait = std::min(
        {wait, retry_.max_backoff, std::chrono::duration_cast<std::chrono::milliseconds>(left)});
    std::this_thread::sleep_for(wait);
    // Returns as soon as the channel is connected (at once if it is): a server that is
    // back gets the next attempt within the channel's reconnect backoff (<= 1 s).
    const auto until = std::chrono::system_clock::now() +
                       std::chrono::duration_cast<std::chrono::milliseconds>(left - wait);
    channel_->WaitForConnected(until);
    return true;
  }

 private:
  std::shared_ptr<grpc::Channel> channel_;
  const RetryOptions& retry_;
  bool failing_ = false;
  std::chrono::steady_clock::time_point failing_since_{};
  int streak_ = 0;
};

// Collects a pulled base in memory.
class MemorySink final : public TensorSink {
 public:
  absl::Status Begin(uint64_t, const std::string&, const v1::Manifest& manifest) override {
    if (!tensors_.empty()) return absl::OkStatus();  // resumed: same manifest
    for (const auto& spec : manifest.tensors()) {
      HostTensor t;
      t.spec = spec;
      ASSIGN_OR_RETURN(uint64_t len, ByteLength(spec));
      t.data.reserve(len);
      tensors_.push_back(std::move(t));
    }
    return absl::OkStatus();
  }
  absl::Status Write(uint32_t tensor, uint64_t offset, absl::string_view data) override {
    std::string& d = tensors_[tensor].data;
    if (offset != d.size()) return absl::InternalError("out-of-order write to memory sink");
    d.append(data.data(), data.size());
    return absl::OkStatus();
  }
  std::vector<HostTensor> Take() { return std::move(tensors_); }

 private:
  std::vector<HostTensor> tensors_;
};

}  // namespace

RetryWhen Retryability(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
    case absl::StatusCode::kAborted:
    case absl::StatusCode::kCancelled:
      return RetryWhen::kNow;
    case absl::StatusCode::kFailedPrecondition:
    case absl::StatusCode::kResourceExhausted:
      return RetryWhen::kLater;
    default:
      return RetryWhen::kNever;
  }
}

absl::Status HostTensorSource::Read(uint32_t tensor, uint64_t offset, uint64_t length,
                                    std::string* out) {
  if (tensor >= tensors_.size() || offset > tensors_[tensor].data.size() ||
      length > tensors_[tensor].data.size() - offset) {
    return absl::OutOfRangeError("read past the end of a host tensor");
  }
  out->assign(tensors_[tensor].data, offset, length);
  return absl::OkStatus();
}

std::string NewUploadId() {
  unsigned char raw[16];
  if (RAND_bytes(raw, sizeof(raw)) != 1) std::abort();
  return ToHex(absl::string_view(reinterpret_cast<char*>(raw), sizeof(raw)));
}

grpc::ChannelArguments ClientChannelArguments() {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(4 << 20);
  args.SetInt(GRPC_ARG_INITIAL_RECONNECT_BACKOFF_MS, 100);
  args.SetInt(GRPC_ARG_MAX_RECONNECT_BACKOFF_MS, 1000);
  // The server allows a ping every 20 s (GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_...).
  args.SetInt(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  args.SetInt(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  return args;
}

absl::Status RetryIdempotent(const std::shared_ptr<grpc::Channel>& channel,
                             const CallOptions& options, const RetryOptions& retry,
                             const std::function<absl::Status(grpc::ClientContext*)>& call) {
  Retrier retrier(channel, retry);
  for (int attempt = 1;; ++attempt) {
    grpc::ClientContext ctx;
    SetDeadline(&ctx, options);
    absl::Status st = call(&ctx);
    if (st.ok() || !Retryable(st) || !retrier.Again(attempt)) return st;
  }
}

absl::StatusOr<v1::GetRoundResponse> GetRound(const std::shared_ptr<grpc::Channel>& channel,
                                              std::chrono::milliseconds deadline,
                                              const RetryOptions& retry) {
  auto stub = v1::Contributor::NewStub(channel);
  v1::GetRoundResponse r;
  RETURN_IF_ERROR(RetryIdempotent(channel, {deadline}, retry, [&](grpc::ClientContext* ctx) {
    return FromGrpc(stub->GetRound(ctx, {}, &r), "GetRound");
  }));
  return r;
}

absl::StatusOr<v1::Evaluation> RecordEvaluation(const std::shared_ptr<grpc::Channel>& channel,
                                                const v1::Evaluation& evaluation,
                                                std::chrono::milliseconds deadline,
                                                const RetryOptions& retry) {
  auto stub = v1::Contributor::NewStub(channel);
  v1::RecordEvaluationRequest q;
  *q.mutable_evaluation() = evaluation;
  v1::Evaluation r;
  RETURN_IF_ERROR(RetryIdempotent(channel, {deadline}, retry, [&](grpc::ClientContext* ctx) {
    return FromGrpc(stub->RecordEvaluation(ctx, q, &r), "RecordEvaluation");
  }));
  return r;
}

std::shared_ptr<grpc::Channel> ConnectInsecure(const std::string& target) {
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(),
                                   ClientChannelArguments());
}

absl::Status CheckTarget(const std::string& target) {
  // gRPC's own forms (dns:///host:port, unix:path, ipv4:..., ...) are taken as they are.
  if (absl::StrContains(target, ":/") || absl::StartsWith(target, "unix:") ||
      absl::StartsWith(target, "ipv4:") || absl::StartsWith(target, "ipv6:")) {
    return absl::OkStatus();
  }
  const size_t colon = target.rfind(':');
  uint32_t port = 0;
  const bool bracketed_v6 = !target.empty() && target[0] == '[';
  if (colon == std::string::npos || colon == 0 || (bracketed_v6 && target[colon - 1] != ']') ||
      (!bracketed_v6 && target.find(':') != colon) ||
      !absl::SimpleAtoi(target.substr(colon + 1), &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--server=", target, " is not HOST:PORT: give the port too, e.g. ", target.substr(0, colon),
        ":7878 (coldfused's default port; IPv6: [addr]:port)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const std::string& target,
                                                       const ConnectOptions& options) {
  RETURN_IF_ERROR(CheckTarget(target));
  if (options.tls.ca_file.empty()) {
    if (!options.token.empty()) {
      return absl::InvalidArgumentError(
          "a token is only sent over TLS: pass --tls_ca (the CA that signed the server's "
          "certificate)");
    }
    return ConnectInsecure(target);
  }
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> creds,
                   MakeClientCredentials(options.tls));
  if (!options.token.empty()) {
    creds = grpc::CompositeChannelCredentials(creds, grpc::AccessTokenCredentials(options.token));
  }
  grpc::ChannelArguments args = ClientChannelArguments();
  if (!options.tls.server_name.empty()) args.SetSslTargetNameOverride(options.tls.server_name);
  return grpc::CreateCustomChannel(target, creds, args);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> ConnectWithFiles(const std::string& target,
                                                                const ClientTlsOptions& tls,
                                                                const std::string& token_file) {
  ConnectOptions options;
  options.tls = tls;
  ASSIGN_OR_RETURN(options.token, LoadToken(token_file));
  return Connect(target, options);
}

absl::StatusOr<std::string> LoadToken(const std::string& token_file) {
  std::string token;
  if (!token_file.empty()) {
    ASSIGN_OR_RETURN(token, ReadFileToString(token_file));
  } else if (const char* env = std::getenv("COLDFUSE_TOKEN"); env != nullptr) {
    token = env;
  }
  return std::string(absl::StripAsciiWhitespace(token));
}

absl::StatusOr<v1::GetRoundResponse> GetRound(const std::shared_ptr<grpc::Channel>& channel,
                                              std::chrono::milliseconds deadline,
                                              const std::string& contributor) {
  auto stub = v1::Contributor::NewStub(channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + deadline);
  v1::GetRoundRequest request;
  request.set_contributor(contributor);
  v1::GetRoundResponse r;
  RETURN_IF_ERROR(FromGrpc(stub->GetRound(&ctx, request, &r), "GetRound"));
  return r;
}

absl::Status FromGrpc(const grpc::Status& s, absl::string_view call) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(call, ": ", s.error_message()));
}

absl::StatusOr<PullResult> PullBaseTo(const std::shared_ptr<grpc::Channel>& channel,
                                      std::optional<uint64_t> version, TensorSink* sink,
                                      const CallOptions& options, const RetryOptions& retry,
                                      TransferStats* stats) {
  auto stub = v1::Contributor::NewStub(channel);
  PullResult out;
  bool have_header = false;
  std::vector<uint64_t> lengths;
  uint64_t total_bytes = 0;  // of the base, once the header is in
  uint32_t tensor = 0;       // resume position: everything before it was delivered
  uint64_t offset = 0;
  Sha256 sha;
  absl::Status last;
  Retrier retrier(channel, retry);
  for (int attempt = 1;; ++attempt) {
    if (stats != nullptr) ++stats->attempts;
    const uint64_t bytes_before = out.bytes;
    grpc::ClientContext ctx;
    SetDeadline(&ctx, options);
    v1::PullBaseRequest request;
    if (have_header) {
      request.set_base_version(out.version);  // pin the version on resume
      request.set_start_tensor(tensor);
      request.set_start_offset(offset);
    } else if (version.has_value()) {
      request.set_base_version(*version);
    }
    CancelWatcher watcher(&ctx, options);
    auto reader = stub->PullBase(&ctx, request);
    v1::PullBaseResponse message;
    absl::Status problem;
    bool done = false;
    while (problem.ok() && !done && reader->Read(&message)) {
      if (Cancelled(options)) {
        problem = DownloadStopped();
        break;
      }
      switch (message.part_case()) {
        case v1::PullBaseResponse::kHeader: {
          const auto& h = message.header();
          if (have_header) {
            if (h.base_version() != out.version ||
                h.manifest().SerializeAsString() != out.manifest.SerializeAsString()) {
              problem = absl::DataLossError("PullBase: the resumed stream is another base");
            }
            break;
          }
          problem = ValidateManifest(h.manifest());
          if (!problem.ok()) break;
          out.version = h.base_version();
          out.model_spec = h.model_spec();
          out.manifest = h.manifest();
          lengths = Lengths(out.manifest);
          for (uint64_t n : lengths) total_bytes += n;
          problem = sink->Begin(out.version, out.model_spec, out.manifest);
          have_header = true;
          while (tensor < lengths.size() && lengths[tensor] == 0) ++tensor;
          break;
        }
        case v1::PullBaseResponse::kChunk: {
          const auto& c = message.chunk();
          while (tensor < lengths.size() && offset == lengths[tensor]) {
            ++tensor;
            offset = 0;
          }
          if (!have_header || c.tensor_index() != tensor || c.offset() != offset ||
              c.data().empty() || c.data().size() > lengths[tensor] - offset) {
            problem = absl::DataLossError(
                absl::StrCat("PullBase: unexpected chunk (tensor #", c.tensor_index(), " offset ",
                             c.offset(), "); expected tensor #", tensor, " offset ", offset));
            break;
          }
          problem = sink->Write(tensor, offset, c.data());
          sha.Update(c.data());
          offset += c.data().size();
          out.bytes += c.data().size();
          if (stats != nullptr) stats->bytes_on_wire += c.data().size();
          if (options.on_progress) options.on_progress(out.bytes, total_bytes);
          while (tensor < lengths.size() && offset == lengths[tensor]) {
            ++tensor;
            offset = 0;
          }
          break;
        }
        case v1::PullBaseResponse::kTrailer: {
          const auto& tr = message.trailer();
          if (!have_header || tensor < lengths.size()) {
            problem = absl::DataLossError("PullBase: trailer before the last byte");
          } else if (tr.total_bytes() != out.bytes || tr.sha256() != sha.Finish()) {
            problem = absl::DataLossError(
                "PullBase: checksum or size mismatch; the download was corrupted");
          } else {
            out.sha256 = tr.sha256();
            done = true;
          }
          break;
        }
        default:
          problem = absl::DataLossError("PullBase: empty message from the server");
      }
    }
    if (problem.ok() && Cancelled(options)) {
      problem = DownloadStopped();
    }
    if (!problem.ok()) {
      ctx.TryCancel();
      reader->Finish();
      return problem;
    }
    while (reader->Read(&message)) {
    }
    last = FromGrpc(reader->Finish(), "PullBase");
    if (done) return out;  // every byte arrived and the checksum matched
    if (last.ok()) last = absl::UnavailableError("PullBase: stream ended without a trailer");
    if (!Retryable(last)) return last;
    if (out.bytes > bytes_before) retrier.Progress();
    if (!retrier.Again(attempt)) return last;
  }
}

absl::StatusOr<PulledBase> PullBase(const std::shared_ptr<grpc::Channel>& channel,
                                    std::optional<uint64_t> version, const CallOptions& options) {
  MemorySink sink;
  ASSIGN_OR_RETURN(PullResult r, PullBaseTo(channel, version, &sink, options));
  PulledBase out;
  out.version = r.version;
  out.model_spec = r.model_spec;
  out.sha256 = r.sha256;
  out.tensors = sink.Take();
  return out;
}

absl::StatusOr<v1::ContributionReceipt> PushContribution(
    const std::shared_ptr<grpc::Channel>& channel, const v1::ContributionHeader& header,
    TensorSource* source, const CallOptions& options, const RetryOptions& retry,
    TransferStats* stats) {
  auto stub = v1::Contributor::NewStub(channel);
  const bool resumable = !header.upload_id().empty();
  absl::Status last;
  RetryOptions once = retry;
  if (!resumable) once.max_attempts = 1;  // resending from the start could send it twice
  Retrier retrier(channel, once);
  uint64_t stored_before = 0;
  for (int attempt = 1;; ++attempt) {
    if (attempt > 1 && !retrier.Again(attempt - 1)) return last;
    if (Cancelled(options)) {
      return UploadStopped();
    }
    if (stats != nullptr) ++stats->attempts;
    v1::ContributionHeader h = header;
    // Ask where to continue: the server may hold part of this upload from an earlier
    // attempt (this process's or another's).
    if (resumable) {
      grpc::ClientContext q;
      SetDeadline(&q, {std::chrono::milliseconds(10000)});
      v1::GetUploadRequest req;
      req.set_upload_id(header.upload_id());
      req.set_contributor(header.contributor());
      v1::UploadProgress progress;
      absl::Status st = FromGrpc(stub->GetUpload(&q, req, &progress), "GetUpload");
      if (st.ok()) {
        h.set_resume_tensor(progress.tensor_index());
        h.set_resume_offset(progress.offset());
        if (progress.bytes_stored() > stored_before) retrier.Progress();
        stored_before = progress.bytes_stored();
      } else if (!absl::IsNotFound(st)) {
        last = st;
        if (!Retryable(st)) return st;
        continue;
      }
    }
    grpc::ClientContext ctx;
    SetDeadline(&ctx, options);
    CancelWatcher watcher(&ctx, options);
    v1::ContributionReceipt receipt;
    auto writer = stub->PushContribution(&ctx, &receipt);
    v1::PushContributionRequest first;
    *first.mutable_header() = h;
    RETURN_IF_ERROR(WriteTensorStream(&ctx, writer.get(), std::move(first), header.manifest(),
                                      source, h.resume_tensor(), h.resume_offset(), stats,
                                      options));
    last = FromGrpc(writer->Finish(), "PushContribution");
    if (last.ok()) return receipt;
    if (Cancelled(options)) {
      return UploadStopped();
    }
    if (!Retryable(last)) return last;
  }
}

absl::StatusOr<v1::ContributionReceipt> PushContribution(
    const std::shared_ptr<grpc::Channel>& channel, const v1::ContributionHeader& header,
    const std::vector<HostTensor>& tensors, const CallOptions& options) {
  RETURN_IF_ERROR(CheckTensorSizes(tensors));
  HostTensorSource source(tensors);
  return PushContribution(channel, header, &source, options);
}

absl::StatusOr<v1::InitModelResponse> InitModel(const std::shared_ptr<grpc::Channel>& channel,
                                                const v1::InitHeader& header, TensorSource* source,
                                                const CallOptions& options) {
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options);
  v1::InitModelResponse response;
  auto writer = stub->InitModel(&ctx, &response);
  v1::InitModelRequest first;
  *first.mutable_header() = header;
  RETURN_IF_ERROR(WriteTensorStream(&ctx, writer.get(), std::move(first), header.manifest(), source,
                                    0, 0, nullptr, options));
  RETURN_IF_ERROR(FromGrpc(writer->Finish(), "InitModel"));
  return response;
}

absl::StatusOr<v1::InitModelResponse> InitModel(const std::shared_ptr<grpc::Channel>& channel,
                                                const v1::InitHeader& header,
                                                const std::vector<HostTensor>& tensors,
                                                const CallOptions& options) {
  RETURN_IF_ERROR(CheckTensorSizes(tensors));
  HostTensorSource source(tensors);
  return InitModel(channel, header, &source, options);
}

}  // namespace coldfuse::rpc
