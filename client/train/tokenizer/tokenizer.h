// Text tokenizers for BERT-family models whose token ids match Hugging Face `tokenizers`:
// WordPiece (BERT, MiniLM) and byte-level BPE (RoBERTa, GPT-2). Torch-free.
//
// A loaded Tokenizer is immutable; Encode is const and safe to call from many threads.
//
// Unicode: the character classes (letters/numbers for the GPT-2 regex, BERT punctuation,
// controls removed by clean_text, nonspacing marks, per-character lowercase, and NFD minus
// marks for accent stripping) are tables generated for every code point by probing
// `tokenizers` itself (scripts/make_tokenizer_fixtures.py --tables), so they follow its
// Unicode data; Hangul syllables decompose algorithmically. Approximations: accent
// stripping is NFD per character, without canonical reordering (it only matters for
// non-Mn combining marks with a nonzero combining class, e.g. U+1D165); input that is not
// valid UTF-8 (which Hugging Face cannot receive) is read with U+FFFD per bad byte.
// Not supported: added/special tokens written inside the input text (a literal "[MASK]"
// is split like any other word), offsets, stride/overflowing tokens, left padding or
// truncation, normalizers other than BertNormalizer, BPE without a ByteLevel pre-tokenizer.
#ifndef COLDFUSE_CLIENT_TRAIN_TOKENIZER_TOKENIZER_H_
#define COLDFUSE_CLIENT_TRAIN_TOKENIZER_TOKENIZER_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace coldfuse::train {

// The model inputs for one text or text pair, all the same length.
struct Encoding {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> token_type_ids;  // 0 for the first text, 1 for the second (BERT).
  std::vector<int64_t> attention_mask;  // 1 for tokens, 0 for padding.
};

struct TokenizeOptions {
  // Length limit (special tokens included) for truncation and padding. Default: 128.
  int max_length = 128;
  // Pad on the right with the pad token up to max_length. Default: true.
  bool pad_to_max_length = true;
  // Truncate (longest_first, like Hugging Face) to max_length. Default: true.
  bool truncation = true;
};

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Tokenizes `a` (and `b`, as the second text of a pair) and adds the special tokens.
  // Input that is not valid UTF-8 is read with U+FFFD for each bad byte.
  virtual Encoding Encode(absl::string_view a, std::optional<absl::string_view> b,
                          const TokenizeOptions& options) const = 0;

  virtual int64_t pad_id() const = 0;
};

// A BERT WordPiece tokenizer from a vocab.txt (one token per line, id = line index), with
// [UNK], [CLS], [SEP] and [PAD] required in it. NOT_FOUND if the file is missing,
// INVALID_ARGUMENT naming the file (and line) if it is malformed.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadWordPiece(const std::string& vocab_txt,
                                                         bool lowercase, bool strip_accents);

// A RoBERTa byte-level BPE tokenizer from vocab.json ({"token": id}) and merges.txt
// ("a b" per line, optional "#version" header), with <s>, </s> and <pad> in the vocab.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadByteLevelBpe(const std::string& vocab_json,
                                                            const std::string& merges_txt);

// Either of the above from a Hugging Face tokenizer.json, chosen by "model.type"
// ("WordPiece" or "BPE"); normalizer and pre-tokenizer settings are read from it.
absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::string& tokenizer_json);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_TOKENIZER_TOKENIZER_H_
