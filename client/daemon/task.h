// What a contributor trains: its local data and model-specific fine-tuning, behind one
// interface so the daemon loop (pull, train, push, resume) is the same for every model.
//   MLP tasks:  numeric CSV data, bases whose model spec is "mlp:...".
//   Text tasks: labelled texts and a local Hugging Face model folder (config.json and the
//               tokenizer), bases seeded from a checkpoint ("checkpoint:...").
// A task is used by one thread at a time.
#ifndef COLDFUSE_CLIENT_DAEMON_TASK_H_
#define COLDFUSE_CLIENT_DAEMON_TASK_H_

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/train/checkpoint.h"
#include "client/train/dataset.h"
#include "client/train/text_dataset.h"
#include "client/train/text_trainer.h"
#include "client/train/trainer.h"
#include "common/tensor.h"

namespace coldfuse::daemon {

struct TaskResult {
  std::vector<HostTensor> body;  // shared: the base's manifest exactly
  std::vector<HostTensor> head;  // local only
  uint64_t num_examples = 0;     // training rows used (the fusion weight)
  // Reported with the contribution and shown by `coldfusectl round N`: accuracy_before,
  // accuracy_after, macro_f1_before, macro_f1_after (classification) or pearson_before,
  // pearson_after (regression), train_loss_first, train_loss_last, and for text tasks
  // steps, steps_per_second and (with a dev split) dev_best.
  std::map<std::string, double> metrics;
  std::string summary;       // one log line: steps, loss, test score before -> after
  bool out_of_time = false;  // training ended early by control.time_budget_seconds
};

class LocalTask {
 public:
  virtual ~LocalTask() = default;
  // For the startup log, e.g. "1437 training and 360 test rows, 10 classes".
  virtual std::string Describe() const = 0;
  // What the head's outputs mean, in order, kept with the head so a later run with another
  // label set does not silently reuse it; empty when labels are plain class numbers.
  virtual std::vector<std::string> HeadLabels() const { return {}; }
  // OK when this task can train a base of `model_spec`; else INVALID_ARGUMENT saying how
  // to start the client for that model.
  virtual absl::Status CheckModel(absl::string_view model_spec) const = 0;
  // Fine-tunes `base` (with the kept `head`, or a fresh one when empty) and scores the
  // test split before and after. `max_train_examples` > 0 limits the training rows
  // (few-shot probes). `control` stops, saves and resumes the run, and bounds its time
  // (train/checkpoint.h): CANCELLED once its should_stop says so. Errors as the
  // trainers': INVALID_ARGUMENT for bad data or options, for a saved state that does not
  // fit ("the saved training state ..."), and for a head that does not fit, marked so
  // that train::IsHeadMismatch (head_mismatch.h) tells it apart.
  virtual absl::StatusOr<TaskResult> Train(absl::string_view model_spec,
                                           const std::vector<HostTensor>& base,
                                           const std::vector<HostTensor>& head,
                                           int64_t max_train_examples,
                                           const train::TrainControl& control = {}) = 0;
  // What the saved state of a run depends on besides the base and the head: the data and
  // the training options. A saved run is resumed only under the same fingerprint.
  virtual std::string Fingerprint() const = 0;
};

std::unique_ptr<LocalTask> NewMlpTask(train::Dataset train, train::Dataset test,
                                      train::TrainOptions options);

// `dev` may have no rows (no early stopping or best-weights selection). INVALID_ARGUMENT
// for options the model cannot train with (ValidateTextOptions), so a daemon finds out at
// start-up, not each round.
absl::StatusOr<std::unique_ptr<LocalTask>> NewTextTask(train::TextModel model,
                                                       train::TextDataset train,
                                                       train::TextDataset dev,
                                                       train::TextDataset test,
                                                       train::TextTrainOptions options);

}  // namespace coldfuse::daemon

#endif  // COLDFUSE_CLIENT_DAEMON_TASK_H_
