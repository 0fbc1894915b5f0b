#include "server/server.h"

#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include <algorithm>
#include <cerrno>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/posix_file.h"
#include "common/status_macros.h"
#include "server/auth/token_registry.h"
#include "server/http/http_listener.h"
#include "server/service/acceptor.h"
#include "server/service/authorizer.h"
#include "server/service/executor.h"
#include "server/service/parse_error_interceptor.h"
#include "server/service/services.h"
#include "server/service/upload_streams.h"
#include "server/storage/store.h"

namespace coldfuse {

struct Server::Impl {
  // Declaration order is destruction order in reverse: gRPC first, store last.
  std::unique_ptr<storage::Store> store;
  std::unique_ptr<auth::TokenRegistry> tokens;
  std::unique_ptr<service::Authorizer> authorizer;
  std::unique_ptr<rounds::RoundManager> manager;
  std::unique_ptr<rounds::ContributionIntake> intake;
  std::unique_ptr<rounds::Evaluations> evaluations;
  std::unique_ptr<metrics::ServerMetrics> metrics;
  std::unique_ptr<http::Routes> routes;
  std::unique_ptr<service::Executor> executor;
  std::unique_ptr<service::UploadStreams> upload_streams;
  std::unique_ptr<service::ContributorService> contributor;
  std::unique_ptr<service::StatusService> status;
  std::unique_ptr<service::AdminService> admin;
  std::unique_ptr<service::Acceptor> acceptor;
  std::unique_ptr<grpc::Server> grpc_server;
  std::unique_ptr<http::HttpListener> http;
  int port = 0;
  int64_t drain_ms = 0;

  ~Impl() {
    if (routes) routes->SetDraining();
    if (acceptor) acceptor->Stop();  // no new connections while gRPC shuts down
    if (grpc_server) {
      grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
    }
    grpc_server.reset();
    http.reset();  // waits for requests in progress, which read the state below
    if (metrics) metrics->Attach(nullptr, nullptr, nullptr);
    executor.reset();        // finishes queued commits before the intake and manager go
    upload_streams.reset();  // its sweeper asks the manager for the open round
    intake.reset();
    evaluations.reset();
    manager.reset();
    authorizer.reset();
    tokens.reset();
    store.reset();
  }
};

absl::StatusOr<FdBudget> ComputeFdBudget() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) {
    return absl::InternalError("cannot read the file descriptor limit (RLIMIT_NOFILE)");
  }
  FdBudget b;
  b.limit = lim.rlim_cur == RLIM_INFINITY ? (1u << 20) : lim.rlim_cur;
  b.store_files = static_cast<int>(std::clamp<uint64_t>(b.limit / 4, 32, 4096));
  // WAL, MANIFEST and LOG files, blob files being written, gRPC's epoll and wake-up
  // descriptors, the listener's own, token and port files, standard streams.
  b.reserved = 96;
  int64_t rest = static_cast<int64_t>(b.limit) - b.store_files - b.reserved;
  if (rest < 16) {
    return absl::FailedPreconditionError(
        absl::StrCat("the file descriptor limit is ", b.limit,
                     ", too low for a server: raise it (systemd: "
                     "LimitNOFILE=65536 in the unit; a shell: ulimit -n 65536) to at least ",
                     b.store_files + b.reserved + 64));
  }
  b.connections = static_cast<int>(std::min<int64_t>(rest, 1 << 20));
  return b;
}

Server::Server(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Server::~Server() = default;

absl::StatusOr<std::unique_ptr<Server>> Server::Start(const ServerOptions& options) {
  if (options.data_dir.empty()) {
    return absl::InvalidArgumentError("no data folder: pass --data_dir");
  }
  // Check the certificate and key before touching the store: a misconfigured server
  // should say which file is wrong and change nothing.
  std::shared_ptr<grpc::ServerCredentials> credentials;
  if (options.insecure && (!options.tls.cert_file.empty() || !options.tls.key_file.empty() ||
                           !options.tls.client_ca_file.empty())) {
    return absl::InvalidArgumentError(
        "--insecure turns TLS and tokens off, but TLS files were given (--tls_cert, "
        "--tls_key or --tls_client_ca): drop --insecure to serve over TLS, or drop the "
        "TLS flags");
  }
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
  ASSIGN_OR_RETURN(FdBudget fds, ComputeFdBudget());
  service::AcceptorOptions acceptor_options;
  acceptor_options.listen = options.listen;
  acceptor_options.max_connections = fds.connections;
  if (options.max_connections > fds.connections) {
    CF_LOG(WARNING) << "--max_connections=" << options.max_connections << " lowered to "
                    << fds.connections << ": the file descriptor limit is " << fds.limit
                    << " and the store keeps up to " << fds.store_files
                    << " files open (raise LimitNOFILE to allow more)";
  } else if (options.max_connections > 0) {
    acceptor_options.max_connections = options.max_connections;
  }
  auto impl = std::make_unique<Impl>();
  impl->drain_ms = options.drain_ms;
  // Bind before opening the store: a port in use should change nothing on disk.
  ASSIGN_OR_RETURN(impl->acceptor, service::Acceptor::Listen(acceptor_options));
  impl->port = impl->acceptor->port();
  impl->metrics = std::make_unique<metrics::ServerMetrics>(options.metrics);
  impl->routes = std::make_unique<http::Routes>(options.http, impl->metrics.get());
  if (!options.http_listen.empty()) {
    // Serving /healthz (and a 503 /readyz) while the store opens, which a migration or a
    // long log replay can make slow.
    http::HttpOptions http_options;
    http_options.listen = options.http_listen;
    if (!options.insecure) {
      http_options.cert_file = options.tls.cert_file;
      http_options.key_file = options.tls.key_file;
      http_options.reload_interval_s = options.tls.reload_interval_s;
    }
    http::Routes* routes = impl->routes.get();
    ASSIGN_OR_RETURN(impl->http,
                     http::HttpListener::Start(http_options, [routes](const http::HttpRequest& r) {
                       return routes->Handle(r);
                     }));
  }
  storage::StoreOptions store_options;
  store_options.blob_files = options.blob_files;
  store_options.max_open_files = fds.store_files;
  if (::mkdir(options.data_dir.c_str(), 0777 & ~options.data_mode_mask) != 0 && errno != EEXIST) {
    return ErrnoError("cannot create the data folder", options.data_dir);
  }
  // Contributions are private to their contributors. A folder the server may write but
  // not chmod (another owner) still works: say so rather than refuse to start.
  if (absl::Status st = RestrictModes(options.data_dir, options.data_mode_mask); !st.ok()) {
    CF_LOG(WARNING) << "cannot make the data folder private (" << st
                    << "); make it and its files readable by the service user only";
  }
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
  ASSIGN_OR_RETURN(impl->evaluations,
                   rounds::Evaluations::Create(impl->store.get(), impl->manager.get(),
                                               options.evaluations, SystemClock()));
  impl->executor = std::make_unique<service::Executor>(options.worker_threads);
  service::UploadStreamOptions stream_options;
  const int64_t per_stream = int64_t{options.max_receive_bytes} + (1 << 20);
  stream_options.max_streams =
      static_cast<int>(std::clamp<int64_t>(options.upload_memory_bytes / per_stream, 1, 1 << 20));
  stream_options.max_per_contributor = options.max_uploads_per_contributor;
  stream_options.idle_timeout_ms = options.upload_idle_timeout_ms;
  impl->upload_streams = std::make_unique<service::UploadStreams>(
      stream_options, [manager = impl->manager.get()] { return manager->OpenRoundNumber(); });
  impl->contributor = std::make_unique<service::ContributorService>(
      impl->manager.get(), impl->intake.get(), impl->evaluations.get(), impl->executor.get(),
      impl->authorizer.get(), impl->upload_streams.get(), impl->metrics.get());
  impl->status = std::make_unique<service::StatusService>(
      impl->manager.get(), impl->evaluations.get(), impl->authorizer.get(), impl->metrics.get());
  impl->admin = std::make_unique<service::AdminService>(
      impl->manager.get(), impl->store.get(), impl->executor.get(), impl->authorizer.get(),
      impl->metrics.get());
  impl->metrics->Attach(impl->manager.get(), impl->evaluations.get(), impl->tokens.get());

  // grpc.health.v1.Health on the same port, without a token: "" and each service are
  // SERVING once started, NOT_SERVING from the start of a shutdown.
  grpc::EnableDefaultHealthCheckService(true);
  grpc::ServerBuilder builder;
  // The acceptor accepts and hands connections over; gRPC listens on nothing itself.
  auto sink = builder.experimental().AddExternalConnectionAcceptor(
      grpc::ServerBuilder::experimental_type::ExternalConnectionType::FROM_FD, credentials);
  builder.SetMaxReceiveMessageSize(options.max_receive_bytes);
  std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
  interceptors.push_back(std::make_unique<service::ParseErrorInterceptorFactory>());
  builder.experimental().SetInterceptorCreators(std::move(interceptors));
  builder.AddChannelArgument(GRPC_ARG_MAX_CONCURRENT_STREAMS, options.max_streams_per_connection);
  builder.AddChannelArgument(GRPC_ARG_SERVER_HANDSHAKE_TIMEOUT_MS, options.handshake_timeout_ms);
  builder.AddChannelArgument(GRPC_ARG_MAX_CONNECTION_IDLE_MS, options.max_connection_idle_ms);
  // Notice dead peers (a partitioned contributor) within a minute, so an interrupted
  // resumable upload detaches and can be resumed.
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIME_MS, 30000);
  builder.AddChannelArgument(GRPC_ARG_KEEPALIVE_TIMEOUT_MS, 10000);
  // Clients ping every 30 s during a call (rpc::ClientChannelArguments); gRPC's default
  // would answer pings more often than every 5 minutes with GOAWAY.
  builder.AddChannelArgument(GRPC_ARG_HTTP2_MIN_RECV_PING_INTERVAL_WITHOUT_DATA_MS, 20000);
  builder.RegisterService(impl->contributor.get());
  builder.RegisterService(impl->status.get());
  builder.RegisterService(impl->admin.get());
  impl->grpc_server = builder.BuildAndStart();
  if (impl->grpc_server == nullptr) {
    return absl::InternalError("the gRPC server did not start (see the log above)");
  }
  if (auto* health = impl->grpc_server->GetHealthCheckService()) {
    health->SetServingStatus(true);
    for (const char* name :
         {"coldfuse.v1.Contributor", "coldfuse.v1.Status", "coldfuse.v1.Admin"}) {
      health->SetServingStatus(name, true);
    }
  }
  impl->acceptor->Start(std::move(sink));
  impl->manager->Start();
  impl->routes->SetServing(impl->manager.get(), impl->evaluations.get(), impl->authorizer.get());
  auto status = impl->manager->GetStatus();
  CF_LOG(INFO) << "coldfused listening on port " << impl->port
               << (options.insecure                     ? " (INSECURE)"
                   : options.tls.client_ca_file.empty() ? " (TLS, tokens)"
                                                        : " (mutual TLS, tokens)")
               << ", data in " << options.data_dir << ", up to " << acceptor_options.max_connections
               << " connections (file descriptor limit " << fds.limit << "), "
               << (impl->http != nullptr ? absl::StrCat("HTTP on port ", impl->http->port(),
                                                        options.insecure ? "" : " (HTTPS)", ", ")
                                         : std::string())
               << (status.initialized() ? absl::StrCat("base v", status.base_version(), ", round ",
                                                       status.open_round().number(), " open")
                                        : std::string("not initialised (run `coldfusectl init`)"));
  return std::unique_ptr<Server>(new Server(std::move(impl)));
}

int Server::port() const { return impl_->port; }
int Server::http_port() const { return impl_->http != nullptr ? impl_->http->port() : 0; }
void Server::Wait() { impl_->grpc_server->Wait(); }
void Server::Shutdown() {
  impl_->routes->SetDraining();
  if (auto* health = impl_->grpc_server->GetHealthCheckService()) health->Shutdown();
  if (impl_->drain_ms > 0) {
    CF_LOG(INFO) << "draining for " << impl_->drain_ms << " ms (health: NOT_SERVING)";
    std::this_thread::sleep_for(std::chrono::milliseconds(impl_->drain_ms));
  }
  impl_->acceptor->Stop();
  impl_->grpc_server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(5));
}

}  // namespace coldfuse
