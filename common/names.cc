#include "common/names.h"

#include "absl/strings/str_cat.h"
#include "common/printable.h"

namespace coldfuse {

absl::Status CheckName(absl::string_view what, absl::string_view name, bool allow_empty) {
  if (name.empty() && allow_empty) return absl::OkStatus();
  bool ok = !name.empty() && name.size() <= 128;
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '_' || c == '.' || c == '@');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(
      absl::StrCat(what, " '", PrintableTruncated(name, 160),
                   "' is not allowed: use 1-128 characters from A-Z a-z 0-9 - _ . @"));
}

}  // namespace coldfuse
