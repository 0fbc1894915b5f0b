#include "client/daemon/task.h"

#include <chrono>
#include <optional>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace coldfuse::daemon {
namespace {

constexpr absl::string_view kCheckpointPrefix = "checkpoint:";

template <typename T>
absl::string_view Bytes(const std::vector<T>& v) {
  return absl::string_view(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

// SHA-256 (hex) of the training rows and the options' text: what a saved run depends on.
std::string FingerprintOf(const train::Dataset& d, const std::string& options) {
  Sha256 h;
  h.Update(absl::StrCat("mlp ", d.num_features, " ", d.num_classes, " ", options, "\n"));
  h.Update(Bytes(d.features));
  h.Update(Bytes(d.labels));
  return ToHex(h.Finish());
}

std::string FingerprintOf(const train::TextDataset& d, const std::string& options) {
  Sha256 h;
  h.Update(absl::StrCat("text ", d.rows(), " ", absl::StrJoin(d.label_names, "\x1f"), " ", options,
                        "\n"));
  for (const auto* texts : {&d.texts, &d.text_pairs}) {
    for (const std::string& t : *texts) {
      h.Update(absl::StrCat(t.size(), ":"));
      h.Update(t);
    }
  }
  h.Update(Bytes(d.label_ids));
  h.Update(Bytes(d.targets));
  return ToHex(h.Finish());
}

std::string Resumed(int64_t at) {
  return at > 0 ? absl::StrCat(" (resumed at step ", at, ")") : std::string();
}

std::string OutOfTime(bool out_of_time, int64_t total) {
  return out_of_time ? absl::StrCat(" of ", total, " planned, ended to meet the round's deadline")
                     : std::string();
}

class MlpTask : public LocalTask {
 public:
  MlpTask(train::Dataset train, train::Dataset test, train::TrainOptions options)
      : train_(std::move(train)),
        test_(std::move(test)),
        options_(options),
        fingerprint_(FingerprintOf(
            train_, absl::StrCat("epochs=", options.epochs, " steps=", options.steps,
                                 " lr=", options.learning_rate, " wd=", options.weight_decay,
                                 " batch=", options.batch_size, " seed=", options.seed, " max=",
                                 options.max_train_examples, " threads=", options.threads))) {}

  std::string Fingerprint() const override { return fingerprint_; }

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
                                   const train::TrainControl& control) override {
    RETURN_IF_ERROR(CheckModel(model_spec));
    train::TrainOptions options = options_;
    if (max_train_examples > 0) options.max_train_examples = max_train_examples;
    options.control = control;
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
    out.out_of_time = r.out_of_time;
    out.summary =
        absl::StrFormat("%d steps%s%s, loss %.4f -> %.4f, test accuracy %.4f -> %.4f", r.steps,
                        Resumed(r.resumed_at), OutOfTime(r.out_of_time, r.total_steps),
                        r.loss_first, r.loss_last, r.accuracy_before, r.accuracy_after);
    return out;
  }

 private:
  train::Dataset train_, test_;
  train::TrainOptions options_;
  std::string fingerprint_;
};

class TextTask : public LocalTask {
 public:
  TextTask(train::TextModel model, train::TextDataset train, train::TextDataset dev,
           train::TextDataset test, train::TextTrainOptions options)
      : model_(std::move(model)),
        train_(std::move(train)),
        dev_(std::move(dev)),
        test_(std::move(test)),
        options_(std::move(options)) {
    const train::TextTrainOptions& o = options_;
    fingerprint_ = FingerprintOf(
        train_,
        absl::StrCat(model_.Describe(), " epochs=", o.epochs, " steps=", o.steps,
                     " lr=", o.learning_rate, " wd=", o.weight_decay, " warmup=", o.warmup_ratio,
                     " batch=", o.batch_size, " accumulation=", o.grad_accumulation,
                     " clip=", o.max_grad_norm, " seq=", o.max_seq_length, " eval=", o.eval_every,
                     " patience=", o.early_stopping_patience, " seed=", o.seed,
                     " max=", o.max_train_examples, " threads=", o.threads, " device=", o.device,
                     " bf16=", o.bf16, " dev=", dev_.rows()));
  }

  std::string Fingerprint() const override { return fingerprint_; }

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
                                   const train::TrainControl& control) override {
    RETURN_IF_ERROR(CheckModel(model_spec));
    train::TextTrainOptions options = options_;
    options.control = control;
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
    out.out_of_time = r.out_of_time;
    out.summary = absl::StrFormat(
        "%d steps on %s (%.2f steps/s)%s%s%s, loss %.4f -> %.4f, test %s %.4f -> %.4f%s", r.steps,
        r.device, r.steps_per_second, Resumed(r.resumed_at),
        OutOfTime(r.out_of_time, r.total_steps), r.stopped_early ? ", stopped early" : "",
        r.loss_first, r.loss_last, regression ? "Pearson" : "accuracy",
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
  std::string fingerprint_;
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
