// Large-model transfers against the real coldfused: safetensors checkpoints in and out,
// contributions as BF16 deltas or in another dtype, and transfers that resume after a
// broken connection or a killed server without resending what the server holds.
#include <signal.h>

#include <cmath>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "common/model_spec.h"
#include "common/rpc/client.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"
#include "tests/proxy.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

// A model of a few MiB: one tensor spans several 1 MiB chunks.
std::vector<HostTensor> Model(uint64_t seed, const std::vector<HostTensor>* near = nullptr) {
  std::vector<std::pair<std::string, std::vector<int64_t>>> shapes = {
      {"model.embed.weight", {900, 1000}},
      {"model.layer.bias", {1000}},
      {"model.layer.weight", {64, 333}}};
  SplitMix64 rng(seed);
  std::vector<HostTensor> out;
  for (size_t t = 0; t < shapes.size(); ++t) {
    HostTensor h;
    h.spec.set_name(shapes[t].first);
    h.spec.set_dtype(v1::F32);
    int64_t n = 1;
    for (int64_t d : shapes[t].second) {
      h.spec.add_shape(d);
      n *= d;
    }
    std::vector<float> v(n);
    const std::vector<float> around = near != nullptr ? Floats((*near)[t]) : std::vector<float>();
    for (int64_t i = 0; i < n; ++i) {
      float r = static_cast<float>(rng.Uniform() - 0.5);
      v[i] = near != nullptr ? around[i] + 0.01f * r : r;
    }
    h.data.assign(reinterpret_cast<char*>(v.data()), n * 4);
    out.push_back(std::move(h));
  }
  return out;
}

uint64_t Bytes(const std::vector<HostTensor>& t) {
  uint64_t n = 0;
  for (const auto& x : t) n += x.data.size();
  return n;
}

class TransferTest : public ::testing::Test {
 protected:
  void SetUp() override {
    base_ = Model(1);
    ASSERT_TRUE(WriteSafetensors(dir_.path() + "/base.safetensors", base_).ok());
  }

  std::unique_ptr<ServerProcess> Start(int port = 0) {
    return ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                {"--min_contributions=3", "--max_uploads_per_round=10"}, port);
  }

  CommandResult Ctl(const ServerProcess& s, std::vector<std::string> args) {
    args.insert(args.begin(), {CtlBinary(), "--server=" + s.address()});
    return RunCommand(args);
  }

  v1::ContributionHeader Header(const std::string& who) {
    v1::ContributionHeader h;
    h.set_round(1);
    h.set_base_version(0);
    h.set_contributor(who);
    h.set_num_examples(10);
    *h.mutable_manifest() = ManifestOf(base_);
    h.set_upload_id(rpc::NewUploadId());
    // Several metrics: a map, whose wire order is not fixed, must not break resumption.
    auto& m = *h.mutable_metrics();
    m["accuracy_before"] = 0.25;
    m["accuracy_after"] = 0.75;
    m["train_loss_first"] = 1.5;
    m["train_loss_last"] = 0.5;
    m["macro_f1_after"] = 0.7;
    return h;
  }

  absl::StatusOr<v1::UploadProgress> GetUpload(const ServerProcess& s,
                                               const v1::ContributionHeader& h) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    v1::GetUploadRequest req;
    req.set_upload_id(h.upload_id());
    req.set_contributor(h.contributor());
    v1::UploadProgress p;
    RETURN_IF_ERROR(rpc::FromGrpc(v1::Contributor::NewStub(s.channel())->GetUpload(&ctx, req, &p),
                                  "GetUpload"));
    return p;
  }

  // Streams `tensors` over a link that breaks once the server has stored the first
  // `stored` bytes (a multiple of 1 MiB within tensor 0).
  void InterruptedUpload(const ServerProcess& server, const v1::ContributionHeader& header,
                         const std::vector<HostTensor>& tensors, uint64_t stored) {
    TcpProxy proxy(server.port(), TcpProxy::Cut::kClientToServer, ~uint64_t{0});
    GatedSource gated(tensors, stored);
    absl::Status first;
    std::thread pusher([&] {
      first = rpc::PushContribution(rpc::ConnectInsecure(absl::StrCat("127.0.0.1:", proxy.port())),
                                    header, &gated, {}, {.max_attempts = 1})
                  .status();
    });
    gated.WaitUntilReached();
    absl::StatusOr<v1::UploadProgress> live;
    for (int i = 0; i < 600; ++i) {  // until the server has stored what was sent
      live = GetUpload(server, header);
      if (live.ok() && live->bytes_stored() >= stored) break;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    proxy.CutNow();
    gated.Open();
    pusher.join();
    ASSERT_TRUE(live.ok()) << live.status();
    EXPECT_EQ(live->bytes_stored(), stored);
    EXPECT_FALSE(first.ok());
    // The server notices the broken stream on its own time; until then it refuses a
    // resume (ABORTED), which would make the caller's retry send the rest twice.
    for (int i = 0; i < 600 && live.ok() && live->attached(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      live = GetUpload(server, header);
    }
    ASSERT_TRUE(live.ok()) << live.status();
    EXPECT_FALSE(live->attached());
  }

  TempDir dir_;
  std::vector<HostTensor> base_;
};

TEST_F(TransferTest, AnUploadCutMidStreamResumesWithoutResendingWhatTheServerHolds) {
  auto server = Start();
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(Ctl(*server, {"init", "--from=" + dir_.path() + "/base.safetensors"}).exit_code, 0);
  const auto mine = Model(2, &base_);
  const uint64_t total = Bytes(mine);
  auto header = Header("flaky");

  // First attempt: 2 MiB are stored, then the link breaks.
  InterruptedUpload(*server, header, mine, 2 << 20);
  // The server kept what it stored and says where to continue.
  auto progress = GetUpload(*server, header);
  ASSERT_TRUE(progress.ok()) << progress.status();
  const uint64_t stored = progress->bytes_stored();
  EXPECT_EQ(stored, 2u << 20);
  EXPECT_EQ(progress->tensor_index(), 0u);
  EXPECT_EQ(progress->offset(), 2u << 20);

  // Resume on a good link: exactly the bytes the server lacks go over the wire.
  rpc::HostTensorSource source(mine);
  rpc::TransferStats stats;
  auto receipt = rpc::PushContribution(server->channel(), header, &source, {}, {}, &stats);
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  EXPECT_EQ(stats.bytes_on_wire, total - stored);
  EXPECT_EQ(receipt->sha256(), TensorsSha256(mine));  // the whole upload, checked end to end
  EXPECT_EQ(receipt->bytes(), total);
  EXPECT_TRUE(absl::IsNotFound(GetUpload(*server, header).status()));  // session done
}

// A server restarted cleanly (SIGTERM) keeps what it stored of an interrupted upload; one
// killed (SIGKILL) may lose the chunks not yet flushed, and then says so consistently:
// either it resumes from what it holds, or the upload starts over. Either way the result
// is the exact upload.
TEST_F(TransferTest, AnUploadResumesAfterTheServerRestartsOrIsKilled) {
  auto server = Start();
  ASSERT_NE(server, nullptr);
  const int port = server->port();
  ASSERT_EQ(Ctl(*server, {"init", "--from=" + dir_.path() + "/base.safetensors"}).exit_code, 0);
  for (int sig : {SIGTERM, SIGKILL}) {
    SCOPED_TRACE(sig == SIGTERM ? "SIGTERM" : "SIGKILL");
    const auto mine = Model(sig, &base_);
    rpc::HostTensorSource source(mine);
    auto header = Header(sig == SIGTERM ? "patient" : "stoic");
    InterruptedUpload(*server, header, mine, 3 << 20);
    auto before = GetUpload(*server, header);
    ASSERT_TRUE(before.ok()) << before.status();
    server->process()->Signal(sig);
    ASSERT_TRUE(server->process()->Wait(seconds(30)).has_value());
    server = Start(port);
    ASSERT_NE(server, nullptr);
    auto after = GetUpload(*server, header);
    uint64_t held = 0;
    if (sig == SIGTERM) {
      ASSERT_TRUE(after.ok()) << after.status();
      EXPECT_EQ(after->bytes_stored(), before->bytes_stored());
      held = after->bytes_stored();
    } else if (after.ok()) {
      held = after->bytes_stored();
    } else {
      EXPECT_TRUE(absl::IsNotFound(after.status())) << after.status();
    }
    rpc::TransferStats stats;
    auto receipt = rpc::PushContribution(server->channel(), header, &source, {}, {}, &stats);
    ASSERT_TRUE(receipt.ok()) << receipt.status();
    EXPECT_EQ(stats.bytes_on_wire, Bytes(mine) - held);
    EXPECT_EQ(receipt->sha256(), TensorsSha256(mine));
  }
}

TEST_F(TransferTest, ADownloadCutMidStreamResumesWhereItStopped) {
  auto server = Start();
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(Ctl(*server, {"init", "--from=" + dir_.path() + "/base.safetensors"}).exit_code, 0);
  auto direct = rpc::PullBase(server->channel(), std::nullopt);
  ASSERT_TRUE(direct.ok()) << direct.status();

  TcpProxy proxy(server->port(), TcpProxy::Cut::kServerToClient, 2 << 20);
  struct Sink : rpc::TensorSink {
    std::vector<std::string> data;
    absl::Status Begin(uint64_t, const std::string&, const v1::Manifest& m) override {
      data.resize(m.tensors_size());
      return absl::OkStatus();
    }
    absl::Status Write(uint32_t t, uint64_t off, absl::string_view d) override {
      if (off != data[t].size()) return absl::InternalError("gap or overlap");
      data[t].append(d.data(), d.size());
      return absl::OkStatus();
    }
  } sink;
  rpc::TransferStats stats;
  auto pulled = rpc::PullBaseTo(rpc::ConnectInsecure(absl::StrCat("127.0.0.1:", proxy.port())),
                                std::nullopt, &sink, {}, {}, &stats);
  ASSERT_TRUE(pulled.ok()) << pulled.status();
  EXPECT_TRUE(proxy.cut());
  EXPECT_GE(stats.attempts, 2);
  EXPECT_EQ(stats.bytes_on_wire, Bytes(base_));  // nothing received twice
  EXPECT_EQ(pulled->sha256, direct->sha256);
  for (size_t t = 0; t < base_.size(); ++t) EXPECT_EQ(sink.data[t], base_[t].data);
}

TEST_F(TransferTest, CheckpointsInAnyDtypeOrAsDeltasFuseCorrectlyAndExportLoadsInPython) {
  auto server = Start();
  ASSERT_NE(server, nullptr);
  // The checkpoint also holds a head that must not be shared.
  auto with_head = base_;
  HostTensor head;
  head.spec.set_name("classifier.weight");
  head.spec.set_dtype(v1::F32);
  head.spec.add_shape(2);
  head.data.assign(8, '\0');
  with_head.push_back(head);
  ASSERT_TRUE(WriteSafetensors(dir_.path() + "/base_head.safetensors", with_head).ok());
  auto init = Ctl(*server, {"init", "--from=" + dir_.path() + "/base_head.safetensors",
                            "--shared_prefix=model."});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  ASSERT_EQ(server->Status().model().manifest().tensors_size(), 3);

  std::vector<std::vector<HostTensor>> contribs = {Model(4, &base_), Model(5, &base_),
                                                   Model(6, &base_)};
  const std::vector<std::vector<std::string>> how = {
      {}, {"--encoding=delta", "--send_dtype=bf16"}, {"--send_dtype=f16"}};
  for (int k = 0; k < 3; ++k) {
    std::string path = absl::StrCat(dir_.path(), "/c", k, ".safetensors");
    ASSERT_TRUE(WriteSafetensors(path, contribs[k]).ok());
    std::vector<std::string> args = {"push", "--checkpoint=" + path, absl::StrCat("--name=c", k),
                                     "--num_examples=10"};
    args.insert(args.end(), how[k].begin(), how[k].end());
    auto r = Ctl(*server, args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  ASSERT_TRUE(server->WaitForBase(1, seconds(60)));
  const auto round = server->Rounds().at(0);
  EXPECT_EQ(round.contributions(1).bytes(), Bytes(base_) / 2);  // BF16 delta: half the bytes
  EXPECT_EQ(round.contributions(1).encoding(), v1::DELTA);

  // The fused base against the same arithmetic done here: what the server received is
  // each contribution rounded to its sent dtype (the delta rounded, then added back).
  auto fused = rpc::PullBase(server->channel(), 1);
  ASSERT_TRUE(fused.ok()) << fused.status();
  for (size_t t = 0; t < base_.size(); ++t) {
    auto b = Floats(base_[t]), c0 = Floats(contribs[0][t]), c1 = Floats(contribs[1][t]),
         c2 = Floats(contribs[2][t]), got = Floats(fused->tensors[t]);
    double worst = 0;
    for (size_t i = 0; i < b.size(); ++i) {
      const double r1 = b[i] + static_cast<double>(Bf16BitsToFloat(
                                   FloatToBf16Bits(static_cast<float>(double(c1[i]) - b[i]))));
      const double r2 = HalfBitsToFloat(FloatToHalfBits(c2[i]));
      const double want = (static_cast<double>(c0[i]) + r1 + r2) / 3;
      worst = std::max(worst, std::fabs(got[i] - want));
    }
    EXPECT_LT(worst, 1e-6) << base_[t].spec.name();
  }

  // Export: safetensors that the reference implementation loads, bit for bit.
  const std::string out = dir_.path() + "/export";
  auto exported = Ctl(*server, {"export", "--version=1", "--out=" + out, "--shard_bytes=2000000"});
  ASSERT_EQ(exported.exit_code, 0) << exported.output;
  auto ckpt = Checkpoint::Open(out);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();
  std::ofstream manifest(dir_.path() + "/manifest.json");
  manifest << "[";
  for (size_t t = 0; t < fused->tensors.size(); ++t) {
    const auto& spec = fused->tensors[t].spec;
    const SafetensorsEntry* e = (*ckpt)->Find(spec.name());
    ASSERT_NE(e, nullptr) << spec.name();
    EXPECT_EQ((*ckpt)->Data(*e), fused->tensors[t].data);
    manifest << (t ? "," : "") << "{\"name\":\"" << spec.name() << "\",\"dtype\":\"F32\","
             << "\"shape\":[" << absl::StrJoin(spec.shape(), ",") << "],\"sha256\":\""
             << ToHex(Sha256::Of(fused->tensors[t].data)) << "\"}";
  }
  manifest << "]";
  manifest.close();
  EXPECT_GT((*ckpt)->files().size(), 1u) << "expected a sharded export";
  auto py = RunCommand({PYTHON, CHECK_SAFETENSORS, out, dir_.path() + "/manifest.json"});
  EXPECT_EQ(py.exit_code, 0) << py.output;
}

}  // namespace
}  // namespace coldfuse::testing
