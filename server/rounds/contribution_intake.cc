#include "server/rounds/contribution_intake.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <cmath>
#include <optional>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/int8_delta.h"
#include "common/logging.h"
#include "common/names.h"
#include "common/printable.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "server/fusion/element_reader.h"
#include "server/fusion/robust.h"

namespace coldfuse::rounds {
namespace {

constexpr int64_t kDayMs = 24 * 3600 * 1000LL;

absl::Status CheckHeader(const v1::ContributionHeader& h) {
  RETURN_IF_ERROR(CheckName("contributor", h.contributor(), /*allow_empty=*/false));
  RETURN_IF_ERROR(CheckName("task", h.task(), /*allow_empty=*/true));
  if (!h.upload_id().empty()) {
    bool ok = h.upload_id().size() >= 8 && h.upload_id().size() <= 64;
    for (char c : h.upload_id()) {
      ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                  c == '-' || c == '_');
    }
    if (!ok) return absl::InvalidArgumentError("upload_id must be 8 to 64 of A-Z a-z 0-9 _ -");
  }
  if (h.encoding() != v1::ENCODING_UNSPECIFIED && h.encoding() != v1::FULL &&
      h.encoding() != v1::DELTA && h.encoding() != v1::DELTA_INT8) {
    return absl::InvalidArgumentError("unknown encoding: use FULL, DELTA or DELTA_INT8");
  }
  if (h.encoding() == v1::DELTA_INT8) {
    RETURN_IF_ERROR(CheckInt8BlockSize(h.int8_block_size()));
  } else if (h.int8_block_size() != 0) {
    return absl::InvalidArgumentError(
        "int8_block_size is set, but the encoding is not DELTA_INT8: leave it 0");
  }
  if (h.num_examples() == 0) {
    return absl::InvalidArgumentError(
        "num_examples is 0: give the number of training examples the contribution used");
  }
  if (h.metrics_size() > 64) {
    return absl::InvalidArgumentError("more than 64 metrics in one contribution");
  }
  for (const auto& [k, v] : h.metrics()) {
    RETURN_IF_ERROR(CheckName("metric name", k, /*allow_empty=*/false));
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("metric '", k, "' is not finite"));
    }
  }
  return absl::OkStatus();
}

// The header without its resume position: what must match between an upload's streams.
// Deterministic serialization: map fields (metrics) otherwise come out in any order.
std::string HeaderKey(v1::ContributionHeader h) {
  h.clear_resume_tensor();
  h.clear_resume_offset();
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    h.SerializeToCodedStream(&coded);
  }
  return out;
}

// Names, shapes and order must match the base; dtypes may be any float type. A DELTA_INT8
// contribution sends each tensor's scales and then its int8 values (int8_delta.h).
absl::Status CheckContributionManifest(const v1::ContributionHeader& h, const v1::Manifest& base) {
  const v1::Manifest& got = h.manifest();
  if (h.encoding() == v1::DELTA_INT8) {
    ASSIGN_OR_RETURN(v1::Manifest want, Int8DeltaManifest(base, h.int8_block_size()));
    if (got.tensors_size() != want.tensors_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("a DELTA_INT8 manifest lists ", want.tensors_size(),
                       " tensors (each of the base's ", base.tensors_size(),
                       " as NAME#scale, F32, then NAME, I8); this one lists ", got.tensors_size()));
    }
    return CheckManifestMatches(want, got);
  }
  v1::Manifest same_dtypes = got;
  for (int i = 0; i < same_dtypes.tensors_size() && i < base.tensors_size(); ++i) {
    if (!IsFloatDType(got.tensors(i).dtype())) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", got.tensors(i).name(), "' has no float dtype: send F32, F16, BF16 or F64"));
    }
    same_dtypes.mutable_tensors(i)->set_dtype(base.tensors(i).dtype());
  }
  return CheckManifestMatches(base, same_dtypes);
}

// A connection that broke (or a client that went away) keeps a resumable upload.
bool IsBrokenConnection(const absl::Status& why) {
  return why.ok() || absl::IsCancelled(why) || absl::IsUnavailable(why) ||
         absl::IsDeadlineExceeded(why);
}

}  // namespace

// One attached upload stream. The sink runs on the thread that reads the stream; the
// commit and abort steps run after it, on the executor. Never shared between streams.
struct ContributionIntake::Stream {
  v1::ContributionHeader header;
  uint64_t id = 0;
  OpenRound open;
  // The round its chunks are stored under: open.number for a new upload, the session's
  // for a resumed one (whose round may have closed since).
  uint64_t upload_round = 0;
  bool resuming = false;
  // How far the stored data goes (the session's header and id are not rewritten per
  // chunk).
  storage::StoredUpload::Progress progress;
  // Per tensor, made on first use: the base's elements for a contribution sent in
  // another dtype (another chunk grid).
  std::vector<std::unique_ptr<fusion::ElementReader>> base;
  // DELTA_INT8, per base tensor, made on first use: its stored scales.
  std::vector<std::unique_ptr<fusion::ElementReader>> int8;
};

ContributionIntake::ContributionIntake(storage::Store* store, RoundManager* rounds,
                                       const IntakeOptions& options, Clock* clock, uint64_t next_id)
    : store_(store), rounds_(rounds), options_(options), clock_(clock), next_id_(next_id) {}

absl::StatusOr<std::unique_ptr<ContributionIntake>> ContributionIntake::Create(
    storage::Store* store, RoundManager* rounds, const storage::LoadedState& state,
    const IntakeOptions& options, Clock* clock) {
  std::unique_ptr<ContributionIntake> intake(
      new ContributionIntake(store, rounds, options, clock, state.next_contribution_id));
  std::vector<storage::StoredUpload> stale;
  {
    absl::MutexLock l(&intake->mu_);
    for (const auto& u : state.uploads) {
      if (rounds->IsAcceptableBase(u.header.base_version())) {
        Session& s = intake->sessions_[u.header.upload_id()];
        s.round = u.upload_round;
        s.id = u.contribution_id;
        s.contributor = u.header.contributor();
        s.upload = u;
      } else {
        stale.push_back(u);
      }
    }
  }
  for (const auto& u : stale) {
    intake->DropUpload(u.header.upload_id(), u.upload_round, u.contribution_id);
  }
  intake->listener_ = rounds->AddListener([raw = intake.get()] { raw->DropStaleSessions(); });
  return intake;
}

ContributionIntake::~ContributionIntake() { rounds_->RemoveListener(listener_); }

void ContributionIntake::AuditRejection(const std::string& actor, const absl::Status& why) {
  uint64_t dropped = 0;
  if (!rejections_.Allow(actor, clock_->NowUnixMs(), &dropped)) return;
  std::string detail = absl::StrCat(absl::StatusCodeToString(why.code()), ": ",
                                    PrintableTruncated(why.message(), 768));
  if (dropped > 0) {
    absl::StrAppend(&detail, " [", dropped,
                    " earlier rejections of this contributor not recorded: rate limit]");
  }
  CF_LOG(INFO) << "rejected an upload from '" << PrintableTruncated(actor, 128) << "': " << detail;
  // Unsynced: a rejection changes no state, and must not cost the server an fsync.
  absl::Status st = store_->AppendAudit({MakeAudit(actor, "contribution_rejected", detail)});
  if (!st.ok()) CF_LOG(ERROR) << "cannot write audit record: " << st;
}

absl::Status ContributionIntake::CheckQuotaLocked(const v1::ContributionHeader& header,
                                                  uint64_t round, uint64_t bytes) {
  const auto key = std::make_pair(round, header.contributor());
  if (uploads_started_[key] >= options_.max_uploads_per_round) {
    return absl::ResourceExhaustedError(absl::StrCat("contributor '", header.contributor(),
                                                     "' started ", uploads_started_[key],
                                                     " uploads in round ", round, "; the limit is ",
                                                     options_.max_uploads_per_round, " per round"));
  }
  if (options_.max_bytes_per_day > 0) {
    const int64_t day = clock_->NowUnixMs() / kDayMs;
    const uint64_t used = bytes_by_day_[{day, header.contributor()}];
    if (bytes > options_.max_bytes_per_day || used > options_.max_bytes_per_day - bytes) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "contributor '", header.contributor(), "' has ", used, " bytes accepted today; ", bytes,
          " more would pass the daily limit of ", options_.max_bytes_per_day));
    }
  }
  ++uploads_started_[key];
  return absl::OkStatus();
}

absl::Status ContributionIntake::AdmitLocked(const v1::ContributionHeader& header,
                                             const OpenRound& open, Stream* stream) {
  const std::string& uid = header.upload_id();
  auto slot = uid.empty() ? sessions_.end() : sessions_.find(uid);
  if (slot != sessions_.end()) {
    Session& s = slot->second;
    if (s.contributor != header.contributor()) {
      return absl::PermissionDeniedError(absl::StrCat(
          "upload '", uid, "' belongs to another contributor; choose another upload_id"));
    }
    if (s.streaming) {
      return absl::AbortedError(
          absl::StrCat("upload '", uid, "' is still streaming; retry in a moment"));
    }
    if (HeaderKey(s.upload.header) != HeaderKey(header)) {
      return absl::FailedPreconditionError(
          absl::StrCat("the header differs from interrupted upload '", uid,
                       "'; resume with the same header, or start over with a new upload_id"));
    }
    if (header.resume_tensor() != s.upload.progress.next_tensor ||
        header.resume_offset() != s.upload.progress.next_offset) {
      // The server may have stored more since the client asked: ask again.
      return absl::AbortedError(absl::StrCat("upload '", uid, "' resumes at tensor #",
                                             s.upload.progress.next_tensor, " offset ",
                                             s.upload.progress.next_offset, " (ask GetUpload)"));
    }
    s.streaming = true;
    stream->id = s.id;
    stream->upload_round = s.round;
    stream->progress = s.upload.progress;
    stream->resuming = true;
    return absl::OkStatus();
  }
  if (header.resume_tensor() != 0 || header.resume_offset() != 0) {
    return absl::NotFoundError(absl::StrCat("the server holds nothing of upload '", uid,
                                            "': start it from the beginning"));
  }
  ASSIGN_OR_RETURN(uint64_t sent_bytes, TotalBytes(header.manifest()));
  RETURN_IF_ERROR(CheckQuotaLocked(header, open.number, sent_bytes));
  stream->id = next_id_++;
  stream->upload_round = open.number;
  if (!uid.empty()) {
    Session s;
    s.round = open.number;
    s.id = stream->id;
    s.contributor = header.contributor();
    s.streaming = true;
    s.upload.header = header;
    s.upload.contribution_id = stream->id;
    s.upload.upload_round = open.number;
    sessions_[uid] = std::move(s);
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<TensorUpload>> ContributionIntake::Begin(
    const v1::ContributionHeader& header) {
  auto stream = std::make_shared<Stream>();
  stream->header = header;
  absl::Status st = [&]() -> absl::Status {
    RETURN_IF_ERROR(CheckHeader(header));
    ASSIGN_OR_RETURN(stream->open, rounds_->CheckAdmission(header));
    RETURN_IF_ERROR(CheckContributionManifest(header, stream->open.base_manifest));
    absl::MutexLock l(&mu_);
    return AdmitLocked(header, stream->open, stream.get());
  }();
  if (!st.ok()) {
    if (!absl::IsAlreadyExists(st) && !absl::IsAborted(st)) {
      AuditRejection(header.contributor(), st);
    }
    return st;
  }
  if (!header.upload_id().empty() && !stream->resuming) {
    storage::StoredUpload session;
    session.header = header;
    session.contribution_id = stream->id;
    session.upload_round = stream->upload_round;
    absl::Status put = store_->PutUpload(session);
    if (!put.ok()) {
      (void)Abort(stream, TensorUpload::EndKind::kRejected, put);
      return put;
    }
  }
  stream->base.resize(header.manifest().tensors_size());
  stream->int8.resize(header.manifest().tensors_size());
  // Each chunk (as sent): reject non-finite values, add to the update's norm, store,
  // and (resumable uploads) record how far the stored data goes.
  auto sink = [this, stream](uint32_t t, uint64_t c, absl::string_view data) -> absl::Status {
    const v1::TensorSpec& spec = stream->header.manifest().tensors(t);
    const uint32_t int8_block = stream->header.int8_block_size();
    // The base tensor this entry belongs to (DELTA_INT8: two entries per tensor).
    const v1::TensorSpec& bspec = stream->open.base_manifest.tensors(int8_block > 0 ? t / 2 : t);
    const uint64_t round = stream->upload_round;
    const size_t esize = DTypeSize(spec.dtype());
    const uint64_t n = data.size() / esize;
    const bool delta = stream->header.encoding() == v1::DELTA;
    uint64_t first = 0;
    if (fusion::CountNonFinite(spec.dtype(), data, &first) > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", spec.name(), "' holds a NaN or infinity at element ",
          c * (kChunkBytes / esize) + first, " (read as ", DTypeName(spec.dtype()),
          "): a diverged fine-tuning run cannot be fused; if training was fine, check that "
          "the data really is ",
          DTypeName(spec.dtype()), " as the manifest says"));
    }
    double sum_sq = 0;
    if (int8_block > 0 && t % 2 == 0) {
      // Scales: finite (checked above) and not negative.
      std::vector<double> scales(n);
      DecodeToDouble(v1::F32, data.data(), n, scales.data());
      for (uint64_t i = 0; i < n; ++i) {
        if (std::signbit(scales[i])) {
          return absl::InvalidArgumentError(absl::StrCat(
              "scale ", c * (kChunkBytes / esize) + i, " of '", bspec.name(), "' is ", scales[i],
              ": an 8-bit delta's scales are max|d| / 127, never negative"));
        }
      }
    } else if (int8_block > 0) {
      // Values: the update is q·s, with the scales stored before them (this stream, or
      // the one it resumes).
      auto& reader = stream->int8[t / 2];
      if (reader == nullptr) {
        ASSIGN_OR_RETURN(uint64_t elements, NumElements(bspec));
        reader = std::make_unique<fusion::ElementReader>(
            v1::F32, (elements + int8_block - 1) / int8_block,
            [store = store_, round, id = stream->id, t](uint64_t chunk) {
              return store->GetContributionChunk(round, id, t - 1, chunk);
            });
      }
      const uint64_t begin = c * kChunkBytes;  // one byte per element
      const uint64_t first = begin / int8_block, last = (begin + n - 1) / int8_block;
      std::vector<double> values(n), scales(last - first + 1);
      DecodeToDouble(v1::I8, data.data(), n, values.data());
      RETURN_IF_ERROR(reader->Read(first, scales.size(), scales.data()));
      for (uint64_t i = 0; i < n; ++i) {
        const double u = values[i] * scales[(begin + i) / int8_block - first];
        sum_sq += u * u;
      }
    } else if (!delta && spec.dtype() == bspec.dtype()) {
      // Sent as the base is stored: the same chunk grid, one pass over both buffers.
      // The update's norm is against the base it was trained from.
      ASSIGN_OR_RETURN(std::string base, store_->GetBaseChunk(stream->open.trained_from, t, c,
                                                              /*verify=*/false));
      if (base.size() != data.size()) {
        return absl::DataLossError(
            absl::StrCat("base chunk ", c, " of '", spec.name(), "' has the wrong size"));
      }
      fusion::DeltaNormAccumulator acc;
      acc.Add(spec.dtype(), base, data);
      sum_sq = acc.Norm() * acc.Norm();
    } else {
      std::vector<double> values(n), base(n);  // base stays 0 for a DELTA
      DecodeToDouble(spec.dtype(), data.data(), n, values.data());
      if (!delta) {
        auto& reader = stream->base[t];
        if (reader == nullptr) {
          ASSIGN_OR_RETURN(uint64_t elements, NumElements(bspec));
          reader = std::make_unique<fusion::ElementReader>(
              bspec.dtype(), elements,
              [store = store_, v = stream->open.trained_from, t](uint64_t chunk) {
                return store->GetBaseChunk(v, t, chunk, /*verify=*/false);
              });
        }
        RETURN_IF_ERROR(reader->Read(c * (kChunkBytes / esize), n, base.data()));
      }
      for (uint64_t i = 0; i < n; ++i) {
        const double d = values[i] - base[i];
        sum_sq += d * d;
      }
    }
    RETURN_IF_ERROR(store_->PutContributionChunk(round, stream->id, t, c, data));
    storage::StoredUpload::Progress& p = stream->progress;
    p.sum_sq += sum_sq;
    p.bytes_stored += data.size();
    const uint64_t end = c * kChunkBytes + data.size();
    if (end == *ByteLength(spec)) {
      p.next_tensor = t + 1;
      p.next_offset = 0;
    } else {
      p.next_tensor = t;
      p.next_offset = end;
    }
    const std::string& uid = stream->header.upload_id();
    if (!uid.empty()) {
      RETURN_IF_ERROR(store_->PutUploadProgress(uid, p));
      absl::MutexLock l(&mu_);  // GetUpload reports live progress
      auto it = sessions_.find(uid);
      if (it != sessions_.end()) it->second.upload.progress = p;
    }
    return absl::OkStatus();
  };
  auto upload = std::make_unique<TensorUpload>(
      header.manifest(), sink,
      [this, stream](const std::string& sha, uint64_t bytes) { return Commit(stream, sha, bytes); },
      [this, stream](TensorUpload::EndKind kind, const absl::Status& why) {
        return Abort(stream, kind, why);
      });
  if (stream->resuming) {
    // Re-hash what is stored, so the trailer still checks every byte from the start.
    const storage::StoredUpload::Progress& p = stream->progress;
    RETURN_IF_ERROR(upload->ResumeAt(
        p.next_tensor, p.next_offset,
        [store = store_, round = stream->upload_round, id = stream->id](uint32_t t, uint64_t c) {
          return store->GetContributionChunk(round, id, t, c);
        }));  // on failure the abort step marks the session idle again (or drops it)
  }
  return upload;
}

absl::StatusOr<UploadResult> ContributionIntake::Commit(const std::shared_ptr<Stream>& stream,
                                                        const std::string& sha256, uint64_t bytes) {
  const v1::ContributionHeader& header = stream->header;
  v1::ContributionInfo info;
  info.set_id(stream->id);
  info.set_contributor(header.contributor());
  info.set_task(header.task());
  info.set_num_examples(header.num_examples());
  *info.mutable_metrics() = header.metrics();
  info.set_sha256(sha256);
  info.set_bytes(bytes);
  info.set_received_unix_ms(clock_->NowUnixMs());
  info.set_delta_norm(std::sqrt(stream->progress.sum_sq));
  info.set_state(v1::ACCEPTED);
  info.set_encoding(header.encoding() == v1::ENCODING_UNSPECIFIED ? v1::FULL : header.encoding());
  info.set_int8_block_size(header.int8_block_size());
  *info.mutable_manifest() = header.manifest();
  info.set_trained_from_base(header.base_version());
  info.set_upload_round(stream->upload_round);
  // Make this upload's chunks durable before the synced record write points at them.
  RETURN_IF_ERROR(store_->FlushContributions());
  ASSIGN_OR_RETURN(const Accepted at, rounds_->Accept(info, header.upload_id()));
  {
    absl::MutexLock l(&mu_);
    if (!header.upload_id().empty()) sessions_.erase(header.upload_id());
    bytes_by_day_[{clock_->NowUnixMs() / kDayMs, header.contributor()}] += bytes;
  }
  UploadResult r;
  r.id = stream->id;
  r.round = at.round;
  r.base_version = at.base_version;
  r.sha256 = sha256;
  r.bytes = bytes;
  return r;
}

absl::Status ContributionIntake::Abort(const std::shared_ptr<Stream>& stream,
                                       TensorUpload::EndKind kind, const absl::Status& why) {
  const std::string& uid = stream->header.upload_id();
  const uint64_t round = stream->upload_round;
  const uint64_t id = stream->id;
  // A broken connection, a transient failure or a stream without its trailer keeps a
  // resumable upload; a rejected one is removed.
  const bool keep =
      !uid.empty() && (kind != TensorUpload::EndKind::kRejected || IsBrokenConnection(why));
  if (keep) {
    storage::StoredUpload::Progress at;
    {
      absl::MutexLock l(&mu_);
      auto it = sessions_.find(uid);
      if (it != sessions_.end()) {
        it->second.streaming = false;
        at = it->second.upload.progress;
      }
    }
    // A close that ran meanwhile could not drop the session while it streamed.
    if (rounds_->IsAcceptableBase(stream->header.base_version())) {
      CF_LOG(INFO) << "upload " << uid << " interrupted ("
                   << (why.ok() ? std::string("stream dropped") : std::string(why.message()))
                   << "); kept for resumption at tensor #" << at.next_tensor << " offset "
                   << at.next_offset;
      if (kind == TensorUpload::EndKind::kNoTrailer) {
        return absl::InvalidArgumentError(
            absl::StrCat("stream ended before its trailer; the ", at.bytes_stored,
                         " bytes stored so far are kept: resume upload '", uid, "' at tensor #",
                         at.next_tensor, " offset ", at.next_offset,
                         " (GetUpload says where) and end the stream with its trailer"));
      }
      return why;
    }
    DropStaleSessions();
    if (kind == TensorUpload::EndKind::kNoTrailer) {
      return absl::InvalidArgumentError(absl::StrCat(
          "stream ended before its trailer, and base v", stream->header.base_version(),
          " can no longer be contributed from (the rounds moved on past --max_staleness): "
          "nothing was stored; pull the new base and contribute again"));
    }
    return why;
  }
  if (!uid.empty()) {
    CF_LOG(INFO) << "upload " << uid << " dropped: " << why;
    absl::MutexLock l(&mu_);
    sessions_.erase(uid);
  } else if (kind == TensorUpload::EndKind::kBroken) {
    // Nothing was kept of an upload without an upload_id whose connection broke: the
    // attempt does not count, or a contributor on a flaky network would be locked out of
    // the round by its own retries.
    absl::MutexLock l(&mu_);
    auto it = uploads_started_.find({stream->open.number, stream->header.contributor()});
    if (it != uploads_started_.end() && it->second > 0) --it->second;
  }
  DropUpload(uid, round, id);
  if (!why.ok() && !absl::IsAlreadyExists(why) && kind == TensorUpload::EndKind::kRejected) {
    AuditRejection(stream->header.contributor(), why);
  }
  if (kind == TensorUpload::EndKind::kNoTrailer) {
    return absl::InvalidArgumentError("stream ended before its trailer; nothing was stored");
  }
  return why;
}

void ContributionIntake::DropStaleSessions() {
  const std::optional<uint64_t> open = rounds_->OpenRoundNumber();
  std::vector<Session> stale;
  {
    absl::MutexLock l(&mu_);
    // Upload counts of closed rounds are never consulted again.
    uploads_started_.erase(uploads_started_.begin(),
                           uploads_started_.lower_bound({open.value_or(0), std::string()}));
    for (auto it = sessions_.begin(); it != sessions_.end();) {
      // A session still streaming fails at its commit and removes itself.
      if (!it->second.streaming &&
          !rounds_->IsAcceptableBase(it->second.upload.header.base_version())) {
        stale.push_back(std::move(it->second));
        it = sessions_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& s : stale) DropUpload(s.upload.header.upload_id(), s.round, s.id);
}

void ContributionIntake::DropUpload(const std::string& upload_id, uint64_t round, uint64_t id) {
  // The session first: chunks without a session or record are removed by Store::Load,
  // while a session without its chunks could never resume.
  absl::Status st = upload_id.empty() ? absl::OkStatus() : store_->DeleteUpload(upload_id);
  if (st.ok()) st = store_->DeleteContributionData(round, id);
  if (!st.ok()) CF_LOG(ERROR) << "cannot remove upload " << id << ": " << st;
}

absl::StatusOr<v1::UploadProgress> ContributionIntake::GetUpload(
    const std::string& upload_id, const std::string& contributor) const {
  absl::MutexLock l(&mu_);
  auto it = sessions_.find(upload_id);
  if (it == sessions_.end() || it->second.contributor != contributor) {
    return absl::NotFoundError(absl::StrCat("the server holds nothing of upload '", upload_id,
                                            "': start it from the beginning"));
  }
  v1::UploadProgress p;
  p.set_upload_id(upload_id);
  p.set_round(it->second.round);
  p.set_tensor_index(it->second.upload.progress.next_tensor);
  p.set_offset(it->second.upload.progress.next_offset);
  p.set_bytes_stored(it->second.upload.progress.bytes_stored);
  p.set_attached(it->second.streaming);
  return p;
}

}  // namespace coldfuse::rounds
