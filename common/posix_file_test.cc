#include "common/posix_file.h"

#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace coldfuse {
namespace {

namespace fs = std::filesystem;

class PosixFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "posix_file_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    path_ = (fs::path(dir_) / "state").string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::vector<std::string> DirEntries() const {
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.push_back(e.path().filename());
    return names;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(PosixFileTest, WriteFileAtomicRoundTripsBinaryContents) {
  std::string contents("a\0b\xff\n", 5);
  ASSERT_TRUE(WriteFileAtomic(path_, contents).ok());
  EXPECT_EQ(*ReadFileToString(path_), contents);
  ASSERT_TRUE(WriteFileAtomic(path_, "").ok());
  EXPECT_EQ(*ReadFileToString(path_), "");
  std::string big(3 << 16, 'q');  // more than one read buffer
  big[70000] = 'r';
  ASSERT_TRUE(WriteFileAtomic(path_, big).ok());
  EXPECT_TRUE(*ReadFileToString(path_) == big);
  EXPECT_EQ(DirEntries(), std::vector<std::string>{"state"});  // no temp files left
}

TEST_F(PosixFileTest, WriteFileAtomicIntoMissingFolderFailsCleanly) {
  std::string p = (fs::path(dir_) / "no_such_dir" / "x").string();
  absl::Status s = WriteFileAtomic(p, "data");
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(DirEntries().empty());
}

TEST_F(PosixFileTest, ReadingAMissingFileIsNotFoundNamingIt) {
  absl::StatusOr<std::string> r = ReadFileToString(path_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(r.status().message().find(path_), absl::string_view::npos) << r.status();
}

}  // namespace
}  // namespace coldfuse
