#include "server/storage/migrate.h"

#include <rocksdb/write_batch.h>

#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/logging.h"
#include "common/status_macros.h"
#include "server/storage/keys.h"
#include "server/storage/records.h"
#include "server/storage/rocks_util.h"

namespace coldfuse::storage {
namespace {

// Calls fn(key, value) for every key of `cf` that starts with `prefix`.
template <typename Fn>
absl::Status ForEach(rocksdb::DB* db, rocksdb::ColumnFamilyHandle* cf, absl::string_view prefix,
                     Fn fn) {
  std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf));
  for (it->Seek(rocksdb::Slice(prefix.data(), prefix.size()));
       it->Valid() && it->key().starts_with(rocksdb::Slice(prefix.data(), prefix.size()));
       it->Next()) {
    RETURN_IF_ERROR(fn(View(it->key()), View(it->value())));
  }
  return FromRocks(it->status(), "scan for migration");
}

bool IsEmpty(rocksdb::DB* db, const std::vector<rocksdb::ColumnFamilyHandle*>& cfs) {
  for (auto* cf : cfs) {
    std::unique_ptr<rocksdb::Iterator> it(db->NewIterator(rocksdb::ReadOptions(), cf));
    it->SeekToFirst();
    if (it->Valid()) return false;
  }
  return true;
}

std::string Serialized(const google::protobuf::MessageLite& m) { return m.SerializeAsString(); }

// Format 1 -> 2: the API's messages as records become records.proto's; text meta keys
// become keys.h's. Every record is rewritten in one batch, so a crash leaves format 1.
absl::Status MigrateFormat1(rocksdb::DB* db, const std::vector<rocksdb::ColumnFamilyHandle*>& cfs) {
  namespace f1 = keys::format1;
  rocksdb::WriteBatch batch;
  size_t records = 0;
  auto rewrite = [&](Cf cf, absl::string_view old_key, const std::string& new_key,
                     const std::string& value) {
    batch.Delete(cfs[cf], rocksdb::Slice(old_key.data(), old_key.size()));
    batch.Put(cfs[cf], new_key, value);
    ++records;
  };
  // meta
  RETURN_IF_ERROR(ForEach(db, cfs[kMeta], "", [&](absl::string_view k, absl::string_view v) {
    if (k == f1::kModel) {
      v1::ModelInfo m;
      RETURN_IF_ERROR(ParseRecord(v, &m, "model (format 1)"));
      rewrite(kMeta, k, keys::Model(), Serialized(ToRecord(m)));
    } else if (k == f1::kCurrentBase) {
      rewrite(kMeta, k, keys::CurrentBase(), std::string(v));
    } else if (auto ver = f1::ParseDecimal(f1::kBaseShaPrefix, k)) {
      rewrite(kMeta, k, keys::BaseSha(*ver), std::string(v));
    } else if (auto bad = f1::ParseDecimal(f1::kBadBasePrefix, k)) {
      rewrite(kMeta, k, keys::BadBase(*bad), std::string(v));
    } else if (k.substr(0, sizeof(f1::kTokenPrefix) - 1) == f1::kTokenPrefix) {
      StoredToken t;
      if (v.size() < 32 || !t.info.ParseFromArray(v.data() + 32, static_cast<int>(v.size() - 32))) {
        return absl::DataLossError("storage: corrupt token record (format 1)");
      }
      t.secret_sha256 = std::string(v.substr(0, 32));
      rewrite(kMeta, k, keys::Token(t.info.name()), Serialized(ToRecord(t)));
    } else {
      return absl::DataLossError(
          absl::StrCat("storage: unknown meta key '", k, "' in a format 1 store"));
    }
    return absl::OkStatus();
  }));
  // contribs: contribution records and upload sessions (chunks keep their keys)
  RETURN_IF_ERROR(ForEach(db, cfs[kContribs], keys::ContributionRecordPrefix(),
                          [&](absl::string_view k, absl::string_view v) {
                            v1::ContributionInfo info;
                            RETURN_IF_ERROR(ParseRecord(v, &info, "contribution (format 1)"));
                            // Format 1 had no asynchronous contributions: leave their
                            // fields unset (read as trained from the round's base).
                            ContributionRecord rec = ToRecord(info);
                            rec.clear_trained_from_base();
                            rec.clear_staleness_weight();
                            rec.clear_upload_round();
                            rewrite(kContribs, k, std::string(k), Serialized(rec));
                            return absl::OkStatus();
                          }));
  RETURN_IF_ERROR(
      ForEach(db, cfs[kContribs], keys::UploadSessionPrefix(),
              [&](absl::string_view k, absl::string_view v) {
                LegacyUploadSession legacy;
                RETURN_IF_ERROR(ParseRecord(v, &legacy, "upload session (format 1)"));
                StoredUpload u;
                if (!u.header.ParseFromString(legacy.header())) {
                  return absl::DataLossError("storage: corrupt upload session header (format 1)");
                }
                u.contribution_id = legacy.contribution_id();
                u.progress = {legacy.next_tensor(), legacy.next_offset(), legacy.bytes_stored(),
                              legacy.sum_sq()};
                // A separate progress record (written by releases after e10cf01's split) is newer.
                const std::string pkey = keys::UploadProgress(u.header.upload_id());
                std::string pvalue;
                rocksdb::Status ps = db->Get(rocksdb::ReadOptions(), cfs[kContribs], pkey, &pvalue);
                if (ps.ok()) {
                  LegacyUploadSession p;
                  RETURN_IF_ERROR(ParseRecord(pvalue, &p, "upload progress (format 1)"));
                  u.progress = {p.next_tensor(), p.next_offset(), p.bytes_stored(), p.sum_sq()};
                } else if (!ps.IsNotFound()) {
                  return FromRocks(ps, "read upload progress");
                }
                rewrite(kContribs, k, std::string(k), Serialized(ToRecord(u)));
                rewrite(kContribs, pkey, pkey, Serialized(ToRecord(u.progress)));
                return absl::OkStatus();
              }));
  // rounds, audit
  RETURN_IF_ERROR(ForEach(db, cfs[kRounds], "", [&](absl::string_view k, absl::string_view v) {
    v1::RoundInfo round;
    RETURN_IF_ERROR(ParseRecord(v, &round, "round (format 1)"));
    rewrite(kRounds, k, std::string(k), Serialized(ToRecord(round)));
    return absl::OkStatus();
  }));
  RETURN_IF_ERROR(ForEach(db, cfs[kAudit], "", [&](absl::string_view k, absl::string_view v) {
    v1::AuditRecord rec;
    RETURN_IF_ERROR(ParseRecord(v, &rec, "audit (format 1)"));
    rewrite(kAudit, k, std::string(k), Serialized(ToRecord(rec)));
    return absl::OkStatus();
  }));
  batch.Put(cfs[kMeta], keys::FormatVersion(), keys::EncodeU64(keys::kFormatVersion));
  rocksdb::WriteOptions synced;
  synced.sync = true;
  RETURN_IF_ERROR(FromRocks(db->Write(synced, &batch), "write the migrated records"));
  CF_LOG(WARNING) << "storage: migrated the data folder from format 1 to format "
                  << keys::kFormatVersion << " (" << records << " records rewritten)";
  return absl::OkStatus();
}

}  // namespace

absl::Status MigrateToCurrentFormat(rocksdb::DB* db,
                                    const std::vector<rocksdb::ColumnFamilyHandle*>& cfs) {
  std::string value;
  rocksdb::Status s = db->Get(rocksdb::ReadOptions(), cfs[kMeta], keys::FormatVersion(), &value);
  if (s.IsNotFound()) {
    if (!IsEmpty(db, cfs)) return MigrateFormat1(db, cfs);
    rocksdb::WriteOptions synced;
    synced.sync = true;
    return FromRocks(
        db->Put(synced, cfs[kMeta], keys::FormatVersion(), keys::EncodeU64(keys::kFormatVersion)),
        "write the format version");
  }
  RETURN_IF_ERROR(FromRocks(s, "read the format version"));
  std::optional<uint64_t> version = keys::DecodeU64(value);
  if (!version.has_value()) return absl::DataLossError("storage: corrupt format version");
  if (*version > keys::kFormatVersion) {
    return absl::FailedPreconditionError(
        absl::StrCat("storage: the data folder has format ", *version,
                     ", written by a newer coldfused; "
                     "this one reads format ",
                     keys::kFormatVersion, " and older: run the newer release"));
  }
  if (*version == 2) {
    // Format 3 only adds records and keys (optimizer state, 'O'): nothing to rewrite. The
    // version moves so that an older release refuses the folder rather than fuse a model
    // with an outer optimizer as a plain one.
    rocksdb::WriteOptions synced;
    synced.sync = true;
    RETURN_IF_ERROR(FromRocks(
        db->Put(synced, cfs[kMeta], keys::FormatVersion(), keys::EncodeU64(keys::kFormatVersion)),
        "write the format version"));
    CF_LOG(WARNING) << "storage: the data folder is now format " << keys::kFormatVersion
                    << " (from 2; nothing rewritten)";
  }
  return absl::OkStatus();  // current (format 1 stores have no version key)
}

}  // namespace coldfuse::storage
