// Access tokens and roles. A token is a random bearer secret ("cf_" + 64 hex digits)
// that the server stores only as its SHA-256; each has a unique name (a contributor's
// identity), a role, and optionally an expiry; it can be revoked. Thread-safe.
#ifndef COLDFUSE_SERVER_AUTH_TOKEN_REGISTRY_H_
#define COLDFUSE_SERVER_AUTH_TOKEN_REGISTRY_H_

#include <initializer_list>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/clock.h"
#include "server/storage/store.h"

namespace coldfuse::auth {

// Who is calling: the token's name and role.
struct Identity {
  std::string name;
  v1::Role role = v1::ROLE_UNSPECIFIED;
};

// Whether `role` may call an RPC open to the roles in `allowed`: operators may call
// everything; otherwise `role` must be one of `allowed`.
bool Allows(v1::Role role, std::initializer_list<v1::Role> allowed);
// "CONTRIBUTOR or EVALUATOR", for messages.
std::string RoleNames(std::initializer_list<v1::Role> roles);

struct CreatedToken {
  std::string secret;  // shown once
  v1::TokenInfo info;
};

class TokenRegistry {
 public:
  // Loads the stored tokens. The store and clock must outlive the registry.
  static absl::StatusOr<std::unique_ptr<TokenRegistry>> Create(storage::Store* store, Clock* clock);

  // ALREADY_EXISTS if an unrevoked token has this name; INVALID_ARGUMENT for a bad name,
  // role or ttl. A revoked name may be reused.
  absl::StatusOr<CreatedToken> CreateToken(absl::string_view name, v1::Role role,
                                           int64_t ttl_seconds, absl::string_view actor);
  // NOT_FOUND if no token has this name; FAILED_PRECONDITION if it is the last live
  // operator token (nobody could administer the server any more).
  absl::StatusOr<v1::TokenInfo> Revoke(absl::string_view name, absl::string_view actor);
  std::vector<v1::TokenInfo> List() const;
  bool HasOperator() const;

  // UNAUTHENTICATED (saying why) unless `secret` is a live token.
  absl::StatusOr<Identity> Authenticate(absl::string_view secret) const;

 private:
  TokenRegistry(storage::Store* store, Clock* clock) : store_(store), clock_(clock) {}

  storage::Store* const store_;
  Clock* const clock_;
  bool HasOperatorLocked(absl::string_view except) const ABSL_SHARED_LOCKS_REQUIRED(mu_);

  // Token changes one at a time, held across their synced write. Authentication only
  // takes mu_, which is never held across a write: a slow disk delays token changes,
  // not every RPC.
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  mutable absl::Mutex mu_;
  std::map<std::string, storage::StoredToken> by_name_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> name_by_hash_ ABSL_GUARDED_BY(mu_);
};

}  // namespace coldfuse::auth

#endif  // COLDFUSE_SERVER_AUTH_TOKEN_REGISTRY_H_
