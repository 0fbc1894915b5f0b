#include "server/fusion/merge.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "server/fusion/update_fusion.h"
#include "server/fusion/worker_pool.h"

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

uint64_t MagnitudeBits(double x) {
  const double a = std::fabs(x);
  uint64_t bits;
  std::memcpy(&bits, &a, sizeof(bits));
  return bits;  // non-negative doubles order as their bits do
}

// Calls fn(u, n) for every base chunk of the model, in order, with u what `update` reads.
template <typename Fn>
absl::Status ForEachUpdateChunk(const v1::Manifest& manifest, const std::vector<BaseChunk>& chunks,
                                const UpdateReader& update, const ChunkReader& read_base, Fn fn) {
  std::vector<double> b, u;
  for (const BaseChunk& at : chunks) {
    if (update.NeedsBase()) RETURN_IF_ERROR(ReadBaseChunk(manifest, read_base, at, &b));
    u.resize(at.n);
    RETURN_IF_ERROR(update.Read(at.tensor, at.begin, at.n, b.data(), u.data()));
    fn(u.data(), at.n);
  }
  return absl::OkStatus();
}

// The rank-th largest |u| (1-based) of one update over the `total` elements of the model.
// A radix selection on the magnitudes' bits, 16 at a time from the top: each pass counts
// the elements whose higher bits are those fixed so far, by their next 16. Once at most
// `collect_limit` elements remain candidates, one more pass gathers them and selects
// among them directly.
absl::StatusOr<double> TrimThreshold(const v1::Manifest& manifest,
                                     const std::vector<BaseChunk>& chunks,
                                     const UpdateReader& update, const ChunkReader& read_base,
                                     uint64_t total, uint64_t rank, uint64_t collect_limit) {
  uint64_t prefix = 0;         // the high 16·level bits fixed so far
  uint64_t want = rank;        // the rank sought among the candidates
  uint64_t remaining = total;  // the candidates: elements whose high bits are `prefix`
  std::vector<uint64_t> hist;
  for (int level = 0; level < 4; ++level) {
    const int shift = 48 - 16 * level;
    auto candidate = [&](uint64_t bits) { return level == 0 || (bits >> (shift + 16)) == prefix; };
    if (remaining <= collect_limit) {
      std::vector<uint64_t> found;
      found.reserve(remaining);
      RETURN_IF_ERROR(
          ForEachUpdateChunk(manifest, chunks, update, read_base, [&](const double* u, size_t n) {
            for (size_t i = 0; i < n; ++i) {
              const uint64_t bits = MagnitudeBits(u[i]);
              if (candidate(bits)) found.push_back(bits);
            }
          }));
      if (found.size() != remaining) {
        return absl::DataLossError(
            "an update read different values on two passes of TIES's threshold selection: its "
            "stored chunks changed");
      }
      std::nth_element(found.begin(), found.begin() + static_cast<ptrdiff_t>(want - 1), found.end(),
                       std::greater<uint64_t>());
      double threshold;
      std::memcpy(&threshold, &found[want - 1], sizeof(threshold));
      return threshold;
    }
    hist.assign(size_t{1} << 16, 0);
    RETURN_IF_ERROR(
        ForEachUpdateChunk(manifest, chunks, update, read_base, [&](const double* u, size_t n) {
          for (size_t i = 0; i < n; ++i) {
            const uint64_t bits = MagnitudeBits(u[i]);
            if (candidate(bits)) ++hist[(bits >> shift) & 0xffff];
          }
        }));
    uint64_t digit = 0xffff, seen = 0;
    for (;; --digit) {
      if (seen + hist[digit] >= want || digit == 0) break;
      seen += hist[digit];
    }
    want -= seen;
    remaining = hist[digit];
    prefix = (prefix << 16) | digit;
    if (want == 0 || want > remaining) {  // the passes counted different values
      return absl::DataLossError(
          "an update read different values on two passes of TIES's threshold selection: its "
          "stored chunks changed");
    }
  }
  double threshold;
  std::memcpy(&threshold, &prefix, sizeof(threshold));
  return threshold;
}

}  // namespace

absl::StatusOr<std::vector<double>> TrimThresholds(const v1::Manifest& manifest,
                                                   const std::vector<UpdateReader*>& updates,
                                                   const ChunkReader& read_base, double density,
                                                   uint64_t collect_limit, size_t memory_bytes) {
  if (!(density > 0 && density <= 1)) {
    return absl::InvalidArgumentError(absl::StrCat("TIES density ", density, " is not in (0, 1]"));
  }
  ASSIGN_OR_RETURN(std::vector<BaseChunk> chunks, BaseChunks(manifest));
  uint64_t total = 0, largest = 1;
  for (const BaseChunk& at : chunks) {
    total += at.n;
    largest = std::max(largest, at.n);
  }
  if (total == 0) return absl::InvalidArgumentError("TIES over a model with no elements");
  // The rank sought, from the top (1-based): ceil(density × N), at least 1.
  const uint64_t rank = std::max<uint64_t>(
      1, std::min<uint64_t>(
             total, static_cast<uint64_t>(std::ceil(density * static_cast<double>(total)))));
  // One update per task, as many at once as the pool has workers and the memory allows
  // (each, about: the base chunk as stored and as doubles, the update and a stale one's
  // trained-from values as doubles, the stored chunks being decoded, the histogram, the
  // candidates).
  WorkerPool* pool = WorkerPool::Default();
  const size_t task_bytes = 4 * largest * sizeof(double) + 2 * kChunkBytes + (size_t{8} << 16) +
                            static_cast<size_t>(std::min(collect_limit, total)) * 8;
  const size_t at_once = std::max<size_t>(
      1, std::min<size_t>(static_cast<size_t>(pool->size()), memory_bytes / task_bytes));
  std::vector<double> thresholds(updates.size());
  std::vector<absl::Status> status(updates.size());
  for (size_t k0 = 0; k0 < updates.size(); k0 += at_once) {
    pool->ParallelFor(std::min(at_once, updates.size() - k0), [&](size_t j) {
      const size_t k = k0 + j;
      auto t = TrimThreshold(manifest, chunks, *updates[k], read_base, total, rank, collect_limit);
      if (t.ok()) {
        thresholds[k] = *t;
      } else {
        status[k] = t.status();
      }
    });
  }
  for (const absl::Status& s : status) RETURN_IF_ERROR(s);
  return thresholds;
}

}  // namespace coldfuse::fusion
