// The server's persistent state in one RocksDB folder. The only code that includes
// RocksDB. Thread-safe.
//
// Column families meta, bases, contribs, rounds and audit; keys.h owns the key layout
// and records.proto the records (storage format 3, checked at Open; an older format is
// migrated there, a newer one refused).
//
// Tensor chunks, upload sessions and their progress are written without the
// write-ahead log, so each byte reaches the disk once (as a blob file when blob_files is
// on); every commit first flushes the family the chunks are in, then writes its record
// with a synced WAL write. A session lives in the same unlogged family as its chunks, so
// after a crash a surviving session never points at lost chunks.
// Data chunks become visible only through a record committed by a synced write (a
// contribution record, or the current-base pointer), and Load() deletes chunks that no
// record points to (left by a crash).
#ifndef COLDFUSE_SERVER_STORAGE_STORE_H_
#define COLDFUSE_SERVER_STORAGE_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "server/storage/fault_injection.h"

namespace coldfuse::storage {

struct StoreOptions {
  // fsync the write-ahead log on every commit (init, contribution, round close), and
  // flush the chunk data first. Default: true. Only tests that do not crash turn it off.
  bool sync_commits = true;
  // Keep tensor chunks in RocksDB's integrated blob files (values >= 64 KiB), so
  // compaction never rewrites them. Default: true (see docs/benchmarks.md).
  bool blob_files = true;
  // Most table and blob files RocksDB keeps open (its table cache); -1: all of them,
  // which grows with the store. The server sets it from its file descriptor budget.
  // Default: -1.
  int max_open_files = -1;
  // Tests only: faults injected below RocksDB (fault_injection.h). Default: none.
  std::shared_ptr<FaultInjection> faults;
};

// An interrupted resumable upload: its header and contribution id (stored once), and
// how far its stored data goes (stored after each chunk).
struct StoredUpload {
  v1::ContributionHeader header;  // header.upload_id() names it
  uint64_t contribution_id = 0;
  // The round open when it began: its chunks are stored under it. header.round() is the
  // round the client named, which may be older (an asynchronous contribution).
  uint64_t upload_round = 0;
  struct Progress {
    // Everything before (next_tensor, next_offset) is stored.
    uint32_t next_tensor = 0;
    uint64_t next_offset = 0;
    uint64_t bytes_stored = 0;
    // Running sum of squares of the update (for delta_norm).
    double sum_sq = 0;
  } progress;
};

// Everything the server needs at start-up.
struct LoadedState {
  std::optional<v1::ModelInfo> model;  // unset before init
  uint64_t current_base = 0;
  std::string current_base_sha256;
  std::vector<v1::RoundInfo> rounds;  // ascending, contributions filled in
  uint64_t next_contribution_id = 1;
  std::vector<uint64_t> bad_base_versions;
  // Highest base version stored (bad ones included); the next fusion writes this + 1.
  uint64_t max_base_version = 0;
  // Interrupted resumable uploads (their chunks are kept).
  std::vector<StoredUpload> uploads;
  // Sequence number of the last audit record (0 if none).
  uint64_t last_audit_seq = 0;
  // Retention (ascending): bases an operator pinned, and bases whose tensors were pruned.
  std::vector<uint64_t> pinned_base_versions;
  std::vector<uint64_t> pruned_base_versions;
};

// How a base was made, and which outer-optimizer state is stored with it (meta 'O').
struct BaseOptimizerState {
  v1::OuterOptimizer kind = v1::OUTER_OPTIMIZER_UNSPECIFIED;
  uint64_t step = 0;            // fusions on its line of descent (v0: 0)
  std::vector<uint32_t> slots;  // state slots stored; none: all zero
  std::string state_sha256;     // of the state bytes, (tensor, chunk, slot) order
  uint64_t from_base = 0;       // the round base it was made from
};

struct StoredToken {
  std::string secret_sha256;  // 32 bytes
  v1::TokenInfo info;
};

// Audit records to append in the same write; seq and time are filled in by the store.
using AuditBatch = std::vector<v1::AuditRecord>;

class Store {
 public:
  static absl::StatusOr<std::unique_ptr<Store>> Open(const std::string& dir,
                                                     const StoreOptions& options);
  ~Store();
  Store(const Store&) = delete;
  Store& operator=(const Store&) = delete;

  // Reads the committed state (after removing what a crash left half-written).
  absl::StatusOr<LoadedState> Load();

  // Base data. Chunks of a version above the current one are invisible until committed.
  absl::Status PutBaseChunk(uint64_t version, uint32_t tensor, uint64_t chunk,
                            absl::string_view data);
  // NOT_FOUND if absent. RocksDB checks the stored checksum of what it reads unless
  // `verify` is false: only for reads whose result is advisory and checked again later
  // (the screening norm at upload; the base itself is verified when pulled or fused).
  // Debian's RocksDB computes CRC32C without SSE 4.2, a quarter of an upload's CPU.
  absl::StatusOr<std::string> GetBaseChunk(uint64_t version, uint32_t tensor, uint64_t chunk,
                                           bool verify = true);
  absl::StatusOr<std::string> GetBaseSha256(uint64_t version);

  // The outer optimizer's state of a base, in its version's key range: written like base
  // chunks (unlogged, visible once CommitRoundClose names the base), removed with them.
  absl::Status PutOptimizerStateChunk(uint64_t version, uint32_t slot, uint32_t tensor,
                                      uint64_t chunk, absl::string_view data);
  absl::StatusOr<std::string> GetOptimizerStateChunk(uint64_t version, uint32_t slot,
                                                     uint32_t tensor, uint64_t chunk);
  // NOT_FOUND for a base made before storage format 3 (always by a plain mean).
  absl::StatusOr<BaseOptimizerState> GetOptimizerState(uint64_t version);

  // Contribution data, invisible until CommitContribution.
  absl::Status PutContributionChunk(uint64_t round, uint64_t id, uint32_t tensor, uint64_t chunk,
                                    absl::string_view data);
  absl::StatusOr<std::string> GetContributionChunk(uint64_t round, uint64_t id, uint32_t tensor,
                                                   uint64_t chunk);
  // Removes every chunk of an uncommitted (rejected) contribution.
  absl::Status DeleteContributionData(uint64_t round, uint64_t id);
  // Makes the contribution chunks written so far durable. Call it before
  // CommitContribution, outside any lock that must not wait on the disk.
  absl::Status FlushContributions();
  // Makes a contribution durable (synced) and visible; removes the upload session
  // `upload_id` (if any) in the same write. REQUIRES: its chunks were flushed
  // (FlushContributions) after they were written.
  absl::Status CommitContribution(uint64_t round, const v1::ContributionInfo& info,
                                  const AuditBatch& audit = {}, const std::string& upload_id = "");

  // Resumable upload sessions: PutUpload stores the session (header and contribution
  // id; not its progress) once, PutUploadProgress its progress after each chunk. Both
  // are unsynced and unlogged, like the chunks: progress is a hint that the chunks before
  // it are stored, lost or kept with them by a crash, and checked again on resume.
  absl::Status PutUpload(const StoredUpload& upload);
  absl::Status PutUploadProgress(const std::string& upload_id,
                                 const StoredUpload::Progress& progress);
  // Removes a session and its progress (synced).
  absl::Status DeleteUpload(const std::string& upload_id);

  // Stores the model, makes base v0 (already written with PutBaseChunk) current, with an
  // empty optimizer state (step 0), and records `first_round`, in one synced write.
  absl::Status CommitInit(const v1::ModelInfo& model, absl::string_view base_sha256,
                          const v1::RoundInfo& first_round, const AuditBatch& audit = {});
  // Records the closed round (and its contributions' final records), makes `new_base`
  // (already written, with its optimizer state chunks) current with the record `made`,
  // and records the next open round, in one synced write.
  absl::Status CommitRoundClose(const v1::RoundInfo& closed, uint64_t new_base,
                                absl::string_view new_base_sha256, const v1::RoundInfo& next_round,
                                const BaseOptimizerState& made, const AuditBatch& audit = {});
  // Closes `closed` unfused, marks `bad` versions bad, makes `good_base` current and
  // records `next_round`, in one synced write.
  absl::Status CommitRollback(const v1::RoundInfo& closed, const std::vector<uint64_t>& bad,
                              absl::string_view reason, uint64_t good_base,
                              const v1::RoundInfo& next_round, const AuditBatch& audit = {});

  // Tokens (synced). PutToken creates or replaces the record of info.name().
  absl::Status PutToken(const StoredToken& token, const AuditBatch& audit = {});
  absl::StatusOr<std::vector<StoredToken>> LoadTokens();
  // Stores an evaluation (replacing the one with the same key, keys.h) with one synced
  // write; LoadEvaluations returns them by base version, task, metric, k, evaluator.
  absl::Status PutEvaluation(const v1::Evaluation& evaluation, const AuditBatch& audit = {});
  absl::StatusOr<std::vector<v1::Evaluation>> LoadEvaluations();

  // Appends records on their own (e.g. rejected uploads, which change nothing else).
  absl::Status AppendAudit(const AuditBatch& audit);
  // Records with seq > after_seq, oldest first, at most `limit`.
  // Records after `after_seq`, oldest first: at most `limit`, and no more than
  // `max_bytes` of them serialised (but at least one). *more (if given) says whether
  // later records exist.
  absl::StatusOr<std::vector<v1::AuditRecord>> ReadAudit(uint64_t after_seq, size_t limit,
                                                         size_t max_bytes = SIZE_MAX,
                                                         bool* more = nullptr);
  // Removes chunks of an uncommitted base version (a failed fusion).
  absl::Status DeleteBaseData(uint64_t version);

  // ---- retention
  // Pins base `version` (retention keeps it) or unpins it, synced.
  absl::Status SetBasePinned(uint64_t version, bool pinned, absl::string_view actor,
                             absl::string_view reason, const AuditBatch& audit = {});
  // In one synced write: removes the tensors of `bases` (recording each as pruned; its
  // SHA-256 stays) and of the contributions listed in `rounds` (wherever their chunks
  // are: under their upload_round; their records stay; each round's record is rewritten
  // as given, with contributions_pruned set by the caller).
  absl::Status Prune(const std::vector<uint64_t>& bases, const std::vector<v1::RoundInfo>& rounds,
                     const AuditBatch& audit = {});
  // Gives the space of removed tensors back to the file system: compacts the data
  // families, so RocksDB deletes the table and blob files that only held removed chunks.
  // Slow on a large store (it rewrites the chunk index, not the chunks); runs alongside
  // reads and writes.
  absl::Status ReclaimSpace();
  // Bytes of the data folder on disk (allocated blocks of every file, as du counts; a
  // file linked twice counts once).
  absl::StatusOr<uint64_t> DiskBytes() const;

  // ---- backup
  // A consistent copy of the store, openable as a data folder, in a new folder inside
  // the data folder (a RocksDB checkpoint: memtables flushed, table and blob files
  // hard-linked, the rest copied); returns its path. The caller removes it when done;
  // Open removes any left by a crash.
  absl::StatusOr<std::string> CreateCheckpoint();
  static constexpr char kCheckpointPrefix[] = "backup-checkpoint-";

 private:
  struct Impl;
  explicit Store(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace coldfuse::storage

#endif  // COLDFUSE_SERVER_STORAGE_STORE_H_
