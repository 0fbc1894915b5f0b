#include "server/fusion/update_fusion.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "server/fusion/worker_pool.h"

namespace coldfuse::fusion {

absl::StatusOr<std::vector<BaseChunk>> BaseChunks(const v1::Manifest& manifest) {
  std::vector<BaseChunk> chunks;
  for (int t = 0; t < manifest.tensors_size(); ++t) {
    const v1::TensorSpec& spec = manifest.tensors(t);
    ASSIGN_OR_RETURN(uint64_t total, NumElements(spec));
    const uint64_t per_chunk = kChunkBytes / DTypeSize(spec.dtype());
    for (uint64_t c = 0, begin = 0; begin < total; ++c, begin += per_chunk) {
      chunks.push_back({static_cast<uint32_t>(t), c, begin, std::min(per_chunk, total - begin)});
    }
  }
  return chunks;
}

absl::Status ReadBaseChunk(const v1::Manifest& manifest, const ChunkReader& read_base,
                           const BaseChunk& at, std::vector<double>* b) {
  const v1::TensorSpec& spec = manifest.tensors(at.tensor);
  const size_t esize = DTypeSize(spec.dtype());
  ASSIGN_OR_RETURN(std::string raw, read_base(0, at.tensor, at.chunk));
  if (raw.size() != at.n * esize) {
    return absl::DataLossError(absl::StrCat("base chunk ", at.chunk, " of '", spec.name(),
                                            "' holds ", raw.size(), " bytes; expected ",
                                            at.n * esize));
  }
  b->resize(at.n);
  DecodeToDouble(spec.dtype(), raw.data(), at.n, b->data());
  return absl::OkStatus();
}

namespace {

// One base chunk's new base and state, and the state it read (hashed later, in order).
struct ChunkResult {
  absl::Status status;
  std::string out;
  std::string state_read[2];
  std::string state_out[2];
};

// About what ChunkFusion::Compute holds for a chunk of n elements, but the coordinate-wise
// block: b (as stored and as doubles), Δ, u, a stale update's trained-from values, the
// state as stored, as doubles and new, the new base; TIES's sums and counts; the stored
// chunks an update read decodes (values and, for 8-bit deltas, scales).
size_t ChunkArrayBytes(uint64_t n, bool ties, int slots) {
  return static_cast<size_t>(n) * sizeof(double) * (6 + 2 * slots + (ties ? 4 : 0)) +
         2 * kChunkBytes;
}

class ChunkFusion {
 public:
  ChunkFusion(const v1::Manifest& manifest, const std::vector<UpdateReader*>& updates,
              const DeltaReducer& reducer, const OuterStep& step, const ChunkReader& read_base,
              const StateIo& io, size_t slice_elems)
      : manifest_(manifest),
        updates_(updates),
        reducer_(reducer),
        step_(step),
        read_base_(read_base),
        io_(io),
        slice_elems_(slice_elems),
        linear_(reducer.coordinatewise == nullptr && !reducer.ties),
        slots_(StateSlots(step)) {}

  absl::Status Compute(const BaseChunk& at, ChunkResult* r) const {
    const v1::TensorSpec& spec = manifest_.tensors(at.tensor);
    const DType dtype = spec.dtype();
    const DType state_dtype = StateDType(dtype);
    const size_t esize = DTypeSize(dtype), ssize = DTypeSize(state_dtype);
    const uint64_t n = at.n;
    std::vector<double> b;
    RETURN_IF_ERROR(ReadBaseChunk(manifest_, read_base_, at, &b));
    std::vector<double> delta(n, 0.0);
    if (linear_) {
      RETURN_IF_ERROR(Linear(at, b, delta.data()));
    } else if (reducer_.ties) {
      RETURN_IF_ERROR(Ties(at, b, delta.data()));
    } else {
      RETURN_IF_ERROR(Coordinatewise(at, b, delta.data()));
    }
    std::vector<double> state_in[2];
    for (int s = 0; s < slots_; ++s) {
      state_in[s].assign(n, 0.0);
      r->state_out[s].assign(n * ssize, '\0');
      if (!io_.read) continue;
      ASSIGN_OR_RETURN(r->state_read[s], io_.read(s, at.tensor, at.chunk));
      if (r->state_read[s].size() != n * ssize) {
        return absl::DataLossError(absl::StrCat("state ", s, " chunk ", at.chunk, " of '",
                                                spec.name(), "' holds ", r->state_read[s].size(),
                                                " bytes; expected ", n * ssize));
      }
      DecodeToDouble(state_dtype, r->state_read[s].data(), n, state_in[s].data());
    }
    r->out.assign(n * esize, '\0');
    StepElements(step_, dtype, n, b.data(), delta.data(), state_in[0].data(), state_in[1].data(),
                 r->out.data(), r->state_out[0].data(), r->state_out[1].data());
    return absl::OkStatus();
  }

 private:
  // Δ = Σ_k w_k·u_k, k ascending.
  absl::Status Linear(const BaseChunk& at, const std::vector<double>& b, double* delta) const {
    std::vector<double> u(at.n);
    for (size_t k = 0; k < updates_.size(); ++k) {
      const double w = reducer_.coefficients[k];
      if (w == 0) continue;
      RETURN_IF_ERROR(updates_[k]->Read(at.tensor, at.begin, at.n, b.data(), u.data()));
      if (reducer_.transform) reducer_.transform(k, at.tensor, at.begin, u.data(), at.n);
      for (uint64_t i = 0; i < at.n; ++i) delta[i] = delta[i] + w * u[i];
    }
    return absl::OkStatus();
  }

  // The elected sign is that of Σ_k u_k (k ascending); Δ is the mean of the values of
  // that sign, times the scale, or 0 when the sum is 0.
  absl::Status Ties(const BaseChunk& at, const std::vector<double>& b, double* delta) const {
    const uint64_t n = at.n;
    std::vector<double> u(n), sum(n, 0.0), pos(n, 0.0), neg(n, 0.0);
    std::vector<uint32_t> pos_n(n, 0), neg_n(n, 0);
    for (size_t k = 0; k < updates_.size(); ++k) {
      RETURN_IF_ERROR(updates_[k]->Read(at.tensor, at.begin, n, b.data(), u.data()));
      if (reducer_.transform) reducer_.transform(k, at.tensor, at.begin, u.data(), n);
      for (uint64_t i = 0; i < n; ++i) {
        const double x = u[i];
        sum[i] = sum[i] + x;
        if (x > 0) {
          pos[i] = pos[i] + x;
          ++pos_n[i];
        } else if (x < 0) {
          neg[i] = neg[i] + x;
          ++neg_n[i];
        }
      }
    }
    const double scale = reducer_.ties_scale;
    for (uint64_t i = 0; i < n; ++i) {
      if (sum[i] > 0) {
        delta[i] = scale * (pos[i] / static_cast<double>(pos_n[i]));
      } else if (sum[i] < 0) {
        delta[i] = scale * (neg[i] / static_cast<double>(neg_n[i]));
      }
    }
    return absl::OkStatus();
  }

  // Δ = coordinatewise(the K updates of the element), a slice of the chunk at a time.
  absl::Status Coordinatewise(const BaseChunk& at, const std::vector<double>& b,
                              double* delta) const {
    const size_t k_count = updates_.size();
    std::vector<double> block, column(k_count);
    for (uint64_t s0 = 0; s0 < at.n; s0 += slice_elems_) {
      const uint64_t m = std::min<uint64_t>(slice_elems_, at.n - s0);
      block.resize(k_count * m);
      for (size_t k = 0; k < k_count; ++k) {
        RETURN_IF_ERROR(
            updates_[k]->Read(at.tensor, at.begin + s0, m, b.data() + s0, block.data() + k * m));
      }
      for (uint64_t i = 0; i < m; ++i) {
        for (size_t k = 0; k < k_count; ++k) column[k] = block[k * m + i];
        delta[s0 + i] = reducer_.coordinatewise(column.data(), k_count);
      }
    }
    return absl::OkStatus();
  }

  const v1::Manifest& manifest_;
  const std::vector<UpdateReader*>& updates_;
  const DeltaReducer& reducer_;
  const OuterStep& step_;
  const ChunkReader& read_base_;
  const StateIo& io_;
  const size_t slice_elems_;
  const bool linear_;
  const int slots_;
};

}  // namespace

absl::StatusOr<UpdateFusionResult> FuseUpdates(const v1::Manifest& manifest,
                                               const std::vector<UpdateReader*>& updates,
                                               const DeltaReducer& reducer, const OuterStep& step,
                                               const ChunkReader& read_base,
                                               const ChunkWriter& write, const StateIo& io,
                                               size_t memory_bytes) {
  const size_t k_count = updates.size();
  const bool linear = reducer.coordinatewise == nullptr && !reducer.ties;
  if (k_count == 0) return absl::InvalidArgumentError("fusing no updates");
  if (linear && k_count != reducer.coefficients.size()) {
    return absl::InvalidArgumentError(absl::StrCat("fusing ", k_count, " updates with ",
                                                   reducer.coefficients.size(), " coefficients"));
  }
  ASSIGN_OR_RETURN(std::vector<BaseChunk> chunks, BaseChunks(manifest));
  const int slots = StateSlots(step);
  uint64_t largest = 1;
  for (const BaseChunk& at : chunks) largest = std::max(largest, at.n);
  // A window of chunks in flight: two per worker, within half the memory for their
  // arrays; the other half holds the coordinate-wise blocks (K updates of a slice).
  WorkerPool* pool = WorkerPool::Default();
  const size_t array_bytes = ChunkArrayBytes(largest, reducer.ties, slots);
  const size_t window = std::max<size_t>(
      1, std::min<size_t>(2 * static_cast<size_t>(pool->size()), memory_bytes / 2 / array_bytes));
  const size_t slice_elems =
      std::max<size_t>(1, memory_bytes / 2 / window / (k_count * sizeof(double)));
  const ChunkFusion fusion(manifest, updates, reducer, step, read_base, io, slice_elems);
  std::vector<ChunkResult> results(window);
  Sha256 base_sha, read_sha, written_sha;
  for (size_t i = 0; i < chunks.size(); i += window) {
    const size_t w = std::min(window, chunks.size() - i);
    pool->ParallelFor(
        w, [&](size_t j) { results[j].status = fusion.Compute(chunks[i + j], &results[j]); });
    for (size_t j = 0; j < w; ++j) {
      ChunkResult& r = results[j];
      RETURN_IF_ERROR(r.status);
      const BaseChunk& at = chunks[i + j];
      if (io.read) {
        for (int s = 0; s < slots; ++s) read_sha.Update(r.state_read[s]);
      }
      base_sha.Update(r.out);
      RETURN_IF_ERROR(write(at.tensor, at.chunk, r.out));
      for (int s = 0; s < slots; ++s) {
        written_sha.Update(r.state_out[s]);
        if (io.write) RETURN_IF_ERROR(io.write(s, at.tensor, at.chunk, r.state_out[s]));
      }
    }
  }
  UpdateFusionResult result;
  result.base_sha256 = base_sha.Finish();
  result.state_read = read_sha.Finish();
  result.state_written = written_sha.Finish();
  return result;
}

}  // namespace coldfuse::fusion
