// Admin.Backup's stream: a consistent copy of the whole data folder, taken while the
// server serves (a RocksDB checkpoint: memtables flushed, table and blob files
// hard-linked, the rest copied, inside the data folder), then sent file by file in
// 1 MiB chunks, each file followed by its SHA-256. The checkpoint costs no tensor copy
// and is removed when the stream ends (or at the next start after a crash).
// Not thread-safe: one per stream (ProducerWriteReactor calls Next one at a time).
#ifndef COLDFUSE_SERVER_SERVICE_BACKUP_SOURCE_H_
#define COLDFUSE_SERVER_SERVICE_BACKUP_SOURCE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/sha256.h"
#include "server/storage/store.h"

namespace coldfuse::service {

class BackupSource {
 public:
  // Nothing happens until the first Next (the checkpoint is I/O: never on a gRPC thread).
  explicit BackupSource(storage::Store* store) : store_(store) {}
  ~BackupSource();
  BackupSource(const BackupSource&) = delete;
  BackupSource& operator=(const BackupSource&) = delete;

  // The header (after taking the checkpoint), then each file's chunks and its end;
  // nullopt after the last file.
  absl::StatusOr<std::optional<v1::BackupResponse>> Next();

 private:
  absl::StatusOr<v1::BackupResponse> Start();

  storage::Store* const store_;
  std::string dir_;  // the checkpoint; removed by the destructor
  std::vector<v1::BackupFile> files_;
  bool started_ = false;
  size_t file_ = 0;  // the file being sent
  int fd_ = -1;      // open on files_[file_]
  uint64_t offset_ = 0;
  Sha256 sha_;
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_BACKUP_SOURCE_H_
