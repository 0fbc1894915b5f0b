// An HTTP(S) listener (cpp-httplib) that hands every GET to one handler function: the
// server's health probes, /metrics, the JSON status API and the dashboard
// (server/http/routes.h). HTTPS uses the gRPC server's certificate and key, re-read when
// the files change, like the gRPC side.
//
// Thread-safe: the handler runs on the listener's worker threads, several at once.
#ifndef COLDFUSE_SERVER_HTTP_HTTP_LISTENER_H_
#define COLDFUSE_SERVER_HTTP_HTTP_LISTENER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace coldfuse::http {

struct HttpRequest {
  std::string method;         // GET, HEAD, ...
  std::string path;           // decoded, without the query
  std::string query;          // after '?', still encoded
  std::string authorization;  // the Authorization header, if any
};

struct HttpResponse {
  int status = 200;
  std::string content_type = "text/plain; charset=utf-8";
  std::string body;
  std::map<std::string, std::string> headers;
};

using Handler = std::function<HttpResponse(const HttpRequest&)>;

struct HttpOptions {
  // host:port (port 0: a free one). Required.
  std::string listen;
  // PEM certificate chain and key: HTTPS when both are set, plain HTTP when both are
  // empty. Default: empty.
  std::string cert_file;
  std::string key_file;
  // Re-read the certificate and key when they change, checking at most this often
  // (0: read once). Default: 60.
  unsigned reload_interval_s = 60;
  // Connections served at once (each a thread, held while the connection is kept alive,
  // at most 5 s idle); more wait in the queue. Default: 16.
  int threads = 16;
  // A request (headers and all) must arrive, and a response be taken, within this time.
  // Default: 10 s.
  int request_timeout_ms = 10000;
};

class HttpListener {
 public:
  // Binds and starts serving. INVALID_ARGUMENT for a malformed address; UNAVAILABLE if
  // it cannot bind; FAILED_PRECONDITION (naming the file) for an unusable certificate.
  static absl::StatusOr<std::unique_ptr<HttpListener>> Start(const HttpOptions& options,
                                                             Handler handler);
  // Stops: waits for requests in progress.
  ~HttpListener();

  int port() const { return port_; }

 private:
  struct Impl;
  explicit HttpListener(std::unique_ptr<Impl> impl, int port);
  std::unique_ptr<Impl> impl_;
  int port_;
};

}  // namespace coldfuse::http

#endif  // COLDFUSE_SERVER_HTTP_HTTP_LISTENER_H_
