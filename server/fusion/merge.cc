#include "server/fusion/merge.h"

#include <cmath>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"

namespace coldfuse::fusion {

uint64_t SplitMix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ULL;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t DareTensorKey(uint64_t seed, uint64_t round, uint64_t contribution_id, uint32_t tensor) {
  uint64_t h = SplitMix64(seed);
  h = SplitMix64(h ^ round);
  h = SplitMix64(h ^ contribution_id);
  return SplitMix64(h ^ tensor);
}

uint64_t DareDropBelow(double drop_rate) {
  return static_cast<uint64_t>(std::floor(drop_rate * 9007199254740992.0));  // 2^53
}

namespace {

// Calls fn(k, u, n) for every update k and base chunk of the model, in order.
template <typename Fn>
absl::Status ForEachUpdateChunk(const v1::Manifest& manifest,
                                const std::vector<UpdateReader*>& updates,
                                const ChunkReader& read_base, Fn fn) {
  std::vector<double> b, u;
  for (int t = 0; t < manifest.tensors_size(); ++t) {
    const v1::TensorSpec& spec = manifest.tensors(t);
    const size_t esize = DTypeSize(spec.dtype());
    ASSIGN_OR_RETURN(uint64_t total, NumElements(spec));
    const uint64_t per_chunk = kChunkBytes / esize;
    for (uint64_t c = 0, begin = 0; begin < total; ++c, begin += per_chunk) {
      const uint64_t n = std::min(per_chunk, total - begin);
      ASSIGN_OR_RETURN(std::string raw, read_base(0, t, c));
      if (raw.size() != n * esize) {
        return absl::DataLossError(absl::StrCat("base chunk ", c, " of '", spec.name(), "' holds ",
                                                raw.size(), " bytes; expected ", n * esize));
      }
      b.resize(n);
      u.resize(n);
      DecodeToDouble(spec.dtype(), raw.data(), n, b.data());
      for (size_t k = 0; k < updates.size(); ++k) {
        RETURN_IF_ERROR(updates[k]->Read(t, begin, n, b.data(), u.data()));
        fn(k, u.data(), n);
      }
    }
  }
  return absl::OkStatus();
}

uint64_t MagnitudeBits(double x) {
  const double a = std::fabs(x);
  uint64_t bits;
  std::memcpy(&bits, &a, sizeof(bits));
  return bits;  // non-negative doubles order as their bits do
}

}  // namespace

absl::StatusOr<std::vector<double>> TrimThresholds(const v1::Manifest& manifest,
                                                   const std::vector<UpdateReader*>& updates,
                                                   const ChunkReader& read_base, double density) {
  if (!(density > 0 && density <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("TIES density ", density, " is not in (0, 1]"));
  }
  uint64_t total = 0;
  for (const auto& spec : manifest.tensors()) {
    ASSIGN_OR_RETURN(uint64_t n, NumElements(spec));
    total += n;
  }
  if (total == 0) return absl::InvalidArgumentError("TIES over a model with no elements");
  const size_t k_count = updates.size();
  // The rank sought, from the top (1-based): ceil(density × N), at least 1.
  const uint64_t rank = std::max<uint64_t>(
      1, std::min<uint64_t>(
             total, static_cast<uint64_t>(std::ceil(density * static_cast<double>(total)))));
  // Per update: the bits fixed so far (the high 16·level bits) and how many elements
  // above the current prefix remain to be skipped.
  std::vector<uint64_t> prefix(k_count, 0), want(k_count, rank);
  std::vector<std::vector<uint64_t>> hist(k_count, std::vector<uint64_t>(1 << 16));
  for (int level = 0; level < 4; ++level) {
    const int shift = 48 - 16 * level;
    for (auto& h : hist) std::fill(h.begin(), h.end(), 0);
    RETURN_IF_ERROR(
        ForEachUpdateChunk(manifest, updates, read_base, [&](size_t k, const double* u, size_t n) {
          uint64_t* h = hist[k].data();
          const uint64_t p = prefix[k];
          for (size_t i = 0; i < n; ++i) {
            const uint64_t bits = MagnitudeBits(u[i]);
            // Only elements whose higher digits equal the prefix found so far.
            if (level > 0 && (bits >> (shift + 16)) != p) continue;
            ++h[(bits >> shift) & 0xffff];
          }
        }));
    for (size_t k = 0; k < k_count; ++k) {
      uint64_t digit = 0xffff, seen = 0;
      for (;; --digit) {
        if (seen + hist[k][digit] >= want[k] || digit == 0) break;
        seen += hist[k][digit];
      }
      want[k] -= seen;
      prefix[k] = (prefix[k] << 16) | digit;
    }
  }
  std::vector<double> thresholds(k_count);
  for (size_t k = 0; k < k_count; ++k) std::memcpy(&thresholds[k], &prefix[k], sizeof(double));
  return thresholds;
}

}  // namespace coldfuse::fusion
