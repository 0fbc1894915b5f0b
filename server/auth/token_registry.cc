#include "server/auth/token_registry.h"

#include <openssl/crypto.h>
#include <openssl/rand.h>

#include <algorithm>
#include <limits>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace coldfuse::auth {
namespace {

v1::AuditRecord Audit(absl::string_view actor, absl::string_view action, std::string detail) {
  v1::AuditRecord r;
  r.set_actor(std::string(actor));
  r.set_action(std::string(action));
  r.set_detail(std::move(detail));
  return r;
}

}  // namespace

bool Allows(v1::Role role, std::initializer_list<v1::Role> allowed) {
  if (role == v1::OPERATOR) return true;
  if (role == v1::ROLE_UNSPECIFIED) return false;
  return std::find(allowed.begin(), allowed.end(), role) != allowed.end();
}

std::string RoleNames(std::initializer_list<v1::Role> roles) {
  std::string out;
  for (v1::Role r : roles) absl::StrAppend(&out, out.empty() ? "" : " or ", v1::Role_Name(r));
  return out;
}

absl::StatusOr<std::unique_ptr<TokenRegistry>> TokenRegistry::Create(storage::Store* store,
                                                                     Clock* clock) {
  std::unique_ptr<TokenRegistry> r(new TokenRegistry(store, clock));
  ASSIGN_OR_RETURN(std::vector<storage::StoredToken> tokens, store->LoadTokens());
  absl::MutexLock l(&r->mu_);  // not shared yet; the analysis wants it all the same
  for (auto& t : tokens) {
    if (!t.info.revoked()) r->name_by_hash_[t.secret_sha256] = t.info.name();
    r->by_name_[t.info.name()] = std::move(t);
  }
  return r;
}

absl::StatusOr<CreatedToken> TokenRegistry::CreateToken(absl::string_view name, v1::Role role,
                                                        int64_t ttl_seconds,
                                                        absl::string_view actor) {
  RETURN_IF_ERROR(CheckName("token name", name, /*allow_empty=*/false));
  if (role != v1::CONTRIBUTOR && role != v1::VIEWER && role != v1::OPERATOR &&
      role != v1::EVALUATOR) {
    return absl::InvalidArgumentError("role must be contributor, viewer, evaluator or operator");
  }
  if (ttl_seconds < 0) return absl::InvalidArgumentError("ttl must not be negative");
  if (ttl_seconds > (std::numeric_limits<int64_t>::max() - clock_->NowUnixMs()) / 1000) {
    return absl::InvalidArgumentError("ttl is too large; use 0 for a token that never expires");
  }
  unsigned char raw[32];
  if (RAND_bytes(raw, sizeof(raw)) != 1) {
    return absl::InternalError("OpenSSL could not generate random bytes for a token");
  }
  CreatedToken out;
  out.secret = absl::StrCat("cf_", ToHex(absl::string_view(reinterpret_cast<char*>(raw), 32)));
  OPENSSL_cleanse(raw, sizeof(raw));
  out.info.set_name(std::string(name));
  out.info.set_role(role);
  out.info.set_created_unix_ms(clock_->NowUnixMs());
  if (ttl_seconds > 0)
    out.info.set_expires_unix_ms(out.info.created_unix_ms() + ttl_seconds * 1000);
  storage::StoredToken stored{Sha256::Of(out.secret), out.info};

  absl::MutexLock w(&write_mu_);
  {
    absl::ReaderMutexLock l(&mu_);
    auto it = by_name_.find(std::string(name));
    if (it != by_name_.end() && !it->second.info.revoked()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "a token named '", name, "' exists; revoke it first or choose another name"));
    }
  }
  RETURN_IF_ERROR(store_->PutToken(
      stored,
      {Audit(actor, "token_created",
             absl::StrCat(name, " role=", v1::Role_Name(role),
                          ttl_seconds > 0 ? absl::StrCat(" ttl=", ttl_seconds, "s") : ""))}));
  absl::MutexLock l(&mu_);
  auto it = by_name_.find(std::string(name));
  if (it != by_name_.end()) name_by_hash_.erase(it->second.secret_sha256);
  name_by_hash_[stored.secret_sha256] = std::string(name);
  by_name_[std::string(name)] = std::move(stored);
  return out;
}

absl::StatusOr<v1::TokenInfo> TokenRegistry::Revoke(absl::string_view name,
                                                    absl::string_view actor) {
  absl::MutexLock w(&write_mu_);
  storage::StoredToken updated;
  {
    absl::ReaderMutexLock l(&mu_);
    auto it = by_name_.find(std::string(name));
    if (it == by_name_.end()) {
      return absl::NotFoundError(absl::StrCat("no token named '", name, "'"));
    }
    updated = it->second;
    if (!updated.info.revoked() && updated.info.role() == v1::OPERATOR && HasOperatorLocked("") &&
        !HasOperatorLocked(name)) {
      return absl::FailedPreconditionError(
          absl::StrCat("'", name,
                       "' is the last operator token: revoking it would leave nobody able to "
                       "administer the server; create another first (coldfusectl token create "
                       "--role=operator --name=...)"));
    }
  }
  updated.info.set_revoked(true);
  RETURN_IF_ERROR(store_->PutToken(updated, {Audit(actor, "token_revoked", std::string(name))}));
  absl::MutexLock l(&mu_);
  name_by_hash_.erase(updated.secret_sha256);
  by_name_[std::string(name)] = updated;
  return updated.info;
}

std::vector<v1::TokenInfo> TokenRegistry::List() const {
  absl::ReaderMutexLock l(&mu_);
  std::vector<v1::TokenInfo> out;
  for (const auto& [name, t] : by_name_) out.push_back(t.info);
  return out;
}

bool TokenRegistry::HasOperator() const {
  absl::ReaderMutexLock l(&mu_);
  return HasOperatorLocked("");
}

bool TokenRegistry::HasOperatorLocked(absl::string_view except) const {
  const int64_t now = clock_->NowUnixMs();
  for (const auto& [name, t] : by_name_) {
    const bool expired = t.info.expires_unix_ms() != 0 && now >= t.info.expires_unix_ms();
    if (name != except && !t.info.revoked() && !expired && t.info.role() == v1::OPERATOR) {
      return true;
    }
  }
  return false;
}

absl::StatusOr<Identity> TokenRegistry::Authenticate(absl::string_view secret) const {
  if (secret.empty()) {
    return absl::UnauthenticatedError(
        "no token: send 'authorization: Bearer <token>' (coldfusectl/coldfuse-client "
        "--token_file)");
  }
  std::string hash = Sha256::Of(secret);
  absl::ReaderMutexLock l(&mu_);
  auto it = name_by_hash_.find(hash);
  if (it == name_by_hash_.end()) {
    // Revoked tokens are dropped from name_by_hash_, so they land here too.
    return absl::UnauthenticatedError("unknown or revoked token");
  }
  const v1::TokenInfo& info = by_name_.at(it->second).info;
  if (info.expires_unix_ms() != 0 && clock_->NowUnixMs() >= info.expires_unix_ms()) {
    return absl::UnauthenticatedError(
        absl::StrCat("token '", info.name(), "' expired; ask an operator for a new one"));
  }
  return Identity{info.name(), info.role()};
}

}  // namespace coldfuse::auth
