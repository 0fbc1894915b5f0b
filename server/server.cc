#include "server/server.h"

#include <grpcpp/grpcpp.h>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/posix_file.h"
#include "common/status_macros.h"
#include "server/auth/token_registry.h"
#include "server/service/authorizer.h"
#include "server/service/executor.h"
#include "server/service/services.h"
#include "server/storage/store.h"

namespace coldfuse {

struct Server::Impl {
  // Declaration order is destruction order in reverse: gRPC first, store last.
  std::unique_ptr<storage::Store> store;
  std::unique_ptr<auth::TokenRegistry> tokens;
  std::unique_ptr<service::Authorizer> authorizer;
  std::unique_ptr<rounds::RoundManager> manager;
  std::unique_ptr<rounds::ContributionIntake> intake;
  std::unique_ptr<service::Executor> executor;
  std::unique_ptr<service::ContributorService> contributor;
  std::unique_ptr<service::StatusService> status;
  std::unique_ptr<service::AdminService> admin;
  std::unique_ptr<grpc::Server> grpc_server;
  int port = 0;

  ~Impl() {
    if (grpc_server) {
      grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    }
    grpc_server.reset();
    executor.reset();  // finishes queued commits before the intake and manager go
    intake.reset();
    manager.reset();
    authorizer.reset();
    tokens.reset();
    store.reset();
  }
};

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("no data folder: pass --data_dir");
  }
  // Check the certificate and key before touching the store: a misconfigured server
  // should say which file is wrong and change nothing.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (options.insecure) {
    CF_LOG(WARNING) << "*** INSECURE MODE: no TLS, no tokens; anyone who can reach "
                    << options.listen << " can read, upload and administer. "
                    << "Never use this outside a test. ***";
    credentials = grpc::InsecureServerCredentials();
  } else {
    if (options.tls.cert_file.empty() || options.tls.key_file.empty()) {
      return absl::InvalidArgumentError(
          "TLS needs --tls_cert and --tls_key (deploy/make-certs.sh makes them); "
          "--insecure runs without TLS and tokens, for tests only");
    }
    ASSIGN_OR_RETURN(credentials, service::MakeServerCredentials(options.tls));
  }
  auto impl = std::make_unique<Impl>();
  storage::StoreOptions store_options;
  store_options.blob_files = options.blob_files;
  ASSIGN_OR_RETURN(impl->store, storage::Store::Open(options.data_dir, store_options));
  if (!options.insecure) {
    ASSIGN_OR_RETURN(impl->tokens, auth::TokenRegistry::Create(impl->store.get(), SystemClock()));
    if (!impl->tokens->HasOperator()) {
      if (options.bootstrap_token_file.empty()) {
        return absl::FailedPreconditionError(
            "no operator token exists: start once with --bootstrap_token_file=PATH to "
            "create one");
      }
      ASSIGN_OR_RETURN(auth::CreatedToken t,
                       impl->tokens->CreateToken("operator", v1::OPERATOR, 0, "server"));
      RETURN_IF_ERROR(WriteFileAtomic(options.bootstrap_token_file, t.secret + "\n", 0600));
      CF_LOG(WARNING) << "created the first operator token (name 'operator') in "
                      << options.bootstrap_token_file << "; keep it secret";
    }
  }
  impl->authorizer = std::make_unique<service::Authorizer>(impl->tokens.get());
  ASSIGN_OR_RETURN(storage::LoadedState state, impl->store->Load());
  ASSIGN_OR_RETURN(impl->manager, rounds::RoundManager::Create(impl->store.get(), state,
                                                               options.rounds, SystemClock()));
  ASSIGN_OR_RETURN(impl->intake,
                   rounds::ContributionIntake::Create(impl->store.get(), impl->manager.get(), state,
                                                      options.intake, SystemClock()));
  impl->executor = std::make_unique<service::Executor>(options.worker_threads);
  impl->contributor = std::make_unique<service::ContributorService>(
      impl->manager.get(), impl->intake.get(), impl->executor.get(), impl->authorizer.get());
  impl->status =
      std::make_unique<service::StatusService>(impl->manager.get(), impl->authorizer.get());
  impl->admin = std::make_unique<service::AdminService>(impl->manager.get(), impl->executor.get(),
                                                        impl->authorizer.get());

  grpc::ServerBuilder builder;
  builder.AddListeningPort(options.listen, credentials, &impl->port);
  builder.SetMaxReceiveMessageSize(options.max_receive_bytes);
  // Notice dead peers (a partitioned contributor) within a minute, so an interrupted
  // resumable upload detaches and can be resumed.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  builder.RegisterService(impl->contributor.get());
  builder.RegisterService(impl->status.get());
  builder.RegisterService(impl->admin.get());
  impl->grpc_server = builder.BuildAndStart();
  if (impl->grpc_server == nullptr || impl->port == 0) {
    return absl::UnavailableError(
        absl::StrCat("cannot listen on ", options.listen, ": is the address in use?"));
  }
  impl->manager->Start();
  auto status = impl->manager->GetStatus();
  CF_LOG(INFO) << "coldfused listening on port " << impl->port
               << (options.insecure                     ? " (INSECURE)"
                   : options.tls.client_ca_file.empty() ? " (TLS, tokens)"
                                                        : " (mutual TLS, tokens)")
               << ", data in " << options.data_dir << ", "
               << (status.initialized() ? absl::StrCat("base v", status.base_version(), ", round ",
                                                       status.open_round().number(), " open")
                                        : std::string("not initialised (run `coldfusectl init`)"));
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }
void Server::Wait() { impl_->grpc_server->Wait(); }
// Open streams (WatchStatus) are cancelled after 5 s rather than awaited.
void Server::Shutdown() {
  impl_->grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace coldfuse
