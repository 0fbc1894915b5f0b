// Small POSIX file helpers: errno as an absl::Status naming the path, a write loop, and
// whole files written atomically or read into memory. Stateless; thread-safe.
#ifndef COLDFUSE_COMMON_POSIX_FILE_H_
#define COLDFUSE_COMMON_POSIX_FILE_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace coldfuse {

// The current errno as a status: NOT_FOUND, PERMISSION_DENIED, RESOURCE_EXHAUSTED (disk
// full) or INTERNAL, with "<what> <path>: <strerror>".
absl::Status ErrnoError(absl::string_view what, const std::string& path);

// Writes all of `data` to `fd` (retrying short writes and EINTR).
absl::Status WriteAll(int fd, absl::string_view data, const std::string& path);

// Writes `contents` to `path` atomically (temp file in the same folder, fsync, rename,
// fsync of the folder), created with permission bits `mode`.
absl::Status WriteFileAtomic(const std::string& path, absl::string_view contents, int mode = 0644);
// NOT_FOUND if missing.
absl::StatusOr<std::string> ReadFileToString(const std::string& path);

// Removes the permission bits in `mask` (e.g. 077: group and others) from folder `dir`
// and the files and folders directly in it. NOT_FOUND if `dir` is missing.
absl::Status RestrictModes(const std::string& dir, unsigned mask);

// Best effort: fsyncs the folder holding `path`, so a rename into it survives a crash.
void SyncParentFolder(const std::string& path);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_POSIX_FILE_H_
