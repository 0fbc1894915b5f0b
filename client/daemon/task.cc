#include "client/daemon/task.h"

#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/status_macros.h"

namespace coldfuse::daemon {
namespace {

constexpr absl::string_view kCheckpointPrefix = "checkpoint:";

class MlpTask : public LocalTask {
 public:
  MlpTask(train::Dataset train, train::Dataset test, train::TrainOptions options)
      : train_(std::move(train)), test_(std::move(test)), options_(options) {}

  std::string Describe() const override {
    return absl::StrCat(train_.rows(), " training and ", test_.rows(), " test rows, ",
                        train_.num_classes, " classes");
  }

  absl::Status CheckModel(absl::string_view model_spec) const override {
    if (absl::StartsWith(model_spec, kCheckpointPrefix)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the server's model is ", model_spec,
          ", a transformer checkpoint: start "
          "coldfuse-client with --model=DIR (that checkpoint's folder, for config.json and "
          "the tokenizer) and labelled text files"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<TaskResult> Train(absl::string_view model_spec,
                                   const std::vector<HostTensor>& base,
                                   const std::vector<HostTensor>& head, int64_t max_train_examples,
                                   const std::atomic<bool>* stop) override {
    RETURN_IF_ERROR(CheckModel(model_spec));
    train::TrainOptions options = options_;
    if (max_train_examples > 0) options.max_train_examples = max_train_examples;
    if (stop != nullptr) options.should_stop = [stop] { return stop->load(); };
    std::optional<Progress> progress;
    options.on_step = [&progress](int64_t step, int64_t total, double loss) {
      if (!progress.has_value()) progress.emplace("training", total, Progress::Unit::kSteps);
      progress->Update(step, absl::StrFormat("loss %.4f", loss));
    };
    ASSIGN_OR_RETURN(train::FineTuneResult r,
                     train::FineTune(model_spec, base, head, train_, test_, options));
    if (progress.has_value()) progress->Finish(absl::StrFormat("loss %.4f", r.loss_last));
    TaskResult out;
    out.body = std::move(r.body);
    out.head = std::move(r.head);
    out.num_examples = static_cast<uint64_t>(r.num_train_examples);
    out.metrics = {{"accuracy_before", r.accuracy_before}, {"accuracy_after", r.accuracy_after},
                   {"macro_f1_before", r.macro_f1_before}, {"macro_f1_after", r.macro_f1_after},
                   {"train_loss_first", r.loss_first},     {"train_loss_last", r.loss_last}};
    out.summary =
        absl::StrFormat("%d steps, loss %.4f -> %.4f, test accuracy %.4f -> %.4f", r.steps,
                        r.loss_first, r.loss_last, r.accuracy_before, r.accuracy_after);
    return out;
  }

 private:
  train::Dataset train_, test_;
  train::TrainOptions options_;
};

class TextTask : public LocalTask {
 public:
  TextTask(train::TextModel model, train::TextDataset train, train::TextDataset dev,
           train::TextDataset test, train::TextTrainOptions options)
      : model_(std::move(model)),
        train_(std::move(train)),
        dev_(std::move(dev)),
        test_(std::move(test)),
        options_(std::move(options)) {}

  std::string Describe() const override {
    std::string what = train_.label_ids.empty()
                           ? std::string("regression")
                           : absl::StrCat(train_.label_names.size(), " classes");
    return absl::StrCat(train_.rows(), " training, ", dev_.rows(), " dev and ", test_.rows(),
                        " test texts", train_.text_pairs.empty() ? "" : " (pairs)", ", ", what,
                        "; model ", model_.Describe());
  }

  std::vector<std::string> HeadLabels() const override {
    if (train_.label_ids.empty()) return {"(regression)"};
    return train_.label_names;
  }

  absl::Status CheckModel(absl::string_view model_spec) const override {
    if (!absl::StartsWith(model_spec, kCheckpointPrefix)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the server's model is ", model_spec,
          ", not a transformer checkpoint: --model "
          "and text data are for servers initialised with `coldfusectl init --from=CHECKPOINT`"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<TaskResult> Train(absl::string_view model_spec,
                                   const std::vector<HostTensor>& base,
                                   const std::vector<HostTensor>& head, int64_t max_train_examples,
                                   const std::atomic<bool>* stop) override {
    RETURN_IF_ERROR(CheckModel(model_spec));
    train::TextTrainOptions options = options_;
    if (stop != nullptr) options.should_stop = [stop] { return stop->load(); };
    if (max_train_examples > 0) options.max_train_examples = max_train_examples;
    // Progress for a contributor watching: a bar with loss and ETA on a terminal, a line
    // every few seconds or 10% in a log; every dev evaluation is logged.
    std::optional<Progress> progress;
    options.on_step = [&progress](const train::TextProgress& p) {
      if (!progress.has_value()) progress.emplace("training", p.total, Progress::Unit::kSteps);
      if (p.dev_evaluated) {
        CF_LOG(INFO) << absl::StrFormat("step %d/%d: dev score %.4f", p.step, p.total, p.dev_score);
      } else {
        progress->Update(p.step,
                         absl::StrFormat("loss %.4f, learning rate %.3g", p.loss, p.learning_rate));
      }
    };
    ASSIGN_OR_RETURN(train::TextFineTuneResult r,
                     train::FineTuneText(model_, base, head, train_, dev_, test_, options));
    if (progress.has_value()) progress->Finish();
    TaskResult out;
    out.body = std::move(r.body);
    out.head = std::move(r.head);
    out.num_examples = static_cast<uint64_t>(r.num_train_examples);
    const bool regression = train_.label_ids.empty();
    if (regression) {
      out.metrics = {{"pearson_before", r.before.pearson}, {"pearson_after", r.after.pearson}};
    } else {
      out.metrics = {{"accuracy_before", r.before.accuracy},
                     {"accuracy_after", r.after.accuracy},
                     {"macro_f1_before", r.before.macro_f1},
                     {"macro_f1_after", r.after.macro_f1}};
    }
    out.metrics["train_loss_first"] = r.loss_first;
    out.metrics["train_loss_last"] = r.loss_last;
    out.metrics["steps"] = static_cast<double>(r.steps);
    out.metrics["steps_per_second"] = r.steps_per_second;
    if (r.has_dev) out.metrics["dev_best"] = r.best_dev;
    out.summary = absl::StrFormat(
        "%d steps on %s (%.2f steps/s)%s, loss %.4f -> %.4f, test %s %.4f -> %.4f%s", r.steps,
        r.device, r.steps_per_second, r.stopped_early ? ", stopped early" : "", r.loss_first,
        r.loss_last, regression ? "Pearson" : "accuracy",
        regression ? r.before.pearson : r.before.accuracy,
        regression ? r.after.pearson : r.after.accuracy,
        regression
            ? ""
            : absl::StrFormat(", macro-F1 %.4f -> %.4f", r.before.macro_f1, r.after.macro_f1));
    return out;
  }

 private:
  train::TextModel model_;
  train::TextDataset train_, dev_, test_;
  train::TextTrainOptions options_;
};

}  // namespace

std::unique_ptr<LocalTask> NewMlpTask(train::Dataset train, train::Dataset test,
                                      train::TrainOptions options) {
  return std::make_unique<MlpTask>(std::move(train), std::move(test), options);
}

absl::StatusOr<std::unique_ptr<LocalTask>> NewTextTask(train::TextModel model,
                                                       train::TextDataset train,
                                                       train::TextDataset dev,
                                                       train::TextDataset test,
                                                       train::TextTrainOptions options) {
  RETURN_IF_ERROR(train::ValidateTextOptions(model, options));
  return std::make_unique<TextTask>(std::move(model), std::move(train), std::move(dev),
                                    std::move(test), std::move(options));
}

}  // namespace coldfuse::daemon
