// Conversions between the API's messages (coldfuse.v1) and the storage-only records of
// records.proto. Stateless and thread-safe.
#ifndef COLDFUSE_SERVER_STORAGE_RECORDS_H_
#define COLDFUSE_SERVER_STORAGE_RECORDS_H_

#include <cstdint>
#include <string>

#include "coldfuse/v1/coldfuse.pb.h"
#include "server/storage/records.pb.h"
#include "server/storage/store.h"

namespace coldfuse::storage {

ModelRecord ToRecord(const v1::ModelInfo& model);
v1::ModelInfo FromRecord(const ModelRecord& r);

ContributionRecord ToRecord(const v1::ContributionInfo& info);
// Fields a record written before asynchronous contributions lacks are filled in from
// its round: trained from `round_base`, weight 1, chunks under `round`.
v1::ContributionInfo FromRecord(const ContributionRecord& r, uint64_t round, uint64_t round_base);

// The round without its contributions (they have records of their own).
RoundRecord ToRecord(const v1::RoundInfo& round);
v1::RoundInfo FromRecord(const RoundRecord& r);

EvaluationRecord ToRecord(const v1::Evaluation& e);
v1::Evaluation FromRecord(const EvaluationRecord& r);

TokenRecord ToRecord(const StoredToken& token);
StoredToken FromRecord(const TokenRecord& r);

// The sequence number is the record's key.
// The most bytes an audit record's actor or action, and its detail, hold once escaped
// (common/printable.h); longer text is cut and says its original size.
inline constexpr size_t kAuditNameMaxBytes = 128;
inline constexpr size_t kAuditDetailMaxBytes = 1024;
AuditEntry ToRecord(const v1::AuditRecord& rec);
v1::AuditRecord FromRecord(const AuditEntry& r, uint64_t seq);

UploadSession ToRecord(const StoredUpload& upload);
// Progress is a record of its own (UploadProgress).
StoredUpload FromRecord(const UploadSession& r);

UploadProgress ToRecord(const StoredUpload::Progress& progress);
StoredUpload::Progress FromRecord(const UploadProgress& r);

}  // namespace coldfuse::storage

#endif  // COLDFUSE_SERVER_STORAGE_RECORDS_H_
