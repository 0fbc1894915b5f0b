// Fine-tuning of a BERT-family encoder (the shared part) plus a local classification or
// regression head on a labelled text dataset, as ColD Fusion's contributors do: AdamW with
// decoupled weight decay, linear warmup and decay, gradient accumulation and clipping,
// early stopping on a dev split, CUDA with bf16 autocast when present.
// The API is torch-free: tensors cross it as HostTensors. LibTorch exceptions are caught
// and returned as absl::Status.
// Thread-safety: a TextModel is immutable and may be shared; FineTuneText may run
// concurrently only when `threads` is 0 for all calls (it sets LibTorch's process-wide
// thread count otherwise).
#ifndef COLDFUSE_CLIENT_TRAIN_TEXT_TRAINER_H_
#define COLDFUSE_CLIENT_TRAIN_TEXT_TRAINER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/train/checkpoint.h"
#include "client/train/text_dataset.h"
#include "client/train/tokenizer/tokenizer.h"
#include "common/tensor.h"

namespace coldfuse::train {

// What a contributor keeps locally besides its data: the model's config.json and its
// tokenizer. The weights come from the server's base.
class TextModel {
 public:
  // `dir` is a Hugging Face model folder: config.json (model_type "bert" or "roberta";
  // MiniLM is "bert") and a tokenizer: tokenizer.json, else vocab.txt (WordPiece;
  // lower-casing from tokenizer_config.json's "do_lower_case", default true), else
  // vocab.json + merges.txt (byte-level BPE). Weight files in `dir` are not read.
  // NOT_FOUND when config.json or every tokenizer file is missing; INVALID_ARGUMENT
  // naming the file for a malformed one.
  static absl::StatusOr<TextModel> Open(const std::string& dir);

  // E.g. "bert: 6 layers, hidden 384, 12 heads, vocab 30522".
  std::string Describe() const;
  int64_t hidden_size() const;
  const Tokenizer& tokenizer() const;

  struct Impl;  // defined in text_trainer.cc
  const Impl& impl() const { return *impl_; }

 private:
  std::shared_ptr<const Impl> impl_;
};

// Reported after every optimizer step and every dev evaluation.
struct TextProgress {
  int64_t step = 0;            // optimizer steps done
  int64_t total = 0;           // optimizer steps planned
  double loss = 0;             // training loss of the last step
  double learning_rate = 0;    // of the last step
  bool dev_evaluated = false;  // this report is for a dev evaluation
  double dev_score = 0;        // its accuracy (Pearson for regression)
};

struct TextTrainOptions {
  // Passes over the training rows (used when steps == 0). Default: 3.
  int epochs = 3;
  // > 0: exactly this many optimizer steps, reshuffling at each pass. Default: 0.
  int64_t steps = 0;
  // Peak AdamW learning rate. Default: 5e-5 (the paper's).
  double learning_rate = 5e-5;
  // Decoupled weight decay, not applied to biases and LayerNorm weights. Default: 0.01.
  double weight_decay = 0.01;
  // Fraction of the optimizer steps spent warming the learning rate up linearly from 0;
  // after it the rate decays linearly to 0 at the last step. In [0, 1). Default: 0.
  double warmup_ratio = 0;
  // Rows per forward/backward pass. Default: 32.
  int batch_size = 32;
  // Passes whose gradients are summed before each optimizer step (effective batch =
  // batch_size * grad_accumulation). Default: 1.
  int grad_accumulation = 1;
  // > 0: clip the global gradient norm to this before each step. Default: 1.0.
  double max_grad_norm = 1.0;
  // Tokens per row, special tokens included; longer texts are truncated (longest first
  // for pairs). Batches are padded to their longest row. Default: 128.
  int max_seq_length = 128;
  // With a dev split: evaluate it every this many optimizer steps (0: after each epoch),
  // keep the best weights (accuracy, or Pearson for regression) and return those.
  int64_t eval_every = 0;
  // With a dev split and > 0: stop after this many evaluations without improvement.
  // Default: 0 (never stop early).
  int early_stopping_patience = 0;
  // Seeds LibTorch (head init, dropout) and the shuffling. Default: 1.
  uint64_t seed = 1;
  // > 0: use only the first N training rows (few-shot probe). Default: 0 (all).
  int64_t max_train_examples = 0;
  // > 0: torch::set_num_threads(threads) (process-wide). Default: 0 (leave as is).
  int threads = 0;
  // "auto" (CUDA when available, else CPU), "cpu" or "cuda". Default: "auto".
  std::string device = "auto";
  // On CUDA, run forward passes under bf16 autocast (weights and optimizer stay F32).
  // Ignored on CPU. Default: true.
  bool bf16 = true;
  // Called on the training thread after each optimizer step and dev evaluation (e.g. to
  // log progress). Default: none.
  std::function<void(const TextProgress&)> on_step;
  // Stopping (a daemon asked to stop does not finish an hours-long round first), saving
  // and resuming a run, and a time budget (checkpoint.h). Default: none.
  TrainControl control;
};

// The checks FineTuneText makes of `options` before any work, for a caller to run at
// start-up: INVALID_ARGUMENT naming the option (a value out of range, a sequence length
// beyond the model's position table, device "cuda" where LibTorch sees no CUDA device).
absl::Status ValidateTextOptions(const TextModel& model, const TextTrainOptions& options);

struct TextScores {
  double accuracy = 0;  // classification: fraction right
  double macro_f1 = 0;  // classification: scikit-learn's f1_score(average="macro")
  double pearson = 0;   // regression: Pearson correlation of predictions and targets
  double loss = 0;      // mean cross-entropy (classification) or squared error
};

struct TextFineTuneResult {
  // The base's tensors in its order, names and dtypes; the encoder's parameters hold the
  // fine-tuned values (rounded to the base's dtype), anything else (e.g. a pooler) is
  // passed through unchanged.
  std::vector<HostTensor> body;
  // The local head: "classifier.weight" [labels, hidden], "classifier.bias" [labels], F32
  // (labels = 1 for regression).
  std::vector<HostTensor> head;
  TextScores before;  // test split, before training (given head, or a fresh one)
  TextScores after;   // test split, after training (best dev weights when a dev split)
  bool has_dev = false;
  double best_dev = 0;    // best dev accuracy (or Pearson) seen
  int64_t best_step = 0;  // optimizer step of the returned weights
  bool stopped_early = false;
  bool out_of_time = false;  // ended by control.time_budget_seconds before `total` steps
  int64_t resumed_at = 0;    // > 0: the step a saved run (control.resume) continued from
  int64_t total_steps = 0;   // optimizer steps planned
  double loss_first = 0;     // mean training loss of the first 10% of steps (at least one)
  double loss_last = 0;      // ... of the last 10%
  int64_t num_train_examples = 0;
  int64_t steps = 0;         // optimizer steps taken
  double train_seconds = 0;  // wall time of the training loop (no evaluation)
  double steps_per_second = 0;
  std::string device;  // "cpu" or "cuda:0 (bf16 autocast)"
};

// Loads the encoder from `base` (Hugging Face names, with or without "bert."/"roberta.";
// F32/F16/BF16; INVALID_ARGUMENT naming the tensor when it does not fit the model's
// config), the head from `head` when it fits (else HeadMismatchError, head_mismatch.h:
// the caller decides, e.g. starts a fresh head), or a fresh seeded head when `head` is
// empty; scores `test`, fine-tunes on `train` (choosing the best weights on `dev` when it
// has rows), scores `test` again. `dev` and `test` must use `train`'s labels
// (LoadTextDatasetLike). INVALID_ARGUMENT for bad options (ValidateTextOptions), data,
// token ids outside the model's vocabulary (a tokenizer of another model), a config.json
// the base does not fit, or a head of other labels (HeadMismatchError; the message starts
// with "the head"); CANCELLED when options.control.should_stop said so (after handing the
// run's state to control.on_checkpoint); INVALID_ARGUMENT starting "the saved training
// state" for a control.resume that does not fit; INTERNAL for a LibTorch failure.
absl::StatusOr<TextFineTuneResult> FineTuneText(const TextModel& model,
                                                const std::vector<HostTensor>& base,
                                                const std::vector<HostTensor>& head,
                                                const TextDataset& train, const TextDataset& dev,
                                                const TextDataset& test,
                                                const TextTrainOptions& options);

// Pearson correlation of x and y (0 when either is constant or there are < 2 values).
double Pearson(const std::vector<double>& x, const std::vector<double>& y);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_TEXT_TRAINER_H_
