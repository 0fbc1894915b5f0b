// Stored evaluation scores: how well each base does on each task (seen or unseen), as
// recorded by evaluators and probing contributors (Contributor.RecordEvaluation). Kept in
// the store's meta family and in memory for listing; plain C++, no gRPC.
//
// Thread-safe. Record does a synced write without holding the lock; a concurrent record
// of the same key ends with one of the two values, in the store and in memory alike.
#ifndef COLDFUSE_SERVER_ROUNDS_EVALUATIONS_H_
#define COLDFUSE_SERVER_ROUNDS_EVALUATIONS_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/clock.h"
#include "server/rounds/round_manager.h"
#include "server/storage/store.h"

namespace coldfuse::rounds {

struct EvaluationOptions {
  // Scores one base version may hold (all tasks, metrics, k and evaluators together), so
  // a client cannot grow the server's memory without bound. Default: 256.
  size_t max_per_base = 256;
};

class Evaluations {
 public:
  // Loads the stored evaluations. `store` and `manager` must outlive it.
  static absl::StatusOr<std::unique_ptr<Evaluations>> Create(storage::Store* store,
                                                             const RoundManager* manager,
                                                             const EvaluationOptions& options,
                                                             Clock* clock);

  // Stores `e` for `evaluator` (replacing that evaluator's score with the same base,
  // task, metric and num_train_examples) and returns it with the server's fields set.
  // INVALID_ARGUMENT for a bad name or a value that is not finite; NOT_FOUND for a base
  // that was never made; RESOURCE_EXHAUSTED when the base holds max_per_base scores.
  absl::StatusOr<v1::Evaluation> Record(const v1::Evaluation& e, const std::string& evaluator)
      ABSL_LOCKS_EXCLUDED(mu_);

  // Every score (or `task`'s, if not empty) by base version, task, metric, k, evaluator.
  std::vector<v1::Evaluation> List(const std::string& task) const ABSL_LOCKS_EXCLUDED(mu_);
  // For each (task, metric, num_train_examples): the score of the newest base that has
  // one (the newest recorded, if several evaluators scored it).
  std::vector<v1::Evaluation> Latest() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  using Key = std::tuple<uint64_t, std::string, std::string, uint64_t, std::string>;
  Evaluations(storage::Store* store, const RoundManager* manager, const EvaluationOptions& options,
              Clock* clock)
      : store_(store), manager_(manager), options_(options), clock_(clock) {}
  static Key KeyOf(const v1::Evaluation& e);

  storage::Store* const store_;
  const RoundManager* const manager_;
  const EvaluationOptions options_;
  Clock* const clock_;
  absl::Mutex write_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // one record at a time: counts stay true
  mutable absl::Mutex mu_;
  std::map<Key, v1::Evaluation> by_key_ ABSL_GUARDED_BY(mu_);
  std::map<uint64_t, size_t> count_by_base_ ABSL_GUARDED_BY(mu_);
};

}  // namespace coldfuse::rounds

#endif  // COLDFUSE_SERVER_ROUNDS_EVALUATIONS_H_
