#include "common/rpc/diagnose.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include <cerrno>
#include <memory>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace coldfuse::rpc {
namespace {

struct Target {
  std::string host, port;
};

bool ParseTarget(std::string target, Target* out) {
  if (absl::StartsWith(target, "dns:///")) target = target.substr(7);
  if (absl::StartsWith(target, "[")) {
    const size_t end = target.find("]:");
    if (end == std::string::npos) return false;
    out->host = target.substr(1, end - 1);
    out->port = target.substr(end + 2);
  } else {
    const size_t colon = target.rfind(':');
    if (colon == std::string::npos || colon == 0) return false;
    out->host = target.substr(0, colon);
    out->port = target.substr(colon + 1);
  }
  return !out->port.empty();
}

// A connected TCP socket to the first address that answers within `timeout`; -1 if none.
int ConnectTcp(const addrinfo* list, std::chrono::milliseconds timeout) {
  for (const addrinfo* a = list; a != nullptr; a = a->ai_next) {
    const int fd = ::socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
    if (fd < 0) continue;
    const int flags = ::fcntl(fd, F_GETFL);
    ::fcntl(fd, F_SETFL, flags | O_NONBLOCK);
    int rc = ::connect(fd, a->ai_addr, a->ai_addrlen);
    if (rc != 0 && errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      rc = ::poll(&p, 1, static_cast<int>(timeout.count())) == 1 ? 0 : -1;
      int err = 0;
      socklen_t len = sizeof(err);
      if (rc == 0 && (::getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0 || err != 0)) {
        rc = -1;
      }
    }
    if (rc == 0) {
      ::fcntl(fd, F_SETFL, flags);
      timeval tv{static_cast<time_t>(timeout.count() / 1000),
                 static_cast<suseconds_t>((timeout.count() % 1000) * 1000)};
      ::setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
      ::setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
      return fd;
    }
    ::close(fd);
  }
  return -1;
}

bool IsIpAddress(const std::string& host) {
  unsigned char buf[sizeof(in6_addr)];
  return ::inet_pton(AF_INET, host.c_str(), buf) == 1 ||
         ::inet_pton(AF_INET6, host.c_str(), buf) == 1;
}

// What a TLS alert from the server (the reason of the last OpenSSL error) says is wrong
// with the client's side; empty if nothing the client can fix.
std::string AlertProblem(unsigned long err, const ClientTlsOptions& tls) {
  if (err == 0 || ERR_GET_LIB(err) != ERR_LIB_SSL) return "";
  const int reason = ERR_GET_REASON(err);
  const char* what = ERR_reason_error_string(err);
  const std::string alert = what != nullptr ? what : absl::StrCat("TLS alert ", reason);
  if (tls.cert_file.empty()) {
    if (reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED ||
        reason == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE ||
        reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE) {
      return absl::StrCat(
          "the server requires a client certificate (mutual TLS) and none was given (", alert,
          "): pass --tls_cert and --tls_key with a certificate signed by the CA the server "
          "trusts");
    }
    return "";
  }
  if (reason == SSL_R_TLSV1_ALERT_UNKNOWN_CA || reason == SSL_R_SSLV3_ALERT_BAD_CERTIFICATE ||
      reason == SSL_R_SSLV3_ALERT_CERTIFICATE_UNKNOWN ||
      reason == SSL_R_SSLV3_ALERT_UNSUPPORTED_CERTIFICATE ||
      reason == SSL_R_SSLV3_ALERT_CERTIFICATE_EXPIRED ||
      reason == SSL_R_SSLV3_ALERT_CERTIFICATE_REVOKED ||
      reason == SSL_R_TLSV1_ALERT_ACCESS_DENIED || reason == SSL_R_SSLV3_ALERT_HANDSHAKE_FAILURE ||
      reason == SSL_R_TLSV13_ALERT_CERTIFICATE_REQUIRED) {
    return absl::StrCat("the server refuses the client certificate ", tls.cert_file, " (", alert,
                        "): use one signed by the CA the server trusts (its --tls_client_ca)");
  }
  return "";
}

// One attempt. *dropped: the TLS handshake completed, then the server closed the
// connection without a byte (gRPC's answer to a client certificate it does not accept,
// or to none when it requires one; a healthy server sends its HTTP/2 settings at once).
absl::Status DiagnoseOnce(const std::string& target, const ClientTlsOptions& tls,
                          std::chrono::milliseconds timeout, bool* dropped) {
  *dropped = false;
  Target t;
  if (!ParseTarget(target, &t)) {
    return absl::FailedPreconditionError(
        absl::StrCat("'", target, "' is not host:port: check --server"));
  }
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* found = nullptr;
  const int rc = ::getaddrinfo(t.host.c_str(), t.port.c_str(), &hints, &found);
  if (rc == EAI_NONAME || rc == EAI_FAIL
#ifdef EAI_NODATA
      || rc == EAI_NODATA
#endif
  ) {
    return absl::FailedPreconditionError(absl::StrCat("cannot find the server's host '", t.host,
                                                      "' (", ::gai_strerror(rc),
                                                      "): check the host name in --server"));
  }
  if (rc != 0) return absl::OkStatus();  // e.g. EAI_AGAIN: the resolver may come back
  std::unique_ptr<addrinfo, decltype(&::freeaddrinfo)> list(found, &::freeaddrinfo);
  const int fd = ConnectTcp(list.get(), timeout);
  if (fd < 0) return absl::OkStatus();  // nothing listens yet: a server not up
  struct Closer {
    int fd;
    SSL_CTX* ctx = nullptr;
    SSL* ssl = nullptr;
    ~Closer() {
      if (ssl != nullptr) SSL_free(ssl);
      if (ctx != nullptr) SSL_CTX_free(ctx);
      ::close(fd);
    }
  } c{fd};
  if (tls.ca_file.empty()) return absl::OkStatus();

  ERR_clear_error();
  c.ctx = SSL_CTX_new(TLS_client_method());
  if (c.ctx == nullptr) return absl::OkStatus();
  SSL_CTX_set_verify(c.ctx, SSL_VERIFY_PEER, nullptr);
  // Unreadable files were reported when the channel was made; nothing to add here.
  if (SSL_CTX_load_verify_locations(c.ctx, tls.ca_file.c_str(), nullptr) != 1) {
    return absl::OkStatus();
  }
  if (!tls.cert_file.empty() &&
      (SSL_CTX_use_certificate_chain_file(c.ctx, tls.cert_file.c_str()) != 1 ||
       SSL_CTX_use_PrivateKey_file(c.ctx, tls.key_file.c_str(), SSL_FILETYPE_PEM) != 1)) {
    return absl::OkStatus();
  }
  static const unsigned char kAlpn[] = {2, 'h', '2'};
  SSL_CTX_set_alpn_protos(c.ctx, kAlpn, sizeof(kAlpn));
  c.ssl = SSL_new(c.ctx);
  if (c.ssl == nullptr) return absl::OkStatus();
  SSL_set_fd(c.ssl, fd);
  const std::string name = tls.server_name.empty() ? t.host : tls.server_name;
  X509_VERIFY_PARAM* param = SSL_get0_param(c.ssl);
  if (IsIpAddress(name)) {
    X509_VERIFY_PARAM_set1_ip_asc(param, name.c_str());
  } else {
    SSL_set_tlsext_host_name(c.ssl, name.c_str());
    X509_VERIFY_PARAM_set1_host(param, name.c_str(), 0);
  }

  if (SSL_connect(c.ssl) != 1) {
    const long verify = SSL_get_verify_result(c.ssl);
    if (verify == X509_V_ERR_HOSTNAME_MISMATCH || verify == X509_V_ERR_IP_ADDRESS_MISMATCH) {
      return absl::FailedPreconditionError(absl::StrCat(
          "the server's certificate is not for '", name,
          "': connect by a name the certificate carries, or pass --tls_server_name=NAME"));
    }
    if (verify != X509_V_OK) {
      return absl::FailedPreconditionError(
          absl::StrCat("the server's certificate does not verify against --tls_ca=", tls.ca_file,
                       " (", X509_verify_cert_error_string(verify),
                       "): give the CA certificate that signed the server's certificate"));
    }
    const std::string problem = AlertProblem(ERR_peek_last_error(), tls);
    if (!problem.empty()) return absl::FailedPreconditionError(problem);
    return absl::OkStatus();  // the connection broke: a server going down, say
  }
  // TLS 1.3 servers check the client's certificate after the client's side of the
  // handshake is done: their verdict (an alert, or their first HTTP/2 frame) comes next.
  char byte;
  const int n = SSL_read(c.ssl, &byte, 1);
  if (n <= 0) {
    const unsigned long err = ERR_peek_last_error();
    const std::string problem = AlertProblem(err, tls);
    if (!problem.empty()) return absl::FailedPreconditionError(problem);
    const int kind = SSL_get_error(c.ssl, n);
    *dropped = kind == SSL_ERROR_ZERO_RETURN ||
               (kind == SSL_ERROR_SSL && ERR_GET_LIB(err) == ERR_LIB_SSL &&
                ERR_GET_REASON(err) == SSL_R_UNEXPECTED_EOF_WHILE_READING) ||
               (kind == SSL_ERROR_SYSCALL && err == 0 && errno == 0);
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status DiagnoseConnection(const std::string& target, const ClientTlsOptions& tls,
                                std::chrono::milliseconds timeout) {
  bool dropped = false;
  for (int attempt = 0; attempt < 2; ++attempt) {
    // Twice: a server that happened to shut down during the first look is not a setup
    // problem.
    if (attempt > 0) std::this_thread::sleep_for(std::chrono::milliseconds(500));
    RETURN_IF_ERROR(DiagnoseOnce(target, tls, timeout, &dropped));
    if (!dropped) return absl::OkStatus();
  }
  if (tls.cert_file.empty()) {
    return absl::FailedPreconditionError(
        "the server closes the connection right after the TLS handshake: it requires a client "
        "certificate (mutual TLS) and none was given: pass --tls_cert and --tls_key with a "
        "certificate signed by the CA the server trusts");
  }
  return absl::FailedPreconditionError(absl::StrCat(
      "the server closes the connection right after the TLS handshake: it does not accept the "
      "client certificate ",
      tls.cert_file,
      ": use one signed by the CA the server trusts (its --tls_client_ca), and not expired"));
}

}  // namespace coldfuse::rpc
