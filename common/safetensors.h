// Reading and writing checkpoints in the huggingface/safetensors format: single files,
// sharded checkpoints with a model.safetensors.index.json, and a streaming writer.
// SafetensorsFile and Checkpoint are immutable once opened and thread-safe for reads;
// SafetensorsWriter is not thread-safe. WriteCheckpoint is thread-compatible.
//
// File layout: u64 little-endian header length N | N bytes of UTF-8 JSON header | data.
// Opening validates at least as strictly as the reference implementation (0.8): N <=
// 100,000,000; the header is strict JSON (see common/json.h), an object whose optional
// "__metadata__" maps strings to strings (or is null) and whose every other key is a tensor
// {"dtype", "shape", "data_offsets"}; dtype is one of the reference's names; numel *
// itemsize (overflow checked) equals end - begin; sorted by begin, the tensors tile the
// data exactly from 0 to the end of the file. Stricter than the reference: duplicate
// tensor names and unknown tensor fields are rejected, not silently accepted. Errors name
// the file and the problem: INVALID_ARGUMENT for a malformed file, DATA_LOSS for a
// truncated one, NOT_FOUND for a missing one.
#ifndef COLDFUSE_COMMON_SAFETENSORS_H_
#define COLDFUSE_COMMON_SAFETENSORS_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/tensor.pb.h"
#include "common/dtype.h"
#include "common/tensor.h"

namespace coldfuse {

// Largest header the reference implementation accepts.
inline constexpr uint64_t kMaxSafetensorsHeaderBytes = 100'000'000;

// Bytes per element of a safetensors dtype name ("BOOL", "U8", ..., "F8_E5M2"); 0 if the
// name is not one of BOOL U8 I8 I16 U16 I32 U32 I64 U64 F16 BF16 F32 F64 F8_E4M3 F8_E5M2.
size_t SafetensorsDTypeSize(absl::string_view name);

struct SafetensorsEntry {
  std::string name;
  std::string dtype_name;               // as in the file, e.g. "F32" or "I64"
  DType dtype = v1::DTYPE_UNSPECIFIED;  // UNSPECIFIED unless F32, F16, BF16 or F64
  std::vector<int64_t> shape;
  uint64_t begin = 0;  // offsets into the data section, end - begin = numel * itemsize
  uint64_t end = 0;
};

// A memory-mapped, validated safetensors file. The mapping is read-only and private;
// another process truncating the file while it is open can still fault (SIGBUS).
class SafetensorsFile {
 public:
  static absl::StatusOr<std::unique_ptr<SafetensorsFile>> Open(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  // In file order: by data offset, then (zero-size tensors at one offset) in header order,
  // which for SafetensorsWriter's files is the order it was given.
  const std::vector<SafetensorsEntry>& entries() const { return entries_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  // REQUIRES: `e` is one of entries(). A view into the mapping, valid while *this lives.
  absl::string_view Data(const SafetensorsEntry& e) const;
  // nullptr if there is no tensor called `name`.
  const SafetensorsEntry* Find(absl::string_view name) const;
  const std::string& path() const { return path_; }

 private:
  SafetensorsFile() = default;

  std::string path_;
  const char* map_ = nullptr;
  size_t map_size_ = 0;
  const char* data_ = nullptr;  // start of the data section inside the mapping
  std::vector<SafetensorsEntry> entries_;
  std::map<std::string, std::string> metadata_;
  std::map<std::string, size_t, std::less<>> by_name_;
};

// A checkpoint: `path` is a folder holding model.safetensors or (if that is absent)
// model.safetensors.index.json, a path to an index (*.index.json), or a path to one
// .safetensors file. For an index, "weight_map" maps each tensor name to a shard file
// name in the index's folder; every shard is opened and validated, and every tensor must
// be in the shard the index names and in no other. Other top-level index keys are ignored.
class Checkpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Checkpoint>> Open(const std::string& path);

  // All tensors across shards, sorted by name.
  std::vector<const SafetensorsEntry*> Entries() const;
  // nullptr if there is no tensor called `name`.
  const SafetensorsEntry* Find(absl::string_view name) const;
  // REQUIRES: `e` came from Entries() or Find() of this checkpoint.
  absl::string_view Data(const SafetensorsEntry& e) const;
  const std::vector<std::unique_ptr<SafetensorsFile>>& files() const { return files_; }

 private:
  Checkpoint() = default;

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const SafetensorsEntry*, std::less<>> by_name_;
  std::unordered_map<const SafetensorsEntry*, const SafetensorsFile*> owner_;
};

// Streaming writer: Create plans the tensors (name, dtype, shape) and writes the header;
// Append supplies each tensor's bytes in manifest order, in pieces of any size; Finish
// checks every byte arrived, fsyncs and renames the temp file into place. Destroying an
// unfinished writer removes its temp file and leaves `path` untouched.
class SafetensorsWriter {
 public:
  // INVALID_ARGUMENT if ValidateManifest fails, a name or metadata string is not UTF-8,
  // a tensor is called "__metadata__" or the header would exceed the reference's limit.
  static absl::StatusOr<std::unique_ptr<SafetensorsWriter>> Create(
      const std::string& path, const v1::Manifest& tensors,
      const std::map<std::string, std::string>& metadata = {});
  ~SafetensorsWriter();
  SafetensorsWriter(const SafetensorsWriter&) = delete;
  SafetensorsWriter& operator=(const SafetensorsWriter&) = delete;

  // The next bytes in manifest order. INVALID_ARGUMENT past the planned total;
  // FAILED_PRECONDITION after Finish or a failed write.
  absl::Status Append(absl::string_view bytes);
  // FAILED_PRECONDITION naming the first tensor with bytes missing, or if already finished.
  absl::Status Finish();

 private:
  SafetensorsWriter() = default;
  absl::Status Flush();

  std::string path_;
  std::string tmp_path_;
  int fd_ = -1;
  bool done_ = false;  // finished, or failed: no more writes
  std::vector<std::string> names_;
  std::vector<uint64_t> ends_;  // cumulative end offset of each tensor
  uint64_t written_ = 0;        // data bytes appended so far
  std::string buffer_;
};

// The byte source for WriteCheckpoint: sets *out to `length` bytes of tensor #`tensor`
// (manifest index) starting at `offset`. Called in manifest order with length <= 1 MiB.
using TensorReader = std::function<absl::Status(uint32_t tensor, uint64_t offset, uint64_t length,
                                                std::string* out)>;

// Writes `tensors` to the single file `path`, in order, with `metadata`, atomically as
// SafetensorsWriter does: for small files kept whole in memory (a contributor's state).
// INVALID_ARGUMENT as SafetensorsWriter::Create, or naming a tensor whose data is not the
// size its spec says.
absl::Status WriteSafetensors(const std::string& path, const std::vector<HostTensor>& tensors,
                              const std::map<std::string, std::string>& metadata = {});

// Reads every tensor of the single file `path` into memory, in file order (for files
// WriteSafetensors wrote, the order it was given), and its metadata into `*metadata` if
// not null. Errors as SafetensorsFile::Open, and INVALID_ARGUMENT naming a tensor whose
// dtype is not one of F32, F16, BF16 and F64, or also I8 with `allow_int8` (the values of
// an 8-bit delta a client saved; never a checkpoint's or a base's).
absl::StatusOr<std::vector<HostTensor>> ReadSafetensors(
    const std::string& path, std::map<std::string, std::string>* metadata = nullptr,
    bool allow_int8 = false);

// Writes `manifest`'s tensors into `out_dir` (created if missing) as model.safetensors,
// or, when their total exceeds `shard_bytes`, as model-00001-of-0000N.safetensors ... in
// manifest order (a shard closes before the tensor that would overflow it; a larger
// tensor gets a shard of its own) plus model.safetensors.index.json
// ({"metadata": {"total_size": N}, "weight_map": {name: shard}}), written last. This is
// the layout transformers' save_pretrained uses; each file carries the metadata
// {"format": "pt"} that transformers requires. ALREADY_EXISTS if `out_dir` already holds a
// model*.safetensors* file (so stale shards never mix with new ones); DATA_LOSS if `read`
// returns the wrong number of bytes.
absl::Status WriteCheckpoint(const std::string& out_dir, const v1::Manifest& manifest,
                             uint64_t shard_bytes, const TensorReader& read);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_SAFETENSORS_H_
