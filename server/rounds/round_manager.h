// The round lifecycle: init of base v0, accepting contributions to the open round,
// closing it (quorum, timeout or operator) by fusing its contributions into the next
// base, and the state dashboards read. Plain C++ over storage::Store; no gRPC.
// Thread-safe. Closing runs on the caller's thread (an RPC worker or the policy thread
// started by Start()), never while holding the state lock during fusion.
#ifndef COLDFUSE_SERVER_ROUNDS_ROUND_MANAGER_H_
#define COLDFUSE_SERVER_ROUNDS_ROUND_MANAGER_H_

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/clock.h"
#include "server/rounds/base_reader.h"
#include "server/rounds/tensor_upload.h"
#include "server/fusion/fusion.h"
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
  // Upload attempts one contributor may start per round (rejected ones count).
  // Default: 3.
  uint32_t max_uploads_per_round = 3;
  // Bytes one contributor may have accepted per UTC day; 0 = unlimited. Default: 0.
  uint64_t max_bytes_per_day = 0;
  // Update-size screening: with at least 3 contributions, one whose delta norm exceeds
  // outlier_factor x the round's median is quarantined (kept, not fused); 0 disables.
  // Default: 3.
  double outlier_factor = 3.0;
};

class RoundManager {
 public:
  // Loads the committed state from `store` (which must outlive the manager).
  static absl::StatusOr<std::unique_ptr<RoundManager>> Create(storage::Store* store,
                                                             const RoundOptions& options,
                                                             Clock* clock);
  ~RoundManager();

  // Starts the thread that closes rounds on quorum or timeout. Stopped by the destructor.
  void Start();

  // ---- operators (`actor` is the caller's name, recorded in the audit log)
  // ALREADY_EXISTS once initialised; INVALID_ARGUMENT for a bad spec or manifest.
  absl::StatusOr<std::unique_ptr<TensorUpload>> BeginInit(const v1::InitHeader& header,
                                                         const std::string& actor);
  // Fuses the open round now. FAILED_PRECONDITION if it has no contributions, or if
  // `round` is set and is not the open round.
  absl::StatusOr<v1::CloseRoundResponse> CloseRound(std::optional<uint64_t> round,
                                                    const std::string& reason,
                                                    const std::string& actor);
  // Marks every base after `good_version` bad, closes the open round unfused (its
  // contributions stay stored) and opens a new round from `good_version`.
  absl::StatusOr<v1::RollbackBaseResponse> RollbackBase(uint64_t good_version,
                                                        const std::string& reason,
                                                        const std::string& actor);
  absl::StatusOr<std::vector<v1::AuditRecord>> ReadAudit(uint64_t after_seq, size_t limit);
  // Closes the open round if quorum or timeout says so; returns whether it closed.
  absl::StatusOr<bool> MaybeClose();

  // ---- contributors
  absl::StatusOr<v1::GetRoundResponse> GetRound() const;
  // header.contributor() is the caller's identity (the service sets it from the token).
  absl::StatusOr<std::unique_ptr<TensorUpload>> BeginContribution(
      const v1::ContributionHeader& header);
  // The current base when `version` is unset.
  absl::StatusOr<std::unique_ptr<BaseReader>> OpenBase(std::optional<uint64_t> version) const;
  // Where `contributor`'s interrupted upload `upload_id` can resume; NOT_FOUND if the
  // server holds nothing of it.
  absl::StatusOr<v1::UploadProgress> GetUpload(const std::string& upload_id,
                                               const std::string& contributor) const;

  // ---- dashboards
  v1::ServerStatus GetStatus() const;
  std::vector<v1::RoundInfo> ListRounds() const;
  absl::StatusOr<v1::RoundInfo> GetRoundInfo(uint64_t number) const;
  // `fn` runs after every change of state (on the thread that made it, no locks held).
  int AddListener(std::function<void()> fn);
  void RemoveListener(int id);

 private:
  RoundManager(storage::Store* store, const RoundOptions& options, Clock* clock);
  absl::Status CheckInitializedLocked() const;
  absl::StatusOr<UploadResult> CommitContribution(const v1::ContributionHeader& header,
                                                  uint64_t id, const std::string& sha256,
                                                  uint64_t bytes, double delta_norm);
  absl::StatusOr<UploadResult> CommitInit(const v1::ModelInfo& model, const std::string& sha256,
                                          uint64_t bytes, const std::string& actor);
  absl::Status CheckQuotaLocked(const v1::ContributionHeader& header, uint64_t bytes);
  // Marks outliers of `round` quarantined by delta norm, adding audit records.
  void Screen(v1::RoundInfo* round, storage::AuditBatch* audit) const;
  void AuditRejection(const std::string& actor, const absl::Status& why);
  // A reader of contribution `info`'s chunks in the base's dtype and chunk grid (adding
  // the base for a DELTA), for the fusion methods.
  fusion::ChunkReader ContributionAsBase(const v1::ContributionInfo& info, uint64_t round,
                                         uint64_t base_version,
                                         const v1::Manifest& base_manifest) const;
  // Removes a session and its chunks (a failed or abandoned upload).
  void DropUpload(const std::string& upload_id, uint64_t round, uint64_t id);
  absl::StatusOr<v1::CloseRoundResponse> CloseLocked(std::optional<uint64_t> round,
                                                     const std::string& reason,
                                                     const std::string& actor);
  void NotifyChanged();
  void PolicyLoop();

  storage::Store* const store_;
  const RoundOptions options_;
  Clock* const clock_;

  std::mutex close_mu_;  // serialises closes; held across a fusion

  mutable std::mutex mu_;  // guards everything below
  std::optional<v1::ModelInfo> model_;
  uint64_t current_base_ = 0;
  std::string current_base_sha256_;
  std::vector<v1::RoundInfo> rounds_;  // ascending; the last is open once initialised
  bool closing_ = false;               // a fusion of the open round is running
  bool init_in_progress_ = false;
  uint64_t next_contribution_id_ = 1;
  uint64_t change_seq_ = 1;
  uint64_t max_base_version_ = 0;           // highest stored version, bad ones included
  std::atomic<int64_t> retry_close_after_ms_{0};  // policy closes wait after a failure
  std::vector<uint64_t> bad_base_versions_;
  // Resumable uploads of the open round, by upload id.
  struct UploadSlot {
    uint64_t round = 0;
    uint64_t id = 0;
    std::string contributor;
    bool streaming = false;  // a stream is attached now
    v1::UploadSessionRecord record;
  };
  std::map<std::string, UploadSlot> uploads_;
  // Quotas (in memory: they restart with the server).
  std::map<std::pair<uint64_t, std::string>, uint32_t> uploads_started_;  // (round, name)
  std::map<std::pair<int64_t, std::string>, uint64_t> bytes_by_day_;      // (day, name)

  std::mutex listeners_mu_;
  std::map<int, std::function<void()>> listeners_;
  int next_listener_ = 1;

  std::mutex policy_mu_;
  std::condition_variable policy_cv_;
  bool stop_ = false;
  bool wake_ = false;
  std::thread policy_thread_;
};

}  // namespace coldfuse::rounds

#endif  // COLDFUSE_SERVER_ROUNDS_ROUND_MANAGER_H_
