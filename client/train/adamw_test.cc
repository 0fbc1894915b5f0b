// ForeachAdamW and ClipGradNorm against LibTorch's own AdamW and clip_grad_norm_.
#include "client/train/adamw.h"

#include "gtest/gtest.h"

namespace coldfuse::train {
namespace {

std::vector<torch::Tensor> Params(int64_t seed) {
  torch::manual_seed(seed);
  std::vector<torch::Tensor> p;
  for (auto shape : std::vector<std::vector<int64_t>>{{7, 5}, {5}, {3, 4, 2}, {1}}) {
    p.push_back(torch::randn(shape).requires_grad_(true));
  }
  return p;
}

void SetGrads(std::vector<torch::Tensor>& params, int step) {
  torch::manual_seed(100 + step);
  for (auto& p : params) p.mutable_grad() = torch::randn(p.sizes()) * (step + 1);
}

double MaxDiff(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  double d = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, (a[i] - b[i]).abs().max().item<double>());
  }
  return d;
}

class ForeachAdamWPaths : public ::testing::TestWithParam<bool> {};
INSTANTIATE_TEST_SUITE_P(FusedAndForeach, ForeachAdamWPaths, ::testing::Bool());

TEST_P(ForeachAdamWPaths, MatchesTorchAdamWWithTwoDecayGroups) {
  if (GetParam() && !ForeachAdamW::FusedAvailable()) GTEST_SKIP() << "LibTorch < 2.4";
  std::vector<torch::Tensor> mine = Params(1), theirs = Params(1);
  ForeachAdamW ours({{{mine[0], mine[2]}, 0.01}, {{mine[1], mine[3]}, 0.0}}, 0.9, 0.999, 1e-8,
                    /*fused=*/GetParam());
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::vector<torch::Tensor>{theirs[0], theirs[2]},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-3).weight_decay(0.01)));
  groups.emplace_back(std::vector<torch::Tensor>{theirs[1], theirs[3]},
                      std::make_unique<torch::optim::AdamWOptions>(
                          torch::optim::AdamWOptions(1e-3).weight_decay(0.0)));
  torch::optim::AdamW reference(std::move(groups));
  for (int step = 0; step < 6; ++step) {
    const double lr = 1e-3 * (6 - step) / 6.0;  // a decaying rate, set each step
    for (auto& g : reference.param_groups()) {
      static_cast<torch::optim::AdamWOptions&>(g.options()).lr(lr);
    }
    SetGrads(mine, step);
    SetGrads(theirs, step);
    ours.Step(lr);
    reference.step();
  }
  EXPECT_LT(MaxDiff(mine, theirs), 1e-6);
  EXPECT_GT(MaxDiff(mine, Params(1)), 1e-3);  // and they did move
  ours.ZeroGrad();
  for (const auto& p : mine) EXPECT_FALSE(p.grad().defined());
}

TEST_P(ForeachAdamWPaths, ParametersWithoutGradientsStayPut) {
  if (GetParam() && !ForeachAdamW::FusedAvailable()) GTEST_SKIP() << "LibTorch < 2.4";
  std::vector<torch::Tensor> p = Params(2);
  std::vector<torch::Tensor> before;
  for (const auto& t : p) before.push_back(t.detach().clone());
  ForeachAdamW ours({{p, 0.1}}, 0.9, 0.999, 1e-8, /*fused=*/GetParam());
  SetGrads(p, 0);
  p[1].mutable_grad() = torch::Tensor();
  ours.Step(1e-2);
  EXPECT_TRUE(torch::equal(p[1], before[1]));
  EXPECT_FALSE(torch::equal(p[0], before[0]));
}

TEST(ClipGradNormTest, MatchesTorchClipGradNorm) {
  for (double max_norm : {0.5, 1e6}) {  // clipping, and a norm already below the bound
    std::vector<torch::Tensor> a = Params(3), b = Params(3);
    SetGrads(a, 2);
    SetGrads(b, 2);
    ClipGradNorm(a, max_norm);
    torch::nn::utils::clip_grad_norm_(b, max_norm);
    std::vector<torch::Tensor> ga, gb;
    for (size_t i = 0; i < a.size(); ++i) {
      ga.push_back(a[i].grad());
      gb.push_back(b[i].grad());
    }
    EXPECT_LT(MaxDiff(ga, gb), 1e-6) << max_norm;
  }
}

}  // namespace
}  // namespace coldfuse::train
