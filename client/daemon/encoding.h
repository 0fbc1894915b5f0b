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
#include "common/send_encoding.h"
#include "common/tensor.h"

namespace coldfuse::daemon {

using ::coldfuse::ParseSendEncoding;
using ::coldfuse::SendEncoding;

// Replaces `tensors` (trained from `base`: the same names, shapes and order) by what is
// sent, and sets the header's manifest, encoding and int8_block_size. INVALID_ARGUMENT
// when the tensors do not match the base or a value is not finite.
absl::Status EncodeContribution(const SendEncoding& how, const std::vector<HostTensor>& base,
                                std::vector<HostTensor>* tensors, v1::ContributionHeader* header);

}  // namespace coldfuse::daemon

#endif  // COLDFUSE_CLIENT_DAEMON_ENCODING_H_
