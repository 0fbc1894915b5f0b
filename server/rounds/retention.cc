// RoundManager's retention (declared in round_manager.h): which bases and contributions
// Prune removes, pins, and the disk figure status shows. Under the same locks as the
// lifecycle in round_manager.cc.
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

// ------------------------------------------------------------------ retention

bool RoundManager::IsGoneLocked(uint64_t v) const {
  return pruned_.count(v) > 0 || removing_.count(v) > 0;
}

bool RoundManager::IsBadLocked(uint64_t v) const {
  return std::binary_search(bad_base_versions_.begin(), bad_base_versions_.end(), v);
}

std::string RoundManager::StoredBasesLocked() const {
  std::vector<uint64_t> stored;
  for (uint64_t v = 0; v <= max_base_version_; ++v) {
    if (!IsGoneLocked(v)) stored.push_back(v);
  }
  return absl::StrCat("v", absl::StrJoin(stored, ", v"));
}

void RoundManager::ReleaseReader(uint64_t version) const {
  absl::MutexLock l(&mu_);
  auto it = readers_.find(version);
  if (it != readers_.end() && --it->second <= 0) readers_.erase(it);
}

void RoundManager::RefreshDiskUsage() {
  auto bytes = store_->DiskBytes();
  if (!bytes.ok()) {
    CF_LOG(WARNING) << "cannot measure the data folder: " << bytes.status();
    return;
  }
  disk_bytes_ = *bytes;
  disk_usage_ms_ = clock_->NowUnixMs();
}

absl::StatusOr<v1::PruneResponse> RoundManager::Prune(bool dry_run, const std::string& actor) {
  absl::MutexLock close_lock(&close_mu_);
  return PruneLocked(dry_run, actor);
}

absl::StatusOr<v1::PruneResponse> RoundManager::PruneLocked(bool dry_run,
                                                            const std::string& actor) {
  v1::PruneResponse resp;
  resp.set_dry_run(dry_run);
  std::vector<uint64_t> bases;
  std::vector<v1::RoundInfo> rounds;  // records to rewrite, without their contributions
  {
    absl::MutexLock l(&mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    if (closing_) {
      return absl::FailedPreconditionError("a round is being fused; prune again after it");
    }
    // Newest first: what retention's count keeps, then what must be kept anyway.
    std::set<uint64_t> by_count;
    uint32_t good = 0;
    for (uint64_t v = max_base_version_ + 1; v-- > 0;) {
      if (pruned_.count(v)) continue;
      if (options_.keep_bases == 0) {
        by_count.insert(v);  // keep every base, bad ones too
      } else if (!IsBadLocked(v) && good++ < options_.keep_bases) {
        by_count.insert(v);
      }
    }
    std::map<uint64_t, std::string> needed;
    needed.emplace(current_base_, "the current base");
    for (uint64_t v = current_base_; v-- > 0;) {
      if (!pruned_.count(v) && !IsBadLocked(v)) {
        needed.emplace(v, "the rollback target (the newest good base before the current one)");
        break;
      }
    }
    for (uint64_t v : pinned_) needed.emplace(v, "pinned");
    // Stale contributions to the open round (and uploads still coming) read the base
    // they were trained from at fusion.
    for (uint64_t v : LineageLocked(options_.max_staleness + 1)) {
      needed.emplace(v, absl::StrCat("a contribution may be trained from it (--max_staleness=",
                                     options_.max_staleness, ")"));
    }
    for (const auto& [v, n] : readers_) needed.emplace(v, "being downloaded");
    for (uint64_t v = 0; v <= max_base_version_; ++v) {
      if (pruned_.count(v) || by_count.count(v)) continue;
      auto it = needed.find(v);
      if (it == needed.end()) {
        bases.push_back(v);
      } else {
        resp.add_kept_reasons(absl::StrCat("v", v, ": ", it->second));
      }
    }
    if (options_.keep_contribution_rounds >= 0) {
      int32_t closed_seen = 0;
      for (auto it = rounds_.rbegin(); it != rounds_.rend(); ++it) {
        if (it->state() != v1::CLOSED) continue;
        if (closed_seen++ < options_.keep_contribution_rounds) continue;
        if (it->contributions_pruned() || it->contributions_size() == 0) continue;
        v1::RoundInfo r = *it;  // with its contributions: the store deletes their chunks
        r.set_contributions_pruned(true);
        rounds.push_back(std::move(r));
      }
      std::reverse(rounds.begin(), rounds.end());
    }
    // From here on no new download of these bases starts.
    if (!dry_run) removing_.insert(bases.begin(), bases.end());
  }
  for (uint64_t v : bases) resp.add_pruned_base_versions(v);
  for (const auto& r : rounds) resp.add_pruned_contribution_rounds(r.number());
  auto before = store_->DiskBytes();
  if (before.ok()) resp.set_disk_bytes_before(*before);
  if (dry_run || (bases.empty() && rounds.empty())) {
    resp.set_disk_bytes_after(resp.disk_bytes_before());
    return resp;
  }
  std::vector<std::string> what;
  if (!bases.empty()) what.push_back(absl::StrCat("bases v", absl::StrJoin(bases, ", v")));
  if (!rounds.empty()) {
    what.push_back(absl::StrCat("contributions of rounds ",
                                absl::StrJoin(resp.pruned_contribution_rounds(), ", ")));
  }
  const std::string detail =
      absl::StrCat(absl::StrJoin(what, "; "), " (keep_bases=", options_.keep_bases,
                   ", keep_contribution_rounds=", options_.keep_contribution_rounds, ")");
  absl::Status st = store_->Prune(bases, rounds, {MakeAudit(actor, "pruned", detail)});
  if (!st.ok()) {
    absl::MutexLock l(&mu_);
    removing_.clear();
    return st;
  }
  CF_LOG(INFO) << "retention removed " << detail;
  // The records are committed; giving the space back is best effort (retried next time).
  absl::Status reclaimed = store_->ReclaimSpace();
  if (!reclaimed.ok()) CF_LOG(WARNING) << "giving the pruned space back failed: " << reclaimed;
  RefreshDiskUsage();
  resp.set_disk_bytes_after(disk_bytes_);
  {
    // Status shows the prune once its space is back, with the disk figure after it.
    absl::MutexLock l(&mu_);
    pruned_.insert(removing_.begin(), removing_.end());
    removing_.clear();
    for (const auto& r : rounds) {
      if (r.number() >= 1 && r.number() <= rounds_.size()) {
        rounds_[r.number() - 1].set_contributions_pruned(true);
      }
    }
    ++change_seq_;
  }
  NotifyChanged();
  return resp;
}

absl::StatusOr<v1::PinBaseResponse> RoundManager::PinBase(uint64_t version, bool pin,
                                                          const std::string& reason,
                                                          const std::string& actor) {
  absl::MutexLock close_lock(&close_mu_);  // retention decides under it
  v1::PinBaseResponse resp;
  {
    absl::MutexLock l(&mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    if (version > max_base_version_) {
      return absl::NotFoundError(absl::StrCat(
          "base v", version, " does not exist; the newest base is v", max_base_version_));
    }
    if (pin && IsGoneLocked(version)) {
      return absl::FailedPreconditionError(
          absl::StrCat("base v", version,
                       " was already removed by retention; a pin cannot bring it back. Stored "
                       "bases: ",
                       StoredBasesLocked()));
    }
    if (!pin && !pinned_.count(version)) {
      return absl::FailedPreconditionError(
          absl::StrCat("base v", version, " is not pinned; pinned: ",
                       pinned_.empty() ? std::string("none")
                                       : absl::StrCat("v", absl::StrJoin(pinned_, ", v"))));
    }
    if (pin && pinned_.count(version)) {  // already pinned: nothing to write
      for (uint64_t v : pinned_) resp.add_pinned_base_versions(v);
      return resp;
    }
  }
  RETURN_IF_ERROR(store_->SetBasePinned(
      version, pin, actor, reason,
      {MakeAudit(actor, pin ? "base_pinned" : "base_unpinned",
                 absl::StrCat("v", version, reason.empty() ? "" : ": ", reason))}));
  {
    absl::MutexLock l(&mu_);
    if (pin) {
      pinned_.insert(version);
    } else {
      pinned_.erase(version);
    }
    ++change_seq_;
    for (uint64_t v : pinned_) resp.add_pinned_base_versions(v);
  }
  NotifyChanged();
  return resp;
}

}  // namespace coldfuse::rounds
