// A contributor's state folder, so the daemon resumes after a crash without resending
// or retraining what it need not:
//   base.safetensors, base.version    the last base pulled ("version sha256hex")
//   head.safetensors                  the local task head (never uploaded)
//   head.labels                       what its outputs mean (text tasks), one per line
//   pending.header/.safetensors       a trained contribution not yet acknowledged
//   last_round                        the last round the server acknowledged from us
//   training.safetensors              a training run stopped (or checkpointed) midway:
//                                     weights, optimizer state, data order, generators
//   contrib-rN.header/.safetensors    acknowledged contributions (the newest few are kept)
// Tensor files are plain safetensors (any safetensors reader opens them) whose metadata
// holds the SHA-256 of their data ("coldfuse.sha256"), checked on every load: a damaged
// file is DATA_LOSS naming it, never trained on. Folders written by releases that kept
// these as .ctf files are converted once by Open. Every write is atomic. Not thread-safe:
// one daemon per folder.
#ifndef COLDFUSE_CLIENT_DAEMON_STATE_H_
#define COLDFUSE_CLIENT_DAEMON_STATE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/train/checkpoint.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/tensor.h"

namespace coldfuse::daemon {

struct CachedBase {
  uint64_t version = 0;
  std::string sha256;
  std::vector<HostTensor> tensors;
};

// A training run saved midway (train/checkpoint.h) and what it continues.
struct SavedTraining {
  // The base, head, data and options it was trained with (Daemon's key): resumed only
  // when they are the same.
  std::string key;
  uint64_t base_version = 0;  // for the log
  train::TrainCheckpoint checkpoint;
};

struct Contribution {
  v1::ContributionHeader header;
  std::vector<HostTensor> tensors;
};

class StateDir {
 public:
  // Creates the folder if needed. Converts each tensor file an older release left as .ctf
  // (base, head, pending, contrib-rN) to .safetensors: written atomically, then the .ctf
  // is removed, so a crash midway leaves a folder the next Open finishes converting.
  // DATA_LOSS naming a .ctf file that is damaged.
  static absl::StatusOr<StateDir> Open(const std::string& dir);

  const std::string& dir() const { return dir_; }

  absl::StatusOr<std::optional<CachedBase>> LoadBase() const;
  absl::Status SaveBase(const CachedBase& base) const;

  // Empty when the contributor has no head yet.
  absl::StatusOr<std::vector<HostTensor>> LoadHead() const;
  // `labels`: what the head's outputs mean, in order (head.labels, one per line); empty
  // for tasks whose labels are plain class numbers. Written before head.safetensors.
  absl::Status SaveHead(const std::vector<HostTensor>& head,
                        const std::vector<std::string>& labels = {}) const;
  // The labels saved with the head; nullopt when none were (an older state folder).
  absl::StatusOr<std::optional<std::vector<std::string>>> LoadHeadLabels() const;

  // Where the head is kept, for messages that tell the user what to delete.
  std::string HeadPath() const;

  absl::StatusOr<std::optional<Contribution>> LoadPending() const;
  absl::Status SavePending(const Contribution& c) const;
  absl::Status DropPending() const;
  // Moves the pending contribution to contrib-rN.* and keeps the newest `keep`.
  absl::Status ArchivePending(uint64_t round, int keep) const;

  // nullopt when there is none. DATA_LOSS naming the file when it is damaged.
  absl::StatusOr<std::optional<SavedTraining>> LoadTraining() const;
  absl::Status SaveTraining(const SavedTraining& t) const;
  // Removes it (OK when there is none).
  absl::Status DropTraining() const;
  std::string TrainingPath() const;

  // 0 if none yet.
  absl::StatusOr<uint64_t> LoadLastRound() const;
  absl::Status SaveLastRound(uint64_t round) const;

 private:
  explicit StateDir(std::string dir) : dir_(std::move(dir)) {}
  std::string Path(absl::string_view name) const;
  std::string dir_;
};

}  // namespace coldfuse::daemon

#endif  // COLDFUSE_CLIENT_DAEMON_STATE_H_
