// Asynchronous contributions end to end: a real coldfused, three real coldfuse-client
// daemons of which one trains three times as many steps as the others, over several
// rounds. The slow one's contributions are fused as stale ones, and every fused base is
// recomputed here, independently, from what each daemon uploaded and the bases it was
// trained from.
#include <cmath>
#include <filesystem>
#include <map>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/posix_file.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

constexpr int kFeatures = 8;

class AsyncTest : public ::testing::Test {
 protected:
  std::unique_ptr<Process> StartDaemon(const ServerProcess& server, const std::string& name,
                                       int steps, int rounds, uint64_t seed,
                                       const std::vector<std::string>& more = {}) {
    const std::string data = absl::StrCat(dir_.path(), "/data-", name);
    std::filesystem::create_directories(data);
    WriteBlobsCsv(data + "/train.csv", kFeatures, 3, 200, seed);
    WriteBlobsCsv(data + "/test.csv", kFeatures, 3, 60, seed + 100);
    state_[name] = absl::StrCat(dir_.path(), "/state-", name);
    std::vector<std::string> args = {ClientBinary(),
                                     "--server=" + server.address(),
                                     "--name=" + name,
                                     "--task=blobs-" + name,
                                     "--state_dir=" + state_[name],
                                     "--keep_contributions=100",
                                     "--train=" + data + "/train.csv",
                                     "--test=" + data + "/test.csv",
                                     absl::StrCat("--max_rounds=", rounds),
                                     absl::StrCat("--steps=", steps),
                                     "--threads=1",
                                     "--poll_s=0.05"};
    args.insert(args.end(), more.begin(), more.end());
    return Process::Start(args, absl::StrCat(dir_.path(), "/client-", name, ".log"));
  }

  // Base `round` recomputed from round `round`'s record, the uploads the daemons kept and
  // the bases their contributions were trained from: each stale contribution x trained
  // from f enters as f32(b + w (x - f)) (b the round's base), then the plain mean in
  // binary32, in contribution order (docs/protocol.md, "Fusion arithmetic").
  void ExpectRecomputed(const ServerProcess& server, const v1::RoundInfo& round) {
    auto pull = [&](uint64_t v) {
      auto b = rpc::PullBase(server.channel(), v);
      EXPECT_TRUE(b.ok()) << b.status();
      return b.ok() ? std::move(b->tensors) : std::vector<HostTensor>{};
    };
    const std::vector<HostTensor> base = pull(round.base_version());
    const std::vector<HostTensor> fused = pull(round.result_base_version());
    ASSERT_FALSE(base.empty());
    std::vector<std::vector<float>> acc(base.size());
    for (size_t t = 0; t < base.size(); ++t) acc[t].assign(Floats(base[t]).size(), 0.0f);
    const float w = static_cast<float>(1.0 / round.contributions_size());
    for (const auto& c : round.contributions()) {
      ASSERT_EQ(c.state(), v1::ACCEPTED);
      const SavedContribution up =
          ReadSavedContribution(state_.at(c.contributor()), round.number());
      // What the daemon kept is what the server received, trained from where it says.
      ASSERT_EQ(TensorsSha256(up.tensors), c.sha256()) << c.contributor() << " " << round.number();
      ASSERT_EQ(up.header.base_version(), c.trained_from_base());
      const bool stale = c.trained_from_base() != round.base_version();
      const std::vector<HostTensor> from = stale ? pull(c.trained_from_base()) : base;
      EXPECT_DOUBLE_EQ(c.staleness_weight(), std::pow(1.0 + c.staleness(), -0.5));
      for (size_t t = 0; t < base.size(); ++t) {
        const std::vector<float> x = Floats(up.tensors[t]), f = Floats(from[t]),
                                 b = Floats(base[t]);
        for (size_t i = 0; i < x.size(); ++i) {
          const float in =
              stale ? static_cast<float>(double{b[i]} +
                                         c.staleness_weight() * (double{x[i]} - double{f[i]}))
                    : x[i];
          acc[t][i] = acc[t][i] + w * in;
        }
      }
    }
    for (size_t t = 0; t < base.size(); ++t) {
      const std::vector<float> got = Floats(fused[t]);
      ASSERT_EQ(got.size(), acc[t].size());
      for (size_t i = 0; i < got.size(); ++i) {
        ASSERT_NEAR(got[i], acc[t][i], 1e-6f * std::max(1.0f, std::fabs(acc[t][i])))
            << fused[t].spec.name() << "[" << i << "] of base v" << round.result_base_version();
      }
    }
  }

  TempDir dir_;
  std::map<std::string, std::string> state_;
};

TEST_F(AsyncTest, ASlowContributorIsFusedWithStalenessAndEveryBaseIsRecomputedExactly) {
  // Rounds close at 2 contributions; a round holding only the slow one's closes on time.
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=2", "--round_timeout_s=3"});
  ASSERT_NE(server, nullptr);
  RunCommand(
      {CtlBinary(), "--server=" + server->address(), "init", "--spec=mlp:8,32,8", "--seed=3"});
  ASSERT_TRUE(server->Status().initialized());

  std::vector<std::unique_ptr<Process>> fast;
  fast.push_back(StartDaemon(*server, "alice", 400, 6, 1));
  fast.push_back(StartDaemon(*server, "bob", 400, 6, 2));
  auto slow = StartDaemon(*server, "carol", 1200, 2, 3);
  for (auto* p : {fast[0].get(), fast[1].get(), slow.get()}) {
    auto code = p->Wait(seconds(300));
    ASSERT_TRUE(code.has_value()) << "a daemon did not finish; logs in " << dir_.path();
    EXPECT_EQ(*code, 0) << "a daemon failed; logs in " << dir_.path();
  }
  // Let a round holding only carol's contribution close on its timeout.
  ASSERT_TRUE(server->WaitForBase(
      server->Status().base_version() + (server->Status().open_round().contributions_size() > 0),
      seconds(30)));

  const std::vector<v1::RoundInfo> rounds = server->Rounds();
  int carol_fused = 0, carol_stale = 0, closed = 0;
  for (const auto& r : rounds) {
    if (r.state() != v1::CLOSED) continue;
    ++closed;
    ASSERT_NO_FATAL_FAILURE(ExpectRecomputed(*server, r));
    std::cout << "round " << r.number() << " (base v" << r.base_version() << "):";
    for (const auto& c : r.contributions()) {
      std::cout << " " << c.contributor() << " from v" << c.trained_from_base();
    }
    std::cout << "\n";
    for (const auto& c : r.contributions()) {
      EXPECT_EQ(c.staleness() > 0, c.trained_from_base() != r.base_version());
      if (c.contributor() != "carol") continue;
      ++carol_fused;
      if (c.staleness() >= 1) ++carol_stale;
    }
  }
  EXPECT_GE(closed, 4);
  EXPECT_EQ(carol_fused, 2) << "both of the slow contributor's trainings are fused";
  EXPECT_GE(carol_stale, 1) << "the slow contributor trained while rounds closed";

  // The status API and the CLI show staleness.
  const v1::ServerStatus s = server->Status();
  EXPECT_EQ(s.staleness().max_staleness(), 4u);
  EXPECT_EQ(s.staleness().accepted_base_versions(0), s.base_version());
  for (const auto& r : rounds) {
    for (const auto& c : r.contributions()) {
      if (c.contributor() != "carol" || c.staleness() == 0) continue;
      auto shown = RunCommand(
          {CtlBinary(), "--server=" + server->address(), "round", absl::StrCat(r.number())});
      EXPECT_TRUE(absl::StrContains(shown.output, absl::StrCat("v", c.trained_from_base())))
          << shown.output;
      EXPECT_TRUE(absl::StrContains(shown.output, absl::StrCat(c.staleness(), " (x")))
          << shown.output;
    }
  }
}

// A contributor whose planned training would outlast the round, started with
// --stop_before_deadline_s, trains what fits before the round's deadline (less the margin)
// and makes the round instead of arriving stale.
TEST_F(AsyncTest, AContributorAskedToMeetTheDeadlineTrainsWhatFitsAndMakesTheRound) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=3", "--round_timeout_s=20"});
  ASSERT_NE(server, nullptr);
  RunCommand(
      {CtlBinary(), "--server=" + server->address(), "init", "--spec=mlp:8,32,8", "--seed=3"});
  // Alice's contribution starts the round's clock: it closes 20 s after it opened.
  auto alice = StartDaemon(*server, "alice", 10, 1, 1);
  ASSERT_EQ(alice->Wait(seconds(120)).value_or(-1), 0);
  const int64_t closes_by = server->Status().round_closes_by_unix_ms();
  ASSERT_GT(closes_by, 0);
  // Carol plans far more steps than 20 s allow, and leaves 8 s for evaluation and upload.
  auto carol = StartDaemon(*server, "carol", 2000000, 1, 3, {"--stop_before_deadline_s=8"});
  ASSERT_EQ(carol->Wait(seconds(120)).value_or(-1), 0) << "logs in " << dir_.path();
  ASSERT_TRUE(server->WaitForBase(1, seconds(60)));
  const v1::RoundInfo first = server->Rounds().front();
  ASSERT_EQ(first.contributions_size(), 2);
  EXPECT_EQ(first.contributions(1).contributor(), "carol");
  EXPECT_EQ(first.contributions(1).staleness(), 0u);
  EXPECT_LT(first.contributions(1).received_unix_ms(), closes_by);
  auto log = ReadFileToString(dir_.path() + "/client-carol.log");
  ASSERT_TRUE(log.ok());
  EXPECT_TRUE(absl::StrContains(*log, "of 2000000 planned, ended to meet the round's deadline"))
      << *log;
}

TEST_F(AsyncTest, AContributionBeyondMaxStalenessIsRefusedAndNothingOfItIsStored) {
  auto server =
      ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                           {"--min_contributions=1", "--round_timeout_s=0", "--max_staleness=1"});
  ASSERT_NE(server, nullptr);
  RunCommand(
      {CtlBinary(), "--server=" + server->address(), "init", "--spec=mlp:8,32,8", "--seed=3"});
  auto v0 = rpc::PullBase(server->channel(), 0);
  ASSERT_TRUE(v0.ok()) << v0.status();
  auto push = [&](uint64_t round, uint64_t from, const std::string& who, float shift) {
    std::vector<HostTensor> t = v0->tensors;
    for (auto& x : t) {
      std::vector<float> v = Floats(x);
      for (float& e : v) e += shift;
      x.data.assign(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
    }
    v1::ContributionHeader h;
    h.set_round(round);
    h.set_base_version(from);
    h.set_contributor(who);
    h.set_num_examples(10);
    *h.mutable_manifest() = ManifestOf(t);
    return rpc::PushContribution(server->channel(), h, t);
  };
  for (uint64_t r = 1; r <= 2; ++r) {
    ASSERT_TRUE(push(r, r - 1, "alice", 0.01f).ok());
    ASSERT_TRUE(server->WaitForBase(r, seconds(30)));
  }
  const std::vector<v1::RoundInfo> before = server->Rounds();
  auto refused = push(1, 0, "carol", 0.02f);  // from v0: 2 fusions old, bound 1
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition) << refused.status();
  for (const char* says : {"base v0", "2 fusions older", "--max_staleness=1", "from base v2, v1"}) {
    EXPECT_TRUE(absl::StrContains(refused.status().message(), says))
        << says << " in: " << refused.status().message();
  }
  EXPECT_EQ(server->Rounds().back().contributions_size(), 0);
  EXPECT_EQ(server->Rounds().size(), before.size());
  // From v1 (1 fusion old) it is taken.
  auto ok = push(2, 1, "carol", 0.02f);
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ok->round(), 3u);
}

}  // namespace
}  // namespace coldfuse::testing
