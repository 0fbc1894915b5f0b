// Crashes: a coldfused killed with SIGKILL comes back with the same base and round and
// without half-written uploads; contributor daemons ride out a server restart.
#include <signal.h>

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "common/model_spec.h"
#include "common/tensor_stream.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

class CrashTest : public ::testing::Test {
 protected:
  std::unique_ptr<Process> StartContributor(const ServerProcess& server, const std::string& name,
                                            int classes, int rounds, uint64_t seed) {
    std::string data = absl::StrCat(dir_.path(), "/data-", name);
    std::filesystem::create_directories(data);
    WriteBlobsCsv(data + "/train.csv", 8, classes, 100, seed);
    WriteBlobsCsv(data + "/test.csv", 8, classes, 40, seed + 100);
    return Process::Start(
        {ClientBinary(), "--server=" + server.address(), "--name=" + name,
         "--state_dir=" + dir_.path() + "/state-" + name, "--train=" + data + "/train.csv",
         "--test=" + data + "/test.csv", absl::StrCat("--max_rounds=", rounds), "--epochs=1",
         "--threads=1", "--poll_s=0.1"},
        absl::StrCat(dir_.path(), "/client-", name, ".log"));
  }

  std::string Db() const { return dir_.path() + "/db"; }
  std::string Log() const { return dir_.path() + "/server.log"; }

  TempDir dir_;
};

TEST_F(CrashTest, SigkillBetweenRoundsKeepsBaseRoundAndDropsHalfUploads) {
  auto server = ServerProcess::Start(Db(), Log(), {"--min_contributions=2"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(RunCommand({CtlBinary(), "--server=" + server->address(), "init", "--spec=mlp:8,16,8"})
                .exit_code,
            0);
  auto a = StartContributor(*server, "a", 2, 1, 1);
  auto b = StartContributor(*server, "b", 3, 1, 2);
  ASSERT_EQ(a->Wait(seconds(120)).value_or(-1), 0);
  ASSERT_EQ(b->Wait(seconds(120)).value_or(-1), 0);
  ASSERT_TRUE(server->WaitForBase(1, seconds(30)));
  const v1::ServerStatus before = server->Status();
  auto base_before = rpc::PullBase(server->channel(), std::nullopt);
  ASSERT_TRUE(base_before.ok()) << base_before.status();

  // Start an upload to round 2 and leave it half sent when the server dies.
  auto stub = v1::Contributor::NewStub(server->channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
  v1::ContributionReceipt receipt;
  auto writer = stub->PushContribution(&ctx, &receipt);
  v1::PushContributionRequest req;
  auto* h = req.mutable_header();
  h->set_round(2);
  h->set_base_version(1);
  h->set_contributor("halfway");
  h->set_num_examples(5);
  *h->mutable_manifest() = before.model().manifest();
  ASSERT_TRUE(writer->Write(req));
  req.Clear();
  req.mutable_chunk()->set_tensor_index(0);
  // All of tensor 0, so the receiver writes it to storage as one complete chunk.
  auto first_len = ByteLength(before.model().manifest().tensors(0));
  ASSERT_TRUE(first_len.ok());
  req.mutable_chunk()->set_data(std::string(*first_len, '\1'));
  ASSERT_TRUE(writer->Write(req));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // let it reach storage

  server->process()->Signal(SIGKILL);
  ASSERT_EQ(server->process()->Wait(seconds(10)).value_or(-1), 128 + SIGKILL);
  ctx.TryCancel();

  server = ServerProcess::Start(Db(), Log());
  ASSERT_NE(server, nullptr);
  const v1::ServerStatus after = server->Status();
  EXPECT_EQ(after.base_version(), before.base_version());
  EXPECT_EQ(after.base_sha256(), before.base_sha256());
  EXPECT_EQ(after.open_round().number(), before.open_round().number());
  EXPECT_EQ(after.open_round().contributions_size(), 0);
  ASSERT_EQ(server->Rounds().size(), 2u);
  EXPECT_EQ(server->Rounds()[0].contributions_size(), 2);
  auto base_after = rpc::PullBase(server->channel(), std::nullopt);
  ASSERT_TRUE(base_after.ok()) << base_after.status();
  for (size_t t = 0; t < base_after->tensors.size(); ++t) {
    EXPECT_EQ(base_after->tensors[t].data, base_before->tensors[t].data);
  }
  // The half upload's chunks were never flushed (they skip the WAL), so the crash took
  // them; had they been flushed, Load would have removed them (store_test covers it).
}

TEST_F(CrashTest, ContributorsRideOutAServerRestartAndFinishTheirRounds) {
  auto server = ServerProcess::Start(Db(), Log(), {"--min_contributions=3"});
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  ASSERT_EQ(RunCommand({CtlBinary(), "--server=" + server->address(), "init", "--spec=mlp:8,16,8"})
                .exit_code,
            0);
  std::vector<std::unique_ptr<Process>> clients;
  for (int i = 0; i < 3; ++i) {
    clients.push_back(StartContributor(*server, absl::StrCat("c", i), 2 + i, 3, 10 + i));
  }
  ASSERT_TRUE(server->WaitForBase(1, seconds(120)));
  server->process()->Signal(SIGKILL);
  ASSERT_TRUE(server->process()->Wait(seconds(10)).has_value());
  std::this_thread::sleep_for(std::chrono::seconds(1));  // clients see it down and back off

  server = ServerProcess::Start(Db(), Log(), {"--min_contributions=3"}, port);
  ASSERT_NE(server, nullptr);
  for (auto& c : clients) EXPECT_EQ(c->Wait(seconds(180)).value_or(-1), 0);
  EXPECT_EQ(server->Status().base_version(), 3u);
  for (const auto& round : server->Rounds()) {
    if (round.state() == v1::CLOSED) {
      EXPECT_EQ(round.contributions_size(), 3);
    }
  }
}

}  // namespace
}  // namespace coldfuse::testing
