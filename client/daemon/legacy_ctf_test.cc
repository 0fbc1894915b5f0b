// The .ctf reader that converts old state folders: files are built here from the
// documented layout (nothing writes the format any more), and every kind of damage is
// DATA_LOSS naming the file, found before anything is allocated from a bad size.
#include "client/daemon/legacy_ctf.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/posix_file.h"
#include "common/sha256.h"
#include "common/test_tensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse::daemon {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::vector<HostTensor> Sample() {
  return {MakeTensor("body.0.weight", v1::F32, {16, 8}, 1),
          MakeTensor("body.0.bias", v1::F16, {16}, 2), MakeTensor("empty", v1::BF16, {0, 3}, 3),
          MakeTensor("scalar", v1::F64, {}, 4)};
}

std::string U64(uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }

// A file in the documented layout, with any manifest and data.
std::string Layout(const std::string& manifest, const std::string& data) {
  return "CFTENSR1" + U64(manifest.size()) + manifest + data + Sha256::Of(data);
}

// What the old WriteTensorFile wrote for `tensors`.
std::string LegacyFile(const std::vector<HostTensor>& tensors) {
  std::string data;
  for (const auto& t : tensors) data += t.data;
  return Layout(ManifestOf(tensors).SerializeAsString(), data);
}

class LegacyCtfTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "legacy_ctf_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    path_ = (fs::path(dir_) / "state.ctf").string();
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  void ExpectDataLoss(const std::string& contents, const std::string& what) {
    ASSERT_TRUE(WriteFileAtomic(path_, contents).ok());
    auto r = ReadLegacyTensorFile(path_);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << what << ": " << r.status();
    if (!r.ok()) {
      EXPECT_THAT(r.status().message(), HasSubstr(path_)) << what;
    }
  }

  std::string dir_;
  std::string path_;
};

TEST_F(LegacyCtfTest, ReadsWhatTheOldReleaseWrote) {
  std::vector<HostTensor> in = Sample();
  ASSERT_TRUE(WriteFileAtomic(path_, LegacyFile(in)).ok());
  auto out = ReadLegacyTensorFile(path_);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ((*out)[i].spec.SerializeAsString(), in[i].spec.SerializeAsString()) << i;
    EXPECT_TRUE((*out)[i].data == in[i].data) << i;
  }
}

TEST_F(LegacyCtfTest, MissingFileIsNotFound) {
  auto r = ReadLegacyTensorFile(path_);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(r.status().message(), HasSubstr(path_));
}

TEST_F(LegacyCtfTest, TruncatedFileIsDataLoss) {
  std::string file = LegacyFile(Sample());
  for (size_t len : {size_t{0}, size_t{7}, size_t{8}, size_t{16}, size_t{47}, file.size() / 2,
                     file.size() - 33, file.size() - 32, file.size() - 1}) {
    ExpectDataLoss(file.substr(0, len), "truncated to " + std::to_string(len));
  }
}

TEST_F(LegacyCtfTest, TrailingBytesAreDataLoss) {
  ExpectDataLoss(LegacyFile(Sample()) + std::string(1, '\0'), "one extra byte");
}

TEST_F(LegacyCtfTest, FlippedByteIsDataLoss) {
  std::string file = LegacyFile(Sample());
  size_t data_start = 16 + ManifestOf(Sample()).ByteSizeLong();
  for (size_t pos : {data_start, data_start + 100, file.size() - 33, file.size() - 1}) {
    std::string bad = file;
    bad[pos] ^= 0x01;
    ExpectDataLoss(bad, "flipped byte " + std::to_string(pos));
    EXPECT_THAT(ReadLegacyTensorFile(path_).status().message(), HasSubstr("checksum"));
  }
}

TEST_F(LegacyCtfTest, BadMagicIsDataLoss) {
  std::string file = LegacyFile(Sample());
  file[7] = '2';
  ExpectDataLoss(file, "CFTENSR2");
  ExpectDataLoss(std::string(100, 'x'), "garbage");
}

TEST_F(LegacyCtfTest, ManifestLengthOutOfRangeIsDataLossWithoutAllocating) {
  std::string file = LegacyFile(Sample());
  uint64_t mlen = ManifestOf(Sample()).ByteSizeLong();
  uint64_t body = file.size() - 8 - 8 - 32;
  for (uint64_t bad : {~uint64_t{0}, uint64_t{1} << 40, uint64_t{1} << 63, body + 1,
                       uint64_t{64 << 20} + 1, mlen + 1, mlen - 1, uint64_t{0}}) {
    std::string f = file;
    std::memcpy(f.data() + 8, &bad, 8);
    ExpectDataLoss(f, "manifest length " + std::to_string(bad));
  }
}

TEST_F(LegacyCtfTest, ManifestThatDoesNotParseOrValidateIsDataLoss) {
  ExpectDataLoss(Layout("\xff\xff\xff", ""), "unparseable manifest");
  ExpectDataLoss(Layout("", ""), "empty manifest");
  v1::Manifest dup;
  for (int i = 0; i < 2; ++i) {
    auto* t = dup.add_tensors();
    t->set_name("w");
    t->set_dtype(v1::F32);
    t->add_shape(1);
  }
  ExpectDataLoss(Layout(dup.SerializeAsString(), std::string(8, '\0')), "duplicate names");
}

TEST_F(LegacyCtfTest, ManifestClaimingHugeTensorsIsDataLoss) {
  // A well-formed manifest promising 1 TiB, and a file that holds 16 bytes.
  v1::Manifest m;
  auto* t = m.add_tensors();
  t->set_name("huge");
  t->set_dtype(v1::F32);
  t->add_shape(int64_t{1} << 38);
  ExpectDataLoss(Layout(m.SerializeAsString(), std::string(16, '\0')), "1 TiB manifest");
  t->set_shape(0, int64_t{1} << 39);  // over the limit
  ExpectDataLoss(Layout(m.SerializeAsString(), std::string(16, '\0')), "2 TiB manifest");
}

}  // namespace
}  // namespace coldfuse::daemon
