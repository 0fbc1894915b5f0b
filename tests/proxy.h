// A loopback TCP proxy for tests: forwards to a target port and, on its first
// connection only, cuts both directions once a byte budget has passed in one direction —
// a flaky link breaking mid-transfer — or (kStallClientToServer) stops passing the
// client's bytes on while keeping the connection open: a client that stops mid-message.
// Thread-safe; stops on destruction.
#ifndef COLDFUSE_TESTS_PROXY_H_
#define COLDFUSE_TESTS_PROXY_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

namespace coldfuse::testing {

class TcpProxy {
 public:
  enum class Cut { kClientToServer, kServerToClient, kStallClientToServer };
  // Listens on 127.0.0.1:<ephemeral> and forwards to 127.0.0.1:target_port.
  TcpProxy(int target_port, Cut direction, uint64_t budget_bytes);
  ~TcpProxy();
  int port() const { return port_; }
  // Whether the first connection was cut.
  bool cut() const { return cut_; }
  // Cuts every connection now (a link failing at a moment the test chooses).
  void CutNow();

 private:
  void AcceptLoop();
  void Pipe(int from, int to, bool counted, bool stall = false);

  int target_port_;
  Cut direction_;
  uint64_t budget_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::atomic<bool> cut_{false};
  std::atomic<int> connections_{0};
  std::thread acceptor_;
  std::vector<std::thread> pipes_;
  std::vector<int> fds_;
};

}  // namespace coldfuse::testing

#endif  // COLDFUSE_TESTS_PROXY_H_
