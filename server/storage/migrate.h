// Brings a data folder written by an older coldfused to the current storage format
// (keys.h: kFormatVersion). Internal to server/storage; called by Store::Open.
#ifndef COLDFUSE_SERVER_STORAGE_MIGRATE_H_
#define COLDFUSE_SERVER_STORAGE_MIGRATE_H_

#include <rocksdb/db.h>

#include <vector>

#include "absl/status/status.h"

namespace coldfuse::storage {

// Reads the format version; a store without one is format 1 if it holds anything, and
// new otherwise. Migrates format 1 to the current format in one synced write (tensor
// chunks keep their keys and are not rewritten), and writes the version of a new store.
// FAILED_PRECONDITION for a format newer than this build knows; DATA_LOSS for a record
// that does not parse. `cfs` are the families in rocks_util.h's order.
absl::Status MigrateToCurrentFormat(rocksdb::DB* db,
                                    const std::vector<rocksdb::ColumnFamilyHandle*>& cfs);

}  // namespace coldfuse::storage

#endif  // COLDFUSE_SERVER_STORAGE_MIGRATE_H_
