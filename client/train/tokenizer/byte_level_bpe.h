// RoBERTa/GPT-2 byte-level BPE: Hugging Face ByteLevel pre-tokenizer (GPT-2 regex, bytes
// mapped to printable code points) + BPE model (merges by rank) + RobertaProcessing.
// Immutable after Create; Encode is thread-safe.
#ifndef COLDFUSE_CLIENT_TRAIN_TOKENIZER_BYTE_LEVEL_BPE_H_
#define COLDFUSE_CLIENT_TRAIN_TOKENIZER_BYTE_LEVEL_BPE_H_

#include <cstdint>
#include <memory>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "client/train/tokenizer/post_process.h"
#include "client/train/tokenizer/tokenizer.h"

namespace coldfuse::train {

struct ByteLevelBpeOptions {
  // Prepend ' ' to a text that does not start with one. Default: false (as RoBERTa's).
  bool add_prefix_space = false;
  std::string bos_token = "<s>";
  std::string eos_token = "</s>";
  std::string pad_token = "<pad>";
  std::string unk_token = "<unk>";  // optional: used only if in the vocab
};

class ByteLevelBpeTokenizer final : public Tokenizer {
 public:
  // `merges` in rank order, as byte-level strings. INVALID_ARGUMENT if a special token is
  // missing from `vocab` or a merge's parts or result are not in it.
  static absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> Create(
      std::unordered_map<std::string, int64_t> vocab,
      const std::vector<std::pair<std::string, std::string>>& merges, ByteLevelBpeOptions options);

  Encoding Encode(absl::string_view a, std::optional<absl::string_view> b,
                  const TokenizeOptions& options) const override;
  int64_t pad_id() const override { return special_.pad_id; }

  // The ids of one text, without special tokens.
  std::vector<int64_t> Tokenize(absl::string_view text) const;

 private:
  ByteLevelBpeTokenizer() = default;
  void TokenizePiece(absl::string_view piece, std::vector<int64_t>* ids) const;

  std::unordered_map<std::string, int64_t> vocab_;
  // "left right" (byte-level tokens contain no ' ') -> rank.
  std::unordered_map<std::string, int> merge_rank_;
  std::string byte_to_unicode_[256];  // UTF-8 of the printable stand-in for each byte
  ByteLevelBpeOptions options_;
  SpecialTokens special_;
  int64_t unk_id_ = -1;
};

// GPT-2's pre-tokenization regex over code points; returns [begin, end) index pairs.
std::vector<std::pair<size_t, size_t>> SplitGpt2(const std::vector<char32_t>& cps);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_TOKENIZER_BYTE_LEVEL_BPE_H_
