#include "server/fusion/fusion.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"

namespace coldfuse::fusion {

absl::StatusOr<std::vector<double>> FusionWeights(v1::FusionMethod method,
                                                  const std::vector<uint64_t>& num_examples) {
  if (num_examples.empty()) {
    return absl::InvalidArgumentError("cannot fuse a round with no contributions");
  }
  std::vector<double> w(num_examples.size(), 1.0);
  if (method == v1::EXAMPLE_WEIGHTED_MEAN) {
    for (size_t k = 0; k < w.size(); ++k) w[k] = static_cast<double>(num_examples[k]);
  }
  double sum = 0;
  for (double x : w) sum += x;
  if (sum <= 0) return absl::InvalidArgumentError("all fusion weights are zero");
  for (double& x : w) x /= sum;
  return w;
}

absl::StatusOr<std::string> FuseWeighted(const v1::Manifest& manifest,
                                         const std::vector<double>& weights,
                                         const ChunkReader& read, const ChunkWriter& write) {
  Sha256 sha;
  std::vector<double> acc;
  std::vector<double> values;
  std::string out;
  for (int t = 0; t < manifest.tensors_size(); ++t) {
    const v1::TensorSpec& spec = manifest.tensors(t);
    ASSIGN_OR_RETURN(uint64_t bytes, ByteLength(spec));
    const size_t esize = DTypeSize(spec.dtype());
    const uint32_t tensor = static_cast<uint32_t>(t);
    for (uint64_t c = 0; c < ChunkCount(bytes); ++c) {
      const size_t len = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, bytes - c * kChunkBytes));
      const size_t n = len / esize;
      acc.assign(n, 0.0);
      values.resize(n);
      for (size_t k = 0; k < weights.size(); ++k) {
        ASSIGN_OR_RETURN(std::string data, read(k, tensor, c));
        if (data.size() != len) {
          return absl::DataLossError(absl::StrCat(
              "contribution #", k, " tensor '", spec.name(), "' chunk ", c, " holds ",
              data.size(), " bytes; expected ", len));
        }
        DecodeToDouble(spec.dtype(), data.data(), n, values.data());
        const double w = weights[k];
        for (size_t i = 0; i < n; ++i) acc[i] += w * values[i];
      }
      out.resize(len);
      EncodeFromDouble(spec.dtype(), acc.data(), n, out.data());
      sha.Update(out);
      RETURN_IF_ERROR(write(tensor, c, out));
    }
  }
  return sha.Finish();
}

}  // namespace coldfuse::fusion
