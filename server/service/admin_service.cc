#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/printable.h"
#include "server/service/backup_source.h"
#include "server/service/grpc_status.h"
#include "server/service/services.h"
#include "server/service/stream_writer.h"
#include "server/service/upload_reactor.h"

namespace coldfuse::service {
namespace {

// Token changes need an operator, and a server that has tokens at all.
absl::StatusOr<auth::Identity> CheckTokenAdmin(const Authorizer& auth,
                                               const grpc::CallbackServerContext* ctx,
                                               absl::string_view rpc) {
  auto id = auth.Check(ctx, {v1::OPERATOR}, rpc);
  if (id.ok() && auth.insecure()) {
    return absl::FailedPreconditionError("the server runs --insecure: it has no tokens");
  }
  return id;
}

}  // namespace

grpc::ServerReadReactor<v1::InitModelRequest>* AdminService::InitModel(
    grpc::CallbackServerContext* ctx, v1::InitModelResponse* response) {
  auto id = auth_->Check(ctx, {v1::OPERATOR}, "Admin.InitModel");
  if (!id.ok()) return new RejectedReadReactor<v1::InitModelRequest>(ToGrpcStatus(id.status()));
  rounds::RoundManager* manager = manager_;
  return new UploadReactor<v1::InitModelRequest, v1::InitModelResponse>(
      ctx, executor_, response,
      [manager, actor = id->name](const v1::InitModelRequest& request) {
        return manager->BeginInit(request.header(), actor);
      },
      [](const rounds::UploadResult& result, v1::InitModelResponse* reply) {
        reply->set_base_version(result.base_version);
        reply->set_round(result.round);
        reply->set_sha256(result.sha256);
      },
      nullptr, 0,
      metrics_ != nullptr ? metrics_->BeginStream(metrics::Stream::kInitModel) : nullptr);
}

grpc::ServerUnaryReactor* AdminService::CloseRound(grpc::CallbackServerContext* ctx,
                                                   const v1::CloseRoundRequest* request,
                                                   v1::CloseRoundResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::OPERATOR}, "Admin.CloseRound");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  std::optional<uint64_t> round;
  if (request->has_round()) round = request->round();
  // Fusion can take long: run it off the callback thread.
  executor_->Run([this, reactor, round, response, actor = id->name] {
    auto r = manager_->CloseRound(round, "operator", actor);
    if (r.ok()) *response = std::move(*r);
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::CreateToken(grpc::CallbackServerContext* ctx,
                                                    const v1::CreateTokenRequest* request,
                                                    v1::CreateTokenResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = CheckTokenAdmin(*auth_, ctx, "Admin.CreateToken");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  // A synced write: off the callback thread.
  executor_->Run([this, reactor, request, response, actor = id->name] {
    auto r = auth_->registry()->CreateToken(request->name(), request->role(),
                                            request->ttl_seconds(), actor);
    if (r.ok()) {
      response->set_token(r->secret);
      *response->mutable_info() = r->info;
    }
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::RevokeToken(grpc::CallbackServerContext* ctx,
                                                    const v1::RevokeTokenRequest* request,
                                                    v1::TokenInfo* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = CheckTokenAdmin(*auth_, ctx, "Admin.RevokeToken");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  executor_->Run([this, reactor, request, response, actor = id->name] {
    auto r = auth_->registry()->Revoke(request->name(), actor);
    if (r.ok()) *response = std::move(*r);
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::ListTokens(grpc::CallbackServerContext* ctx,
                                                   const v1::ListTokensRequest* /*request*/,
                                                   v1::ListTokensResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = CheckTokenAdmin(*auth_, ctx, "Admin.ListTokens");
  if (id.ok()) {
    for (auto& t : auth_->registry()->List()) *response->add_tokens() = std::move(t);
  }
  reactor->Finish(ToGrpcStatus(id.status()));
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::RollbackBase(grpc::CallbackServerContext* ctx,
                                                     const v1::RollbackBaseRequest* request,
                                                     v1::RollbackBaseResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::OPERATOR}, "Admin.RollbackBase");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  executor_->Run([this, reactor, request, response, actor = id->name] {
    auto r = manager_->RollbackBase(request->base_version(), request->reason(), actor);
    if (r.ok()) *response = std::move(*r);
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::ListAudit(grpc::CallbackServerContext* ctx,
                                                  const v1::ListAuditRequest* request,
                                                  v1::ListAuditResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::OPERATOR}, "Admin.ListAudit");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  auto page = manager_->ReadAuditPage(request->after_seq(), request->limit());
  if (page.ok()) {
    for (auto& r : page->records) *response->add_records() = std::move(r);
    response->set_more(page->more);
  }
  reactor->Finish(ToGrpcStatus(page.status()));
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::Prune(grpc::CallbackServerContext* ctx,
                                              const v1::PruneRequest* request,
                                              v1::PruneResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::OPERATOR}, "Admin.Prune");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  // Synced writes and a compaction: off gRPC's threads.
  executor_->Run([this, reactor, request, response, actor = id->name] {
    auto r = manager_->Prune(request->dry_run(), actor);
    if (r.ok()) *response = std::move(*r);
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

grpc::ServerUnaryReactor* AdminService::PinBase(grpc::CallbackServerContext* ctx,
                                                const v1::PinBaseRequest* request,
                                                v1::PinBaseResponse* response) {
  auto* reactor = ctx->DefaultReactor();
  auto id = auth_->Check(ctx, {v1::OPERATOR}, "Admin.PinBase");
  if (!id.ok()) {
    reactor->Finish(ToGrpcStatus(id.status()));
    return reactor;
  }
  if (request->reason().size() > kMaxPinReasonBytes) {
    reactor->Finish(
        grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                     absl::StrCat("reason is ", request->reason().size(), " bytes; at most ",
                                  kMaxPinReasonBytes, " are allowed")));
    return reactor;
  }
  executor_->Run([this, reactor, request, response, actor = id->name] {
    auto r = manager_->PinBase(request->base_version(), request->pin(), request->reason(), actor);
    if (r.ok()) *response = std::move(*r);
    reactor->Finish(ToGrpcStatus(r.status()));
  });
  return reactor;
}

grpc::ServerWriteReactor<v1::BackupResponse>* AdminService::Backup(
    grpc::CallbackServerContext* ctx, const v1::BackupRequest* /*request*/) {
  auto id = auth_->Check(ctx, {v1::OPERATOR}, "Admin.Backup");
  if (!id.ok()) return new RejectedWriteReactor<v1::BackupResponse>(ToGrpcStatus(id.status()));
  CF_LOG(INFO) << "backup requested by " << Printable(id->name);
  auto source = std::make_shared<BackupSource>(store_);
  std::shared_ptr<metrics::ServerMetrics::StreamScope> scope;
  if (metrics_ != nullptr) scope = metrics_->BeginStream(metrics::Stream::kBackup);
  return new ProducerWriteReactor<v1::BackupResponse>(
      executor_, [source, scope]() -> absl::StatusOr<std::optional<v1::BackupResponse>> {
        auto next = source->Next();
        if (scope != nullptr && next.ok() && next->has_value() && (*next)->has_chunk()) {
          scope->AddBytes((*next)->chunk().data().size());
        }
        return next;
      });
}

}  // namespace coldfuse::service
