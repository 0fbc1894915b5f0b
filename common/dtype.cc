#include "common/dtype.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <string>
#include <type_traits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"

namespace coldfuse {

static_assert(std::endian::native == std::endian::little,
              "coldfuse stores tensors little-endian and assumes a little-endian host");

size_t DTypeSize(DType dtype) {
  switch (dtype) {
    case v1::F32:
      return 4;
    case v1::F16:
      return 2;
    case v1::BF16:
      return 2;
    case v1::F64:
      return 8;
    case v1::I8:
      return 1;
    default:
      return 0;
  }
}

bool IsFloatDType(DType dtype) {
  return dtype == v1::F32 || dtype == v1::F16 || dtype == v1::BF16 || dtype == v1::F64;
}

absl::string_view DTypeName(DType dtype) {
  switch (dtype) {
    case v1::F32:
      return "F32";
    case v1::F16:
      return "F16";
    case v1::BF16:
      return "BF16";
    case v1::F64:
      return "F64";
    case v1::I8:
      return "I8";
    default:
      return "UNSPECIFIED";
  }
}

absl::StatusOr<DType> ParseDType(absl::string_view name) {
  std::string upper = absl::AsciiStrToUpper(name);
  for (DType d : {v1::F32, v1::F16, v1::BF16, v1::F64}) {
    if (upper == DTypeName(d)) return d;
  }
  return absl::InvalidArgumentError(
      absl::StrCat("unknown dtype '", name, "': use F32, F16, BF16 or F64"));
}

uint16_t FloatToBf16Bits(float f) {
  uint32_t bits = std::bit_cast<uint32_t>(f);
  if (std::isnan(f)) return static_cast<uint16_t>((bits >> 16) | 0x40);  // keep it a NaN
  uint32_t rounding = 0x7fff + ((bits >> 16) & 1);
  return static_cast<uint16_t>((bits + rounding) >> 16);
}

float Bf16BitsToFloat(uint16_t b) { return std::bit_cast<float>(static_cast<uint32_t>(b) << 16); }

uint16_t FloatToHalfBits(float f) {
  uint32_t x = std::bit_cast<uint32_t>(f);
  uint32_t sign = (x >> 16) & 0x8000;
  uint32_t abs = x & 0x7fffffff;
  if (abs > 0x7f800000) return static_cast<uint16_t>(sign | 0x7e00);   // NaN
  if (abs >= 0x477ff000) return static_cast<uint16_t>(sign | 0x7c00);  // overflow: inf
  if (abs < 0x38800000) {                                              // subnormal half (or zero)
    // Value = abs_float; half subnormal unit is 2^-24.
    float a = std::bit_cast<float>(abs);
    float scaled = a * 16777216.0f;  // 2^24
    uint32_t m = static_cast<uint32_t>(std::nearbyint(scaled));
    return static_cast<uint16_t>(sign | m);
  }
  uint32_t exp = ((abs >> 23) - 127 + 15) << 10;
  uint32_t mant = (abs >> 13) & 0x3ff;
  uint32_t rest = abs & 0x1fff;
  uint32_t h = exp | mant;
  if (rest > 0x1000 || (rest == 0x1000 && (mant & 1))) ++h;  // round to nearest even
  return static_cast<uint16_t>(sign | h);
}

float HalfBitsToFloat(uint16_t h) {
  uint32_t sign = static_cast<uint32_t>(h & 0x8000) << 16;
  uint32_t exp = (h >> 10) & 0x1f;
  uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    float v = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7f800000 | (mant << 13));
  return std::bit_cast<float>(sign | ((exp - 15 + 127) << 23) | (mant << 13));
}

namespace {

// double -> float rounding to odd: exact values stay; inexact ones are truncated toward
// zero with the lowest bit set. A following round-to-nearest-even to F16/BF16 (far fewer
// bits) then rounds exactly as one rounding from double would.
float RoundToOddFloat(double d) {
  if (std::isnan(d)) return static_cast<float>(d);
  float f = static_cast<float>(d);
  if (static_cast<double>(f) == d) return f;
  if (std::fabs(static_cast<double>(f)) > std::fabs(d)) f = std::nextafter(f, 0.0f);
  return std::bit_cast<float>(std::bit_cast<uint32_t>(f) | 1u);
}

template <typename T>
float ToFloatForHalf(T v) {
  if constexpr (std::is_same_v<T, double>) {
    return RoundToOddFloat(v);
  } else {
    return static_cast<float>(v);
  }
}

template <typename T>
void Decode(DType dtype, const void* src, size_t n, T* out) {
  const auto* p = static_cast<const unsigned char*>(src);
  switch (dtype) {
    case v1::F32:
      for (size_t i = 0; i < n; ++i) {
        float v;
        std::memcpy(&v, p + 4 * i, 4);
        out[i] = static_cast<T>(v);
      }
      break;
    case v1::F64:
      for (size_t i = 0; i < n; ++i) {
        double v;
        std::memcpy(&v, p + 8 * i, 8);
        out[i] = static_cast<T>(v);
      }
      break;
    case v1::F16:
    case v1::BF16:
      for (size_t i = 0; i < n; ++i) {
        uint16_t b;
        std::memcpy(&b, p + 2 * i, 2);
        out[i] = static_cast<T>(dtype == v1::F16 ? HalfBitsToFloat(b) : Bf16BitsToFloat(b));
      }
      break;
    case v1::I8:
      for (size_t i = 0; i < n; ++i) out[i] = static_cast<T>(static_cast<int8_t>(p[i]));
      break;
    default:
      break;
  }
}

template <typename T>
void Encode(DType dtype, const T* in, size_t n, void* dst) {
  auto* p = static_cast<unsigned char*>(dst);
  switch (dtype) {
    case v1::F32:
      for (size_t i = 0; i < n; ++i) {
        float v = static_cast<float>(in[i]);
        std::memcpy(p + 4 * i, &v, 4);
      }
      break;
    case v1::F64:
      for (size_t i = 0; i < n; ++i) {
        double v = static_cast<double>(in[i]);
        std::memcpy(p + 8 * i, &v, 8);
      }
      break;
    case v1::F16:
    case v1::BF16:
      for (size_t i = 0; i < n; ++i) {
        float f = ToFloatForHalf(in[i]);
        uint16_t b = dtype == v1::F16 ? FloatToHalfBits(f) : FloatToBf16Bits(f);
        std::memcpy(p + 2 * i, &b, 2);
      }
      break;
    default:
      break;
  }
}

}  // namespace

void DecodeToDouble(DType dtype, const void* src, size_t n, double* out) {
  Decode(dtype, src, n, out);
}
void DecodeToFloat(DType dtype, const void* src, size_t n, float* out) {
  Decode(dtype, src, n, out);
}
void EncodeFromDouble(DType dtype, const double* in, size_t n, void* dst) {
  Encode(dtype, in, n, dst);
}
void EncodeFromFloat(DType dtype, const float* in, size_t n, void* dst) {
  Encode(dtype, in, n, dst);
}

}  // namespace coldfuse
