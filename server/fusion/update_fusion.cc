#include "server/fusion/update_fusion.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"

namespace coldfuse::fusion {

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
  // Coordinate-wise: the K updates of a slice of a chunk, as doubles, in memory_bytes.
  const size_t slice_elems = std::max<size_t>(1, memory_bytes / (k_count * sizeof(double)));
  std::vector<double> block, column(k_count);
  const int slots = StateSlots(step);
  Sha256 base_sha, read_sha, written_sha;
  for (int t = 0; t < manifest.tensors_size(); ++t) {
    const v1::TensorSpec& spec = manifest.tensors(t);
    const DType dtype = spec.dtype();
    const DType state_dtype = StateDType(dtype);
    const size_t esize = DTypeSize(dtype), ssize = DTypeSize(state_dtype);
    ASSIGN_OR_RETURN(uint64_t total, NumElements(spec));
    const uint64_t per_chunk = kChunkBytes / esize;
    for (uint64_t c = 0, begin = 0; begin < total; ++c, begin += per_chunk) {
      const uint64_t n = std::min(per_chunk, total - begin);
      ASSIGN_OR_RETURN(std::string raw, read_base(0, t, c));
      if (raw.size() != n * esize) {
        return absl::DataLossError(absl::StrCat("base chunk ", c, " of '", spec.name(), "' holds ",
                                                raw.size(), " bytes; expected ", n * esize));
      }
      std::vector<double> b(n), delta(n, 0.0), u(n);
      DecodeToDouble(dtype, raw.data(), n, b.data());
      if (linear) {
        for (size_t k = 0; k < k_count; ++k) {
          const double w = reducer.coefficients[k];
          if (w == 0) continue;
          RETURN_IF_ERROR(updates[k]->Read(t, begin, n, b.data(), u.data()));
          if (reducer.transform) reducer.transform(k, t, begin, u.data(), n);
          for (uint64_t i = 0; i < n; ++i) delta[i] = delta[i] + w * u[i];
        }
      } else if (reducer.ties) {
        // The elected sign is that of Σ_k u_k (k ascending); Δ is the mean of the values
        // of that sign, times the scale, or 0 when the sum is 0.
        std::vector<double> sum(n, 0.0), pos(n, 0.0), neg(n, 0.0);
        std::vector<uint32_t> pos_n(n, 0), neg_n(n, 0);
        for (size_t k = 0; k < k_count; ++k) {
          RETURN_IF_ERROR(updates[k]->Read(t, begin, n, b.data(), u.data()));
          if (reducer.transform) reducer.transform(k, t, begin, u.data(), n);
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
        const double scale = reducer.ties_scale;
        for (uint64_t i = 0; i < n; ++i) {
          if (sum[i] > 0) {
            delta[i] = scale * (pos[i] / static_cast<double>(pos_n[i]));
          } else if (sum[i] < 0) {
            delta[i] = scale * (neg[i] / static_cast<double>(neg_n[i]));
          }
        }
      } else {
        for (uint64_t s0 = 0; s0 < n; s0 += slice_elems) {
          const uint64_t m = std::min<uint64_t>(slice_elems, n - s0);
          block.resize(k_count * m);
          for (size_t k = 0; k < k_count; ++k) {
            RETURN_IF_ERROR(
                updates[k]->Read(t, begin + s0, m, b.data() + s0, block.data() + k * m));
          }
          for (uint64_t i = 0; i < m; ++i) {
            for (size_t k = 0; k < k_count; ++k) column[k] = block[k * m + i];
            delta[s0 + i] = reducer.coordinatewise(column.data(), k_count);
          }
        }
      }
      std::vector<double> state_in[2];
      std::string state_out[2];
      for (int s = 0; s < slots; ++s) {
        state_in[s].assign(n, 0.0);
        state_out[s].assign(n * ssize, '\0');
        if (!io.read) continue;
        ASSIGN_OR_RETURN(std::string stored, io.read(s, t, c));
        if (stored.size() != n * ssize) {
          return absl::DataLossError(absl::StrCat("state ", s, " chunk ", c, " of '", spec.name(),
                                                  "' holds ", stored.size(), " bytes; expected ",
                                                  n * ssize));
        }
        read_sha.Update(stored);
        DecodeToDouble(state_dtype, stored.data(), n, state_in[s].data());
      }
      std::string out(n * esize, '\0');
      StepElements(step, dtype, n, b.data(), delta.data(), state_in[0].data(), state_in[1].data(),
                   out.data(), state_out[0].data(), state_out[1].data());
      base_sha.Update(out);
      RETURN_IF_ERROR(write(t, c, out));
      for (int s = 0; s < slots; ++s) {
        written_sha.Update(state_out[s]);
        if (io.write) RETURN_IF_ERROR(io.write(s, t, c, state_out[s]));
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
