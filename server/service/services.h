// The three gRPC services, each a thin final class that translates proto <-> calls on
// rounds::RoundManager (and rounds::ContributionIntake) and finishes. The manager and executor must
// outlive them.
#ifndef COLDFUSE_SERVER_SERVICE_SERVICES_H_
#define COLDFUSE_SERVER_SERVICE_SERVICES_H_

#include <grpcpp/grpcpp.h>

#include "coldfuse/v1/coldfuse.grpc.pb.h"
#include "server/metrics/metrics.h"
#include "server/rounds/contribution_intake.h"
#include "server/rounds/evaluations.h"
#include "server/rounds/round_manager.h"
#include "server/service/authorizer.h"
#include "server/service/executor.h"
#include "server/service/upload_streams.h"

namespace coldfuse::service {

class ContributorService final : public v1::Contributor::CallbackService {
 public:
  ContributorService(rounds::RoundManager* manager, rounds::ContributionIntake* intake,
                     rounds::Evaluations* evaluations, Executor* executor, const Authorizer* auth,
                     UploadStreams* streams, metrics::ServerMetrics* metrics)
      : manager_(manager),
        intake_(intake),
        evaluations_(evaluations),
        executor_(executor),
        auth_(auth),
        streams_(streams),
        metrics_(metrics) {}

  grpc::ServerUnaryReactor* GetRound(grpc::CallbackServerContext* ctx,
                                     const v1::GetRoundRequest* request,
                                     v1::GetRoundResponse* response) override;
  grpc::ServerWriteReactor<v1::PullBaseResponse>* PullBase(
      grpc::CallbackServerContext* ctx, const v1::PullBaseRequest* request) override;
  grpc::ServerReadReactor<v1::PushContributionRequest>* PushContribution(
      grpc::CallbackServerContext* ctx, v1::ContributionReceipt* response) override;
  grpc::ServerUnaryReactor* GetUpload(grpc::CallbackServerContext* ctx,
                                      const v1::GetUploadRequest* request,
                                      v1::UploadProgress* response) override;
  grpc::ServerUnaryReactor* RecordEvaluation(grpc::CallbackServerContext* ctx,
                                             const v1::RecordEvaluationRequest* request,
                                             v1::Evaluation* response) override;

 private:
  rounds::RoundManager* manager_;
  rounds::ContributionIntake* intake_;
  rounds::Evaluations* evaluations_;
  Executor* executor_;
  const Authorizer* auth_;
  UploadStreams* streams_;
  metrics::ServerMetrics* metrics_;
};

class StatusService final : public v1::Status::CallbackService {
 public:
  StatusService(rounds::RoundManager* manager, const rounds::Evaluations* evaluations,
                const Authorizer* auth, metrics::ServerMetrics* metrics)
      : manager_(manager), evaluations_(evaluations), auth_(auth), metrics_(metrics) {}

  grpc::ServerUnaryReactor* GetStatus(grpc::CallbackServerContext* ctx,
                                      const v1::GetStatusRequest* request,
                                      v1::ServerStatus* response) override;
  grpc::ServerUnaryReactor* ListRounds(grpc::CallbackServerContext* ctx,
                                       const v1::ListRoundsRequest* request,
                                       v1::ListRoundsResponse* response) override;
  grpc::ServerUnaryReactor* GetRound(grpc::CallbackServerContext* ctx,
                                     const v1::GetRoundInfoRequest* request,
                                     v1::RoundInfo* response) override;
  grpc::ServerWriteReactor<v1::ServerStatus>* WatchStatus(
      grpc::CallbackServerContext* ctx, const v1::WatchStatusRequest* request) override;
  grpc::ServerUnaryReactor* ListEvaluations(grpc::CallbackServerContext* ctx,
                                            const v1::ListEvaluationsRequest* request,
                                            v1::ListEvaluationsResponse* response) override;

 private:
  rounds::RoundManager* manager_;
  const rounds::Evaluations* evaluations_;
  const Authorizer* auth_;
  metrics::ServerMetrics* metrics_;
};

class AdminService final : public v1::Admin::CallbackService {
 public:
  AdminService(rounds::RoundManager* manager, storage::Store* store, Executor* executor,
               const Authorizer* auth, metrics::ServerMetrics* metrics)
      : manager_(manager), store_(store), executor_(executor), auth_(auth), metrics_(metrics) {}

  grpc::ServerReadReactor<v1::InitModelRequest>* InitModel(
      grpc::CallbackServerContext* ctx, v1::InitModelResponse* response) override;
  grpc::ServerUnaryReactor* CloseRound(grpc::CallbackServerContext* ctx,
                                       const v1::CloseRoundRequest* request,
                                       v1::CloseRoundResponse* response) override;
  grpc::ServerUnaryReactor* CreateToken(grpc::CallbackServerContext* ctx,
                                        const v1::CreateTokenRequest* request,
                                        v1::CreateTokenResponse* response) override;
  grpc::ServerUnaryReactor* RevokeToken(grpc::CallbackServerContext* ctx,
                                        const v1::RevokeTokenRequest* request,
                                        v1::TokenInfo* response) override;
  grpc::ServerUnaryReactor* ListTokens(grpc::CallbackServerContext* ctx,
                                       const v1::ListTokensRequest* request,
                                       v1::ListTokensResponse* response) override;
  grpc::ServerUnaryReactor* RollbackBase(grpc::CallbackServerContext* ctx,
                                         const v1::RollbackBaseRequest* request,
                                         v1::RollbackBaseResponse* response) override;
  grpc::ServerUnaryReactor* ListAudit(grpc::CallbackServerContext* ctx,
                                      const v1::ListAuditRequest* request,
                                      v1::ListAuditResponse* response) override;
  grpc::ServerUnaryReactor* Prune(grpc::CallbackServerContext* ctx, const v1::PruneRequest* request,
                                  v1::PruneResponse* response) override;
  // A pin's reason is kept in the store and the audit log: a note, not a payload.
  static constexpr size_t kMaxPinReasonBytes = 1024;
  grpc::ServerUnaryReactor* PinBase(grpc::CallbackServerContext* ctx,
                                    const v1::PinBaseRequest* request,
                                    v1::PinBaseResponse* response) override;
  grpc::ServerWriteReactor<v1::BackupResponse>* Backup(grpc::CallbackServerContext* ctx,
                                                       const v1::BackupRequest* request) override;

 private:
  rounds::RoundManager* manager_;
  storage::Store* store_;
  Executor* executor_;
  const Authorizer* auth_;
  metrics::ServerMetrics* metrics_;
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_SERVICES_H_
