// Fusion methods over streams of tensor chunks: a round's contributions become the next
// base one storage chunk at a time, so peak memory is a few chunks whatever the model
// size and the number of contributions. No gRPC, no RocksDB. Thread-compatible.
#ifndef COLDFUSE_SERVER_FUSION_FUSION_H_
#define COLDFUSE_SERVER_FUSION_FUSION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/coldfuse.pb.h"

namespace coldfuse::fusion {

// Reads storage chunk `chunk` of tensor `tensor` of contribution `k` (0-based).
// Must be thread-safe: FuseWeighted reads two chunks at once.
using ChunkReader =
    std::function<absl::StatusOr<std::string>(size_t k, uint32_t tensor, uint64_t chunk)>;
// Writes storage chunk `chunk` of tensor `tensor` of the fused result.
using ChunkWriter =
    std::function<absl::Status(uint32_t tensor, uint64_t chunk, absl::string_view data)>;

// Normalised weights (summing to 1) for `method`: equal for MEAN (and UNSPECIFIED), or
// proportional to num_examples for EXAMPLE_WEIGHTED_MEAN.
// INVALID_ARGUMENT if there are no contributions or every weight is zero.
absl::StatusOr<std::vector<double>> FusionWeights(v1::FusionMethod method,
                                                  const std::vector<uint64_t>& num_examples);

// Writes sum_k weights[k] * contribution_k for every tensor of `manifest`, accumulating
// in F32 (F64 for F64 tensors, or when asked) and storing in each tensor's dtype. Returns the
// SHA-256 of the result's bytes in manifest order. DATA_LOSS if a stored chunk has the wrong size.
absl::StatusOr<std::string> FuseWeighted(const v1::Manifest& manifest,
                                         const std::vector<double>& weights,
                                         const ChunkReader& read, const ChunkWriter& write,
                                         bool accumulate_f64 = false);

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_FUSION_H_
