// Chunked tensor streams: splitting tensors into wire chunks, and checking and
// reassembling a received stream into fixed-size storage chunks.
//
// Wire rule: tensors in manifest order; each tensor's bytes in order, in chunks of
// 1..kMaxChunkBytes bytes; then a trailer with the SHA-256 of all bytes.
// Storage rule: tensor t's bytes [c*kChunkBytes, (c+1)*kChunkBytes) are chunk c, so
// every copy of the same manifest is chunked identically (fusion relies on it).
#ifndef COLDFUSE_COMMON_TENSOR_STREAM_H_
#define COLDFUSE_COMMON_TENSOR_STREAM_H_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/tensor.pb.h"
#include "common/sha256.h"
#include "common/tensor.h"

namespace coldfuse {

inline constexpr size_t kMaxChunkBytes = size_t{1} << 20;
inline constexpr size_t kChunkBytes = kMaxChunkBytes;

// Number of storage chunks of a tensor of `bytes` bytes.
inline uint64_t ChunkCount(uint64_t bytes) { return (bytes + kChunkBytes - 1) / kChunkBytes; }

// Receives one chunked stream against a manifest. Not thread-safe.
class StreamReceiver {
 public:
  // Called with each complete storage chunk, in order.
  using ChunkSink =
      std::function<absl::Status(uint32_t tensor, uint64_t chunk, absl::string_view data)>;

  // REQUIRES: ValidateManifest(manifest).ok().
  StreamReceiver(v1::Manifest manifest, ChunkSink sink);

  // INVALID_ARGUMENT if `chunk` is not the next expected piece of the stream.
  absl::Status Accept(const v1::TensorChunk& chunk);

  // Continues an interrupted stream at (tensor, offset), a storage-chunk boundary:
  // re-hashes the bytes already stored, read back with `read`, so the trailer still
  // checks every byte. REQUIRES: nothing accepted yet.
  using StoredChunkReader =
      std::function<absl::StatusOr<std::string>(uint32_t tensor, uint64_t chunk)>;
  absl::Status ResumeAt(uint32_t tensor, uint64_t offset, const StoredChunkReader& read);
  // INVALID_ARGUMENT if bytes are missing or the trailer's size or checksum differs.
  // On success returns the SHA-256 of all bytes.
  absl::StatusOr<std::string> Finish(const v1::StreamTrailer& trailer);

  uint64_t bytes_received() const { return total_; }
  // The byte lengths of the manifest's tensors.
  const std::vector<uint64_t>& lengths() const { return lengths_; }

 private:
  absl::Status Flush();
  void SkipEmptyTensors();

  v1::Manifest manifest_;
  ChunkSink sink_;
  std::vector<uint64_t> lengths_;
  uint32_t tensor_ = 0;  // tensor now being received
  uint64_t offset_ = 0;  // bytes of it received
  uint64_t total_ = 0;   // all bytes received
  std::string pending_;  // bytes of the current storage chunk
  Sha256 sha_;
  bool finished_ = false;
};

// Splits in-memory tensors into wire chunks; calls `emit` for each.
// REQUIRES: CheckTensorSizes(tensors).ok().
absl::Status ForEachWireChunk(const std::vector<HostTensor>& tensors,
                              const std::function<absl::Status(v1::TensorChunk&)>& emit);

// SHA-256 of all tensors' data, in order (what a stream's trailer carries).
std::string TensorsSha256(const std::vector<HostTensor>& tensors);

// Reassembles a full stream into memory: used by clients that pull a base.
// Enforces the same rules as StreamReceiver.
class InMemoryAssembler {
 public:
  explicit InMemoryAssembler(const v1::Manifest& manifest);
  // The receiver's sink points into this object: it must not move.
  InMemoryAssembler(const InMemoryAssembler&) = delete;
  InMemoryAssembler& operator=(const InMemoryAssembler&) = delete;
  absl::Status Accept(const v1::TensorChunk& chunk) { return receiver_.Accept(chunk); }
  // Returns the tensors once the trailer checks out.
  absl::StatusOr<std::vector<HostTensor>> Finish(const v1::StreamTrailer& trailer);

 private:
  std::vector<HostTensor> tensors_;
  StreamReceiver receiver_;
};

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_TENSOR_STREAM_H_
