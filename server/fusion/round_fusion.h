// The one entry point from a round's stored contributions to the next base: every
// contribution is read in the base's dtype and chunk grid (converting its dtype, adding
// the base to a DELTA), then the model's fusion method runs over them. No gRPC, no
// RocksDB: chunks come and go through ChunkReader/ChunkWriter. Thread-compatible.
#ifndef COLDFUSE_SERVER_FUSION_ROUND_FUSION_H_
#define COLDFUSE_SERVER_FUSION_ROUND_FUSION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "server/fusion/fusion.h"

namespace coldfuse::fusion {

// One stored contribution, as fusion needs to see it.
struct ContributionSource {
  // As sent: the base's tensor names, shapes and order; any float dtype per tensor.
  v1::Manifest manifest;
  // The values are x - base (DELTA) rather than x (FULL).
  bool delta = false;
  uint64_t num_examples = 0;
  // L2 norm of (x - base) over all tensors (for NORM_CLIPPED_MEAN).
  double delta_norm = 0;
  // Reads chunk `chunk` of tensor `tensor` as stored: the contribution's own dtype, cut
  // into kChunkBytes chunks. Its k argument is ignored. Must be thread-safe.
  ChunkReader read;
  // Set for a stale contribution (trained from an older base than the round's): reads
  // that older base (k ignored). The contribution then enters fusion as
  //   round base + weight * (contribution - trained-from base)
  // (its own delta, down-weighted, applied to the round's base).
  ChunkReader read_trained_from;
  double weight = 1.0;
  // Its contribution id (the seed of its DARE mask).
  uint64_t id = 0;
  // DELTA_INT8 (then `delta` is true too): elements per scale. Its stored entries are,
  // per base tensor t, the scales (2t) and the int8 values (2t + 1).
  uint32_t int8_block_size = 0;
};

// A reader of `c` in the base's dtype and chunk grid (k ignored): `c.read` itself when
// `c` is FULL, fresh and every tensor is in the base's dtype; otherwise a converting
// reader that decodes the stored elements into the update (minus the trained-from base
// for a stale FULL contribution), scales a stale one by c.weight, adds the round's base
// (`read_base`, k ignored) for a DELTA or a stale contribution, and encodes in the
// base's dtype (computing in double). Thread-safe.
ChunkReader ReadInBaseGrid(const v1::Manifest& base_manifest, const ContributionSource& c,
                           const ChunkReader& read_base);

// Fuses `contributions` into the next base with `model`'s fusion method and options,
// writing each chunk through `write`. `read_base` reads the round's base (k ignored).
// Returns the SHA-256 of the new base's bytes in manifest order. The arithmetic of each
// method is documented in docs/protocol.md ("Fusion arithmetic").
// INVALID_ARGUMENT for no contributions or bad options; DATA_LOSS if a stored chunk has
// the wrong size; the writer's and readers' errors as they are.
absl::StatusOr<std::string> FuseRound(const v1::ModelInfo& model,
                                      const std::vector<ContributionSource>& contributions,
                                      const ChunkReader& read_base, const ChunkWriter& write);

// The outer optimizer's state of the round's base (read) and of the new base (write),
// for FuseRoundStep. State chunk c of tensor t of slot s holds the state of base chunk c's
// elements (F32, F64 for F64 tensors).
struct OptimizerIo {
  uint64_t round_base_step = 0;            // the round base's step count (v0: 0)
  std::vector<uint32_t> round_base_slots;  // slots stored with it; none: all zero
  std::string round_base_state_sha256;     // as recorded with it
  ChunkReader read_state = nullptr;        // (slot, tensor, chunk) of the round base
  std::function<absl::Status(uint32_t slot, uint32_t tensor, uint64_t chunk,
                             absl::string_view data)>
      write_state = nullptr;
};

struct RoundFusionResult {
  std::string base_sha256;
  uint64_t step = 0;            // the new base's step count: round_base_step + 1
  std::vector<uint32_t> slots;  // state slots written
  std::string state_sha256;     // of the state written; empty with no slots
};

// True for the fusion methods that only exist on updates (TASK_ARITHMETIC, TIES, DARE).
bool IsMergeMethod(v1::FusionMethod method);

// FuseRound with the model's outer optimizer (docs/protocol.md "Outer optimizers"). For
// OUTER_PLAIN (or unset) and one of the first five methods it is FuseRound itself, byte
// for byte, and writes no state. Otherwise every contribution is read as its update, the
// fusion method makes the round's update Δ from them, and the optimizer's step writes the
// new base and its state. `round` is the round being fused (DARE's masks depend on it).
// DATA_LOSS when the round base's state does not match its record; otherwise the errors
// of FuseRound.
absl::StatusOr<RoundFusionResult> FuseRoundStep(
    uint64_t round, const v1::ModelInfo& model,
    const std::vector<ContributionSource>& contributions, const ChunkReader& read_base,
    const ChunkWriter& write, const OptimizerIo& io);

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_ROUND_FUSION_H_
