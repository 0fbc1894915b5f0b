// A data folder written by the previous release (storage format 1, the committed fixture
// tests/fixtures/store-v1, made by its make.sh) opens in today's coldfused, which
// migrates it, and serves the same state: model, rounds, contributions, audit log,
// tokens and the bytes of every base; then it keeps working and restarts as the current format.
#include <google/protobuf/util/json_util.h>
#include <google/protobuf/util/message_differencer.h>

#include <map>
#include <regex>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/posix_file.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

const std::string kFixture = std::string(STORE_V1_FIXTURE);

template <typename Proto>
Proto FromJsonFile(const std::string& path) {
  Proto p;
  auto text = ReadFileToString(path);
  EXPECT_TRUE(text.ok()) << text.status();
  if (text.ok()) {
    auto st = google::protobuf::util::JsonStringToMessage(*text, &p);
    EXPECT_TRUE(st.ok()) << path << ": " << st.ToString();
  }
  return p;
}

std::string Secret(const std::string& name) {
  auto t = ReadFileToString(kFixture + "/" + name + ".token");
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::string(absl::StripAsciiWhitespace(*t)) : "";
}

class MigrationTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = dir_.path() + "/certs";
    auto certs = RunCommand({"/bin/bash", MAKE_CERTS_SCRIPT, certs_});
    ASSERT_EQ(certs.exit_code, 0) << certs.output;
    auto untar = RunCommand({"tar", "-C", dir_.path(), "-xzf", kFixture + "/db.tar.gz"});
    ASSERT_EQ(untar.exit_code, 0) << untar.output;
  }

  std::unique_ptr<ServerProcess> Start() {
    // No --bootstrap_token_file: the migrated operator token must be there.
    auto s = ServerProcess::Start(
        dir_.path() + "/db", dir_.path() + "/server.log",
        {"--tls_cert=" + certs_ + "/server.crt", "--tls_key=" + certs_ + "/server.key",
         "--min_contributions=2", "--round_timeout_s=0"});
    if (s != nullptr) s->set_channel(Channel(*s, Secret("operator")));
    return s;
  }

  std::shared_ptr<grpc::Channel> Channel(const ServerProcess& s, const std::string& token) {
    rpc::ConnectOptions options;
    options.tls.ca_file = certs_ + "/ca.crt";
    options.token = token;
    auto c = rpc::Connect(s.address(), options);
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }

  // Fields newer than the fixture, on a contribution of round `round`: a format-1
  // contribution was trained from its round's base and stored under its round. Cleared
  // once checked, so the rest compares with the fixture as recorded.
  static void ExpectSynchronousAndClear(v1::RoundInfo* round) {
    for (auto& c : *round->mutable_contributions()) {
      EXPECT_EQ(c.trained_from_base(), round->base_version());
      EXPECT_EQ(c.staleness(), 0u);
      EXPECT_EQ(c.staleness_weight(), 1.0);
      EXPECT_EQ(c.upload_round(), round->number());
      c.clear_trained_from_base();
      c.clear_staleness_weight();
      c.clear_upload_round();
    }
  }

  // Everything the fixture recorded, compared with what the server serves now.
  void ExpectTheFixturesState(const ServerProcess& s) {
    google::protobuf::util::MessageDifferencer diff;
    std::string report;
    diff.ReportDifferencesToString(&report);

    auto want_status = FromJsonFile<v1::ServerStatus>(kFixture + "/status.json");
    v1::ServerStatus got_status = s.Status();
    // Storage status is newer than the fixture: every base is still stored, none pinned.
    uint64_t newest = got_status.base_version();
    for (uint64_t v : got_status.bad_base_versions()) newest = std::max(newest, v);
    EXPECT_EQ(got_status.storage().stored_base_versions_size(), static_cast<int>(newest + 1));
    EXPECT_EQ(got_status.storage().pinned_base_versions_size(), 0);
    EXPECT_GT(got_status.storage().disk_bytes(), 0u);
    for (auto* st : {&want_status, &got_status}) {
      st->clear_storage();
      st->clear_change_seq();
      st->clear_server_time_unix_ms();
      st->clear_round_timeout_ms();  // flags of this run
      st->clear_min_contributions();
      st->clear_staleness();
      st->clear_round_closes_by_unix_ms();
    }
    ExpectSynchronousAndClear(got_status.mutable_open_round());
    EXPECT_TRUE(diff.Compare(want_status, got_status)) << report;

    auto want_rounds = FromJsonFile<v1::ListRoundsResponse>(kFixture + "/rounds.json");
    v1::ListRoundsResponse got_rounds;
    for (auto& r : s.Rounds()) {
      *got_rounds.add_rounds() = r;
      ExpectSynchronousAndClear(&got_rounds.mutable_rounds()->at(got_rounds.rounds_size() - 1));
    }
    report.clear();
    EXPECT_TRUE(diff.Compare(want_rounds, got_rounds)) << report;

    auto want_audit = FromJsonFile<v1::ListAuditResponse>(kFixture + "/audit.json");
    v1::ListAuditResponse got_audit;
    {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
      v1::ListAuditRequest req;
      req.set_limit(1000);
      ASSERT_TRUE(v1::Admin::NewStub(s.channel())->ListAudit(&ctx, req, &got_audit).ok());
    }
    ASSERT_GE(got_audit.records_size(), want_audit.records_size());
    got_audit.mutable_records()->DeleteSubrange(
        want_audit.records_size(), got_audit.records_size() - want_audit.records_size());
    report.clear();
    EXPECT_TRUE(diff.Compare(want_audit, got_audit)) << report;

    // The bytes of every base: the SHA-256 its base_created record names.
    std::regex created("^v([0-9]+) .*sha256=([0-9a-f]{64})$");
    int bases = 0;
    for (const auto& rec : want_audit.records()) {
      std::smatch m;
      if (rec.action() != "base_created" || !std::regex_match(rec.detail(), m, created)) continue;
      auto base = rpc::PullBase(s.channel(), std::stoull(m[1]));
      ASSERT_TRUE(base.ok()) << base.status();
      EXPECT_EQ(ToHex(TensorsSha256(base->tensors)), m[2]) << "base v" << m[1];
      ++bases;
    }
    EXPECT_EQ(bases, 3);

    // Tokens: the list is the same, and the secrets still authenticate (or not).
    auto list =
        RunCommand({CtlBinary(), "--server=" + s.address(), "--tls_ca=" + certs_ + "/ca.crt",
                    "--token_file=" + dir_.path() + "/operator.token", "token", "list"});
    auto want_list = ReadFileToString(kFixture + "/tokens.txt");
    ASSERT_TRUE(want_list.ok());
    EXPECT_EQ(list.output, *want_list);
    EXPECT_TRUE(rpc::GetRound(Channel(s, Secret("alice")), seconds(10)).ok());
    auto revoked = rpc::GetRound(Channel(s, Secret("mallory")), seconds(10));
    EXPECT_TRUE(absl::IsUnauthenticated(revoked.status())) << revoked.status();
  }

  TempDir dir_;
  std::string certs_;
};

TEST_F(MigrationTest, AFormat1StoreServesTheSameStateAndKeepsWorking) {
  ASSERT_TRUE(
      WriteFileAtomic(dir_.path() + "/operator.token", Secret("operator") + "\n", 0600).ok());
  auto server = Start();
  ASSERT_NE(server, nullptr);
  ExpectTheFixturesState(*server);

  // It keeps working: round 4 (one contribution in the fixture) closes at quorum 2 into
  // base v3 (v2 was rolled back, and version numbers are never reused).
  auto round = rpc::GetRound(Channel(*server, Secret("alice")), seconds(10));
  ASSERT_TRUE(round.ok()) << round.status();
  EXPECT_EQ(round->round(), 4u);
  auto base = rpc::PullBase(server->channel(), std::nullopt);
  ASSERT_TRUE(base.ok()) << base.status();
  v1::ContributionHeader h;
  h.set_round(round->round());
  h.set_base_version(round->base_version());
  h.set_num_examples(4);
  *h.mutable_manifest() = round->manifest();
  auto receipt = rpc::PushContribution(Channel(*server, Secret("alice")), h, base->tensors);
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  ASSERT_TRUE(server->WaitForBase(3, std::chrono::seconds(30)));

  // A restart opens it in the current format with everything still there.
  ASSERT_EQ(server->Stop(), 0);
  server = Start();
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->Status().base_version(), 3u);
  EXPECT_EQ(server->Rounds().size(), 5u);
  EXPECT_EQ(server->Rounds()[3].contributions_size(), 2);
  auto again = rpc::PullBase(server->channel(), 1);
  ASSERT_TRUE(again.ok()) << again.status();
}

}  // namespace
}  // namespace coldfuse::testing
