// The server's TCP listener: accepts connections itself and hands them to gRPC, so that
// the number of open connections is bounded and running out of file descriptors never
// stops the server from accepting.
//
// Why not gRPC's own listener: in gRPC 1.51 (Debian 12) an accept() that fails with
// EMFILE closes the listening socket for good ("Failed accept4: Too many open files"),
// and there is no connection limit. Here:
//   - at most `max_connections` accepted sockets are open at once; a connection arriving
//     at the limit evicts the open connection that has been silent longest, if it has
//     been silent for `evict_idle_ms` (an idle flood cannot lock honest clients out),
//     and is closed at once otherwise;
//   - when accept() fails for lack of descriptors, a spare descriptor kept for that is
//     released, the pending connection accepted and closed, and the spare taken back, so
//     the listener never stays readable-but-stuck;
//   - connections that never finish the TLS/HTTP/2 handshake are closed by gRPC after
//     the handshake timeout (set in server.cc).
// Closed connections are noticed by checking, before each admission at the limit, that
// every tracked descriptor still names the socket (inode) that was handed over.
// Thread-safe: one accept thread; Stats() may be called from any thread.
#ifndef COLDFUSE_SERVER_SERVICE_ACCEPTOR_H_
#define COLDFUSE_SERVER_SERVICE_ACCEPTOR_H_

#include <grpcpp/server_builder.h>
#include <sys/types.h>

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace coldfuse::service {

struct AcceptorOptions {
  // host:port (host: a name, an IPv4 address, or an IPv6 address in brackets; empty
  // host: every address). Port 0 picks a free port. Default: 127.0.0.1:7878.
  std::string listen = "127.0.0.1:7878";
  // Most accepted connections open at once. Required (> 0).
  int max_connections = 1024;
  // A connection silent (no bytes received) for this long may be evicted for a new one
  // when the limit is reached. Default: 1000 ms.
  int evict_idle_ms = 1000;
};

class Acceptor {
 public:
  // Binds and listens (so port() is known before gRPC starts); accepts nothing yet.
  static absl::StatusOr<std::unique_ptr<Acceptor>> Listen(const AcceptorOptions& options);
  ~Acceptor();  // Stop()s
  Acceptor(const Acceptor&) = delete;
  Acceptor& operator=(const Acceptor&) = delete;

  int port() const { return port_; }
  // Starts the accept thread, handing every admitted connection to `sink` (from
  // ServerBuilder::experimental().AddExternalConnectionAcceptor).
  // REQUIRES: called once.
  void Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> sink);
  // Closes the listening sockets and joins the accept thread. Accepted connections stay
  // with gRPC. Idempotent.
  void Stop();

  struct Stats {
    uint64_t accepted = 0;  // handed to gRPC
    uint64_t refused = 0;   // closed at once: at the limit, or no descriptor for it
    uint64_t evicted = 0;   // idle connections closed to make room
    int open = 0;           // accepted and not yet seen closed (an upper bound)
  };
  Stats GetStats() const;

 private:
  explicit Acceptor(const AcceptorOptions& options) : options_(options) {}
  void Run();
  void AcceptFrom(int listen_fd);
  // Handles one accepted socket: admit (maybe evicting) or close.
  void Admit(int listen_fd, int fd);
  // Drops tracked connections that gRPC has closed.
  void Reap();
  // The tracked connection silent longest, if silent >= evict_idle_ms; -1 if none.
  int IdlestEvictable() const;

  struct Tracked {
    int fd;
    ino_t inode;
  };

  const AcceptorOptions options_;
  int port_ = 0;
  std::vector<int> listen_fds_;
  int wake_fd_ = -1;   // eventfd: Stop() wakes the accept thread
  int spare_fd_ = -1;  // released when accept() fails with EMFILE/ENFILE
  std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> sink_;
  std::thread thread_;
  std::vector<Tracked> open_;  // accept thread only
  mutable absl::Mutex stats_mu_;
  Stats stats_ ABSL_GUARDED_BY(stats_mu_);
  int64_t last_warning_ms_ = 0;  // accept thread only: rate-limits the limit warnings
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_ACCEPTOR_H_
