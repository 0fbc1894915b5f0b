#include "server/fusion/element_reader.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"

namespace coldfuse::fusion {
namespace {

ElementReader::SharedChunkFn Sharing(ElementReader::ChunkFn read) {
  return [read = std::move(read)](uint64_t chunk) -> absl::StatusOr<SharedChunk> {
    ASSIGN_OR_RETURN(std::string data, read(chunk));
    return std::make_shared<const std::string>(std::move(data));
  };
}

}  // namespace

ElementReader::ElementReader(DType dtype, uint64_t num_elements, ChunkFn read)
    : ElementReader(dtype, num_elements, Sharing(std::move(read))) {}

ElementReader::ElementReader(DType dtype, uint64_t num_elements, SharedChunkFn read)
    : dtype_(dtype),
      esize_(DTypeSize(dtype)),
      num_elements_(num_elements),
      per_chunk_(kChunkBytes / DTypeSize(dtype)),
      read_(std::move(read)) {}

ElementReader::ElementReader(uint64_t num_elements, ChunkFn read, ChunkFn read_scales,
                             uint32_t block)
    : ElementReader(num_elements, Sharing(std::move(read)), Sharing(std::move(read_scales)),
                    block) {}

ElementReader::ElementReader(uint64_t num_elements, SharedChunkFn read, SharedChunkFn read_scales,
                             uint32_t block)
    : ElementReader(v1::I8, num_elements, std::move(read)) {
  block_ = block;
  scales_ = std::make_unique<ElementReader>(v1::F32, (num_elements + block - 1) / block,
                                            std::move(read_scales));
}

absl::Status ElementReader::Read(uint64_t begin, uint64_t n, double* out) {
  if (begin > num_elements_ || n > num_elements_ - begin) {
    return absl::OutOfRangeError(
        absl::StrCat("elements [", begin, ", ", begin + n, ") past the end (", num_elements_, ")"));
  }
  RETURN_IF_ERROR(ReadRaw(begin, n, out));
  if (block_ > 0 && n > 0) {
    const uint64_t first = begin / block_, last = (begin + n - 1) / block_;
    scale_values_.resize(last - first + 1);
    RETURN_IF_ERROR(scales_->Read(first, last - first + 1, scale_values_.data()));
    for (uint64_t i = 0; i < n; ++i) out[i] = out[i] * scale_values_[(begin + i) / block_ - first];
  }
  return absl::OkStatus();
}

absl::Status ElementReader::ReadRaw(uint64_t begin, uint64_t n, double* out) {
  while (n > 0) {
    const uint64_t chunk = begin / per_chunk_;
    if (static_cast<int64_t>(chunk) != cached_index_) {
      cached_index_ = -1;
      ASSIGN_OR_RETURN(cached_, read_(chunk));
      const uint64_t want = std::min(per_chunk_, num_elements_ - chunk * per_chunk_) * esize_;
      if (cached_->size() != want) {
        return absl::DataLossError(absl::StrCat("stored chunk ", chunk, " has ", cached_->size(),
                                                " bytes, expected ", want));
      }
      cached_index_ = static_cast<int64_t>(chunk);
    }
    const uint64_t within = begin - chunk * per_chunk_;
    const uint64_t take = std::min(n, per_chunk_ - within);
    DecodeToDouble(dtype_, cached_->data() + within * esize_, take, out);
    out += take;
    begin += take;
    n -= take;
  }
  return absl::OkStatus();
}

absl::StatusOr<SharedChunk> SharedChunks::Get(uint32_t tensor, uint64_t chunk) {
  auto find = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> SharedChunk {
    for (auto it = held_.begin(); it != held_.end(); ++it) {
      if (it->tensor == tensor && it->chunk == chunk) {
        Held h = std::move(*it);
        held_.erase(it);
        held_.push_back(std::move(h));  // most recently used
        return held_.back().data;
      }
    }
    return nullptr;
  };
  {
    absl::MutexLock l(&mu_);
    if (SharedChunk hit = find()) return hit;
  }
  // Read without the lock: another thread may read the same chunk meanwhile (read twice,
  // kept once) rather than every thread waiting for each read.
  ASSIGN_OR_RETURN(std::string data, fetch_(tensor, chunk));
  auto read = std::make_shared<const std::string>(std::move(data));
  absl::MutexLock l(&mu_);
  if (SharedChunk hit = find()) return hit;
  held_.push_back({tensor, chunk, read});
  while (held_.size() > capacity_) held_.pop_front();
  return read;
}

}  // namespace coldfuse::fusion
