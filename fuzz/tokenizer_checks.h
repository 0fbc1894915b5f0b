// The invariants of an Encoding, shared by the tokenizer fuzz targets, and how they read
// TokenizeOptions from the fuzz input.
#ifndef COLDFUSE_FUZZ_TOKENIZER_CHECKS_H_
#define COLDFUSE_FUZZ_TOKENIZER_CHECKS_H_

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <unordered_set>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/train/tokenizer/tokenizer.h"
#include "fuzz/fuzz_util.h"

namespace coldfuse::fuzz {

// One byte: max_length from a table of edge cases (bits 0-3), padding (bit 4), truncation
// (bit 5); bit 6 says whether the text is a pair.
inline train::TokenizeOptions ReadTokenizeOptions(uint8_t byte, bool* pair) {
  static const int kLengths[] = {-1, 0, 1, 2, 3, 4, 5, 6, 8, 10, 16, 32, 64, 128, 256, 512};
  train::TokenizeOptions o;
  o.max_length = kLengths[byte & 15];
  o.pad_to_max_length = (byte & 16) != 0;
  o.truncation = (byte & 32) != 0;
  *pair = (byte & 64) != 0;
  return o;
}

// Encodes (a, b) twice and checks what holds for any tokenizer: the same result both times;
// three vectors of one length; the attention mask 1s (at least the two special tokens)
// then 0s; padding with pad_id() and type 0 up to max_length exactly when asked; type ids
// 0s then 1s; at most max_length tokens when truncating with room for the special tokens;
// every id among `ids` (if not null). Returns the encoding.
inline train::Encoding CheckEncode(const train::Tokenizer& tok, absl::string_view a,
                                   std::optional<absl::string_view> b,
                                   const train::TokenizeOptions& o,
                                   const std::unordered_set<int64_t>* ids) {
  train::Encoding e = tok.Encode(a, b, o);
  train::Encoding again = tok.Encode(a, b, o);
  FUZZ_CHECK(e.input_ids == again.input_ids && e.token_type_ids == again.token_type_ids &&
                 e.attention_mask == again.attention_mask,
             "Encode is not deterministic");
  const size_t n = e.input_ids.size();
  FUZZ_CHECK(
      e.token_type_ids.size() == n && e.attention_mask.size() == n,
      absl::StrCat("lengths ", n, ", ", e.token_type_ids.size(), ", ", e.attention_mask.size()));
  size_t real = 0;
  while (real < n && e.attention_mask[real] == 1) ++real;
  FUZZ_CHECK(real >= (b ? 3u : 2u), absl::StrCat("only ", real, " real tokens"));
  for (size_t i = real; i < n; ++i) {
    FUZZ_CHECK(
        e.attention_mask[i] == 0 && e.input_ids[i] == tok.pad_id() && e.token_type_ids[i] == 0,
        absl::StrCat("position ", i, " after ", real, " real tokens is not padding"));
  }
  const size_t max_length = o.max_length > 0 ? static_cast<size_t>(o.max_length) : 0;
  if (o.pad_to_max_length) {
    FUZZ_CHECK(n == std::max(real, max_length), absl::StrCat(n, " tokens, max ", max_length));
  } else {
    FUZZ_CHECK(n == real, "padding without pad_to_max_length");
  }
  if (o.truncation && max_length >= 4) {
    FUZZ_CHECK(real <= max_length, absl::StrCat(real, " tokens past max_length ", max_length));
  }
  bool second = false;
  for (size_t i = 0; i < real; ++i) {
    const int64_t t = e.token_type_ids[i];
    FUZZ_CHECK(t == 0 || (t == 1 && b), absl::StrCat("type id ", t));
    FUZZ_CHECK(!(second && t == 0), "type id 0 after type id 1");
    second = second || t == 1;
  }
  if (ids != nullptr) {
    for (int64_t id : e.input_ids) {
      FUZZ_CHECK(ids->count(id) == 1, absl::StrCat("id ", id, " is not in the vocabulary"));
    }
  }
  return e;
}

}  // namespace coldfuse::fuzz

#endif  // COLDFUSE_FUZZ_TOKENIZER_CHECKS_H_
