#include "common/progress.h"

#include <gtest/gtest.h>

namespace coldfuse {
namespace {

Progress::Options Plain() {
  Progress::Options o;
  o.bar = false;
  return o;
}

TEST(ProgressTest, ALineSaysTheShareTheAmountsTheRateAndTheEta) {
  Progress p("pull base v3", 1'000'000'000, Progress::Unit::kBytes, Plain());
  p.Update(0);  // the rate counts from here
  EXPECT_EQ(p.Line(250'000'000, 2.0, "", /*with_bar=*/false),
            "pull base v3  25% 250.0 MB/1.00 GB, 125.0 MB/s, ETA 6s");
  EXPECT_EQ(p.Line(500'000'000, 4.0, "", /*with_bar=*/true),
            "pull base v3 [############............]  50% 500.0 MB/1.00 GB, 125.0 MB/s, ETA 4s");
}

TEST(ProgressTest, AResumedTransferCountsOnlyWhatMovesNowTowardTheRate) {
  Progress p("push to round 2", 100'000'000, Progress::Unit::kBytes, Plain());
  p.Update(60'000'000);  // resumed at 60%
  EXPECT_EQ(p.Line(80'000'000, 2.0, "", false),
            "push to round 2  80% 80.0 MB/100.0 MB, 10.0 MB/s, ETA 2s");
}

TEST(ProgressTest, StepsShowTheDetailAndLongEtasInMinutesAndHours) {
  Progress p("training", 10000, Progress::Unit::kSteps, Plain());
  p.Update(0);
  EXPECT_EQ(p.Line(10, 10.0, "loss 0.6931", false),
            "training   0% 10/10000 steps, 1.00 steps/s, loss 0.6931, ETA 2h46m");
  EXPECT_EQ(p.Line(9900, 9900.0, "", false),
            "training  99% 9900/10000 steps, 1.00 steps/s, ETA 1m40s");
}

TEST(ProgressTest, AnUnknownTotalShowsTheAmountWithoutShareOrEta) {
  Progress p("pull", 0, Progress::Unit::kBytes, Plain());
  p.Update(0);
  EXPECT_EQ(p.Line(3'000'000, 1.0, "", true), "pull 3.0 MB, 3.0 MB/s");
}

}  // namespace
}  // namespace coldfuse
