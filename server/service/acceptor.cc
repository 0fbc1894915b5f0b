#include "server/service/acceptor.h"

#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"

namespace coldfuse::service {
namespace {

// Splits "host:port", "[v6]:port" or ":port".
absl::Status SplitHostPort(const std::string& listen, std::string* host, std::string* port) {
  size_t colon = listen.rfind(':');
  if (colon == std::string::npos) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen=", listen, " has no port: use host:port, e.g. 0.0.0.0:7878"));
  }
  *host = listen.substr(0, colon);
  *port = listen.substr(colon + 1);
  if (host->size() >= 2 && host->front() == '[' && host->back() == ']') {
    *host = host->substr(1, host->size() - 2);
  }
  int p = 0;
  if (!absl::SimpleAtoi(*port, &p) || p < 0 || p > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--listen=", listen, ": port must be a number from 0 to 65535"));
  }
  return absl::OkStatus();
}

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

}  // namespace

absl::StatusOr<std::unique_ptr<Acceptor>> Acceptor::Listen(const AcceptorOptions& options) {
  if (options.max_connections <= 0) {
    return absl::InvalidArgumentError("the connection limit must be at least 1");
  }
  std::string host, port;
  if (auto st = SplitHostPort(options.listen, &host, &port); !st.ok()) return st;
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
  addrinfo* found = nullptr;
  int rc = ::getaddrinfo(host.empty() ? nullptr : host.c_str(), port.c_str(), &hints, &found);
  if (rc != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--listen=", options.listen, ": cannot resolve '", host, "': ", ::gai_strerror(rc)));
  }
  auto acceptor = std::unique_ptr<Acceptor>(new Acceptor(options));
  std::string last_error;
  for (addrinfo* ai = found; ai != nullptr; ai = ai->ai_next) {
    int fd =
        ::socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) {
      last_error = std::strerror(errno);
      continue;
    }
    int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    if (ai->ai_family == AF_INET6) {
      // A wildcard IPv6 address serves IPv4 too, unless an IPv4 socket of this list
      // already does (then binding it would clash).
      int v6only = host.empty() ? 1 : 0;
      ::setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof(v6only));
    }
    // Port 0: every address gets the port the first one was given.
    if (acceptor->port_ != 0) {
      if (ai->ai_family == AF_INET) {
        reinterpret_cast<sockaddr_in*>(ai->ai_addr)->sin_port = htons(acceptor->port_);
      } else if (ai->ai_family == AF_INET6) {
        reinterpret_cast<sockaddr_in6*>(ai->ai_addr)->sin6_port = htons(acceptor->port_);
      }
    }
    if (::bind(fd, ai->ai_addr, ai->ai_addrlen) != 0 || ::listen(fd, 1024) != 0) {
      last_error = std::strerror(errno);
      ::close(fd);
      continue;
    }
    if (acceptor->port_ == 0) {
      sockaddr_storage bound{};
      socklen_t len = sizeof(bound);
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len);
      acceptor->port_ =
          ntohs(bound.ss_family == AF_INET ? reinterpret_cast<sockaddr_in*>(&bound)->sin_port
                                           : reinterpret_cast<sockaddr_in6*>(&bound)->sin6_port);
    }
    acceptor->listen_fds_.push_back(fd);
  }
  ::freeaddrinfo(found);
  if (acceptor->listen_fds_.empty()) {
    return absl::UnavailableError(absl::StrCat("cannot listen on ", options.listen, ": ",
                                               last_error, " (is the address in use?)"));
  }
  acceptor->wake_fd_ = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  acceptor->spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
  if (acceptor->wake_fd_ < 0 || acceptor->spare_fd_ < 0) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot start the listener: ", std::strerror(errno)));
  }
  return acceptor;
}

Acceptor::~Acceptor() {
  Stop();
  if (wake_fd_ >= 0) ::close(wake_fd_);
  if (spare_fd_ >= 0) ::close(spare_fd_);
}

void Acceptor::Start(std::unique_ptr<grpc::experimental::ExternalConnectionAcceptor> sink) {
  sink_ = std::move(sink);
  thread_ = std::thread([this] { Run(); });
}

void Acceptor::Stop() {
  if (thread_.joinable()) {
    uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof(one));
    thread_.join();
  }
  for (int fd : listen_fds_) ::close(fd);
  listen_fds_.clear();
}

Acceptor::Stats Acceptor::GetStats() const {
  absl::MutexLock lock(&stats_mu_);
  return stats_;
}

void Acceptor::Run() {
  std::vector<pollfd> fds;
  for (int fd : listen_fds_) fds.push_back({fd, POLLIN, 0});
  fds.push_back({wake_fd_, POLLIN, 0});
  while (true) {
    int n = ::poll(fds.data(), fds.size(), -1);
    if (n < 0) {
      if (errno == EINTR) continue;
      CF_LOG(ERROR) << "listener: poll failed: " << std::strerror(errno);
      ::usleep(100 * 1000);
      continue;
    }
    if (fds.back().revents != 0) return;  // Stop()
    for (size_t i = 0; i + 1 < fds.size(); ++i) {
      if (fds[i].revents != 0) AcceptFrom(fds[i].fd);
    }
  }
}

void Acceptor::AcceptFrom(int listen_fd) {
  // Bounded, so one listener cannot starve the other or the stop signal.
  for (int i = 0; i < 256; ++i) {
    int fd = ::accept4(listen_fd, nullptr, nullptr, SOCK_NONBLOCK | SOCK_CLOEXEC);
    if (fd >= 0) {
      Admit(listen_fd, fd);
      continue;
    }
    switch (errno) {
      case EAGAIN:
        return;
      case EINTR:
      case ECONNABORTED:
      case EPROTO:
        continue;
      case EMFILE:
      case ENFILE: {
        // Out of descriptors: take the pending connection with the spare one and close
        // it, so the listener is not left readable with nothing we can do (a busy loop),
        // and the client sees a closed connection rather than a hang.
        int err = errno;
        ::close(spare_fd_);
        int victim = ::accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
        if (victim >= 0) ::close(victim);
        spare_fd_ = ::open("/dev/null", O_RDONLY | O_CLOEXEC);
        {
          absl::MutexLock lock(&stats_mu_);
          ++stats_.refused;
        }
        int64_t now = NowMs();
        if (now - last_warning_ms_ >= 10000) {
          last_warning_ms_ = now;
          CF_LOG(WARNING) << "listener: no file descriptor for a new connection ("
                          << std::strerror(err) << "); refusing connections until some "
                          << "close (raise LimitNOFILE, or lower --max_connections)";
        }
        if (victim < 0) {
          ::usleep(10 * 1000);  // the kernel itself is short; do not spin
          return;
        }
        continue;
      }
      default:
        // ENOBUFS, ENOMEM and the like: transient; back off briefly, keep listening.
        CF_LOG(WARNING) << "listener: accept failed: " << std::strerror(errno);
        ::usleep(10 * 1000);
        return;
    }
  }
}

void Acceptor::Reap() {
  size_t kept = 0;
  for (const Tracked& t : open_) {
    struct stat st {};
    if (::fstat(t.fd, &st) == 0 && S_ISSOCK(st.st_mode) && st.st_ino == t.inode) {
      open_[kept++] = t;
    }
  }
  open_.resize(kept);
}

int Acceptor::IdlestEvictable() const {
  int best = -1;
  uint32_t best_idle = 0;
  for (size_t i = 0; i < open_.size(); ++i) {
    tcp_info info{};
    socklen_t len = sizeof(info);
    if (::getsockopt(open_[i].fd, IPPROTO_TCP, TCP_INFO, &info, &len) != 0) continue;
    if (info.tcpi_last_data_recv >= static_cast<uint32_t>(options_.evict_idle_ms) &&
        (best < 0 || info.tcpi_last_data_recv > best_idle)) {
      best = static_cast<int>(i);
      best_idle = info.tcpi_last_data_recv;
    }
  }
  return best;
}

void Acceptor::Admit(int listen_fd, int fd) {
  if (open_.size() >= static_cast<size_t>(options_.max_connections)) Reap();
  bool evicted = false;
  if (open_.size() >= static_cast<size_t>(options_.max_connections)) {
    int victim = IdlestEvictable();
    if (victim < 0) {
      ::close(fd);
      {
        absl::MutexLock lock(&stats_mu_);
        ++stats_.refused;
      }
      int64_t now = NowMs();
      if (now - last_warning_ms_ >= 10000) {
        last_warning_ms_ = now;
        CF_LOG(WARNING) << "listener: " << open_.size()
                        << " connections open (--max_connections); refusing new ones "
                           "until some close or go idle";
      }
      return;
    }
    // gRPC owns the socket: shutting it down makes gRPC's next read fail, and gRPC
    // closes it. Reap() just checked that the descriptor is still this socket.
    ::shutdown(open_[victim].fd, SHUT_RDWR);
    open_[victim] = open_.back();
    open_.pop_back();
    evicted = true;
  }
  struct stat st {};
  if (::fstat(fd, &st) != 0) {
    ::close(fd);
    return;
  }
  int one = 1;
  ::setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
  open_.push_back({fd, st.st_ino});
  {
    absl::MutexLock lock(&stats_mu_);
    ++stats_.accepted;
    if (evicted) ++stats_.evicted;
    stats_.open = static_cast<int>(open_.size());
  }
  grpc::experimental::ExternalConnectionAcceptor::NewConnectionParameters params;
  params.listener_fd = listen_fd;
  params.fd = fd;
  sink_->HandleNewConnection(&params);  // gRPC owns fd from here
}

}  // namespace coldfuse::service
