#include <mutex>

#include "common/tsan_handoff.h"
#include "server/service/grpc_status.h"
#include "server/service/services.h"

namespace coldfuse::service {
namespace {

// Sends the status now and again after every change, until the client cancels.
// Changes that arrive while a write is in flight are folded into the next write.
class WatchReactor final : public grpc::ServerWriteReactor<v1::ServerStatus> {
 public:
  WatchReactor(rounds::RoundManager* manager, bool insecure,
               std::unique_ptr<metrics::ServerMetrics::StreamScope> scope)
      : manager_(manager), insecure_(insecure), scope_(std::move(scope)) {
    {
      std::lock_guard<std::recursive_mutex> l(mu_);
      listener_ = manager_->AddListener([this] { OnChange(); });
      SendLocked();
    }
    TsanHandOff(this);  // the unlock above comes before OnDone's delete, on another thread
  }

  void OnWriteDone(bool ok) override {
    TsanTakeOver(this);
    {
      std::lock_guard<std::recursive_mutex> l(mu_);
      writing_ = false;
      if (!ok) {
        FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      } else if (pending_) {
        SendLocked();
      }
    }
    TsanHandOff(this);
  }

  void OnCancel() override {
    TsanTakeOver(this);
    {
      std::lock_guard<std::recursive_mutex> l(mu_);
      FinishLocked(grpc::Status(grpc::StatusCode::CANCELLED, "watch cancelled"));
    }
    TsanHandOff(this);
  }

  void OnDone() override {
    TsanTakeOver(this);
    manager_->RemoveListener(listener_);  // waits for a listener call in progress
    delete this;
  }

 private:
  void OnChange() {
    std::lock_guard<std::recursive_mutex> l(mu_);
    if (writing_) {
      pending_ = true;
    } else {
      SendLocked();
    }
  }

  void SendLocked() {
    pending_ = false;
    if (finished_) return;
    message_ = manager_->GetStatus();
    message_.set_insecure(insecure_);
    if (message_.change_seq() == last_sent_) return;
    last_sent_ = message_.change_seq();
    writing_ = true;
    TsanHandOff(this);
    StartWrite(&message_);
  }

  void FinishLocked(const grpc::Status& status) {
    if (finished_) return;
    finished_ = true;
    TsanHandOff(this);
    Finish(status);
  }

  rounds::RoundManager* manager_;
  const bool insecure_;
  std::unique_ptr<metrics::ServerMetrics::StreamScope> scope_;  // counts it as active
  std::recursive_mutex mu_;  // recursive: gRPC may run OnWriteDone inline
  int listener_ = 0;
  v1::ServerStatus message_;
  uint64_t last_sent_ = 0;
  bool writing_ = false;
  bool pending_ = false;
  bool finished_ = false;
};

}  // namespace

grpc::ServerUnaryReactor* StatusService::GetStatus(grpc::CallbackServerContext* ctx,
                                                   const v1::GetStatusRequest* /*request*/,
                                                   v1::ServerStatus* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::VIEWER, v1::EVALUATOR}, "Status.GetStatus");
  if (id.ok()) {
    *response = manager_->GetStatus();
    response->set_insecure(auth_->insecure());
  }
  reactor->Finish(ToGrpcStatus(id.status()));
  return reactor;
}

grpc::ServerUnaryReactor* StatusService::ListRounds(grpc::CallbackServerContext* ctx,
                                                    const v1::ListRoundsRequest* /*request*/,
                                                    v1::ListRoundsResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::VIEWER, v1::EVALUATOR}, "Status.ListRounds");
  if (id.ok()) {
    for (auto& r : manager_->ListRounds()) *response->add_rounds() = std::move(r);
  }
  reactor->Finish(ToGrpcStatus(id.status()));
  return reactor;
}

grpc::ServerUnaryReactor* StatusService::GetRound(grpc::CallbackServerContext* ctx,
                                                  const v1::GetRoundInfoRequest* request,
                                                  v1::RoundInfo* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::VIEWER, v1::EVALUATOR}, "Status.GetRound");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  auto r = manager_->GetRoundInfo(request->number());
  if (r.ok()) *response = std::move(*r);
  reactor->Finish(ToGrpcStatus(r.status()));
  return reactor;
}

grpc::ServerWriteReactor<v1::ServerStatus>* StatusService::WatchStatus(
    grpc::CallbackServerContext* ctx, const v1::WatchStatusRequest* /*request*/) {
  auto id = auth_->Check(ctx, {v1::VIEWER, v1::EVALUATOR}, "Status.WatchStatus");
  if (!id.ok()) return new RejectedWriteReactor<v1::ServerStatus>(ToGrpcStatus(id.status()));
  return new WatchReactor(
      manager_, auth_->insecure(),
      metrics_ != nullptr ? metrics_->BeginStream(metrics::Stream::kWatchStatus) : nullptr);
}

grpc::ServerUnaryReactor* StatusService::ListEvaluations(grpc::CallbackServerContext* ctx,
                                                         const v1::ListEvaluationsRequest* request,
                                                         v1::ListEvaluationsResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::VIEWER, v1::EVALUATOR}, "Status.ListEvaluations");
  if (id.ok()) {
    for (auto& e : evaluations_->List(request->task())) *response->add_evaluations() = std::move(e);
  }
  reactor->Finish(ToGrpcStatus(id.status()));
  return reactor;
}

}  // namespace coldfuse::service
