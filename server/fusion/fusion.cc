#include "server/fusion/fusion.h"

#include <algorithm>
#include <type_traits>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "server/fusion/worker_pool.h"

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

namespace {

// One chunk of the weighted sum, accumulated in T (float, or double for F64 tensors).
template <typename T>
absl::Status FuseChunk(const v1::TensorSpec& spec, uint32_t tensor, uint64_t c, size_t len,
                       const std::vector<double>& weights, const ChunkReader& read,
                       std::string* out) {
  const size_t n = len / DTypeSize(spec.dtype());
  std::vector<T> acc(n, T(0)), values(n);
  for (size_t k = 0; k < weights.size(); ++k) {
    ASSIGN_OR_RETURN(std::string data, read(k, tensor, c));
    if (data.size() != len) {
      return absl::DataLossError(absl::StrCat("contribution #", k, " tensor '", spec.name(),
                                              "' chunk ", c, " holds ", data.size(),
                                              " bytes; expected ", len));
    }
    if constexpr (std::is_same_v<T, float>) {
      DecodeToFloat(spec.dtype(), data.data(), n, values.data());
    } else {
      DecodeToDouble(spec.dtype(), data.data(), n, values.data());
    }
    const T w = static_cast<T>(weights[k]);
    T* a = acc.data();
    const T* v = values.data();
    for (size_t i = 0; i < n; ++i) a[i] += w * v[i];
  }
  out->resize(len);
  if constexpr (std::is_same_v<T, float>) {
    EncodeFromFloat(spec.dtype(), acc.data(), n, out->data());
  } else {
    EncodeFromDouble(spec.dtype(), acc.data(), n, out->data());
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> FuseWeighted(const v1::Manifest& manifest,
                                         const std::vector<double>& weights,
                                         const ChunkReader& read, const ChunkWriter& write,
                                         bool accumulate_f64) {
  // Every (tensor, chunk) of the result, in order.
  struct Item {
    uint32_t tensor;
    uint64_t chunk;
    size_t len;
  };
  std::vector<Item> items;
  for (int t = 0; t < manifest.tensors_size(); ++t) {
    ASSIGN_OR_RETURN(uint64_t bytes, ByteLength(manifest.tensors(t)));
    for (uint64_t c = 0; c < ChunkCount(bytes); ++c) {
      items.push_back(
          {static_cast<uint32_t>(t), c,
           static_cast<size_t>(std::min<uint64_t>(kChunkBytes, bytes - c * kChunkBytes))});
    }
  }
  auto compute = [&](const Item& it, std::string* out) -> absl::Status {
    const v1::TensorSpec& spec = manifest.tensors(it.tensor);
    // F32 accumulation (as the architecture says) is exact enough for F32/F16/BF16
    // weights; F64 tensors keep F64.
    if (accumulate_f64 || spec.dtype() == v1::F64) {
      return FuseChunk<double>(spec, it.tensor, it.chunk, it.len, weights, read, out);
    }
    return FuseChunk<float>(spec, it.tensor, it.chunk, it.len, weights, read, out);
  };
  // A window of chunks at a time on the worker pool (one per worker, twice over), then
  // hash and write them in order. Memory stays at window x (accumulator + one read).
  WorkerPool* pool = WorkerPool::Default();
  const size_t window = 2 * static_cast<size_t>(pool->size());
  Sha256 sha;
  std::vector<std::string> out(window);
  std::vector<absl::Status> status(window);
  for (size_t i = 0; i < items.size(); i += window) {
    const size_t n = std::min(window, items.size() - i);
    pool->ParallelFor(n, [&](size_t j) { status[j] = compute(items[i + j], &out[j]); });
    for (size_t j = 0; j < n; ++j) RETURN_IF_ERROR(status[j]);
    for (size_t j = 0; j < n; ++j) {
      sha.Update(out[j]);
      RETURN_IF_ERROR(write(items[i + j].tensor, items[i + j].chunk, out[j]));
    }
  }
  return sha.Finish();
}

}  // namespace coldfuse::fusion
