// The outer optimizer's step against values worked out by hand and against each
// optimizer's defining property: PyTorch's Nesterov convention, Adam's first step of
// about η·sign(Δ), Yogi's additive second moment, and the dtypes state is kept in.
#include "server/fusion/outer_optimizer.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <vector>

namespace coldfuse::fusion {
namespace {

struct Out {
  std::vector<double> base, m, v;
};

// One step over `b`, `d` with state `m`, `v`, decoded back to doubles.
Out Step(const OuterStep& s, DType dtype, const std::vector<double>& b,
         const std::vector<double>& d, std::vector<double> m = {}, std::vector<double> v = {}) {
  const size_t n = b.size();
  m.resize(n, 0.0);
  v.resize(n, 0.0);
  const DType state = StateDType(dtype);
  std::string base_out(n * DTypeSize(dtype), '\0'), m_out(n * DTypeSize(state), '\0'),
      v_out(n * DTypeSize(state), '\0');
  StepElements(s, dtype, n, b.data(), d.data(), m.data(), v.data(), base_out.data(), m_out.data(),
               v_out.data());
  Out o;
  o.base.resize(n);
  o.m.resize(n);
  o.v.resize(n);
  DecodeToDouble(dtype, base_out.data(), n, o.base.data());
  DecodeToDouble(state, m_out.data(), n, o.m.data());
  DecodeToDouble(state, v_out.data(), n, o.v.data());
  return o;
}

TEST(OuterOptimizerTest, PlainAndMomentumFreeSgdMoveTheBaseByTheUpdate) {
  OuterStep plain;
  EXPECT_EQ(StateSlots(plain), 0);
  Out o = Step(plain, v1::F32, {1.0, -2.0}, {0.25, 0.5});
  EXPECT_EQ(o.base, (std::vector<double>{1.25, -1.5}));
  OuterStep sgd{.kind = OuterKind::kSgd, .lr = 0.5};
  EXPECT_EQ(StateSlots(sgd), 0);
  o = Step(sgd, v1::F32, {1.0, -2.0}, {0.25, 0.5});
  EXPECT_EQ(o.base, (std::vector<double>{1.125, -1.75}));
}

TEST(OuterOptimizerTest, MomentumAndNesterovOverTwoSteps) {
  OuterStep sgd{.kind = OuterKind::kSgd, .lr = 1.0, .momentum = 0.5};
  EXPECT_EQ(StateSlots(sgd), 1);
  Out first = Step(sgd, v1::F32, {1.0}, {0.25});
  EXPECT_EQ(first.m[0], 0.25);
  EXPECT_EQ(first.base[0], 1.25);
  Out second = Step(sgd, v1::F32, first.base, {0.25}, first.m);
  EXPECT_EQ(second.m[0], 0.375);  // 0.5·0.25 + 0.25
  EXPECT_EQ(second.base[0], 1.625);

  // DiLoCo's outer Nesterov (lr 0.7, μ 0.9), as PyTorch's SGD(nesterov=True) with the
  // gradient g = −Δ: buf = μ·buf + g; p −= lr·(g + μ·buf).
  OuterStep nesterov{.kind = OuterKind::kNesterov, .lr = 0.7, .momentum = 0.9};
  double p = 1.0, buf = 0.0;
  std::vector<double> base = {1.0}, m = {0.0};
  for (double delta : {0.5, -0.25, 0.125}) {
    const double g = -delta;
    buf = 0.9 * buf + g;
    p -= 0.7 * (g + 0.9 * buf);
    Out o = Step(nesterov, v1::F64, base, {delta}, m);  // F64: no rounding in between
    base = o.base;
    m = o.m;
    EXPECT_NEAR(base[0], p, 1e-15);
    EXPECT_NEAR(m[0], -buf, 1e-15);
  }
}

TEST(OuterOptimizerTest, AdamsFirstStepIsAboutTheLearningRateAndYogiGrowsVAdditively) {
  OuterStep adam{.kind = OuterKind::kAdam,
                 .lr = 0.1,
                 .beta1 = 0.9,
                 .beta2 = 0.99,
                 .tau = 1e-9,
                 .bias_correction = true,
                 .t = 1};
  EXPECT_EQ(StateSlots(adam), 2);
  EXPECT_DOUBLE_EQ(AdamAlpha(adam), 0.1 * std::sqrt(0.01) / 0.1);
  Out o = Step(adam, v1::F64, {0.0, 0.0}, {3e-3, -5e-4});
  EXPECT_NEAR(o.base[0], 0.1, 1e-6);  // bias-corrected: η·sign(Δ), whatever |Δ|
  EXPECT_NEAR(o.base[1], -0.1, 1e-5);
  EXPECT_DOUBLE_EQ(o.m[0], (1.0 - 0.9) * 3e-3);
  EXPECT_DOUBLE_EQ(o.v[0], (1.0 - 0.99) * (3e-3 * 3e-3));

  OuterStep yogi = adam;
  yogi.kind = OuterKind::kYogi;
  // v above g² shrinks by c2·g² (Adam would shrink it by a fraction of v itself).
  Out y = Step(yogi, v1::F64, {0.0}, {0.5}, {0.0}, {1.0});
  EXPECT_EQ(y.v[0], 1.0 - ((1.0 - 0.99) * 0.25));
  Out a = Step(adam, v1::F64, {0.0}, {0.5}, {0.0}, {1.0});
  EXPECT_EQ(a.v[0], 0.99 * 1.0 + (1.0 - 0.99) * 0.25);
  // v below g² grows by c2·g²; at v = g² it stays.
  EXPECT_EQ(Step(yogi, v1::F64, {0.0}, {0.5}, {0.0}, {0.0}).v[0], (1.0 - 0.99) * 0.25);
  EXPECT_EQ(Step(yogi, v1::F64, {0.0}, {0.5}, {0.0}, {0.25}).v[0], 0.25);
}

TEST(OuterOptimizerTest, StateIsF32ExceptForF64AndTheBaseKeepsItsDtype) {
  EXPECT_EQ(StateDType(v1::BF16), v1::F32);
  EXPECT_EQ(StateDType(v1::F16), v1::F32);
  EXPECT_EQ(StateDType(v1::F32), v1::F32);
  EXPECT_EQ(StateDType(v1::F64), v1::F64);
  OuterStep sgd{.kind = OuterKind::kSgd, .lr = 1.0, .momentum = 0.5};
  const double third = 1.0 / 3.0;
  Out o = Step(sgd, v1::BF16, {1.0}, {third});
  EXPECT_EQ(o.m[0], static_cast<double>(static_cast<float>(third)));  // S(): F32
  // The base: one rounding of b + η·m' (with the stored m') to BF16.
  std::vector<double> want = {1.0 + static_cast<double>(static_cast<float>(third))};
  std::string bytes(2, '\0');
  EncodeFromDouble(v1::BF16, want.data(), 1, bytes.data());
  double decoded;
  DecodeToDouble(v1::BF16, bytes.data(), 1, &decoded);
  EXPECT_EQ(o.base[0], decoded);
  EXPECT_NE(o.base[0], 1.0 + third);
}

}  // namespace
}  // namespace coldfuse::fusion
