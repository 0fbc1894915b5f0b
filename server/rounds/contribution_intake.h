// Contribution intake: everything between a contributor's upload header and an accepted
// contribution. Admission (header checks, the round's own checks through
// RoundManager::CheckAdmission, quotas), the table of resumable upload sessions, the
// screening sink that checks and stores each chunk as it arrives (no NaN or infinity,
// the update's norm accumulated), and the commit (RoundManager::Accept).
//
// Thread-safe. Its lock (mu_) guards the session table and the quotas only and is never
// held across I/O, so a gRPC callback thread that stores a chunk never waits on another
// upload's fsync or on the round-state lock held across I/O.
#ifndef COLDFUSE_SERVER_ROUNDS_CONTRIBUTION_INTAKE_H_
#define COLDFUSE_SERVER_ROUNDS_CONTRIBUTION_INTAKE_H_

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/clock.h"
#include "server/rounds/rate_limiter.h"
#include "server/rounds/round_manager.h"
#include "server/rounds/tensor_upload.h"
#include "server/storage/store.h"

namespace coldfuse::rounds {

struct IntakeOptions {
  // Upload attempts one contributor may start per round (rejected ones count).
  // Default: 3.
  uint32_t max_uploads_per_round = 3;
  // Bytes one contributor may have accepted per UTC day; 0 = unlimited. Default: 0.
  uint64_t max_bytes_per_day = 0;
};

class ContributionIntake {
 public:
  // Takes the interrupted uploads of `state` (from store->Load()): those whose base can
  // still be accepted stay resumable, the rest are removed. `store` and `rounds` must outlive it.
  static absl::StatusOr<std::unique_ptr<ContributionIntake>> Create(
      storage::Store* store, RoundManager* rounds, const storage::LoadedState& state,
      const IntakeOptions& options, Clock* clock);
  ~ContributionIntake();
  ContributionIntake(const ContributionIntake&) = delete;
  ContributionIntake& operator=(const ContributionIntake&) = delete;

  // Starts (or, with header.upload_id() and a resume position, resumes) an upload.
  // header.contributor() is the caller's identity (the service sets it from the token).
  // Resuming re-hashes the stored prefix: call it off gRPC callback threads.
  absl::StatusOr<std::unique_ptr<TensorUpload>> Begin(const v1::ContributionHeader& header)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Where `contributor`'s interrupted upload `upload_id` can resume; NOT_FOUND if the
  // server holds nothing of it.
  absl::StatusOr<v1::UploadProgress> GetUpload(const std::string& upload_id,
                                               const std::string& contributor) const
      ABSL_LOCKS_EXCLUDED(mu_);

 private:
  // A resumable upload, by upload id. It stays while a contribution trained from its
  // base can still be accepted (also after the round it began in closed).
  struct Session {
    uint64_t round = 0;  // the round open when it began: its chunks are stored under it
    uint64_t id = 0;
    std::string contributor;
    bool streaming = false;        // a stream is attached now
    storage::StoredUpload upload;  // header, id and progress
  };
  struct Stream;  // one attached upload stream (contribution_intake.cc)

  ContributionIntake(storage::Store* store, RoundManager* rounds, const IntakeOptions& options,
                     Clock* clock, uint64_t next_id);
  // Admission under mu_: quota, resumption, session table. Fills *stream.
  absl::Status AdmitLocked(const v1::ContributionHeader& header, const OpenRound& open,
                           Stream* stream) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status CheckQuotaLocked(const v1::ContributionHeader& header, uint64_t round,
                                uint64_t bytes) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<UploadResult> Commit(const std::shared_ptr<Stream>& stream,
                                      const std::string& sha256, uint64_t bytes)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The abort step of an upload (TensorUpload::AbortFn): keeps or removes it.
  absl::Status Abort(const std::shared_ptr<Stream>& stream, TensorUpload::EndKind kind,
                     const absl::Status& why) ABSL_LOCKS_EXCLUDED(mu_);
  // Removes idle sessions whose base can no longer be accepted (on every change of
  // state).
  void DropStaleSessions() ABSL_LOCKS_EXCLUDED(mu_);
  // Removes a session record and its chunks (a failed or abandoned upload).
  void DropUpload(const std::string& upload_id, uint64_t round, uint64_t id);
  // Records a rejected upload (rate-limited per contributor and in total: a client
  // sending bad requests in a loop must not grow the store or flood the log).
  void AuditRejection(const std::string& actor, const absl::Status& why);

  storage::Store* const store_;
  RoundManager* const rounds_;
  const IntakeOptions options_;
  Clock* const clock_;
  int listener_ = 0;

  RateLimiter rejections_{RateLimiterOptions{}};
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, Session> sessions_ ABSL_GUARDED_BY(mu_);
  // Quotas (in memory: they restart with the server).
  std::map<std::pair<uint64_t, std::string>, uint32_t> uploads_started_
      ABSL_GUARDED_BY(mu_);  // (round, name)
  std::map<std::pair<int64_t, std::string>, uint64_t> bytes_by_day_
      ABSL_GUARDED_BY(mu_);  // (UTC day, name)
};

}  // namespace coldfuse::rounds

#endif  // COLDFUSE_SERVER_ROUNDS_CONTRIBUTION_INTAKE_H_
