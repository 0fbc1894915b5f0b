#include "server/storage/store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/utilities/checkpoint.h>
#include <rocksdb/write_batch.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <filesystem>
#include <mutex>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tsan_handoff.h"
#include "server/storage/fault_fs.h"
#include "server/storage/keys.h"
#include "server/storage/migrate.h"
#include "server/storage/records.h"
#include "server/storage/rocks_util.h"

namespace coldfuse::storage {

// keys.h's optimizer state keys sort after a version's chunk keys only while a tensor
// index's first byte is 0.
static_assert(kMaxTensors <= (1 << 24));
struct Store::Impl {
  std::string dir;
  std::unique_ptr<rocksdb::Env> env;  // only with faults; outlives db
  std::unique_ptr<rocksdb::DB> db;
  std::vector<rocksdb::ColumnFamilyHandle*> cfs;
  rocksdb::WriteOptions commit_opts;
  rocksdb::WriteOptions chunk_opts;  // no WAL: made durable by the flush before a commit
  rocksdb::WriteOptions audit_opts;  // unsynced WAL (rejection records)
  bool flush_before_commit = true;

  // Makes the unlogged chunks of `cf` durable (before a commit that points at them).
  absl::Status FlushFamily(Cf cf) {
    if (!flush_before_commit) return absl::OkStatus();
    rocksdb::FlushOptions fo;
    fo.wait = true;
    fo.allow_write_stall = true;
    return FromRocks(db->Flush(fo, cfs[cf]), "flush chunks");
  }
  // Group flush of the contributions' chunks: every commit needs a flush that starts after
  // its chunks were written; concurrent commits share one instead of each queueing its own
  // (each flush is a blob file, a table file and three fsyncs).
  std::mutex group_mu;
  std::condition_variable group_cv;
  uint64_t group_started = 0;  // flushes started
  uint64_t group_done = 0;     // the newest flush that has ended
  uint64_t group_ok = 0;       // the newest flush that succeeded
  bool group_running = false;
  absl::Status group_status;  // of flush number group_done

  // Only the contributions' family uses it (the group state is not per family).
  absl::Status FlushFamilyGrouped(Cf cf) {
    if (!flush_before_commit) return absl::OkStatus();
    std::unique_lock<std::mutex> l(group_mu);
    const uint64_t want = group_started + 1;  // the first flush to start from now on
    while (group_done < want) {
      if (group_running) {
        group_cv.wait(l);
        continue;
      }
      group_running = true;
      const uint64_t mine = ++group_started;
      l.unlock();
      absl::Status st = FlushFamily(cf);
      l.lock();
      group_running = false;
      group_done = mine;
      group_status = st;
      if (st.ok()) group_ok = mine;
      group_cv.notify_all();
    }
    // Any successful flush that started after the call covers it, even if a later one
    // failed; otherwise the newest failure says why.
    return group_ok >= want ? absl::OkStatus() : group_status;
  }

  std::mutex audit_mu;  // orders audit sequence numbers with their writes
  uint64_t next_audit_seq = 1;

  // Adds `audit` to `batch` with fresh sequence numbers, then writes it.
  // REQUIRES: nothing; takes audit_mu so records land in seq order.
  absl::Status WriteWithAudit(rocksdb::WriteBatch* batch, const AuditBatch& audit,
                              const rocksdb::WriteOptions& opts, absl::string_view what) {
    std::lock_guard<std::mutex> l(audit_mu);
    uint64_t seq = next_audit_seq;
    const int64_t now = std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::system_clock::now().time_since_epoch())
                            .count();
    for (v1::AuditRecord rec : audit) {
      if (rec.unix_ms() == 0) rec.set_unix_ms(now);
      batch->Put(cfs[kAudit], keys::Audit(seq), ToRecord(rec).SerializeAsString());
      ++seq;
    }
    RETURN_IF_ERROR(FromRocks(db->Write(opts, batch), what));
    next_audit_seq = seq;
    return absl::OkStatus();
  }

  ~Impl() {
    for (auto* h : cfs) {
      if (h != nullptr && db != nullptr) db->DestroyColumnFamilyHandle(h);
    }
    if (db != nullptr) db->Close();
  }

  absl::StatusOr<std::string> Get(Cf cf, const std::string& key, absl::string_view what,
                                  bool verify = true) {
    std::string value;
    rocksdb::ReadOptions ro;
    ro.verify_checksums = verify;
    // A block read unchecked must not be cached: later checked reads would trust it.
    ro.fill_cache = verify;
    rocksdb::Status s = db->Get(ro, cfs[cf], key, &value);
    RETURN_IF_ERROR(FromRocks(s, what));
    return value;
  }

  template <typename Record>
  absl::StatusOr<Record> GetRecord(Cf cf, const std::string& key, absl::string_view what) {
    ASSIGN_OR_RETURN(std::string bytes, Get(cf, key, what));
    Record r;
    RETURN_IF_ERROR(ParseRecord(bytes, &r, what));
    return r;
  }

  // Calls fn(key, value) for every key of `cf` from `start` on while it starts with
  // `prefix`.
  template <typename Fn>
  absl::Status Scan(Cf cf, absl::string_view prefix, absl::string_view what, Fn fn) {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cfs[cf]));
    const rocksdb::Slice p(prefix.data(), prefix.size());
    for (it->Seek(p); it->Valid() && it->key().starts_with(p); it->Next()) {
      RETURN_IF_ERROR(fn(View(it->key()), View(it->value())));
    }
    return FromRocks(it->status(), what);
  }

  absl::Status DeleteRange(Cf cf, const std::string& from, const std::string& to) {
    return FromRocks(db->DeleteRange(commit_opts, cfs[cf], from, to), "delete range");
  }

  // Deletes contribution data no committed record or upload session points to; returns
  // the largest id seen.
  absl::StatusOr<uint64_t> RemoveOrphanContributions(const std::vector<StoredUpload>& uploads) {
    uint64_t max_id = 0;
    std::set<std::pair<uint64_t, uint64_t>> committed;
    for (const auto& u : uploads) {
      committed.insert({u.upload_round, u.contribution_id});
      max_id = std::max(max_id, u.contribution_id);
    }
    RETURN_IF_ERROR(Scan(
        kContribs, keys::ContributionRecordPrefix(), "scan contributions",
        [&](absl::string_view k, absl::string_view v) -> absl::Status {
          auto rid = keys::ParseContributionRecord(k);
          if (!rid.has_value()) return absl::DataLossError("storage: bad contribution key");
          // Its chunks are under the round its upload began in.
          ContributionRecord r;
          RETURN_IF_ERROR(ParseRecord(v, &r, "contribution"));
          committed.insert({r.has_upload_round() ? r.upload_round() : rid->first, rid->second});
          max_id = std::max(max_id, rid->second);
          return absl::OkStatus();
        }));
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cfs[kContribs]));
    const std::string data = keys::ContributionDataStart();
    it->Seek(data);
    while (it->Valid() && it->key().starts_with(data)) {
      auto rid = keys::ParseContributionData(View(it->key()));
      if (!rid.has_value()) return absl::DataLossError("storage: bad contribution data key");
      const auto [round, id] = *rid;
      max_id = std::max(max_id, id);
      std::string next = keys::ContributionDataPrefix(round, id + 1);
      if (!committed.count({round, id})) {
        CF_LOG(WARNING) << "removing half-written contribution " << id << " of round " << round
                        << " (left by a crash or a dropped upload)";
        RETURN_IF_ERROR(DeleteRange(kContribs, keys::ContributionDataPrefix(round, id), next));
      }
      it->Seek(next);
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "scan contribution data"));
    return max_id;
  }
};

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

absl::StatusOr<std::unique_ptr<Store>> Store::Open(const std::string& dir,
                                                   const StoreOptions& options) {
  auto impl = std::make_unique<Impl>();
  impl->dir = dir;
  {
    // Backup checkpoints left by a crash (Store::CreateCheckpoint).
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(dir, ec)) {
      const std::string name = e.path().filename().string();
      if (e.is_directory() && name.rfind(kCheckpointPrefix, 0) == 0) {
        CF_LOG(WARNING) << "removing " << e.path().string() << ", left by an interrupted backup";
        std::filesystem::remove_all(e.path(), ec);
      }
    }
  }
  rocksdb::DBOptions db_opts;
  if (options.faults != nullptr) {
    impl->env = NewFaultInjectionEnv(options.faults);
    db_opts.env = impl->env.get();
  }
  db_opts.create_if_missing = true;
  db_opts.create_missing_column_families = true;
  db_opts.paranoid_checks = true;
  db_opts.max_open_files = options.max_open_files;
  // The log holds only records (chunks are written without it), yet RocksDB preallocates
  // it in blocks of 1.1 x the largest memtable (70 MiB here), which du counts. This caps
  // the block, and flushes the record families when older logs add up to it.
  db_opts.max_total_wal_size = 16 << 20;
#ifdef COLDFUSE_TSAN
  // RocksDB's group commit has its leader thread copy the other writers' batches into one
  // (DBImpl::MergeBatch), ordered by atomics in RocksDB's uninstrumented code: TSan reports
  // each such copy, with no RocksDB frame to suppress it by. In TSan builds only, every
  // write is its own group (RocksDB's own tests cover grouping).
  db_opts.max_write_batch_group_size_bytes = 1;
#endif
  rocksdb::ColumnFamilyOptions cf_opts;
  rocksdb::ColumnFamilyOptions data_opts;  // bases, contribs: 1 MiB tensor chunks
  if (options.blob_files) {
    data_opts.enable_blob_files = true;
    data_opts.min_blob_size = 64 << 10;
    data_opts.blob_file_size = 256 << 20;
    // No blob garbage collection: every commit flushes the chunks it points at, so a
    // blob file holds the chunks of the uploads (or the base) of one flush, and is
    // deleted whole once their keys are gone. The cost: the chunks of an upload that
    // failed after sharing a flush with committed ones stay in that file as long as the
    // committed ones do (at most the bytes of failed uploads; reclaiming them belongs
    // with removing old rounds, which rewrites nothing else). With collection on, each compaction
    // of L0 into L1 (all of a round's keys) rewrote the oldest quarter of the blobs: with 1000
    // contributions of 10 MB per round it rewrote 1.7 GB per compaction, L0 piled up and RocksDB
    // stalled writes to under 1 MB/s (bench/scale.py).
    data_opts.enable_blob_garbage_collection = false;
  }
  data_opts.write_buffer_size = 64 << 20;
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  descs.emplace_back(rocksdb::kDefaultColumnFamilyName, cf_opts);
  for (int i = 0; i < kNumCfs; ++i) {
    descs.emplace_back(kCfNames[i], (i == kBases || i == kContribs) ? data_opts : cf_opts);
  }

  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* raw = nullptr;
  rocksdb::Status s = rocksdb::DB::Open(db_opts, dir, descs, &handles, &raw);
  RETURN_IF_ERROR(FromRocks(s, absl::StrCat("open ", dir)));
  impl->db.reset(raw);
  // handles[0] is the default family, which we do not use.
  raw->DestroyColumnFamilyHandle(handles[0]);
  impl->cfs.assign(handles.begin() + 1, handles.end());
  impl->commit_opts.sync = options.sync_commits;
  impl->chunk_opts.disableWAL = true;
  impl->audit_opts.sync = false;
  impl->flush_before_commit = options.sync_commits;
  RETURN_IF_ERROR(MigrateToCurrentFormat(impl->db.get(), impl->cfs));
  // Audit numbering continues from the last record before anything can append.
  {
    std::unique_ptr<rocksdb::Iterator> ait(
        impl->db->NewIterator(rocksdb::ReadOptions(), impl->cfs[kAudit]));
    ait->SeekToLast();
    RETURN_IF_ERROR(FromRocks(ait->status(), "scan audit"));
    if (ait->Valid()) {
      auto seq = keys::ParseAudit(View(ait->key()));
      if (!seq.has_value()) return absl::DataLossError("storage: bad audit key");
      impl->next_audit_seq = *seq + 1;
    }
  }
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

absl::StatusOr<LoadedState> Store::Load() {
  LoadedState state;
  RETURN_IF_ERROR(impl_->Scan(kContribs, keys::UploadSessionPrefix(), "scan uploads",
                              [&](absl::string_view, absl::string_view v) -> absl::Status {
                                UploadSession rec;
                                RETURN_IF_ERROR(ParseRecord(v, &rec, "upload session"));
                                state.uploads.push_back(FromRecord(rec));
                                return absl::OkStatus();
                              }));
  for (auto& u : state.uploads) {
    auto progress = impl_->GetRecord<UploadProgress>(
        kContribs, keys::UploadProgress(u.header.upload_id()), "upload progress");
    if (absl::IsNotFound(progress.status())) continue;  // nothing stored yet
    RETURN_IF_ERROR(progress.status());
    u.progress = FromRecord(*progress);
  }
  state.last_audit_seq = impl_->next_audit_seq - 1;
  auto model = impl_->GetRecord<ModelRecord>(kMeta, keys::Model(), "model");
  if (absl::IsNotFound(model.status())) {
    // Not initialised: anything else is leftovers of a crashed init.
    RETURN_IF_ERROR(impl_->DeleteRange(kBases, std::string(), keys::BasesEnd()));
    ASSIGN_OR_RETURN(uint64_t max_id, impl_->RemoveOrphanContributions(state.uploads));
    state.next_contribution_id = max_id + 1;
    return state;
  }
  RETURN_IF_ERROR(model.status());
  state.model = FromRecord(*model);

  ASSIGN_OR_RETURN(std::string cur, impl_->Get(kMeta, keys::CurrentBase(), "current base"));
  std::optional<uint64_t> current = keys::DecodeU64(cur);
  if (!current.has_value()) return absl::DataLossError("storage: corrupt current-base pointer");
  state.current_base = *current;
  ASSIGN_OR_RETURN(state.current_base_sha256, GetBaseSha256(state.current_base));

  state.max_base_version = state.current_base;
  RETURN_IF_ERROR(impl_->Scan(
      kRounds, "", "scan rounds", [&](absl::string_view, absl::string_view v) -> absl::Status {
        RoundRecord r;
        RETURN_IF_ERROR(ParseRecord(v, &r, "round"));
        state.max_base_version = std::max(state.max_base_version, r.result_base_version());
        state.rounds.push_back(FromRecord(r));
        return absl::OkStatus();
      }));
  // A fusion that crashed before its commit left chunks of a version no record names.
  RETURN_IF_ERROR(impl_->DeleteRange(kBases, keys::BaseVersionPrefix(state.max_base_version + 1),
                                     keys::BasesEnd()));

  RETURN_IF_ERROR(impl_->Scan(kMeta, keys::BadBasePrefix(), "scan bad bases",
                              [&](absl::string_view k, absl::string_view) -> absl::Status {
                                auto v = keys::ParseBadBase(k);
                                if (!v.has_value())
                                  return absl::DataLossError("storage: bad bad-base key");
                                state.bad_base_versions.push_back(*v);
                                return absl::OkStatus();
                              }));
  std::sort(state.bad_base_versions.begin(), state.bad_base_versions.end());
  auto scan_versions = [&](const std::string& prefix, auto parse, std::vector<uint64_t>* out) {
    return impl_->Scan(kMeta, prefix, "scan retention records",
                       [&](absl::string_view k, absl::string_view) -> absl::Status {
                         std::optional<uint64_t> v = parse(k);
                         if (!v.has_value()) {
                           return absl::DataLossError("storage: bad retention key");
                         }
                         out->push_back(*v);
                         return absl::OkStatus();
                       });
  };
  RETURN_IF_ERROR(
      scan_versions(keys::PinnedBasePrefix(), keys::ParsePinnedBase, &state.pinned_base_versions));
  RETURN_IF_ERROR(
      scan_versions(keys::PrunedBasePrefix(), keys::ParsePrunedBase, &state.pruned_base_versions));

  ASSIGN_OR_RETURN(uint64_t max_id, impl_->RemoveOrphanContributions(state.uploads));
  state.next_contribution_id = max_id + 1;
  for (auto& round : state.rounds) {
    RETURN_IF_ERROR(impl_->Scan(
        kContribs, keys::ContributionRoundPrefix(round.number()), "scan contributions",
        [&](absl::string_view, absl::string_view v) -> absl::Status {
          ContributionRecord r;
          RETURN_IF_ERROR(ParseRecord(v, &r, "contribution"));
          *round.add_contributions() = FromRecord(r, round.number(), round.base_version());
          return absl::OkStatus();
        }));
  }
  return state;
}

absl::Status Store::PutBaseChunk(uint64_t version, uint32_t tensor, uint64_t chunk,
                                 absl::string_view data) {
  return FromRocks(
      impl_->db->Put(impl_->chunk_opts, impl_->cfs[kBases], keys::BaseChunk(version, tensor, chunk),
                     rocksdb::Slice(data.data(), data.size())),
      "write base chunk");
}

absl::StatusOr<std::string> Store::GetBaseChunk(uint64_t version, uint32_t tensor, uint64_t chunk,
                                                bool verify) {
  return impl_->Get(kBases, keys::BaseChunk(version, tensor, chunk),
                    absl::StrCat("base v", version, " tensor #", tensor, " chunk ", chunk), verify);
}

absl::StatusOr<std::string> Store::GetBaseSha256(uint64_t version) {
  return impl_->Get(kMeta, keys::BaseSha(version), absl::StrCat("base v", version, " sha"));
}

absl::Status Store::PutOptimizerStateChunk(uint64_t version, uint32_t slot, uint32_t tensor,
                                           uint64_t chunk, absl::string_view data) {
  if (slot > 0xff) return absl::InvalidArgumentError(absl::StrCat("state slot ", slot));
  return FromRocks(
      impl_->db->Put(impl_->chunk_opts, impl_->cfs[kBases],
                     keys::OptimizerStateChunk(version, static_cast<uint8_t>(slot), tensor, chunk),
                     rocksdb::Slice(data.data(), data.size())),
      "write optimizer state chunk");
}

absl::StatusOr<std::string> Store::GetOptimizerStateChunk(uint64_t version, uint32_t slot,
                                                          uint32_t tensor, uint64_t chunk) {
  if (slot > 0xff) return absl::InvalidArgumentError(absl::StrCat("state slot ", slot));
  return impl_->Get(kBases,
                    keys::OptimizerStateChunk(version, static_cast<uint8_t>(slot), tensor, chunk),
                    absl::StrCat("optimizer state ", slot, " of base v", version, " tensor #",
                                 tensor, " chunk ", chunk));
}

absl::StatusOr<BaseOptimizerState> Store::GetOptimizerState(uint64_t version) {
  ASSIGN_OR_RETURN(OptimizerStateRecord r,
                   impl_->GetRecord<OptimizerStateRecord>(kMeta, keys::OptimizerState(version),
                                                          "optimizer state record"));
  BaseOptimizerState s;
  s.kind = static_cast<v1::OuterOptimizer>(r.kind());
  s.step = r.step();
  s.slots.assign(r.slots().begin(), r.slots().end());
  s.state_sha256 = r.state_sha256();
  s.from_base = r.from_base();
  return s;
}

absl::Status Store::PutContributionChunk(uint64_t round, uint64_t id, uint32_t tensor,
                                         uint64_t chunk, absl::string_view data) {
  return FromRocks(impl_->db->Put(impl_->chunk_opts, impl_->cfs[kContribs],
                                  keys::ContributionChunk(round, id, tensor, chunk),
                                  rocksdb::Slice(data.data(), data.size())),
                   "write contribution chunk");
}

absl::StatusOr<std::string> Store::GetContributionChunk(uint64_t round, uint64_t id,
                                                        uint32_t tensor, uint64_t chunk) {
  return impl_->Get(kContribs, keys::ContributionChunk(round, id, tensor, chunk),
                    absl::StrCat("contribution ", id, " tensor #", tensor, " chunk ", chunk));
}

absl::Status Store::DeleteContributionData(uint64_t round, uint64_t id) {
  return impl_->DeleteRange(kContribs, keys::ContributionDataPrefix(round, id),
                            keys::ContributionDataPrefix(round, id + 1));
}

absl::Status Store::CommitContribution(uint64_t round, const v1::ContributionInfo& info,
                                       const AuditBatch& audit, const std::string& upload_id) {
  rocksdb::WriteBatch batch;
  if (!upload_id.empty()) {
    batch.Delete(impl_->cfs[kContribs], keys::UploadSession(upload_id));
    batch.Delete(impl_->cfs[kContribs], keys::UploadProgress(upload_id));
  }
  batch.Put(impl_->cfs[kContribs], keys::ContributionRecord(round, info.id()),
            ToRecord(info).SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "commit contribution");
}

absl::Status Store::CommitInit(const v1::ModelInfo& model, absl::string_view base_sha256,
                               const v1::RoundInfo& first_round, const AuditBatch& audit) {
  RETURN_IF_ERROR(impl_->FlushFamily(kBases));
  rocksdb::WriteBatch batch;
  batch.Put(impl_->cfs[kMeta], keys::Model(), ToRecord(model).SerializeAsString());
  batch.Put(impl_->cfs[kMeta], keys::BaseSha(0),
            rocksdb::Slice(base_sha256.data(), base_sha256.size()));
  batch.Put(impl_->cfs[kMeta], keys::CurrentBase(), keys::EncodeU64(0));
  OptimizerStateRecord v0;
  v0.set_kind(static_cast<uint32_t>(model.outer_optimizer()));
  batch.Put(impl_->cfs[kMeta], keys::OptimizerState(0), v0.SerializeAsString());
  batch.Put(impl_->cfs[kRounds], keys::Round(first_round.number()),
            ToRecord(first_round).SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "commit init");
}

absl::Status Store::CommitRoundClose(const v1::RoundInfo& closed, uint64_t new_base,
                                     absl::string_view new_base_sha256,
                                     const v1::RoundInfo& next_round,
                                     const BaseOptimizerState& made, const AuditBatch& audit) {
  RETURN_IF_ERROR(impl_->FlushFamily(kBases));
  OptimizerStateRecord state;
  state.set_kind(static_cast<uint32_t>(made.kind));
  state.set_step(made.step);
  state.mutable_slots()->Add(made.slots.begin(), made.slots.end());
  state.set_state_sha256(made.state_sha256);
  state.set_from_base(made.from_base);
  rocksdb::WriteBatch batch;
  for (const auto& c : closed.contributions()) {
    batch.Put(impl_->cfs[kContribs], keys::ContributionRecord(closed.number(), c.id()),
              ToRecord(c).SerializeAsString());
  }
  batch.Put(impl_->cfs[kRounds], keys::Round(closed.number()),
            ToRecord(closed).SerializeAsString());
  batch.Put(impl_->cfs[kMeta], keys::BaseSha(new_base),
            rocksdb::Slice(new_base_sha256.data(), new_base_sha256.size()));
  batch.Put(impl_->cfs[kMeta], keys::OptimizerState(new_base), state.SerializeAsString());
  batch.Put(impl_->cfs[kMeta], keys::CurrentBase(), keys::EncodeU64(new_base));
  batch.Put(impl_->cfs[kRounds], keys::Round(next_round.number()),
            ToRecord(next_round).SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "commit round close");
}

absl::Status Store::CommitRollback(const v1::RoundInfo& closed, const std::vector<uint64_t>& bad,
                                   absl::string_view reason, uint64_t good_base,
                                   const v1::RoundInfo& next_round, const AuditBatch& audit) {
  rocksdb::WriteBatch batch;
  batch.Put(impl_->cfs[kRounds], keys::Round(closed.number()),
            ToRecord(closed).SerializeAsString());
  for (uint64_t v : bad) {
    batch.Put(impl_->cfs[kMeta], keys::BadBase(v), rocksdb::Slice(reason.data(), reason.size()));
  }
  batch.Put(impl_->cfs[kMeta], keys::CurrentBase(), keys::EncodeU64(good_base));
  batch.Put(impl_->cfs[kRounds], keys::Round(next_round.number()),
            ToRecord(next_round).SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "commit rollback");
}

absl::Status Store::FlushContributions() { return impl_->FlushFamilyGrouped(kContribs); }

absl::Status Store::PutUpload(const StoredUpload& upload) {
  return FromRocks(impl_->db->Put(impl_->chunk_opts, impl_->cfs[kContribs],
                                  keys::UploadSession(upload.header.upload_id()),
                                  ToRecord(upload).SerializeAsString()),
                   "write upload session");
}

absl::Status Store::PutUploadProgress(const std::string& upload_id,
                                      const StoredUpload::Progress& progress) {
  return FromRocks(
      impl_->db->Put(impl_->chunk_opts, impl_->cfs[kContribs], keys::UploadProgress(upload_id),
                     ToRecord(progress).SerializeAsString()),
      "write upload progress");
}

absl::Status Store::DeleteUpload(const std::string& upload_id) {
  rocksdb::WriteBatch batch;
  batch.Delete(impl_->cfs[kContribs], keys::UploadSession(upload_id));
  batch.Delete(impl_->cfs[kContribs], keys::UploadProgress(upload_id));
  return FromRocks(impl_->db->Write(impl_->commit_opts, &batch), "delete upload session");
}

absl::Status Store::PutToken(const StoredToken& token, const AuditBatch& audit) {
  rocksdb::WriteBatch batch;
  batch.Put(impl_->cfs[kMeta], keys::Token(token.info.name()), ToRecord(token).SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "store token");
}

absl::Status Store::PutEvaluation(const v1::Evaluation& e, const AuditBatch& audit) {
  rocksdb::WriteBatch batch;
  batch.Put(impl_->cfs[kMeta],
            keys::Evaluation(e.base_version(), e.task(), e.metric(), e.num_train_examples(),
                             e.evaluator()),
            ToRecord(e).SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "store evaluation");
}

absl::StatusOr<std::vector<v1::Evaluation>> Store::LoadEvaluations() {
  std::vector<v1::Evaluation> out;
  RETURN_IF_ERROR(impl_->Scan(kMeta, keys::EvaluationPrefix(), "scan evaluations",
                              [&](absl::string_view, absl::string_view v) -> absl::Status {
                                EvaluationRecord r;
                                RETURN_IF_ERROR(ParseRecord(v, &r, "evaluation"));
                                out.push_back(FromRecord(r));
                                return absl::OkStatus();
                              }));
  return out;
}

absl::StatusOr<std::vector<StoredToken>> Store::LoadTokens() {
  std::vector<StoredToken> out;
  RETURN_IF_ERROR(impl_->Scan(kMeta, keys::TokenPrefix(), "scan tokens",
                              [&](absl::string_view, absl::string_view v) -> absl::Status {
                                TokenRecord r;
                                RETURN_IF_ERROR(ParseRecord(v, &r, "token"));
                                if (r.secret_sha256().size() != 32) {
                                  return absl::DataLossError("storage: corrupt token record");
                                }
                                out.push_back(FromRecord(r));
                                return absl::OkStatus();
                              }));
  return out;
}

absl::Status Store::AppendAudit(const AuditBatch& audit) {
  rocksdb::WriteBatch batch;
  return impl_->WriteWithAudit(&batch, audit, impl_->audit_opts, "append audit");
}

absl::StatusOr<std::vector<v1::AuditRecord>> Store::ReadAudit(uint64_t after_seq, size_t limit,
                                                              size_t max_bytes, bool* more) {
  std::vector<v1::AuditRecord> out;
  if (more != nullptr) *more = false;
  if (after_seq == UINT64_MAX) return out;  // nothing comes after the last number
  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cfs[kAudit]));
  size_t bytes = 0;
  for (it->Seek(keys::Audit(after_seq + 1)); it->Valid(); it->Next()) {
    auto seq = keys::ParseAudit(View(it->key()));
    if (!seq.has_value()) return absl::DataLossError("storage: bad audit key");
    AuditEntry r;
    RETURN_IF_ERROR(ParseRecord(View(it->value()), &r, "audit"));
    v1::AuditRecord rec = FromRecord(r, *seq);
    const size_t size = rec.ByteSizeLong() + 8;  // + its framing in a reply
    if (out.size() >= limit || (!out.empty() && bytes + size > max_bytes)) {
      if (more != nullptr) *more = true;
      break;
    }
    bytes += size;
    out.push_back(std::move(rec));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scan audit"));
  return out;
}

absl::Status Store::DeleteBaseData(uint64_t version) {
  return impl_->DeleteRange(kBases, keys::BaseVersionPrefix(version),
                            keys::BaseVersionPrefix(version + 1));
}

absl::Status Store::SetBasePinned(uint64_t version, bool pinned, absl::string_view actor,
                                  absl::string_view reason, const AuditBatch& audit) {
  rocksdb::WriteBatch batch;
  if (pinned) {
    PinRecord r;
    r.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::system_clock::now().time_since_epoch())
                      .count());
    r.set_actor(std::string(actor));
    r.set_reason(std::string(reason));
    batch.Put(impl_->cfs[kMeta], keys::PinnedBase(version), r.SerializeAsString());
  } else {
    batch.Delete(impl_->cfs[kMeta], keys::PinnedBase(version));
  }
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts,
                               pinned ? "pin base" : "unpin base");
}

absl::Status Store::Prune(const std::vector<uint64_t>& bases,
                          const std::vector<v1::RoundInfo>& rounds, const AuditBatch& audit) {
  rocksdb::WriteBatch batch;
  PrunedBaseRecord pruned;
  pruned.set_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count());
  const std::string pruned_bytes = pruned.SerializeAsString();
  for (uint64_t v : bases) {
    batch.Put(impl_->cfs[kMeta], keys::PrunedBase(v), pruned_bytes);
    batch.DeleteRange(impl_->cfs[kBases], keys::BaseVersionPrefix(v), keys::BaseVersionEnd(v));
  }
  for (const v1::RoundInfo& round : rounds) {
    batch.Put(impl_->cfs[kRounds], keys::Round(round.number()),
              ToRecord(round).SerializeAsString());
    // Each contribution's own chunks: they are under the round its upload began in,
    // which may be older than this one (and that round's range may hold chunks of a
    // contribution counted in a later round).
    for (const v1::ContributionInfo& c : round.contributions()) {
      const uint64_t stored = c.upload_round() != 0 ? c.upload_round() : round.number();
      batch.DeleteRange(impl_->cfs[kContribs], keys::ContributionDataPrefix(stored, c.id()),
                        keys::ContributionDataPrefix(stored, c.id() + 1));
    }
  }
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "prune");
}

absl::Status Store::ReclaimSpace() {
  rocksdb::CompactRangeOptions opts;
  // Also the last level, where the removed chunks' index entries usually are.
  opts.bottommost_level_compaction = rocksdb::BottommostLevelCompaction::kForce;
  opts.exclusive_manual_compaction = false;
  for (Cf cf : {kBases, kContribs}) {
    RETURN_IF_ERROR(FromRocks(impl_->db->CompactRange(opts, impl_->cfs[cf], nullptr, nullptr),
                              absl::StrCat("compact ", kCfNames[cf])));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> Store::DiskBytes() const {
  uint64_t total = 0;
  std::set<std::pair<dev_t, ino_t>> seen;  // hard links (a backup's checkpoint) count once
  std::error_code ec;
  for (auto it = std::filesystem::recursive_directory_iterator(impl_->dir, ec);
       !ec && it != std::filesystem::recursive_directory_iterator(); it.increment(ec)) {
    struct stat st;
    // A file RocksDB deletes between listing and stat is simply not counted.
    if (::lstat(it->path().c_str(), &st) == 0 && !S_ISDIR(st.st_mode) &&
        seen.insert({st.st_dev, st.st_ino}).second) {
      total += static_cast<uint64_t>(st.st_blocks) * 512;
    }
  }
  if (ec && ec != std::errc::no_such_file_or_directory) {
    return absl::InternalError(
        absl::StrCat("storage: cannot list the data folder ", impl_->dir, ": ", ec.message()));
  }
  return total;
}

absl::StatusOr<std::string> Store::CreateCheckpoint() {
  static std::atomic<uint64_t> counter{0};
  const std::string path = absl::StrCat(impl_->dir, "/", kCheckpointPrefix,
                                        std::chrono::duration_cast<std::chrono::milliseconds>(
                                            std::chrono::system_clock::now().time_since_epoch())
                                            .count(),
                                        "-", counter.fetch_add(1));
  rocksdb::Checkpoint* raw = nullptr;
  RETURN_IF_ERROR(FromRocks(rocksdb::Checkpoint::Create(impl_->db.get(), &raw), "checkpoint"));
  std::unique_ptr<rocksdb::Checkpoint> checkpoint(raw);
  // 0: always flush the memtables first, so the copy holds no log to replay (the
  // unlogged chunks of uploads in progress are then in it too; Load drops them unless a
  // session points at them).
  absl::Status st =
      FromRocks(checkpoint->CreateCheckpoint(path, /*log_size_for_flush=*/0), "checkpoint");
  if (!st.ok()) {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
    return st;
  }
  return path;
}

}  // namespace coldfuse::storage
