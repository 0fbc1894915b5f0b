// The RocksDB file system behind StoreOptions::faults (fault_injection.h). Internal to
// server/storage.
#ifndef COLDFUSE_SERVER_STORAGE_FAULT_FS_H_
#define COLDFUSE_SERVER_STORAGE_FAULT_FS_H_

#include <rocksdb/env.h>

#include <memory>

#include "server/storage/fault_injection.h"

namespace coldfuse::storage {

// An Env over the default file system whose writable files and renames consult `faults`.
std::unique_ptr<rocksdb::Env> NewFaultInjectionEnv(std::shared_ptr<FaultInjection> faults);

}  // namespace coldfuse::storage

#endif  // COLDFUSE_SERVER_STORAGE_FAULT_FS_H_
