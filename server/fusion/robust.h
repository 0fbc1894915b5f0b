// Robust fusion methods that bound what a few poisoned contributions can do to the next
// base (Blanchard et al. 2017; Yin et al. 2018): coordinate-wise median and trimmed mean,
// and a mean of norm-clipped deltas, plus the helpers that screen an upload (delta norm,
// non-finite count). Like FuseWeighted they stream storage chunks: peak memory is the K
// contributions' chunks at one position plus a few buffers, never K whole models.
// Stateless functions are thread-safe; DeltaNormAccumulator is thread-compatible.
//
// Ordering: NaN sorts above +Inf, so a minority of NaN values at a coordinate is
// discarded by the median and the trimmed mean like any other outlier.
#ifndef COLDFUSE_SERVER_FUSION_ROBUST_H_
#define COLDFUSE_SERVER_FUSION_ROBUST_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/dtype.h"
#include "server/fusion/fusion.h"

namespace coldfuse::fusion {

// The median and the trimmed mean need all k values of a coordinate at once. They hold at
// most about this many bytes of contributions (raw and decoded) whatever k is: when k
// chunks do not fit, each chunk is processed in slices, and every contribution's chunk is
// read once per slice (more reads, bounded memory). The norm-clipped mean reads one
// contribution at a time and needs no bound.
inline constexpr size_t kCoordinatewiseMemoryBytes = size_t{256} << 20;

// Writes the coordinate-wise median of contributions 0..k-1 (for even k, the mean of the
// two middle values) for every tensor of `manifest`, computed in double and stored in
// each tensor's dtype. Returns the SHA-256 of the result's bytes in manifest order.
// INVALID_ARGUMENT if k == 0; DATA_LOSS if a stored chunk has the wrong size.
absl::StatusOr<std::string> FuseMedian(const v1::Manifest& manifest, size_t k,
                                       const ChunkReader& read, const ChunkWriter& write,
                                       size_t memory_bytes = kCoordinatewiseMemoryBytes);

// Writes the coordinate-wise trimmed mean: at each coordinate, drops the
// floor(trim_fraction * k) lowest and as many highest values and averages the rest
// (unweighted). trim_fraction 0 is the plain mean. Returns the SHA-256 as FuseMedian.
// INVALID_ARGUMENT if k == 0, trim_fraction is not in [0, 0.5) or nothing would remain;
// DATA_LOSS if a stored chunk has the wrong size.
absl::StatusOr<std::string> FuseTrimmedMean(const v1::Manifest& manifest, size_t k,
                                            double trim_fraction, const ChunkReader& read,
                                            const ChunkWriter& write,
                                            size_t memory_bytes = kCoordinatewiseMemoryBytes);

// Writes base + sum_k weights[k] * s_k * (x_k - base), where
// s_k = min(1, clip_norm / delta_norms[k]) (1 when delta_norms[k] is 0), so no single
// contribution moves the base by more than weights[k] * clip_norm in L2.
// `base` reads the base's chunks (its k argument is ignored); `read` reads
// contribution k. A contribution whose coefficient weights[k] * s_k is 0 is not read.
// REQUIRES: weights sum to 1 (as FusionWeights returns); delta_norms[k] is
// DeltaNorm(manifest, base, contribution k).
// INVALID_ARGUMENT if weights is empty, the sizes differ, a weight is negative or not
// finite, a delta norm is negative or NaN, or clip_norm is not > 0 (+Inf: no clipping);
// DATA_LOSS if a stored chunk has the wrong size.
absl::StatusOr<std::string> FuseNormClippedMean(const v1::Manifest& manifest,
                                                const std::vector<double>& weights,
                                                const std::vector<double>& delta_norms,
                                                double clip_norm, const ChunkReader& base,
                                                const ChunkReader& read, const ChunkWriter& write);

// L2 norm of (contribution - base) over all tensors of `manifest`, computed in double.
// Streams; both readers are called with k = 0. DATA_LOSS if a stored chunk has the
// wrong size.
absl::StatusOr<double> DeltaNorm(const v1::Manifest& manifest, const ChunkReader& base,
                                 const ChunkReader& contribution);

// DeltaNorm in incremental form, for use while an upload streams in: Add each storage
// chunk of the contribution with the base's chunk at the same position. Added in
// storage order (manifest order, then chunk order), the chunks give exactly DeltaNorm.
class DeltaNormAccumulator {
 public:
  // Adds the squared differences of the elements of two chunks of `dtype`.
  // REQUIRES: base_chunk.size() == contribution_chunk.size(), a multiple of
  // DTypeSize(dtype) (extra bytes are ignored).
  void Add(DType dtype, absl::string_view base_chunk, absl::string_view contribution_chunk);
  // sqrt of the sum so far; 0 before any Add.
  double Norm() const;

 private:
  double sum_sq_ = 0;
};

// Number of non-finite (NaN or +-Inf) elements in `chunk` of `dtype`. If there is any,
// sets *first_index (when not null) to the first one's element index within the chunk;
// otherwise leaves it alone. 0 for an unknown dtype.
uint64_t CountNonFinite(DType dtype, absl::string_view chunk, uint64_t* first_index);

// Median of `values` (the mean of the two middle ones for an even count); 0 for empty.
// NaN sorts above +Inf.
double Median(std::vector<double> values);

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_ROBUST_H_
