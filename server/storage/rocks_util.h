// What store.cc and migrate.cc share about RocksDB: the column families, the one place
// RocksDB statuses become absl::Status, and record parsing. Internal to server/storage.
#ifndef COLDFUSE_SERVER_STORAGE_ROCKS_UTIL_H_
#define COLDFUSE_SERVER_STORAGE_ROCKS_UTIL_H_

#include <rocksdb/db.h>
#include <rocksdb/slice.h>

#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace coldfuse::storage {

enum Cf { kMeta = 0, kBases, kContribs, kRounds, kAudit, kNumCfs };
inline constexpr const char* kCfNames[kNumCfs] = {"meta", "bases", "contribs", "rounds", "audit"};

inline absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
  if (s.ok()) return absl::OkStatus();
  std::string msg = absl::StrCat("storage: ", what, ": ", s.ToString());
  if (s.IsNotFound()) return absl::NotFoundError(msg);
  if (s.IsCorruption()) return absl::DataLossError(msg);
  if (s.IsNoSpace()) return absl::ResourceExhaustedError(msg);
  if (s.IsBusy() || s.IsTimedOut() || s.IsTryAgain()) return absl::UnavailableError(msg);
  if (s.IsIOError() && s.ToString().find("lock") != std::string::npos) {
    return absl::FailedPreconditionError(
        absl::StrCat(msg, " (is another coldfused using this data folder?)"));
  }
  return absl::InternalError(msg);
}

inline absl::string_view View(const rocksdb::Slice& s) { return {s.data(), s.size()}; }

// Parses a record of type Proto from `bytes`; DATA_LOSS naming `what` if it does not parse.
template <typename Proto>
absl::Status ParseRecord(absl::string_view bytes, Proto* out, absl::string_view what) {
  if (!out->ParseFromArray(bytes.data(), static_cast<int>(bytes.size()))) {
    return absl::DataLossError(absl::StrCat("storage: corrupt record ", what));
  }
  return absl::OkStatus();
}

}  // namespace coldfuse::storage

#endif  // COLDFUSE_SERVER_STORAGE_ROCKS_UTIL_H_
