// A running coldfused: store, round manager, contribution intake and gRPC server on one
// address.
// Thread-safe. Destroying it shuts down the gRPC server, then the policy thread, then
// the store.
#ifndef COLDFUSE_SERVER_SERVER_H_
#define COLDFUSE_SERVER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/http/routes.h"
#include "server/metrics/metrics.h"
#include "server/rounds/contribution_intake.h"
#include "server/rounds/evaluations.h"
#include "server/rounds/round_manager.h"
#include "server/service/tls.h"

namespace coldfuse {

struct ServerOptions {
  // Folder of the RocksDB store; created if missing. Required.
  std::string data_dir;
  // host:port to listen on; port 0 picks a free port. Default: 127.0.0.1:7878.
  std::string listen = "127.0.0.1:7878";
  rounds::RoundOptions rounds;
  rounds::IntakeOptions intake;
  // Tensor chunks in RocksDB blob files. Default: true.
  bool blob_files = true;
  // Threads for blocking work (commits, fusion). Default: 4.
  int worker_threads = 4;
  // Largest message a client may send; one chunk plus its framing. Default: 4 MiB.
  int max_receive_bytes = 4 << 20;
  // Most client connections open at once (service/acceptor.h). 0: what the file
  // descriptor limit leaves after the store's share (see FdBudget). A value above that
  // is lowered to it, with a warning. Default: 0.
  int max_connections = 0;
  // Upload streams (PushContribution) open at once: at most upload_memory_bytes /
  // (max_receive_bytes + 1 MiB) of them (the most a stream can hold buffered), and at
  // most max_uploads_per_contributor per contributor; one waiting longer than
  // upload_idle_timeout_ms for its next message, or whose round has closed, is ended.
  // Defaults: 1 GiB, 4, 300 s.
  int64_t upload_memory_bytes = int64_t{1} << 30;
  int max_uploads_per_contributor = 4;
  int64_t upload_idle_timeout_ms = 300'000;
  // Most concurrent calls on one connection. Default: 100.
  int max_streams_per_connection = 100;
  // A connection that has not finished the TLS and HTTP/2 handshake after this long is
  // closed. Default: 10 s.
  int handshake_timeout_ms = 10000;
  // A connection with no call for this long is closed (clients reconnect on their next
  // call). Default: 10 minutes.
  int max_connection_idle_ms = 10 * 60 * 1000;
  // TLS certificate and key (required unless insecure); client_ca_file turns on mutual
  // TLS. Default: empty.
  service::ServerTlsOptions tls;
  // No TLS and no tokens: for tests and local experiments only. Default: false.
  bool insecure = false;
  // Permission bits taken away from the data folder and everything directly in it at
  // start (so a folder made by an older release is tightened too). The process umask,
  // set by main, keeps new files the same. Default: 077 (the service user only).
  unsigned data_mode_mask = 077;
  // If no operator token exists yet, create one and write it to this file (mode 0600).
  // Default: empty (then a server without an operator token refuses to start).
  std::string bootstrap_token_file;
  rounds::EvaluationOptions evaluations;
  // host:port of the HTTP listener: /healthz, /readyz, /metrics, the JSON status API and
  // the dashboard (server/http/routes.h); HTTPS with the server's certificate unless
  // insecure. Bound (and answering /healthz; /readyz says 503) before the store opens.
  // Default: empty (no HTTP listener).
  std::string http_listen;
  http::RoutesOptions http;
  metrics::MetricsOptions metrics;
  // On Shutdown, report NOT_SERVING (gRPC health, /readyz) for this long before refusing
  // new calls, so load balancers stop sending first. Default: 0.
  int64_t drain_ms = 0;
};

// How the process's file descriptors are shared out: RocksDB keeps at most
// `store_files` files open, `reserved` are left for logs, WAL, blob files being written
// and the like, and the rest may be client connections.
struct FdBudget {
  uint64_t limit = 0;  // the soft RLIMIT_NOFILE
  int store_files = 0;
  int reserved = 0;
  int connections = 0;
};
// From the current RLIMIT_NOFILE. Error if it leaves no room for connections.
absl::StatusOr<FdBudget> ComputeFdBudget();

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  // The port actually bound.
  int port() const;
  // The HTTP listener's port; 0 without one.
  int http_port() const;
  // Blocks until Shutdown() is called from another thread.
  void Wait();
  // Says NOT_SERVING (gRPC health, /readyz), waits drain_ms, then stops taking calls;
  // open streams (WatchStatus) are cancelled after 5 s rather than awaited.
  void Shutdown();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace coldfuse

#endif  // COLDFUSE_SERVER_SERVER_H_
