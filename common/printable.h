// Text that came from an untrusted client, made safe to store in a log and to print on a
// terminal: control characters (C0, DEL, C1), line breaks and invalid UTF-8 become
// visible escapes (\n, \t, \xNN), so a name cannot clear a screen, set a window title or
// forge a log line. Printable UTF-8 and backslashes are kept as they are, so escaping
// an escaped text changes nothing. Stateless; thread-safe.
#ifndef COLDFUSE_COMMON_PRINTABLE_H_
#define COLDFUSE_COMMON_PRINTABLE_H_

#include <cstddef>
#include <string>

#include "absl/strings/string_view.h"

namespace coldfuse {

std::string Printable(absl::string_view text);

// Printable(text), cut to at most `max_bytes` (at a character boundary) and then saying
// how long the original was: "abc… (1048576 bytes)". REQUIRES: max_bytes >= 32.
std::string PrintableTruncated(absl::string_view text, size_t max_bytes);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_PRINTABLE_H_
