#include <optional>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/names.h"
#include "common/printable.h"
#include "common/status_macros.h"
#include "common/tsan_handoff.h"
#include "server/service/grpc_status.h"
#include "server/service/services.h"
#include "server/service/stream_writer.h"
#include "server/service/upload_reactor.h"

namespace coldfuse::service {
namespace {

// Streams one base: header, chunks, trailer (ProducerWriteReactor: each chunk is read on
// the executor while the previous one is on the wire; at most two in memory).
ProducerWriteReactor<v1::PullBaseResponse>* NewPullReactor(
    std::unique_ptr<rounds::BaseReader> reader, Executor* executor,
    metrics::ServerMetrics* metrics) {
  v1::PullBaseResponse header;
  header.mutable_header()->set_base_version(reader->version());
  header.mutable_header()->set_model_spec(reader->model_spec());
  *header.mutable_header()->mutable_manifest() = reader->manifest();
  struct State {
    std::unique_ptr<rounds::BaseReader> base;
    bool trailer_sent = false;
    // Ends (the stream's duration observed) when the reactor and its producer go.
    std::unique_ptr<metrics::ServerMetrics::StreamScope> scope;
  };
  auto state = std::make_shared<State>();
  state->base = std::move(reader);
  if (metrics != nullptr) state->scope = metrics->BeginStream(metrics::Stream::kPullBase);
  return new ProducerWriteReactor<v1::PullBaseResponse>(
      executor,
      [state]() -> absl::StatusOr<std::optional<v1::PullBaseResponse>> {
        auto& base = state->base;
        bool& trailer_sent = state->trailer_sent;
        if (trailer_sent) return std::nullopt;
        v1::PullBaseResponse m;
        ASSIGN_OR_RETURN(bool more, base->Next(m.mutable_chunk()));
        if (state->scope != nullptr) state->scope->AddBytes(m.chunk().data().size());
        if (!more) {
          *m.mutable_trailer() = base->Trailer();
          trailer_sent = true;
        }
        return m;
      },
      std::move(header));
}

// A caller that names itself (--name) under another name than its token's is refused:
// its contributions would be recorded under a name it does not expect.
absl::Status CheckClaimedName(const std::string& claimed, const std::string& identity) {
  if (claimed.empty() || identity.empty() || claimed == identity) return absl::OkStatus();
  return absl::PermissionDeniedError(
      absl::StrCat("this token belongs to '", PrintableTruncated(identity, 128),
                   "', but the caller names itself '", PrintableTruncated(claimed, 128),
                   "': use --name=", PrintableTruncated(identity, 128), ", or the token made for '",
                   PrintableTruncated(claimed, 128), "'"));
}

}  // namespace

grpc::ServerUnaryReactor* ContributorService::GetRound(grpc::CallbackServerContext* ctx,
                                                       const v1::GetRoundRequest* request,
                                                       v1::GetRoundResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::CONTRIBUTOR, v1::EVALUATOR}, "Contributor.GetRound");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  const std::string identity = auth_->insecure() ? request->contributor() : id->name;
  absl::Status named = CheckClaimedName(request->contributor(), identity);
  if (!named.ok()) {
    reactor->Finish(ToGrpcStatus(named));
    return reactor;
  }
  auto r = manager_->GetRound();
  if (r.ok()) {
    *response = std::move(*r);
    response->set_identity(identity);
  }
  reactor->Finish(ToGrpcStatus(r.status()));
  return reactor;
}

grpc::ServerWriteReactor<v1::PullBaseResponse>* ContributorService::PullBase(
    grpc::CallbackServerContext* ctx, const v1::PullBaseRequest* request) {
  auto id = auth_->Check(ctx, {v1::CONTRIBUTOR, v1::EVALUATOR}, "Contributor.PullBase");
  if (!id.ok()) return new RejectedWriteReactor<v1::PullBaseResponse>(ToGrpcStatus(id.status()));
  std::optional<uint64_t> version;
  if (request->has_base_version()) version = request->base_version();
  auto reader = manager_->OpenBase(version);
  if (reader.ok() && (request->start_tensor() != 0 || request->start_offset() != 0)) {
    absl::Status st = (*reader)->Seek(request->start_tensor(), request->start_offset());
    if (!st.ok()) reader = st;
  }
  if (!reader.ok()) {
    return new RejectedWriteReactor<v1::PullBaseResponse>(ToGrpcStatus(reader.status()));
  }
  return NewPullReactor(std::move(*reader), executor_, metrics_);
}

grpc::ServerReadReactor<v1::PushContributionRequest>* ContributorService::PushContribution(
    grpc::CallbackServerContext* ctx, v1::ContributionReceipt* response) {
  auto id = auth_->Check(ctx, {v1::CONTRIBUTOR}, "Contributor.PushContribution");
  if (!id.ok()) {
    return new RejectedReadReactor<v1::PushContributionRequest>(ToGrpcStatus(id.status()));
  }
  auto stream = streams_->Open(ctx);
  if (!stream.ok()) {
    return new RejectedReadReactor<v1::PushContributionRequest>(ToGrpcStatus(stream.status()));
  }
  rounds::ContributionIntake* intake = intake_;
  UploadStreams* streams = streams_;
  // With tokens, the contributor is the token's name, whatever the header says.
  std::string identity = auth_->insecure() ? std::string() : id->name;
  return new UploadReactor<v1::PushContributionRequest, v1::ContributionReceipt>(
      ctx, executor_, response,
      [intake, streams, identity, stream_id = *stream](const v1::PushContributionRequest& request)
          -> absl::StatusOr<std::unique_ptr<rounds::TensorUpload>> {
        v1::ContributionHeader header = request.header();
        if (!identity.empty()) {
          RETURN_IF_ERROR(CheckClaimedName(header.contributor(), identity));
          header.set_contributor(identity);
        }
        RETURN_IF_ERROR(streams->Claim(stream_id, header.contributor(), header.round()));
        return intake->Begin(header);
      },
      [](const rounds::UploadResult& result, v1::ContributionReceipt* receipt) {
        receipt->set_contribution_id(result.id);
        receipt->set_round(result.round);
        receipt->set_sha256(result.sha256);
        receipt->set_bytes(result.bytes);
      },
      streams_, *stream,
      metrics_ != nullptr ? metrics_->BeginStream(metrics::Stream::kPushContribution) : nullptr);
}

grpc::ServerUnaryReactor* ContributorService::GetUpload(grpc::CallbackServerContext* ctx,
                                                        const v1::GetUploadRequest* request,
                                                        v1::UploadProgress* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::CONTRIBUTOR}, "Contributor.GetUpload");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  // Insecure mode has no identities: the caller names itself, as in the upload header.
  const std::string owner = auth_->insecure() ? request->contributor() : id->name;
  auto r = intake_->GetUpload(request->upload_id(), owner);
  if (r.ok()) *response = std::move(*r);
  reactor->Finish(ToGrpcStatus(r.status()));
  return reactor;
}

grpc::ServerUnaryReactor* ContributorService::RecordEvaluation(
    grpc::CallbackServerContext* ctx, const v1::RecordEvaluationRequest* request,
    v1::Evaluation* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::CONTRIBUTOR, v1::EVALUATOR}, "Contributor.RecordEvaluation");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  // Insecure mode has no identities: the caller may name itself.
  std::string evaluator = id->name;
  if (auth_->insecure() && !request->evaluation().evaluator().empty()) {
    if (absl::Status st = CheckName("evaluator", request->evaluation().evaluator(), false);
        !st.ok()) {
      reactor->Finish(ToGrpcStatus(st));
      return reactor;
    }
    evaluator = request->evaluation().evaluator();
  }
  // A synced write: on a worker, never on gRPC's thread.
  executor_->Run([this, reactor, request, response, evaluator] {
    auto r = evaluations_->Record(request->evaluation(), evaluator);
    if (r.ok()) *response = std::move(*r);
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

}  // namespace coldfuse::service
