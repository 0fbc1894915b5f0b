// Streams a stored base version as wire chunks, one storage chunk at a time.
// Not thread-safe: one per stream. The store must outlive it.
#ifndef COLDFUSE_SERVER_ROUNDS_BASE_READER_H_
#define COLDFUSE_SERVER_ROUNDS_BASE_READER_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "server/storage/store.h"

namespace coldfuse::rounds {

class BaseReader {
 public:
  // `hold` (if any) is released when the reader is destroyed: the round manager keeps
  // retention from removing a base while someone downloads it.
  BaseReader(storage::Store* store, uint64_t version, const v1::ModelInfo& model,
             std::string sha256, std::shared_ptr<void> hold = nullptr);

  uint64_t version() const { return version_; }
  const v1::Manifest& manifest() const { return manifest_; }
  const std::string& model_spec() const { return model_spec_; }
  // The trailer to send after the last chunk.
  v1::StreamTrailer Trailer() const;

  // Starts at (tensor, offset) instead of the beginning: offset a multiple of 1 MiB (or
  // the tensor's end). INVALID_ARGUMENT otherwise.
  absl::Status Seek(uint32_t tensor, uint64_t offset);

  // Fills `chunk` with the next piece; returns false when every tensor has been read.
  absl::StatusOr<bool> Next(v1::TensorChunk* chunk);

 private:
  storage::Store* store_;
  uint64_t version_;
  v1::Manifest manifest_;
  std::string model_spec_;
  std::string sha256_;
  std::vector<uint64_t> lengths_;
  uint64_t total_ = 0;
  uint32_t tensor_ = 0;
  uint64_t chunk_ = 0;
  std::shared_ptr<void> hold_;
};

}  // namespace coldfuse::rounds

#endif  // COLDFUSE_SERVER_ROUNDS_BASE_READER_H_
