#include "common/rpc/client.h"

#include <cstdlib>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/tensor_file.h"
#include "common/tensor_stream.h"

namespace coldfuse::rpc {
namespace {

void SetDeadline(grpc::ClientContext* ctx, const CallOptions& options) {
  ctx->set_deadline(std::chrono::system_clock::now() + options.deadline);
}

// Writes header, chunks and trailer on a client stream, then finishes it.
// A failed write means the server ended the call; its status comes from Finish().
template <typename Request>
void WriteTensorStream(grpc::ClientWriter<Request>* writer, Request request,
                       const std::vector<HostTensor>& tensors) {
  bool ok = writer->Write(request);
  if (ok) {
    absl::Status st = ForEachWireChunk(tensors, [&](v1::TensorChunk& chunk) {
      request.Clear();
      *request.mutable_chunk() = std::move(chunk);
      if (!writer->Write(request)) return absl::CancelledError("stream broken");
      return absl::OkStatus();
    });
    ok = st.ok();
  }
  if (ok) {
    request.Clear();
    uint64_t total = 0;
    for (const auto& t : tensors) total += t.data.size();
    request.mutable_trailer()->set_sha256(TensorsSha256(tensors));
    request.mutable_trailer()->set_total_bytes(total);
    writer->Write(request);
  }
  writer->WritesDone();
}

}  // namespace

std::shared_ptr<grpc::Channel> ConnectInsecure(const std::string& target) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(4 << 20);
  return grpc::CreateCustomChannel(target, grpc::InsecureChannelCredentials(), args);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const std::string& target,
                                                       const ConnectOptions& options) {
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
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(4 << 20);
  return grpc::CreateCustomChannel(target, creds, args);
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

absl::Status FromGrpc(const grpc::Status& s, absl::string_view call) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()),
                      absl::StrCat(call, ": ", s.error_message()));
}

absl::StatusOr<PulledBase> PullBase(const std::shared_ptr<grpc::Channel>& channel, std::optional<uint64_t> version,
                                    const CallOptions& options) {
  auto stub = v1::Contributor::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options);
  v1::PullBaseRequest request;
  if (version.has_value()) request.set_base_version(*version);
  auto reader = stub->PullBase(&ctx, request);
  v1::PullBaseResponse message;
  PulledBase out;
  std::unique_ptr<InMemoryAssembler> assembler;
  absl::Status problem;
  bool done = false;
  while (problem.ok() && !done && reader->Read(&message)) {
    switch (message.part_case()) {
      case v1::PullBaseResponse::kHeader: {
        if (assembler != nullptr) {
          problem = absl::DataLossError("PullBase: second header");
          break;
        }
        problem = ValidateManifest(message.header().manifest());
        out.version = message.header().base_version();
        out.model_spec = message.header().model_spec();
        assembler = std::make_unique<InMemoryAssembler>(message.header().manifest());
        break;
      }
      case v1::PullBaseResponse::kChunk:
        problem = assembler == nullptr ? absl::DataLossError("PullBase: chunk before header")
                                       : assembler->Accept(message.chunk());
        break;
      case v1::PullBaseResponse::kTrailer: {
        if (assembler == nullptr) {
          problem = absl::DataLossError("PullBase: trailer before header");
          break;
        }
        auto tensors = assembler->Finish(message.trailer());
        if (tensors.ok()) {
          out.tensors = std::move(*tensors);
          out.sha256 = message.trailer().sha256();
          done = true;
        } else {
          problem = tensors.status();
        }
        break;
      }
      default:
        problem = absl::DataLossError("PullBase: empty message from the server");
    }
  }
  if (!problem.ok()) {
    ctx.TryCancel();
    reader->Finish();
    return absl::DataLossError(absl::StrCat("PullBase: bad stream from the server: ",
                                            problem.message()));
  }
  while (reader->Read(&message)) {
  }
  RETURN_IF_ERROR(FromGrpc(reader->Finish(), "PullBase"));
  if (!done) return absl::DataLossError("PullBase: stream ended without a trailer");
  return out;
}

absl::StatusOr<v1::ContributionReceipt> PushContribution(const std::shared_ptr<grpc::Channel>& channel,
                                                         const v1::ContributionHeader& header,
                                                         const std::vector<HostTensor>& tensors,
                                                         const CallOptions& options) {
  RETURN_IF_ERROR(CheckTensorSizes(tensors));
  auto stub = v1::Contributor::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options);
  v1::ContributionReceipt receipt;
  auto writer = stub->PushContribution(&ctx, &receipt);
  v1::PushContributionRequest first;
  *first.mutable_header() = header;
  WriteTensorStream(writer.get(), std::move(first), tensors);
  RETURN_IF_ERROR(FromGrpc(writer->Finish(), "PushContribution"));
  return receipt;
}

absl::StatusOr<v1::InitModelResponse> InitModel(const std::shared_ptr<grpc::Channel>& channel,
                                                const v1::InitHeader& header,
                                                const std::vector<HostTensor>& tensors,
                                                const CallOptions& options) {
  RETURN_IF_ERROR(CheckTensorSizes(tensors));
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx, options);
  v1::InitModelResponse response;
  auto writer = stub->InitModel(&ctx, &response);
  v1::InitModelRequest first;
  *first.mutable_header() = header;
  WriteTensorStream(writer.get(), std::move(first), tensors);
  RETURN_IF_ERROR(FromGrpc(writer->Finish(), "InitModel"));
  return response;
}

}  // namespace coldfuse::rpc
