// Faults below the store, for tests (the idea of LevelDB's fault-injecting Env and
// RocksDB's FaultInjectionTestFS): when StoreOptions::faults is set, every file RocksDB
// writes goes through a file system that can fail a chosen operation or hold syncs until
// released. Thread-safe.
#ifndef COLDFUSE_SERVER_STORAGE_FAULT_INJECTION_H_
#define COLDFUSE_SERVER_STORAGE_FAULT_INJECTION_H_

#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

namespace coldfuse::storage {

class FaultInjection {
 public:
  enum class Op { kAppend, kSync, kRename, kNumOps };

  // From now on the (`after` + 1)-th `op` and every later one fail with an I/O error,
  // until Heal().
  void FailFrom(Op op, uint64_t after = 0) ABSL_LOCKS_EXCLUDED(mu_);
  // No more failures.
  void Heal() ABSL_LOCKS_EXCLUDED(mu_);
  // Syncs (only those of the write-ahead log, where commits become durable, with
  // wal_only) wait, in the thread that syncs, until ReleaseSyncs().
  void HoldSyncs(bool wal_only = false) ABSL_LOCKS_EXCLUDED(mu_);
  void ReleaseSyncs() ABSL_LOCKS_EXCLUDED(mu_);
  // Lets one held sync through (it may not have arrived yet); later ones are held again.
  void ReleaseOneSync() ABSL_LOCKS_EXCLUDED(mu_);
  // Waits until a sync is being held (and not yet let through); false after `timeout`.
  bool WaitForHeldSync(absl::Duration timeout) ABSL_LOCKS_EXCLUDED(mu_);
  // How many `op`s were attempted so far.
  uint64_t Count(Op op) const ABSL_LOCKS_EXCLUDED(mu_);

  // For the file system: counts `op` on a file (`wal`: a write-ahead log), holds a sync
  // while asked to, and says whether it must fail.
  bool Before(Op op, bool wal) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  mutable absl::Mutex mu_;
  uint64_t count_[static_cast<int>(Op::kNumOps)] ABSL_GUARDED_BY(mu_) = {};
  bool failing_[static_cast<int>(Op::kNumOps)] ABSL_GUARDED_BY(mu_) = {};
  uint64_t fail_at_[static_cast<int>(Op::kNumOps)] ABSL_GUARDED_BY(mu_) = {};
  bool hold_syncs_ ABSL_GUARDED_BY(mu_) = false;
  bool hold_wal_only_ ABSL_GUARDED_BY(mu_) = false;
  int held_ ABSL_GUARDED_BY(mu_) = 0;    // syncs waiting
  int passes_ ABSL_GUARDED_BY(mu_) = 0;  // of those, let through by ReleaseOneSync
};

}  // namespace coldfuse::storage

#endif  // COLDFUSE_SERVER_STORAGE_FAULT_INJECTION_H_
