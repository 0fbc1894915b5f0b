// Big-endian key encodings for the store's column families, so RocksDB's byte order
// is numeric order. Header-only; stateless.
#ifndef COLDFUSE_SERVER_STORAGE_KEYS_H_
#define COLDFUSE_SERVER_STORAGE_KEYS_H_

#include <cstdint>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"

namespace coldfuse::storage::keys {

inline void PutU64(std::string* s, uint64_t v) {
  for (int i = 7; i >= 0; --i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
inline void PutU32(std::string* s, uint32_t v) {
  for (int i = 3; i >= 0; --i) s->push_back(static_cast<char>((v >> (8 * i)) & 0xff));
}
inline uint64_t GetU64(absl::string_view s, size_t pos) {
  uint64_t v = 0;
  for (int i = 0; i < 8; ++i) v = (v << 8) | static_cast<unsigned char>(s[pos + i]);
  return v;
}

inline std::string BaseChunk(uint64_t version, uint32_t tensor, uint64_t chunk) {
  std::string k;
  PutU64(&k, version);
  PutU32(&k, tensor);
  PutU64(&k, chunk);
  return k;
}
inline std::string BaseVersionPrefix(uint64_t version) {
  std::string k;
  PutU64(&k, version);
  return k;
}

inline std::string ContributionRecord(uint64_t round, uint64_t id) {
  std::string k = "h";
  PutU64(&k, round);
  PutU64(&k, id);
  return k;
}
inline std::string ContributionDataPrefix(uint64_t round, uint64_t id) {
  std::string k = "d";
  PutU64(&k, round);
  PutU64(&k, id);
  return k;
}
inline std::string ContributionChunk(uint64_t round, uint64_t id, uint32_t tensor,
                                     uint64_t chunk) {
  std::string k = ContributionDataPrefix(round, id);
  PutU32(&k, tensor);
  PutU64(&k, chunk);
  return k;
}

inline std::string Round(uint64_t round) {
  std::string k;
  PutU64(&k, round);
  return k;
}

inline constexpr char kModel[] = "model";
inline constexpr char kCurrentBase[] = "current_base";
inline std::string BaseSha(uint64_t version) { return absl::StrCat("base_sha/", version); }

}  // namespace coldfuse::storage::keys

#endif  // COLDFUSE_SERVER_STORAGE_KEYS_H_
