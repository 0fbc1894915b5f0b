#include "client/train/tokenizer/wordpiece.h"

#include <utility>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "client/train/tokenizer/unicode.h"

namespace coldfuse::train {
namespace {

// The CJK ideograph blocks BERT isolates (not Hiragana, Katakana or Hangul).
bool IsChineseChar(char32_t c) {
  return (c >= 0x4E00 && c <= 0x9FFF) || (c >= 0x3400 && c <= 0x4DBF) ||
         (c >= 0x20000 && c <= 0x2A6DF) || (c >= 0x2A700 && c <= 0x2B73F) ||
         (c >= 0x2B740 && c <= 0x2B81F) || (c >= 0x2B920 && c <= 0x2CEAF) ||
         (c >= 0xF900 && c <= 0xFAFF) || (c >= 0x2F800 && c <= 0x2FA1F);
}

}  // namespace

absl::StatusOr<std::unique_ptr<WordPieceTokenizer>> WordPieceTokenizer::Create(
    std::unordered_map<std::string, int64_t> vocab, WordPieceOptions options) {
  std::unique_ptr<WordPieceTokenizer> t(new WordPieceTokenizer());
  auto id_of = [&vocab](const std::string& token, int64_t* id) -> absl::Status {
    auto it = vocab.find(token);
    if (it == vocab.end()) {
      return absl::InvalidArgumentError(
          absl::StrCat("WordPiece vocabulary has no special token \"", token, "\""));
    }
    *id = it->second;
    return absl::OkStatus();
  };
  for (auto [token, id] : {std::pair{&options.unk_token, &t->unk_id_},
                           std::pair{&options.cls_token, &t->special_.start_id},
                           std::pair{&options.sep_token, &t->special_.sep_id},
                           std::pair{&options.pad_token, &t->special_.pad_id}}) {
    absl::Status s = id_of(*token, id);
    if (!s.ok()) return s;
  }
  t->vocab_ = std::move(vocab);
  t->options_ = std::move(options);
  return t;
}

std::vector<int64_t> WordPieceTokenizer::Tokenize(absl::string_view text) const {
  // Normalize (BertNormalizer order: clean, CJK, strip accents, lowercase).
  std::vector<char32_t> cps = unicode::DecodeUtf8(text);
  std::vector<char32_t> norm;
  norm.reserve(cps.size());
  for (char32_t c : cps) {
    if (options_.clean_text) {
      if (c == 0 || c == 0xFFFD || unicode::IsBertControl(c)) continue;
      if (unicode::IsWhitespace(c)) c = ' ';
    }
    if (options_.handle_chinese_chars && IsChineseChar(c)) {
      norm.push_back(' ');
      norm.push_back(c);
      norm.push_back(' ');
    } else {
      norm.push_back(c);
    }
  }
  if (options_.strip_accents) {
    std::vector<char32_t> stripped;
    stripped.reserve(norm.size());
    for (char32_t c : norm) unicode::AppendStripped(c, &stripped);
    norm.swap(stripped);
  }
  if (options_.lowercase) {
    std::vector<char32_t> lower;
    lower.reserve(norm.size());
    for (char32_t c : norm) unicode::AppendLowercase(c, &lower);
    norm.swap(lower);
  }
  // Pre-tokenize: split on whitespace, isolate each punctuation character.
  std::vector<int64_t> ids;
  std::vector<char32_t> word;
  for (char32_t c : norm) {
    if (unicode::IsWhitespace(c)) {
      TokenizeWord(word, &ids);
      word.clear();
    } else if (unicode::IsBertPunctuation(c)) {
      TokenizeWord(word, &ids);
      word.assign(1, c);
      TokenizeWord(word, &ids);
      word.clear();
    } else {
      word.push_back(c);
    }
  }
  TokenizeWord(word, &ids);
  return ids;
}

// Greedy longest match, left to right; the whole word is [UNK] if any part fails.
void WordPieceTokenizer::TokenizeWord(const std::vector<char32_t>& word,
                                      std::vector<int64_t>* ids) const {
  if (word.empty()) return;
  if (word.size() > options_.max_input_chars_per_word) {
    ids->push_back(unk_id_);
    return;
  }
  // Byte offset where each code point starts, plus the end.
  std::string utf8;
  std::vector<size_t> offsets;
  for (char32_t c : word) {
    offsets.push_back(utf8.size());
    unicode::AppendUtf8(c, &utf8);
  }
  offsets.push_back(utf8.size());
  size_t first_new = ids->size();
  size_t start = 0, n = word.size();
  std::string piece;
  while (start < n) {
    size_t end = n;
    int64_t found = -1;
    while (start < end) {
      piece.clear();
      if (start > 0) piece = options_.continuing_subword_prefix;
      piece.append(utf8, offsets[start], offsets[end] - offsets[start]);
      auto it = vocab_.find(piece);
      if (it != vocab_.end()) {
        found = it->second;
        break;
      }
      --end;
    }
    if (found < 0) {
      ids->resize(first_new);
      ids->push_back(unk_id_);
      return;
    }
    ids->push_back(found);
    start = end;
  }
}

Encoding WordPieceTokenizer::Encode(absl::string_view a, std::optional<absl::string_view> b,
                                    const TokenizeOptions& options) const {
  std::optional<std::vector<int64_t>> ids_b;
  if (b) ids_b = Tokenize(*b);
  return AssembleEncoding(Tokenize(a), std::move(ids_b), special_, options);
}

}  // namespace coldfuse::train
