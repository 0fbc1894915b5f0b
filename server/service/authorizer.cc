#include "server/service/authorizer.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace coldfuse::service {

absl::StatusOr<auth::Identity> Authorizer::Check(const grpc::CallbackServerContext* ctx,
                                                 std::initializer_list<v1::Role> allowed,
                                                 absl::string_view rpc) const {
  if (registry_ == nullptr) return auth::Identity{"anonymous", v1::OPERATOR};
  std::string secret;
  const auto& md = ctx->client_metadata();
  auto it = md.find("authorization");
  if (it != md.end()) {
    absl::string_view value(it->second.data(), it->second.size());
    if (absl::StartsWithIgnoreCase(value, "bearer ")) {
      secret = std::string(absl::StripAsciiWhitespace(value.substr(7)));
    }
  }
  return CheckSecret(secret, allowed, rpc);
}

absl::StatusOr<auth::Identity> Authorizer::CheckSecret(absl::string_view secret,
                                                       std::initializer_list<v1::Role> allowed,
                                                       absl::string_view what) const {
  if (registry_ == nullptr) return auth::Identity{"anonymous", v1::OPERATOR};
  ASSIGN_OR_RETURN(auth::Identity id, registry_->Authenticate(secret));
  if (!auth::Allows(id.role, allowed)) {
    return absl::PermissionDeniedError(absl::StrCat("token '", id.name, "' has role ",
                                                    v1::Role_Name(id.role), "; ", what, " needs ",
                                                    auth::RoleNames(allowed)));
  }
  return id;
}

}  // namespace coldfuse::service
