// What coldfused serves over HTTP (--http_listen), documented in docs/operations.md:
//   /healthz                 200 while the process runs (no token)
//   /readyz                  200 while it serves; 503 starting up or draining (no token)
//   /metrics                 Prometheus text format (a viewer token unless
//                            --metrics_without_token)
//   /api/v1/status           ServerStatus                  } proto3 JSON, as
//   /api/v1/rounds           ListRoundsResponse            } `coldfusectl ... --json`;
//   /api/v1/rounds/N         RoundInfo                     } a viewer, evaluator or
//   /api/v1/evaluations      ListEvaluationsResponse       } operator token
//   /, /dashboard.js, ...    the read-only dashboard (its token is entered in the page)
// Thread-safe.
#ifndef COLDFUSE_SERVER_HTTP_ROUTES_H_
#define COLDFUSE_SERVER_HTTP_ROUTES_H_

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/http/http_listener.h"
#include "server/metrics/metrics.h"
#include "server/rounds/evaluations.h"
#include "server/rounds/round_manager.h"
#include "server/service/authorizer.h"

namespace coldfuse::http {

struct RoutesOptions {
  // Serve /metrics to anyone who can reach the port. Default: false (a viewer, evaluator
  // or operator token is needed, as for the status API).
  bool metrics_without_token = false;
  // For developing the dashboard: serve index.html, dashboard.js and dashboard.css from
  // this folder (read at each request) instead of the copies compiled in. Default: empty.
  std::string dashboard_dir;
};

class Routes {
 public:
  Routes(const RoutesOptions& options, const metrics::ServerMetrics* metrics)
      : options_(options), metrics_(metrics) {}

  // The server serves: the API answers from these (they must stay valid until Stop or
  // the listener is gone).
  void SetServing(const rounds::RoundManager* manager, const rounds::Evaluations* evaluations,
                  const service::Authorizer* auth) ABSL_LOCKS_EXCLUDED(mu_);
  // The server is shutting down: /readyz says 503 from now on; the rest still answers.
  void SetDraining() ABSL_LOCKS_EXCLUDED(mu_);

  HttpResponse Handle(const HttpRequest& request) const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  enum class State { kStarting, kServing, kDraining };
  // The caller's identity from "Authorization: Bearer <token>", or the HTTP error.
  absl::Status Authorize(const HttpRequest& request, absl::string_view what) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  HttpResponse Api(const HttpRequest& request) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  const RoutesOptions options_;
  const metrics::ServerMetrics* const metrics_;
  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kStarting;
  const rounds::RoundManager* manager_ ABSL_GUARDED_BY(mu_) = nullptr;
  const rounds::Evaluations* evaluations_ ABSL_GUARDED_BY(mu_) = nullptr;
  const service::Authorizer* auth_ ABSL_GUARDED_BY(mu_) = nullptr;
};

// An HTTP error for a status: 400, 401 (with WWW-Authenticate), 403, 404, 503 or 500,
// with a JSON body {"error": {"code": "NOT_FOUND", "message": "..."}}.
HttpResponse ErrorResponse(const absl::Status& status);

}  // namespace coldfuse::http

#endif  // COLDFUSE_SERVER_HTTP_ROUTES_H_
