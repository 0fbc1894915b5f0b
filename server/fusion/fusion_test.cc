#include "server/fusion/fusion.h"

#include <gtest/gtest.h>

#include <cstdint>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "server/rounds/test_util.h"

namespace coldfuse::fusion {
namespace {

using testing_util::BytesOf;
using testing_util::ValuesOf;

v1::TensorSpec Spec(const std::string& name, v1::DType dtype, std::vector<int64_t> shape) {
  v1::TensorSpec s;
  s.set_name(name);
  s.set_dtype(dtype);
  for (int64_t d : shape) s.add_shape(d);
  return s;
}

// In-memory contributions (per contribution, per tensor: all bytes) served in storage
// chunks, and the fused result collected from the writer.
class FusionHarness {
 public:
  explicit FusionHarness(v1::Manifest manifest) : manifest_(std::move(manifest)) {}

  void AddContribution(std::vector<std::string> tensors) {
    contributions_.push_back(std::move(tensors));
  }

  absl::StatusOr<std::string> Fuse(const std::vector<double>& weights) {
    return FuseWeighted(
        manifest_, weights,
        [this](size_t k, uint32_t t, uint64_t c) -> absl::StatusOr<std::string> {
          const std::string& all = contributions_.at(k).at(t);
          if (c * kChunkBytes >= all.size()) return absl::NotFoundError("no such chunk");
          return all.substr(c * kChunkBytes, kChunkBytes);
        },
        [this](uint32_t t, uint64_t c, absl::string_view data) {
          written_[{t, c}] = std::string(data);
          order_.push_back({t, c});
          return absl::OkStatus();
        });
  }

  // Tensor `t` of the result, its chunks concatenated in order.
  std::string Output(uint32_t t) const {
    std::string out;
    for (uint64_t c = 0; written_.count({t, c}); ++c) out += written_.at({t, c});
    return out;
  }

  const std::map<std::pair<uint32_t, uint64_t>, std::string>& written() const { return written_; }
  // (tensor, chunk) in the order the writer was called.
  const std::vector<std::pair<uint32_t, uint64_t>>& order() const { return order_; }

 private:
  v1::Manifest manifest_;
  std::vector<std::vector<std::string>> contributions_;
  std::map<std::pair<uint32_t, uint64_t>, std::string> written_;
  std::vector<std::pair<uint32_t, uint64_t>> order_;
};

TEST(FusionWeightsTest, MeanIsEqualWhateverTheExampleCounts) {
  auto w = FusionWeights(v1::MEAN, {10, 20, 70, 900});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, std::vector<double>({0.25, 0.25, 0.25, 0.25}));
}

TEST(FusionWeightsTest, UnspecifiedMethodMeansMean) {
  auto w = FusionWeights(v1::FUSION_METHOD_UNSPECIFIED, {1, 3});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, std::vector<double>({0.5, 0.5}));
}

TEST(FusionWeightsTest, ExampleWeightedIsProportionalToExamples) {
  auto w = FusionWeights(v1::EXAMPLE_WEIGHTED_MEAN, {1, 1, 2});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, std::vector<double>({0.25, 0.25, 0.5}));

  w = FusionWeights(v1::EXAMPLE_WEIGHTED_MEAN, {100, 300});
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, std::vector<double>({0.25, 0.75}));
}

TEST(FusionWeightsTest, NoContributionsIsInvalid) {
  EXPECT_EQ(FusionWeights(v1::MEAN, {}).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(FusionWeights(v1::EXAMPLE_WEIGHTED_MEAN, {}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(FusionWeightsTest, AllZeroExamplesIsInvalidForWeightedMean) {
  EXPECT_EQ(FusionWeights(v1::EXAMPLE_WEIGHTED_MEAN, {0, 0}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

v1::Manifest OneTensor(v1::DType dtype, int64_t n) {
  v1::Manifest m;
  *m.add_tensors() = Spec("w", dtype, {n});
  return m;
}

TEST(FuseWeightedTest, MeanOfF32ByHand) {
  FusionHarness h(OneTensor(v1::F32, 3));
  h.AddContribution({BytesOf<float>({1, 2, 3})});
  h.AddContribution({BytesOf<float>({3, 4, 5})});
  h.AddContribution({BytesOf<float>({5, 9, 1})});
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {1, 1, 1}));
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(ValuesOf<float>(h.Output(0)), std::vector<float>({3, 5, 3}));
}

TEST(FuseWeightedTest, ExampleWeightedOfF32ByHand) {
  FusionHarness h(OneTensor(v1::F32, 3));
  h.AddContribution({BytesOf<float>({1, 2, 3})});
  h.AddContribution({BytesOf<float>({3, 4, 5})});
  h.AddContribution({BytesOf<float>({5, 9, 1})});
  auto sha = h.Fuse(*FusionWeights(v1::EXAMPLE_WEIGHTED_MEAN, {1, 1, 2}));
  ASSERT_TRUE(sha.ok()) << sha.status();
  // (1+3+2*5)/4, (2+4+2*9)/4, (3+5+2*1)/4
  EXPECT_EQ(ValuesOf<float>(h.Output(0)), std::vector<float>({3.5, 6, 2.5}));
}

TEST(FuseWeightedTest, MeanOfF64KeepsDoublePrecision) {
  FusionHarness h(OneTensor(v1::F64, 2));
  // 1 + 2^-40 is not a float: an F32 accumulator or store would lose it.
  const double tiny = 1.0 / (1ull << 40);
  h.AddContribution({BytesOf<double>({1.0, -2.0})});
  h.AddContribution({BytesOf<double>({1.0 + 2 * tiny, 4.0})});
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {1, 1}));
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(ValuesOf<double>(h.Output(0)), std::vector<double>({1.0 + tiny, 1.0}));
}

std::string Bf16Bytes(const std::vector<float>& values) {
  std::vector<uint16_t> bits;
  for (float v : values) bits.push_back(FloatToBf16Bits(v));
  return BytesOf<uint16_t>(bits);
}

std::vector<float> Bf16Values(absl::string_view bytes) {
  std::vector<float> out;
  for (uint16_t b : ValuesOf<uint16_t>(bytes)) out.push_back(Bf16BitsToFloat(b));
  return out;
}

TEST(FuseWeightedTest, MeanOfBf16RoundsToBf16) {
  // All inputs are exact in bf16 (8 significant bits).
  FusionHarness h(OneTensor(v1::BF16, 4));
  h.AddContribution({Bf16Bytes({1, 2, 1.0078125f, 1.0078125f})});
  h.AddContribution({Bf16Bytes({3, -8, 1.0f, 1.015625f})});
  ASSERT_EQ(Bf16Values(Bf16Bytes({1.0078125f, 1.015625f})),
            std::vector<float>({1.0078125f, 1.015625f}));
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {1, 1}));
  ASSERT_TRUE(sha.ok()) << sha.status();
  ASSERT_EQ(h.Output(0).size(), 8u);
  // 1+2^-8 and 1+3*2^-8 are ties between bf16 neighbours: round to the even one.
  EXPECT_EQ(Bf16Values(h.Output(0)), std::vector<float>({2, -3, 1.0f, 1.015625f}));
}

TEST(FuseWeightedTest, WeightedBf16RoundsToNearest) {
  FusionHarness h(OneTensor(v1::BF16, 1));
  h.AddContribution({Bf16Bytes({1.0f})});
  h.AddContribution({Bf16Bytes({1.0f})});
  h.AddContribution({Bf16Bytes({1.015625f})});
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {1, 1, 1}));
  ASSERT_TRUE(sha.ok()) << sha.status();
  // 1 + 2^-6/3 = 1.0052: nearer to 1.0078125 than to 1.0.
  EXPECT_EQ(Bf16Values(h.Output(0)), std::vector<float>({1.0078125f}));
}

TEST(FuseWeightedTest, TensorLargerThanOneChunkIsFusedAcrossTheBoundary) {
  constexpr int64_t kN = 300000;  // 1.2 MB of F32: one full chunk and a partial one
  v1::Manifest m;
  *m.add_tensors() = Spec("big", v1::F32, {kN});
  *m.add_tensors() = Spec("small", v1::F32, {2});
  std::vector<float> a(kN), b(kN), want(kN);
  for (int64_t i = 0; i < kN; ++i) {
    a[i] = static_cast<float>(i % 1000);
    b[i] = static_cast<float>(3 * (i % 1000) + 2);
    want[i] = static_cast<float>(2 * (i % 1000) + 1);
  }
  FusionHarness h(m);
  h.AddContribution({BytesOf(a), BytesOf<float>({10, 20})});
  h.AddContribution({BytesOf(b), BytesOf<float>({30, 40})});
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {5, 7}));
  ASSERT_TRUE(sha.ok()) << sha.status();

  // Storage chunking: tensor 0 is chunks 0 (1 MiB) and 1 (the rest); tensor 1 is chunk 0.
  ASSERT_EQ(h.written().size(), 3u);
  EXPECT_EQ(h.written().at({0, 0}).size(), kChunkBytes);
  EXPECT_EQ(h.written().at({0, 1}).size(), kN * 4 - kChunkBytes);
  std::vector<float> got = ValuesOf<float>(h.Output(0));
  ASSERT_EQ(got.size(), static_cast<size_t>(kN));
  const int64_t boundary = kChunkBytes / 4;  // first element of chunk 1
  EXPECT_EQ(got[boundary - 1], want[boundary - 1]);
  EXPECT_EQ(got[boundary], want[boundary]);
  EXPECT_EQ(got[kN - 1], want[kN - 1]);
  EXPECT_EQ(got, want);
  EXPECT_EQ(ValuesOf<float>(h.Output(1)), std::vector<float>({20, 30}));
}

// Chunks are computed on the worker pool, a window at a time: far more chunks than any
// window must still come out exact and be written (and hashed) in storage order.
TEST(FuseWeightedTest, ManyChunksAreExactAndWrittenInOrder) {
  v1::Manifest m;
  std::vector<std::string> a, b;
  std::string all_want;
  for (int t = 0; t < 40; ++t) {
    const int64_t n = (t % 3 == 0) ? 2 * kChunkBytes / 4 + 7 : 5 + t;  // some multi-chunk
    *m.add_tensors() = Spec(absl::StrCat("t", t), v1::F32, {n});
    std::vector<float> x(n), y(n), want(n);
    for (int64_t i = 0; i < n; ++i) {
      x[i] = static_cast<float>((i + t) % 97);
      y[i] = static_cast<float>((3 * i + t) % 89);
      want[i] = 0.5f * x[i] + 0.5f * y[i];
    }
    a.push_back(BytesOf(x));
    b.push_back(BytesOf(y));
    all_want += BytesOf(want);
  }
  FusionHarness h(m);
  h.AddContribution(a);
  h.AddContribution(b);
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {1, 1}));
  ASSERT_TRUE(sha.ok()) << sha.status();
  std::string got;
  for (size_t i = 1; i < h.order().size(); ++i) {
    EXPECT_LT(h.order()[i - 1], h.order()[i]) << "write " << i << " out of order";
  }
  for (uint32_t t = 0; t < 40; ++t) got += h.Output(t);
  EXPECT_EQ(got, all_want);
  EXPECT_EQ(*sha, Sha256::Of(all_want));
}

TEST(FuseWeightedTest, ReturnsSha256OfTheResultInManifestOrder) {
  v1::Manifest m;
  *m.add_tensors() = Spec("a", v1::F32, {2});
  *m.add_tensors() = Spec("b", v1::F64, {1});
  FusionHarness h(m);
  h.AddContribution({BytesOf<float>({1, 2}), BytesOf<double>({4})});
  h.AddContribution({BytesOf<float>({3, 6}), BytesOf<double>({8})});
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {1, 1}));
  ASSERT_TRUE(sha.ok()) << sha.status();
  std::string a = h.Output(0), b = h.Output(1);
  EXPECT_EQ(ValuesOf<float>(a), std::vector<float>({2, 4}));
  EXPECT_EQ(ValuesOf<double>(b), std::vector<double>({6}));
  EXPECT_EQ(*sha, Sha256::Of(a + b));
  EXPECT_NE(*sha, Sha256::Of(b + a));
}

TEST(FuseWeightedTest, ChunkOfWrongSizeIsDataLoss) {
  FusionHarness h(OneTensor(v1::F32, 3));
  h.AddContribution({BytesOf<float>({1, 2, 3})});
  h.AddContribution({BytesOf<float>({1, 2})});  // truncated in storage
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {1, 1}));
  EXPECT_EQ(sha.status().code(), absl::StatusCode::kDataLoss) << sha.status();
  EXPECT_TRUE(h.written().empty());
}

TEST(FuseWeightedTest, ReaderErrorIsReturned) {
  FusionHarness h(OneTensor(v1::F32, 3));
  h.AddContribution({BytesOf<float>({1, 2, 3})});
  h.AddContribution({std::string()});  // chunk 0 missing: the reader says NOT_FOUND
  auto sha = h.Fuse(*FusionWeights(v1::MEAN, {1, 1}));
  EXPECT_EQ(sha.status().code(), absl::StatusCode::kNotFound) << sha.status();
}

}  // namespace
}  // namespace coldfuse::fusion
