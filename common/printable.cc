#include "common/printable.h"

#include <cstdint>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace coldfuse {
namespace {

// Length of the valid UTF-8 sequence at s[i] (1-4), or 0 if it is not one. Overlong
// forms, surrogates and code points past U+10FFFF are invalid.
size_t Utf8Length(absl::string_view s, size_t i, uint32_t* cp) {
  const auto b = [&](size_t k) { return static_cast<uint8_t>(s[k]); };
  const uint8_t c = b(i);
  size_t n = 0;
  uint32_t v = 0;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    n = 2;
    v = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3;
    v = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4;
    v = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    if ((b(i + k) & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b(i + k) & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < kMin[n] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

// Appends the escaped form of s[i, i + n) if it is a control character; returns whether
// it was one.
bool AppendIfControl(uint32_t cp, absl::string_view bytes, std::string* out) {
  if (cp == '\n') {
    out->append("\\n");
  } else if (cp == '\t') {
    out->append("\\t");
  } else if (cp == '\r') {
    out->append("\\r");
  } else if (cp < 0x20 || cp == 0x7F || (cp >= 0x80 && cp <= 0x9F)) {
    for (char c : bytes) absl::StrAppendFormat(out, "\\x%02x", static_cast<uint8_t>(c));
  } else {
    return false;
  }
  return true;
}

// Escapes `text` into *out, stopping once *out holds more than `limit` bytes.
void AppendPrintable(absl::string_view text, size_t limit, std::string* out) {
  for (size_t i = 0; i < text.size() && out->size() <= limit;) {
    uint32_t cp = 0;
    const size_t n = Utf8Length(text, i, &cp);
    if (n == 0) {
      absl::StrAppendFormat(out, "\\x%02x", static_cast<uint8_t>(text[i]));
      ++i;
      continue;
    }
    if (!AppendIfControl(cp, text.substr(i, n), out)) out->append(text.data() + i, n);
    i += n;
  }
}

}  // namespace

std::string Printable(absl::string_view text) {
  std::string out;
  out.reserve(text.size());
  AppendPrintable(text, SIZE_MAX, &out);
  return out;
}

std::string PrintableTruncated(absl::string_view text, size_t max_bytes) {
  // Escapes only what can be kept (a megabyte-long name costs no more than a short one).
  std::string out;
  AppendPrintable(text, max_bytes, &out);
  if (out.size() <= max_bytes) return out;
  const std::string tail = absl::StrCat("\xE2\x80\xA6 (", text.size(), " bytes)");
  size_t keep = max_bytes > tail.size() ? max_bytes - tail.size() : 0;
  // Back up to a character boundary (never inside a UTF-8 sequence or an escape's bytes:
  // escapes are ASCII, so only continuation bytes need care).
  while (keep > 0 && (static_cast<uint8_t>(out[keep]) & 0xC0) == 0x80) --keep;
  out.resize(keep);
  out += tail;
  return out;
}

}  // namespace coldfuse
