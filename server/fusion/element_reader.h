// Reads ranges of elements, as doubles, from a tensor stored in 1 MiB chunks of any
// dtype, keeping the last chunk it read. Lets code walk two tensors of different dtypes
// (so different chunk grids) side by side. Not thread-safe.
#ifndef COLDFUSE_SERVER_FUSION_ELEMENT_READER_H_
#define COLDFUSE_SERVER_FUSION_ELEMENT_READER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/dtype.h"

namespace coldfuse::fusion {

class ElementReader {
 public:
  using ChunkFn = std::function<absl::StatusOr<std::string>(uint64_t chunk)>;
  // REQUIRES: DTypeSize(dtype) > 0.
  ElementReader(DType dtype, uint64_t num_elements, ChunkFn read);
  // A DELTA_INT8 tensor: I8 values from `read`, each multiplied by its block's F32 scale
  // from `read_scales` (ceil(num_elements / block) of them): q·s, exact in double.
  ElementReader(uint64_t num_elements, ChunkFn read, ChunkFn read_scales, uint32_t block);

  // Decodes elements [begin, begin + n) into `out`. OUT_OF_RANGE past the end;
  // DATA_LOSS if a stored chunk has the wrong size.
  absl::Status Read(uint64_t begin, uint64_t n, double* out);

 private:
  absl::Status ReadRaw(uint64_t begin, uint64_t n, double* out);

  DType dtype_;
  size_t esize_;
  uint64_t num_elements_;
  uint64_t per_chunk_;  // elements per full chunk
  ChunkFn read_;
  int64_t cached_index_ = -1;
  std::string cached_;
  // DELTA_INT8: the scales, and a buffer for those of one read.
  uint32_t block_ = 0;
  std::unique_ptr<ElementReader> scales_;
  std::vector<double> scale_values_;
};

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_ELEMENT_READER_H_
