#include "common/tensor_stream.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "common/status_macros.h"

namespace coldfuse {

StreamReceiver::StreamReceiver(v1::Manifest manifest, ChunkSink sink)
    : manifest_(std::move(manifest)), sink_(std::move(sink)) {
  for (const auto& t : manifest_.tensors()) {
    auto len = ByteLength(t);
    lengths_.push_back(len.ok() ? *len : 0);
  }
  SkipEmptyTensors();
}

void StreamReceiver::SkipEmptyTensors() {
  while (tensor_ < lengths_.size() && offset_ == lengths_[tensor_]) {
    ++tensor_;
    offset_ = 0;
  }
}

absl::Status StreamReceiver::Flush() {
  if (pending_.empty()) return absl::OkStatus();
  uint64_t chunk = (offset_ - 1) / kChunkBytes;
  RETURN_IF_ERROR(sink_(tensor_, chunk, pending_));
  pending_.clear();
  return absl::OkStatus();
}

absl::Status StreamReceiver::Accept(const v1::TensorChunk& chunk) {
  if (finished_) return absl::InvalidArgumentError("chunk after the stream's trailer");
  if (tensor_ >= lengths_.size()) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk for tensor #", chunk.tensor_index(),
                     " after every tensor of the manifest was complete: send the trailer"));
  }
  const std::string& name = manifest_.tensors(tensor_).name();
  if (chunk.tensor_index() != tensor_ || chunk.offset() != offset_) {
    return absl::InvalidArgumentError(absl::StrCat(
        "out-of-order chunk (tensor #", chunk.tensor_index(), " offset ", chunk.offset(),
        "); expected tensor #", tensor_, " '", name, "' at offset ", offset_));
  }
  if (chunk.data().empty() || chunk.data().size() > kMaxChunkBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("chunk of ", chunk.data().size(), " bytes for tensor '", name,
                     "': chunks carry 1 to ", kMaxChunkBytes, " bytes"));
  }
  if (chunk.data().size() > lengths_[tensor_] - offset_) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' would exceed its ",
                                                   lengths_[tensor_], " bytes (manifest shape ",
                                                   ShapeString(manifest_.tensors(tensor_)), ")"));
  }
  sha_.Update(chunk.data());
  total_ += chunk.data().size();
  absl::string_view data = chunk.data();
  if (pending_.empty() && offset_ % kChunkBytes == 0 &&
      (data.size() == kChunkBytes || data.size() == lengths_[tensor_] - offset_)) {
    // A whole storage chunk (what every client sends): straight to the sink, no copy.
    offset_ += data.size();
    RETURN_IF_ERROR(sink_(tensor_, (offset_ - 1) / kChunkBytes, data));
    SkipEmptyTensors();
    return absl::OkStatus();
  }
  while (!data.empty()) {
    size_t room = kChunkBytes - pending_.size();
    size_t n = std::min(room, data.size());
    pending_.append(data.data(), n);
    data.remove_prefix(n);
    offset_ += n;
    if (pending_.size() == kChunkBytes || offset_ == lengths_[tensor_]) {
      RETURN_IF_ERROR(Flush());
    }
  }
  SkipEmptyTensors();
  return absl::OkStatus();
}

absl::Status StreamReceiver::ResumeAt(uint32_t tensor, uint64_t offset,
                                      const StoredChunkReader& read) {
  if (total_ != 0 || tensor > lengths_.size() ||
      (tensor < lengths_.size() && offset > lengths_[tensor]) ||
      (tensor < lengths_.size() && offset % kChunkBytes != 0 && offset != lengths_[tensor])) {
    return absl::InvalidArgumentError(
        absl::StrCat("cannot resume at tensor #", tensor, " offset ", offset,
                     ": ask GetUpload for the position to resume from"));
  }
  for (uint32_t t = 0; t <= tensor && t < lengths_.size(); ++t) {
    const uint64_t upto = t < tensor ? lengths_[t] : offset;
    for (uint64_t c = 0; c * kChunkBytes < upto; ++c) {
      ASSIGN_OR_RETURN(std::string data, read(t, c));
      const uint64_t want = std::min<uint64_t>(kChunkBytes, lengths_[t] - c * kChunkBytes);
      if (data.size() != want) {
        return absl::DataLossError(absl::StrCat("stored chunk ", c, " of tensor #", t, " has ",
                                                data.size(), " bytes, expected ", want));
      }
      sha_.Update(data);
      total_ += data.size();
    }
  }
  tensor_ = tensor;
  offset_ = tensor < lengths_.size() ? offset : 0;
  SkipEmptyTensors();
  return absl::OkStatus();
}

absl::StatusOr<std::string> StreamReceiver::Finish(const v1::StreamTrailer& trailer) {
  if (finished_) return absl::InvalidArgumentError("second trailer in one stream");
  if (tensor_ < lengths_.size()) {
    return absl::InvalidArgumentError(absl::StrCat("stream ended early: tensor '",
                                                   manifest_.tensors(tensor_).name(), "' has ",
                                                   offset_, " of ", lengths_[tensor_], " bytes"));
  }
  finished_ = true;
  if (trailer.total_bytes() != total_) {
    return absl::InvalidArgumentError(absl::StrCat("trailer says ", trailer.total_bytes(),
                                                   " bytes were sent but ", total_, " arrived"));
  }
  std::string digest = sha_.Finish();
  if (trailer.sha256() != digest) {
    return absl::InvalidArgumentError(absl::StrCat(
        "checksum mismatch: trailer SHA-256 ", ToHex(trailer.sha256()), ", received data ",
        ToHex(digest), "; the data was corrupted in transit or by the sender"));
  }
  return digest;
}

absl::Status ForEachWireChunk(const std::vector<HostTensor>& tensors,
                              const std::function<absl::Status(v1::TensorChunk&)>& emit) {
  v1::TensorChunk chunk;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const std::string& data = tensors[i].data;
    for (size_t off = 0; off < data.size(); off += kMaxChunkBytes) {
      chunk.set_tensor_index(static_cast<uint32_t>(i));
      chunk.set_offset(off);
      chunk.set_data(data.substr(off, std::min(kMaxChunkBytes, data.size() - off)));
      RETURN_IF_ERROR(emit(chunk));
    }
  }
  return absl::OkStatus();
}

std::string TensorsSha256(const std::vector<HostTensor>& tensors) {
  Sha256 h;
  for (const auto& t : tensors) h.Update(t.data);
  return h.Finish();
}

InMemoryAssembler::InMemoryAssembler(const v1::Manifest& manifest)
    : receiver_(manifest, [this](uint32_t t, uint64_t c, absl::string_view data) {
        tensors_[t].data.append(data.data(), data.size());
        (void)c;
        return absl::OkStatus();
      }) {
  for (const auto& spec : manifest.tensors()) {
    HostTensor t;
    t.spec = spec;
    tensors_.push_back(std::move(t));
  }
}

absl::StatusOr<std::vector<HostTensor>> InMemoryAssembler::Finish(
    const v1::StreamTrailer& trailer) {
  RETURN_IF_ERROR(receiver_.Finish(trailer).status());
  return std::move(tensors_);
}

}  // namespace coldfuse
