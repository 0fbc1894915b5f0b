#include "client/train/tokenizer/post_process.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"

namespace coldfuse::train {
namespace {

// Hugging Face's TruncationStrategy::LongestFirst for `budget` tokens (specials excluded).
void TruncateLongestFirst(size_t budget, std::vector<int64_t>* a, std::vector<int64_t>* b) {
  size_t total = a->size() + (b ? b->size() : 0);
  if (budget == 0) {
    a->clear();
    if (b) b->clear();
    return;
  }
  if (total <= budget) return;
  if (b == nullptr) {
    a->resize(budget);
    return;
  }
  size_t n1 = a->size(), n2 = b->size();
  bool swap = n1 > n2;  // make n1 the shorter
  if (swap) std::swap(n1, n2);
  if (n1 > budget) {
    n2 = n1;
  } else {
    n2 = std::max(n1, budget - n1);
  }
  if (n1 + n2 > budget) {
    n1 = budget / 2;
    n2 = n1 + budget % 2;
  }
  if (swap) std::swap(n1, n2);
  if (a->size() > n1) a->resize(n1);
  if (b->size() > n2) b->resize(n2);
}

}  // namespace

Encoding AssembleEncoding(std::vector<int64_t> a, std::optional<std::vector<int64_t>> b,
                          const SpecialTokens& special, const TokenizeOptions& options) {
  size_t added = b ? (special.roberta_pair ? 4 : 3) : 2;
  size_t max_length = static_cast<size_t>(std::max(options.max_length, 0));
  // Like Hugging Face, a max_length below the number of special tokens disables truncation.
  if (options.truncation && max_length >= added) {
    TruncateLongestFirst(max_length - added, &a, b ? &*b : nullptr);
  }
  Encoding e;
  auto push = [&e](int64_t id, int64_t type) {
    e.input_ids.push_back(id);
    e.token_type_ids.push_back(type);
    e.attention_mask.push_back(1);
  };
  push(special.start_id, 0);
  for (int64_t id : a) push(id, 0);
  push(special.sep_id, 0);
  if (b) {
    int64_t type = special.roberta_pair ? 0 : 1;
    if (special.roberta_pair) push(special.sep_id, 0);
    for (int64_t id : *b) push(id, type);
    push(special.sep_id, type);
  }
  if (options.pad_to_max_length) {
    while (e.input_ids.size() < max_length) {
      e.input_ids.push_back(special.pad_id);
      e.token_type_ids.push_back(0);
      e.attention_mask.push_back(0);
    }
  }
  return e;
}

absl::StatusOr<std::string> ReadTextFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open tokenizer file ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("error reading ", path));
  return ss.str();
}

}  // namespace coldfuse::train
