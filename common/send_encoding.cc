#include "common/send_encoding.h"

#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"

namespace coldfuse {

absl::StatusOr<SendEncoding> ParseSendEncoding(absl::string_view encoding,
                                               absl::string_view send_dtype,
                                               uint32_t int8_block_size) {
  SendEncoding how;
  const std::string e = absl::AsciiStrToLower(encoding);
  if (e == "full") {
    how.encoding = v1::FULL;
  } else if (e == "delta") {
    how.encoding = v1::DELTA;
  } else if (e == "delta_int8") {
    how.encoding = v1::DELTA_INT8;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--encoding=", encoding, ": use full, delta or delta_int8"));
  }
  if (how.encoding == v1::DELTA_INT8) {
    if (!send_dtype.empty()) {
      return absl::InvalidArgumentError(
          "--send_dtype does not apply to --encoding=delta_int8 (its values are 8-bit)");
    }
    absl::Status block = CheckInt8BlockSize(int8_block_size);
    if (!block.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("--", block.message()));
    }
    how.int8_block_size = int8_block_size;
  } else if (!send_dtype.empty()) {
    auto dtype = ParseDType(send_dtype);
    if (!dtype.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--send_dtype=", send_dtype, ": use f32, f16, bf16 or f64"));
    }
    how.dtype = *dtype;
  }
  return how;
}

}  // namespace coldfuse
