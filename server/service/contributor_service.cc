#include "common/tsan_handoff.h"
#include "server/service/grpc_status.h"
#include "server/service/services.h"
#include "server/service/upload_reactor.h"

namespace coldfuse::service {
namespace {

// Streams one base: header, chunks, trailer. Each chunk is read from storage when the
// previous write completes, so one chunk per stream is in memory.
class PullReactor final : public grpc::ServerWriteReactor<v1::PullBaseResponse> {
 public:
  explicit PullReactor(absl::StatusOr<std::unique_ptr<rounds::BaseReader>> reader) {
    if (!reader.ok()) {
      TsanHandOff(this);
      Finish(ToGrpcStatus(reader.status()));
      return;
    }
    reader_ = std::move(*reader);
    auto* header = message_.mutable_header();
    header->set_base_version(reader_->version());
    header->set_model_spec(reader_->model_spec());
    *header->mutable_manifest() = reader_->manifest();
    TsanHandOff(this);
    StartWrite(&message_);
  }

  void OnWriteDone(bool ok) override {
    TsanTakeOver(this);
    if (!ok) {
      TsanHandOff(this);
      Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    if (trailer_sent_) {
      TsanHandOff(this);
      Finish(grpc::Status::OK);
      return;
    }
    message_.Clear();
    auto more = reader_->Next(message_.mutable_chunk());
    if (!more.ok()) {
      TsanHandOff(this);
      Finish(ToGrpcStatus(more.status()));
      return;
    }
    if (!*more) {
      *message_.mutable_trailer() = reader_->Trailer();
      trailer_sent_ = true;
    }
    TsanHandOff(this);
    StartWrite(&message_);
  }

  void OnDone() override {
    TsanTakeOver(this);
    delete this;
  }

 private:
  std::unique_ptr<rounds::BaseReader> reader_;
  v1::PullBaseResponse message_;
  bool trailer_sent_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* ContributorService::GetRound(grpc::CallbackServerContext* ctx,
                                                       const v1::GetRoundRequest* /*request*/,
                                                       v1::GetRoundResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, v1::CONTRIBUTOR, "Contributor.GetRound");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  auto r = manager_->GetRound();
  if (r.ok()) *response = std::move(*r);
  reactor->Finish(ToGrpcStatus(r.status()));
  return reactor;
}

grpc::ServerWriteReactor<v1::PullBaseResponse>* ContributorService::PullBase(
    grpc::CallbackServerContext* ctx, const v1::PullBaseRequest* request) {
  auto id = auth_->Check(ctx, v1::CONTRIBUTOR, "Contributor.PullBase");
  if (!id.ok()) return new RejectedWriteReactor<v1::PullBaseResponse>(ToGrpcStatus(id.status()));
  std::optional<uint64_t> version;
  if (request->has_base_version()) version = request->base_version();
  auto reader = manager_->OpenBase(version);
  if (reader.ok() && (request->start_tensor() != 0 || request->start_offset() != 0)) {
    absl::Status st = (*reader)->Seek(request->start_tensor(), request->start_offset());
    if (!st.ok()) reader = st;
  }
  return new PullReactor(std::move(reader));
}

grpc::ServerReadReactor<v1::PushContributionRequest>* ContributorService::PushContribution(
    grpc::CallbackServerContext* ctx, v1::ContributionReceipt* response) {
  auto id = auth_->Check(ctx, v1::CONTRIBUTOR, "Contributor.PushContribution");
  if (!id.ok()) {
    return new RejectedReadReactor<v1::PushContributionRequest>(ToGrpcStatus(id.status()));
  }
  rounds::ContributionIntake* intake = intake_;
  // With tokens, the contributor is the token's name, whatever the header says.
  std::string identity = auth_->insecure() ? std::string() : id->name;
  return new UploadReactor<v1::PushContributionRequest, v1::ContributionReceipt>(
      ctx, executor_, response,
      [intake, identity](const v1::PushContributionRequest& request) {
        if (identity.empty()) return intake->Begin(request.header());
        v1::ContributionHeader header = request.header();
        header.set_contributor(identity);
        return intake->Begin(header);
      },
      [](const rounds::UploadResult& result, v1::ContributionReceipt* receipt) {
        receipt->set_contribution_id(result.id);
        receipt->set_round(result.round);
        receipt->set_sha256(result.sha256);
        receipt->set_bytes(result.bytes);
      });
}

grpc::ServerUnaryReactor* ContributorService::GetUpload(grpc::CallbackServerContext* ctx,
                                                        const v1::GetUploadRequest* request,
                                                        v1::UploadProgress* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, v1::CONTRIBUTOR, "Contributor.GetUpload");
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

}  // namespace coldfuse::service
