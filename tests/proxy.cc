#include "tests/proxy.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstring>
#include <mutex>

namespace coldfuse::testing {
namespace {
std::mutex g_mu;  // guards pipes_ and fds_ of every proxy (tests make few)
}

TcpProxy::TcpProxy(int target_port, Cut direction, uint64_t budget_bytes)
    : target_port_(target_port), direction_(direction), budget_(budget_bytes) {
  listen_fd_ = ::socket(AF_INET, SOCK_STREAM, 0);
  int one = 1;
  ::setsockopt(listen_fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr));
  ::listen(listen_fd_, 16);
  socklen_t len = sizeof(addr);
  ::getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len);
  port_ = ntohs(addr.sin_port);
  acceptor_ = std::thread([this] { AcceptLoop(); });
}

TcpProxy::~TcpProxy() {
  stop_ = true;
  ::shutdown(listen_fd_, SHUT_RDWR);
  ::close(listen_fd_);
  acceptor_.join();
  {
    std::lock_guard<std::mutex> l(g_mu);
    for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
  }
  for (auto& t : pipes_) t.join();
  for (int fd : fds_) ::close(fd);
}

void TcpProxy::CutNow() {
  cut_ = true;
  std::lock_guard<std::mutex> l(g_mu);
  for (int fd : fds_) ::shutdown(fd, SHUT_RDWR);
}

void TcpProxy::AcceptLoop() {
  while (!stop_) {
    pollfd p{listen_fd_, POLLIN, 0};
    if (::poll(&p, 1, 100) <= 0) continue;
    int client = ::accept(listen_fd_, nullptr, nullptr);
    if (client < 0) continue;
    int server = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    addr.sin_port = htons(static_cast<uint16_t>(target_port_));
    if (::connect(server, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
      ::close(client);
      ::close(server);
      continue;
    }
    const bool first = connections_++ == 0;
    std::lock_guard<std::mutex> l(g_mu);
    fds_.push_back(client);
    fds_.push_back(server);
    pipes_.emplace_back([this, client, server, first] {
      const bool stall = direction_ == Cut::kStallClientToServer;
      Pipe(client, server, first && (direction_ == Cut::kClientToServer || stall), stall);
    });
    pipes_.emplace_back([this, client, server, first] {
      Pipe(server, client, first && direction_ == Cut::kServerToClient);
    });
  }
}

void TcpProxy::Pipe(int from, int to, bool counted, bool stall) {
  char buf[64 * 1024];
  uint64_t passed = 0;
  while (true) {
    ssize_t n = ::read(from, buf, sizeof(buf));
    if (n <= 0) break;
    if (counted && stall && passed + static_cast<uint64_t>(n) > budget_) {
      // Pass on what the budget allows, then nothing more; the connection stays open
      // until the server closes it or the proxy stops.
      n = static_cast<ssize_t>(budget_ - passed);
      for (ssize_t off = 0; off < n;) {
        ssize_t w = ::send(to, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
        if (w <= 0) return;
        off += w;
      }
      cut_ = true;
      while (!stop_) {
        pollfd p{to, POLLRDHUP, 0};
        if (::poll(&p, 1, 100) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0) break;
      }
      ::shutdown(from, SHUT_RDWR);
      return;
    }
    if (counted && passed + static_cast<uint64_t>(n) > budget_) {
      cut_ = true;  // the link breaks: both ends see a reset
      linger lg{1, 0};
      ::setsockopt(from, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
      ::setsockopt(to, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
      ::shutdown(from, SHUT_RDWR);
      ::shutdown(to, SHUT_RDWR);
      break;
    }
    passed += static_cast<uint64_t>(n);
    for (ssize_t off = 0; off < n;) {
      ssize_t w = ::send(to, buf + off, static_cast<size_t>(n - off), MSG_NOSIGNAL);
      if (w <= 0) return;
      off += w;
    }
  }
  ::shutdown(to, SHUT_WR);
}

}  // namespace coldfuse::testing
