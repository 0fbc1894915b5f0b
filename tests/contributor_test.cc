// What a contributor at a terminal (or in a log) sees and can do: Ctrl-C during a large
// upload stops the daemon at once and loses nothing, and the next start resumes the upload
// where the server stopped storing it; on a slow link, 8-bit deltas send about a quarter
// of the bytes, and the server's next base is the base plus what was sent.
#include <signal.h>

#include <chrono>
#include <filesystem>
#include <regex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/posix_file.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"
#include "tests/proxy.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

TEST(ContributorTest, CtrlCDuringAnUploadStopsAtOnceAndTheNextStartResumesIt) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path() + "/db", dir.path() + "/server.log",
                                     {"--min_contributions=1", "--round_timeout_s=0"});
  ASSERT_NE(server, nullptr);
  // About 35 MB of shared tensors: 35 chunks.
  ASSERT_EQ(
      RunCommand({CtlBinary(), "--server=" + server->address(), "init", "--spec=mlp:8,2896,2896,8"})
          .exit_code,
      0);
  const uint64_t total = server->Status().model().total_bytes();
  // A link that stops passing the upload after 8 MiB: the push hangs mid-stream.
  TcpProxy link(server->port(), TcpProxy::Cut::kStallClientToServer, 8 << 20);
  WriteBlobsCsv(dir.path() + "/train.csv", 8, 3, 60, 1);
  const std::string state = dir.path() + "/state";
  auto args = [&](int port) {
    return std::vector<std::string>{ClientBinary(),
                                    absl::StrCat("--server=127.0.0.1:", port),
                                    "--name=alice",
                                    "--state_dir=" + state,
                                    "--train=" + dir.path() + "/train.csv",
                                    "--test=" + dir.path() + "/train.csv",
                                    "--steps=1",
                                    "--threads=1",
                                    "--max_rounds=1",
                                    "--poll_s=0.1"};
  };
  const std::string log1 = dir.path() + "/client1.log";
  auto daemon = Process::Start(args(link.port()), log1);
  // Wait until the upload is under way and stuck behind the link.
  bool pushing = false;
  for (int i = 0; i < 600 && !pushing; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
    auto text = ReadFileToString(log1);
    pushing = text.ok() && absl::StrContains(*text, "push to round 1");
  }
  ASSERT_TRUE(pushing) << "no upload progress in " << log1;
  std::this_thread::sleep_for(seconds(1));
  ASSERT_FALSE(daemon->Wait(std::chrono::milliseconds(0)).has_value()) << "it should hang";

  const auto sent = std::chrono::steady_clock::now();
  daemon->Signal(SIGINT);
  auto code = daemon->Wait(seconds(10));
  const double stop_s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - sent).count();
  ASSERT_TRUE(code.has_value()) << "SIGINT did not stop the upload";
  EXPECT_EQ(*code, 0);
  std::cout << "stopped " << stop_s << " s after SIGINT\n";
  EXPECT_LT(stop_s, 2.0) << "SIGINT should stop an upload within about a second";
  auto text = ReadFileToString(log1);
  ASSERT_TRUE(text.ok());
  EXPECT_TRUE(absl::StrContains(*text, "the state folder is resumable")) << *text;
  // The dead process's connection closes (the stalled link held it open).
  link.CutNow();

  // What the server kept of it, by the upload id the daemon saved with the contribution.
  auto saved = ReadFileToString(state + "/pending.header");
  ASSERT_TRUE(saved.ok()) << "the contribution must still be pending";
  v1::ContributionHeader header;
  ASSERT_TRUE(header.ParseFromString(*saved));
  ASSERT_FALSE(header.upload_id().empty());
  v1::UploadProgress kept;
  for (int i = 0; i < 100; ++i) {  // the server notices the broken stream
    grpc::ClientContext ctx;
    v1::GetUploadRequest q;
    q.set_upload_id(header.upload_id());
    q.set_contributor("alice");
    ASSERT_TRUE(v1::Contributor::NewStub(server->channel())->GetUpload(&ctx, q, &kept).ok());
    if (!kept.attached()) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_FALSE(kept.attached());
  ASSERT_GT(kept.bytes_stored(), 0u);
  ASSERT_LT(kept.bytes_stored(), total);

  // The next start (without the bad link) sends only the rest.
  const std::string log2 = dir.path() + "/client2.log";
  auto again = RunCommand(args(server->port()), seconds(120));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  std::smatch m;
  const std::regex wire("([0-9]+) bytes on the wire in ([0-9]+) attempt");
  ASSERT_TRUE(std::regex_search(again.output, m, wire)) << again.output;
  EXPECT_EQ(std::stoull(m[1]), total - kept.bytes_stored()) << again.output;
  EXPECT_FALSE(absl::StrContains(again.output, "fine-tuning base")) << "it must not train again";
  ASSERT_TRUE(server->WaitForBase(1, seconds(30)));
  EXPECT_EQ(server->Rounds().front().contributions(0).contributor(), "alice");
}

TEST(ContributorTest, EightBitDeltasSendAQuarterAndTheServerAddsThemToTheBase) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path() + "/db", dir.path() + "/server.log",
                                     {"--min_contributions=1", "--round_timeout_s=0"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(
      RunCommand({CtlBinary(), "--server=" + server->address(), "init", "--spec=mlp:8,300,300,8"})
          .exit_code,
      0);
  const uint64_t total = server->Status().model().total_bytes();  // F32
  auto before = rpc::PullBase(server->channel(), std::nullopt);
  ASSERT_TRUE(before.ok()) << before.status();
  WriteBlobsCsv(dir.path() + "/train.csv", 8, 3, 60, 1);
  const std::string state = dir.path() + "/state";
  auto run = RunCommand(
      {ClientBinary(), "--server=" + server->address(), "--name=alice", "--state_dir=" + state,
       "--train=" + dir.path() + "/train.csv", "--test=" + dir.path() + "/train.csv", "--steps=3",
       "--threads=1", "--max_rounds=1", "--poll_s=0.1", "--encoding=delta_int8",
       "--int8_block_size=32", "--keep_contributions=1"},
      seconds(120));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  ASSERT_TRUE(server->WaitForBase(1, seconds(30)));

  // One byte per value and four per 32 values: 9/32 of F32's bytes.
  const v1::ContributionInfo info = server->Rounds().front().contributions(0);
  EXPECT_EQ(info.encoding(), v1::DELTA_INT8);
  EXPECT_EQ(info.int8_block_size(), 32u);
  EXPECT_LT(info.bytes(), total * 9 / 32 + 4 * 8) << "total " << total;
  EXPECT_GT(info.bytes(), total / 4);
  EXPECT_TRUE(absl::StrContains(run.output, absl::StrCat("accepted (", info.bytes(), " bytes")))
      << run.output;

  // The fused base of this one contribution is f32(b + q·s), element by element.
  const SavedContribution sent = ReadSavedContribution(state, 1);
  EXPECT_EQ(sent.header.encoding(), v1::DELTA_INT8);
  auto after = rpc::PullBase(server->channel(), 1);
  ASSERT_TRUE(after.ok()) << after.status();
  ASSERT_EQ(sent.tensors.size(), 2 * before->tensors.size());
  size_t moved = 0;
  for (size_t t = 0; t < before->tensors.size(); ++t) {
    const std::vector<float> b = Floats(before->tensors[t]), a = Floats(after->tensors[t]);
    const std::vector<float> s = Floats(sent.tensors[2 * t]);
    const std::string& q = sent.tensors[2 * t + 1].data;
    ASSERT_EQ(q.size(), b.size());
    for (size_t i = 0; i < b.size(); ++i) {
      const double u = static_cast<double>(static_cast<int8_t>(q[i])) * s[i / 32];
      ASSERT_EQ(a[i], static_cast<float>(static_cast<double>(b[i]) + u))
          << before->tensors[t].spec.name() << " element " << i;
      moved += a[i] != b[i];
    }
  }
  EXPECT_GT(moved, 0u) << "training should have changed the base";
}

}  // namespace
}  // namespace coldfuse::testing
