// The round lifecycle and its policy: init of base v0, the open round and its accepted
// contributions, closing it (quorum, timeout or operator) by screening and fusing its
// contributions into the next base, rollback, and the state dashboards read. Uploads
// reach it through ContributionIntake (contribution_intake.h), which calls
// CheckAdmission and Accept. Plain C++ over storage::Store; no gRPC. The lifecycle is
// in round_manager.cc, retention (Prune, PinBase) in retention.cc, the read side for
// dashboards (status, rounds, tallies) in round_status.cc; staleness.h decides which
// bases a contribution may come from.
//
// Thread-safe. The state lock (mu_) is never held across I/O: a synced commit runs
// between a check and an apply under the lock, and closes wait for commits in flight
// before they snapshot the round. Closes and rollbacks are serialised by close_mu_ and
// run on the caller's thread (an executor worker or the policy thread).
#ifndef COLDFUSE_SERVER_ROUNDS_ROUND_MANAGER_H_
#define COLDFUSE_SERVER_ROUNDS_ROUND_MANAGER_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/clock.h"
#include "server/rounds/base_reader.h"
#include "server/rounds/tensor_upload.h"
#include "server/storage/store.h"

namespace coldfuse::rounds {

struct RoundOptions {
  // The open round closes and fuses once this many contributions are in. Default: 3.
  uint32_t min_contributions = 3;
  // A round with at least one contribution closes this long after it opened, even
  // below quorum; 0 disables the timeout. Default: 10 minutes.
  int64_t round_timeout_ms = 10 * 60 * 1000;
  // How often the policy thread checks the timeout. Default: 200 ms.
  int64_t policy_poll_ms = 200;
  // Update-size screening: with at least 3 contributions, one whose delta norm exceeds
  // outlier_factor x the round's median is quarantined (kept, not fused); 0 disables.
  // Default: 3.
  double outlier_factor = 3.0;
  // Retention, applied after every round close and by Prune: keep the tensors of the
  // newest keep_bases good bases (0: all), and of the contributions of the newest
  // keep_contribution_rounds closed rounds (-1: all). The current base, the newest good
  // base before it (the rollback target), pinned bases and bases being downloaded are
  // always kept; so are every record, checksum and metric. Default: keep everything.
  uint32_t keep_bases = 0;
  int32_t keep_contribution_rounds = -1;
  // Asynchronous contributions: one may be fine-tuned from a base up to max_staleness
  // fusions older than the open round's base (0: only from the current base). Retention
  // keeps those bases. Default: 4 (docs/protocol.md "Asynchronous contributions").
  uint32_t max_staleness = 4;
  // A contribution s fusions stale is fused as its own delta times (1 + s)^-exponent
  // (FedBuff's 1/sqrt(1 + s) by default; 0: no down-weighting). Default: 0.5.
  double staleness_exponent = 0.5;
  // How long a finished upload waits for a fusion in progress before its commit is
  // refused with UNAVAILABLE (it then goes to the next round). Default: 120 s.
  int64_t commit_wait_ms = 120 * 1000;
};

// What an upload to the open round is checked against.
struct OpenRound {
  uint64_t number = 0;
  uint64_t base_version = 0;
  v1::Manifest base_manifest;
  // The base the contribution was fine-tuned from (base_version, or an older one) and
  // how many fusions older it is.
  uint64_t trained_from = 0;
  uint32_t staleness = 0;
};

// Where Accept put a contribution.
struct Accepted {
  uint64_t round = 0;
  uint64_t base_version = 0;  // the round's base
  uint32_t staleness = 0;
};

// Builds an audit record (seq and time are filled in by the store).
v1::AuditRecord MakeAudit(absl::string_view actor, absl::string_view action, std::string detail);

class RoundManager {
 public:
  // Takes the committed state `state` (from store->Load()); `store` must outlive the
  // manager. DATA_LOSS if the state is inconsistent.
  static absl::StatusOr<std::unique_ptr<RoundManager>> Create(storage::Store* store,
                                                              const storage::LoadedState& state,
                                                              const RoundOptions& options,
                                                              Clock* clock);
  ~RoundManager();

  // Starts the thread that closes rounds on quorum or timeout. Stopped by the destructor.
  void Start();

  // ---- operators (`actor` is the caller's name, recorded in the audit log)
  // ALREADY_EXISTS once initialised; INVALID_ARGUMENT for a bad spec, manifest or
  // fusion options, or a base holding a NaN or infinity.
  absl::StatusOr<std::unique_ptr<TensorUpload>> BeginInit(const v1::InitHeader& header,
                                                          const std::string& actor)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Fuses the open round now. FAILED_PRECONDITION if it has no contributions, or if
  // `round` is set and is not the open round.
  absl::StatusOr<v1::CloseRoundResponse> CloseRound(std::optional<uint64_t> round,
                                                    const std::string& reason,
                                                    const std::string& actor)
      ABSL_LOCKS_EXCLUDED(mu_, close_mu_);
  // Marks every base after `good_version` bad, closes the open round unfused (its
  // contributions stay stored) and opens a new round from `good_version`.
  absl::StatusOr<v1::RollbackBaseResponse> RollbackBase(uint64_t good_version,
                                                        const std::string& reason,
                                                        const std::string& actor)
      ABSL_LOCKS_EXCLUDED(mu_, close_mu_);
  // Applies retention now (see RoundOptions) and gives the space back on disk; with
  // `dry_run` only reports what it would remove.
  absl::StatusOr<v1::PruneResponse> Prune(bool dry_run, const std::string& actor)
      ABSL_LOCKS_EXCLUDED(mu_, close_mu_);
  // Pins (or unpins) a stored base. NOT_FOUND for a version that never existed;
  // FAILED_PRECONDITION to pin a pruned base or unpin one that is not pinned.
  absl::StatusOr<v1::PinBaseResponse> PinBase(uint64_t version, bool pin, const std::string& reason,
                                              const std::string& actor)
      ABSL_LOCKS_EXCLUDED(mu_, close_mu_);
  // Measures the data folder's size for status (the policy thread does every 30 s).
  void RefreshDiskUsage();
  // The audit log after `after_seq`: at most `limit` records (0 or > 1000: 1000) and at
  // most kMaxAuditReplyBytes of them; `more` says whether later ones exist.
  static constexpr size_t kMaxAuditReplyBytes = 1 << 20;
  struct AuditPage {
    std::vector<v1::AuditRecord> records;
    bool more = false;
  };
  absl::StatusOr<AuditPage> ReadAuditPage(uint64_t after_seq, size_t limit);
  absl::StatusOr<std::vector<v1::AuditRecord>> ReadAudit(uint64_t after_seq, size_t limit);
  // Closes the open round if quorum or timeout says so; returns whether it closed.
  absl::StatusOr<bool> MaybeClose() ABSL_LOCKS_EXCLUDED(mu_, close_mu_);

  // ---- contributors
  absl::StatusOr<v1::GetRoundResponse> GetRound() const ABSL_LOCKS_EXCLUDED(mu_);
  // The current base when `version` is unset.
  absl::StatusOr<std::unique_ptr<BaseReader>> OpenBase(std::optional<uint64_t> version) const
      ABSL_LOCKS_EXCLUDED(mu_);

  // ---- the intake (contribution_intake.h)
  // Whether an upload with `header` may go to the open round: initialised, the header's
  // base is the current one or at most max_staleness fusions older (and not rolled back
  // or pruned), its round is not later than the open one, the open round is not being
  // fused (UNAVAILABLE: send again in a moment), and its contributor has no contribution
  // in it yet. Returns the open round on success.
  absl::StatusOr<OpenRound> CheckAdmission(const v1::ContributionHeader& header) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // Whether a contribution trained from base `version` could still be accepted (an
  // interrupted upload from it is worth keeping).
  bool IsAcceptableBase(uint64_t version) const ABSL_LOCKS_EXCLUDED(mu_);
  // The open round's number (it may be being fused); unset before init.
  std::optional<uint64_t> OpenRoundNumber() const ABSL_LOCKS_EXCLUDED(mu_);
  // Records contribution `info` (whose chunks are flushed, under info.upload_round()) in
  // the open round with one synced write that also removes upload session `upload_id`
  // (if any), without holding the state lock across the write. Sets its staleness
  // against the open round's base (a round that closed during the upload makes it one
  // fusion staler) and its weight. A fusion in progress is waited for (at most
  // commit_wait_ms, then UNAVAILABLE). FAILED_PRECONDITION if info.trained_from_base()
  // is now beyond max_staleness (or rolled back); ALREADY_EXISTS if its contributor has
  // (or is committing) one in the open round.
  absl::StatusOr<Accepted> Accept(v1::ContributionInfo info, const std::string& upload_id)
      ABSL_LOCKS_EXCLUDED(mu_);

  // ---- dashboards
  v1::ServerStatus GetStatus() const ABSL_LOCKS_EXCLUDED(mu_);
  std::vector<v1::RoundInfo> ListRounds() const ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<v1::RoundInfo> GetRoundInfo(uint64_t number) const ABSL_LOCKS_EXCLUDED(mu_);
  // Counts over every stored round (for metrics), without copying the rounds.
  struct Tally {
    uint64_t contributions = 0;  // stored, screening's quarantines included
    uint64_t quarantined = 0;
    std::map<std::string, uint64_t> closed_by_reason;
    std::map<std::string, uint64_t> by_contributor;  // only with `per_contributor`
  };
  Tally CountRounds(bool per_contributor) const ABSL_LOCKS_EXCLUDED(mu_);
  // The tasks of the accepted contributions fused into base `version` or a base it
  // descends from (rollbacks cut a line: tasks of a bad base are not in its successors).
  // NOT_FOUND if that base was never made; FAILED_PRECONDITION before init.
  absl::StatusOr<std::set<std::string>> TasksFusedInto(uint64_t version) const
      ABSL_LOCKS_EXCLUDED(mu_);
  // `fn` runs after every change of state, on the thread that made it, without the state
  // lock (it may read: GetStatus, OpenRoundNumber, ...) but possibly inside a close or
  // rollback; notifications are delivered one at a time, so `fn` never runs concurrently
  // with itself. `fn` must not change state (Accept, CloseRound, RollbackBase) nor remove
  // itself: both would wait for themselves.
  int AddListener(std::function<void()> fn) ABSL_LOCKS_EXCLUDED(listeners_mu_);
  // Waits for a call of this listener that is in progress (only this one: a slow
  // listener does not hold up the removal of another).
  void RemoveListener(int id) ABSL_LOCKS_EXCLUDED(listeners_mu_);

 private:
  RoundManager(storage::Store* store, const RoundOptions& options, Clock* clock);
  absl::Status CheckInitializedLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::StatusOr<UploadResult> CommitInit(const v1::ModelInfo& model, const std::string& sha256,
                                          uint64_t bytes, const std::string& actor)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Marks outliers of `round` quarantined by delta norm, adding audit records.
  void Screen(v1::RoundInfo* round, storage::AuditBatch* audit) const;
  // Sets closing_ and waits until no commit is in flight. REQUIRES: not closing_.
  void BeginClosingLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<v1::CloseRoundResponse> CloseLocked(std::optional<uint64_t> round,
                                                     const std::string& reason,
                                                     const std::string& actor)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(close_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  void NotifyChanged() ABSL_LOCKS_EXCLUDED(mu_, notify_mu_, listeners_mu_);
  absl::StatusOr<v1::PruneResponse> PruneLocked(bool dry_run, const std::string& actor)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(close_mu_) ABSL_LOCKS_EXCLUDED(mu_);
  bool RetentionConfigured() const {
    return options_.keep_bases > 0 || options_.keep_contribution_rounds >= 0;
  }
  // The bases a contribution may be trained from now: the current base and its
  // ancestors (through the rounds whose fusion made each), newest first, at most
  // `limit` of them, stopping at a pruned one.
  std::vector<uint64_t> LineageLocked(size_t limit) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Fusions between base `from` and the current base; FAILED_PRECONDITION saying why
  // (and what to do) if a contribution trained from it cannot be accepted now.
  absl::StatusOr<uint32_t> StalenessLocked(uint64_t from) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // When the open round closes at the latest (0: not known). See ServerStatus.
  int64_t ClosesByLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  v1::StalenessPolicy StalenessPolicyLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // "v1, v2, ..." of the stored bases, for messages.
  std::string StoredBasesLocked() const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool IsBadLocked(uint64_t v) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Pruned, or being pruned: not to be read, pinned or rolled back to.
  bool IsGoneLocked(uint64_t v) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Ends a download of base `version` (BaseReader's hold).
  void ReleaseReader(uint64_t version) const ABSL_LOCKS_EXCLUDED(mu_);
  void PolicyLoop() ABSL_LOCKS_EXCLUDED(policy_mu_);

  storage::Store* const store_;
  const RoundOptions options_;
  Clock* const clock_;

  absl::Mutex close_mu_ ABSL_ACQUIRED_BEFORE(mu_);  // serialises closes and rollbacks

  mutable absl::Mutex mu_;
  std::optional<v1::ModelInfo> model_ ABSL_GUARDED_BY(mu_);
  uint64_t current_base_ ABSL_GUARDED_BY(mu_) = 0;
  std::string current_base_sha256_ ABSL_GUARDED_BY(mu_);
  // Ascending; the last is open once initialised.
  std::vector<v1::RoundInfo> rounds_ ABSL_GUARDED_BY(mu_);
  // A fusion (or rollback) of the open round is running: no new uploads or commits.
  bool closing_ ABSL_GUARDED_BY(mu_) = false;
  bool init_in_progress_ ABSL_GUARDED_BY(mu_) = false;
  // Contributors whose contribution to the open round is being committed.
  std::set<std::string> committing_ ABSL_GUARDED_BY(mu_);
  // Never goes back across restarts: it starts at the audit log's last sequence number
  // + 1, and every change of state appends at least one audit record, so it never runs
  // ahead of that number + 1.
  uint64_t change_seq_ ABSL_GUARDED_BY(mu_) = 1;
  // Highest stored base version, bad ones included.
  uint64_t max_base_version_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<uint64_t> bad_base_versions_ ABSL_GUARDED_BY(mu_);
  // Retention: pinned bases; bases whose tensors are removed (or being removed); open
  // downloads per base version (their bases are not pruned).
  std::set<uint64_t> pinned_ ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> pruned_ ABSL_GUARDED_BY(mu_);
  std::set<uint64_t> removing_ ABSL_GUARDED_BY(mu_);  // by the prune in progress
  mutable std::map<uint64_t, int> readers_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> disk_bytes_{0};
  std::atomic<int64_t> disk_usage_ms_{0};
  int64_t next_disk_refresh_ms_ = 0;              // policy thread only
  std::atomic<int64_t> retry_close_after_ms_{0};  // policy closes wait after a failure

  struct Listener {
    std::function<void()> fn;
    // Both guarded by listeners_mu_.
    bool running = false;
    bool removed = false;
  };
  // One notification at a time. Taken inside close_mu_ (closes notify), and listeners
  // take mu_ inside it (they read the state).
  absl::Mutex notify_mu_ ABSL_ACQUIRED_AFTER(close_mu_) ABSL_ACQUIRED_BEFORE(mu_);
  absl::Mutex listeners_mu_ ABSL_ACQUIRED_AFTER(notify_mu_);
  std::map<int, std::shared_ptr<Listener>> listeners_ ABSL_GUARDED_BY(listeners_mu_);
  int next_listener_ ABSL_GUARDED_BY(listeners_mu_) = 1;

  absl::Mutex policy_mu_;
  bool stop_ ABSL_GUARDED_BY(policy_mu_) = false;
  bool wake_ ABSL_GUARDED_BY(policy_mu_) = false;
  std::thread policy_thread_;
};

}  // namespace coldfuse::rounds

#endif  // COLDFUSE_SERVER_ROUNDS_ROUND_MANAGER_H_
