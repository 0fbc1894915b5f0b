// Where a training run stands between two optimizer steps: its parameters, the
// optimizer's state, the data order, the random generators and the losses so far, so that
// a run that was stopped (a contributor's daemon told to stop, a laptop closed for the
// night) continues later to the same weights as a run that never stopped (on the same
// device and thread count). Torch-free; the trainers fill and read it.
#ifndef COLDFUSE_CLIENT_TRAIN_CHECKPOINT_H_
#define COLDFUSE_CLIENT_TRAIN_CHECKPOINT_H_

#include <cstdint>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "common/tensor.h"

namespace coldfuse::train {

struct TrainCheckpoint {
  int64_t step = 0;   // optimizer steps done
  int64_t total = 0;  // optimizer steps planned
  // Parameters and optimizer state (F32, step counts F64), named by the trainer.
  std::vector<HostTensor> tensors;
  // Scalars and small state as text: generator states, the epoch's shuffle seed, losses.
  std::map<std::string, std::string> values;
};

// What the trainers take to stop, resume and save a run. Default: none of it.
struct TrainControl {
  // Continue the run this checkpoint was taken from, with the same base, head, data and
  // options (the caller makes sure, e.g. by a key kept with it). INVALID_ARGUMENT,
  // starting with "the saved training state", when it does not fit this model and run.
  const TrainCheckpoint* resume = nullptr;
  // Polled before each optimizer step: true ends the run with CANCELLED, after handing
  // its state to on_checkpoint.
  std::function<bool()> should_stop = nullptr;
  // Receives the run's state when should_stop ends it, and every checkpoint_seconds of
  // training; an error it returns ends the run with that error.
  std::function<absl::Status(const TrainCheckpoint&)> on_checkpoint = nullptr;
  // > 0: also checkpoint after the first step that ends this long after the last one
  // (so a crash loses at most about that much training). 0: only when stopped.
  double checkpoint_seconds = 0;
  // > 0: end training normally (evaluating and returning what it has) before a step that
  // would end later than this many seconds after the run began, judged by the mean step
  // time so far, e.g. to contribute before a round's deadline.
  double time_budget_seconds = 0;
};

// Reads values and tensors back out of a checkpoint, with errors that say the saved state
// does not fit (INVALID_ARGUMENT "the saved training state ...: ...").
class CheckpointReader {
 public:
  explicit CheckpointReader(const TrainCheckpoint& c) : c_(c) {}
  absl::StatusOr<int64_t> Int(const std::string& key) const;
  absl::StatusOr<uint64_t> Uint(const std::string& key) const;
  absl::StatusOr<double> Double(const std::string& key) const;
  absl::StatusOr<std::string> Text(const std::string& key) const;
  // Comma-separated doubles (as WriteDoubles writes them).
  absl::StatusOr<std::vector<double>> Doubles(const std::string& key) const;
  // nullptr when absent.
  const HostTensor* Find(const std::string& name) const;
  absl::StatusOr<const HostTensor*> Tensor(const std::string& name) const;
  static absl::Status Unfit(const std::string& why);

 private:
  const TrainCheckpoint& c_;
};

// Round-trip text for doubles ("%.17g", comma-separated).
std::string WriteDouble(double v);
std::string WriteDoubles(const std::vector<double>& v);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_CHECKPOINT_H_
