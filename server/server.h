// A running coldfused: store, round manager, contribution intake and gRPC server on one
// address.
// Thread-safe. Destroying it shuts down the gRPC server, then the policy thread, then
// the store.
#ifndef COLDFUSE_SERVER_SERVER_H_
#define COLDFUSE_SERVER_SERVER_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "server/rounds/contribution_intake.h"
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
  // TLS certificate and key (required unless insecure); client_ca_file turns on mutual
  // TLS. Default: empty.
  service::ServerTlsOptions tls;
  // No TLS and no tokens: for tests and local experiments only. Default: false.
  bool insecure = false;
  // If no operator token exists yet, create one and write it to this file (mode 0600).
  // Default: empty (then a server without an operator token refuses to start).
  std::string bootstrap_token_file;
};

class Server {
 public:
  static absl::StatusOr<std::unique_ptr<Server>> Start(const ServerOptions& options);
  ~Server();

  // The port actually bound.
  int port() const;
  // Blocks until Shutdown() is called from another thread.
  void Wait();
  void Shutdown();

 private:
  struct Impl;
  explicit Server(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace coldfuse

#endif  // COLDFUSE_SERVER_SERVER_H_
