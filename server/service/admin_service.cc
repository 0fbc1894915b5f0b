#include "server/service/grpc_status.h"
#include "server/service/services.h"
#include "server/service/upload_reactor.h"

namespace coldfuse::service {

grpc::ServerReadReactor<v1::InitModelRequest>* AdminService::InitModel(
    grpc::CallbackServerContext* /*ctx*/, v1::InitModelResponse* response) {
  rounds::RoundManager* manager = manager_;
  return new UploadReactor<v1::InitModelRequest, v1::InitModelResponse>(
      executor_, response,
      [manager](const v1::InitModelRequest& request) {
        return manager->BeginInit(request.header());
      },
      [](const rounds::UploadResult& result, v1::InitModelResponse* reply) {
        reply->set_base_version(result.base_version);
        reply->set_round(result.round);
        reply->set_sha256(result.sha256);
      });
}

grpc::ServerUnaryReactor* AdminService::CloseRound(grpc::CallbackServerContext* ctx,
                                                   const v1::CloseRoundRequest* request,
                                                   v1::CloseRoundResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  std::optional<uint64_t> round;
  if (request->has_round()) round = request->round();
  // Fusion can take long: run it off the callback thread.
  executor_->Run([this, reactor, round, response] {
    auto r = manager_->CloseRound(round, "operator");
    if (r.ok()) *response = std::move(*r);
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

}  // namespace coldfuse::service
