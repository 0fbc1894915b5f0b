// 8-bit deltas (docs/protocol.md "8-bit deltas"): a contribution sent as DELTA_INT8 is its
// difference from the base, cut into blocks of B elements per tensor, each block one F32
// scale s = f32(max|d| / 127) and int8 values q = clamp(nearbyint(d / s), -127, 127), so
// the server decodes u = q·s, within s/2 of d. On the wire, each base tensor NAME becomes
// two entries: "NAME#scale" (F32, [ceil(n / B)]) and then NAME (I8, its shape), so every
// entry keeps a fixed element size and the scales arrive before their values. Used by the
// server (checks) and both clients (quantisation). Stateless; thread-safe.
#ifndef COLDFUSE_COMMON_INT8_DELTA_H_
#define COLDFUSE_COMMON_INT8_DELTA_H_

#include <cstddef>
#include <cstdint>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coldfuse/v1/tensor.pb.h"

namespace coldfuse {

inline constexpr uint32_t kMinInt8BlockSize = 8;
inline constexpr uint32_t kMaxInt8BlockSize = 65536;
inline constexpr uint32_t kDefaultInt8BlockSize = 64;
inline constexpr char kInt8ScaleSuffix[] = "#scale";

// INVALID_ARGUMENT unless block is in [kMinInt8BlockSize, kMaxInt8BlockSize].
absl::Status CheckInt8BlockSize(uint32_t block);

// The wire manifest of a DELTA_INT8 contribution to `base` (whose tensors are float).
// INVALID_ARGUMENT for a bad block size, or when a scale's name is too long or is also the
// name of another tensor.
absl::StatusOr<v1::Manifest> Int8DeltaManifest(const v1::Manifest& base, uint32_t block);

// The scale of one block of deltas d[0..n): f32(max|d| / 127). REQUIRES: d finite.
float Int8BlockScale(const double* d, size_t n);
// q[i] = 0 if s == 0, else clamp(nearbyint(d[i] / s), -127, 127) (ties to even).
void QuantizeInt8Block(const double* d, size_t n, float s, int8_t* q);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_INT8_DELTA_H_
