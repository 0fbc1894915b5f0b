// UTF-8 coding and the few Unicode properties the tokenizers need. Stateless.
#ifndef COLDFUSE_CLIENT_TRAIN_TOKENIZER_UNICODE_H_
#define COLDFUSE_CLIENT_TRAIN_TOKENIZER_UNICODE_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace coldfuse::train::unicode {

// Code points of `text`; each byte of an invalid sequence becomes U+FFFD.
std::vector<char32_t> DecodeUtf8(absl::string_view text);
void AppendUtf8(char32_t cp, std::string* out);

// The classes follow Hugging Face `tokenizers` (see unicode_tables.h).
bool IsLetter(char32_t cp);           // \p{L}
bool IsNumber(char32_t cp);           // \p{N}
bool IsBertPunctuation(char32_t cp);  // ASCII punctuation and symbols, Unicode P*
bool IsNonspacingMark(char32_t cp);   // Mn
bool IsBertControl(char32_t cp);      // removed by BERT's clean_text
bool IsWhitespace(char32_t cp);       // White_Space property (Rust's char::is_whitespace)

// Appends the full lowercase of `cp` (per character, no context: final sigma stays σ).
void AppendLowercase(char32_t cp, std::vector<char32_t>* out);
// Appends NFD(cp) without nonspacing marks: the accent stripping BERT does.
void AppendStripped(char32_t cp, std::vector<char32_t>* out);

}  // namespace coldfuse::train::unicode

#endif  // COLDFUSE_CLIENT_TRAIN_TOKENIZER_UNICODE_H_
