// A small self-checking file of named tensors (".ctf"), used by clients for their
// local state: the task head, the cached base, contributions waiting to be sent.
//
// Layout: "CFTENSR1" | u64 LE manifest length | v1::Manifest bytes | tensor data in
// manifest order | 32-byte SHA-256 of the data. Reads validate every size against
// the file length before allocating. Writes are atomic (temp file, fsync, rename).
#ifndef COLDFUSE_COMMON_TENSOR_FILE_H_
#define COLDFUSE_COMMON_TENSOR_FILE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tensor.h"

namespace coldfuse {

absl::Status WriteTensorFile(const std::string& path, const std::vector<HostTensor>& tensors);
// NOT_FOUND if missing; DATA_LOSS if truncated, corrupted or not a tensor file.
absl::StatusOr<std::vector<HostTensor>> ReadTensorFile(const std::string& path);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_TENSOR_FILE_H_
