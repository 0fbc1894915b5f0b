// Shared by the tokenizers: adds special tokens, truncates (longest_first) and pads the
// token ids of one text or pair into an Encoding, the way Hugging Face's BertProcessing /
// RobertaProcessing and truncation/padding do. Also reads vocabulary files.
#ifndef COLDFUSE_CLIENT_TRAIN_TOKENIZER_POST_PROCESS_H_
#define COLDFUSE_CLIENT_TRAIN_TOKENIZER_POST_PROCESS_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "client/train/tokenizer/tokenizer.h"

namespace coldfuse::train {

struct SpecialTokens {
  int64_t start_id = 0;  // [CLS] or <s>
  int64_t sep_id = 0;    // [SEP] or </s>
  int64_t pad_id = 0;    // [PAD] or <pad>
  // RoBERTa: `<s> A </s></s> B </s>` with type ids all 0; BERT: `[CLS] A [SEP] B [SEP]`
  // with type id 1 for B and its [SEP].
  bool roberta_pair = false;
};

Encoding AssembleEncoding(std::vector<int64_t> a, std::optional<std::vector<int64_t>> b,
                          const SpecialTokens& special, const TokenizeOptions& options);

// The whole file; NOT_FOUND naming it if it cannot be opened.
absl::StatusOr<std::string> ReadTextFile(const std::string& path);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_TOKENIZER_POST_PROCESS_H_
