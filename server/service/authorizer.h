// Per-call authentication and role checks for the gRPC services: reads
// "authorization: Bearer <token>" from the call's metadata and asks the TokenRegistry.
// In insecure mode (no registry) every caller is an operator named "anonymous".
// Thread-safe.
#ifndef COLDFUSE_SERVER_SERVICE_AUTHORIZER_H_
#define COLDFUSE_SERVER_SERVICE_AUTHORIZER_H_

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "server/auth/token_registry.h"

namespace coldfuse::service {

class Authorizer {
 public:
  // `registry` null: insecure mode. The registry must outlive the authorizer.
  explicit Authorizer(auth::TokenRegistry* registry) : registry_(registry) {}

  bool insecure() const { return registry_ == nullptr; }
  auth::TokenRegistry* registry() const { return registry_; }

  // UNAUTHENTICATED without a valid token; PERMISSION_DENIED when its role may not call
  // `rpc`, which is open to operators and the roles in `allowed`.
  absl::StatusOr<auth::Identity> Check(const grpc::CallbackServerContext* ctx,
                                       std::initializer_list<v1::Role> allowed,
                                       absl::string_view rpc) const;
  // The same for a bearer token read elsewhere (the HTTP listener): `secret` is the
  // token itself.
  absl::StatusOr<auth::Identity> CheckSecret(absl::string_view secret,
                                             std::initializer_list<v1::Role> allowed,
                                             absl::string_view what) const;

 private:
  auth::TokenRegistry* registry_;
};

// A streaming call refused before it started: finishes at once with `status`.
template <typename Request>
class RejectedReadReactor final : public grpc::ServerReadReactor<Request> {
 public:
  explicit RejectedReadReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

template <typename Response>
class RejectedWriteReactor final : public grpc::ServerWriteReactor<Response> {
 public:
  explicit RejectedWriteReactor(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_AUTHORIZER_H_
