// Helpers shared by the server's unit tests: a temporary data folder and conversions
// between float values and little-endian tensor bytes. Test-only; not thread-safe.
#ifndef COLDFUSE_SERVER_ROUNDS_TEST_UTIL_H_
#define COLDFUSE_SERVER_ROUNDS_TEST_UTIL_H_

#include <gtest/gtest.h>
#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace coldfuse::testing_util {

// A fresh folder under ::testing::TempDir(), removed with everything in it on destruction.
class TempDir {
 public:
  TempDir() {
    std::string pattern = ::testing::TempDir() + "/coldfuse_test_XXXXXX";
    std::vector<char> buf(pattern.begin(), pattern.end());
    buf.push_back('\0');
    if (mkdtemp(buf.data()) != nullptr) path_ = buf.data();
    EXPECT_FALSE(path_.empty()) << "mkdtemp failed for " << pattern;
  }
  ~TempDir() {
    std::error_code ec;
    if (!path_.empty()) std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;

  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// Little-endian bytes of `values` (x86 and ARM hosts are little-endian).
template <typename T>
std::string BytesOf(const std::vector<T>& values) {
  std::string out(values.size() * sizeof(T), '\0');
  if (!values.empty()) std::memcpy(out.data(), values.data(), out.size());
  return out;
}

// The values held in little-endian `bytes`. REQUIRES: bytes.size() % sizeof(T) == 0.
template <typename T>
std::vector<T> ValuesOf(absl::string_view bytes) {
  std::vector<T> out(bytes.size() / sizeof(T));
  if (!out.empty()) std::memcpy(out.data(), bytes.data(), out.size() * sizeof(T));
  return out;
}

}  // namespace coldfuse::testing_util

#endif  // COLDFUSE_SERVER_ROUNDS_TEST_UTIL_H_
