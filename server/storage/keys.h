// The key layout of the store, storage format 3: every key of every column family is
// made and parsed here (as LevelDB's dbformat.h does), so no other code spells a key.
// Numbers are big-endian, so RocksDB's byte order is numeric order. Header-only;
// stateless and thread-safe.
//
//   family    key                                   value (records.proto)
//   meta      "V"                                   format version, u64
//             "M"                                   ModelRecord
//             "C"                                   current base version, u64
//             'B' version                           SHA-256 of that base (32 bytes)
//             'X' version                           why that base was rolled back (text)
//             'P' version                           PinRecord: retention keeps that base
//             'R' version                           PrunedBaseRecord: its tensors were removed
//             'T' name                              TokenRecord
//             'E' version task metric k evaluator   EvaluationRecord (task and metric
//                                                   length-prefixed, u32; k u64)
//             'O' version                           OptimizerStateRecord (format 3)
//   bases     version tensor(u32) chunk             <= 1 MiB of tensor bytes
//             version 0xFF slot(u8) tensor chunk    the outer optimizer's state of base
//                                                   chunk (tensor, chunk): F32 (F64 for
//                                                   F64 tensors); inside the version's
//                                                   range, so removing a base removes it
//   contribs  'h' round id                          ContributionRecord
//             'd' round id tensor(u32) chunk        <= 1 MiB of tensor bytes, as sent
//             'u' upload_id                         UploadSession
//             'p' upload_id                         UploadProgress
//   rounds    number                                RoundRecord
//   audit     seq                                   AuditEntry
//
// Format 2 had no 'O' records or state chunks. Format 1 (no "V" key) used the API's messages as
// records and the text meta keys in namespace format1 below; server/storage/migrate.cc rewrites
// such a store.
#ifndef COLDFUSE_SERVER_STORAGE_KEYS_H_
#define COLDFUSE_SERVER_STORAGE_KEYS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace coldfuse::storage::keys {

inline constexpr uint64_t kFormatVersion = 3;

// ---- fixed-width big-endian numbers (keys and u64 values)
inline void PutU64(std::string* s, uint64_t v) {
  for (int i = 7; i >= 0; --i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
inline void PutU32(std::string* s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
// REQUIRES: s.size() >= pos + 8.
inline uint64_t GetU64(absl::string_view s, size_t pos) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(s[pos + i]);
  return v;
}
inline std::string EncodeU64(uint64_t v) {
  std::string s;
  PutU64(&s, v);
  return s;
}
// The value of an 8-byte u64; nullopt for any other size.
inline std::optional<uint64_t> DecodeU64(absl::string_view s) {
  if (s.size() != 8) return std::nullopt;
  return GetU64(s, 0);
}

namespace internal {
inline std::string Tagged(char tag, uint64_t v) {
  std::string k(1, tag);
  PutU64(&k, v);
  return k;
}
inline std::optional<uint64_t> ParseTagged(char tag, absl::string_view k) {
  if (k.size() != 9 || k[0] != tag) return std::nullopt;
  return GetU64(k, 1);
}
inline std::string Tagged(char tag, absl::string_view name) {
  return absl::StrCat(absl::string_view(&tag, 1), name);
}
}  // namespace internal

// ---- meta
inline std::string FormatVersion() { return "V"; }
inline std::string Model() { return "M"; }
inline std::string CurrentBase() { return "C"; }
inline std::string BaseSha(uint64_t version) { return internal::Tagged('B', version); }
inline std::string BadBase(uint64_t version) { return internal::Tagged('X', version); }
inline std::string BadBasePrefix() { return "X"; }
inline std::optional<uint64_t> ParseBadBase(absl::string_view k) {
  return internal::ParseTagged('X', k);
}
inline std::string PinnedBase(uint64_t version) { return internal::Tagged('P', version); }
inline std::string PinnedBasePrefix() { return "P"; }
inline std::optional<uint64_t> ParsePinnedBase(absl::string_view k) {
  return internal::ParseTagged('P', k);
}
inline std::string PrunedBase(uint64_t version) { return internal::Tagged('R', version); }
inline std::string PrunedBasePrefix() { return "R"; }
inline std::optional<uint64_t> ParsePrunedBase(absl::string_view k) {
  return internal::ParseTagged('R', k);
}
inline std::string Token(absl::string_view name) { return internal::Tagged('T', name); }
inline std::string EvaluationPrefix() { return "E"; }
inline std::string Evaluation(uint64_t version, absl::string_view task, absl::string_view metric,
                              uint64_t num_train_examples, absl::string_view evaluator) {
  std::string k = internal::Tagged('E', version);
  PutU32(&k, static_cast<uint32_t>(task.size()));
  k.append(task.data(), task.size());
  PutU32(&k, static_cast<uint32_t>(metric.size()));
  k.append(metric.data(), metric.size());
  PutU64(&k, num_train_examples);
  k.append(evaluator.data(), evaluator.size());
  return k;
}
inline std::string TokenPrefix() { return "T"; }
inline std::string OptimizerState(uint64_t version) { return internal::Tagged('O', version); }

// ---- bases
inline std::string BaseVersionPrefix(uint64_t version) { return EncodeU64(version); }
inline std::string BaseChunk(uint64_t version, uint32_t tensor, uint64_t chunk) {
  std::string k = BaseVersionPrefix(version);
  PutU32(&k, tensor);
  PutU64(&k, chunk);
  return k;
}
// The state chunk of (slot, tensor, chunk) of base `version`. Its 9th byte, 0xFF, sorts
// after every base chunk key of the version (a tensor index is < 2^24, so theirs is 0)
// and before the next version's prefix.
inline std::string OptimizerStateChunk(uint64_t version, uint8_t slot, uint32_t tensor,
                                       uint64_t chunk) {
  std::string k = BaseVersionPrefix(version);
  k.push_back('\xff');
  k.push_back(static_cast<char>(slot));
  PutU32(&k, tensor);
  PutU64(&k, chunk);
  return k;
}
// Past every base chunk key (for a range delete to the end).
inline std::string BasesEnd() { return std::string(24, '\xff'); }
// Past every chunk key of `version`.
inline std::string BaseVersionEnd(uint64_t version) {
  return version == UINT64_MAX ? BasesEnd() : BaseVersionPrefix(version + 1);
}

// ---- contribs
inline std::string ContributionRecordPrefix() { return "h"; }
inline std::string ContributionRoundPrefix(uint64_t round) { return internal::Tagged('h', round); }
inline std::string ContributionRecord(uint64_t round, uint64_t id) {
  std::string k = ContributionRoundPrefix(round);
  PutU64(&k, id);
  return k;
}
// (round, id) of a ContributionRecord key; nullopt for any other key.
inline std::optional<std::pair<uint64_t, uint64_t>> ParseContributionRecord(absl::string_view k) {
  if (k.size() != 17 || k[0] != 'h') return std::nullopt;
  return std::make_pair(GetU64(k, 1), GetU64(k, 9));
}
inline std::string ContributionDataStart() { return "d"; }
inline std::string ContributionDataPrefix(uint64_t round, uint64_t id) {
  std::string k = internal::Tagged('d', round);
  PutU64(&k, id);
  return k;
}
inline std::string ContributionChunk(uint64_t round, uint64_t id, uint32_t tensor, uint64_t chunk) {
  std::string k = ContributionDataPrefix(round, id);
  PutU32(&k, tensor);
  PutU64(&k, chunk);
  return k;
}
// (round, id) of a contribution data key; nullopt for any other key.
inline std::optional<std::pair<uint64_t, uint64_t>> ParseContributionData(absl::string_view k) {
  if (k.size() != 29 || k[0] != 'd') return std::nullopt;
  return std::make_pair(GetU64(k, 1), GetU64(k, 9));
}
inline std::string UploadSessionPrefix() { return "u"; }
inline std::string UploadSession(absl::string_view upload_id) {
  return internal::Tagged('u', upload_id);
}
inline std::string UploadProgress(absl::string_view upload_id) {
  return internal::Tagged('p', upload_id);
}

// ---- rounds, audit
inline std::string Round(uint64_t number) { return EncodeU64(number); }
inline std::optional<uint64_t> ParseRound(absl::string_view k) { return DecodeU64(k); }
inline std::string Audit(uint64_t seq) { return EncodeU64(seq); }
inline std::optional<uint64_t> ParseAudit(absl::string_view k) { return DecodeU64(k); }

// ---- format 1's meta keys, read only by the migration
namespace format1 {
inline constexpr char kModel[] = "model";
inline constexpr char kCurrentBase[] = "current_base";
inline constexpr char kBaseShaPrefix[] = "base_sha/";
inline constexpr char kBadBasePrefix[] = "bad_base/";
inline constexpr char kTokenPrefix[] = "token/";
// The decimal number after `prefix` in `k`; nullopt if `k` is not such a key.
inline std::optional<uint64_t> ParseDecimal(absl::string_view prefix, absl::string_view k) {
  uint64_t v = 0;
  if (k.substr(0, prefix.size()) != prefix || !absl::SimpleAtoi(k.substr(prefix.size()), &v)) {
    return std::nullopt;
  }
  return v;
}
}  // namespace format1

}  // namespace coldfuse::storage::keys

#endif  // COLDFUSE_SERVER_STORAGE_KEYS_H_
