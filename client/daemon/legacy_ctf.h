// The ".ctf" tensor files that state folders held before they moved to safetensors, read
// once so that StateDir::Open can convert them (state.h). Nothing writes this format any
// more; drop this file when no such state folder is left.
//
// Layout: "CFTENSR1" | u64 LE manifest length | v1::Manifest bytes | tensor data in
// manifest order | 32-byte SHA-256 of the data. Every size is checked against the file
// length before anything is allocated. Stateless; thread-safe.
#ifndef COLDFUSE_CLIENT_DAEMON_LEGACY_CTF_H_
#define COLDFUSE_CLIENT_DAEMON_LEGACY_CTF_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "common/tensor.h"

namespace coldfuse::daemon {

// NOT_FOUND if missing; DATA_LOSS naming the file if truncated, corrupted or not a .ctf.
absl::StatusOr<std::vector<HostTensor>> ReadLegacyTensorFile(const std::string& path);

}  // namespace coldfuse::daemon

#endif  // COLDFUSE_CLIENT_DAEMON_LEGACY_CTF_H_
