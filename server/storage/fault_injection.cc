#include "server/storage/fault_injection.h"

#include <rocksdb/file_system.h>

#include <string>
#include <utility>

#include "server/storage/fault_fs.h"

namespace coldfuse::storage {

void FaultInjection::FailFrom(Op op, uint64_t after) {
  absl::MutexLock l(&mu_);
  failing_[static_cast<int>(op)] = true;
  fail_at_[static_cast<int>(op)] = count_[static_cast<int>(op)] + after;
}

void FaultInjection::Heal() {
  absl::MutexLock l(&mu_);
  for (bool& f : failing_) f = false;
}

void FaultInjection::HoldSyncs(bool wal_only) {
  absl::MutexLock l(&mu_);
  hold_syncs_ = true;
  hold_wal_only_ = wal_only;
}

void FaultInjection::ReleaseSyncs() {
  absl::MutexLock l(&mu_);
  hold_syncs_ = false;
  passes_ = 0;
}

void FaultInjection::ReleaseOneSync() {
  absl::MutexLock l(&mu_);
  ++passes_;
}

bool FaultInjection::WaitForHeldSync(absl::Duration timeout) {
  absl::MutexLock l(&mu_);
  auto held = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return held_ > passes_; };
  return mu_.AwaitWithTimeout(absl::Condition(&held), timeout);
}

uint64_t FaultInjection::Count(Op op) const {
  absl::MutexLock l(&mu_);
  return count_[static_cast<int>(op)];
}

bool FaultInjection::Before(Op op, bool wal) {
  absl::MutexLock l(&mu_);
  const int i = static_cast<int>(op);
  if (op == Op::kSync && hold_syncs_ && (wal || !hold_wal_only_)) {
    ++held_;
    auto released = [this]()
                        ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !hold_syncs_ || passes_ > 0; };
    mu_.Await(absl::Condition(&released));
    if (hold_syncs_) --passes_;
    --held_;
  }
  const uint64_t n = count_[i]++;
  return failing_[i] && n >= fail_at_[i];
}

namespace {

using rocksdb::IODebugContext;
using rocksdb::IOOptions;
using rocksdb::IOStatus;

IOStatus Injected(const char* what) {
  return IOStatus::IOError(std::string("injected fault: ") + what);
}

class FaultFile : public rocksdb::FSWritableFileOwnerWrapper {
 public:
  FaultFile(std::unique_ptr<rocksdb::FSWritableFile> f, std::shared_ptr<FaultInjection> faults,
            const std::string& name)
      : FSWritableFileOwnerWrapper(std::move(f)),
        faults_(std::move(faults)),
        wal_(name.size() > 4 && name.compare(name.size() - 4, 4, ".log") == 0) {}

  IOStatus Append(const rocksdb::Slice& data, const IOOptions& o, IODebugContext* d) override {
    if (faults_->Before(FaultInjection::Op::kAppend, wal_)) return Injected("append");
    return FSWritableFileOwnerWrapper::Append(data, o, d);
  }
  IOStatus Append(const rocksdb::Slice& data, const IOOptions& o,
                  const rocksdb::DataVerificationInfo& v, IODebugContext* d) override {
    if (faults_->Before(FaultInjection::Op::kAppend, wal_)) return Injected("append");
    return FSWritableFileOwnerWrapper::Append(data, o, v, d);
  }
  IOStatus Sync(const IOOptions& o, IODebugContext* d) override {
    if (faults_->Before(FaultInjection::Op::kSync, wal_)) return Injected("sync");
    return FSWritableFileOwnerWrapper::Sync(o, d);
  }
  IOStatus Fsync(const IOOptions& o, IODebugContext* d) override {
    if (faults_->Before(FaultInjection::Op::kSync, wal_)) return Injected("fsync");
    return FSWritableFileOwnerWrapper::Fsync(o, d);
  }

 private:
  std::shared_ptr<FaultInjection> faults_;
  const bool wal_;  // RocksDB's write-ahead logs end in .log
};

class FaultFs : public rocksdb::FileSystemWrapper {
 public:
  explicit FaultFs(std::shared_ptr<FaultInjection> faults)
      : FileSystemWrapper(rocksdb::FileSystem::Default()), faults_(std::move(faults)) {}
  const char* Name() const override { return "ColdfuseFaultInjection"; }

  IOStatus NewWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                           std::unique_ptr<rocksdb::FSWritableFile>* r,
                           IODebugContext* d) override {
    std::unique_ptr<rocksdb::FSWritableFile> file;
    IOStatus s = FileSystemWrapper::NewWritableFile(f, o, &file, d);
    if (s.ok()) *r = std::make_unique<FaultFile>(std::move(file), faults_, f);
    return s;
  }
  IOStatus ReopenWritableFile(const std::string& f, const rocksdb::FileOptions& o,
                              std::unique_ptr<rocksdb::FSWritableFile>* r,
                              IODebugContext* d) override {
    std::unique_ptr<rocksdb::FSWritableFile> file;
    IOStatus s = FileSystemWrapper::ReopenWritableFile(f, o, &file, d);
    if (s.ok()) *r = std::make_unique<FaultFile>(std::move(file), faults_, f);
    return s;
  }
  IOStatus RenameFile(const std::string& s, const std::string& t, const IOOptions& o,
                      IODebugContext* d) override {
    if (faults_->Before(FaultInjection::Op::kRename, false)) return Injected("rename");
    return FileSystemWrapper::RenameFile(s, t, o, d);
  }

 private:
  std::shared_ptr<FaultInjection> faults_;
};

}  // namespace

std::unique_ptr<rocksdb::Env> NewFaultInjectionEnv(std::shared_ptr<FaultInjection> faults) {
  return rocksdb::NewCompositeEnv(std::make_shared<FaultFs>(std::move(faults)));
}

}  // namespace coldfuse::storage
