#include "common/tensor_stream.h"

#include <algorithm>
#include <cstdint>
#include <string>
#include <tuple>
#include <vector>

#include "common/dtype.h"
#include "common/model_spec.h"
#include "common/sha256.h"
#include "common/test_tensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

// 2.5 MiB F32, a zero-element tensor, and 6 bytes of F16.
std::vector<HostTensor> SampleTensors() {
  return {MakeTensor("big", v1::F32, {640, 1024}, 1), MakeTensor("empty", v1::F32, {0, 4}, 2),
          MakeTensor("small", v1::F16, {3}, 3)};
}
constexpr uint64_t kBigBytes = 640 * 1024 * 4;

v1::TensorChunk Chunk(uint32_t tensor, uint64_t offset, std::string data) {
  v1::TensorChunk c;
  c.set_tensor_index(tensor);
  c.set_offset(offset);
  c.set_data(std::move(data));
  return c;
}

v1::StreamTrailer TrailerFor(const std::vector<HostTensor>& tensors) {
  v1::StreamTrailer t;
  t.set_sha256(TensorsSha256(tensors));
  uint64_t total = 0;
  for (const auto& x : tensors) total += x.data.size();
  t.set_total_bytes(total);
  return t;
}

// What a receiver hands its sink.
struct StorageChunk {
  uint32_t tensor;
  uint64_t chunk;
  std::string data;
};

class StreamTest : public ::testing::Test {
 protected:
  StreamTest()
      : tensors_(SampleTensors()),
        receiver_(ManifestOf(tensors_), [this](uint32_t t, uint64_t c, absl::string_view d) {
          stored_.push_back({t, c, std::string(d)});
          return absl::OkStatus();
        }) {}

  // Sends every tensor in wire chunks of at most `size` bytes.
  absl::Status SendAll(size_t size) {
    for (uint32_t i = 0; i < tensors_.size(); ++i) {
      const std::string& d = tensors_[i].data;
      for (size_t off = 0; off < d.size(); off += size) {
        absl::Status s = receiver_.Accept(Chunk(i, off, d.substr(off, size)));
        if (!s.ok()) return s;
      }
    }
    return absl::OkStatus();
  }

  // The storage chunks the sample tensors must come out as.
  void ExpectStorageChunks() {
    ASSERT_EQ(stored_.size(), 4u);
    std::vector<std::tuple<uint32_t, uint64_t, size_t>> got;
    for (const auto& s : stored_) got.emplace_back(s.tensor, s.chunk, s.data.size());
    EXPECT_EQ(got,
              (std::vector<std::tuple<uint32_t, uint64_t, size_t>>{
                  {0, 0, kChunkBytes}, {0, 1, kChunkBytes}, {0, 2, kChunkBytes / 2}, {2, 0, 6}}));
    EXPECT_EQ(stored_[0].data + stored_[1].data + stored_[2].data, tensors_[0].data);
    EXPECT_EQ(stored_[3].data, tensors_[2].data);
  }

  void ExpectInvalid(const absl::Status& s, std::initializer_list<const char*> substrs) {
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    for (const char* sub : substrs) EXPECT_THAT(s.message(), HasSubstr(sub));
  }

  std::vector<HostTensor> tensors_;
  std::vector<StorageChunk> stored_;
  StreamReceiver receiver_;
};

TEST(TensorStreamTest, ChunkCount) {
  EXPECT_EQ(ChunkCount(0), 0u);
  EXPECT_EQ(ChunkCount(1), 1u);
  EXPECT_EQ(ChunkCount(kChunkBytes), 1u);
  EXPECT_EQ(ChunkCount(kChunkBytes + 1), 2u);
  EXPECT_EQ(kChunkBytes, size_t{1} << 20);
}

TEST(TensorStreamTest, TensorsSha256IsTheDigestOfTheConcatenatedData) {
  std::vector<HostTensor> t(3);
  t[0].data = "a";
  t[2].data = "bc";
  EXPECT_EQ(ToHex(TensorsSha256(t)),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(ToHex(TensorsSha256({})),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}

TEST(TensorStreamTest, ForEachWireChunkSplitsAtOneMebibyteAndSkipsEmptyTensors) {
  std::vector<HostTensor> tensors = SampleTensors();
  std::vector<std::tuple<uint32_t, uint64_t, size_t>> got;
  std::string joined;
  ASSERT_TRUE(ForEachWireChunk(tensors, [&](v1::TensorChunk& c) {
                got.emplace_back(c.tensor_index(), c.offset(), c.data().size());
                joined += c.data();
                return absl::OkStatus();
              }).ok());
  EXPECT_EQ(got, (std::vector<std::tuple<uint32_t, uint64_t, size_t>>{
                     {0, 0, kMaxChunkBytes},
                     {0, kMaxChunkBytes, kMaxChunkBytes},
                     {0, 2 * kMaxChunkBytes, kMaxChunkBytes / 2},
                     {2, 0, 6}}));
  EXPECT_EQ(joined, tensors[0].data + tensors[2].data);
}

TEST(TensorStreamTest, ForEachWireChunkStopsAtTheFirstEmitError) {
  int calls = 0;
  absl::Status s = ForEachWireChunk(SampleTensors(), [&](v1::TensorChunk&) {
    ++calls;
    return absl::UnavailableError("peer went away");
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(calls, 1);
}

TEST_F(StreamTest, RoundTripThroughForEachWireChunk) {
  EXPECT_EQ(receiver_.lengths(), (std::vector<uint64_t>{kBigBytes, 0, 6}));
  ASSERT_TRUE(
      ForEachWireChunk(tensors_, [&](v1::TensorChunk& c) { return receiver_.Accept(c); }).ok());
  auto digest = receiver_.Finish(TrailerFor(tensors_));
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, TensorsSha256(tensors_));
  EXPECT_EQ(receiver_.bytes_received(), kBigBytes + 6);
  ExpectStorageChunks();
}

TEST_F(StreamTest, SmallOddWireChunksGiveTheSameStorageChunks) {
  ASSERT_TRUE(SendAll(1000).ok());
  ASSERT_TRUE(receiver_.Finish(TrailerFor(tensors_)).ok());
  ExpectStorageChunks();
}

TEST_F(StreamTest, IrregularWireChunksGiveTheSameStorageChunks) {
  // Sizes that straddle storage-chunk boundaries in every way, including exactly 1 MiB.
  SplitMix64 rng(99);
  const std::string& big = tensors_[0].data;
  for (size_t off = 0; off < big.size();) {
    size_t n = rng.Next() % 3 == 0 ? kMaxChunkBytes : 1 + rng.Next() % 300000;
    n = std::min(n, big.size() - off);
    ASSERT_TRUE(receiver_.Accept(Chunk(0, off, big.substr(off, n))).ok());
    off += n;
  }
  ASSERT_TRUE(receiver_.Accept(Chunk(2, 0, tensors_[2].data.substr(0, 1))).ok());
  ASSERT_TRUE(receiver_.Accept(Chunk(2, 1, tensors_[2].data.substr(1))).ok());
  ASSERT_TRUE(receiver_.Finish(TrailerFor(tensors_)).ok());
  ExpectStorageChunks();
}

TEST_F(StreamTest, RejectsOutOfOrderChunkAndStaysUsable) {
  ExpectInvalid(receiver_.Accept(Chunk(0, 1000, std::string(10, 'x'))),
                {"out-of-order", "'big'", "offset 0"});
  ExpectInvalid(receiver_.Accept(Chunk(2, 0, tensors_[2].data)), {"'big'"});
  // A rejected chunk changes nothing: the right stream still goes through.
  ASSERT_TRUE(SendAll(kMaxChunkBytes).ok());
  EXPECT_TRUE(receiver_.Finish(TrailerFor(tensors_)).ok());
  ExpectStorageChunks();
}

TEST_F(StreamTest, RejectsChunkForAnEmptyTensor) {
  ASSERT_TRUE(receiver_.Accept(Chunk(0, 0, tensors_[0].data.substr(0, kMaxChunkBytes))).ok());
  ExpectInvalid(receiver_.Accept(Chunk(0, 0, std::string(4, 'x'))),
                {"expected tensor #0", "offset 1048576"});
  ASSERT_TRUE(
      receiver_
          .Accept(Chunk(0, kMaxChunkBytes, tensors_[0].data.substr(kMaxChunkBytes, kMaxChunkBytes)))
          .ok());
  ASSERT_TRUE(
      receiver_.Accept(Chunk(0, 2 * kMaxChunkBytes, tensors_[0].data.substr(2 * kMaxChunkBytes)))
          .ok());
  // Tensor #1 has no bytes: the next piece is tensor #2.
  ExpectInvalid(receiver_.Accept(Chunk(1, 0, std::string(4, 'x'))),
                {"tensor #1", "expected tensor #2 'small'"});
}

TEST_F(StreamTest, RejectsEmptyAndOversizedChunks) {
  ExpectInvalid(receiver_.Accept(Chunk(0, 0, "")), {"0 bytes", "'big'", "1048576"});
  ExpectInvalid(receiver_.Accept(Chunk(0, 0, std::string(kMaxChunkBytes + 1, 'x'))),
                {"1048577 bytes", "'big'"});
  EXPECT_EQ(receiver_.bytes_received(), 0u);
}

TEST_F(StreamTest, RejectsBytesBeyondATensor) {
  ASSERT_TRUE(ForEachWireChunk({tensors_[0]}, [&](v1::TensorChunk& c) {
                return receiver_.Accept(c);
              }).ok());
  ExpectInvalid(receiver_.Accept(Chunk(2, 0, std::string(8, 'x'))), {"'small'", "6 bytes", "[3]"});
  ASSERT_TRUE(receiver_.Accept(Chunk(2, 0, std::string(4, 'x'))).ok());
  ExpectInvalid(receiver_.Accept(Chunk(2, 4, std::string(3, 'x'))), {"'small'"});
}

TEST_F(StreamTest, RejectsChunksAfterTheLastTensorAndAfterTheTrailer) {
  ASSERT_TRUE(SendAll(kMaxChunkBytes).ok());
  ExpectInvalid(receiver_.Accept(Chunk(3, 0, "x")), {"trailer"});
  ExpectInvalid(receiver_.Accept(Chunk(2, 6, "x")), {"trailer"});
  ASSERT_TRUE(receiver_.Finish(TrailerFor(tensors_)).ok());
  ExpectInvalid(receiver_.Accept(Chunk(2, 6, "x")), {"after", "trailer"});
  ExpectInvalid(receiver_.Finish(TrailerFor(tensors_)).status(), {"second trailer"});
}

TEST_F(StreamTest, RejectsEarlyTrailer) {
  ASSERT_TRUE(receiver_.Accept(Chunk(0, 0, tensors_[0].data.substr(0, 1000))).ok());
  ExpectInvalid(receiver_.Finish(TrailerFor(tensors_)).status(),
                {"ended early", "'big'", "1000 of 2621440"});
}

TEST_F(StreamTest, RejectsWrongTotalBytes) {
  ASSERT_TRUE(SendAll(kMaxChunkBytes).ok());
  v1::StreamTrailer t = TrailerFor(tensors_);
  t.set_total_bytes(t.total_bytes() + 1);
  ExpectInvalid(receiver_.Finish(t).status(), {"2621447", "2621446"});
}

TEST_F(StreamTest, RejectsWrongChecksum) {
  ASSERT_TRUE(SendAll(kMaxChunkBytes).ok());
  v1::StreamTrailer t = TrailerFor(tensors_);
  std::string sha = t.sha256();
  sha[5] ^= 1;
  t.set_sha256(sha);
  ExpectInvalid(receiver_.Finish(t).status(), {"checksum", ToHex(sha).c_str()});
}

TEST_F(StreamTest, RejectsCorruptedDataWithTheSendersChecksum) {
  std::vector<HostTensor> corrupted = tensors_;
  corrupted[0].data[kMaxChunkBytes + 17] ^= 0x40;
  ASSERT_TRUE(
      ForEachWireChunk(corrupted, [&](v1::TensorChunk& c) { return receiver_.Accept(c); }).ok());
  ExpectInvalid(receiver_.Finish(TrailerFor(tensors_)).status(), {"checksum"});
}

TEST(TensorStreamTest, SinkErrorsReachTheSender) {
  std::vector<HostTensor> tensors = SampleTensors();
  StreamReceiver r(ManifestOf(tensors), [](uint32_t, uint64_t c, absl::string_view) {
    return c == 1 ? absl::ResourceExhaustedError("disk full") : absl::OkStatus();
  });
  absl::Status s = ForEachWireChunk(tensors, [&](v1::TensorChunk& c) { return r.Accept(c); });
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(s.message(), "disk full");
}

TEST(TensorStreamTest, ManifestOfOnlyEmptyTensorsNeedsOnlyATrailer) {
  std::vector<HostTensor> tensors = {MakeTensor("a", v1::F32, {0}, 1),
                                     MakeTensor("b", v1::F64, {3, 0}, 2)};
  int sunk = 0;
  StreamReceiver r(ManifestOf(tensors), [&](uint32_t, uint64_t, absl::string_view) {
    ++sunk;
    return absl::OkStatus();
  });
  EXPECT_EQ(r.Accept(Chunk(0, 0, "x")).code(), absl::StatusCode::kInvalidArgument);
  auto digest = r.Finish(TrailerFor(tensors));
  ASSERT_TRUE(digest.ok()) << digest.status();
  EXPECT_EQ(*digest, Sha256::Of(""));
  EXPECT_EQ(sunk, 0);
}

TEST(InMemoryAssemblerTest, ReturnsTheTensors) {
  std::vector<HostTensor> tensors = SampleTensors();
  InMemoryAssembler a(ManifestOf(tensors));
  ASSERT_TRUE(ForEachWireChunk(tensors, [&](v1::TensorChunk& c) { return a.Accept(c); }).ok());
  auto got = a.Finish(TrailerFor(tensors));
  ASSERT_TRUE(got.ok()) << got.status();
  ASSERT_EQ(got->size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ((*got)[i].spec.SerializeAsString(), tensors[i].spec.SerializeAsString()) << i;
    EXPECT_TRUE((*got)[i].data == tensors[i].data) << i;
  }
  EXPECT_TRUE(CheckTensorSizes(*got).ok());
}

TEST(InMemoryAssemblerTest, EnforcesTheStreamRules) {
  std::vector<HostTensor> tensors = SampleTensors();
  InMemoryAssembler a(ManifestOf(tensors));
  EXPECT_EQ(a.Accept(Chunk(2, 0, tensors[2].data)).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(a.Finish(TrailerFor(tensors)).status().code(), absl::StatusCode::kInvalidArgument);

  InMemoryAssembler b(ManifestOf(tensors));
  ASSERT_TRUE(ForEachWireChunk(tensors, [&](v1::TensorChunk& c) { return b.Accept(c); }).ok());
  v1::StreamTrailer bad = TrailerFor(tensors);
  bad.set_sha256(Sha256::Of("something else"));
  auto got = b.Finish(bad);
  EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(got.status().message(), AllOf(HasSubstr("checksum")));
}

}  // namespace
}  // namespace coldfuse
