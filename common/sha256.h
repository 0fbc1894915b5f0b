// Incremental SHA-256 over OpenSSL's EVP interface. Not thread-safe: one per stream.
#ifndef COLDFUSE_COMMON_SHA256_H_
#define COLDFUSE_COMMON_SHA256_H_

#include <memory>
#include <string>

#include "absl/strings/string_view.h"

namespace coldfuse {

class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;

  void Update(absl::string_view data);
  // The 32-byte digest. The object must not be updated afterwards.
  std::string Finish();

  // One-shot digest of `data`.
  static std::string Of(absl::string_view data);

 private:
  struct Ctx;
  std::unique_ptr<Ctx> ctx_;
};

// Lower-case hexadecimal of raw bytes.
std::string ToHex(absl::string_view bytes);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_SHA256_H_
