#include "server/rounds/evaluations.h"

#include <cmath>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/names.h"
#include "common/status_macros.h"

namespace coldfuse::rounds {

absl::StatusOr<std::unique_ptr<Evaluations>> Evaluations::Create(storage::Store* store,
                                                                 const RoundManager* manager,
                                                                 const EvaluationOptions& options,
                                                                 Clock* clock) {
  std::unique_ptr<Evaluations> e(new Evaluations(store, manager, options, clock));
  ASSIGN_OR_RETURN(std::vector<v1::Evaluation> stored, store->LoadEvaluations());
  absl::MutexLock l(&e->mu_);
  for (auto& x : stored) {
    ++e->count_by_base_[x.base_version()];
    e->by_key_[KeyOf(x)] = std::move(x);
  }
  return e;
}

Evaluations::Key Evaluations::KeyOf(const v1::Evaluation& e) {
  return Key(e.base_version(), e.task(), e.metric(), e.num_train_examples(), e.evaluator());
}

absl::StatusOr<v1::Evaluation> Evaluations::Record(const v1::Evaluation& in,
                                                   const std::string& evaluator) {
  RETURN_IF_ERROR(CheckName("evaluation task", in.task(), /*allow_empty=*/false));
  RETURN_IF_ERROR(CheckName("evaluation metric", in.metric(), /*allow_empty=*/false));
  if (!std::isfinite(in.value())) {
    return absl::InvalidArgumentError(absl::StrCat("evaluation value of ", in.metric(), " on ",
                                                   in.task(), " is not a finite number"));
  }
  // Which tasks the base has seen; NOT_FOUND for a base that was never made.
  ASSIGN_OR_RETURN(std::set<std::string> seen, manager_->TasksFusedInto(in.base_version()));
  v1::Evaluation e;
  e.set_base_version(in.base_version());
  e.set_task(in.task());
  e.set_metric(in.metric());
  e.set_value(in.value());
  e.set_num_train_examples(in.num_train_examples());
  e.set_num_eval_examples(in.num_eval_examples());
  e.set_evaluator(evaluator);
  e.set_recorded_unix_ms(clock_->NowUnixMs());
  e.set_task_seen(seen.count(in.task()) > 0);
  const Key key = KeyOf(e);

  absl::MutexLock write(&write_mu_);
  bool replaces;
  {
    absl::MutexLock l(&mu_);
    replaces = by_key_.count(key) > 0;
    if (!replaces && count_by_base_[e.base_version()] >= options_.max_per_base) {
      return absl::ResourceExhaustedError(
          absl::StrCat("base v", e.base_version(), " already holds ", options_.max_per_base,
                       " evaluations, the most one base may hold; record again an existing "
                       "(task, metric, num_train_examples) to replace its score"));
    }
  }
  storage::AuditBatch audit = {
      MakeAudit(evaluator, "evaluation_recorded",
                absl::StrCat("v", e.base_version(), " task=", e.task(), " metric=", e.metric(),
                             " k=", e.num_train_examples(), " value=", e.value()))};
  RETURN_IF_ERROR(store_->PutEvaluation(e, audit));
  absl::MutexLock l(&mu_);
  if (!replaces) ++count_by_base_[e.base_version()];
  by_key_[key] = e;
  return e;
}

std::vector<v1::Evaluation> Evaluations::List(const std::string& task) const {
  absl::MutexLock l(&mu_);
  std::vector<v1::Evaluation> out;
  for (const auto& [key, e] : by_key_) {
    if (task.empty() || e.task() == task) out.push_back(e);
  }
  return out;
}

std::vector<v1::Evaluation> Evaluations::Latest() const {
  absl::MutexLock l(&mu_);
  std::map<std::tuple<std::string, std::string, uint64_t>, const v1::Evaluation*> latest;
  for (const auto& [key, e] : by_key_) {  // ascending base version
    const v1::Evaluation*& slot = latest[{e.task(), e.metric(), e.num_train_examples()}];
    if (slot == nullptr || e.base_version() > slot->base_version() ||
        (e.base_version() == slot->base_version() &&
         e.recorded_unix_ms() >= slot->recorded_unix_ms())) {
      slot = &e;
    }
  }
  std::vector<v1::Evaluation> out;
  out.reserve(latest.size());
  for (const auto& [k, e] : latest) out.push_back(*e);
  return out;
}

}  // namespace coldfuse::rounds
