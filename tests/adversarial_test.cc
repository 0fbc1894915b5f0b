// Poisoned rounds on the demo's real tasks (UCI digits): honest contributions come from
// real coldfuse-client daemons; the same round is then replayed with adversarial uploads
// (scaled x100, sign-flipped, random noise, NaN) under each fusion method, and every fused
// base is scored on the contributors' held-out splits with their own heads.
#include <cmath>
#include <cstring>
#include <filesystem>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/train/dataset.h"
#include "client/train/trainer.h"
#include "common/model_spec.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

constexpr char kSpec[] = "mlp:64,128,64";
const std::vector<std::string> kTasks = {"low-digits", "high-digits", "parity", "mod3"};

// `a + scale * (b - a)` over every tensor (F32).
std::vector<HostTensor> Along(const std::vector<HostTensor>& a, const std::vector<HostTensor>& b,
                              float scale) {
  std::vector<HostTensor> out = a;
  for (size_t t = 0; t < a.size(); ++t) {
    auto va = Floats(a[t]), vb = Floats(b[t]);
    for (size_t i = 0; i < va.size(); ++i) va[i] += scale * (vb[i] - va[i]);
    std::memcpy(out[t].data.data(), va.data(), va.size() * 4);
  }
  return out;
}

std::vector<HostTensor> Noise(const std::vector<HostTensor>& base, float sigma, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<HostTensor> out = base;
  for (auto& t : out) {
    auto v = Floats(t);
    for (auto& x : v) {
      double u1 = std::max(rng.Uniform(), 1e-12), u2 = rng.Uniform();
      x += sigma * static_cast<float>(std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2));
    }
    std::memcpy(t.data.data(), v.data(), v.size() * 4);
  }
  return out;
}

class AdversarialTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto r = RunCommand({"python3", PREPARE_DIGITS, dir_.path() + "/data"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    for (const auto& t : kTasks) {
      auto train = train::LoadCsvDataset(dir_.path() + "/data/" + t + "/train.csv");
      auto test = train::LoadCsvDataset(dir_.path() + "/data/" + t + "/test.csv");
      ASSERT_TRUE(train.ok() && test.ok());
      trains_.push_back(std::move(*train));
      tests_.push_back(std::move(*test));
    }
  }

  // How good a starting point `base` is for the contributors: each fine-tunes it for
  // one epoch with its own head, as in its next round; mean held-out accuracy.
  double Score(const std::vector<HostTensor>& base) {
    double sum = 0;
    train::TrainOptions options;
    options.epochs = 1;
    options.threads = 1;
    for (size_t i = 0; i < kTasks.size(); ++i) {
      auto r = train::FineTune(kSpec, base, heads_[i], trains_[i], tests_[i], options);
      EXPECT_TRUE(r.ok()) << r.status();
      sum += r.ok() ? r->accuracy_after : 0;
    }
    return sum / kTasks.size();
  }

  TempDir dir_;
  std::vector<train::Dataset> trains_;
  std::vector<train::Dataset> tests_;
  std::vector<std::vector<HostTensor>> heads_;
};

TEST_F(AdversarialTest, RobustFusionKeepsAccuracyWhilePlainMeanDegrades) {
  // 1. A clean round with four real contributors.
  auto clean = ServerProcess::Start(dir_.path() + "/clean", dir_.path() + "/clean.log",
                                    {"--min_contributions=4"});
  ASSERT_NE(clean, nullptr);
  ASSERT_EQ(RunCommand({CtlBinary(), "--server=" + clean->address(), "init",
                        std::string("--spec=") + kSpec, "--seed=1"})
                .exit_code,
            0);
  std::vector<std::unique_ptr<Process>> procs;
  for (const auto& t : kTasks) {
    std::string data = dir_.path() + "/data/" + t;
    procs.push_back(Process::Start(
        {ClientBinary(), "--server=" + clean->address(), "--name=" + t, "--task=" + t,
         "--state_dir=" + dir_.path() + "/state-" + t, "--keep_contributions=2",
         "--train=" + data + "/train.csv", "--test=" + data + "/test.csv", "--max_rounds=1",
         "--threads=1", "--poll_s=0.1"},
        dir_.path() + "/client-" + t + ".log"));
  }
  for (auto& p : procs) ASSERT_EQ(p->Wait(seconds(180)).value_or(-1), 0);
  ASSERT_TRUE(clean->WaitForBase(1, seconds(30)));
  auto base0 = rpc::PullBase(clean->channel(), 0);
  auto clean1 = rpc::PullBase(clean->channel(), 1);
  ASSERT_TRUE(base0.ok() && clean1.ok());

  std::vector<SavedContribution> honest;
  for (const auto& t : kTasks) {
    honest.push_back(ReadSavedContribution(dir_.path() + "/state-" + t, 1));
    auto head = ReadSafetensors(dir_.path() + "/state-" + t + "/head.safetensors");
    ASSERT_TRUE(head.ok()) << head.status();
    heads_.push_back(std::move(*head));
  }
  for (const auto& h : honest) ASSERT_EQ(h.tensors.size(), base0->tensors.size());
  ASSERT_EQ(heads_.size(), kTasks.size());
  ASSERT_EQ(tests_.size(), kTasks.size());
  const double clean_score = Score(clean1->tensors);

  // 2. The attacks, built from the honest updates: a boosted update (x100), a
  // sign-flipped one (x-4), Gaussian noise around the base (sigma 2), and a NaN.
  const auto& b0 = base0->tensors;
  std::vector<std::pair<std::string, std::vector<HostTensor>>> attacks = {
      {"adv-scaled", Along(b0, honest[0].tensors, 100.0f)},
      {"adv-flipped", Along(b0, honest[1].tensors, -4.0f)},
      {"adv-noise", Noise(b0, 2.0f, 7)},
  };
  std::vector<HostTensor> nan_upload = honest[2].tensors;
  float nan = std::nanf("");
  std::memcpy(nan_upload[0].data.data(), &nan, 4);

  // 3. Replays the round on a fresh server (same v0), with or without the attacks.
  int n = 0;
  struct Outcome {
    double score = 0;
    std::vector<std::string> quarantined;
  };
  auto replay = [&](const std::string& fusion, const std::string& outlier_factor,
                    bool attacked) -> Outcome {
    Outcome out;
    std::string db = absl::StrCat(dir_.path(), "/s", n++);
    const size_t total = honest.size() + (attacked ? attacks.size() : 0);
    auto server =
        ServerProcess::Start(db, db + ".log",
                             {"--min_contributions=" + std::to_string(total),
                              "--outlier_factor=" + outlier_factor, "--max_uploads_per_round=10"});
    EXPECT_NE(server, nullptr);
    if (server == nullptr) return out;
    auto init = RunCommand({CtlBinary(), "--server=" + server->address(), "init",
                            std::string("--spec=") + kSpec, "--seed=1", "--fusion=" + fusion,
                            "--trim_fraction=0.3"});
    EXPECT_EQ(init.exit_code, 0) << init.output;
    EXPECT_EQ(server->Status().base_sha256(), base0->sha256);  // the same v0
    v1::ContributionHeader h = honest[0].header;
    auto push = [&](const std::string& who, const std::vector<HostTensor>& tensors,
                    uint64_t examples) {
      h.set_contributor(who);
      h.set_num_examples(examples);
      return rpc::PushContribution(server->channel(), h, tensors).status();
    };
    if (attacked) {
      absl::Status nan_status = push("adv-nan", nan_upload, 500);
      EXPECT_TRUE(absl::IsInvalidArgument(nan_status)) << nan_status;
      EXPECT_NE(nan_status.message().find("NaN"), std::string::npos) << nan_status;
      for (const auto& [who, tensors] : attacks) EXPECT_TRUE(push(who, tensors, 500).ok());
    }
    for (size_t i = 0; i < honest.size(); ++i) {
      EXPECT_TRUE(push(kTasks[i], honest[i].tensors, honest[i].header.num_examples()).ok());
    }
    EXPECT_TRUE(server->WaitForBase(1, seconds(60)));
    auto fused = rpc::PullBase(server->channel(), 1);
    EXPECT_TRUE(fused.ok()) << fused.status();
    if (!fused.ok()) return out;
    out.score = Score(fused->tensors);
    const auto rounds = server->Rounds();
    for (const auto& c : rounds.at(0).contributions()) {
      if (c.state() == v1::QUARANTINED) out.quarantined.push_back(c.contributor());
      if (attacked && fusion == "mean" && outlier_factor == "0") {
        std::cout << absl::StrFormat("  delta norm of %-12s %9.3f\n", c.contributor(),
                                     c.delta_norm());
      }
    }
    return out;
  };

  // Expectation per scenario: kDegrades (plain mean: >= 10 points lost), kWithin2 (within
  // 2 points of the same method's clean round), kBetterThanMean (reported; beats plain mean).
  enum Expect { kDegrades, kWithin2, kBetterThanMean };
  struct Scenario {
    std::string name;
    std::string fusion;
    std::string outlier_factor;
    Expect expect;
  };
  std::vector<Scenario> scenarios = {
      {"mean, no screening", "mean", "0", kDegrades},
      {"mean + screening", "mean", "3", kWithin2},
      {"median + screening", "median", "3", kWithin2},
      {"trimmed 0.3 + screening", "trimmed", "3", kWithin2},
      {"clipped + screening", "clipped", "3", kWithin2},
      {"median, no screening", "median", "0", kBetterThanMean},
      {"trimmed 0.3, no screening", "trimmed", "0", kBetterThanMean},
      {"clipped, no screening", "clipped", "0", kBetterThanMean},
  };
  double plain_mean_attacked = 0;
  std::cout << absl::StrFormat("\nclean round fused by plain mean: %.4f\n", clean_score);
  std::cout << absl::StrFormat("%-24s %10s %10s %8s  %s\n", "fusion", "clean", "attacked", "delta",
                               "quarantined");
  for (const auto& sc : scenarios) {
    SCOPED_TRACE(sc.name);
    Outcome clean_run = replay(sc.fusion, sc.outlier_factor, /*attacked=*/false);
    Outcome attacked = replay(sc.fusion, sc.outlier_factor, /*attacked=*/true);
    std::cout << absl::StrFormat("%-24s %10.4f %10.4f %+8.4f  %s\n", sc.name, clean_run.score,
                                 attacked.score, attacked.score - clean_run.score,
                                 absl::StrJoin(attacked.quarantined, ","));
    EXPECT_TRUE(clean_run.quarantined.empty()) << "honest contributions were quarantined";
    switch (sc.expect) {
      case kDegrades:
        EXPECT_LT(attacked.score, clean_run.score - 0.10) << "plain mean should visibly degrade";
        plain_mean_attacked = attacked.score;
        break;
      case kWithin2:
        EXPECT_GE(attacked.score, clean_run.score - 0.02);
        break;
      case kBetterThanMean:
        EXPECT_GT(attacked.score, plain_mean_attacked + 0.05);
        break;
    }
    if (sc.outlier_factor != "0") {
      EXPECT_NE(std::find(attacked.quarantined.begin(), attacked.quarantined.end(), "adv-scaled"),
                attacked.quarantined.end());
      EXPECT_NE(std::find(attacked.quarantined.begin(), attacked.quarantined.end(), "adv-noise"),
                attacked.quarantined.end());
    }
  }
}

}  // namespace
}  // namespace coldfuse::testing
