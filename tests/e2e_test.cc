// End to end: a real coldfused with a real RocksDB, real coldfuse-client processes that
// fine-tune with LibTorch, and coldfusectl, all on loopback.
#include <google/protobuf/util/json_util.h>

#include <cmath>
#include <filesystem>
#include <map>

#include "absl/strings/str_cat.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

struct Contributor {
  std::string name;
  std::string state_dir;
  int classes;
  int rows;
};

class EndToEndTest : public ::testing::Test {
 protected:
  // Writes each contributor's data and starts its daemon for `rounds` rounds.
  std::vector<std::unique_ptr<Process>> StartContributors(const ServerProcess& server,
                                                          std::vector<Contributor>& who,
                                                          int rounds) {
    std::vector<std::unique_ptr<Process>> procs;
    uint64_t seed = 1;
    for (auto& c : who) {
      std::string data = absl::StrCat(dir_.path(), "/data-", c.name);
      std::filesystem::create_directories(data);
      WriteBlobsCsv(data + "/train.csv", kFeatures, c.classes, c.rows, seed++);
      WriteBlobsCsv(data + "/test.csv", kFeatures, c.classes, 60, seed++);
      c.state_dir = absl::StrCat(dir_.path(), "/state-", c.name);
      procs.push_back(
          Process::Start({ClientBinary(), "--server=" + server.address(), "--name=" + c.name,
                          "--task=blobs" + std::to_string(c.classes), "--state_dir=" + c.state_dir,
                          "--keep_contributions=2", "--train=" + data + "/train.csv",
                          "--test=" + data + "/test.csv", absl::StrCat("--max_rounds=", rounds),
                          "--epochs=2", "--threads=1", "--poll_s=0.1"},
                         absl::StrCat(dir_.path(), "/client-", c.name, ".log")));
    }
    return procs;
  }

  void WaitAll(std::vector<std::unique_ptr<Process>>& procs) {
    for (size_t i = 0; i < procs.size(); ++i) {
      auto code = procs[i]->Wait(seconds(120));
      ASSERT_TRUE(code.has_value()) << "contributor " << i << " did not finish";
      EXPECT_EQ(*code, 0) << "contributor " << i << " failed; see its log in " << dir_.path();
    }
  }

  CommandResult Ctl(const ServerProcess& server, std::vector<std::string> args) {
    args.insert(args.begin(), {CtlBinary(), "--server=" + server.address()});
    return RunCommand(args);
  }

  // Checks base v`round` equals the weighted mean of what each contributor uploaded to
  // `round`, recomputed here from the contributors' own copies.
  void ExpectFusedMean(const ServerProcess& server, const std::vector<Contributor>& who,
                       uint64_t round, bool weighted) {
    std::vector<SavedContribution> uploads;
    double total = 0;
    auto info = server.Rounds().at(round - 1);
    std::map<std::string, std::string> sha_by_name;
    for (const auto& c : info.contributions()) sha_by_name[c.contributor()] = c.sha256();
    for (const auto& c : who) {
      uploads.push_back(ReadSavedContribution(c.state_dir, round));
      const auto& up = uploads.back();
      EXPECT_EQ(up.header.round(), round);
      EXPECT_EQ(up.header.base_version(), round - 1);
      // What the contributor kept is what the server received.
      EXPECT_EQ(sha_by_name[c.name], TensorsSha256(up.tensors)) << c.name;
      total += weighted ? static_cast<double>(up.header.num_examples()) : 1.0;
    }
    auto base = rpc::PullBase(server.channel(), round);
    ASSERT_TRUE(base.ok()) << base.status();
    ASSERT_EQ(base->version, round);
    ASSERT_EQ(base->tensors.size(), uploads[0].tensors.size());
    for (size_t t = 0; t < base->tensors.size(); ++t) {
      EXPECT_EQ(base->tensors[t].spec.name().rfind("body.", 0), 0u)
          << "only body tensors are shared: " << base->tensors[t].spec.name();
      std::vector<float> fused = Floats(base->tensors[t]);
      std::vector<double> mean(fused.size(), 0.0);
      for (const auto& up : uploads) {
        double w = (weighted ? static_cast<double>(up.header.num_examples()) : 1.0) / total;
        std::vector<float> v = Floats(up.tensors[t]);
        for (size_t i = 0; i < v.size(); ++i) mean[i] += w * v[i];
      }
      for (size_t i = 0; i < fused.size(); ++i) {
        ASSERT_NEAR(fused[i], mean[i], 1e-6 * std::max(1.0, std::fabs(mean[i])))
            << base->tensors[t].spec.name() << "[" << i << "] round " << round;
      }
    }
  }

  static constexpr int kFeatures = 8;
  TempDir dir_;
};

TEST_F(EndToEndTest, TwoRoundsFuseTheMeanAndARestartedServerServesTheSameBase) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=3", "--round_timeout_s=0"});
  ASSERT_NE(server, nullptr);
  auto init = Ctl(*server, {"init", "--spec=mlp:8,16,8", "--seed=7"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  std::vector<Contributor> who = {{"alice", "", 2, 120}, {"bob", "", 3, 150}, {"carol", "", 4, 90}};
  auto procs = StartContributors(*server, who, 2);
  WaitAll(procs);

  v1::ServerStatus status = server->Status();
  EXPECT_EQ(status.base_version(), 2u);
  EXPECT_EQ(status.open_round().number(), 3u);
  auto rounds = server->Rounds();
  ASSERT_EQ(rounds.size(), 3u);
  for (int r = 0; r < 2; ++r) {
    EXPECT_EQ(rounds[r].state(), v1::CLOSED);
    EXPECT_EQ(rounds[r].contributions_size(), 3);
    EXPECT_EQ(rounds[r].result_base_version(), static_cast<uint64_t>(r + 1));
    EXPECT_EQ(rounds[r].close_reason(), "quorum");
    for (const auto& c : rounds[r].contributions()) {
      EXPECT_TRUE(c.metrics().contains("accuracy_before"));
      EXPECT_TRUE(c.metrics().contains("accuracy_after"));
    }
  }
  ExpectFusedMean(*server, who, 1, /*weighted=*/false);
  ExpectFusedMean(*server, who, 2, /*weighted=*/false);

  // Heads stay local, sized for each contributor's own classes.
  for (const auto& c : who) {
    auto head = ReadSafetensors(c.state_dir + "/head.safetensors");
    ASSERT_TRUE(head.ok()) << head.status();
    ASSERT_EQ((*head)[0].spec.name(), "head.weight");
    EXPECT_EQ((*head)[0].spec.shape(0), c.classes);
  }

  // coldfusectl status --json shows the same state as the gRPC status.
  auto json = Ctl(*server, {"status", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  v1::ServerStatus from_json;
  ASSERT_TRUE(google::protobuf::util::JsonStringToMessage(json.output, &from_json).ok())
      << json.output;
  EXPECT_EQ(from_json.base_version(), 2u);
  EXPECT_EQ(from_json.open_round().number(), 3u);
  EXPECT_EQ(from_json.base_sha256(), status.base_sha256());

  // A restarted server on the same folder serves the same base, bit for bit.
  auto before = rpc::PullBase(server->channel(), std::nullopt);
  ASSERT_TRUE(before.ok()) << before.status();
  ASSERT_EQ(server->Stop(), 0);
  server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log");
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(server->Status().base_version(), 2u);
  EXPECT_EQ(server->Status().open_round().number(), 3u);
  auto after = rpc::PullBase(server->channel(), std::nullopt);
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(after->tensors.size(), before->tensors.size());
  for (size_t t = 0; t < after->tensors.size(); ++t) {
    EXPECT_EQ(after->tensors[t].data, before->tensors[t].data) << after->tensors[t].spec.name();
  }
  EXPECT_EQ(after->sha256, before->sha256);
}

TEST_F(EndToEndTest, ExampleWeightedFusionWeighsByNumExamples) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=3"});
  ASSERT_NE(server, nullptr);
  auto init = Ctl(*server, {"init", "--spec=mlp:8,16,8", "--fusion=weighted"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  std::vector<Contributor> who = {
      {"small", "", 2, 40}, {"medium", "", 2, 120}, {"large", "", 2, 360}};
  auto procs = StartContributors(*server, who, 1);
  WaitAll(procs);
  ASSERT_EQ(server->Status().base_version(), 1u);
  ExpectFusedMean(*server, who, 1, /*weighted=*/true);
}

TEST_F(EndToEndTest, RoundTimeoutFusesWhatArrivedBelowQuorum) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=5", "--round_timeout_s=1"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(Ctl(*server, {"init", "--spec=mlp:8,16,8"}).exit_code, 0);
  std::vector<Contributor> who = {{"solo", "", 2, 60}};
  auto procs = StartContributors(*server, who, 1);
  WaitAll(procs);
  ASSERT_TRUE(server->WaitForBase(1, seconds(30)));
  EXPECT_EQ(server->Rounds().at(0).close_reason(), "timeout");
  ExpectFusedMean(*server, who, 1, /*weighted=*/false);
}

TEST_F(EndToEndTest, OperatorClosesARoundEarlyButNeverAnEmptyOne) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=5", "--round_timeout_s=0"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(Ctl(*server, {"init", "--spec=mlp:8,16,8"}).exit_code, 0);
  auto empty = Ctl(*server, {"close-round"});
  EXPECT_EQ(empty.exit_code, 1);
  EXPECT_NE(empty.output.find("FAILED_PRECONDITION"), std::string::npos) << empty.output;
  EXPECT_NE(empty.output.find("no contributions"), std::string::npos) << empty.output;

  std::vector<Contributor> who = {{"early", "", 3, 60}, {"bird", "", 2, 60}};
  auto procs = StartContributors(*server, who, 1);
  WaitAll(procs);
  EXPECT_EQ(server->Status().base_version(), 0u);  // 2 of 5: still open
  auto wrong = Ctl(*server, {"close-round", "--round=7"});
  EXPECT_EQ(wrong.exit_code, 1);
  EXPECT_NE(wrong.output.find("round 7 is not open"), std::string::npos) << wrong.output;
  auto closed = Ctl(*server, {"close-round", "--round=1"});
  ASSERT_EQ(closed.exit_code, 0) << closed.output;
  EXPECT_NE(closed.output.find("fused 2 contributions into base v1"), std::string::npos)
      << closed.output;
  EXPECT_EQ(server->Rounds().at(0).close_reason(), "operator");
  ExpectFusedMean(*server, who, 1, /*weighted=*/false);
}

}  // namespace
}  // namespace coldfuse::testing
