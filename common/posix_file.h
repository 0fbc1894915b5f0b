// Small POSIX file helpers shared by the tensor-file and safetensors code: errno as an
// absl::Status naming the path, and a write loop. Stateless; thread-safe.
#ifndef COLDFUSE_COMMON_POSIX_FILE_H_
#define COLDFUSE_COMMON_POSIX_FILE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace coldfuse {

// The current errno as a status: NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED (disk
// full) or INTERNAL, with "<what> <path>: <strerror>".
absl::Status ErrnoError(absl::string_view what, const std::string& path);

// Writes all of `data` to `fd` (retrying short writes and EINTR).
absl::Status WriteAll(int fd, absl::string_view data, const std::string& path);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_POSIX_FILE_H_
