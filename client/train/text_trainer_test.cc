// Fine-tuning the tiny random BERT fixture on learnable text files: what it returns (the
// base's tensors only, the head apart), that it learns, the schedule, gradient
// accumulation, early stopping, and the errors a contributor can meet.
#include "client/train/text_trainer.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "client/train/encoder.h"
#include "client/train/head_mismatch.h"
#include "client/train/testing/tiny_text.h"
#include "common/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse::train {
namespace {

using ::testing::HasSubstr;

const std::string kFixture = std::string(COLDFUSE_ENCODER_FIXTURES) + "/bert";

class TextTrainerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = ::testing::TempDir() + "/text_trainer_" +
           ::testing::UnitTest::GetInstance()->current_test_info()->name();
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    absl::StatusOr<EncoderCheckpoint> ckpt = ReadEncoderCheckpoint(kFixture);
    ASSERT_TRUE(ckpt.ok()) << ckpt.status();
    base_ = ckpt->tensors;
  }

  TextModel Model(double dropout = 0.1) {
    testing::WriteTinyTextModel(kFixture, dir_ + "/model", dropout);
    absl::StatusOr<TextModel> m = TextModel::Open(dir_ + "/model");
    EXPECT_TRUE(m.ok()) << m.status();
    return *m;
  }

  TextDataset Data(const std::string& name, int rows, uint64_t seed, bool regression = false,
                   const TextDataset* like = nullptr) {
    const std::string path = absl::StrCat(dir_, "/", name, ".csv");
    testing::WriteTinyTextCsv(path, rows, seed, regression);
    TextDatasetOptions o;
    o.regression = regression;
    absl::StatusOr<TextDataset> d =
        like == nullptr ? LoadTextDataset(path, o) : LoadTextDatasetLike(path, *like, o);
    EXPECT_TRUE(d.ok()) << d.status();
    return *d;
  }

  static TextTrainOptions Fast() {
    TextTrainOptions o;
    o.learning_rate = 3e-3;  // a random tiny model learns these words quickly
    o.batch_size = 16;
    o.epochs = 6;
    o.threads = 1;
    o.max_seq_length = 32;
    o.device = "cpu";  // bit-for-bit comparisons; CudaBf16 below covers the GPU
    return o;
  }

  std::string dir_;
  std::vector<HostTensor> base_;
};

// Replaces the first `from` in the file at `path` with `to`.
void EditFile(const std::string& path, const std::string& from, const std::string& to) {
  std::ifstream in(path);
  std::stringstream text;
  text << in.rdbuf();
  std::string c = text.str();
  const size_t at = c.find(from);
  ASSERT_NE(at, std::string::npos) << path << " has no " << from;
  c.replace(at, from.size(), to);
  std::ofstream(path) << c;
}

const HostTensor* Find(const std::vector<HostTensor>& ts, const std::string& name) {
  for (const auto& t : ts) {
    if (t.spec.name() == name) return &t;
  }
  return nullptr;
}

TEST_F(TextTrainerTest, LearnsTheTaskAndReturnsTheBaseTensorsOnly) {
  TextModel model = Model();
  TextDataset train = Data("train", 240, 1);
  TextDataset test = Data("test", 120, 2, false, &train);
  absl::StatusOr<TextFineTuneResult> r = FineTuneText(model, base_, {}, train, {}, test, Fast());
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << "accuracy " << r->before.accuracy << " -> " << r->after.accuracy << ", loss "
            << r->loss_first << " -> " << r->loss_last << ", " << r->steps << " steps\n";
  EXPECT_GE(r->after.accuracy, 0.9);
  EXPECT_GT(r->after.macro_f1, 0.85);
  EXPECT_LT(r->loss_last, 0.5 * r->loss_first);
  EXPECT_EQ(r->steps, 6 * 15);  // 240 rows / 16 per step, 6 epochs
  EXPECT_EQ(r->num_train_examples, 240);
  EXPECT_EQ(r->device, "cpu");

  // The body is the base's tensors, in order, names and dtypes; the encoder's changed,
  // the pooler (not trained here) is passed through byte for byte.
  ASSERT_EQ(r->body.size(), base_.size());
  int changed = 0;
  for (size_t i = 0; i < base_.size(); ++i) {
    const HostTensor& b = base_[i];
    const HostTensor& t = r->body[i];
    EXPECT_EQ(t.spec.SerializeAsString(), b.spec.SerializeAsString()) << b.spec.name();
    ASSERT_EQ(t.data.size(), b.data.size()) << b.spec.name();
    const bool same = t.data == b.data;
    if (b.spec.name().rfind("pooler.", 0) == 0) {
      EXPECT_TRUE(same) << b.spec.name() << " is not trained and must pass through";
    } else {
      changed += same ? 0 : 1;
    }
  }
  EXPECT_EQ(changed, static_cast<int>(base_.size()) - 2);  // all but pooler.dense.{weight,bias}
  for (const auto& t : r->body) EXPECT_EQ(t.spec.name().find("classifier"), std::string::npos);
  // The head stays local: two tensors, classes x hidden.
  ASSERT_EQ(r->head.size(), 2u);
  ASSERT_NE(Find(r->head, "classifier.weight"), nullptr);
  EXPECT_EQ(Find(r->head, "classifier.weight")->spec.shape(0), 2);
  EXPECT_EQ(Find(r->head, "classifier.weight")->spec.shape(1), 32);

  // Starting again from the trained body with the kept head, the test score holds.
  absl::StatusOr<TextFineTuneResult> again =
      FineTuneText(model, r->body, r->head, train, {}, test, [] {
        TextTrainOptions o = Fast();
        o.steps = 1;
        o.learning_rate = 1e-9;
        return o;
      }());
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_NEAR(again->before.accuracy, r->after.accuracy, 1e-9);
}

TEST_F(TextTrainerTest, SameSeedSameWeights) {
  TextModel model = Model();
  TextDataset train = Data("train", 64, 3);
  TextDataset test = Data("test", 16, 4, false, &train);
  TextTrainOptions o = Fast();
  o.epochs = 1;
  auto a = FineTuneText(model, base_, {}, train, {}, test, o);
  auto b = FineTuneText(model, base_, {}, train, {}, test, o);
  ASSERT_TRUE(a.ok() && b.ok());
  for (size_t i = 0; i < a->body.size(); ++i) {
    EXPECT_EQ(a->body[i].data, b->body[i].data) << a->body[i].spec.name();
  }
  o.seed = 2;
  auto c = FineTuneText(model, base_, {}, train, {}, test, o);
  ASSERT_TRUE(c.ok());
  EXPECT_NE(Find(c->body, "embeddings.word_embeddings.weight")->data,
            Find(a->body, "embeddings.word_embeddings.weight")->data);
}

// A run stopped midway (twice, once mid-epoch and once at an epoch's end) and continued
// from its saved state ends with exactly the weights, losses and dev choice of a run that
// never stopped: the same data order, dropout masks and optimizer state.
TEST_F(TextTrainerTest, AStoppedRunContinuedFromItsStateEndsWithTheSameWeights) {
  TextModel model = Model(/*dropout=*/0.1);
  TextDataset train = Data("train", 64, 31);
  TextDataset dev = Data("dev", 24, 32, false, &train);
  TextDataset test = Data("test", 16, 33, false, &train);
  TextTrainOptions o = Fast();
  o.batch_size = 8;  // 8 steps per epoch
  o.epochs = 3;
  o.eval_every = 5;
  o.warmup_ratio = 0.2;
  auto whole = FineTuneText(model, base_, {}, train, dev, test, o);
  ASSERT_TRUE(whole.ok()) << whole.status();
  ASSERT_EQ(whole->steps, 24);

  std::vector<TrainCheckpoint> saved;
  int64_t stop_at = 11;  // mid-epoch, after a dev evaluation
  int64_t steps_done = 0;
  auto run = [&](const TrainCheckpoint* resume) {
    TextTrainOptions p = o;
    p.on_step = [&](const TextProgress& progress) { steps_done = progress.step; };
    p.control.resume = resume;
    p.control.should_stop = [&] { return steps_done >= stop_at; };
    p.control.on_checkpoint = [&](const TrainCheckpoint& c) {
      saved.push_back(c);
      return absl::OkStatus();
    };
    return FineTuneText(model, base_, {}, train, dev, test, p);
  };
  auto first = run(nullptr);
  ASSERT_TRUE(absl::IsCancelled(first.status())) << first.status();
  EXPECT_THAT(first.status().message(), HasSubstr("stopped at step 11 of 24"));
  ASSERT_EQ(saved.size(), 1u);
  EXPECT_EQ(saved[0].step, 11);
  stop_at = 16;  // an epoch's end
  auto second = run(&saved[0]);
  ASSERT_TRUE(absl::IsCancelled(second.status())) << second.status();
  ASSERT_EQ(saved.size(), 2u);
  EXPECT_EQ(saved[1].step, 16);
  stop_at = 1000;
  auto last = run(&saved[1]);
  ASSERT_TRUE(last.ok()) << last.status();
  EXPECT_EQ(last->resumed_at, 16);
  EXPECT_EQ(last->steps, 24);
  ASSERT_EQ(last->body.size(), whole->body.size());
  for (size_t i = 0; i < whole->body.size(); ++i) {
    EXPECT_EQ(last->body[i].data, whole->body[i].data) << whole->body[i].spec.name();
  }
  for (size_t i = 0; i < whole->head.size(); ++i) {
    EXPECT_EQ(last->head[i].data, whole->head[i].data) << whole->head[i].spec.name();
  }
  EXPECT_EQ(last->best_step, whole->best_step);
  EXPECT_EQ(last->best_dev, whole->best_dev);
  EXPECT_EQ(last->loss_first, whole->loss_first);
  EXPECT_EQ(last->loss_last, whole->loss_last);
  EXPECT_EQ(last->after.accuracy, whole->after.accuracy);
  EXPECT_EQ(last->before.accuracy, whole->before.accuracy);

  // A state from another plan (more steps) is refused, saying so; the caller starts over.
  TextTrainOptions other = o;
  other.epochs = 4;
  other.control.resume = &saved[0];
  auto unfit = FineTuneText(model, base_, {}, train, dev, test, other);
  EXPECT_TRUE(absl::IsInvalidArgument(unfit.status())) << unfit.status();
  EXPECT_THAT(unfit.status().message(), HasSubstr("the saved training state does not fit"));
  EXPECT_THAT(unfit.status().message(), HasSubstr("step 11 of 24 but this run plans 32"));
  TrainCheckpoint broken = saved[0];
  broken.tensors.pop_back();
  other = o;
  other.control.resume = &broken;
  unfit = FineTuneText(model, base_, {}, train, dev, test, other);
  EXPECT_THAT(unfit.status().message(), HasSubstr("the saved training state does not fit"));
}

// Saving every step (checkpoint_seconds) does not change the run, and any of those states
// continues to the same end; a time budget ends the run early but normally.
TEST_F(TextTrainerTest, PeriodicStatesContinueAndATimeBudgetEndsTheRunEarly) {
  TextModel model = Model(/*dropout=*/0.1);
  TextDataset train = Data("train", 48, 34);
  TextDataset test = Data("test", 16, 35, false, &train);
  TextTrainOptions o = Fast();
  o.batch_size = 8;
  o.epochs = 2;
  auto whole = FineTuneText(model, base_, {}, train, {}, test, o);
  ASSERT_TRUE(whole.ok()) << whole.status();
  std::vector<TrainCheckpoint> saved;
  TextTrainOptions p = o;
  p.control.checkpoint_seconds = 1e-9;
  p.control.on_checkpoint = [&](const TrainCheckpoint& c) {
    saved.push_back(c);
    return absl::OkStatus();
  };
  auto watched = FineTuneText(model, base_, {}, train, {}, test, p);
  ASSERT_TRUE(watched.ok()) << watched.status();
  ASSERT_EQ(saved.size(), 11u);  // before steps 2..12
  EXPECT_EQ(Find(watched->body, "embeddings.word_embeddings.weight")->data,
            Find(whole->body, "embeddings.word_embeddings.weight")->data);
  p = o;
  p.control.resume = &saved[4];
  auto resumed = FineTuneText(model, base_, {}, train, {}, test, p);
  ASSERT_TRUE(resumed.ok()) << resumed.status();
  EXPECT_EQ(resumed->resumed_at, 5);
  for (size_t i = 0; i < whole->body.size(); ++i) {
    EXPECT_EQ(resumed->body[i].data, whole->body[i].data) << whole->body[i].spec.name();
  }
  // A failing save ends the run with its error.
  p = o;
  p.control.checkpoint_seconds = 1e-9;
  p.control.on_checkpoint = [](const TrainCheckpoint&) {
    return absl::ResourceExhaustedError("disk full");
  };
  EXPECT_TRUE(
      absl::IsResourceExhausted(FineTuneText(model, base_, {}, train, {}, test, p).status()));

  p = o;
  p.control.time_budget_seconds = 1e-6;  // room for the one step every run takes
  auto hurried = FineTuneText(model, base_, {}, train, {}, test, p);
  ASSERT_TRUE(hurried.ok()) << hurried.status();
  EXPECT_TRUE(hurried->out_of_time);
  EXPECT_EQ(hurried->steps, 1);
  EXPECT_EQ(hurried->total_steps, 12);
  EXPECT_NE(Find(hurried->body, "embeddings.word_embeddings.weight")->data,
            Find(base_, "embeddings.word_embeddings.weight")->data);
}

TEST_F(TextTrainerTest, RegressionReportsPearson) {
  TextModel model = Model();
  TextDataset train = Data("train", 240, 5, true);
  TextDataset test = Data("test", 120, 6, true, &train);
  ASSERT_TRUE(train.label_ids.empty());
  absl::StatusOr<TextFineTuneResult> r = FineTuneText(model, base_, {}, train, {}, test, Fast());
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << "pearson " << r->before.pearson << " -> " << r->after.pearson << "\n";
  EXPECT_GT(r->after.pearson, 0.45);
  EXPECT_GT(r->after.pearson, r->before.pearson + 0.3);
  EXPECT_EQ(Find(r->head, "classifier.weight")->spec.shape(0), 1);
}

TEST_F(TextTrainerTest, WarmupThenLinearDecay) {
  TextModel model = Model();
  TextDataset train = Data("train", 32, 7);
  TextDataset test = Data("test", 8, 8, false, &train);
  TextTrainOptions o = Fast();
  o.steps = 10;
  o.batch_size = 8;
  o.learning_rate = 4e-5;
  o.warmup_ratio = 0.2;
  std::vector<double> lrs;
  o.on_step = [&](const TextProgress& p) {
    if (!p.dev_evaluated) lrs.push_back(p.learning_rate);
    EXPECT_EQ(p.total, 10);
  };
  auto r = FineTuneText(model, base_, {}, train, {}, test, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->steps, 10);  // 4 steps per pass: reshuffled passes until 10
  ASSERT_EQ(lrs.size(), 10u);
  const double want[] = {2e-5, 4e-5, 4e-5, 3.5e-5, 3e-5, 2.5e-5, 2e-5, 1.5e-5, 1e-5, 0.5e-5};
  for (int i = 0; i < 10; ++i) EXPECT_NEAR(lrs[i], want[i], 1e-12) << "step " << i + 1;
}

TEST_F(TextTrainerTest, GradientAccumulationEqualsTheLargerBatch) {
  TextModel model = Model(/*dropout=*/0.0);  // no dropout: both runs see the same function
  TextDataset train = Data("train", 64, 9);
  TextDataset test = Data("test", 8, 10, false, &train);
  TextTrainOptions big = Fast();
  big.epochs = 1;
  big.batch_size = 32;
  big.max_grad_norm = 0;
  TextTrainOptions accumulated = big;
  accumulated.batch_size = 8;
  accumulated.grad_accumulation = 4;
  auto a = FineTuneText(model, base_, {}, train, {}, test, big);
  auto b = FineTuneText(model, base_, {}, train, {}, test, accumulated);
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_EQ(a->steps, 2);
  EXPECT_EQ(b->steps, 2);
  // Adam divides by the gradients' root mean square, so parameters whose gradients are
  // rounding noise move by up to a step either way: compare the mean difference against
  // the mean update, and bound the largest by a fraction of one step (lr 3e-3).
  double max_diff = 0, sum_diff = 0, sum_update = 0, n = 0;
  for (size_t i = 0; i < a->body.size(); ++i) {
    const float* x = reinterpret_cast<const float*>(a->body[i].data.data());
    const float* y = reinterpret_cast<const float*>(b->body[i].data.data());
    const float* z = reinterpret_cast<const float*>(base_[i].data.data());
    for (size_t j = 0; j < a->body[i].data.size() / 4; ++j) {
      max_diff = std::max(max_diff, static_cast<double>(std::abs(x[j] - y[j])));
      sum_diff += std::abs(x[j] - y[j]);
      sum_update += std::abs(x[j] - z[j]);
      n += 1;
    }
  }
  std::cout << "mean update " << sum_update / n << ", mean difference " << sum_diff / n
            << ", largest difference " << max_diff << "\n";
  EXPECT_LT(max_diff, 0.25 * 3e-3);
  EXPECT_LT(sum_diff, 1e-3 * sum_update);
  EXPECT_GT(sum_update / n, 1e-4);  // the update itself is real
}

TEST_F(TextTrainerTest, EarlyStoppingKeepsTheBestDevWeights) {
  TextModel model = Model();
  TextDataset train = Data("train", 64, 11);
  TextDataset dev = Data("dev", 32, 12, false, &train);
  TextDataset test = Data("test", 16, 13, false, &train);
  TextTrainOptions o = Fast();
  o.batch_size = 8;
  o.epochs = 5;
  o.learning_rate = 1e-12;  // nothing improves after the first evaluation
  o.eval_every = 2;
  o.early_stopping_patience = 2;
  int evaluations = 0;
  o.on_step = [&](const TextProgress& p) { evaluations += p.dev_evaluated ? 1 : 0; };
  auto r = FineTuneText(model, base_, {}, train, dev, test, o);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_TRUE(r->has_dev);
  EXPECT_TRUE(r->stopped_early);
  EXPECT_EQ(evaluations, 3);  // the first sets the best, two more without gain stop it
  EXPECT_EQ(r->steps, 6);
  EXPECT_EQ(r->best_step, 2);

  // With a real learning rate the dev score improves and training runs to the end.
  o.learning_rate = 3e-3;
  o.early_stopping_patience = 0;
  auto full = FineTuneText(model, base_, {}, train, dev, test, o);
  ASSERT_TRUE(full.ok()) << full.status();
  EXPECT_FALSE(full->stopped_early);
  EXPECT_EQ(full->steps, 40);
  EXPECT_GE(full->best_dev, 0.75);
}

// The weights returned are those of the best dev evaluation, not the last step's. The dev
// split has the train task's labels swapped, so the better the model learns, the worse it
// scores there: the best dev score is an early one, and with the dev split as the test
// split the "after" score must be exactly that one.
TEST_F(TextTrainerTest, BestDevWeightsAreTheOnesReturned) {
  TextModel model = Model();
  TextDataset train = Data("train", 64, 19);
  TextDataset dev = Data("dev", 48, 20, false, &train);
  for (int64_t& id : dev.label_ids) id = 1 - id;
  TextTrainOptions o = Fast();
  o.batch_size = 8;
  o.epochs = 4;
  o.eval_every = 2;
  std::vector<double> scores;
  o.on_step = [&](const TextProgress& p) {
    if (p.dev_evaluated) scores.push_back(p.dev_score);
  };
  auto r = FineTuneText(model, base_, {}, train, dev, dev, o);
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(scores.size(), 16u);
  std::cout << "dev scores:";
  for (double x : scores) std::cout << " " << x;
  std::cout << "; best at step " << r->best_step << "\n";
  EXPECT_LT(r->best_step, r->steps);
  EXPECT_LT(scores.back(), r->best_dev - 0.2);  // the last weights are far worse on dev
  EXPECT_DOUBLE_EQ(r->after.accuracy, r->best_dev);
  EXPECT_DOUBLE_EQ(r->best_dev, *std::max_element(scores.begin(), scores.end()));
}

TEST_F(TextTrainerTest, HalfPrecisionBaseComesBackInItsDtype) {
  TextModel model = Model();
  std::vector<HostTensor> bf16;
  for (const auto& t : base_) {
    HostTensor h;
    h.spec = t.spec;
    h.spec.set_dtype(v1::BF16);
    const size_t n = t.data.size() / 4;
    h.data.resize(n * 2);
    EncodeFromFloat(v1::BF16, reinterpret_cast<const float*>(t.data.data()), n, h.data.data());
    bf16.push_back(std::move(h));
  }
  TextDataset train = Data("train", 32, 14);
  TextDataset test = Data("test", 8, 15, false, &train);
  TextTrainOptions o = Fast();
  o.epochs = 1;
  auto r = FineTuneText(model, bf16, {}, train, {}, test, o);
  ASSERT_TRUE(r.ok()) << r.status();
  // The same training from the F32 base: the BF16 result is its values rounded to BF16,
  // give or take the different (rounded) start.
  auto f32 = FineTuneText(model, base_, {}, train, {}, test, o);
  ASSERT_TRUE(f32.ok()) << f32.status();
  double moved = 0, off = 0, n = 0;
  for (size_t i = 0; i < bf16.size(); ++i) {
    ASSERT_EQ(r->body[i].spec.dtype(), v1::BF16);
    ASSERT_EQ(r->body[i].data.size(), bf16[i].data.size());
    const size_t count = bf16[i].data.size() / 2;
    std::vector<float> got(count), start(count);
    DecodeToFloat(v1::BF16, r->body[i].data.data(), count, got.data());
    DecodeToFloat(v1::BF16, bf16[i].data.data(), count, start.data());
    const float* ref = reinterpret_cast<const float*>(f32->body[i].data.data());
    for (size_t j = 0; j < count; ++j) {
      ASSERT_TRUE(std::isfinite(got[j]));
      moved += std::abs(got[j] - start[j]);
      off += std::abs(got[j] - ref[j]);
      n += 1;
    }
  }
  std::cout << "bf16 base: mean change " << moved / n << ", mean distance to the F32 run "
            << off / n << "\n";
  EXPECT_GT(moved / n, 1e-4);           // trained
  EXPECT_LT(off / n, 0.2 * moved / n);  // and like the F32 run
}

TEST_F(TextTrainerTest, ErrorsSayWhatToFix) {
  TextModel model = Model();
  TextDataset train = Data("train", 32, 16);
  TextDataset test = Data("test", 8, 17, false, &train);
  auto run = [&](auto change) {
    TextTrainOptions o = Fast();
    o.epochs = 1;
    std::vector<HostTensor> base = base_, head;
    change(o, base, head);
    return FineTuneText(model, base, head, train, {}, test, o).status();
  };
  absl::Status s = run([](TextTrainOptions& o, auto&, auto&) { o.max_seq_length = 65; });
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("[4, 64]"));
  s = run([](TextTrainOptions& o, auto&, auto&) { o.warmup_ratio = 1; });
  EXPECT_THAT(s.message(), HasSubstr("warmup"));
  s = run([](TextTrainOptions& o, auto&, auto&) { o.grad_accumulation = 0; });
  EXPECT_THAT(s.message(), HasSubstr("accumulation"));
  s = run([](TextTrainOptions& o, auto&, auto&) { o.device = "tpu"; });
  EXPECT_THAT(s.message(), HasSubstr("auto, cpu or cuda"));
  // A base of another model: the tensor is named.
  s = run([](TextTrainOptions&, std::vector<HostTensor>& base, auto&) {
    base.erase(base.begin() + 3);
  });
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("missing"));
  EXPECT_FALSE(IsHeadMismatch(s)) << s;  // the base's fault, not the head's
  // A kept head for a different label set.
  s = run([](TextTrainOptions&, auto&, std::vector<HostTensor>& head) {
    HostTensor w;
    w.spec.set_name("classifier.weight");
    w.spec.set_dtype(v1::F32);
    w.spec.add_shape(3);
    w.spec.add_shape(32);
    w.data.resize(3 * 32 * 4);
    head.push_back(w);
  });
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("classifier.weight"));
  EXPECT_TRUE(IsHeadMismatch(s)) << s;  // the daemon tells it apart without the message
  // A head of the right shapes that lost bytes does not fit either.
  s = run([](TextTrainOptions&, auto&, std::vector<HostTensor>& head) {
    for (auto [name, rows] :
         {std::pair{"classifier.weight", 32}, std::pair{"classifier.bias", 1}}) {
      HostTensor t;
      t.spec.set_name(name);
      t.spec.set_dtype(v1::F32);
      t.spec.add_shape(2);
      if (rows > 1) t.spec.add_shape(rows);
      t.data.resize(2 * rows * 4 - 4);
      head.push_back(t);
    }
  });
  EXPECT_TRUE(IsHeadMismatch(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("truncated"));
  if (!torch::cuda::is_available()) {  // asking for CUDA where there is none
    s = run([](TextTrainOptions& o, auto&, auto&) { o.device = "cuda"; });
    EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
    EXPECT_THAT(s.message(), HasSubstr("no CUDA device"));
  }
  // One class only.
  std::ofstream(dir_ + "/one.csv") << "text,label\ngood day,pos\nbad day,pos\n";
  auto one = LoadTextDataset(dir_ + "/one.csv", {});
  ASSERT_TRUE(one.ok());
  s = FineTuneText(model, base_, {}, *one, {}, *one, Fast()).status();
  EXPECT_THAT(s.message(), HasSubstr("at least two"));
}

// A model folder that does not belong to the base: found before any large allocation or
// any LibTorch index error, with the file named.
TEST_F(TextTrainerTest, ModelFolderOfAnotherModelIsNamed) {
  TextDataset train = Data("train", 16, 21);
  TextDataset test = Data("test", 8, 22, false, &train);
  // A config.json of a larger encoder than the base holds.
  testing::WriteTinyTextModel(kFixture, dir_ + "/wide");
  EditFile(dir_ + "/wide/config.json", "\"hidden_size\": 32", "\"hidden_size\": 4096");
  auto wide = TextModel::Open(dir_ + "/wide");
  ASSERT_TRUE(wide.ok()) << wide.status();
  absl::Status s = FineTuneText(*wide, base_, {}, train, {}, test, Fast()).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("wide/config.json describes an encoder of"));
  // A tokenizer whose ids run past config.json's vocab_size (another model's vocab.txt).
  testing::WriteTinyTextModel(kFixture, dir_ + "/other_vocab");
  {
    std::ofstream vocab(dir_ + "/other_vocab/vocab.txt");
    vocab << "[PAD]\n[UNK]\n[CLS]\n[SEP]\n";
    for (int i = 0; i < 150; ++i) vocab << "filler" << i << "\n";
    vocab << "good\nbad\nthe\n";
  }
  auto other = TextModel::Open(dir_ + "/other_vocab");
  ASSERT_TRUE(other.ok()) << other.status();
  s = FineTuneText(*other, base_, {}, train, {}, test, Fast()).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("other_vocab/vocab.txt gives token id"));
  // Text pairs for a model with a single token type.
  testing::WriteTinyTextModel(kFixture, dir_ + "/one_type");
  EditFile(dir_ + "/one_type/config.json", "\"type_vocab_size\": 2", "\"type_vocab_size\": 1");
  std::vector<HostTensor> one_type_base = base_;
  for (auto& t : one_type_base) {
    if (t.spec.name() == "embeddings.token_type_embeddings.weight") {
      t.spec.set_shape(0, 1);
      t.data.resize(t.data.size() / 2);
    }
  }
  std::ofstream(dir_ + "/pairs.csv") << "a,b,label\ngood day,bad day,pos\nbad day,good day,neg\n";
  TextDatasetOptions pair_options;
  pair_options.text_column = "a";
  pair_options.text_pair_column = "b";
  auto pairs = LoadTextDataset(dir_ + "/pairs.csv", pair_options);
  ASSERT_TRUE(pairs.ok()) << pairs.status();
  auto one_type = TextModel::Open(dir_ + "/one_type");
  ASSERT_TRUE(one_type.ok()) << one_type.status();
  s = FineTuneText(*one_type, one_type_base, {}, *pairs, {}, *pairs, Fast()).status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("type_vocab_size is 1"));
  // Stopping: CANCELLED at the next step.
  TextTrainOptions o = Fast();
  int steps = 0;
  o.on_step = [&](const TextProgress&) { ++steps; };
  o.control.should_stop = [&] { return steps >= 2; };
  TextModel model = Model();
  s = FineTuneText(model, base_, {}, train, {}, test, o).status();
  EXPECT_TRUE(absl::IsCancelled(s)) << s;
  EXPECT_EQ(steps, 2);
}

TEST_F(TextTrainerTest, ModelFolderProblemsAreNamed) {
  EXPECT_TRUE(absl::IsNotFound(TextModel::Open(dir_ + "/nothing").status()));
  std::filesystem::create_directories(dir_ + "/no_tokenizer");
  std::filesystem::copy_file(kFixture + "/config.json", dir_ + "/no_tokenizer/config.json");
  absl::Status s = TextModel::Open(dir_ + "/no_tokenizer").status();
  EXPECT_TRUE(absl::IsNotFound(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("vocab.txt"));
  // A tokenizer whose ids do not fit the model's vocabulary.
  testing::WriteTinyTextModel(kFixture, dir_ + "/big_vocab");
  {
    std::ofstream vocab(dir_ + "/big_vocab/vocab.txt");
    for (int i = 0; i < 150; ++i) vocab << "w" << i << "\n";
    vocab << "[UNK]\n[CLS]\n[SEP]\n[PAD]\n";
  }
  s = TextModel::Open(dir_ + "/big_vocab").status();
  EXPECT_TRUE(absl::IsInvalidArgument(s)) << s;
  EXPECT_THAT(s.message(), HasSubstr("outside the model's vocabulary"));
  // tokenizer_config.json's do_lower_case is honoured.
  testing::WriteTinyTextModel(kFixture, dir_ + "/cased");
  std::ofstream(dir_ + "/cased/tokenizer_config.json") << "{\"do_lower_case\": false}";
  auto cased = TextModel::Open(dir_ + "/cased");
  ASSERT_TRUE(cased.ok()) << cased.status();
  TokenizeOptions t;
  t.pad_to_max_length = false;
  EXPECT_EQ(cased->tokenizer().Encode("Good", std::nullopt, t).input_ids[1], 1);  // [UNK]
  testing::WriteTinyTextModel(kFixture, dir_ + "/uncased");
  auto uncased = TextModel::Open(dir_ + "/uncased");
  ASSERT_TRUE(uncased.ok());
  EXPECT_EQ(uncased->tokenizer().Encode("Good", std::nullopt, t).input_ids[1], 5);  // "good"
  EXPECT_THAT(uncased->Describe(), HasSubstr("bert: 2 layers, hidden 32"));
}

// Runs where LibTorch sees a GPU (bench/gpu_train_check.sh on a lent machine); skipped here.
TEST_F(TextTrainerTest, CudaWithBf16AutocastLearnsTheTask) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  TextModel model = Model();
  TextDataset train = Data("train", 240, 1);
  TextDataset dev = Data("dev", 64, 18, false, &train);
  TextDataset test = Data("test", 120, 2, false, &train);
  TextTrainOptions o = Fast();
  o.device = "auto";
  absl::StatusOr<TextFineTuneResult> r = FineTuneText(model, base_, {}, train, dev, test, o);
  ASSERT_TRUE(r.ok()) << r.status();
  std::cout << r->device << ": accuracy " << r->before.accuracy << " -> " << r->after.accuracy
            << ", loss " << r->loss_first << " -> " << r->loss_last << ", " << r->steps_per_second
            << " steps/s\n";
  EXPECT_EQ(r->device, "cuda:0 (bf16 autocast)");
  EXPECT_GE(r->after.accuracy, 0.85);
  EXPECT_LT(r->loss_last, 0.5 * r->loss_first);
  // The body still comes back in the base's F32, on the host.
  for (size_t i = 0; i < base_.size(); ++i) {
    EXPECT_EQ(r->body[i].spec.dtype(), base_[i].spec.dtype());
  }
}

TEST(PearsonTest, KnownValues) {
  EXPECT_NEAR(Pearson({1, 2, 3}, {2, 4, 6}), 1.0, 1e-12);
  EXPECT_NEAR(Pearson({1, 2, 3}, {3, 2, 1}), -1.0, 1e-12);
  EXPECT_EQ(Pearson({1, 1, 1}, {1, 2, 3}), 0);
  EXPECT_NEAR(Pearson({1, 2, 3, 4}, {1, 3, 2, 4}), 0.8, 1e-12);
}

}  // namespace
}  // namespace coldfuse::train
