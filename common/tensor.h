// Host tensors (spec + raw little-endian bytes) and manifest checks shared by the
// server, the client and the CLI. Stateless; thread-safe.
#ifndef COLDFUSE_COMMON_TENSOR_H_
#define COLDFUSE_COMMON_TENSOR_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "coldfuse/v1/tensor.pb.h"

namespace coldfuse {

// A tensor held in memory: its spec and exactly ByteLength(spec) bytes.
struct HostTensor {
  v1::TensorSpec spec;
  std::string data;
};

// Largest tensor or manifest total we accept anywhere: 1 TiB.
inline constexpr uint64_t kMaxTotalBytes = uint64_t{1} << 40;
// Most tensors a manifest may list.
inline constexpr int kMaxTensors = 1 << 20;

// Element count of `spec`; INVALID_ARGUMENT for a negative dimension or overflow.
absl::StatusOr<uint64_t> NumElements(const v1::TensorSpec& spec);
// Bytes of `spec`'s data; INVALID_ARGUMENT for an unknown dtype or overflow.
absl::StatusOr<uint64_t> ByteLength(const v1::TensorSpec& spec);
// Sum of ByteLength over the manifest (checked).
absl::StatusOr<uint64_t> TotalBytes(const v1::Manifest& manifest);

// Checks a manifest is well formed: at least one tensor, names non-empty, unique and
// printable, dtypes known, dimensions non-negative, sizes within kMaxTotalBytes.
absl::Status ValidateManifest(const v1::Manifest& manifest);

// INVALID_ARGUMENT naming the first tensor whose name, dtype or shape differs, or
// the first missing or unexpected tensor.
absl::Status CheckManifestMatches(const v1::Manifest& expected, const v1::Manifest& got);

// "[128, 64]".
std::string ShapeString(const v1::TensorSpec& spec);

v1::Manifest ManifestOf(const std::vector<HostTensor>& tensors);

// Checks every tensor's data length matches its spec.
absl::Status CheckTensorSizes(const std::vector<HostTensor>& tensors);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_TENSOR_H_
