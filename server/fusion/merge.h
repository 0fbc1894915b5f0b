// The merging methods' pieces that are not plain sums (docs/protocol.md rules 11-13):
// TIES's per-update trim thresholds, found exactly by a streaming radix selection over
// the whole model (memory bounded whatever the model's size),
// and DARE's drop masks, drawn by a counter-based generator so that a mask depends only
// on (seed, round, contribution id, tensor, element), never on chunking or threads.
// Stateless functions; thread-safe.
#ifndef COLDFUSE_SERVER_FUSION_MERGE_H_
#define COLDFUSE_SERVER_FUSION_MERGE_H_

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"
#include "coldfuse/v1/tensor.pb.h"
#include "server/fusion/fusion.h"
#include "server/fusion/update_reader.h"

namespace coldfuse::fusion {

// splitmix64 (Steele, Lea and Flood 2014; the finaliser of Vigna's SplitMix64).
uint64_t SplitMix64(uint64_t z);

// The key of a contribution's mask for one tensor:
//   h = splitmix(seed); h = splitmix(h ^ round); h = splitmix(h ^ id); splitmix(h ^ tensor)
uint64_t DareTensorKey(uint64_t seed, uint64_t round, uint64_t contribution_id, uint32_t tensor);

// Element e is dropped when (splitmix(key ^ e) >> 11) < floor(drop_rate × 2^53).
uint64_t DareDropBelow(double drop_rate);
inline bool DareDrops(uint64_t tensor_key, uint64_t element, uint64_t drop_below) {
  return (SplitMix64(tensor_key ^ element) >> 11) < drop_below;
}

// For each update k: the ceil(density × N)-th largest |u| over all N elements of the
// model (N summed over every tensor), where u is what updates[k] reads. Per update, a
// radix selection on the bits of |u|, 16 at a time (a pass over the update each, with a
// 512 KiB histogram), until at most `collect_limit` elements can still hold the answer;
// one more pass gathers those and selects among them. Typically two or three passes, at
// most four. Updates are selected in parallel on the worker pool, as many at once as
// `memory_bytes` holds. INVALID_ARGUMENT for a density outside (0, 1] or an empty model;
// the readers' errors as they are.
inline constexpr uint64_t kTrimCollectLimit = uint64_t{8} << 20;  // 64 MiB of candidates
absl::StatusOr<std::vector<double>> TrimThresholds(const v1::Manifest& manifest,
                                                   const std::vector<UpdateReader*>& updates,
                                                   const ChunkReader& read_base, double density,
                                                   uint64_t collect_limit = kTrimCollectLimit,
                                                   size_t memory_bytes = size_t{256} << 20);

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_MERGE_H_
