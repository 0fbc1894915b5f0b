// BERT's WordPiece tokenizer: Hugging Face BertNormalizer + BertPreTokenizer + WordPiece
// model + BertProcessing. Immutable after Create; Encode is thread-safe.
#ifndef COLDFUSE_CLIENT_TRAIN_TOKENIZER_WORDPIECE_H_
#define COLDFUSE_CLIENT_TRAIN_TOKENIZER_WORDPIECE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "absl/status/statusor.h"
#include "client/train/tokenizer/post_process.h"
#include "client/train/tokenizer/tokenizer.h"

namespace coldfuse::train {

struct WordPieceOptions {
  // Drop control characters, U+0000 and U+FFFD; map whitespace to ' '. Default: true.
  bool clean_text = true;
  // Put spaces around CJK ideographs so each becomes its own word. Default: true.
  bool handle_chinese_chars = true;
  // NFD + drop nonspacing marks (e.g. "é" -> "e"). Default: true.
  bool strip_accents = true;
  bool lowercase = true;  // Default: true (bert-base-uncased).
  std::string unk_token = "[UNK]";
  std::string cls_token = "[CLS]";
  std::string sep_token = "[SEP]";
  std::string pad_token = "[PAD]";
  std::string continuing_subword_prefix = "##";
  // Longer words (in code points) become [UNK]. Default: 100.
  size_t max_input_chars_per_word = 100;
};

class WordPieceTokenizer final : public Tokenizer {
 public:
  // INVALID_ARGUMENT if a special token is missing from `vocab`.
  static absl::StatusOr<std::unique_ptr<WordPieceTokenizer>> Create(
      std::unordered_map<std::string, int64_t> vocab, WordPieceOptions options);

  Encoding Encode(absl::string_view a, std::optional<absl::string_view> b,
                  const TokenizeOptions& options) const override;
  int64_t pad_id() const override { return special_.pad_id; }

  // The ids of one text, without special tokens.
  std::vector<int64_t> Tokenize(absl::string_view text) const;

 private:
  WordPieceTokenizer() = default;
  void TokenizeWord(const std::vector<char32_t>& word, std::vector<int64_t>* ids) const;

  std::unordered_map<std::string, int64_t> vocab_;
  WordPieceOptions options_;
  SpecialTokens special_;
  int64_t unk_id_ = 0;
};

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_TOKENIZER_WORDPIECE_H_
