#include "server/fusion/update_fusion.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"

namespace coldfuse::fusion {

absl::StatusOr<UpdateFusionResult> FuseUpdatesLinear(const v1::Manifest& manifest,
                                                     const std::vector<UpdateReader*>& updates,
                                                     const std::vector<double>& coefficients,
                                                     const OuterStep& step,
                                                     const ChunkReader& read_base,
                                                     const ChunkWriter& write, const StateIo& io) {
  if (updates.empty() || updates.size() != coefficients.size()) {
    return absl::InvalidArgumentError(absl::StrCat("fusing ", updates.size(), " updates with ",
                                                   coefficients.size(), " coefficients"));
  }
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
      for (size_t k = 0; k < updates.size(); ++k) {
        RETURN_IF_ERROR(updates[k]->Read(t, begin, n, b.data(), u.data()));
        const double w = coefficients[k];
        for (uint64_t i = 0; i < n; ++i) delta[i] = delta[i] + w * u[i];
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
