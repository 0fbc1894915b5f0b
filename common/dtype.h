// Element types of shared tensors (F32, F16, BF16, F64) and conversions between their
// little-endian bytes and float/double. Stateless; thread-safe.
#ifndef COLDFUSE_COMMON_DTYPE_H_
#define COLDFUSE_COMMON_DTYPE_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/tensor.pb.h"

namespace coldfuse {

using DType = v1::DType;

// Bytes per element; 0 for DTYPE_UNSPECIFIED or an unknown value.
size_t DTypeSize(DType dtype);
// F32, F16, BF16 or F64: what a base, a FULL or a DELTA tensor may be (not I8, which only
// carries a DELTA_INT8 contribution's values).
bool IsFloatDType(DType dtype);
// "F32", "F16", "BF16", "F64", "I8"; "UNSPECIFIED" otherwise.
absl::string_view DTypeName(DType dtype);
// Parses a float dtype's name as printed by DTypeName (case-insensitive).
absl::StatusOr<DType> ParseDType(absl::string_view name);

// Decodes `n` elements of `dtype` (I8 included) from little-endian `src` into `out`.
// REQUIRES: DTypeSize(dtype) > 0; `src` holds n * DTypeSize(dtype) bytes.
void DecodeToDouble(DType dtype, const void* src, size_t n, double* out);
void DecodeToFloat(DType dtype, const void* src, size_t n, float* out);
// Encodes `n` values into float `dtype` (round to nearest even for F16/BF16).
// REQUIRES: `dst` holds n * DTypeSize(dtype) bytes.
void EncodeFromDouble(DType dtype, const double* in, size_t n, void* dst);
void EncodeFromFloat(DType dtype, const float* in, size_t n, void* dst);

// Scalar conversions, exposed for tests.
uint16_t FloatToHalfBits(float f);
float HalfBitsToFloat(uint16_t h);
uint16_t FloatToBf16Bits(float f);
float Bf16BitsToFloat(uint16_t b);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_DTYPE_H_
