#include "client/train/trainer.h"

#include <cmath>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "client/train/head_mismatch.h"
#include "common/model_spec.h"
#include "common/tensor.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse::train {
namespace {

using ::testing::HasSubstr;

constexpr char kSpec[] = "mlp:4,16,8";

// Two gaussian blobs in 4-D (unit variance, centres at -1 and +1 in every coordinate),
// drawn with a portable generator so every run sees the same rows.
Dataset Blobs(int64_t rows, uint64_t seed) {
  SplitMix64 rng(seed);
  Dataset ds;
  ds.num_features = 4;
  ds.num_classes = 2;
  for (int64_t r = 0; r < rows; ++r) {
    int64_t label = r % 2;
    for (int f = 0; f < 4; ++f) {
      // Box-Muller.
      double u1 = 1.0 - rng.Uniform(), u2 = rng.Uniform();
      double z = std::sqrt(-2.0 * std::log(u1)) * std::cos(2 * M_PI * u2);
      ds.features.push_back(static_cast<float>(z + (label ? 1.0 : -1.0)));
    }
    ds.labels.push_back(label);
  }
  return ds;
}

class TrainerTest : public ::testing::Test {
 protected:
  TrainerTest() : train_(Blobs(200, 11)), test_(Blobs(100, 12)) {
    base_ = InitMlpBody(*ParseModelSpec(kSpec), /*seed=*/7);
    options_.epochs = 10;
    options_.learning_rate = 1e-2;
    options_.threads = 1;
    options_.seed = 3;
  }

  absl::StatusOr<FineTuneResult> Run(const std::vector<HostTensor>& base,
                                     const std::vector<HostTensor>& head = {}) {
    return FineTune(kSpec, base, head, train_, test_, options_);
  }

  Dataset train_, test_;
  std::vector<HostTensor> base_;
  TrainOptions options_;
};

TEST_F(TrainerTest, LearnsSeparableBlobs) {
  absl::StatusOr<FineTuneResult> r = Run(base_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_LT(r->loss_last, r->loss_first);
  EXPECT_GT(r->accuracy_after, r->accuracy_before);
  EXPECT_GE(r->accuracy_after, 0.9);
  EXPECT_GE(r->macro_f1_after, 0.9);
  EXPECT_EQ(r->num_train_examples, 200);
  EXPECT_EQ(r->steps, 10 * 7);  // ceil(200 / 32) steps per epoch
}

TEST_F(TrainerTest, BodyMatchesManifestAndHeadStaysSeparate) {
  absl::StatusOr<FineTuneResult> r = Run(base_);
  ASSERT_TRUE(r.ok()) << r.status();
  v1::Manifest want = MlpManifest(*ParseModelSpec(kSpec));
  EXPECT_TRUE(CheckManifestMatches(want, ManifestOf(r->body)).ok());
  EXPECT_EQ(r->body.size(), static_cast<size_t>(want.tensors_size()));
  EXPECT_TRUE(CheckTensorSizes(r->body).ok());
  for (const HostTensor& t : r->body) {
    EXPECT_FALSE(absl::StartsWith(t.spec.name(), "head.")) << t.spec.name();
  }
  EXPECT_TRUE(CheckManifestMatches(HeadManifest(8, 2), ManifestOf(r->head)).ok());
  EXPECT_TRUE(CheckTensorSizes(r->head).ok());
  // Training moved the body away from the base.
  EXPECT_NE(r->body[0].data, base_[0].data);
}

TEST_F(TrainerTest, ReturnedHeadIsUsedInTheNextRun) {
  absl::StatusOr<FineTuneResult> first = Run(base_);
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<FineTuneResult> second = Run(first->body, first->head);
  ASSERT_TRUE(second.ok()) << second.status();
  EXPECT_NEAR(second->accuracy_before, first->accuracy_after, 1e-9);
  absl::StatusOr<EvalResult> eval = Evaluate(kSpec, first->body, first->head, test_);
  ASSERT_TRUE(eval.ok()) << eval.status();
  EXPECT_NEAR(eval->accuracy, first->accuracy_after, 1e-9);
}

TEST_F(TrainerTest, SameSeedGivesIdenticalBytes) {
  absl::StatusOr<FineTuneResult> a = Run(base_);
  absl::StatusOr<FineTuneResult> b = Run(base_);
  ASSERT_TRUE(a.ok() && b.ok());
  ASSERT_EQ(a->body.size(), b->body.size());
  for (size_t i = 0; i < a->body.size(); ++i) {
    EXPECT_EQ(a->body[i].data, b->body[i].data) << a->body[i].spec.name();
  }
  EXPECT_EQ(a->head[0].data, b->head[0].data);
  options_.seed = 4;
  absl::StatusOr<FineTuneResult> c = Run(base_);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(a->body[0].data, c->body[0].data);
}

// Stopped twice (the second time in the middle of a pass over the data) and continued
// from its saved state, a run ends with the bytes of one that never stopped.
TEST_F(TrainerTest, AStoppedRunContinuedFromItsStateEndsWithTheSameWeights) {
  options_.epochs = 3;  // 7 steps per pass over 200 rows
  absl::StatusOr<FineTuneResult> whole = Run(base_);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->steps, 21);
  std::vector<TrainCheckpoint> saved;
  int64_t done = 0, stop_at = 5;
  options_.on_step = [&](int64_t step, int64_t, double) { done = step; };
  options_.control.should_stop = [&] { return done >= stop_at; };
  options_.control.on_checkpoint = [&](const TrainCheckpoint& c) {
    saved.push_back(c);
    return absl::OkStatus();
  };
  absl::StatusOr<FineTuneResult> r = Run(base_);
  ASSERT_TRUE(absl::IsCancelled(r.status())) << r.status();
  ASSERT_EQ(saved.size(), 1u);
  stop_at = 10;
  options_.control.resume = &saved[0];
  r = Run(base_);
  ASSERT_TRUE(absl::IsCancelled(r.status())) << r.status();
  ASSERT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved[1].step, 10);
  stop_at = 1000;
  options_.control.resume = &saved[1];
  r = Run(base_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->resumed_at, 10);
  EXPECT_EQ(r->steps, 21);
  for (size_t i = 0; i < whole->body.size(); ++i) {
    EXPECT_EQ(r->body[i].data, whole->body[i].data) << whole->body[i].spec.name();
  }
  EXPECT_EQ(r->head[0].data, whole->head[0].data);
  EXPECT_EQ(r->loss_first, whole->loss_first);
  EXPECT_EQ(r->loss_last, whole->loss_last);

  // Another plan: refused, saying so.
  options_.epochs = 4;
  r = Run(base_);
  EXPECT_TRUE(absl::IsInvalidArgument(r.status())) << r.status();
  EXPECT_THAT(r.status().message(), HasSubstr("the saved training state does not fit"));

  // A time budget ends the run normally after the steps that fit.
  options_ = TrainOptions();
  options_.epochs = 3;
  options_.threads = 1;
  options_.control.time_budget_seconds = 1e-6;
  r = Run(base_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->out_of_time);
  EXPECT_EQ(r->steps, 1);
  EXPECT_EQ(r->total_steps, 21);
}

TEST_F(TrainerTest, WrongBaseShapeIsInvalidNamingTheTensor) {
  std::vector<HostTensor> bad = base_;
  bad[2].spec.set_shape(1, 15);  // body.1.weight [8, 16] -> [8, 15]
  bad[2].data.resize(8 * 15 * 4);
  absl::StatusOr<FineTuneResult> r = Run(bad);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("body.1.weight"));

  std::vector<HostTensor> missing(base_.begin(), base_.end() - 1);
  r = Run(missing);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("body.1.bias"));
}

TEST_F(TrainerTest, HeadForOtherClassCountIsInvalid) {
  std::vector<HostTensor> head = InitHead(8, 3, 1);
  absl::StatusOr<FineTuneResult> r = Run(base_, head);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("head.weight"));
}

// The daemon tells "replace the kept head" from other bad input by IsHeadMismatch, not by
// reading messages: every way a head can fail to fit is marked, and nothing else is.
TEST_F(TrainerTest, AHeadThatDoesNotFitIsMarkedAndNothingElseIs) {
  std::vector<HostTensor> other_classes = InitHead(8, 3, 1);
  std::vector<HostTensor> truncated = InitHead(8, 2, 1);
  truncated[0].data.resize(truncated[0].data.size() - 4);
  std::vector<HostTensor> renamed = InitHead(8, 2, 1);
  renamed[1].spec.set_name("classifier.bias");
  std::vector<HostTensor> wide = InitHead(9, 2, 1);
  for (const auto& head : {other_classes, truncated, renamed, wide}) {
    absl::Status st = Run(base_, head).status();
    EXPECT_TRUE(IsHeadMismatch(st)) << st;
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr("head does not fit"));
  }
  // Evaluating data with more classes than the head has.
  absl::Status eval = Evaluate(kSpec, base_, InitHead(8, 1, 1), test_).status();
  EXPECT_TRUE(IsHeadMismatch(eval)) << eval;

  // Not the head's fault: a base of another model, bad options, a fresh head.
  std::vector<HostTensor> missing(base_.begin(), base_.end() - 1);
  EXPECT_FALSE(IsHeadMismatch(Run(missing).status()));
  options_.batch_size = 0;
  absl::Status bad_options = Run(base_, InitHead(8, 2, 1)).status();
  EXPECT_TRUE(absl::IsInvalidArgument(bad_options)) << bad_options;
  EXPECT_FALSE(IsHeadMismatch(bad_options));
  EXPECT_FALSE(IsHeadMismatch(absl::InvalidArgumentError("head does not fit")));
}

TEST_F(TrainerTest, FeatureCountOtherThanSpecInputIsInvalid) {
  std::vector<HostTensor> base5 = InitMlpBody(*ParseModelSpec("mlp:5,16,8"), 7);
  absl::StatusOr<FineTuneResult> r = FineTune("mlp:5,16,8", base5, {}, train_, test_, options_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("input width of 5"));
  EXPECT_THAT(std::string(r.status().message()), HasSubstr("4 feature columns"));
}

TEST_F(TrainerTest, StepsAndFewShotLimitAreHonoured) {
  options_.steps = 7;
  options_.max_train_examples = 50;
  absl::StatusOr<FineTuneResult> r = Run(base_);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, 7);
  EXPECT_EQ(r->num_train_examples, 50);
}

TEST_F(TrainerTest, BadOptionsAndSpecAreInvalid) {
  options_.batch_size = 0;
  EXPECT_EQ(Run(base_).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FineTune("cnn:4", base_, {}, train_, test_, TrainOptions()).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace coldfuse::train
