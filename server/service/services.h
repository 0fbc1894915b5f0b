// The three gRPC services, each a thin final class that translates proto <-> calls on
// rounds::RoundManager and finishes. The manager and executor must outlive them.
#ifndef COLDFUSE_SERVER_SERVICE_SERVICES_H_
#define COLDFUSE_SERVER_SERVICE_SERVICES_H_

#include <grpcpp/grpcpp.h>

#include "coldfuse/v1/coldfuse.grpc.pb.h"
#include "server/rounds/round_manager.h"
#include "server/service/executor.h"

namespace coldfuse::service {

class ContributorService final : public v1::Contributor::CallbackService {
 public:
  ContributorService(rounds::RoundManager* manager, Executor* executor)
      : manager_(manager), executor_(executor) {}

  grpc::ServerUnaryReactor* GetRound(grpc::CallbackServerContext* ctx,
                                     const v1::GetRoundRequest* request,
                                     v1::GetRoundResponse* response) override;
  grpc::ServerWriteReactor<v1::PullBaseResponse>* PullBase(
      grpc::CallbackServerContext* ctx, const v1::PullBaseRequest* request) override;
  grpc::ServerReadReactor<v1::PushContributionRequest>* PushContribution(
      grpc::CallbackServerContext* ctx, v1::ContributionReceipt* response) override;

 private:
  rounds::RoundManager* manager_;
  Executor* executor_;
};

class StatusService final : public v1::Status::CallbackService {
 public:
  explicit StatusService(rounds::RoundManager* manager) : manager_(manager) {}

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

 private:
  rounds::RoundManager* manager_;
};

class AdminService final : public v1::Admin::CallbackService {
 public:
  AdminService(rounds::RoundManager* manager, Executor* executor)
      : manager_(manager), executor_(executor) {}

  grpc::ServerReadReactor<v1::InitModelRequest>* InitModel(
      grpc::CallbackServerContext* ctx, v1::InitModelResponse* response) override;
  grpc::ServerUnaryReactor* CloseRound(grpc::CallbackServerContext* ctx,
                                       const v1::CloseRoundRequest* request,
                                       v1::CloseRoundResponse* response) override;

 private:
  rounds::RoundManager* manager_;
  Executor* executor_;
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_SERVICES_H_
