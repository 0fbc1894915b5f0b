#include "server/http/routes.h"

#include <google/protobuf/util/json_util.h>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/json.h"
#include "common/posix_file.h"
#include "server/http/assets.h"

namespace coldfuse::http {
namespace {

HttpResponse Json(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions options;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  HttpResponse r;
  auto st = google::protobuf::util::MessageToJsonString(m, &r.body, options);
  if (!st.ok()) return ErrorResponse(absl::InternalError(std::string(st.message())));
  r.content_type = "application/json";
  r.headers["Cache-Control"] = "no-store";
  return r;
}

// The value of `name` in a query string ("a=1&task=x%20y"), percent-decoded; "" if absent.
std::string QueryValue(absl::string_view query, absl::string_view name) {
  for (absl::string_view part : absl::StrSplit(query, '&')) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(part, absl::MaxSplits('=', 1));
    if (kv.first != name) continue;
    std::string out;
    for (size_t i = 0; i < kv.second.size(); ++i) {
      const char c = kv.second[i];
      int hi = 0, lo = 0;
      auto hex = [](char h, int* v) {
        if (h >= '0' && h <= '9')
          *v = h - '0';
        else if (h >= 'a' && h <= 'f')
          *v = h - 'a' + 10;
        else if (h >= 'A' && h <= 'F')
          *v = h - 'A' + 10;
        else
          return false;
        return true;
      };
      if (c == '%' && i + 2 < kv.second.size() && hex(kv.second[i + 1], &hi) &&
          hex(kv.second[i + 2], &lo)) {
        out += static_cast<char>(hi * 16 + lo);
        i += 2;
      } else if (c == '+') {
        out += ' ';
      } else {
        out += c;
      }
    }
    return out;
  }
  return "";
}

}  // namespace

HttpResponse ErrorResponse(const absl::Status& status) {
  HttpResponse r;
  switch (status.code()) {
    case absl::StatusCode::kInvalidArgument:
      r.status = 400;
      break;
    case absl::StatusCode::kUnauthenticated:
      r.status = 401;
      r.headers["WWW-Authenticate"] = "Bearer realm=\"coldfuse\"";
      break;
    case absl::StatusCode::kPermissionDenied:
      r.status = 403;
      break;
    case absl::StatusCode::kNotFound:
      r.status = 404;
      break;
    case absl::StatusCode::kUnavailable:
      r.status = 503;
      break;
    default:
      r.status = 500;
  }
  r.content_type = "application/json";
  r.headers["Cache-Control"] = "no-store";
  r.body = absl::StrCat("{\"error\":{\"code\":", JsonQuote(absl::StatusCodeToString(status.code())),
                        ",\"message\":", JsonQuote(status.message()), "}}\n");
  return r;
}

void Routes::SetServing(const rounds::RoundManager* manager, const rounds::Evaluations* evaluations,
                        const service::Authorizer* auth) {
  absl::MutexLock l(&mu_);
  manager_ = manager;
  evaluations_ = evaluations;
  auth_ = auth;
  state_ = State::kServing;
}

void Routes::SetDraining() {
  absl::MutexLock l(&mu_);
  state_ = State::kDraining;
}

absl::Status Routes::Authorize(const HttpRequest& request, absl::string_view what) const {
  if (auth_->insecure()) return absl::OkStatus();  // no tokens exist: everyone may read
  absl::string_view header = request.authorization;
  if (header.empty()) {
    return absl::UnauthenticatedError(
        absl::StrCat(what,
                     " needs a token: send the header 'Authorization: Bearer <token>' "
                     "(a viewer, evaluator or operator token; coldfusectl token create)"));
  }
  if (!absl::StartsWithIgnoreCase(header, "bearer ")) {
    return absl::UnauthenticatedError("the Authorization header must be 'Bearer <token>'");
  }
  return auth_
      ->CheckSecret(absl::StripAsciiWhitespace(header.substr(7)), {v1::VIEWER, v1::EVALUATOR}, what)
      .status();
}

HttpResponse Routes::Handle(const HttpRequest& request) const {
  const std::string& path = request.path;
  if (path == "/healthz") return HttpResponse{200, "text/plain; charset=utf-8", "ok\n", {}};
  absl::ReaderMutexLock l(&mu_);
  if (path == "/readyz") {
    switch (state_) {
      case State::kServing:
        return HttpResponse{200, "text/plain; charset=utf-8", "ready\n", {}};
      case State::kStarting:
        return HttpResponse{503,
                            "text/plain; charset=utf-8",
                            "not ready: the server is starting (opening its store)\n",
                            {}};
      case State::kDraining:
        return HttpResponse{
            503, "text/plain; charset=utf-8", "not ready: the server is shutting down\n", {}};
    }
  }
  if (const Asset* asset = FindAsset(path == "/" ? "/index.html" : path)) {
    HttpResponse r;
    r.content_type = asset->content_type;
    r.body.assign(asset->data, asset->size);
    if (!options_.dashboard_dir.empty() && !absl::StrContains(asset->path, "chart")) {
      // Only the compiled-in names: a request cannot reach another file.
      auto text = ReadFileToString(options_.dashboard_dir + asset->path);
      if (text.ok()) r.body = std::move(*text);
    }
    // The page and its scripts come from this server only; nothing inline runs.
    r.headers["Content-Security-Policy"] =
        "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; base-uri 'none'; "
        "form-action 'self'";
    r.headers["X-Frame-Options"] = "DENY";
    r.headers["Referrer-Policy"] = "no-referrer";
    r.headers["Cache-Control"] = "no-cache";
    return r;
  }
  if (state_ == State::kStarting) {
    return ErrorResponse(absl::UnavailableError("the server is starting; try again shortly"));
  }
  if (path == "/metrics") {
    if (!options_.metrics_without_token) {
      if (absl::Status st = Authorize(request, "/metrics"); !st.ok()) return ErrorResponse(st);
    }
    HttpResponse r;
    r.content_type = "text/plain; version=0.0.4; charset=utf-8";
    r.body = metrics_->Render();
    r.headers["Cache-Control"] = "no-store";
    return r;
  }
  if (absl::StartsWith(path, "/api/")) return Api(request);
  return ErrorResponse(absl::NotFoundError(
      absl::StrCat(path,
                   " is not served here; see /api/v1/status, /metrics, /healthz, /readyz or / (the "
                   "dashboard)")));
}

HttpResponse Routes::Api(const HttpRequest& request) const {
  const std::string& path = request.path;
  if (absl::Status st = Authorize(request, path); !st.ok()) return ErrorResponse(st);
  if (path == "/api/v1/status") {
    v1::ServerStatus s = manager_->GetStatus();
    s.set_insecure(auth_->insecure());
    return Json(s);
  }
  if (path == "/api/v1/rounds") {
    v1::ListRoundsResponse r;
    for (auto& x : manager_->ListRounds()) *r.add_rounds() = std::move(x);
    return Json(r);
  }
  if (absl::StartsWith(path, "/api/v1/rounds/")) {
    uint64_t n = 0;
    if (!absl::SimpleAtoi(path.substr(15), &n)) {
      return ErrorResponse(
          absl::InvalidArgumentError(absl::StrCat(path.substr(15), " is not a round number")));
    }
    auto r = manager_->GetRoundInfo(n);
    if (!r.ok()) return ErrorResponse(r.status());
    return Json(*r);
  }
  if (path == "/api/v1/evaluations") {
    v1::ListEvaluationsResponse r;
    for (auto& e : evaluations_->List(QueryValue(request.query, "task"))) {
      *r.add_evaluations() = std::move(e);
    }
    return Json(r);
  }
  return ErrorResponse(absl::NotFoundError(
      absl::StrCat(path,
                   " is not an API path; there are /api/v1/status, /api/v1/rounds, "
                   "/api/v1/rounds/N and /api/v1/evaluations[?task=T]")));
}

}  // namespace coldfuse::http
