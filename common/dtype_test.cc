#include "common/dtype.h"

#include <bit>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

using ::testing::HasSubstr;

float FromBits(uint32_t bits) { return std::bit_cast<float>(bits); }

TEST(DTypeTest, SizesAndNames) {
  EXPECT_EQ(DTypeSize(v1::F32), 4u);
  EXPECT_EQ(DTypeSize(v1::F16), 2u);
  EXPECT_EQ(DTypeSize(v1::BF16), 2u);
  EXPECT_EQ(DTypeSize(v1::F64), 8u);
  EXPECT_EQ(DTypeSize(v1::DTYPE_UNSPECIFIED), 0u);
  EXPECT_EQ(DTypeSize(static_cast<DType>(99)), 0u);
  EXPECT_EQ(DTypeName(v1::BF16), "BF16");
  EXPECT_EQ(DTypeName(static_cast<DType>(99)), "UNSPECIFIED");
}

TEST(DTypeTest, ParseIsCaseInsensitiveAndRoundTripsNames) {
  for (DType d : {v1::F32, v1::F16, v1::BF16, v1::F64}) {
    auto parsed = ParseDType(DTypeName(d));
    ASSERT_TRUE(parsed.ok()) << parsed.status();
    EXPECT_EQ(*parsed, d);
  }
  EXPECT_EQ(*ParseDType("bf16"), v1::BF16);
  EXPECT_EQ(*ParseDType("Bf16"), v1::BF16);
  EXPECT_EQ(*ParseDType("f64"), v1::F64);
}

TEST(DTypeTest, ParseRejectsUnknownNamesAndNamesThem) {
  for (const char* bad : {"", "F8", "float32", "UNSPECIFIED", " F32"}) {
    auto parsed = ParseDType(bad);
    ASSERT_FALSE(parsed.ok()) << bad;
    EXPECT_EQ(parsed.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(parsed.status().message(), HasSubstr(absl::StrCat("'", bad, "'")));
    EXPECT_THAT(parsed.status().message(), HasSubstr("BF16"));
  }
}

TEST(DTypeTest, Bf16KnownBitPatterns) {
  EXPECT_EQ(FloatToBf16Bits(1.0f), 0x3F80);
  EXPECT_EQ(FloatToBf16Bits(-2.0f), 0xC000);
  EXPECT_EQ(FloatToBf16Bits(0.0f), 0x0000);
  EXPECT_EQ(FloatToBf16Bits(-0.0f), 0x8000);
  EXPECT_EQ(FloatToBf16Bits(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(FloatToBf16Bits(-std::numeric_limits<float>::infinity()), 0xFF80);
  EXPECT_EQ(Bf16BitsToFloat(0x3F80), 1.0f);
  EXPECT_EQ(Bf16BitsToFloat(0xC000), -2.0f);
  // pi = 0x40490FDB rounds to 0x4049 (3.140625).
  EXPECT_EQ(FloatToBf16Bits(3.14159265f), 0x4049);
}

TEST(DTypeTest, Bf16RoundsToNearestEven) {
  // Exactly halfway between 0x3F80 and 0x3F81: ties go to the even 0x3F80.
  EXPECT_EQ(FloatToBf16Bits(FromBits(0x3F808000)), 0x3F80);
  // Halfway between 0x3F81 and 0x3F82: ties go to the even 0x3F82.
  EXPECT_EQ(FloatToBf16Bits(FromBits(0x3F818000)), 0x3F82);
  // Just above / below halfway.
  EXPECT_EQ(FloatToBf16Bits(FromBits(0x3F808001)), 0x3F81);
  EXPECT_EQ(FloatToBf16Bits(FromBits(0x3F807FFF)), 0x3F80);
  // Largest float rounds up to infinity.
  EXPECT_EQ(FloatToBf16Bits(std::numeric_limits<float>::max()), 0x7F80);
  EXPECT_EQ(FloatToBf16Bits(-std::numeric_limits<float>::max()), 0xFF80);
}

TEST(DTypeTest, Bf16NanStaysNan) {
  // A signalling NaN whose payload is only in the low 16 bits must not become infinity.
  for (uint32_t bits : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu}) {
    uint16_t b = FloatToBf16Bits(FromBits(bits));
    EXPECT_TRUE(std::isnan(Bf16BitsToFloat(b))) << std::hex << bits << " -> " << b;
    EXPECT_EQ(b & 0x8000, (bits >> 16) & 0x8000) << "sign kept";
  }
}

// Reference: the nearest bf16 (ties to even) chosen by comparing distances in double.
uint16_t ReferenceBf16(float f) {
  uint32_t bits = std::bit_cast<uint32_t>(f);
  uint16_t lo = static_cast<uint16_t>(bits >> 16);  // truncation (towards zero)
  double lo_val = std::fabs(static_cast<double>(Bf16BitsToFloat(lo)));
  // The next bf16 away from zero; past the largest finite one, 2^128 stands for infinity.
  double hi_val = (lo & 0x7FFF) == 0x7F7F ? std::ldexp(1.0, 128)
                                          : std::fabs(static_cast<double>(Bf16BitsToFloat(lo + 1)));
  double a = std::fabs(static_cast<double>(f));
  double d_lo = a - lo_val, d_hi = hi_val - a;
  if (d_lo < d_hi || (d_lo == d_hi && (lo & 1) == 0)) return lo;
  return static_cast<uint16_t>(lo + 1);
}

TEST(DTypeTest, Bf16MatchesReferenceRoundingOnASweep) {
  int checked = 0;
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFu; bits += 9973) {
    float f = FromBits(static_cast<uint32_t>(bits));
    if (!std::isfinite(f)) continue;
    ASSERT_EQ(FloatToBf16Bits(f), ReferenceBf16(f)) << std::hex << bits;
    ++checked;
  }
  EXPECT_GT(checked, 300000);
}

TEST(DTypeTest, Bf16EveryValueRoundTrips) {
  for (uint32_t b = 0; b <= 0xFFFF; ++b) {
    float f = Bf16BitsToFloat(static_cast<uint16_t>(b));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToBf16Bits(f), b) << std::hex << b;
  }
}

TEST(DTypeTest, HalfKnownBitPatterns) {
  EXPECT_EQ(FloatToHalfBits(1.0f), 0x3C00);
  EXPECT_EQ(FloatToHalfBits(-2.0f), 0xC000);
  EXPECT_EQ(FloatToHalfBits(0.5f), 0x3800);
  EXPECT_EQ(FloatToHalfBits(0.0f), 0x0000);
  EXPECT_EQ(FloatToHalfBits(-0.0f), 0x8000);
  EXPECT_EQ(FloatToHalfBits(65504.0f), 0x7BFF);  // largest half
  EXPECT_EQ(FloatToHalfBits(-65504.0f), 0xFBFF);
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -14)), 0x0400);  // smallest normal
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -24)), 0x0001);  // smallest subnormal
  EXPECT_EQ(FloatToHalfBits(-std::ldexp(1.0f, -24)), 0x8001);
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1023.0f, -24)), 0x03FF);  // largest subnormal
  EXPECT_EQ(HalfBitsToFloat(0x3C00), 1.0f);
  EXPECT_EQ(HalfBitsToFloat(0xC000), -2.0f);
  EXPECT_EQ(HalfBitsToFloat(0x7BFF), 65504.0f);
  EXPECT_EQ(HalfBitsToFloat(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfBitsToFloat(0x8001), -std::ldexp(1.0f, -24));
  EXPECT_EQ(HalfBitsToFloat(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_EQ(HalfBitsToFloat(0xFC00), -std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(HalfBitsToFloat(0x8000)));
}

TEST(DTypeTest, HalfOverflowsToInfinity) {
  const float inf = std::numeric_limits<float>::infinity();
  EXPECT_EQ(FloatToHalfBits(65519.0f), 0x7BFF);  // below the halfway point 65520
  EXPECT_EQ(FloatToHalfBits(65520.0f), 0x7C00);  // tie with "65536" goes to even: inf
  EXPECT_EQ(FloatToHalfBits(1e6f), 0x7C00);
  EXPECT_EQ(FloatToHalfBits(-1e6f), 0xFC00);
  EXPECT_EQ(FloatToHalfBits(std::numeric_limits<float>::max()), 0x7C00);
  EXPECT_EQ(FloatToHalfBits(inf), 0x7C00);
  EXPECT_EQ(FloatToHalfBits(-inf), 0xFC00);
}

TEST(DTypeTest, HalfRoundsToNearestEven) {
  // Normal range: 1 + 2^-11 is halfway between 0x3C00 and 0x3C01.
  EXPECT_EQ(FloatToHalfBits(1.0f + std::ldexp(1.0f, -11)), 0x3C00);
  EXPECT_EQ(FloatToHalfBits(1.0f + 3 * std::ldexp(1.0f, -11)), 0x3C02);
  EXPECT_EQ(FloatToHalfBits(1.0f + std::ldexp(1.0f, -11) + std::ldexp(1.0f, -20)), 0x3C01);
  // Rounding up carries into the exponent: just below 2 becomes 2.
  EXPECT_EQ(FloatToHalfBits(FromBits(0x3FFFFFFF)), 0x4000);
  // Subnormal range (unit 2^-24).
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -25)), 0x0000);   // 0.5 ulp: to even 0
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.5f, -25)), 0x0001);   // 0.75 ulp
  EXPECT_EQ(FloatToHalfBits(std::ldexp(3.0f, -25)), 0x0002);   // 1.5 ulp: to even 2
  EXPECT_EQ(FloatToHalfBits(std::ldexp(5.0f, -25)), 0x0002);   // 2.5 ulp: to even 2
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -30)), 0x0000);   // underflow to zero
  EXPECT_EQ(FloatToHalfBits(-std::ldexp(1.0f, -30)), 0x8000);  // keeps its sign
  EXPECT_EQ(FloatToHalfBits(std::ldexp(1.0f, -14) - std::ldexp(1.0f, -26)), 0x0400);
}

TEST(DTypeTest, HalfNanStaysNan) {
  for (uint32_t bits : {0x7FC00000u, 0x7F800001u, 0xFFC00000u, 0x7F802000u}) {
    uint16_t h = FloatToHalfBits(FromBits(bits));
    EXPECT_TRUE(std::isnan(HalfBitsToFloat(h))) << std::hex << bits << " -> " << h;
  }
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(0x7E00)));
  EXPECT_TRUE(std::isnan(HalfBitsToFloat(0x7C01)));
}

TEST(DTypeTest, HalfEveryValueRoundTrips) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    float f = HalfBitsToFloat(static_cast<uint16_t>(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(FloatToHalfBits(f), h) << std::hex << h;
  }
}

TEST(DTypeTest, HalfMatchesCompilerConversionOnASweep) {
#if defined(__FLT16_MAX__)
  int checked = 0;
  for (uint64_t bits = 0; bits <= 0xFFFFFFFFu; bits += 9973) {
    float f = FromBits(static_cast<uint32_t>(bits));
    _Float16 ref = static_cast<_Float16>(f);
    uint16_t want;
    std::memcpy(&want, &ref, 2);
    uint16_t got = FloatToHalfBits(f);
    if (std::isnan(f)) {
      ASSERT_TRUE(std::isnan(HalfBitsToFloat(got))) << std::hex << bits;
    } else {
      ASSERT_EQ(got, want) << std::hex << bits << " (" << f << ")";
    }
    ++checked;
  }
  EXPECT_GT(checked, 400000);
#else
  GTEST_SKIP() << "compiler has no _Float16";
#endif
}

TEST(DTypeTest, F32AndF64RoundTripExactly) {
  const std::vector<double> values = {0.0,    -0.0,  1.0,    -2.5,   0.1,
                                      1e-310, 1e300, -1e-45, 3.4e38, 123456.789};
  std::vector<unsigned char> buf(values.size() * 8);
  std::vector<double> back(values.size());
  EncodeFromDouble(v1::F64, values.data(), values.size(), buf.data());
  DecodeToDouble(v1::F64, buf.data(), values.size(), back.data());
  for (size_t i = 0; i < values.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint64_t>(back[i]), std::bit_cast<uint64_t>(values[i])) << i;
  }

  const std::vector<float> fvalues = {0.0f, -0.0f, 1.0f, 0.1f, 1e-45f, 3.4e38f, -7.25f};
  std::vector<unsigned char> fbuf(fvalues.size() * 4);
  std::vector<float> fback(fvalues.size());
  EncodeFromFloat(v1::F32, fvalues.data(), fvalues.size(), fbuf.data());
  DecodeToFloat(v1::F32, fbuf.data(), fvalues.size(), fback.data());
  for (size_t i = 0; i < fvalues.size(); ++i) {
    EXPECT_EQ(std::bit_cast<uint32_t>(fback[i]), std::bit_cast<uint32_t>(fvalues[i])) << i;
  }
  // F32 stored as F64 and read back as float is exact too.
  std::vector<unsigned char> wide(fvalues.size() * 8);
  EncodeFromFloat(v1::F64, fvalues.data(), fvalues.size(), wide.data());
  DecodeToFloat(v1::F64, wide.data(), fvalues.size(), fback.data());
  for (size_t i = 0; i < fvalues.size(); ++i) EXPECT_EQ(fback[i], fvalues[i]) << i;
}

TEST(DTypeTest, BytesAreLittleEndian) {
  const double one = 1.0;
  unsigned char b[8];
  EncodeFromDouble(v1::F32, &one, 1, b);
  EXPECT_EQ(std::vector<unsigned char>(b, b + 4),
            (std::vector<unsigned char>{0x00, 0x00, 0x80, 0x3F}));
  EncodeFromDouble(v1::F64, &one, 1, b);
  EXPECT_EQ(std::vector<unsigned char>(b, b + 8),
            (std::vector<unsigned char>{0, 0, 0, 0, 0, 0, 0xF0, 0x3F}));
  EncodeFromDouble(v1::F16, &one, 1, b);
  EXPECT_EQ(std::vector<unsigned char>(b, b + 2), (std::vector<unsigned char>{0x00, 0x3C}));
  EncodeFromDouble(v1::BF16, &one, 1, b);
  EXPECT_EQ(std::vector<unsigned char>(b, b + 2), (std::vector<unsigned char>{0x80, 0x3F}));

  const unsigned char half_pair[] = {0x00, 0xC0, 0xFF, 0x7B};  // -2, 65504
  double out[2];
  DecodeToDouble(v1::F16, half_pair, 2, out);
  EXPECT_EQ(out[0], -2.0);
  EXPECT_EQ(out[1], 65504.0);
  const unsigned char bf_pair[] = {0x80, 0xBF, 0x49, 0x40};  // -1, 3.140625
  float fout[2];
  DecodeToFloat(v1::BF16, bf_pair, 2, fout);
  EXPECT_EQ(fout[0], -1.0f);
  EXPECT_EQ(fout[1], 3.140625f);
}

TEST(DTypeTest, EncodeHalfFromDoubleRoundsAndSaturatesLikeScalar) {
  const std::vector<double> in = {1.0, -2.0, 65504.0, 1e9, 1.0 / 3.0};
  std::vector<uint16_t> out(in.size());
  EncodeFromDouble(v1::F16, in.data(), in.size(), out.data());
  EXPECT_EQ(out[0], 0x3C00);
  EXPECT_EQ(out[1], 0xC000);
  EXPECT_EQ(out[2], 0x7BFF);
  EXPECT_EQ(out[3], 0x7C00);
  EXPECT_EQ(out[4], 0x3555);  // 1/3 in half precision
}

TEST(DTypeTest, EncodeFromDoubleRoundsOnceToNearest) {
  const double above_bf16_tie = 1.0 + std::ldexp(1.0, -8) + std::ldexp(1.0, -40);
  uint16_t b;
  EncodeFromDouble(v1::BF16, &above_bf16_tie, 1, &b);
  EXPECT_EQ(b, 0x3F81);
  const double above_half_tie = 1.0 + std::ldexp(1.0, -11) + std::ldexp(1.0, -40);
  uint16_t h;
  EncodeFromDouble(v1::F16, &above_half_tie, 1, &h);
  EXPECT_EQ(h, 0x3C01);
}

}  // namespace
}  // namespace coldfuse
