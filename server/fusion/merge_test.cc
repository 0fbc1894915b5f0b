// TIES's trim thresholds against a sort of all the magnitudes; DARE's generator against
// SplitMix64's published first output, and its drop rate.
#include "server/fusion/merge.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/tensor_stream.h"

namespace coldfuse::fusion {
namespace {

// Tensors "a" (300 000 F32 elements, two chunks) and "b" (1 000), stored as given.
struct Model {
  v1::Manifest manifest;
  std::vector<std::string> bytes;
  ChunkReader reader() const {
    return [b = bytes](size_t, uint32_t t, uint64_t c) -> absl::StatusOr<std::string> {
      return b[t].substr(c * kChunkBytes, kChunkBytes);
    };
  }
};

Model Make(const std::vector<std::vector<double>>& values) {
  Model m;
  for (size_t t = 0; t < values.size(); ++t) {
    auto* s = m.manifest.add_tensors();
    s->set_name(t == 0 ? "a" : "b");
    s->set_dtype(v1::F32);
    s->add_shape(static_cast<int64_t>(values[t].size()));
    std::string bytes(values[t].size() * 4, '\0');
    EncodeFromDouble(v1::F32, values[t].data(), values[t].size(), bytes.data());
    m.bytes.push_back(bytes);
  }
  return m;
}

TEST(MergeTest, TrimThresholdsAreTheExactOrderStatistic) {
  std::mt19937_64 rng(5);
  std::normal_distribution<double> normal;
  const Model base = Make({std::vector<double>(300000, 0.0), std::vector<double>(1000, 0.0)});
  // Update 0: values over 40 binades; update 1: many ties and zeros (and -0).
  std::vector<std::vector<double>> u0(2), u1(2);
  for (size_t t = 0; t < 2; ++t) {
    const size_t n = t == 0 ? 300000 : 1000;
    for (size_t i = 0; i < n; ++i) {
      u0[t].push_back(
          static_cast<float>(normal(rng) * std::ldexp(1.0, static_cast<int>(i % 40) - 30)));
      const int r = static_cast<int>(rng() % 7);
      u1[t].push_back(r == 0 ? 0.0 : (r == 1 ? -0.0 : (r % 2 ? 0.25 : -0.5) * (r / 2)));
    }
  }
  std::vector<Model> models = {Make(u0), Make(u1)};
  std::vector<ContributionSource> sources(2);
  std::vector<std::unique_ptr<UpdateReader>> readers;
  std::vector<UpdateReader*> updates;
  for (int k = 0; k < 2; ++k) {
    sources[k].manifest = base.manifest;
    sources[k].read = models[k].reader();
    sources[k].delta = true;
    readers.push_back(std::make_unique<UpdateReader>(base.manifest, sources[k]));
    updates.push_back(readers.back().get());
  }
  // Gathering the candidates at once, after one or two passes, and never (pure radix
  // selection on all four 16-bit digits): the same thresholds.
  for (uint64_t collect_limit : {kTrimCollectLimit, uint64_t{20000}, uint64_t{0}}) {
    for (double density : {1e-6, 0.2, 0.5, 0.9, 1.0}) {
      auto got = TrimThresholds(base.manifest, updates, base.reader(), density, collect_limit);
      ASSERT_TRUE(got.ok()) << got.status();
      for (int k = 0; k < 2; ++k) {
        std::vector<double> mags;
        for (const auto& t : (k == 0 ? u0 : u1)) {
          for (double x : t) mags.push_back(std::fabs(static_cast<float>(x)));
        }
        const size_t rank = static_cast<size_t>(std::ceil(density * mags.size()));
        std::nth_element(mags.begin(), mags.begin() + (rank - 1), mags.end(), std::greater<>());
        EXPECT_EQ((*got)[k], mags[rank - 1])
            << "update " << k << ", density " << density << ", collect limit " << collect_limit;
      }
    }
  }
  EXPECT_EQ(TrimThresholds(base.manifest, updates, base.reader(), 0).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(TrimThresholds(base.manifest, updates, base.reader(), 1.5).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(MergeTest, DareMasksAreSplitMix64AndDropTheirRate) {
  // The first output of SplitMix64 seeded with 0 (Vigna's reference implementation).
  EXPECT_EQ(SplitMix64(0), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(DareDropBelow(0.0), 0u);
  EXPECT_EQ(DareDropBelow(0.5), uint64_t{1} << 52);
  const uint64_t key = DareTensorKey(7, 3, 11, 0);
  EXPECT_NE(key, DareTensorKey(7, 3, 11, 1));
  EXPECT_NE(key, DareTensorKey(7, 4, 11, 0));
  EXPECT_NE(key, DareTensorKey(8, 3, 11, 0));
  const double p = 0.3;
  const uint64_t below = DareDropBelow(p);
  const int n = 1000000;
  int dropped = 0;
  for (int e = 0; e < n; ++e) dropped += DareDrops(key, e, below);
  // Within 5 standard deviations of n·p.
  EXPECT_NEAR(dropped, n * p, 5 * std::sqrt(n * p * (1 - p)));
}

}  // namespace
}  // namespace coldfuse::fusion
