// How the daemon sends what it trained (docs/protocol.md "Encodings", "8-bit deltas"):
// the values themselves (FULL), their difference from the base they were trained from
// (DELTA), optionally in another float dtype, or that difference in 8 bits with a scale
// per block (DELTA_INT8, about a quarter of F32). Encoded once, when training ends, and
// saved as the pending contribution, so a resumed upload sends the same bytes.
// Stateless; thread-safe.
#ifndef COLDFUSE_CLIENT_DAEMON_ENCODING_H_
#define COLDFUSE_CLIENT_DAEMON_ENCODING_H_

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/int8_delta.h"
#include "common/tensor.h"

namespace coldfuse::daemon {

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

// Replaces `tensors` (trained from `base`: the same names, shapes and order) by what is
// sent, and sets the header's manifest, encoding and int8_block_size. INVALID_ARGUMENT
// when the tensors do not match the base or a value is not finite.
absl::Status EncodeContribution(const SendEncoding& how, const std::vector<HostTensor>& base,
                                std::vector<HostTensor>* tensors, v1::ContributionHeader* header);

}  // namespace coldfuse::daemon

#endif  // COLDFUSE_CLIENT_DAEMON_ENCODING_H_
