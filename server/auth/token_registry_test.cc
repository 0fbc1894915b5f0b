#include "server/auth/token_registry.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <limits>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "common/sha256.h"
#include "server/rounds/test_util.h"

namespace coldfuse::auth {
namespace {

constexpr int64_t kStartMs = 1'700'000'000'000;

bool IsLowerHex(const std::string& s) {
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

class TokenRegistryTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  // A server restart: registry and store closed, the same folder opened again.
  void Reopen() {
    registry_.reset();
    store_.reset();
    storage::StoreOptions so;
    so.sync_commits = false;  // nothing here crashes
    auto s = storage::Store::Open(dir_.path(), so);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
    auto r = TokenRegistry::Create(store_.get(), &clock_);
    ASSERT_TRUE(r.ok()) << r.status();
    registry_ = std::move(*r);
  }

  CreatedToken MustCreate(const std::string& name, v1::Role role, int64_t ttl_seconds = 0) {
    auto t = registry_->CreateToken(name, role, ttl_seconds, "op");
    EXPECT_TRUE(t.ok()) << t.status();
    return t.ok() ? *std::move(t) : CreatedToken();
  }

  std::vector<v1::AuditRecord> Audit() {
    auto a = store_->ReadAudit(0, 1000);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *std::move(a) : std::vector<v1::AuditRecord>();
  }

  testing_util::TempDir dir_;
  FakeClock clock_{kStartMs};
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<TokenRegistry> registry_;
};

TEST_F(TokenRegistryTest, CreatedSecretAuthenticatesAsItsNameAndRole) {
  CreatedToken alice = MustCreate("alice", v1::CONTRIBUTOR);
  ASSERT_EQ(alice.secret.size(), 3u + 64u) << alice.secret;
  EXPECT_TRUE(absl::StartsWith(alice.secret, "cf_")) << alice.secret;
  EXPECT_TRUE(IsLowerHex(alice.secret.substr(3))) << alice.secret;
  EXPECT_EQ(alice.info.name(), "alice");
  EXPECT_EQ(alice.info.role(), v1::CONTRIBUTOR);
  EXPECT_EQ(alice.info.created_unix_ms(), kStartMs);
  EXPECT_EQ(alice.info.expires_unix_ms(), 0);
  EXPECT_FALSE(alice.info.revoked());

  CreatedToken viewer = MustCreate("dash", v1::VIEWER);
  EXPECT_NE(viewer.secret, alice.secret);

  auto id = registry_->Authenticate(alice.secret);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->name, "alice");
  EXPECT_EQ(id->role, v1::CONTRIBUTOR);
  id = registry_->Authenticate(viewer.secret);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->name, "dash");
  EXPECT_EQ(id->role, v1::VIEWER);

  // A near miss is not a token.
  std::string wrong = alice.secret;
  wrong.back() = wrong.back() == '0' ? '1' : '0';
  EXPECT_EQ(registry_->Authenticate(wrong).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(registry_->Authenticate(alice.secret.substr(3)).status().code(),
            absl::StatusCode::kUnauthenticated);
}

TEST_F(TokenRegistryTest, SecretIsStoredOnlyAsItsSha256) {
  CreatedToken t = MustCreate("alice", v1::OPERATOR);
  const std::string hex = t.secret.substr(3);
  Reopen();
  auto tokens = store_->LoadTokens();
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 1u);
  const storage::StoredToken& stored = (*tokens)[0];
  EXPECT_EQ(stored.info.name(), "alice");
  ASSERT_EQ(stored.secret_sha256.size(), 32u);
  EXPECT_EQ(stored.secret_sha256, Sha256::Of(t.secret));
  const std::string record = stored.secret_sha256 + stored.info.SerializeAsString();
  EXPECT_FALSE(absl::StrContains(record, t.secret));
  EXPECT_FALSE(absl::StrContains(record, hex));

  // Nor anywhere else in the data folder (log, tables, manifests).
  registry_.reset();
  store_.reset();
  int files = 0;
  for (const auto& entry : std::filesystem::recursive_directory_iterator(dir_.path())) {
    if (!entry.is_regular_file()) continue;
    std::ifstream in(entry.path(), std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    ++files;
    EXPECT_FALSE(absl::StrContains(bytes, hex)) << entry.path();
  }
  EXPECT_GT(files, 0);
}

TEST_F(TokenRegistryTest, DuplicateLiveNameIsAlreadyExists) {
  CreatedToken first = MustCreate("alice", v1::CONTRIBUTOR);
  auto again = registry_->CreateToken("alice", v1::VIEWER, 0, "op");
  EXPECT_EQ(again.status().code(), absl::StatusCode::kAlreadyExists) << again.status();
  // The first token is untouched.
  auto id = registry_->Authenticate(first.secret);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->role, v1::CONTRIBUTOR);
  EXPECT_EQ(registry_->List().size(), 1u);
  // Also after a restart.
  Reopen();
  EXPECT_EQ(registry_->CreateToken("alice", v1::CONTRIBUTOR, 0, "op").status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(TokenRegistryTest, BadNameRoleOrTtlIsInvalidArgumentAndCreatesNothing) {
  for (const std::string& name :
       {std::string(), std::string("bad name"), std::string("slash/name"),
        std::string("semi;colon"), std::string("new\nline"), std::string(129, 'a')}) {
    EXPECT_EQ(registry_->CreateToken(name, v1::CONTRIBUTOR, 0, "op").status().code(),
              absl::StatusCode::kInvalidArgument)
        << "'" << name << "'";
  }
  for (v1::Role role : {v1::ROLE_UNSPECIFIED, static_cast<v1::Role>(99)}) {
    EXPECT_EQ(registry_->CreateToken("alice", role, 0, "op").status().code(),
              absl::StatusCode::kInvalidArgument)
        << role;
  }
  EXPECT_EQ(registry_->CreateToken("alice", v1::CONTRIBUTOR, -1, "op").status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(registry_->List().empty());
  EXPECT_TRUE(Audit().empty());
  // The longest allowed name and every allowed character work.
  MustCreate(std::string(128, 'a'), v1::CONTRIBUTOR);
  MustCreate("Alice.O-k_1@lab", v1::CONTRIBUTOR);
}

TEST_F(TokenRegistryTest, RevokedTokenNoLongerAuthenticates) {
  CreatedToken t = MustCreate("alice", v1::CONTRIBUTOR);
  CreatedToken other = MustCreate("bob", v1::CONTRIBUTOR);
  auto info = registry_->Revoke("alice", "op");
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_TRUE(info->revoked());
  EXPECT_EQ(info->name(), "alice");

  auto id = registry_->Authenticate(t.secret);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
  EXPECT_TRUE(registry_->Authenticate(other.secret).ok());
  std::vector<v1::TokenInfo> list = registry_->List();
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].name(), "alice");
  EXPECT_TRUE(list[0].revoked());
  EXPECT_FALSE(list[1].revoked());

  EXPECT_EQ(registry_->Revoke("carol", "op").status().code(), absl::StatusCode::kNotFound);
  Reopen();
  EXPECT_EQ(registry_->Authenticate(t.secret).status().code(), absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(registry_->Authenticate(other.secret).ok());
}

TEST_F(TokenRegistryTest, RevokedNameCanBeReusedAndTheOldSecretStaysDead) {
  CreatedToken old_token = MustCreate("alice", v1::CONTRIBUTOR);
  ASSERT_TRUE(registry_->Revoke("alice", "op").ok());
  CreatedToken new_token = MustCreate("alice", v1::VIEWER);
  EXPECT_NE(new_token.secret, old_token.secret);
  EXPECT_FALSE(new_token.info.revoked());

  auto id = registry_->Authenticate(new_token.secret);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->name, "alice");
  EXPECT_EQ(id->role, v1::VIEWER);
  EXPECT_EQ(registry_->Authenticate(old_token.secret).status().code(),
            absl::StatusCode::kUnauthenticated);
  ASSERT_EQ(registry_->List().size(), 1u);
  EXPECT_FALSE(registry_->List()[0].revoked());

  Reopen();
  EXPECT_TRUE(registry_->Authenticate(new_token.secret).ok());
  EXPECT_EQ(registry_->Authenticate(old_token.secret).status().code(),
            absl::StatusCode::kUnauthenticated);
  // The reused name is live again, so it cannot be created a third time.
  EXPECT_EQ(registry_->CreateToken("alice", v1::VIEWER, 0, "op").status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(TokenRegistryTest, TokenExpiresAfterItsTtl) {
  CreatedToken t = MustCreate("alice", v1::CONTRIBUTOR, /*ttl_seconds=*/60);
  EXPECT_EQ(t.info.expires_unix_ms(), kStartMs + 60'000);
  clock_.AdvanceMs(59'000);
  EXPECT_TRUE(registry_->Authenticate(t.secret).ok());
  clock_.AdvanceMs(999);
  EXPECT_TRUE(registry_->Authenticate(t.secret).ok());
  clock_.AdvanceMs(1);  // exactly +60 s
  auto id = registry_->Authenticate(t.secret);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
  EXPECT_TRUE(absl::StrContains(id.status().message(), "expired")) << id.status();
  // Expiry survives a restart.
  Reopen();
  id = registry_->Authenticate(t.secret);
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
  EXPECT_TRUE(absl::StrContains(id.status().message(), "expired")) << id.status();
}

TEST_F(TokenRegistryTest, HugeTtlIsRefusedOrNeverExpires) {
  auto t =
      registry_->CreateToken("alice", v1::CONTRIBUTOR, std::numeric_limits<int64_t>::max(), "op");
  if (!t.ok()) {
    EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument) << t.status();
    return;
  }
  EXPECT_TRUE(registry_->Authenticate(t->secret).ok());
}

TEST_F(TokenRegistryTest, EmptySecretIsUnauthenticatedAndSaysHowToSendOne) {
  MustCreate("alice", v1::CONTRIBUTOR);
  auto id = registry_->Authenticate("");
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnauthenticated) << id.status();
  EXPECT_TRUE(absl::StrContains(id.status().message(), "Bearer")) << id.status();
}

TEST_F(TokenRegistryTest, TokensSurviveARestart) {
  CreatedToken op = MustCreate("root", v1::OPERATOR);
  CreatedToken viewer = MustCreate("dash", v1::VIEWER, /*ttl_seconds=*/3600);
  CreatedToken gone = MustCreate("mallory", v1::CONTRIBUTOR);
  ASSERT_TRUE(registry_->Revoke("mallory", "root").ok());
  std::vector<v1::TokenInfo> before = registry_->List();

  Reopen();
  std::vector<v1::TokenInfo> after = registry_->List();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].SerializeAsString(), before[i].SerializeAsString()) << after[i].name();
  }
  auto id = registry_->Authenticate(op.secret);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->name, "root");
  EXPECT_EQ(id->role, v1::OPERATOR);
  id = registry_->Authenticate(viewer.secret);
  ASSERT_TRUE(id.ok()) << id.status();
  EXPECT_EQ(id->role, v1::VIEWER);
  EXPECT_EQ(registry_->Authenticate(gone.secret).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_TRUE(registry_->HasOperator());
}

TEST_F(TokenRegistryTest, HasOperatorCountsOnlyUnrevokedOperators) {
  EXPECT_FALSE(registry_->HasOperator());
  MustCreate("alice", v1::CONTRIBUTOR);
  MustCreate("dash", v1::VIEWER);
  EXPECT_FALSE(registry_->HasOperator());
  MustCreate("root", v1::OPERATOR);
  EXPECT_TRUE(registry_->HasOperator());
  Reopen();
  EXPECT_TRUE(registry_->HasOperator());
  MustCreate("root2", v1::OPERATOR, /*ttl_seconds=*/60);
  ASSERT_TRUE(registry_->Revoke("root", "root").ok());
  EXPECT_TRUE(registry_->HasOperator());
  clock_.AdvanceMs(60'000);
  EXPECT_FALSE(registry_->HasOperator());
  Reopen();
  EXPECT_FALSE(registry_->HasOperator());
}

TEST_F(TokenRegistryTest, LastOperatorTokenCannotBeRevoked) {
  MustCreate("root", v1::OPERATOR);
  MustCreate("alice", v1::CONTRIBUTOR);
  auto r = registry_->Revoke("root", "root");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("create another first"), std::string::npos) << r.status();
  EXPECT_TRUE(registry_->HasOperator());
  // With a second operator, either may go, but not both.
  MustCreate("ops2", v1::OPERATOR);
  ASSERT_TRUE(registry_->Revoke("root", "ops2").ok());
  EXPECT_EQ(registry_->Revoke("ops2", "ops2").status().code(),
            absl::StatusCode::kFailedPrecondition);
  // An expired operator token does not count as the one left.
  CreatedToken temp = MustCreate("temp", v1::OPERATOR, /*ttl_seconds=*/60);
  clock_.AdvanceMs(60'000);
  EXPECT_EQ(registry_->Revoke("ops2", "ops2").status().code(),
            absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(registry_->Revoke("temp", "ops2").ok());
  ASSERT_TRUE(registry_->Revoke("alice", "ops2").ok());
  Reopen();
  EXPECT_TRUE(registry_->HasOperator());
}

TEST_F(TokenRegistryTest, ExpiredOperatorDoesNotCount) {
  CreatedToken op = MustCreate("root", v1::OPERATOR, /*ttl_seconds=*/60);
  EXPECT_TRUE(registry_->HasOperator());
  clock_.AdvanceMs(60'000);
  ASSERT_FALSE(registry_->Authenticate(op.secret).ok());
  EXPECT_FALSE(registry_->HasOperator());
}

TEST(AllowsTest, RoleMatrix) {
  const v1::Role roles[] = {v1::ROLE_UNSPECIFIED, v1::CONTRIBUTOR, v1::VIEWER, v1::OPERATOR,
                            v1::EVALUATOR};
  for (v1::Role required : roles) {
    SCOPED_TRACE(v1::Role_Name(required));
    EXPECT_TRUE(Allows(v1::OPERATOR, {required}));
    EXPECT_EQ(Allows(v1::VIEWER, {required}), required == v1::VIEWER);
    EXPECT_EQ(Allows(v1::CONTRIBUTOR, {required}), required == v1::CONTRIBUTOR);
    EXPECT_EQ(Allows(v1::EVALUATOR, {required}), required == v1::EVALUATOR);
    EXPECT_FALSE(Allows(v1::ROLE_UNSPECIFIED, {required}));
  }
  // Pulling a base is open to evaluators too; pushing is not.
  EXPECT_TRUE(Allows(v1::EVALUATOR, {v1::CONTRIBUTOR, v1::EVALUATOR}));
  EXPECT_FALSE(Allows(v1::VIEWER, {v1::CONTRIBUTOR, v1::EVALUATOR}));
  EXPECT_EQ(RoleNames({v1::CONTRIBUTOR, v1::EVALUATOR}), "CONTRIBUTOR or EVALUATOR");
}

TEST_F(TokenRegistryTest, CreateAndRevokeAreAuditedWithTheActor) {
  MustCreate("alice", v1::CONTRIBUTOR, /*ttl_seconds=*/60);  // actor "op"
  ASSERT_TRUE(registry_->Revoke("alice", "root").ok());
  // A refused create or revoke is not a change, and is not recorded.
  EXPECT_FALSE(registry_->CreateToken("bad name", v1::CONTRIBUTOR, 0, "op").ok());
  EXPECT_FALSE(registry_->Revoke("nobody", "root").ok());

  std::vector<v1::AuditRecord> audit = Audit();
  ASSERT_EQ(audit.size(), 2u);
  EXPECT_EQ(audit[0].action(), "token_created");
  EXPECT_EQ(audit[0].actor(), "op");
  EXPECT_TRUE(absl::StrContains(audit[0].detail(), "alice")) << audit[0].detail();
  EXPECT_TRUE(absl::StrContains(audit[0].detail(), "CONTRIBUTOR")) << audit[0].detail();
  EXPECT_EQ(audit[1].action(), "token_revoked");
  EXPECT_EQ(audit[1].actor(), "root");
  EXPECT_TRUE(absl::StrContains(audit[1].detail(), "alice")) << audit[1].detail();
  EXPECT_LT(audit[0].seq(), audit[1].seq());
  // The secret never reaches the audit log.
  for (const auto& r : audit) EXPECT_FALSE(absl::StrContains(r.detail(), "cf_")) << r.detail();
}

// The server (server.cc:66-76) opens the store and may create the bootstrap operator
// token before anything calls Store::Load(). That token_created record must not take
// the sequence number of an existing audit record.
TEST_F(TokenRegistryTest, AuditAfterARestartDoesNotOverwriteOlderRecords) {
  MustCreate("alice", v1::CONTRIBUTOR);
  ASSERT_TRUE(registry_->Revoke("alice", "op").ok());
  Reopen();  // the registry does not call Store::Load(), as at server start-up
  MustCreate("bob", v1::OPERATOR);
  std::vector<v1::AuditRecord> audit = Audit();
  ASSERT_EQ(audit.size(), 3u);
  EXPECT_EQ(audit[0].action(), "token_created");
  EXPECT_TRUE(absl::StrContains(audit[0].detail(), "alice")) << audit[0].detail();
  EXPECT_EQ(audit[1].action(), "token_revoked");
  EXPECT_EQ(audit[2].action(), "token_created");
  EXPECT_TRUE(absl::StrContains(audit[2].detail(), "bob")) << audit[2].detail();
  EXPECT_EQ(audit[2].seq(), 3u);
}

}  // namespace
}  // namespace coldfuse::auth
