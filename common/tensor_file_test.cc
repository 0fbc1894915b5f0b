#include "common/tensor_file.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/model_spec.h"
#include "common/posix_file.h"
#include "common/sha256.h"
#include "gmock/gmock.h"
#include "common/test_tensors.h"
#include "gtest/gtest.h"

namespace coldfuse {
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

class TensorFileTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "tensor_file_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
    path_ = (fs::path(dir_) / "state.ctf").string();
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

  std::string WrittenSample() {
    EXPECT_TRUE(WriteTensorFile(path_, Sample()).ok());
    return *ReadFileToString(path_);
  }

  void ExpectDataLoss(const std::string& contents, const std::string& what) {
    ASSERT_TRUE(WriteFileAtomic(path_, contents).ok());
    auto r = ReadTensorFile(path_);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kDataLoss) << what << ": " << r.status();
    if (!r.ok()) EXPECT_THAT(r.status().message(), HasSubstr(path_)) << what;
  }

  std::string dir_;
  std::string path_;
};

TEST_F(TensorFileTest, RoundTrip) {
  std::vector<HostTensor> in = Sample();
  ASSERT_TRUE(WriteTensorFile(path_, in).ok());
  auto out = ReadTensorFile(path_);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), in.size());
  for (size_t i = 0; i < in.size(); ++i) {
    EXPECT_EQ((*out)[i].spec.SerializeAsString(), in[i].spec.SerializeAsString()) << i;
    EXPECT_TRUE((*out)[i].data == in[i].data) << i;
  }
}

TEST_F(TensorFileTest, FollowsTheDocumentedLayout) {
  std::vector<HostTensor> in = Sample();
  std::string file = WrittenSample();
  std::string manifest = ManifestOf(in).SerializeAsString();
  std::string data;
  for (const auto& t : in) data += t.data;
  EXPECT_TRUE(file == Layout(manifest, data));
}

TEST_F(TensorFileTest, WriteIsAtomicAndLeavesNoTempFiles) {
  ASSERT_TRUE(WriteTensorFile(path_, Sample()).ok());
  std::vector<HostTensor> second = {MakeTensor("other", v1::F32, {5}, 9)};
  ASSERT_TRUE(WriteTensorFile(path_, second).ok());
  EXPECT_EQ(DirEntries(), std::vector<std::string>{"state.ctf"});
  auto out = ReadTensorFile(path_);
  ASSERT_TRUE(out.ok()) << out.status();
  ASSERT_EQ(out->size(), 1u);
  EXPECT_EQ((*out)[0].spec.name(), "other");
  EXPECT_TRUE((*out)[0].data == second[0].data);
}

TEST_F(TensorFileTest, WriteRejectsWrongSizedDataAndKeepsTheOldFile) {
  ASSERT_TRUE(WriteTensorFile(path_, Sample()).ok());
  std::vector<HostTensor> bad = Sample();
  bad[1].data.pop_back();
  absl::Status s = WriteTensorFile(path_, bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("body.0.bias"));
  EXPECT_EQ(DirEntries(), std::vector<std::string>{"state.ctf"});
  EXPECT_TRUE(ReadTensorFile(path_).ok());
}

TEST_F(TensorFileTest, WhatWriteAcceptsReadAccepts) {
  std::vector<HostTensor> dup = {MakeTensor("w", v1::F32, {2}, 1),
                                 MakeTensor("w", v1::F32, {2}, 2)};
  for (const auto& tensors : {dup, std::vector<HostTensor>{}}) {
    absl::Status w = WriteTensorFile(path_, tensors);
    if (w.ok()) {
      EXPECT_TRUE(ReadTensorFile(path_).ok()) << "written file does not read back";
    } else {
      EXPECT_EQ(w.code(), absl::StatusCode::kInvalidArgument) << w;
    }
  }
}

TEST_F(TensorFileTest, MissingFileIsNotFound) {
  EXPECT_EQ(ReadTensorFile(path_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ReadFileToString(path_).status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(ReadTensorFile(path_).status().message(), HasSubstr(path_));
}

TEST_F(TensorFileTest, TruncatedFileIsDataLoss) {
  std::string file = WrittenSample();
  for (size_t len : {size_t{0}, size_t{7}, size_t{8}, size_t{16}, size_t{47}, file.size() / 2,
                     file.size() - 33, file.size() - 32, file.size() - 1}) {
    ExpectDataLoss(file.substr(0, len), "truncated to " + std::to_string(len));
  }
}

TEST_F(TensorFileTest, TrailingBytesAreDataLoss) {
  ExpectDataLoss(WrittenSample() + std::string(1, '\0'), "one extra byte");
}

TEST_F(TensorFileTest, FlippedByteIsDataLoss) {
  std::string file = WrittenSample();
  size_t data_start = 16 + ManifestOf(Sample()).ByteSizeLong();
  for (size_t pos : {data_start, data_start + 100, file.size() - 33, file.size() - 1}) {
    std::string bad = file;
    bad[pos] ^= 0x01;
    ExpectDataLoss(bad, "flipped byte " + std::to_string(pos));
    auto r = ReadTensorFile(path_);
    EXPECT_THAT(r.status().message(), HasSubstr("checksum"));
  }
}

TEST_F(TensorFileTest, BadMagicIsDataLoss) {
  std::string file = WrittenSample();
  file[7] = '2';
  ExpectDataLoss(file, "CFTENSR2");
  ExpectDataLoss(std::string(100, 'x'), "garbage");
}

TEST_F(TensorFileTest, ManifestLengthOutOfRangeIsDataLossWithoutAllocating) {
  std::string file = WrittenSample();
  uint64_t mlen = ManifestOf(Sample()).ByteSizeLong();
  uint64_t body = file.size() - 8 - 8 - 32;
  for (uint64_t bad : {~uint64_t{0}, uint64_t{1} << 40, uint64_t{1} << 63, body + 1,
                       uint64_t{64 << 20} + 1, mlen + 1, mlen - 1, uint64_t{0}}) {
    std::string f = file;
    std::memcpy(f.data() + 8, &bad, 8);
    ExpectDataLoss(f, "manifest length " + std::to_string(bad));
  }
}

TEST_F(TensorFileTest, ManifestThatDoesNotParseOrValidateIsDataLoss) {
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

TEST_F(TensorFileTest, ManifestClaimingHugeTensorsIsDataLoss) {
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
}  // namespace coldfuse
