// Fine-tuning and evaluation of a model spec's body plus a task head on a Dataset, with
// LibTorch behind a torch-free API: tensors cross it as HostTensors (F32, little-endian).
// LibTorch exceptions are caught here and returned as absl::Status.
// Thread-safety: calls may run concurrently only if `threads` is 0 for all of them, since
// TrainOptions::threads sets LibTorch's process-wide thread count.
#ifndef COLDFUSE_CLIENT_TRAIN_TRAINER_H_
#define COLDFUSE_CLIENT_TRAIN_TRAINER_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "client/train/checkpoint.h"
#include "client/train/dataset.h"
#include "client/train/metrics.h"
#include "coldfuse/v1/tensor.pb.h"
#include "common/tensor.h"

namespace coldfuse::train {

struct TrainOptions {
  // Passes over the training rows. Used when steps == 0. Default: 5.
  int epochs = 5;
  // > 0: train exactly this many optimizer steps (reshuffling at each pass). Default: 0.
  int64_t steps = 0;
  // AdamW learning rate. Default: 1e-3.
  double learning_rate = 1e-3;
  // AdamW decoupled weight decay. Default: 0.01.
  double weight_decay = 0.01;
  // Rows per optimizer step; the last batch of a pass may be smaller. Default: 32.
  int batch_size = 32;
  // Seeds shuffling and a fresh head's init. Default: 1.
  uint64_t seed = 1;
  // > 0: use only the first N training rows (few-shot probe). Default: 0 (all).
  int64_t max_train_examples = 0;
  // > 0: torch::set_num_threads(threads) (process-wide). Default: 0 (leave as is).
  int threads = 0;
  // Called after each optimizer step with the steps done, the total and that step's
  // loss (e.g. to show progress). Default: none.
  std::function<void(int64_t step, int64_t total, double loss)> on_step = nullptr;
  // Stopping, saving and resuming a run, and a time budget (checkpoint.h). Default: none.
  TrainControl control;
};

struct FineTuneResult {
  // Shared tensors after training: exactly MlpManifest(spec) (names, F32, shapes, order).
  std::vector<HostTensor> body;
  // The local head after training: "head.weight" [classes, Dn], "head.bias" [classes], F32.
  std::vector<HostTensor> head;
  double accuracy_before = 0;  // test-split accuracy before training (given or fresh head)
  double macro_f1_before = 0;
  double accuracy_after = 0;  // after training
  double macro_f1_after = 0;
  double loss_first = 0;  // mean training loss of the first epoch (or first 10% of steps)
  double loss_last = 0;   // mean training loss of the last epoch (or last 10% of steps)
  int64_t num_train_examples = 0;
  int64_t steps = 0;         // optimizer steps taken
  int64_t total_steps = 0;   // planned
  bool out_of_time = false;  // ended by control.time_budget_seconds before total_steps
  int64_t resumed_at = 0;    // > 0: the step a saved run (control.resume) continued from
};

// The head manifest for a body of output width `width` and `num_classes` classes:
// "head.weight" [num_classes, width], "head.bias" [num_classes], F32.
v1::Manifest HeadManifest(int64_t width, int64_t num_classes);

// A fresh head: weight and bias uniform in [-1/sqrt(width), 1/sqrt(width)] (PyTorch's
// Linear default), from a portable generator seeded by `seed`.
std::vector<HostTensor> InitHead(int64_t width, int64_t num_classes, uint64_t seed);

// Builds the model of `model_spec` (only "mlp:..." for now, via ParseModelSpec), loads the
// body from `base` (must match MlpManifest exactly, else INVALID_ARGUMENT naming the tensor),
// loads the head from `head` if non-empty (if its tensors do not fit the body width and
// train.num_classes: HeadMismatchError, see head_mismatch.h; the caller then decides,
// e.g. starts a fresh head),
// else a fresh InitHead(..., options.seed); evaluates on `test`, fine-tunes on `train` with
// AdamW and cross-entropy, evaluates again, and returns the result. Deterministic for a
// given seed and thread count. INVALID_ARGUMENT for bad options or data that does not fit
// the spec (e.g. a column count other than the spec's input width) or a control.resume
// that does not fit ("the saved training state ..."); CANCELLED when control.should_stop
// said so (after handing the run's state to control.on_checkpoint); INTERNAL for a
// LibTorch failure.
absl::StatusOr<FineTuneResult> FineTune(absl::string_view model_spec,
                                        const std::vector<HostTensor>& base,
                                        const std::vector<HostTensor>& head, const Dataset& train,
                                        const Dataset& test, const TrainOptions& options);

// Accuracy and macro-F1 of body `base` + `head` on `data`, without training. The head's
// class count must exceed every label in `data` (else HeadMismatchError). Errors as
// FineTune.
absl::StatusOr<EvalResult> Evaluate(absl::string_view model_spec,
                                    const std::vector<HostTensor>& base,
                                    const std::vector<HostTensor>& head, const Dataset& data);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_TRAINER_H_
