#include "server/fusion/robust.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <numeric>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "server/fusion/coordinatewise.h"

namespace coldfuse::fusion {
namespace {

// Elements decoded to double at a time per contribution (fewer when k is large, see
// FuseCoordinatewise).
constexpr size_t kBlock = 4096;

// Calls fn(spec, tensor, chunk, len) for every storage chunk of `manifest`, in order.
template <typename Fn>
absl::Status ForEachChunk(const v1::Manifest& manifest, Fn fn) {
  for (int t = 0; t < manifest.tensors_size(); ++t) {
    const v1::TensorSpec& spec = manifest.tensors(t);
    ASSIGN_OR_RETURN(uint64_t bytes, ByteLength(spec));
    for (uint64_t c = 0; c < ChunkCount(bytes); ++c) {
      const size_t len =
          static_cast<size_t>(std::min<uint64_t>(kChunkBytes, bytes - c * kChunkBytes));
      RETURN_IF_ERROR(fn(spec, static_cast<uint32_t>(t), c, len));
    }
  }
  return absl::OkStatus();
}

// Reads chunk `c` of tensor `t` through read(k, ...) and checks it holds `len` bytes;
// `who` names the source in the DATA_LOSS message ("contribution #2", "base").
absl::StatusOr<std::string> ReadChecked(const ChunkReader& read, size_t k, absl::string_view who,
                                        const v1::TensorSpec& spec, uint32_t t, uint64_t c,
                                        size_t len) {
  ASSIGN_OR_RETURN(std::string data, read(k, t, c));
  if (data.size() != len) {
    return absl::DataLossError(absl::StrCat(who, " tensor '", spec.name(), "' chunk ", c, " holds ",
                                            data.size(), " bytes; expected ", len));
  }
  return data;
}

std::string ContributionName(size_t k) { return absl::StrCat("contribution #", k); }

// Writes reduce(values of the k contributions at each coordinate) for every tensor.
// `reduce(double* column, size_t k)` may reorder the column. Holds about `memory_bytes`
// (see kCoordinatewiseMemoryBytes): a quarter for the decoded block of k columns, the
// rest for the k contributions' raw bytes of one slice of a chunk.
template <typename Reduce>
absl::StatusOr<std::string> FuseCoordinatewise(const v1::Manifest& manifest, size_t k,
                                               const ChunkReader& read, const ChunkWriter& write,
                                               size_t memory_bytes, Reduce reduce) {
  const size_t block_elems =
      std::clamp<size_t>(memory_bytes / 4 / (k * sizeof(double)), 64, kBlock);
  const size_t slice_budget = std::max<size_t>(memory_bytes - memory_bytes / 4, 1);
  Sha256 sha;
  std::vector<std::string> slices(k);
  std::vector<double> block(k * block_elems);
  std::vector<double> column(k);
  std::vector<double> result(block_elems);
  std::string out;
  RETURN_IF_ERROR(ForEachChunk(
      manifest,
      [&](const v1::TensorSpec& spec, uint32_t t, uint64_t c, size_t len) -> absl::Status {
        const size_t esize = DTypeSize(spec.dtype());
        const size_t n = len / esize;
        // Elements per slice: as many whole blocks as k raw slices fit in the budget.
        const size_t per_slice =
            std::max<size_t>(block_elems, slice_budget / (k * esize) / block_elems * block_elems);
        out.resize(len);
        for (size_t s0 = 0; s0 < n; s0 += per_slice) {
          const size_t s_n = std::min(per_slice, n - s0);
          for (size_t j = 0; j < k; ++j) {
            ASSIGN_OR_RETURN(std::string chunk,
                             ReadChecked(read, j, ContributionName(j), spec, t, c, len));
            if (s_n == n) {
              slices[j] = std::move(chunk);
            } else {
              slices[j].assign(chunk, s0 * esize, s_n * esize);
            }
          }
          for (size_t b = 0; b < s_n; b += block_elems) {
            const size_t m = std::min(block_elems, s_n - b);
            for (size_t j = 0; j < k; ++j) {
              DecodeToDouble(spec.dtype(), slices[j].data() + b * esize, m,
                             &block[j * block_elems]);
            }
            for (size_t i = 0; i < m; ++i) {
              for (size_t j = 0; j < k; ++j) column[j] = block[j * block_elems + i];
              result[i] = reduce(column.data(), k);
            }
            EncodeFromDouble(spec.dtype(), result.data(), m, out.data() + (s0 + b) * esize);
          }
        }
        sha.Update(out);
        return write(t, c, out);
      }));
  return sha.Finish();
}

template <typename Bits>
uint64_t CountExponentAllOnes(absl::string_view chunk, Bits exponent_mask, uint64_t* first_index) {
  const size_t n = chunk.size() / sizeof(Bits);
  // Branch-free, so the compiler vectorises it: every upload's chunk passes here.
  uint64_t count = 0;
  for (size_t i = 0; i < n; ++i) {
    Bits bits;
    std::memcpy(&bits, chunk.data() + i * sizeof(Bits), sizeof(Bits));
    count += (bits & exponent_mask) == exponent_mask;
  }
  if (count > 0 && first_index != nullptr) {
    for (size_t i = 0; i < n; ++i) {
      Bits bits;
      std::memcpy(&bits, chunk.data() + i * sizeof(Bits), sizeof(Bits));
      if ((bits & exponent_mask) == exponent_mask) {
        *first_index = i;
        break;
      }
    }
  }
  return count;
}

}  // namespace

absl::StatusOr<std::string> FuseMedian(const v1::Manifest& manifest, size_t k,
                                       const ChunkReader& read, const ChunkWriter& write,
                                       size_t memory_bytes) {
  if (k == 0) return absl::InvalidArgumentError("median of no contributions");
  return FuseCoordinatewise(manifest, k, read, write, memory_bytes, MedianInPlace);
}

absl::StatusOr<std::string> FuseTrimmedMean(const v1::Manifest& manifest, size_t k,
                                            double trim_fraction, const ChunkReader& read,
                                            const ChunkWriter& write, size_t memory_bytes) {
  if (k == 0) return absl::InvalidArgumentError("trimmed mean of no contributions");
  if (!(trim_fraction >= 0 && trim_fraction < 0.5)) {
    return absl::InvalidArgumentError(
        absl::StrCat("trim fraction ", trim_fraction, " is not in [0, 0.5)"));
  }
  const size_t trim = static_cast<size_t>(std::floor(trim_fraction * static_cast<double>(k)));
  if (2 * trim >= k) {
    return absl::InvalidArgumentError(absl::StrCat("trimming ", trim, " values from each end of ",
                                                   k, " contributions leaves none"));
  }
  return FuseCoordinatewise(manifest, k, read, write, memory_bytes,
                            [trim](double* v, size_t n) { return TrimmedMeanInPlace(v, n, trim); });
}

absl::StatusOr<std::string> FuseNormClippedMean(const v1::Manifest& manifest,
                                                const std::vector<double>& weights,
                                                const std::vector<double>& delta_norms,
                                                double clip_norm, const ChunkReader& base,
                                                const ChunkReader& read, const ChunkWriter& write) {
  const size_t k = weights.size();
  if (k == 0) return absl::InvalidArgumentError("norm-clipped mean of no contributions");
  if (delta_norms.size() != k) {
    return absl::InvalidArgumentError(
        absl::StrCat(k, " weights but ", delta_norms.size(), " delta norms"));
  }
  if (!(clip_norm > 0)) {
    return absl::InvalidArgumentError(absl::StrCat("clip norm ", clip_norm, " is not > 0"));
  }
  std::vector<double> coef(k);
  for (size_t j = 0; j < k; ++j) {
    if (!std::isfinite(weights[j]) || weights[j] < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("weight of contribution #", j, " is ", weights[j]));
    }
    const double norm = delta_norms[j];
    if (std::isnan(norm) || norm < 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("delta norm of contribution #", j, " is ", norm));
    }
    // Written so that an infinite norm under an infinite clip is unclipped, not NaN.
    const double scale = norm <= clip_norm ? 1.0 : clip_norm / norm;
    coef[j] = weights[j] * scale;
  }

  Sha256 sha;
  std::vector<double> base_values, acc, values;
  std::string out;
  RETURN_IF_ERROR(ForEachChunk(
      manifest,
      [&](const v1::TensorSpec& spec, uint32_t t, uint64_t c, size_t len) -> absl::Status {
        const size_t n = len / DTypeSize(spec.dtype());
        ASSIGN_OR_RETURN(std::string base_chunk, ReadChecked(base, 0, "base", spec, t, c, len));
        base_values.resize(n);
        DecodeToDouble(spec.dtype(), base_chunk.data(), n, base_values.data());
        acc = base_values;
        values.resize(n);
        for (size_t j = 0; j < k; ++j) {
          // A zero coefficient adds nothing; skipping it also keeps 0 * Inf out.
          if (coef[j] == 0) continue;
          ASSIGN_OR_RETURN(std::string data,
                           ReadChecked(read, j, ContributionName(j), spec, t, c, len));
          DecodeToDouble(spec.dtype(), data.data(), n, values.data());
          const double w = coef[j];
          for (size_t i = 0; i < n; ++i) acc[i] += w * (values[i] - base_values[i]);
        }
        out.resize(len);
        EncodeFromDouble(spec.dtype(), acc.data(), n, out.data());
        sha.Update(out);
        return write(t, c, out);
      }));
  return sha.Finish();
}

absl::StatusOr<double> DeltaNorm(const v1::Manifest& manifest, const ChunkReader& base,
                                 const ChunkReader& contribution) {
  DeltaNormAccumulator acc;
  RETURN_IF_ERROR(ForEachChunk(
      manifest,
      [&](const v1::TensorSpec& spec, uint32_t t, uint64_t c, size_t len) -> absl::Status {
        ASSIGN_OR_RETURN(std::string b, ReadChecked(base, 0, "base", spec, t, c, len));
        ASSIGN_OR_RETURN(std::string x,
                         ReadChecked(contribution, 0, "contribution", spec, t, c, len));
        acc.Add(spec.dtype(), b, x);
        return absl::OkStatus();
      }));
  return acc.Norm();
}

void DeltaNormAccumulator::Add(DType dtype, absl::string_view base_chunk,
                               absl::string_view contribution_chunk) {
  const size_t esize = DTypeSize(dtype);
  if (esize == 0) return;
  const size_t n = std::min(base_chunk.size(), contribution_chunk.size()) / esize;
  constexpr size_t kAddBlock = 1024;
  double b[kAddBlock];
  double x[kAddBlock];
  for (size_t start = 0; start < n; start += kAddBlock) {
    const size_t m = std::min(kAddBlock, n - start);
    DecodeToDouble(dtype, base_chunk.data() + start * esize, m, b);
    DecodeToDouble(dtype, contribution_chunk.data() + start * esize, m, x);
    // Summing each block before adding it to the total keeps the rounding error of a
    // billion-element model's sum small.
    double block_sum = 0;
    for (size_t i = 0; i < m; ++i) {
      const double d = x[i] - b[i];
      block_sum += d * d;
    }
    sum_sq_ += block_sum;
  }
}

double DeltaNormAccumulator::Norm() const { return std::sqrt(sum_sq_); }

uint64_t CountNonFinite(DType dtype, absl::string_view chunk, uint64_t* first_index) {
  // Non-finite exactly when the exponent bits are all ones, in all four formats.
  switch (dtype) {
    case v1::F32:
      return CountExponentAllOnes<uint32_t>(chunk, 0x7f800000u, first_index);
    case v1::F64:
      return CountExponentAllOnes<uint64_t>(chunk, 0x7ff0000000000000ull, first_index);
    case v1::F16:
      return CountExponentAllOnes<uint16_t>(chunk, 0x7c00, first_index);
    case v1::BF16:
      return CountExponentAllOnes<uint16_t>(chunk, 0x7f80, first_index);
    default:
      return 0;
  }
}

double Median(std::vector<double> values) { return MedianInPlace(values.data(), values.size()); }

}  // namespace coldfuse::fusion
