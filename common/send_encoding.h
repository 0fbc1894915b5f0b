// How a client sends a contribution (docs/protocol.md "Encodings", "8-bit deltas"), as
// coldfusectl push and coldfuse-client take it from their flags: the values themselves
// (FULL), their difference from the base (DELTA), optionally in another float dtype, or
// that difference in 8 bits with a scale per block (DELTA_INT8). Stateless; thread-safe.
#ifndef COLDFUSE_COMMON_SEND_ENCODING_H_
#define COLDFUSE_COMMON_SEND_ENCODING_H_

#include <cstdint>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/int8_delta.h"

namespace coldfuse {

struct SendEncoding {
  v1::Encoding encoding = v1::FULL;  // FULL, DELTA or DELTA_INT8
  // FULL and DELTA: send in this float dtype; unset: as trained.
  v1::DType dtype = v1::DTYPE_UNSPECIFIED;
  // DELTA_INT8: values per scale.
  uint32_t int8_block_size = kDefaultInt8BlockSize;
};

// From the flags' words: encoding "full", "delta" or "delta_int8"; send_dtype "" or a
// float dtype ("f32", "bf16", ...), not with delta_int8. INVALID_ARGUMENT saying which
// flag to fix.
absl::StatusOr<SendEncoding> ParseSendEncoding(absl::string_view encoding,
                                               absl::string_view send_dtype,
                                               uint32_t int8_block_size);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_SEND_ENCODING_H_
