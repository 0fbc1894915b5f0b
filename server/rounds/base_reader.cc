#include "server/rounds/base_reader.h"

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"

namespace coldfuse::rounds {

BaseReader::BaseReader(storage::Store* store, uint64_t version, const v1::ModelInfo& model,
                       std::string sha256, std::shared_ptr<void> hold)
    : store_(store),
      version_(version),
      manifest_(model.manifest()),
      model_spec_(model.model_spec()),
      sha256_(std::move(sha256)),
      hold_(std::move(hold)) {
  for (const auto& t : manifest_.tensors()) {
    auto len = ByteLength(t);  // validated when the model was stored
    lengths_.push_back(len.ok() ? *len : 0);
    total_ += lengths_.back();
  }
}

v1::StreamTrailer BaseReader::Trailer() const {
  v1::StreamTrailer t;
  t.set_sha256(sha256_);
  t.set_total_bytes(total_);
  return t;
}

absl::Status BaseReader::Seek(uint32_t tensor, uint64_t offset) {
  if (tensor > lengths_.size() || (tensor < lengths_.size() && offset > lengths_[tensor]) ||
      (tensor == lengths_.size() && offset != 0) ||
      (tensor < lengths_.size() && offset % kChunkBytes != 0 && offset != lengths_[tensor])) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot start base v", version_, " at tensor #", tensor, " offset ", offset,
                     ": start at a 1 MiB boundary of an existing tensor"));
  }
  tensor_ = tensor;
  chunk_ = ChunkCount(offset);
  return absl::OkStatus();
}

absl::StatusOr<bool> BaseReader::Next(v1::TensorChunk* chunk) {
  while (tensor_ < lengths_.size() && chunk_ >= ChunkCount(lengths_[tensor_])) {
    ++tensor_;
    chunk_ = 0;
  }
  if (tensor_ >= lengths_.size()) return false;
  ASSIGN_OR_RETURN(std::string data, store_->GetBaseChunk(version_, tensor_, chunk_));
  uint64_t want = std::min<uint64_t>(kChunkBytes, lengths_[tensor_] - chunk_ * kChunkBytes);
  if (data.size() != want) {
    return absl::DataLossError(absl::StrCat("stored base v", version_, " tensor '",
                                            manifest_.tensors(tensor_).name(), "' chunk ", chunk_,
                                            " has ", data.size(), " bytes, expected ", want));
  }
  chunk->set_tensor_index(tensor_);
  chunk->set_offset(chunk_ * kChunkBytes);
  *chunk->mutable_data() = std::move(data);
  ++chunk_;
  return true;
}

}  // namespace coldfuse::rounds
