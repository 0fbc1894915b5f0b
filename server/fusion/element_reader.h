// Reads ranges of elements, as doubles, from a tensor stored in 1 MiB chunks of any
// dtype, keeping the last chunk it read. Lets code walk two tensors of different dtypes
// (so different chunk grids) side by side. Not thread-safe; SharedChunks lets several
// readers on several threads share the stored chunks they read.
#ifndef COLDFUSE_SERVER_FUSION_ELEMENT_READER_H_
#define COLDFUSE_SERVER_FUSION_ELEMENT_READER_H_

#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/dtype.h"

namespace coldfuse::fusion {

using SharedChunk = std::shared_ptr<const std::string>;

class ElementReader {
 public:
  using ChunkFn = std::function<absl::StatusOr<std::string>(uint64_t chunk)>;
  using SharedChunkFn = std::function<absl::StatusOr<SharedChunk>(uint64_t chunk)>;
  // REQUIRES: DTypeSize(dtype) > 0.
  ElementReader(DType dtype, uint64_t num_elements, ChunkFn read);
  ElementReader(DType dtype, uint64_t num_elements, SharedChunkFn read);
  // A DELTA_INT8 tensor: I8 values from `read`, each multiplied by its block's F32 scale
  // from `read_scales` (ceil(num_elements / block) of them): q·s, exact in double.
  ElementReader(uint64_t num_elements, ChunkFn read, ChunkFn read_scales, uint32_t block);
  ElementReader(uint64_t num_elements, SharedChunkFn read, SharedChunkFn read_scales,
                uint32_t block);

  // Decodes elements [begin, begin + n) into `out`. OUT_OF_RANGE past the end;
  // DATA_LOSS if a stored chunk has the wrong size.
  absl::Status Read(uint64_t begin, uint64_t n, double* out);

 private:
  absl::Status ReadRaw(uint64_t begin, uint64_t n, double* out);

  DType dtype_;
  size_t esize_;
  uint64_t num_elements_;
  uint64_t per_chunk_;  // elements per full chunk
  SharedChunkFn read_;
  int64_t cached_index_ = -1;
  SharedChunk cached_;
  // DELTA_INT8: the scales, and a buffer for those of one read.
  uint32_t block_ = 0;
  std::unique_ptr<ElementReader> scales_;
  std::vector<double> scale_values_;
};

// The stored chunks (of any tensor) most recently read from one stream, kept for the
// threads reading it: at most `capacity` besides those the readers still hold. For a
// stream whose chunks span several base chunks (another dtype's grid, 8-bit values and
// their scales), read by threads working on neighbouring base chunks. Thread-safe.
class SharedChunks {
 public:
  using Fetch = std::function<absl::StatusOr<std::string>(uint32_t tensor, uint64_t chunk)>;
  SharedChunks(Fetch fetch, size_t capacity) : fetch_(std::move(fetch)), capacity_(capacity) {}

  absl::StatusOr<SharedChunk> Get(uint32_t tensor, uint64_t chunk) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Held {
    uint32_t tensor;
    uint64_t chunk;
    SharedChunk data;
  };
  const Fetch fetch_;
  const size_t capacity_;
  absl::Mutex mu_;
  std::deque<Held> held_ ABSL_GUARDED_BY(mu_);  // least recently used first
};

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_ELEMENT_READER_H_
