#include "client/train/metrics.h"

#include "gtest/gtest.h"

namespace coldfuse::train {
namespace {

TEST(MetricsTest, AccuracyAndMacroF1MatchHandComputation) {
  // Class 0: tp 2, fp 1, fn 0 -> F1 4/5. Class 1: tp 1, fp 0, fn 1 -> F1 2/3.
  // Class 2 never occurs: not averaged.
  EvalResult r = ComputeMetrics({0, 0, 1, 1}, {0, 0, 1, 0}, 3);
  EXPECT_DOUBLE_EQ(r.accuracy, 0.75);
  EXPECT_DOUBLE_EQ(r.macro_f1, (0.8 + 2.0 / 3.0) / 2);
}

TEST(MetricsTest, EmptyIsZero) {
  EvalResult r = ComputeMetrics({}, {}, 2);
  EXPECT_EQ(r.accuracy, 0);
  EXPECT_EQ(r.macro_f1, 0);
}

}  // namespace
}  // namespace coldfuse::train
