// Fusion in the update domain (docs/protocol.md "Outer optimizers"): per base chunk,
// every contribution is read as its update (UpdateReader), a reducer makes the round's
// update Δ (double), and the outer optimizer's step (outer_optimizer.h) turns the round
// base b, Δ and the base's state into the new base and its state. Base chunks are
// computed a window at a time on the worker pool, then hashed and written in order: memory
// is a few arrays of each in-flight chunk's elements, plus, for a coordinate-wise reducer,
// the K updates of a slice of each (a chunk is cut into slices when K of them do not
// fit), within about `memory_bytes` in all, whatever the model's size. The result does not
// depend on the number of threads: every element is computed the same way, by one thread.
#ifndef COLDFUSE_SERVER_FUSION_UPDATE_FUSION_H_
#define COLDFUSE_SERVER_FUSION_UPDATE_FUSION_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/tensor.pb.h"
#include "server/fusion/fusion.h"
#include "server/fusion/outer_optimizer.h"
#include "server/fusion/update_reader.h"

namespace coldfuse::fusion {

// A chunk of the round's base, as fusion in the update domain walks them.
struct BaseChunk {
  uint32_t tensor;
  uint64_t chunk;
  uint64_t begin;  // its first element
  uint64_t n;      // its elements
};

// Every base chunk of the model, in manifest order. INVALID_ARGUMENT for a bad shape.
absl::StatusOr<std::vector<BaseChunk>> BaseChunks(const v1::Manifest& manifest);

// Reads base chunk `at` and decodes it into `b` (resized to at.n). DATA_LOSS for a chunk
// of the wrong size; the reader's errors as they are.
absl::Status ReadBaseChunk(const v1::Manifest& manifest, const ChunkReader& read_base,
                           const BaseChunk& at, std::vector<double>* b);

// The optimizer state of the round's base (read) and of the new base (write). State chunk
// c of tensor t holds the state of base chunk c's elements in StateDType(base dtype).
struct StateIo {
  // (slot, tensor, chunk) of the round base's state; unset: all zero (the first step).
  ChunkReader read = nullptr;
  std::function<absl::Status(uint32_t slot, uint32_t tensor, uint64_t chunk,
                             absl::string_view data)>
      write = nullptr;
};

struct UpdateFusionResult {
  std::string base_sha256;    // of the new base's bytes, in manifest order
  std::string state_read;     // SHA-256 of the round base's state read (tensor, chunk, slot)
  std::string state_written;  // of the new state, in the same order
};

// How the K updates of an element become Δ.
// Its functions are called from several threads at once.
struct DeltaReducer {
  // Linear (when neither `coordinatewise` nor `ties` is set): Δ = Σ_k coefficients[k]·u_k,
  // summed in double from 0 with k ascending; an update whose coefficient is 0 is not
  // read.
  std::vector<double> coefficients;
  // Coordinate-wise: Δ = coordinatewise(column of the K updates, K); may reorder the
  // column (MedianInPlace, TrimmedMeanInPlace).
  std::function<double(double* column, size_t k)> coordinatewise = nullptr;
  // Applied to each update as read, before it is summed (linear and TIES): DARE's drop
  // and rescale, TIES's trim. (k, tensor, first element, values, n).
  std::function<void(size_t k, uint32_t tensor, uint64_t begin, double* u, size_t n)> transform =
      nullptr;
  // TIES's sign election and disjoint mean, scaled by ties_scale (rule 12).
  bool ties = false;
  double ties_scale = 1.0;
};

inline constexpr size_t kUpdateFusionMemoryBytes = size_t{256} << 20;

// INVALID_ARGUMENT when there are no updates or the coefficients do not match them;
// DATA_LOSS for a base or state chunk of the wrong size; the readers' and writers' errors
// as they are.
absl::StatusOr<UpdateFusionResult> FuseUpdates(const v1::Manifest& manifest,
                                               const std::vector<UpdateReader*>& updates,
                                               const DeltaReducer& reducer, const OuterStep& step,
                                               const ChunkReader& read_base,
                                               const ChunkWriter& write, const StateIo& io,
                                               size_t memory_bytes = kUpdateFusionMemoryBytes);

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_UPDATE_FUSION_H_
