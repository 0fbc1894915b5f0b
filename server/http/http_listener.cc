#include "server/http/http_listener.h"

#include <httplib.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sys/stat.h>

#include <chrono>
#include <cstring>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/synchronization/mutex.h"
#include "common/logging.h"

namespace coldfuse::http {
namespace {

// A certificate chain and key, re-read from their files when they change (checked at
// most every interval). Handshakes take the pair current when they start.
class CertificateSource {
 public:
  CertificateSource(std::string cert_file, std::string key_file, unsigned interval_s)
      : cert_file_(std::move(cert_file)), key_file_(std::move(key_file)), interval_s_(interval_s) {}
  ~CertificateSource() { Clear(&current_); }

  // Reads the files now. FAILED_PRECONDITION naming the file that is unusable.
  absl::Status Load() ABSL_LOCKS_EXCLUDED(mu_) {
    Pair fresh;
    absl::Status st = Read(&fresh);
    if (!st.ok()) return st;
    absl::MutexLock l(&mu_);
    Clear(&current_);
    current_ = fresh;
    stamp_ = Stamp();
    checked_ = std::chrono::steady_clock::now();
    return absl::OkStatus();
  }

  // SSL_CTX_set_cert_cb: give the handshake the current pair, re-reading it first if
  // the files changed. A renewal half done (key and certificate not matching) keeps the
  // previous pair.
  static int CertCallback(SSL* ssl, void* arg) {
    auto* self = static_cast<CertificateSource*>(arg);
    self->MaybeReload();
    absl::MutexLock l(&self->mu_);
    if (self->current_.cert == nullptr) return 0;
    return SSL_use_cert_and_key(ssl, self->current_.cert, self->current_.key, self->current_.chain,
                                /*override=*/1) == 1
               ? 1
               : 0;
  }

 private:
  struct Pair {
    X509* cert = nullptr;
    EVP_PKEY* key = nullptr;
    STACK_OF(X509) * chain = nullptr;
  };
  static void Clear(Pair* p) {
    X509_free(p->cert);
    EVP_PKEY_free(p->key);
    sk_X509_pop_free(p->chain, X509_free);
    *p = Pair();
  }

  std::string Stamp() const {
    std::string s;
    for (const std::string& f : {cert_file_, key_file_}) {
      struct stat st {};
      if (::stat(f.c_str(), &st) == 0) {
        absl::StrAppend(&s, st.st_ino, ":", st.st_size, ":", st.st_mtim.tv_sec, ".",
                        st.st_mtim.tv_nsec, ";");
      }
    }
    return s;
  }

  absl::Status Read(Pair* out) const {
    Pair p;
    FILE* f = std::fopen(cert_file_.c_str(), "r");
    if (f == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrCat("HTTPS certificate: cannot open ", cert_file_, ": ", std::strerror(errno)));
    }
    p.cert = PEM_read_X509(f, nullptr, nullptr, nullptr);
    p.chain = sk_X509_new_null();
    while (X509* extra = PEM_read_X509(f, nullptr, nullptr, nullptr)) sk_X509_push(p.chain, extra);
    ERR_clear_error();  // the end of the file reads as an error
    std::fclose(f);
    if (p.cert == nullptr) {
      Clear(&p);
      return absl::FailedPreconditionError(
          absl::StrCat("HTTPS certificate: no PEM certificate in ", cert_file_));
    }
    f = std::fopen(key_file_.c_str(), "r");
    if (f == nullptr) {
      Clear(&p);
      return absl::FailedPreconditionError(
          absl::StrCat("HTTPS key: cannot open ", key_file_, ": ", std::strerror(errno)));
    }
    p.key = PEM_read_PrivateKey(f, nullptr, nullptr, nullptr);
    std::fclose(f);
    if (p.key == nullptr) {
      Clear(&p);
      return absl::FailedPreconditionError(
          absl::StrCat("HTTPS key: no unencrypted PEM private key in ", key_file_));
    }
    if (X509_check_private_key(p.cert, p.key) != 1) {
      ERR_clear_error();
      Clear(&p);
      return absl::FailedPreconditionError(absl::StrCat(
          "HTTPS: the key in ", key_file_, " does not belong to the certificate in ", cert_file_));
    }
    *out = p;
    return absl::OkStatus();
  }

  void MaybeReload() ABSL_LOCKS_EXCLUDED(mu_) {
    if (interval_s_ == 0) return;
    {
      absl::MutexLock l(&mu_);
      const auto now = std::chrono::steady_clock::now();
      if (now - checked_ < std::chrono::seconds(interval_s_)) return;
      checked_ = now;
      if (Stamp() == stamp_) return;
    }
    Pair fresh;
    absl::Status st = Read(&fresh);
    if (!st.ok()) {
      CF_LOG(WARNING) << "keeping the previous HTTPS certificate: " << st;
      return;
    }
    absl::MutexLock l(&mu_);
    Clear(&current_);
    current_ = fresh;
    stamp_ = Stamp();
    CF_LOG(INFO) << "HTTPS certificate re-read from " << cert_file_;
  }

  const std::string cert_file_;
  const std::string key_file_;
  const unsigned interval_s_;
  absl::Mutex mu_;
  Pair current_ ABSL_GUARDED_BY(mu_);
  std::string stamp_ ABSL_GUARDED_BY(mu_);
  std::chrono::steady_clock::time_point checked_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

struct HttpListener::Impl {
  Handler handler;
  std::unique_ptr<CertificateSource> certs;
  std::unique_ptr<httplib::Server> server;
  std::thread thread;
  ~Impl() {
    if (server != nullptr) server->stop();
    if (thread.joinable()) thread.join();
  }

  // Every request, whatever its method, is answered here (before httplib's routing).
  httplib::Server::HandlerResponse Serve(const httplib::Request& in, httplib::Response& out) {
    HttpRequest req;
    req.method = in.method;
    req.path = in.path;
    if (size_t q = in.target.find('?'); q != std::string::npos) req.query = in.target.substr(q + 1);
    req.authorization = in.get_header_value("Authorization");
    HttpResponse resp;
    if (req.method != "GET" && req.method != "HEAD") {
      resp.status = 405;
      resp.headers["Allow"] = "GET, HEAD";
      resp.body = "only GET and HEAD are served\n";
    } else {
      resp = handler(req);
    }
    out.status = resp.status;
    out.set_header("X-Content-Type-Options", "nosniff");
    for (const auto& [name, value] : resp.headers) out.set_header(name, value);
    out.set_content(std::move(resp.body), resp.content_type.c_str());
    return httplib::Server::HandlerResponse::Handled;
  }
};

HttpListener::HttpListener(std::unique_ptr<Impl> impl, int port)
    : impl_(std::move(impl)), port_(port) {}
HttpListener::~HttpListener() = default;

absl::StatusOr<std::unique_ptr<HttpListener>> HttpListener::Start(const HttpOptions& options,
                                                                  Handler handler) {
  std::pair<std::string, std::string> hp = absl::StrSplit(options.listen, absl::MaxSplits(':', 1));
  int port = 0;
  if (options.listen.find(':') == std::string::npos || hp.first.empty() ||
      !absl::SimpleAtoi(hp.second, &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrCat("--http_listen=", options.listen,
                     " is not HOST:PORT (e.g. 127.0.0.1:9090 or 0.0.0.0:9090)"));
  }
  const bool tls = !options.cert_file.empty();
  if (tls != !options.key_file.empty()) {
    return absl::InvalidArgumentError("HTTPS needs both a certificate and a key");
  }
  auto impl = std::make_unique<Impl>();
  impl->handler = std::move(handler);
  if (tls) {
    impl->certs = std::make_unique<CertificateSource>(options.cert_file, options.key_file,
                                                      options.reload_interval_s);
    if (absl::Status st = impl->certs->Load(); !st.ok()) return st;
    CertificateSource* certs = impl->certs.get();
    impl->server = std::make_unique<httplib::SSLServer>([certs](SSL_CTX& ctx) {
      SSL_CTX_set_min_proto_version(&ctx, TLS1_2_VERSION);
      // The certificate comes from the callback at each handshake (renewals included).
      SSL_CTX_set_cert_cb(&ctx, &CertificateSource::CertCallback, certs);
      return true;
    });
  } else {
    impl->server = std::make_unique<httplib::Server>();
  }
  if (!impl->server->is_valid()) {
    return absl::InternalError("the HTTPS listener could not set up OpenSSL");
  }
  const int threads = options.threads;
  impl->server->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  impl->server->set_read_timeout(std::chrono::milliseconds(options.request_timeout_ms));
  impl->server->set_write_timeout(std::chrono::milliseconds(options.request_timeout_ms));
  // A kept-alive connection holds a worker until it goes quiet: keep that short, so a
  // few idle browsers cannot leave /healthz (a liveness probe) without a thread.
  impl->server->set_keep_alive_timeout(5);
  impl->server->set_keep_alive_max_count(100);
  impl->server->set_payload_max_length(64 << 10);  // GETs only: nothing large is expected
  Impl* raw = impl.get();
  impl->server->set_pre_routing_handler(
      [raw](const httplib::Request& in, httplib::Response& out) { return raw->Serve(in, out); });
  int bound = port;
  if (port == 0) {
    bound = impl->server->bind_to_any_port(hp.first);
  } else if (!impl->server->bind_to_port(hp.first, port)) {
    bound = -1;
  }
  if (bound <= 0) {
    return absl::UnavailableError(absl::StrCat("cannot serve HTTP on ", options.listen, ": ",
                                               std::strerror(errno),
                                               " (is the port in use, or the host not local?)"));
  }
  impl->thread = std::thread([raw] { raw->server->listen_after_bind(); });
  // Until it runs, stop() would not reach it (and the destructor would wait forever).
  for (int i = 0; i < 5000 && !impl->server->is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return std::unique_ptr<HttpListener>(new HttpListener(std::move(impl), bound));
}

}  // namespace coldfuse::http
