// Validation of the names users choose (contributors, tasks, metrics, tokens), so every
// such name is safe to log, print and use as a key. Stateless; thread-safe.
#ifndef COLDFUSE_COMMON_NAMES_H_
#define COLDFUSE_COMMON_NAMES_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace coldfuse {

// OK if `name` is 1-128 characters of A-Z a-z 0-9 - _ . @ (or empty, when `allow_empty`);
// otherwise INVALID_ARGUMENT naming `what` and saying what is allowed.
absl::Status CheckName(absl::string_view what, absl::string_view name, bool allow_empty);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_NAMES_H_
