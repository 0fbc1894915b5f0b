#include <optional>

#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "common/tsan_handoff.h"
#include "server/service/grpc_status.h"
#include "server/service/services.h"
#include "server/service/upload_reactor.h"

namespace coldfuse::service {
namespace {

// Streams one base: header, chunks, trailer. The next message is read from storage on the
// executor while the previous one is on the wire, so a gRPC callback thread never waits on
// a read and reads overlap sends; at most two chunks per stream are in memory.
//
// Lifetime: gRPC calls OnDone once Finish has completed, but a read may still be running
// on the executor then; whichever of the two ends last deletes the reactor.
class PullReactor final : public grpc::ServerWriteReactor<v1::PullBaseResponse> {
 public:
  PullReactor(absl::StatusOr<std::unique_ptr<rounds::BaseReader>> reader, Executor* executor)
      : executor_(executor) {
    if (!reader.ok()) {
      {
        absl::MutexLock l(&mu_);
        finished_ = true;
      }
      TsanHandOff(this);
      Finish(ToGrpcStatus(reader.status()));
      return;
    }
    reader_ = std::move(*reader);
    v1::PullBaseResponse header;
    header.mutable_header()->set_base_version(reader_->version());
    header.mutable_header()->set_model_spec(reader_->model_spec());
    *header.mutable_header()->mutable_manifest() = reader_->manifest();
    {
      absl::MutexLock l(&mu_);
      next_ = std::move(header);
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    TsanTakeOver(this);
    bool finish = false;
    {
      absl::MutexLock l(&mu_);
      writing_ = false;
      if (!ok || sent_trailer_) finish = finished_ = true;
    }
    if (finish) {
      TsanHandOff(this);
      Finish(ok ? grpc::Status::OK : grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    Pump();
  }

  void OnDone() override {
    TsanTakeOver(this);
    bool last;
    {
      absl::MutexLock l(&mu_);
      done_ = true;
      last = tasks_ == 0;
    }
    if (last) delete this;
  }

 private:
  // Writes the next message once it is read and the previous write is done, and starts
  // reading the one after. Any thread; decisions under mu_, gRPC calls outside it.
  void Pump() ABSL_LOCKS_EXCLUDED(mu_) {
    enum { kNothing, kWrite, kFinish } act = kNothing;
    grpc::Status failed;
    bool read = false;
    {
      absl::MutexLock l(&mu_);
      if (finished_) return;
      if (!writing_ && next_.has_value()) {
        if (!next_->ok()) {
          finished_ = true;
          failed = ToGrpcStatus(next_->status());
          act = kFinish;
        } else {
          message_ = std::move(**next_);
          sent_trailer_ = message_.has_trailer();
          writing_ = true;
          act = kWrite;
        }
        next_.reset();
      }
      if (!finished_ && !reading_ && !next_.has_value() && !read_all_) {
        reading_ = true;
        ++tasks_;
        read = true;
      }
    }
    if (read) executor_->Run([this] { ReadNext(); });
    if (act == kWrite) {
      TsanHandOff(this);
      StartWrite(&message_);
    } else if (act == kFinish) {
      TsanHandOff(this);
      Finish(failed);
    }
  }

  // On the executor: reads the message after the one being written.
  void ReadNext() ABSL_LOCKS_EXCLUDED(mu_) {
    v1::PullBaseResponse m;
    absl::StatusOr<bool> more = reader_->Next(m.mutable_chunk());
    if (more.ok() && !*more) *m.mutable_trailer() = reader_->Trailer();
    {
      absl::MutexLock l(&mu_);
      if (more.ok()) {
        next_ = std::move(m);
      } else {
        next_ = more.status();
      }
      read_all_ = !more.ok() || !*more;
      reading_ = false;
    }
    Pump();
    bool last;
    {
      absl::MutexLock l(&mu_);
      last = --tasks_ == 0 && done_;
    }
    if (last) delete this;
  }

  Executor* const executor_;
  std::unique_ptr<rounds::BaseReader> reader_;  // used by one ReadNext at a time
  v1::PullBaseResponse message_;                // gRPC's while writing_

  absl::Mutex mu_;
  std::optional<absl::StatusOr<v1::PullBaseResponse>> next_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;       // StartWrite(&message_) outstanding
  bool reading_ ABSL_GUARDED_BY(mu_) = false;       // a ReadNext is filling next_
  bool read_all_ ABSL_GUARDED_BY(mu_) = false;      // the trailer (or an error) was read
  bool sent_trailer_ ABSL_GUARDED_BY(mu_) = false;  // message_ is the trailer
  bool finished_ ABSL_GUARDED_BY(mu_) = false;      // Finish called (or being called)
  bool done_ ABSL_GUARDED_BY(mu_) = false;          // OnDone ran
  int tasks_ ABSL_GUARDED_BY(mu_) = 0;              // ReadNext tasks not yet returned
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
  return new PullReactor(std::move(reader), executor_);
}

grpc::ServerReadReactor<v1::PushContributionRequest>* ContributorService::PushContribution(
    grpc::CallbackServerContext* ctx, v1::ContributionReceipt* response) {
  auto id = auth_->Check(ctx, v1::CONTRIBUTOR, "Contributor.PushContribution");
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
        if (!identity.empty()) header.set_contributor(identity);
        RETURN_IF_ERROR(streams->Claim(stream_id, header.contributor(), header.round()));
        return intake->Begin(header);
      },
      [](const rounds::UploadResult& result, v1::ContributionReceipt* receipt) {
        receipt->set_contribution_id(result.id);
        receipt->set_round(result.round);
        receipt->set_sha256(result.sha256);
        receipt->set_bytes(result.bytes);
      },
      streams_, *stream);
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
