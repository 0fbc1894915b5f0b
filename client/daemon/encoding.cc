#include "client/daemon/encoding.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"

namespace coldfuse::daemon {

namespace {

// Elements converted at a time: a few MiB of doubles, whatever the tensor's size.
constexpr uint64_t kPiece = uint64_t{1} << 18;

absl::Status NotFinite(const HostTensor& t, uint64_t element) {
  return absl::InvalidArgumentError(
      absl::StrCat("tensor '", t.spec.name(), "' element ", element,
                   " is not finite after training (it diverged: lower --lr, or keep "
                   "--max_grad_norm on); nothing was sent"));
}

// d = trained − base (base = null: d = trained) over elements [begin, begin + n), in double.
absl::Status Difference(const HostTensor& trained, const HostTensor* base, uint64_t begin,
                        uint64_t n, std::vector<double>* d, std::vector<double>* scratch) {
  d->resize(n);
  const DType td = trained.spec.dtype();
  DecodeToDouble(td, trained.data.data() + begin * DTypeSize(td), n, d->data());
  if (base != nullptr) {
    const DType bd = base->spec.dtype();
    scratch->resize(n);
    DecodeToDouble(bd, base->data.data() + begin * DTypeSize(bd), n, scratch->data());
    for (uint64_t i = 0; i < n; ++i) (*d)[i] -= (*scratch)[i];
  }
  for (uint64_t i = 0; i < n; ++i) {
    if (!std::isfinite((*d)[i])) return NotFinite(trained, begin + i);
  }
  return absl::OkStatus();
}

// Checks every value of `t` is finite.
absl::Status CheckFinite(const HostTensor& t) {
  ASSIGN_OR_RETURN(uint64_t n, NumElements(t.spec));
  std::vector<double> d, scratch;
  for (uint64_t begin = 0; begin < n; begin += kPiece) {
    RETURN_IF_ERROR(Difference(t, nullptr, begin, std::min(kPiece, n - begin), &d, &scratch));
  }
  return absl::OkStatus();
}

// FULL or DELTA: the values (minus the base) in `dtype`.
absl::StatusOr<HostTensor> Values(const HostTensor& trained, const HostTensor* base, DType dtype) {
  HostTensor out;
  out.spec = trained.spec;
  out.spec.set_dtype(dtype);
  ASSIGN_OR_RETURN(uint64_t n, NumElements(trained.spec));
  out.data.resize(n * DTypeSize(dtype));
  std::vector<double> d, scratch, back;
  for (uint64_t begin = 0; begin < n; begin += kPiece) {
    const uint64_t m = std::min(kPiece, n - begin);
    RETURN_IF_ERROR(Difference(trained, base, begin, m, &d, &scratch));
    char* dst = out.data.data() + begin * DTypeSize(dtype);
    EncodeFromDouble(dtype, d.data(), m, dst);
    // A narrower dtype's range can be too small (F16 ends at 65504).
    back.resize(m);
    DecodeToDouble(dtype, dst, m, back.data());
    for (uint64_t i = 0; i < m; ++i) {
      if (!std::isfinite(back[i])) {
        return absl::InvalidArgumentError(absl::StrCat(
            "tensor '", trained.spec.name(), "' element ", begin + i, " (", d[i], ") does not fit ",
            DTypeName(dtype), ": send it as bf16 or f32 (--send_dtype)"));
      }
    }
  }
  return out;
}

}  // namespace

absl::Status EncodeContribution(const SendEncoding& how, const std::vector<HostTensor>& base,
                                std::vector<HostTensor>* tensors, v1::ContributionHeader* header) {
  std::vector<HostTensor>& trained = *tensors;
  header->set_encoding(how.encoding);
  if (how.encoding == v1::FULL && how.dtype == v1::DTYPE_UNSPECIFIED) {
    for (const HostTensor& t : trained) RETURN_IF_ERROR(CheckFinite(t));
    header->clear_int8_block_size();
    *header->mutable_manifest() = ManifestOf(trained);
    return absl::OkStatus();  // as trained
  }
  if (how.encoding != v1::FULL) {
    v1::Manifest same = ManifestOf(trained);
    const v1::Manifest base_manifest = ManifestOf(base);
    for (int i = 0; i < same.tensors_size() && i < base_manifest.tensors_size(); ++i) {
      same.mutable_tensors(i)->set_dtype(base_manifest.tensors(i).dtype());
    }
    absl::Status match = CheckManifestMatches(base_manifest, same);
    if (!match.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat("the trained model does not match its base: ", match.message()));
    }
  }
  std::vector<HostTensor> sent;
  if (how.encoding == v1::DELTA_INT8) {
    ASSIGN_OR_RETURN(v1::Manifest manifest,
                     Int8DeltaManifest(ManifestOf(base), how.int8_block_size));
    const uint64_t block = how.int8_block_size;
    std::vector<double> d, scratch;
    for (size_t t = 0; t < trained.size(); ++t) {
      HostTensor scales{manifest.tensors(2 * t), {}}, values{manifest.tensors(2 * t + 1), {}};
      ASSIGN_OR_RETURN(uint64_t n, NumElements(trained[t].spec));
      const uint64_t blocks = (n + block - 1) / block;
      scales.data.resize(blocks * sizeof(float));
      values.data.resize(n);
      // Whole blocks at a time, so that each scale sees its whole block.
      const uint64_t piece = std::max<uint64_t>(block, kPiece / block * block);
      for (uint64_t begin = 0; begin < n; begin += piece) {
        const uint64_t m = std::min(piece, n - begin);
        RETURN_IF_ERROR(Difference(trained[t], &base[t], begin, m, &d, &scratch));
        for (uint64_t b0 = 0; b0 < m; b0 += block) {
          const uint64_t bn = std::min(block, m - b0);
          const float s = Int8BlockScale(d.data() + b0, bn);
          std::memcpy(scales.data.data() + (begin + b0) / block * sizeof(float), &s, sizeof(s));
          QuantizeInt8Block(d.data() + b0, bn, s,
                            reinterpret_cast<int8_t*>(values.data.data() + begin + b0));
        }
      }
      sent.push_back(std::move(scales));
      sent.push_back(std::move(values));
    }
    header->set_int8_block_size(how.int8_block_size);
  } else {
    for (size_t t = 0; t < trained.size(); ++t) {
      const DType dtype = how.dtype != v1::DTYPE_UNSPECIFIED ? how.dtype : trained[t].spec.dtype();
      ASSIGN_OR_RETURN(HostTensor v,
                       Values(trained[t], how.encoding == v1::DELTA ? &base[t] : nullptr, dtype));
      sent.push_back(std::move(v));
    }
    header->clear_int8_block_size();
  }
  *header->mutable_manifest() = ManifestOf(sent);
  *tensors = std::move(sent);
  return absl::OkStatus();
}

}  // namespace coldfuse::daemon
