#include "common/int8_delta.h"

#include <algorithm>
#include <cmath>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "common/tensor.h"

namespace coldfuse {

absl::Status CheckInt8BlockSize(uint32_t block) {
  if (block < kMinInt8BlockSize || block > kMaxInt8BlockSize) {
    return absl::InvalidArgumentError(absl::StrCat("int8_block_size is ", block, "; use ",
                                                   kMinInt8BlockSize, " to ", kMaxInt8BlockSize,
                                                   " elements per scale (64 is a good default)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::Manifest> Int8DeltaManifest(const v1::Manifest& base, uint32_t block) {
  RETURN_IF_ERROR(CheckInt8BlockSize(block));
  v1::Manifest out;
  for (const auto& t : base.tensors()) {
    ASSIGN_OR_RETURN(uint64_t n, NumElements(t));
    v1::TensorSpec* scale = out.add_tensors();
    scale->set_name(absl::StrCat(t.name(), kInt8ScaleSuffix));
    scale->set_dtype(v1::F32);
    scale->add_shape(static_cast<int64_t>((n + block - 1) / block));
    v1::TensorSpec* values = out.add_tensors();
    *values = t;
    values->set_dtype(v1::I8);
  }
  absl::Status valid = ValidateManifest(out);
  if (!valid.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("this model cannot be sent as 8-bit deltas: ", valid.message()));
  }
  return out;
}

float Int8BlockScale(const double* d, size_t n) {
  double a = 0;
  for (size_t i = 0; i < n; ++i) a = std::max(a, std::fabs(d[i]));
  return static_cast<float>(a / 127.0);
}

void QuantizeInt8Block(const double* d, size_t n, float s, int8_t* q) {
  if (s == 0) {
    std::fill(q, q + n, int8_t{0});
    return;
  }
  const double scale = s;
  for (size_t i = 0; i < n; ++i) {
    const double r = std::nearbyint(d[i] / scale);
    q[i] = static_cast<int8_t>(std::clamp(r, -127.0, 127.0));
  }
}

}  // namespace coldfuse
