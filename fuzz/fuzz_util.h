// Helpers shared by the fuzz targets in fuzz/: a checked assertion that aborts (so both
// libFuzzer and the standalone driver keep the input), a reader that turns the fuzz input
// into choices and byte strings, and scratch files for the APIs that take a path.
// Not thread-safe (fuzz targets run one input at a time).
#ifndef COLDFUSE_FUZZ_FUZZ_UTIL_H_
#define COLDFUSE_FUZZ_FUZZ_UTIL_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <type_traits>

#include "absl/strings/string_view.h"

// Aborts with `cond`, `msg` (any expression convertible to std::string, evaluated only on
// failure) and the place, unless `cond` holds. Used for the invariants a target asserts.
#define FUZZ_CHECK(cond, msg)                                              \
  do {                                                                     \
    if (!(cond)) ::coldfuse::fuzz::Fail(__FILE__, __LINE__, #cond, (msg)); \
  } while (0)

namespace coldfuse::fuzz {

[[noreturn]] void Fail(const char* file, int line, const char* cond, const std::string& msg);

// Reads the fuzz input from the front: small choices first, then byte strings. Past the
// end every choice is its lowest value and every string is empty, so any input is valid.
class FuzzInput {
 public:
  FuzzInput(const uint8_t* data, size_t size)
      : data_(reinterpret_cast<const char*>(data)), size_(size) {}

  size_t remaining() const { return size_ - pos_; }

  uint8_t Byte() { return pos_ < size_ ? static_cast<uint8_t>(data_[pos_++]) : 0; }
  bool Bool() { return (Byte() & 1) != 0; }

  // A value in [lo, hi] from as few bytes as the range needs. REQUIRES: lo <= hi.
  template <typename T>
  T IntInRange(T lo, T hi) {
    static_assert(std::is_integral_v<T>);
    using U = std::make_unsigned_t<T>;
    const uint64_t range = static_cast<uint64_t>(static_cast<U>(hi) - static_cast<U>(lo));
    uint64_t v = 0;
    for (uint64_t r = range; r != 0; r >>= 8) v = (v << 8) | Byte();
    if (range != UINT64_MAX) v %= range + 1;
    return static_cast<T>(static_cast<U>(lo) + static_cast<U>(v));
  }

  // Up to `n` bytes (fewer at the end).
  absl::string_view Bytes(size_t n) {
    n = n < remaining() ? n : remaining();
    absl::string_view out(data_ + pos_, n);
    pos_ += n;
    return out;
  }
  // A string of 0..max_len bytes, its length read first.
  absl::string_view LengthPrefixed(size_t max_len) { return Bytes(IntInRange<size_t>(0, max_len)); }
  absl::string_view Rest() { return Bytes(remaining()); }

 private:
  const char* data_;
  size_t size_;
  size_t pos_ = 0;
};

// A scratch folder for this process (under /dev/shm when it exists, so writes stay in
// memory), removed at a normal exit. `ScratchPath("x.json")` names a file in it;
// `WriteScratchFile` writes one (no fsync) and returns its path.
const std::string& ScratchDir();
std::string ScratchPath(absl::string_view name);
std::string WriteScratchFile(absl::string_view name, absl::string_view contents);

// Splits `text` at the first `sep`: the part before and (if `sep` occurs) the part after.
void SplitOnce(absl::string_view text, absl::string_view sep, absl::string_view* before,
               absl::string_view* after);

}  // namespace coldfuse::fuzz

#endif  // COLDFUSE_FUZZ_FUZZ_UTIL_H_
