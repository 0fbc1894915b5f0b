#include "client/train/tokenizer/unicode.h"

#include <algorithm>

#include "client/train/tokenizer/unicode_tables.h"
#include "common/utf8.h"

namespace coldfuse::train::unicode {
namespace {

using unicode_internal::CodeMap;
using unicode_internal::CodeRange;

bool InRanges(const CodeRange* table, size_t size, char32_t cp) {
  const CodeRange* end = table + size;
  const CodeRange* it =
      std::upper_bound(table, end, cp, [](char32_t c, const CodeRange& r) { return c < r.first; });
  return it != table && cp <= (it - 1)->last;
}

const CodeMap* FindMap(const CodeMap* table, size_t size, char32_t cp) {
  const CodeMap* end = table + size;
  const CodeMap* it =
      std::lower_bound(table, end, cp, [](const CodeMap& m, char32_t c) { return m.from < c; });
  return it != end && it->from == cp ? it : nullptr;
}

}  // namespace

std::vector<char32_t> DecodeUtf8(absl::string_view text) {
  std::vector<char32_t> out;
  out.reserve(text.size());
  const auto* s = reinterpret_cast<const unsigned char*>(text.data());
  size_t n = text.size(), i = 0;
  while (i < n) {
    unsigned char c = s[i];
    int len = c < 0x80 ? 1 : (c >> 5) == 6 ? 2 : (c >> 4) == 14 ? 3 : (c >> 3) == 30 ? 4 : 0;
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    bool ok = len > 0 && i + len <= n;
    for (int k = 1; ok && k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) ok = false;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    static constexpr char32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
    if (ok && (cp < kMin[len] || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))) ok = false;
    if (!ok) {
      out.push_back(0xFFFD);
      ++i;
      continue;
    }
    out.push_back(cp);
    i += len;
  }
  return out;
}

void AppendUtf8(char32_t cp, std::string* out) { coldfuse::AppendUtf8(cp, out); }

bool IsLetter(char32_t cp) {
  return InRanges(unicode_internal::kLetter, unicode_internal::kLetterSize, cp);
}
bool IsNumber(char32_t cp) {
  return InRanges(unicode_internal::kNumber, unicode_internal::kNumberSize, cp);
}
bool IsBertPunctuation(char32_t cp) {
  return InRanges(unicode_internal::kBertPunctuation, unicode_internal::kBertPunctuationSize, cp);
}
bool IsNonspacingMark(char32_t cp) {
  return InRanges(unicode_internal::kNonspacingMark, unicode_internal::kNonspacingMarkSize, cp);
}
bool IsBertControl(char32_t cp) {
  return InRanges(unicode_internal::kBertControl, unicode_internal::kBertControlSize, cp);
}

bool IsWhitespace(char32_t cp) {
  return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
         (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F ||
         cp == 0x205F || cp == 0x3000;
}

void AppendLowercase(char32_t cp, std::vector<char32_t>* out) {
  if (cp < 0x80) {
    out->push_back(cp >= 'A' && cp <= 'Z' ? cp + 32 : cp);
    return;
  }
  const CodeMap* m = FindMap(unicode_internal::kLowercase, unicode_internal::kLowercaseSize, cp);
  if (m == nullptr) {
    out->push_back(cp);
    return;
  }
  out->insert(out->end(), m->to, m->to + m->size);
}

void AppendStripped(char32_t cp, std::vector<char32_t>* out) {
  if (cp < 0x80) {
    out->push_back(cp);
    return;
  }
  // Hangul syllables decompose algorithmically into conjoining jamo (none are marks).
  constexpr char32_t kSBase = 0xAC00, kLBase = 0x1100, kVBase = 0x1161, kTBase = 0x11A7;
  constexpr char32_t kTCount = 28, kNCount = 21 * 28, kSCount = 19 * 21 * 28;
  if (cp >= kSBase && cp < kSBase + kSCount) {
    char32_t s = cp - kSBase;
    out->push_back(kLBase + s / kNCount);
    out->push_back(kVBase + (s % kNCount) / kTCount);
    if (s % kTCount != 0) out->push_back(kTBase + s % kTCount);
    return;
  }
  const CodeMap* m =
      FindMap(unicode_internal::kStripAccents, unicode_internal::kStripAccentsSize, cp);
  if (m != nullptr) {
    out->insert(out->end(), m->to, m->to + m->size);
  } else if (!IsNonspacingMark(cp)) {
    out->push_back(cp);
  }
}

}  // namespace coldfuse::train::unicode
