#include "server/fusion/robust.h"

#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "common/dtype.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "server/fusion/fusion.h"
#include "server/rounds/test_util.h"

namespace coldfuse::fusion {
namespace {

using testing_util::BytesOf;
using testing_util::ValuesOf;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kInf = std::numeric_limits<double>::infinity();

// One-dimensional tensors (name, element count) of `dtype`.
v1::Manifest Tensors(const std::vector<std::pair<std::string, int64_t>>& tensors,
                     v1::DType dtype = v1::F32) {
  v1::Manifest m;
  for (const auto& [name, n] : tensors) {
    v1::TensorSpec* s = m.add_tensors();
    s->set_name(name);
    s->set_dtype(dtype);
    s->add_shape(n);
  }
  return m;
}

v1::Manifest OneTensor(int64_t n, v1::DType dtype = v1::F32) { return Tensors({{"w", n}}, dtype); }

// A model held in memory: per tensor, all its bytes.
using Model = std::vector<std::string>;

// Serves in-memory models in storage chunks, as the round store would.
ChunkReader ReaderOf(const std::vector<Model>* models) {
  return [models](size_t k, uint32_t t, uint64_t c) -> absl::StatusOr<std::string> {
    const std::string& all = models->at(k).at(t);
    if (c * kChunkBytes >= all.size()) return absl::NotFoundError("no such chunk");
    return all.substr(c * kChunkBytes, kChunkBytes);
  };
}

// Contributions, a base, and the fused result collected from the writer.
class RobustHarness {
 public:
  explicit RobustHarness(v1::Manifest manifest) : manifest_(std::move(manifest)) {}

  void SetBase(Model base) { base_ = {std::move(base)}; }
  void Add(Model contribution) { contributions_.push_back(std::move(contribution)); }
  size_t k() const { return contributions_.size(); }

  absl::StatusOr<std::string> Median(size_t memory_bytes = kCoordinatewiseMemoryBytes) {
    return FuseMedian(manifest_, k(), Counted(ReaderOf(&contributions_)), Writer(), memory_bytes);
  }
  absl::StatusOr<std::string> TrimmedMean(double trim_fraction,
                                          size_t memory_bytes = kCoordinatewiseMemoryBytes) {
    return FuseTrimmedMean(manifest_, k(), trim_fraction, Counted(ReaderOf(&contributions_)),
                           Writer(), memory_bytes);
  }
  // Chunk reads made by the last Median or TrimmedMean.
  int reads() const { return reads_; }
  absl::StatusOr<std::string> Mean() {
    return FuseWeighted(manifest_, std::vector<double>(k(), 1.0 / k()), ReaderOf(&contributions_),
                        Writer());
  }
  absl::StatusOr<std::string> NormClipped(const std::vector<double>& weights,
                                          const std::vector<double>& norms, double clip) {
    return FuseNormClippedMean(manifest_, weights, norms, clip, ReaderOf(&base_),
                               ReaderOf(&contributions_), Writer());
  }
  // DeltaNorm of contribution `j` against the base.
  absl::StatusOr<double> Norm(size_t j) {
    ChunkReader all = ReaderOf(&contributions_);
    return DeltaNorm(manifest_, ReaderOf(&base_),
                     [&](size_t, uint32_t t, uint64_t c) { return all(j, t, c); });
  }

  // Tensor `t` of the last result, its chunks concatenated in order.
  std::string Output(uint32_t t) const {
    std::string out;
    for (uint64_t c = 0; written_.count({t, c}); ++c) out += written_.at({t, c});
    return out;
  }
  std::vector<float> F32(uint32_t t = 0) const { return ValuesOf<float>(Output(t)); }
  const std::map<std::pair<uint32_t, uint64_t>, std::string>& written() const { return written_; }

 private:
  ChunkReader Counted(ChunkReader read) {
    reads_ = 0;
    return [this, read](size_t k, uint32_t t, uint64_t c) {
      ++reads_;
      return read(k, t, c);
    };
  }
  ChunkWriter Writer() {
    written_.clear();
    return [this](uint32_t t, uint64_t c, absl::string_view data) {
      written_[{t, c}] = std::string(data.data(), data.size());
      return absl::OkStatus();
    };
  }

  v1::Manifest manifest_;
  std::vector<Model> base_;
  std::vector<Model> contributions_;
  std::map<std::pair<uint32_t, uint64_t>, std::string> written_;
  int reads_ = 0;
};

Model F32Model(const std::vector<float>& values) { return {BytesOf(values)}; }

// --- Median ---------------------------------------------------------------------------

TEST(RobustMedianTest, HelperByHand) {
  EXPECT_EQ(Median({}), 0);
  EXPECT_EQ(Median({7}), 7);
  EXPECT_EQ(Median({3, 1, 2}), 2);
  EXPECT_EQ(Median({4, 1, 3, 2}), 2.5);
  EXPECT_EQ(Median({-1e308, -1e308}), -1e308);  // no overflow averaging the middle pair
  EXPECT_EQ(Median({1, kNaN, 2}), 2);           // NaN sorts above everything
  EXPECT_EQ(Median({kInf, 5, kNaN, 1, 3}), 5);
}

TEST(RobustMedianTest, OddKByHand) {
  RobustHarness h(OneTensor(3));
  h.Add(F32Model({1, 2, 3}));
  h.Add(F32Model({3, 4, 5}));
  h.Add(F32Model({100, -100, 2}));
  auto sha = h.Median();
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(h.F32(), std::vector<float>({3, 2, 3}));
  EXPECT_EQ(*sha, Sha256::Of(h.Output(0)));
}

TEST(RobustMedianTest, EvenKIsMeanOfTheMiddlePair) {
  RobustHarness h(OneTensor(3));
  h.Add(F32Model({1, 2, 0}));
  h.Add(F32Model({3, 8, 0}));
  h.Add(F32Model({5, 4, 1}));
  h.Add(F32Model({7, 6, 1}));
  auto sha = h.Median();
  ASSERT_TRUE(sha.ok()) << sha.status();
  // (3+5)/2, (4+6)/2, (0+1)/2
  EXPECT_EQ(h.F32(), std::vector<float>({4, 5, 0.5}));
}

TEST(RobustMedianTest, NoContributionsIsInvalid) {
  RobustHarness h(OneTensor(3));
  EXPECT_EQ(h.Median().status().code(), absl::StatusCode::kInvalidArgument);
}

// --- Trimmed mean ---------------------------------------------------------------------

TEST(RobustTrimmedMeanTest, FiveContributionsTrimOneFromEachEnd) {
  RobustHarness h(OneTensor(2));
  h.Add(F32Model({1, 10}));
  h.Add(F32Model({2, -50}));
  h.Add(F32Model({3, 20}));
  h.Add(F32Model({4, 30}));
  h.Add(F32Model({100, 40}));
  auto sha = h.TrimmedMean(0.2);  // floor(0.2 * 5) = 1 per end
  ASSERT_TRUE(sha.ok()) << sha.status();
  // Drop {1, 100} -> mean(2,3,4); drop {-50, 40} -> mean(10,20,30).
  EXPECT_EQ(h.F32(), std::vector<float>({3, 20}));
  EXPECT_EQ(*sha, Sha256::Of(h.Output(0)));

  ASSERT_TRUE(h.TrimmedMean(0.19).ok());  // floor(0.95) = 0: nothing trimmed
  EXPECT_EQ(h.F32(), std::vector<float>({22, 10}));
  ASSERT_TRUE(h.TrimmedMean(0.4).ok());  // 2 per end: the median
  EXPECT_EQ(h.F32(), std::vector<float>({3, 20}));
}

TEST(RobustTrimmedMeanTest, ZeroTrimIsThePlainMean) {
  RobustHarness h(Tensors({{"a", 3}, {"b", 2}}));
  h.Add({BytesOf<float>({1, 2, 3}), BytesOf<float>({-4, 8})});
  h.Add({BytesOf<float>({5, -6, 7}), BytesOf<float>({0, 1})});
  h.Add({BytesOf<float>({9, 10, -11}), BytesOf<float>({2, 3})});
  h.Add({BytesOf<float>({13, 14, 15}), BytesOf<float>({6, 4})});
  auto mean = h.Mean();
  ASSERT_TRUE(mean.ok()) << mean.status();
  std::vector<float> want_a = h.F32(0), want_b = h.F32(1);
  EXPECT_EQ(want_a, std::vector<float>({7, 5, 3.5}));

  auto trimmed = h.TrimmedMean(0);
  ASSERT_TRUE(trimmed.ok()) << trimmed.status();
  EXPECT_EQ(h.F32(0), want_a);
  EXPECT_EQ(h.F32(1), want_b);
  EXPECT_EQ(*trimmed, *mean);
}

TEST(RobustTrimmedMeanTest, InvalidTrimFractionOrNoContributions) {
  RobustHarness h(OneTensor(1));
  h.Add(F32Model({1}));
  h.Add(F32Model({2}));
  for (double f : {-0.1, 0.5, 0.7, kNaN, kInf}) {
    EXPECT_EQ(h.TrimmedMean(f).status().code(), absl::StatusCode::kInvalidArgument) << f;
  }
  EXPECT_TRUE(h.written().empty());
  RobustHarness empty(OneTensor(1));
  EXPECT_EQ(empty.TrimmedMean(0.1).status().code(), absl::StatusCode::kInvalidArgument);
}

// --- Norm clipping --------------------------------------------------------------------

TEST(RobustNormClippedMeanTest, ClipsOnlyTheLongDeltaByHand) {
  RobustHarness h(OneTensor(2, v1::F64));
  h.SetBase({BytesOf<double>({0, 0})});
  h.Add({BytesOf<double>({3, 4})});  // norm 5: scaled by 1/5
  h.Add({BytesOf<double>({0, 1})});  // norm 1: kept
  auto n0 = h.Norm(0), n1 = h.Norm(1);
  ASSERT_TRUE(n0.ok() && n1.ok()) << n0.status() << n1.status();
  EXPECT_EQ(*n0, 5);
  EXPECT_EQ(*n1, 1);
  auto sha = h.NormClipped({0.5, 0.5}, {*n0, *n1}, 1.0);
  ASSERT_TRUE(sha.ok()) << sha.status();
  std::vector<double> got = ValuesOf<double>(h.Output(0));
  ASSERT_EQ(got.size(), 2u);
  // 0.5 * (0.6, 0.8) + 0.5 * (0, 1)
  EXPECT_NEAR(got[0], 0.3, 1e-15);
  EXPECT_NEAR(got[1], 0.9, 1e-15);
  EXPECT_EQ(*sha, Sha256::Of(h.Output(0)));
}

TEST(RobustNormClippedMeanTest, LargeClipIsTheWeightedMeanAndZeroNormIsKept) {
  RobustHarness h(OneTensor(2));
  h.SetBase(F32Model({1, 1}));
  h.Add(F32Model({1, 1}));  // delta norm 0: s = 1
  h.Add(F32Model({3, 5}));
  auto sha = h.NormClipped({0.25, 0.75}, {0, std::sqrt(20.0)}, kInf);
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(h.F32(), std::vector<float>({2.5, 4}));
}

TEST(RobustNormClippedMeanTest, InvalidArguments) {
  RobustHarness h(OneTensor(1));
  h.SetBase(F32Model({0}));
  h.Add(F32Model({1}));
  auto code = [&](std::vector<double> w, std::vector<double> n, double clip) {
    return h.NormClipped(w, n, clip).status().code();
  };
  EXPECT_EQ(code({}, {}, 1), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({1}, {}, 1), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({1}, {1}, 0), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({1}, {1}, -1), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({1}, {1}, kNaN), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({1}, {-1}, 1), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({1}, {kNaN}, 1), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({kNaN}, {1}, 1), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(code({-1}, {1}, 1), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(h.written().empty());
}

// --- Screening helpers ----------------------------------------------------------------

TEST(RobustDeltaNormTest, StreamingAndIncrementalAgreeWithHandValue) {
  v1::Manifest m = Tensors({{"a", 2}, {"b", 3}});
  RobustHarness h(m);
  h.SetBase({BytesOf<float>({1, 2}), BytesOf<float>({0, 0, 0})});
  h.Add({BytesOf<float>({2, 4}), BytesOf<float>({-2, 0, 4})});
  auto norm = h.Norm(0);
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_EQ(*norm, 5);  // sqrt(1 + 4 + 4 + 0 + 16)

  DeltaNormAccumulator acc;
  EXPECT_EQ(acc.Norm(), 0);
  acc.Add(v1::F32, BytesOf<float>({1, 2}), BytesOf<float>({2, 4}));
  acc.Add(v1::F32, BytesOf<float>({0, 0, 0}), BytesOf<float>({-2, 0, 4}));
  EXPECT_EQ(acc.Norm(), *norm);

  DeltaNormAccumulator f64;
  f64.Add(v1::F64, BytesOf<double>({0, 0}), BytesOf<double>({3, -4}));
  EXPECT_EQ(f64.Norm(), 5);
}

TEST(RobustDeltaNormTest, AgreesAcrossTheChunkBoundary) {
  constexpr int64_t kN = 300000;
  RobustHarness h(OneTensor(kN));
  std::vector<float> base(kN), x(kN);
  for (int64_t i = 0; i < kN; ++i) {
    base[i] = static_cast<float>(i % 97);
    x[i] = base[i] + (i % 2 ? 2.0f : -2.0f);
  }
  h.SetBase(F32Model(base));
  h.Add(F32Model(x));
  auto norm = h.Norm(0);
  ASSERT_TRUE(norm.ok()) << norm.status();
  EXPECT_DOUBLE_EQ(*norm, 2 * std::sqrt(static_cast<double>(kN)));

  const std::string b = BytesOf(base), c = BytesOf(x);
  DeltaNormAccumulator acc;
  acc.Add(v1::F32, absl::string_view(b).substr(0, kChunkBytes),
          absl::string_view(c).substr(0, kChunkBytes));
  acc.Add(v1::F32, absl::string_view(b).substr(kChunkBytes),
          absl::string_view(c).substr(kChunkBytes));
  EXPECT_EQ(acc.Norm(), *norm);
}

TEST(RobustCountNonFiniteTest, FindsNaNAndInfInEveryDType) {
  const float fnan = std::numeric_limits<float>::quiet_NaN();
  const float finf = std::numeric_limits<float>::infinity();
  uint64_t first = 99;

  EXPECT_EQ(CountNonFinite(v1::F32, BytesOf<float>({1, 2, fnan, -finf, 3}), &first), 2u);
  EXPECT_EQ(first, 2u);
  EXPECT_EQ(CountNonFinite(v1::F64, BytesOf<double>({0, -kInf, kNaN}), &first), 2u);
  EXPECT_EQ(first, 1u);
  // F16: 1.0, max finite 65504, +Inf, NaN, -Inf, smallest subnormal.
  EXPECT_EQ(
      CountNonFinite(v1::F16, BytesOf<uint16_t>({0x3c00, 0x7bff, 0x7c00, 0x7e00, 0xfc00, 0x0001}),
                     &first),
      3u);
  EXPECT_EQ(first, 2u);
  EXPECT_EQ(CountNonFinite(v1::BF16,
                           BytesOf<uint16_t>({FloatToBf16Bits(1), FloatToBf16Bits(3e38f),
                                              FloatToBf16Bits(fnan), 0xff80}),
                           &first),
            2u);
  EXPECT_EQ(first, 2u);
  EXPECT_EQ(CountNonFinite(v1::F32, BytesOf<float>({fnan}), nullptr), 1u);

  // All finite: 0, and *first_index is left alone.
  first = 99;
  EXPECT_EQ(CountNonFinite(v1::F32, BytesOf<float>({0, -0.0f, 3.4e38f, 1e-45f}), &first), 0u);
  EXPECT_EQ(CountNonFinite(v1::F64, BytesOf<double>({1e308, -5e-324}), &first), 0u);
  EXPECT_EQ(CountNonFinite(v1::BF16, BytesOf<uint16_t>({0x7f7f}), &first), 0u);
  EXPECT_EQ(CountNonFinite(v1::F16, "", &first), 0u);
  EXPECT_EQ(first, 99u);
}

// --- Across the chunk boundary --------------------------------------------------------

TEST(RobustChunkBoundaryTest, EveryMethodFusesATwoChunkTensor) {
  constexpr int64_t kN = 300000;  // 1.2 MB of F32: one full chunk and a partial one
  const v1::Manifest m = Tensors({{"big", kN}, {"small", 2}});
  // Contribution j at i is f(i) + offsets[(i + j) % 5], so the outlier's owner changes
  // with i; median and 0.2-trimmed mean are both f(i) + 2.
  const std::vector<float> offsets = {-7, 1, 2, 3, 50};
  std::vector<float> want(kN);
  for (int64_t i = 0; i < kN; ++i) want[i] = static_cast<float>(i % 1000) + 2;
  RobustHarness h(m);
  for (int j = 0; j < 5; ++j) {
    std::vector<float> x(kN);
    for (int64_t i = 0; i < kN; ++i) x[i] = static_cast<float>(i % 1000) + offsets[(i + j) % 5];
    h.Add({BytesOf(x), BytesOf<float>({static_cast<float>(j), 1})});
  }
  const int64_t boundary = kChunkBytes / 4;  // first element of chunk 1
  for (bool median : {true, false}) {
    SCOPED_TRACE(median ? "median" : "trimmed mean");
    auto sha = median ? h.Median() : h.TrimmedMean(0.2);
    ASSERT_TRUE(sha.ok()) << sha.status();
    ASSERT_EQ(h.written().size(), 3u);
    EXPECT_EQ(h.written().at({0, 1}).size(), kN * 4 - kChunkBytes);
    std::vector<float> got = h.F32(0);
    ASSERT_EQ(got.size(), static_cast<size_t>(kN));
    EXPECT_EQ(got[boundary - 1], want[boundary - 1]);
    EXPECT_EQ(got[boundary], want[boundary]);
    EXPECT_EQ(got, want);
    EXPECT_EQ(h.F32(1), std::vector<float>({2, 1}));
    EXPECT_EQ(*sha, Sha256::Of(h.Output(0) + h.Output(1)));
  }
}

// With a memory bound too small for k chunks, the median and the trimmed mean work through
// each chunk in slices, reading every contribution's chunk once per slice, and give the
// same bytes as with all k chunks in memory.
TEST(RobustMemoryBoundTest, SlicedChunksGiveTheSameResult) {
  constexpr int64_t kN = 300000;  // F32: chunk 0 full (262144 elements), chunk 1 partial
  const v1::Manifest m = Tensors({{"big", kN}, {"small", 3}});
  RobustHarness h(m);
  for (int j = 0; j < 7; ++j) {
    std::vector<float> x(kN);
    for (int64_t i = 0; i < kN; ++i) {
      x[i] = static_cast<float>((i * 7919 + j * 104729) % 2003) / 7.0f - 100.0f;
    }
    h.Add({BytesOf(x), BytesOf<float>({static_cast<float>(j), -1, 0.5f})});
  }
  const int whole_reads = 7 * 3;  // k contributions x 3 chunks
  for (bool median : {true, false}) {
    SCOPED_TRACE(median ? "median" : "trimmed mean");
    auto fuse = [&](size_t memory) {
      return median ? h.Median(memory) : h.TrimmedMean(0.2, memory);
    };
    auto whole = fuse(kCoordinatewiseMemoryBytes);
    ASSERT_TRUE(whole.ok()) << whole.status();
    EXPECT_EQ(h.reads(), whole_reads);
    const std::string want = h.Output(0) + h.Output(1);
    // 1 MiB: slices of 24576 elements in blocks of 4096 (chunk 0 in 11, chunk 1 in 2);
    // 256 KiB: slices of 5850 in blocks of 1170, which divide nothing evenly.
    for (size_t memory : {size_t{1} << 20, size_t{256} << 10}) {
      SCOPED_TRACE(memory);
      auto sliced = fuse(memory);
      ASSERT_TRUE(sliced.ok()) << sliced.status();
      EXPECT_GT(h.reads(), whole_reads);
      EXPECT_EQ(*sliced, *whole);
      EXPECT_EQ(h.Output(0) + h.Output(1), want);
    }
  }
}

TEST(RobustChunkBoundaryTest, NormClippedMeanFusesATwoChunkTensor) {
  constexpr int64_t kN = 300000;
  RobustHarness h(OneTensor(kN));
  std::vector<float> base(kN);
  for (int64_t i = 0; i < kN; ++i) base[i] = static_cast<float>(i % 1000);
  h.SetBase(F32Model(base));
  std::vector<double> norms;
  for (float d : {1.0f, -1.0f, 4.0f}) {  // constant deltas: norms sqrt(kN) * |d|
    std::vector<float> x(base);
    for (float& v : x) v += d;
    h.Add(F32Model(x));
    auto n = h.Norm(h.k() - 1);
    ASSERT_TRUE(n.ok()) << n.status();
    norms.push_back(*n);
  }
  // Clip at 2 sqrt(kN): the third delta is halved, so the shift is (1 - 1 + 2) / 3.
  auto sha =
      h.NormClipped({1.0 / 3, 1.0 / 3, 1.0 / 3}, norms, 2 * std::sqrt(static_cast<double>(kN)));
  ASSERT_TRUE(sha.ok()) << sha.status();
  ASSERT_EQ(h.written().size(), 2u);
  std::vector<float> got = h.F32();
  ASSERT_EQ(got.size(), static_cast<size_t>(kN));
  const int64_t boundary = kChunkBytes / 4;
  for (int64_t i : {int64_t{0}, boundary - 1, boundary, kN - 1}) {
    EXPECT_NEAR(got[i], base[i] + 2.0 / 3, 1e-4) << i;
  }
  for (int64_t i = 0; i < kN; ++i) ASSERT_NEAR(got[i], base[i] + 2.0 / 3, 1e-4) << i;
}

// --- Poisoning ------------------------------------------------------------------------

TEST(RobustAdversarialTest, OneScaledContributionMovesTheMeanButNotRobustMethods) {
  constexpr int kN = 64;
  RobustHarness h(OneTensor(kN));
  std::vector<float> lo(kN, 1e9f), hi(kN, -1e9f);
  std::vector<float> last;
  for (int j = 0; j < 4; ++j) {
    std::vector<float> x(kN);
    for (int i = 0; i < kN; ++i) {
      x[i] = 1.0f + 0.01f * static_cast<float>((i * 7 + j * 13) % 11 - 5);  // within 0.05
      lo[i] = std::min(lo[i], x[i]);
      hi[i] = std::max(hi[i], x[i]);
    }
    h.Add(F32Model(x));
    last = x;
  }
  for (float& v : last) v *= 100;  // the attacker scales an honest-looking update
  h.Add(F32Model(last));
  h.SetBase(F32Model(std::vector<float>(kN, 1.0f)));

  auto in_honest_range = [&](const std::vector<float>& got) {
    for (int i = 0; i < kN; ++i) {
      if (got[i] < lo[i] || got[i] > hi[i]) return false;
    }
    return true;
  };
  ASSERT_TRUE(h.Mean().ok());
  for (float v : h.F32()) EXPECT_GT(v, 15);  // about (4 + 100) / 5
  ASSERT_TRUE(h.Median().ok());
  EXPECT_TRUE(in_honest_range(h.F32()));
  ASSERT_TRUE(h.TrimmedMean(0.2).ok());
  EXPECT_TRUE(in_honest_range(h.F32()));

  // Clipping at the median delta norm bounds the attacker's pull to 0.2 * that norm.
  std::vector<double> norms;
  for (size_t j = 0; j < h.k(); ++j) norms.push_back(*h.Norm(j));
  ASSERT_TRUE(h.NormClipped(std::vector<double>(5, 0.2), norms, Median(norms)).ok());
  for (float v : h.F32()) EXPECT_NEAR(v, 1.0, 0.1);
}

// --- Storage faults -------------------------------------------------------------------

TEST(RobustDataLossTest, WrongChunkSizeNamesContributionTensorAndChunk) {
  RobustHarness h(Tensors({{"ok", 1}, {"layer.7", 3}}));
  h.SetBase({BytesOf<float>({0}), BytesOf<float>({0, 0, 0})});
  h.Add({BytesOf<float>({1}), BytesOf<float>({1, 2, 3})});
  h.Add({BytesOf<float>({1}), BytesOf<float>({1, 2})});  // truncated in storage
  h.Add({BytesOf<float>({1}), BytesOf<float>({1, 2, 3})});
  for (const absl::Status& s : {h.Median().status(), h.TrimmedMean(0).status(),
                                h.NormClipped({0.5, 0.25, 0.25}, {1, 1, 1}, 1).status()}) {
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
    EXPECT_NE(s.message().find("contribution #1"), absl::string_view::npos) << s;
    EXPECT_NE(s.message().find("'layer.7' chunk 0"), absl::string_view::npos) << s;
  }
  auto norm = h.Norm(1);
  EXPECT_EQ(norm.status().code(), absl::StatusCode::kDataLoss) << norm.status();
}

TEST(RobustDataLossTest, WrongBaseChunkSizeIsDataLoss) {
  RobustHarness h(OneTensor(2));
  h.SetBase(F32Model({0}));
  h.Add(F32Model({1, 2}));
  auto sha = h.NormClipped({1}, {1}, 1);
  EXPECT_EQ(sha.status().code(), absl::StatusCode::kDataLoss) << sha.status();
  EXPECT_NE(sha.status().message().find("base"), absl::string_view::npos);
  EXPECT_TRUE(h.written().empty());
  EXPECT_EQ(h.Norm(0).status().code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace coldfuse::fusion
