#include "client/train/tokenizer/byte_level_bpe.h"

#include <limits>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/train/tokenizer/unicode.h"

namespace coldfuse::train {
namespace {

// Class of a code point for the regex: \s, \p{L}, \p{N} or anything else.
enum class Cls { kSpace, kLetter, kNumber, kOther };

Cls Classify(char32_t c) {
  if (unicode::IsWhitespace(c)) return Cls::kSpace;
  if (unicode::IsLetter(c)) return Cls::kLetter;
  if (unicode::IsNumber(c)) return Cls::kNumber;
  return Cls::kOther;
}

}  // namespace

// 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
std::vector<std::pair<size_t, size_t>> SplitGpt2(const std::vector<char32_t>& cps) {
  std::vector<std::pair<size_t, size_t>> out;
  size_t n = cps.size(), i = 0;
  auto at = [&](size_t k) -> char32_t { return k < n ? cps[k] : 0; };
  while (i < n) {
    char32_t c = cps[i];
    if (c == '\'') {
      char32_t c1 = at(i + 1), c2 = at(i + 2);
      size_t len = 0;
      if (c1 == 's' || c1 == 't' || c1 == 'm' || c1 == 'd') {
        len = 2;
      } else if ((c1 == 'r' && c2 == 'e') || (c1 == 'v' && c2 == 'e') || (c1 == 'l' && c2 == 'l')) {
        len = 3;
      }
      if (len > 0) {
        out.emplace_back(i, i + len);
        i += len;
        continue;
      }
    }
    size_t start = i, j = i;
    if (c == ' ' && i + 1 < n && Classify(cps[i + 1]) != Cls::kSpace) ++j;
    Cls cls = Classify(cps[j]);
    if (cls != Cls::kSpace) {
      while (j < n && Classify(cps[j]) == cls) ++j;
      out.emplace_back(start, j);
      i = j;
      continue;
    }
    // A whitespace run: all of it at the end of the text, else all but its last
    // character (which may then prefix the next word), else that one character.
    while (j < n && Classify(cps[j]) == Cls::kSpace) ++j;
    if (j == n || j - i == 1) {
      out.emplace_back(i, j);
      i = j;
    } else {
      out.emplace_back(i, j - 1);
      i = j - 1;
    }
  }
  return out;
}

absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> ByteLevelBpeTokenizer::Create(
    std::unordered_map<std::string, int64_t> vocab,
    const std::vector<std::pair<std::string, std::string>>& merges, ByteLevelBpeOptions options) {
  std::unique_ptr<ByteLevelBpeTokenizer> t(new ByteLevelBpeTokenizer());
  for (auto [token, id] : {std::pair{&options.bos_token, &t->special_.start_id},
                           std::pair{&options.eos_token, &t->special_.sep_id},
                           std::pair{&options.pad_token, &t->special_.pad_id}}) {
    auto it = vocab.find(*token);
    if (it == vocab.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("BPE vocabulary has no special token \"", *token, "\""));
    }
    *id = it->second;
  }
  t->special_.roberta_pair = true;
  if (auto it = vocab.find(options.unk_token); it != vocab.end()) t->unk_id_ = it->second;
  for (size_t r = 0; r < merges.size(); ++r) {
    const auto& [left, right] = merges[r];
    for (const std::string& s : {left, right, left + right}) {
      if (!vocab.count(s)) {
        return absl::InvalidArgumentError(absl::StrCat("BPE merge ", r + 1, " (\"", left, " ",
                                                       right, "\"): \"", s,
                                                       "\" is not in the vocabulary"));
      }
    }
    t->merge_rank_.emplace(absl::StrCat(left, " ", right), static_cast<int>(r));
  }
  // GPT-2's bytes_to_unicode: printable Latin-1 bytes stand for themselves, the others
  // map to U+0100 onwards in byte order.
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    unicode::AppendUtf8(printable ? b : 0x100 + next++, &t->byte_to_unicode_[b]);
  }
  t->vocab_ = std::move(vocab);
  t->options_ = std::move(options);
  return t;
}

std::vector<int64_t> ByteLevelBpeTokenizer::Tokenize(absl::string_view text) const {
  std::vector<char32_t> cps = unicode::DecodeUtf8(text);
  if (options_.add_prefix_space && (cps.empty() || cps[0] != ' ')) {
    cps.insert(cps.begin(), ' ');
  }
  std::vector<int64_t> ids;
  std::string piece;
  for (auto [begin, end] : SplitGpt2(cps)) {
    piece.clear();
    for (size_t k = begin; k < end; ++k) unicode::AppendUtf8(cps[k], &piece);
    TokenizePiece(piece, &ids);
  }
  return ids;
}

// Repeatedly merges the adjacent pair of lowest rank (leftmost on ties), as HF's BPE does.
void ByteLevelBpeTokenizer::TokenizePiece(absl::string_view piece,
                                          std::vector<int64_t>* ids) const {
  std::vector<std::string> symbols;
  symbols.reserve(piece.size());
  for (unsigned char byte : piece) symbols.push_back(byte_to_unicode_[byte]);
  std::string key;
  while (symbols.size() > 1) {
    int best_rank = std::numeric_limits<int>::max();
    size_t best = 0;
    for (size_t k = 0; k + 1 < symbols.size(); ++k) {
      key.assign(symbols[k]).append(" ").append(symbols[k + 1]);
      auto it = merge_rank_.find(key);
      if (it != merge_rank_.end() && it->second < best_rank) {
        best_rank = it->second;
        best = k;
      }
    }
    if (best_rank == std::numeric_limits<int>::max()) break;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + best + 1);
  }
  for (const std::string& s : symbols) {
    auto it = vocab_.find(s);
    if (it != vocab_.end()) {
      ids->push_back(it->second);
    } else if (unk_id_ >= 0) {
      ids->push_back(unk_id_);
    }
  }
}

Encoding ByteLevelBpeTokenizer::Encode(absl::string_view a, std::optional<absl::string_view> b,
                                       const TokenizeOptions& options) const {
  std::optional<std::vector<int64_t>> ids_b;
  if (b) ids_b = Tokenize(*b);
  return AssembleEncoding(Tokenize(a), std::move(ids_b), special_, options);
}

}  // namespace coldfuse::train
