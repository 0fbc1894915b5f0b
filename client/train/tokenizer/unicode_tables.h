// Unicode property tables generated into unicode_tables.cc by
// scripts/make_tokenizer_fixtures.py --tables, which probes Hugging Face `tokenizers` so
// that the tables follow its Unicode data, not the newest Unicode.
#ifndef COLDFUSE_CLIENT_TRAIN_TOKENIZER_UNICODE_TABLES_H_
#define COLDFUSE_CLIENT_TRAIN_TOKENIZER_UNICODE_TABLES_H_

#include <cstddef>
#include <cstdint>

namespace coldfuse::train::unicode_internal {

// Inclusive, sorted, disjoint code point ranges.
struct CodeRange {
  uint32_t first;
  uint32_t last;
};

// A code point mapped to up to three code points; sorted by `from`.
struct CodeMap {
  uint32_t from;
  uint32_t size;
  uint32_t to[3];
};

extern const CodeRange kLetter[];  // \p{L} of the GPT-2 regex
extern const size_t kLetterSize;
extern const CodeRange kNumber[];  // \p{N} of the GPT-2 regex
extern const size_t kNumberSize;
// What BertPreTokenizer isolates: ASCII punctuation/symbols and Unicode P* (as of ~8.0).
extern const CodeRange kBertPunctuation[];
extern const size_t kBertPunctuationSize;
// Dropped by accent stripping: nonspacing marks Mn (as of ~8.0).
extern const CodeRange kNonspacingMark[];
extern const size_t kNonspacingMarkSize;
// Dropped by BertNormalizer's clean_text: controls and format characters (Cc Cf Co, not
// tab/newline/CR, not unassigned code points), besides U+0000 and U+FFFD.
extern const CodeRange kBertControl[];
extern const size_t kBertControlSize;
extern const CodeMap kLowercase[];  // full per-character lowercase, where it differs
extern const size_t kLowercaseSize;
// NFD with nonspacing marks dropped, where it differs (Hangul syllables are algorithmic).
extern const CodeMap kStripAccents[];
extern const size_t kStripAccentsSize;

}  // namespace coldfuse::train::unicode_internal

#endif  // COLDFUSE_CLIENT_TRAIN_TOKENIZER_UNICODE_TABLES_H_
