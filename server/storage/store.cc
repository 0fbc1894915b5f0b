#include "server/storage/store.h"

#include <rocksdb/db.h>
#include <rocksdb/options.h>
#include <rocksdb/write_batch.h>

#include <chrono>
#include <mutex>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/storage/keys.h"

namespace coldfuse::storage {
namespace {

enum Cf { kMeta = 0, kBases, kContribs, kRounds, kAudit, kNumCfs };
const char* const kCfNames[kNumCfs] = {"meta", "bases", "contribs", "rounds", "audit"};

std::string UploadKey(absl::string_view upload_id) { return absl::StrCat("u", upload_id); }
std::string ProgressKey(absl::string_view upload_id) { return absl::StrCat("p", upload_id); }

// The one place RocksDB statuses become absl::Status.
absl::Status FromRocks(const rocksdb::Status& s, absl::string_view what) {
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

template <typename Proto>
absl::Status ParseRecord(const std::string& bytes, Proto* out, absl::string_view what) {
  if (!out->ParseFromString(bytes)) {
    return absl::DataLossError(absl::StrCat("storage: corrupt record ", what));
  }
  return absl::OkStatus();
}

}  // namespace

struct Store::Impl {
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
  std::mutex audit_mu;               // orders audit sequence numbers with their writes
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
      rec.set_seq(seq);
      if (rec.unix_ms() == 0) rec.set_unix_ms(now);
      batch->Put(cfs[kAudit], keys::Round(seq), rec.SerializeAsString());
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

  absl::StatusOr<std::string> Get(Cf cf, const std::string& key, absl::string_view what) {
    std::string value;
    rocksdb::Status s = db->Get(rocksdb::ReadOptions(), cfs[cf], key, &value);
    RETURN_IF_ERROR(FromRocks(s, what));
    return value;
  }

  absl::Status DeleteRange(Cf cf, const std::string& from, const std::string& to) {
    return FromRocks(db->DeleteRange(commit_opts, cfs[cf], from, to), "delete range");
  }

  // Deletes contribution data no committed record or upload session points to; returns
  // the largest id seen.
  absl::StatusOr<uint64_t> RemoveOrphanContributions(
      const std::vector<v1::UploadSessionRecord>& uploads) {
    uint64_t max_id = 0;
    std::set<std::pair<uint64_t, uint64_t>> committed;
    for (const auto& u : uploads) {
      committed.insert({u.header().round(), u.contribution_id()});
      max_id = std::max(max_id, u.contribution_id());
    }
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cfs[kContribs]));
    for (it->Seek("h"); it->Valid() && it->key().starts_with("h"); it->Next()) {
      absl::string_view k(it->key().data(), it->key().size());
      if (k.size() != 17) return absl::DataLossError("storage: bad contribution key");
      committed.insert({keys::GetU64(k, 1), keys::GetU64(k, 9)});
      max_id = std::max(max_id, keys::GetU64(k, 9));
    }
    RETURN_IF_ERROR(FromRocks(it->status(), "scan contributions"));
    it->Seek("d");
    while (it->Valid() && it->key().starts_with("d")) {
      absl::string_view k(it->key().data(), it->key().size());
      if (k.size() < 17) return absl::DataLossError("storage: bad contribution data key");
      uint64_t round = keys::GetU64(k, 1), id = keys::GetU64(k, 9);
      max_id = std::max(max_id, id);
      std::string next = keys::ContributionDataPrefix(round, id + 1);
      if (!committed.count({round, id})) {
        CF_LOG(WARNING) << "removing half-written contribution " << id << " of round "
                        << round << " (left by a crash or a dropped upload)";
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
  rocksdb::DBOptions db_opts;
  db_opts.create_if_missing = true;
  db_opts.create_missing_column_families = true;
  db_opts.paranoid_checks = true;
  rocksdb::ColumnFamilyOptions cf_opts;
  rocksdb::ColumnFamilyOptions data_opts;  // bases, contribs: 1 MiB tensor chunks
  if (options.blob_files) {
    data_opts.enable_blob_files = true;
    data_opts.min_blob_size = 64 << 10;
    data_opts.blob_file_size = 256 << 20;
    data_opts.enable_blob_garbage_collection = true;
  }
  data_opts.write_buffer_size = 64 << 20;
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  descs.emplace_back(rocksdb::kDefaultColumnFamilyName, cf_opts);
  for (int i = 0; i < kNumCfs; ++i) {
    descs.emplace_back(kCfNames[i], (i == kBases || i == kContribs) ? data_opts : cf_opts);
  }

  auto impl = std::make_unique<Impl>();
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
  // Audit numbering continues from the last record before anything can append.
  {
    std::unique_ptr<rocksdb::Iterator> ait(
        impl->db->NewIterator(rocksdb::ReadOptions(), impl->cfs[kAudit]));
    ait->SeekToLast();
    RETURN_IF_ERROR(FromRocks(ait->status(), "scan audit"));
    impl->next_audit_seq =
        ait->Valid() ? keys::GetU64(absl::string_view(ait->key().data(), ait->key().size()), 0) + 1
                     : 1;
  }
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

absl::StatusOr<LoadedState> Store::Load() {
  LoadedState state;
  {
    std::unique_ptr<rocksdb::Iterator> uit(
        impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cfs[kContribs]));
    for (uit->Seek("u"); uit->Valid() && uit->key().starts_with("u"); uit->Next()) {
      v1::UploadSessionRecord rec;
      RETURN_IF_ERROR(ParseRecord(uit->value().ToString(), &rec, "upload session"));
      state.uploads.push_back(std::move(rec));
    }
    RETURN_IF_ERROR(FromRocks(uit->status(), "scan uploads"));
    // Progress is kept apart from the session (written per chunk without the header).
    // Sessions written before that carry their progress themselves.
    for (auto& rec : state.uploads) {
      auto progress = impl_->Get(kContribs, ProgressKey(rec.header().upload_id()),
                                 "upload progress");
      if (absl::IsNotFound(progress.status())) continue;
      RETURN_IF_ERROR(progress.status());
      v1::UploadSessionRecord p;
      RETURN_IF_ERROR(ParseRecord(*progress, &p, "upload progress"));
      rec.set_next_tensor(p.next_tensor());
      rec.set_next_offset(p.next_offset());
      rec.set_bytes_stored(p.bytes_stored());
      rec.set_sum_sq(p.sum_sq());
    }
  }
  state.last_audit_seq = impl_->next_audit_seq - 1;
  auto model = impl_->Get(kMeta, keys::kModel, "model");
  if (absl::IsNotFound(model.status())) {
    // Not initialised: anything else is leftovers of a crashed init.
    RETURN_IF_ERROR(impl_->DeleteRange(kBases, std::string(), std::string(24, '\xff')));
    ASSIGN_OR_RETURN(uint64_t max_id, impl_->RemoveOrphanContributions(state.uploads));
    state.next_contribution_id = max_id + 1;
    return state;
  }
  RETURN_IF_ERROR(model.status());
  v1::ModelInfo info;
  RETURN_IF_ERROR(ParseRecord(*model, &info, "model"));
  state.model = std::move(info);

  ASSIGN_OR_RETURN(std::string cur, impl_->Get(kMeta, keys::kCurrentBase, "current base"));
  if (cur.size() != 8) return absl::DataLossError("storage: corrupt current-base pointer");
  state.current_base = keys::GetU64(cur, 0);
  ASSIGN_OR_RETURN(state.current_base_sha256, GetBaseSha256(state.current_base));

  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cfs[kRounds]));
  state.max_base_version = state.current_base;
  for (it->SeekToFirst(); it->Valid(); it->Next()) {
    v1::RoundInfo round;
    RETURN_IF_ERROR(ParseRecord(it->value().ToString(), &round, "round"));
    state.max_base_version = std::max(state.max_base_version, round.result_base_version());
    state.rounds.push_back(std::move(round));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scan rounds"));
  // A fusion that crashed before its commit left chunks of a version no record names.
  RETURN_IF_ERROR(impl_->DeleteRange(kBases, keys::BaseVersionPrefix(state.max_base_version + 1),
                                     std::string(24, '\xff')));

  std::unique_ptr<rocksdb::Iterator> mit(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cfs[kMeta]));
  for (mit->Seek("bad_base/"); mit->Valid() && mit->key().starts_with("bad_base/"); mit->Next()) {
    uint64_t v = 0;
    std::string k = mit->key().ToString().substr(9);
    if (!absl::SimpleAtoi(k, &v)) return absl::DataLossError("storage: bad bad_base key");
    state.bad_base_versions.push_back(v);
  }
  RETURN_IF_ERROR(FromRocks(mit->status(), "scan bad bases"));
  std::sort(state.bad_base_versions.begin(), state.bad_base_versions.end());

  ASSIGN_OR_RETURN(uint64_t max_id, impl_->RemoveOrphanContributions(state.uploads));
  state.next_contribution_id = max_id + 1;
  for (auto& round : state.rounds) {
    std::string prefix = keys::ContributionRecord(round.number(), 0).substr(0, 9);
    std::unique_ptr<rocksdb::Iterator> cit(
        impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cfs[kContribs]));
    for (cit->Seek(prefix); cit->Valid() && cit->key().starts_with(prefix); cit->Next()) {
      RETURN_IF_ERROR(ParseRecord(cit->value().ToString(), round.add_contributions(),
                                  "contribution"));
    }
    RETURN_IF_ERROR(FromRocks(cit->status(), "scan contributions"));
  }
  return state;
}

absl::Status Store::PutBaseChunk(uint64_t version, uint32_t tensor, uint64_t chunk,
                                 absl::string_view data) {
  return FromRocks(impl_->db->Put(impl_->chunk_opts, impl_->cfs[kBases],
                                  keys::BaseChunk(version, tensor, chunk),
                                  rocksdb::Slice(data.data(), data.size())),
                   "write base chunk");
}

absl::StatusOr<std::string> Store::GetBaseChunk(uint64_t version, uint32_t tensor,
                                                uint64_t chunk) {
  return impl_->Get(kBases, keys::BaseChunk(version, tensor, chunk),
                    absl::StrCat("base v", version, " tensor #", tensor, " chunk ", chunk));
}

absl::StatusOr<std::string> Store::GetBaseSha256(uint64_t version) {
  return impl_->Get(kMeta, keys::BaseSha(version), absl::StrCat("base v", version, " sha"));
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
    batch.Delete(impl_->cfs[kContribs], UploadKey(upload_id));
    batch.Delete(impl_->cfs[kContribs], ProgressKey(upload_id));
  }
  batch.Put(impl_->cfs[kContribs], keys::ContributionRecord(round, info.id()),
            info.SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "commit contribution");
}

absl::Status Store::CommitInit(const v1::ModelInfo& model, absl::string_view base_sha256,
                               const v1::RoundInfo& first_round, const AuditBatch& audit) {
  RETURN_IF_ERROR(impl_->FlushFamily(kBases));
  rocksdb::WriteBatch batch;
  std::string zero;
  keys::PutU64(&zero, 0);
  batch.Put(impl_->cfs[kMeta], keys::kModel, model.SerializeAsString());
  batch.Put(impl_->cfs[kMeta], keys::BaseSha(0),
            rocksdb::Slice(base_sha256.data(), base_sha256.size()));
  batch.Put(impl_->cfs[kMeta], keys::kCurrentBase, zero);
  batch.Put(impl_->cfs[kRounds], keys::Round(first_round.number()),
            first_round.SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "commit init");
}

absl::Status Store::CommitRoundClose(const v1::RoundInfo& closed, uint64_t new_base,
                                     absl::string_view new_base_sha256,
                                     const v1::RoundInfo& next_round, const AuditBatch& audit) {
  RETURN_IF_ERROR(impl_->FlushFamily(kBases));
  v1::RoundInfo closed_record = closed;
  closed_record.clear_contributions();  // they live in the contribs family
  std::string version;
  keys::PutU64(&version, new_base);
  rocksdb::WriteBatch batch;
  for (const auto& c : closed.contributions()) {
    batch.Put(impl_->cfs[kContribs], keys::ContributionRecord(closed.number(), c.id()),
              c.SerializeAsString());
  }
  batch.Put(impl_->cfs[kRounds], keys::Round(closed.number()),
            closed_record.SerializeAsString());
  batch.Put(impl_->cfs[kMeta], keys::BaseSha(new_base),
            rocksdb::Slice(new_base_sha256.data(), new_base_sha256.size()));
  batch.Put(impl_->cfs[kMeta], keys::kCurrentBase, version);
  batch.Put(impl_->cfs[kRounds], keys::Round(next_round.number()),
            next_round.SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "commit round close");
}

absl::Status Store::CommitRollback(const v1::RoundInfo& closed, const std::vector<uint64_t>& bad,
                                   absl::string_view reason, uint64_t good_base,
                                   const v1::RoundInfo& next_round, const AuditBatch& audit) {
  v1::RoundInfo closed_record = closed;
  closed_record.clear_contributions();
  std::string version;
  keys::PutU64(&version, good_base);
  rocksdb::WriteBatch batch;
  batch.Put(impl_->cfs[kRounds], keys::Round(closed.number()), closed_record.SerializeAsString());
  for (uint64_t v : bad) {
    batch.Put(impl_->cfs[kMeta], absl::StrCat("bad_base/", v),
              rocksdb::Slice(reason.data(), reason.size()));
  }
  batch.Put(impl_->cfs[kMeta], keys::kCurrentBase, version);
  batch.Put(impl_->cfs[kRounds], keys::Round(next_round.number()),
            next_round.SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "commit rollback");
}

absl::Status Store::FlushContributions() { return impl_->FlushFamily(kContribs); }

absl::Status Store::PutUpload(const std::string& upload_id,
                              const v1::UploadSessionRecord& rec) {
  return FromRocks(impl_->db->Put(impl_->chunk_opts, impl_->cfs[kContribs],
                                  UploadKey(upload_id), rec.SerializeAsString()),
                   "write upload session");
}

absl::Status Store::PutUploadProgress(const std::string& upload_id,
                                      const v1::UploadSessionRecord& progress) {
  v1::UploadSessionRecord p;
  p.set_next_tensor(progress.next_tensor());
  p.set_next_offset(progress.next_offset());
  p.set_bytes_stored(progress.bytes_stored());
  p.set_sum_sq(progress.sum_sq());
  return FromRocks(impl_->db->Put(impl_->chunk_opts, impl_->cfs[kContribs],
                                  ProgressKey(upload_id), p.SerializeAsString()),
                   "write upload progress");
}

absl::Status Store::DeleteUpload(const std::string& upload_id) {
  rocksdb::WriteBatch batch;
  batch.Delete(impl_->cfs[kContribs], UploadKey(upload_id));
  batch.Delete(impl_->cfs[kContribs], ProgressKey(upload_id));
  return FromRocks(impl_->db->Write(impl_->commit_opts, &batch), "delete upload session");
}

absl::Status Store::PutToken(const StoredToken& token, const AuditBatch& audit) {
  rocksdb::WriteBatch batch;
  batch.Put(impl_->cfs[kMeta], absl::StrCat("token/", token.info.name()),
            token.secret_sha256 + token.info.SerializeAsString());
  return impl_->WriteWithAudit(&batch, audit, impl_->commit_opts, "store token");
}

absl::StatusOr<std::vector<StoredToken>> Store::LoadTokens() {
  std::vector<StoredToken> out;
  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cfs[kMeta]));
  for (it->Seek("token/"); it->Valid() && it->key().starts_with("token/"); it->Next()) {
    std::string v = it->value().ToString();
    StoredToken t;
    if (v.size() < 32 || !t.info.ParseFromString(v.substr(32))) {
      return absl::DataLossError("storage: corrupt token record");
    }
    t.secret_sha256 = v.substr(0, 32);
    out.push_back(std::move(t));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scan tokens"));
  return out;
}

absl::Status Store::AppendAudit(const AuditBatch& audit) {
  rocksdb::WriteBatch batch;
  return impl_->WriteWithAudit(&batch, audit, impl_->audit_opts, "append audit");
}

absl::StatusOr<std::vector<v1::AuditRecord>> Store::ReadAudit(uint64_t after_seq, size_t limit) {
  std::vector<v1::AuditRecord> out;
  std::unique_ptr<rocksdb::Iterator> it(
      impl_->db->NewIterator(rocksdb::ReadOptions(), impl_->cfs[kAudit]));
  for (it->Seek(keys::Round(after_seq + 1)); it->Valid() && out.size() < limit; it->Next()) {
    v1::AuditRecord rec;
    RETURN_IF_ERROR(ParseRecord(it->value().ToString(), &rec, "audit"));
    out.push_back(std::move(rec));
  }
  RETURN_IF_ERROR(FromRocks(it->status(), "scan audit"));
  return out;
}

absl::Status Store::DeleteBaseData(uint64_t version) {
  return impl_->DeleteRange(kBases, keys::BaseVersionPrefix(version),
                            keys::BaseVersionPrefix(version + 1));
}

}  // namespace coldfuse::storage
