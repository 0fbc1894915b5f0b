// 8-bit deltas: every decoded value within half a scale of the delta (the bound in
// docs/protocol.md) for blocks of many shapes, and the wire manifest.
#include "common/int8_delta.h"

#include <gtest/gtest.h>

#include <cmath>
#include <random>
#include <vector>

#include "absl/strings/match.h"
#include "common/dtype.h"

namespace coldfuse {
namespace {

// Quantises `d` in blocks of `block` and checks |q·s − d| <= s/2 (1 + 1e-12) for each.
void ExpectWithinBound(const std::vector<double>& d, size_t block) {
  std::vector<int8_t> q(d.size());
  for (size_t b = 0; b < d.size(); b += block) {
    const size_t n = std::min(block, d.size() - b);
    const float s = Int8BlockScale(&d[b], n);
    double amax = 0;
    for (size_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(d[b + i]));
    EXPECT_EQ(s, static_cast<float>(amax / 127.0));
    QuantizeInt8Block(&d[b], n, s, &q[b]);
    for (size_t i = 0; i < n; ++i) {
      const double u = static_cast<double>(q[b + i]) * s;
      // Where s underflows to 0, every |d| is below 127 × 2^-150.
      const double bound = s == 0 ? 127 * std::ldexp(1.0, -150) : 0.5 * s * (1 + 1e-12);
      ASSERT_LE(std::fabs(u - d[b + i]), bound) << "block " << b / block << " element " << i;
      ASSERT_GE(q[b + i], -127);
    }
  }
}

TEST(Int8DeltaTest, DecodedValuesAreWithinHalfAScale) {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  std::uniform_real_distribution<double> uniform(-1, 1);
  std::vector<double> d;
  for (int i = 0; i < 10000; ++i) d.push_back(1e-3 * normal(rng));
  for (int i = 0; i < 1000; ++i) d.push_back(uniform(rng));
  d.push_back(50.0);  // one outlier: its block's other values round to few levels
  for (int i = 0; i < 200; ++i) d.push_back(0.0);                              // an all-zero block
  for (int i = 0; i < 100; ++i) d.push_back(std::ldexp(uniform(rng), -1060));  // subnormal
  for (int i = 0; i < 37; ++i) d.push_back(-2.5 * i);  // a partial last block
  for (size_t block : {8u, 32u, 64u, 100u, 128u}) ExpectWithinBound(d, block);
  // The extreme value of a block is ±127 exactly.
  std::vector<int8_t> q(3);
  const double x[3] = {-3.0, 1.5, 0.0};
  QuantizeInt8Block(x, 3, Int8BlockScale(x, 3), q.data());
  EXPECT_EQ(q[0], -127);
  EXPECT_EQ(q[2], 0);
}

TEST(Int8DeltaTest, TheWireManifestHasScalesBeforeValues) {
  v1::Manifest base;
  auto* a = base.add_tensors();
  a->set_name("enc.weight");
  a->set_dtype(v1::BF16);
  a->add_shape(10);
  a->add_shape(13);
  auto* b = base.add_tensors();
  b->set_name("enc.bias");
  b->set_dtype(v1::F32);
  b->add_shape(64);
  auto m = Int8DeltaManifest(base, 64);
  ASSERT_TRUE(m.ok()) << m.status();
  ASSERT_EQ(m->tensors_size(), 4);
  EXPECT_EQ(m->tensors(0).name(), "enc.weight#scale");
  EXPECT_EQ(m->tensors(0).dtype(), v1::F32);
  EXPECT_EQ(m->tensors(0).shape(0), 3);  // ceil(130 / 64)
  EXPECT_EQ(m->tensors(1).name(), "enc.weight");
  EXPECT_EQ(m->tensors(1).dtype(), v1::I8);
  EXPECT_EQ(m->tensors(1).shape_size(), 2);
  EXPECT_EQ(m->tensors(2).shape(0), 1);
  EXPECT_EQ(DTypeSize(v1::I8), 1u);
  EXPECT_FALSE(IsFloatDType(v1::I8));
  EXPECT_EQ(Int8DeltaManifest(base, 7).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Int8DeltaManifest(base, 65537).status().code(), absl::StatusCode::kInvalidArgument);
  // A tensor already named like another's scale cannot be sent this way.
  b->set_name("enc.weight#scale");
  auto clash = Int8DeltaManifest(base, 64);
  EXPECT_EQ(clash.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(clash.status().message(), "appears twice")) << clash.status();
}

}  // namespace
}  // namespace coldfuse
