// Storage lifecycle against the real coldfused: retention over many rounds of a 52 MB
// model keeps the data folder within a fixed bound while every kept base exports bit for
// bit as it did when it was made; pins and rollback work on what was kept.
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <sstream>
#include <thread>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/model_spec.h"
#include "common/rpc/client.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

namespace fs = std::filesystem;
using std::chrono::seconds;

constexpr int64_t kRows = 12800, kCols = 1024;  // 52.4 MB of F32
constexpr uint64_t kModelBytes = uint64_t{kRows * kCols + kCols} * 4;

// Tensors of the model with values from `seed`.
std::vector<HostTensor> Model(uint64_t seed) {
  // In name order, as `coldfusectl init --from` makes the manifest.
  std::vector<HostTensor> out(2);
  out[0].spec.set_name("encoder.bias");
  out[0].spec.add_shape(kCols);
  out[1].spec.set_name("encoder.weight");
  out[1].spec.add_shape(kRows);
  out[1].spec.add_shape(kCols);
  SplitMix64 rng(seed);
  for (auto& t : out) {
    t.spec.set_dtype(v1::F32);
    int64_t n = 1;
    for (int64_t d : t.spec.shape()) n *= d;
    std::vector<float> v(n);
    for (auto& x : v) x = static_cast<float>(rng.Uniform() - 0.5);
    t.data.assign(reinterpret_cast<const char*>(v.data()), v.size() * 4);
  }
  return out;
}

// Bytes the folder takes on disk (allocated blocks, as du counts them).
uint64_t DiskBytes(const std::string& dir) {
  uint64_t total = 0;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    struct stat st;
    if (::lstat(e.path().c_str(), &st) == 0 && !S_ISDIR(st.st_mode)) {
      total += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
  return total;
}

std::string FileSha256(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ToHex(Sha256::Of(ss.str()));
}

class RetentionE2eTest : public ::testing::Test {
 protected:
  CommandResult Ctl(std::vector<std::string> args) {
    args.insert(args.begin(), {CtlBinary(), "--server=" + server_->address()});
    return RunCommand(args, seconds(120));
  }

  // Exports base `version` and returns the SHA-256 of the exported file.
  std::string Export(uint64_t version) {
    const std::string out = absl::StrCat(dir_.path(), "/export-v", version, "-", exports_++);
    auto r = Ctl({"export", absl::StrCat("--version=", version), "--out=" + out});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    std::string sha = FileSha256(out + "/model.safetensors");
    fs::remove_all(out);
    return sha;
  }

  std::set<uint64_t> Stored() {
    v1::ServerStatus s = server_->Status();
    return {s.storage().stored_base_versions().begin(), s.storage().stored_base_versions().end()};
  }

  // Two contributions to the open round; the server closes it (quorum 2) and prunes.
  void Round(uint64_t round, uint64_t base) {
    for (uint64_t k = 0; k < 2; ++k) {
      v1::ContributionHeader h;
      h.set_round(round);
      h.set_base_version(base);
      h.set_contributor(absl::StrCat("c", k));
      h.set_num_examples(10);
      h.set_upload_id(rpc::NewUploadId());
      *h.mutable_manifest() = ManifestOf(base0_);
      const std::vector<HostTensor> tensors = Model(1000 * round + k);
      rpc::HostTensorSource source(tensors);
      auto receipt = rpc::PushContribution(server_->channel(), h, &source);
      ASSERT_TRUE(receipt.ok()) << "round " << round << ": " << receipt.status();
    }
    ASSERT_TRUE(server_->WaitForBase(base + 1, seconds(120)));
  }

  // Waits until retention has settled on `want` (it runs right after the close).
  void WaitForStored(const std::set<uint64_t>& want) {
    for (int i = 0; i < 600 && Stored() != want; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    ASSERT_EQ(Stored(), want);
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
  std::vector<HostTensor> base0_ = Model(1);
  int exports_ = 0;
};

TEST_F(RetentionE2eTest, TwentyRoundsStayWithinABoundAndKeptBasesExportBitForBit) {
  const std::string data = dir_.path() + "/db";
  server_ = ServerProcess::Start(data, dir_.path() + "/server.log",
                                 {"--min_contributions=2", "--keep_bases=3",
                                  "--keep_contribution_rounds=2", "--max_staleness=2"});
  ASSERT_NE(server_, nullptr);
  ASSERT_TRUE(WriteSafetensors(dir_.path() + "/base.safetensors", base0_).ok());
  auto init = Ctl({"init", "--from=" + dir_.path() + "/base.safetensors"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  constexpr uint64_t kRounds = 20, kPinned = 5;
  // What the folder may hold once a round is fused and pruned: 3 newest bases and the
  // pinned one, the contributions of the last 2 closed rounds (2 each), and RocksDB's own
  // files (logs, manifest, chunk index), well under 32 MiB.
  const uint64_t bound = 8 * kModelBytes + (uint64_t{32} << 20);
  std::map<uint64_t, std::string> exported;  // version -> export SHA-256 when it was new
  uint64_t peak = 0;
  std::vector<std::string> per_round;
  for (uint64_t r = 1; r <= kRounds; ++r) {
    ASSERT_NO_FATAL_FAILURE(Round(r, r - 1));
    if (r == kPinned) {
      auto pin = Ctl({"pin", absl::StrCat("--base=", kPinned), "--reason=release candidate"});
      ASSERT_EQ(pin.exit_code, 0) << pin.output;
    }
    std::set<uint64_t> want;
    for (uint64_t v = r >= 2 ? r - 2 : 0; v <= r; ++v) want.insert(v);
    if (r >= kPinned) want.insert(kPinned);
    ASSERT_NO_FATAL_FAILURE(WaitForStored(want));
    // RocksDB deletes the files it no longer needs right after the compaction.
    uint64_t bytes = DiskBytes(data);
    for (int i = 0; i < 100 && bytes > bound; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      bytes = DiskBytes(data);
    }
    peak = std::max(peak, bytes);
    per_round.push_back(absl::StrCat(r, ":", bytes >> 20, "MiB"));
    EXPECT_LE(bytes, bound) << "after round " << r;
    if (r == kPinned || r + 3 > kRounds) exported[r] = Export(r);
  }
  std::cout << "data folder after each round (MiB): " << absl::StrJoin(per_round, " ") << "; peak "
            << (peak >> 20) << " MiB, bound " << (bound >> 20) << " MiB, model "
            << (kModelBytes >> 20) << " MiB\n";

  // What status says agrees with du, to within what changed since it measured.
  v1::ServerStatus s = server_->Status();
  EXPECT_NEAR(static_cast<double>(s.storage().disk_bytes()), static_cast<double>(DiskBytes(data)),
              0.1 * static_cast<double>(bound));
  EXPECT_EQ(s.storage().keep_bases(), 3u);
  EXPECT_EQ(s.storage().keep_contribution_rounds(), 2);
  // Kept bases export exactly as they did when they were made; pruned ones say why.
  for (const auto& [v, sha] : exported) EXPECT_EQ(Export(v), sha) << "base v" << v;
  auto gone = Ctl({"export", "--version=10", "--out=" + dir_.path() + "/gone"});
  EXPECT_NE(gone.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(gone.output, "removed by retention")) << gone.output;
  // Contribution records of pruned rounds stay, with their metadata.
  auto rounds = Ctl({"round", "3", "--json"});
  EXPECT_EQ(rounds.exit_code, 0) << rounds.output;
  EXPECT_TRUE(absl::StrContains(rounds.output, "\"contributions_pruned\": true")) << rounds.output;
  EXPECT_TRUE(absl::StrContains(rounds.output, "\"contributor\": \"c1\"")) << rounds.output;

  // A dry run over a settled store removes nothing and says what it keeps.
  auto dry = Ctl({"prune", "--dry_run"});
  ASSERT_EQ(dry.exit_code, 0) << dry.output;
  EXPECT_TRUE(absl::StrContains(dry.output, "nothing to remove")) << dry.output;
  EXPECT_TRUE(absl::StrContains(dry.output, "kept v5: pinned")) << dry.output;

  // The pinned base is there to roll back to, across a restart.
  ASSERT_EQ(server_->Stop(), 0);
  server_ = ServerProcess::Start(data, dir_.path() + "/server.log",
                                 {"--min_contributions=2", "--keep_bases=3",
                                  "--keep_contribution_rounds=2", "--max_staleness=2"});
  ASSERT_NE(server_, nullptr);
  auto rb = Ctl({"rollback", "--base=5", "--reason=regression after v5"});
  ASSERT_EQ(rb.exit_code, 0) << rb.output;
  EXPECT_EQ(server_->Status().base_version(), kPinned);
  EXPECT_EQ(Export(kPinned), exported[kPinned]);
  // The next round trains from it, and retention then drops the bad bases.
  ASSERT_NO_FATAL_FAILURE(Round(kRounds + 2, kPinned));
  ASSERT_NO_FATAL_FAILURE(WaitForStored({kPinned, kRounds + 1}));
}

TEST_F(RetentionE2eTest, ABackupTakenDuringUploadsRestoresTheSameBasesAndTakesTheNextRound) {
  const std::string data = dir_.path() + "/db";
  server_ = ServerProcess::Start(data, dir_.path() + "/server.log", {"--min_contributions=2"});
  ASSERT_NE(server_, nullptr);
  ASSERT_TRUE(WriteSafetensors(dir_.path() + "/base.safetensors", base0_).ok());
  ASSERT_EQ(Ctl({"init", "--from=" + dir_.path() + "/base.safetensors"}).exit_code, 0);
  ASSERT_NO_FATAL_FAILURE(Round(1, 0));
  ASSERT_NO_FATAL_FAILURE(Round(2, 1));
  std::map<uint64_t, std::string> before;
  for (uint64_t v = 0; v <= 2; ++v) before[v] = Export(v);

  // Round 3: one contribution is in, another is half-way through its upload, and a third
  // streams on while the backup runs.
  auto header = [&](const std::string& who) {
    v1::ContributionHeader h;
    h.set_round(3);
    h.set_base_version(2);
    h.set_contributor(who);
    h.set_num_examples(10);
    h.set_upload_id(rpc::NewUploadId());
    *h.mutable_manifest() = ManifestOf(base0_);
    return h;
  };
  const std::vector<HostTensor> a = Model(31), b = Model(32), c = Model(33);
  rpc::HostTensorSource a_source(a);
  ASSERT_TRUE(rpc::PushContribution(server_->channel(), header("a"), &a_source).ok());
  GatedSource gated(b, 20 << 20);  // holds at 20 MiB of 52
  absl::Status b_result;
  std::thread b_push(
      [&] { b_result = rpc::PushContribution(server_->channel(), header("b"), &gated).status(); });
  gated.WaitUntilReached();
  absl::Status c_result;
  std::thread c_push([&] {
    rpc::HostTensorSource c_source(c);
    v1::ContributionHeader h = header("c");
    c_result = rpc::PushContribution(server_->channel(), h, &c_source).status();
  });
  const std::string backup = dir_.path() + "/backup";
  auto taken = Ctl({"backup", "--out=" + backup});
  gated.Open();
  b_push.join();
  c_push.join();
  ASSERT_EQ(taken.exit_code, 0) << taken.output;
  EXPECT_TRUE(absl::StrContains(taken.output, "each checked against its SHA-256")) << taken.output;
  // The original went on: whichever of b and c finished first closed round 3 with a; the
  // other was then told its base is stale.
  EXPECT_TRUE(b_result.ok() || c_result.ok()) << b_result << " / " << c_result;
  for (const auto& r : {b_result, c_result}) {
    EXPECT_TRUE(r.ok() || absl::IsFailedPrecondition(r)) << r;
  }
  EXPECT_TRUE(server_->WaitForBase(3, seconds(60)));
  // No checkpoint is left in the data folder, and the backup was not taken twice.
  for (const auto& e : fs::directory_iterator(data)) {
    EXPECT_FALSE(absl::StartsWith(e.path().filename().string(), "backup-")) << e.path();
  }
  EXPECT_NE(Ctl({"backup", "--out=" + backup}).exit_code, 0);  // the folder exists now
  ASSERT_EQ(server_->Stop(), 0);

  // Restore: the backup folder is a data folder. Copy it (as an operator restoring onto a
  // new machine would), start a server on it.
  const std::string restored = dir_.path() + "/restored";
  fs::copy(backup, restored, fs::copy_options::recursive);
  server_ =
      ServerProcess::Start(restored, dir_.path() + "/restored.log", {"--min_contributions=2"});
  ASSERT_NE(server_, nullptr);
  v1::ServerStatus s = server_->Status();
  EXPECT_EQ(s.base_version(), 2u);
  EXPECT_EQ(s.open_round().number(), 3u);
  for (uint64_t v = 0; v <= 2; ++v) EXPECT_EQ(Export(v), before[v]) << "base v" << v;
  // a's contribution (acknowledged before the backup) is in it; the next round fuses.
  ASSERT_GE(s.open_round().contributions_size(), 1);
  EXPECT_EQ(s.open_round().contributions(0).contributor(), "a");
  if (s.open_round().contributions_size() == 1) {
    const std::vector<HostTensor> d = Model(34);
    rpc::HostTensorSource d_source(d);
    ASSERT_TRUE(rpc::PushContribution(server_->channel(), header("d"), &d_source).ok());
  }
  ASSERT_TRUE(server_->WaitForBase(3, seconds(60)));
  ASSERT_NO_FATAL_FAILURE(Round(4, 3));
}

}  // namespace
}  // namespace coldfuse::testing
