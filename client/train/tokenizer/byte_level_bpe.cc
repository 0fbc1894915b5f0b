#include "client/train/tokenizer/byte_level_bpe.h"

#include <functional>
#include <limits>
#include <queue>
#include <string>
#include <utility>

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

// Repeatedly merges the adjacent pair of lowest rank (leftmost on ties), as HF's BPE does,
// and as HF does it (Word::merge_all): a heap of candidate merges ordered by (rank,
// position), an entry skipped when popped if its pair has changed since. Rescanning all
// pairs after each merge instead was quadratic in the piece's length, so one long run of
// mergeable text (say a base64 blob in a dataset row) took minutes to hours.
void ByteLevelBpeTokenizer::TokenizePiece(absl::string_view piece,
                                          std::vector<int64_t>* ids) const {
  constexpr size_t kNone = std::numeric_limits<size_t>::max();
  // The piece's byte-level text; each symbol is a range of it, linked to its neighbours.
  // Merging joins a symbol with the next one, which dies; ranges stay contiguous.
  struct Symbol {
    size_t begin, end, prev, next;
    bool alive;
  };
  std::string text;
  std::vector<Symbol> symbols;
  symbols.reserve(piece.size());
  for (unsigned char byte : piece) {
    const std::string& s = byte_to_unicode_[byte];
    const size_t i = symbols.size();
    symbols.push_back({text.size(), text.size() + s.size(), i == 0 ? kNone : i - 1, i + 1, true});
    text += s;
  }
  if (!symbols.empty()) symbols.back().next = kNone;

  std::string key;
  // The rank of the pair (symbol `left`, its next), or -1 if it is no merge.
  auto rank_of = [&](size_t left) -> int {
    const Symbol& l = symbols[left];
    if (l.next == kNone) return -1;
    const Symbol& r = symbols[l.next];
    key.assign(text, l.begin, l.end - l.begin).append(" ").append(text, r.begin, r.end - r.begin);
    auto it = merge_rank_.find(key);
    return it == merge_rank_.end() ? -1 : it->second;
  };
  using Candidate = std::pair<int, size_t>;  // (rank, left symbol): smallest first
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<Candidate>> heap;
  auto push = [&](size_t left) {
    const int rank = rank_of(left);
    if (rank >= 0) heap.emplace(rank, left);
  };
  for (size_t i = 0; i + 1 < symbols.size(); ++i) push(i);
  while (!heap.empty()) {
    const auto [rank, left] = heap.top();
    heap.pop();
    // Stale if the symbol was merged away or its pair changed (a pair's rank names it).
    if (!symbols[left].alive || rank_of(left) != rank) continue;
    Symbol& l = symbols[left];
    Symbol& r = symbols[l.next];
    l.end = r.end;
    r.alive = false;
    l.next = r.next;
    if (r.next != kNone) symbols[r.next].prev = left;
    if (l.prev != kNone) push(l.prev);
    push(left);
  }
  for (size_t i = symbols.empty() ? kNone : 0; i != kNone; i = symbols[i].next) {
    auto it = vocab_.find(text.substr(symbols[i].begin, symbols[i].end - symbols[i].begin));
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
