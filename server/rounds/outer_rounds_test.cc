// Outer optimizers through the round manager and a real store: each base is compared,
// byte for byte, with the step computed here in double from the protocol's formulas
// (docs/protocol.md "Outer optimizers"), across a restart and a rollback; and init
// refuses what it cannot run.
#include <gtest/gtest.h>

#include <cmath>
#include <vector>

#include "absl/strings/match.h"
#include "server/rounds/round_manager.h"
#include "server/rounds/rounds_test_fixture.h"

namespace coldfuse::rounds {
namespace {

using namespace testing_fixture;  // NOLINT: the shared test helpers

using Values = std::vector<std::vector<double>>;  // per tensor

class OuterRoundsTest : public RoundsTest {
 protected:
  v1::InitHeader Outer(v1::FusionMethod method, v1::OuterOptimizer outer) {
    v1::InitHeader h = InitHeaderFor(kSpec, method);
    h.set_outer_optimizer(outer);
    return h;
  }

  static Values Decode(const std::vector<HostTensor>& tensors) {
    Values out;
    for (const auto& t : tensors) {
      std::vector<float> f = ValuesOf<float>(t.data);
      out.emplace_back(f.begin(), f.end());
    }
    return out;
  }

  // The mean of the contributions' updates from `base`, in double, k ascending from 0.
  static Values MeanUpdate(const Values& base, const std::vector<Values>& xs) {
    Values delta = base;
    const double w = 1.0 / static_cast<double>(xs.size());
    for (size_t t = 0; t < base.size(); ++t) {
      for (size_t i = 0; i < base[t].size(); ++i) {
        double d = 0;
        for (const Values& x : xs) d = d + w * (x[t][i] - base[t][i]);
        delta[t][i] = d;
      }
    }
    return delta;
  }

  static float F32(double x) { return static_cast<float>(x); }

  // Each stored base, decoded, equals `want` exactly.
  void ExpectBase(uint64_t version, const Values& want) {
    const Values got = Decode(ReadBase(version));
    ASSERT_EQ(got.size(), want.size());
    for (size_t t = 0; t < got.size(); ++t) {
      ASSERT_EQ(got[t].size(), want[t].size());
      size_t wrong = 0;
      for (size_t i = 0; i < got[t].size(); ++i) wrong += got[t][i] != want[t][i];
      EXPECT_EQ(wrong, 0u) << "base v" << version << " tensor " << t << ": " << wrong << " of "
                           << got[t].size() << " values differ";
    }
  }
};

// NESTEROV (lr 0.7, momentum 0.9): m' = f32(0.9·m + Δ), b' = f32(b + 0.7·(Δ + 0.9·m')).
// After a rollback to v1, the next base steps from v1 with v1's momentum (not v2's), and
// both the state and the step count survive restarts.
TEST_F(OuterRoundsTest, NesterovSurvivesRestartsAndFollowsARollback) {
  v1::InitHeader h = Outer(v1::MEAN, v1::OUTER_NESTEROV);
  InitWithHeader(h);
  auto step = [](const Values& b, const Values& delta, const Values& m, Values* m_out) {
    Values out = b;
    *m_out = m;
    for (size_t t = 0; t < b.size(); ++t) {
      for (size_t i = 0; i < b[t].size(); ++i) {
        const double mi = F32(0.9 * m[t][i] + delta[t][i]);
        (*m_out)[t][i] = mi;
        out[t][i] = F32(b[t][i] + 0.7 * (delta[t][i] + 0.9 * mi));
      }
    }
    return out;
  };
  const Values b0 = Decode(base0_);
  Values zero = b0;
  for (auto& t : zero) std::fill(t.begin(), t.end(), 0.0);

  std::vector<Values> r1 = {Decode(MustContribute("alice", 2)), Decode(MustContribute("bob", 3)),
                            Decode(MustContribute("carol", 4))};
  MustClose();
  Values m1, m2, m3, m_wrong;
  const Values b1 = step(b0, MeanUpdate(b0, r1), zero, &m1);
  ASSERT_EQ(manager_->GetStatus().base_version(), 1u);
  ExpectBase(1, b1);
  EXPECT_EQ(manager_->GetStatus().model().outer_optimizer(), v1::OUTER_NESTEROV);
  EXPECT_EQ(manager_->GetStatus().model().outer_optimizer_options().learning_rate(), 0.7);
  EXPECT_EQ(manager_->GetStatus().model().outer_optimizer_options().momentum(), 0.9);

  Restart();
  std::vector<Values> r2 = {Decode(MustContribute("alice", 5)), Decode(MustContribute("bob", 6)),
                            Decode(MustContribute("carol", 7))};
  MustClose();
  const Values b2 = step(b1, MeanUpdate(b1, r2), m1, &m2);
  ExpectBase(2, b2);

  ASSERT_TRUE(manager_->RollbackBase(1, "v2 diverged", "op").ok());
  Restart();
  std::vector<Values> r4 = {Decode(MustContribute("alice", 8)), Decode(MustContribute("bob", 9)),
                            Decode(MustContribute("carol", 10))};
  MustClose();
  ASSERT_EQ(manager_->GetStatus().base_version(), 3u);
  const Values delta4 = MeanUpdate(b1, r4);
  const Values b3 = step(b1, delta4, m1, &m3);
  ExpectBase(3, b3);
  // What a server that kept the newest base's momentum would have made differs.
  EXPECT_NE(step(b1, delta4, m2, &m_wrong), b3);

  auto made = store_->GetOptimizerState(3);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(made->kind, v1::OUTER_NESTEROV);
  EXPECT_EQ(made->step, 2u);
  EXPECT_EQ(made->from_base, 1u);
  EXPECT_EQ(made->slots, std::vector<uint32_t>{0});
  bool audited = false;
  for (const auto& a : AuditAll()) {
    audited |= a.action() == "round_closed" &&
               absl::StrContains(a.detail(), "outer=OUTER_NESTEROV step=2");
  }
  EXPECT_TRUE(audited);
}

// ADAM with bias correction over two rounds (two state tensors), and SGD on a coordinate-
// wise median (the robust methods work under an optimizer too).
TEST_F(OuterRoundsTest, AdamWithBiasCorrectionOverTwoRounds) {
  v1::InitHeader h = Outer(v1::MEAN, v1::OUTER_ADAM);
  h.mutable_outer_optimizer_options()->set_learning_rate(0.01);
  h.mutable_outer_optimizer_options()->set_bias_correction(true);
  InitWithHeader(h);
  const double b1c = 0.9, b2c = 0.99, tau = 1e-3;
  Values m = Decode(base0_), v = m, b = m;
  for (auto& t : m) std::fill(t.begin(), t.end(), 0.0);
  v = m;
  for (uint64_t round = 1; round <= 2; ++round) {
    std::vector<Values> xs = {Decode(MustContribute("alice", 10 * round)),
                              Decode(MustContribute("bob", 10 * round + 1)),
                              Decode(MustContribute("carol", 10 * round + 2))};
    MustClose();
    const Values delta = MeanUpdate(b, xs);
    const double t = static_cast<double>(round);
    const double alpha = (0.01 * std::sqrt(1 - std::pow(b2c, t))) / (1 - std::pow(b1c, t));
    for (size_t k = 0; k < b.size(); ++k) {
      for (size_t i = 0; i < b[k].size(); ++i) {
        const double d = delta[k][i];
        m[k][i] = F32(b1c * m[k][i] + (1 - b1c) * d);
        v[k][i] = F32(b2c * v[k][i] + (1 - b2c) * (d * d));
        b[k][i] = F32(b[k][i] + (alpha * m[k][i]) / (std::sqrt(v[k][i]) + tau));
      }
    }
    ExpectBase(round, b);
  }
  auto made = store_->GetOptimizerState(2);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(made->slots, (std::vector<uint32_t>{0, 1}));
}

TEST_F(OuterRoundsTest, SgdOnAMedian) {
  v1::InitHeader h = Outer(v1::COORDINATE_MEDIAN, v1::OUTER_SGD);
  h.mutable_outer_optimizer_options()->set_momentum(0.0);  // no state: b + lr·Δ
  h.mutable_outer_optimizer_options()->set_learning_rate(0.5);
  InitWithHeader(h);
  const Values b0 = Decode(base0_);
  std::vector<Values> xs = {Decode(MustContribute("alice", 2)), Decode(MustContribute("bob", 3)),
                            Decode(MustContribute("carol", 4))};
  MustClose();
  Values want = b0;
  for (size_t t = 0; t < b0.size(); ++t) {
    for (size_t i = 0; i < b0[t].size(); ++i) {
      double u[3];
      for (int k = 0; k < 3; ++k) u[k] = xs[k][t][i] + -1.0 * b0[t][i];
      std::sort(u, u + 3);
      want[t][i] = F32(b0[t][i] + 0.5 * u[1]);
    }
  }
  ExpectBase(1, want);
  auto made = store_->GetOptimizerState(1);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_TRUE(made->slots.empty());
  EXPECT_EQ(made->step, 1u);
}

// Explicitly PLAIN fuses exactly as a model without an outer optimizer: rule 2's float
// accumulation acc += f32(1/3)·x in contribution order, not b + Δ in double.
TEST_F(OuterRoundsTest, PlainIsTodaysFusionByteForByte) {
  InitWithHeader(Outer(v1::MEAN, v1::OUTER_PLAIN));
  std::vector<std::vector<HostTensor>> xs = {MustContribute("alice", 2), MustContribute("bob", 3),
                                             MustContribute("carol", 4)};
  MustClose();
  Values want = Decode(base0_);
  for (size_t t = 0; t < want.size(); ++t) {
    std::vector<std::vector<float>> x;
    for (const auto& c : xs) x.push_back(ValuesOf<float>(c[t].data));
    for (size_t i = 0; i < want[t].size(); ++i) {
      float acc = 0;
      for (const auto& xk : x) acc += static_cast<float>(1.0 / 3.0) * xk[i];
      want[t][i] = acc;
    }
  }
  ExpectBase(1, want);
  auto made = store_->GetOptimizerState(1);
  ASSERT_TRUE(made.ok()) << made.status();
  EXPECT_EQ(made->kind, v1::OUTER_PLAIN);
  EXPECT_TRUE(made->slots.empty());
}

TEST_F(OuterRoundsTest, InitRefusesWhatItCannotRun) {
  auto refused = [&](const v1::InitHeader& h, const std::string& says) {
    auto up = manager_->BeginInit(h, "op");
    ASSERT_FALSE(up.ok());
    EXPECT_EQ(up.status().code(), absl::StatusCode::kInvalidArgument) << up.status();
    EXPECT_TRUE(absl::StrContains(up.status().message(), says)) << up.status();
  };
  v1::InitHeader h = Outer(v1::MEAN, static_cast<v1::OuterOptimizer>(42));
  refused(h, "unknown outer optimizer");
  h = Outer(v1::MEAN, v1::OUTER_PLAIN);
  h.mutable_outer_optimizer_options()->set_learning_rate(0.5);
  refused(h, "OUTER_PLAIN takes no options");
  h = Outer(v1::MEAN, v1::OUTER_NESTEROV);
  h.mutable_outer_optimizer_options()->set_momentum(1.0);
  refused(h, "momentum is 1; it must be in [0, 1)");
  h = Outer(v1::MEAN, v1::OUTER_NESTEROV);
  h.mutable_outer_optimizer_options()->set_learning_rate(std::nan(""));
  refused(h, "learning_rate");
  h = Outer(v1::MEAN, v1::OUTER_NESTEROV);
  h.mutable_outer_optimizer_options()->set_beta2(0.9);
  refused(h, "beta2 is set, but OUTER_NESTEROV does not use it");
  h = Outer(v1::MEAN, v1::OUTER_YOGI);
  h.mutable_outer_optimizer_options()->set_tau(0);
  refused(h, "tau is 0");
  // Nothing was stored: a valid init still works.
  InitWithHeader(Outer(v1::MEAN, v1::OUTER_YOGI));
  const v1::ModelInfo model = manager_->GetStatus().model();
  EXPECT_EQ(model.outer_optimizer_options().learning_rate(), 0.1);
  EXPECT_EQ(model.outer_optimizer_options().beta1(), 0.9);
  EXPECT_EQ(model.outer_optimizer_options().beta2(), 0.99);
  EXPECT_EQ(model.outer_optimizer_options().tau(), 1e-3);
  EXPECT_TRUE(model.outer_optimizer_options().has_bias_correction());
  EXPECT_FALSE(model.outer_optimizer_options().has_momentum());
}

}  // namespace
}  // namespace coldfuse::rounds
