// RoundManager's read side for dashboards and metrics (declared in round_manager.h):
// status, rounds, tallies and the line of descent of a base's tasks.
#include <algorithm>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/rounds/round_manager.h"
#include "server/rounds/staleness.h"

namespace coldfuse::rounds {

// ------------------------------------------------------------------ status

v1::ServerStatus RoundManager::GetStatus() const {
  absl::MutexLock l(&mu_);
  v1::ServerStatus s;
  s.set_initialized(model_.has_value());
  if (model_.has_value()) {
    *s.mutable_model() = *model_;
    s.set_base_version(current_base_);
    *s.mutable_open_round() = rounds_.back();
    s.set_base_sha256(current_base_sha256_);
    for (uint64_t v : bad_base_versions_) s.add_bad_base_versions(v);
  }
  s.set_min_contributions(options_.min_contributions);
  s.set_round_timeout_ms(options_.round_timeout_ms);
  s.set_change_seq(change_seq_);
  s.set_server_time_unix_ms(clock_->NowUnixMs());
  v1::StorageStatus* storage = s.mutable_storage();
  storage->set_disk_bytes(disk_bytes_);
  storage->set_disk_usage_unix_ms(disk_usage_ms_);
  if (model_.has_value()) {
    for (uint64_t v = 0; v <= max_base_version_; ++v) {
      if (!pruned_.count(v)) storage->add_stored_base_versions(v);
    }
  }
  for (uint64_t v : pinned_) storage->add_pinned_base_versions(v);
  storage->set_keep_bases(options_.keep_bases);
  storage->set_keep_contribution_rounds(options_.keep_contribution_rounds);
  *s.mutable_staleness() = StalenessPolicyLocked();
  s.set_round_closes_by_unix_ms(ClosesByLocked());
  return s;
}

std::vector<v1::RoundInfo> RoundManager::ListRounds() const {
  absl::MutexLock l(&mu_);
  return rounds_;
}

absl::StatusOr<v1::RoundInfo> RoundManager::GetRoundInfo(uint64_t number) const {
  absl::MutexLock l(&mu_);
  if (number == 0 || number > rounds_.size()) {
    return absl::NotFoundError(
        absl::StrCat("round ", number, " does not exist; rounds are 1..", rounds_.size()));
  }
  return rounds_[number - 1];
}

RoundManager::Tally RoundManager::CountRounds(bool per_contributor) const {
  absl::MutexLock l(&mu_);
  Tally t;
  for (const auto& r : rounds_) {
    if (r.state() == v1::CLOSED) ++t.closed_by_reason[r.close_reason()];
    for (const auto& c : r.contributions()) {
      ++t.contributions;
      if (c.state() == v1::QUARANTINED) ++t.quarantined;
      if (per_contributor) ++t.by_contributor[c.contributor()];
    }
  }
  return t;
}

absl::StatusOr<std::set<std::string>> RoundManager::TasksFusedInto(uint64_t version) const {
  absl::MutexLock l(&mu_);
  RETURN_IF_ERROR(CheckInitializedLocked());
  // Each fused base has one round that made it; walk from `version` back to v0.
  std::map<uint64_t, const v1::RoundInfo*> made_by;
  uint64_t newest = 0;
  for (const auto& r : rounds_) {
    if (r.state() == v1::CLOSED && r.result_base_version() != 0) {
      made_by[r.result_base_version()] = &r;
      newest = std::max(newest, r.result_base_version());
    }
  }
  std::set<std::string> tasks;
  for (uint64_t v = version; v != 0;) {
    auto it = made_by.find(v);
    if (it == made_by.end()) {
      return absl::NotFoundError(
          absl::StrCat("base v", version, " does not exist; bases are v0..v", newest));
    }
    for (const auto& c : it->second->contributions()) {
      if (c.state() == v1::ACCEPTED && !c.task().empty()) tasks.insert(c.task());
    }
    if (it->second->base_version() >= v) return absl::DataLossError("base lineage loops");
    v = it->second->base_version();
  }
  return tasks;
}

}  // namespace coldfuse::rounds
