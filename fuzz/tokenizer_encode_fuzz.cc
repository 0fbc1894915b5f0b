// Fuzzes encoding arbitrary bytes (UTF-8 or not) with the tokenizers
// (client/train/tokenizer/) over small fixed vocabularies. Input: one byte choosing the
// tokenizer and its options, one byte of TokenizeOptions (tokenizer_checks.h), then the
// text; a pair is split at the first 0x1F byte.
//
// Asserts: no crash or UB; the Encoding invariants of CheckEncode; the special tokens and
// the text's own tokens in BERT's or RoBERTa's layout, truncated longest-first to exactly
// min(tokens, max_length - specials), each part a prefix of its text's tokens.
// WordPiece: for printable-ASCII text, whose every character is in the vocabulary (alone
// and as a ##continuation), the tokens spell the text without its whitespace (lowercased
// if asked) unless a word is longer than max_input_chars_per_word. Byte-level BPE, whose
// vocabulary holds all 256 bytes: no unknown tokens, and the tokens map back to exactly
// the text's bytes (each invalid UTF-8 byte read as U+FFFD, a space prepended with
// add_prefix_space).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <tuple>
#include <unordered_map>
#include <unordered_set>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "client/train/tokenizer/byte_level_bpe.h"
#include "client/train/tokenizer/unicode.h"
#include "client/train/tokenizer/wordpiece.h"
#include "fuzz/fuzz_util.h"
#include "fuzz/tokenizer_checks.h"

namespace coldfuse::fuzz {
namespace {

using train::ByteLevelBpeOptions;
using train::ByteLevelBpeTokenizer;
using train::WordPieceOptions;
using train::WordPieceTokenizer;
using Vocab = std::unordered_map<std::string, int64_t>;

// Special tokens first (ids 0..3), then every printable ASCII character alone and as a
// continuation, then a few words and non-ASCII pieces.
Vocab WordPieceVocab() {
  std::vector<std::string> tokens = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (char c = 0x21; c < 0x7F; ++c) {
    tokens.push_back(std::string(1, c));
    tokens.push_back("##" + std::string(1, c));
  }
  for (const char* t : {"the",          "##s",
                        "hello",        "world",
                        "##ing",        "un",
                        "##aff",        "##able",
                        "\xc3\xa9",     "##\xc3\xa9",
                        "\xc3\x9f",     "\xe4\xb8\xad",
                        "\xe6\x96\x87", "\xf0\x9f\x98\x80",
                        "\xc3\xb1",     "##\xc3\xb1",
                        "\xcf\x83",     "\xcf\x82",
                        "\xd0\xb9",     "\xe6\x97\xa5\xe6\x9c\xac",
                        "caf",          "##\xc3\xa9"}) {
    tokens.push_back(t);
  }
  Vocab vocab;
  for (const std::string& t : tokens) vocab.emplace(t, static_cast<int64_t>(vocab.size()));
  return vocab;
}

// GPT-2's bytes_to_unicode: the printable stand-in for each byte.
std::vector<std::string> ByteSymbols() {
  std::vector<std::string> out(256);
  int next = 0;
  for (int b = 0; b < 256; ++b) {
    bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
    train::unicode::AppendUtf8(printable ? b : 0x100 + next++, &out[b]);
  }
  return out;
}

struct Bpe {
  Vocab vocab;
  std::vector<std::pair<std::string, std::string>> merges;
};

// All 256 byte symbols (ids 0..255), the specials, and merges of common English pairs.
Bpe BpeVocab() {
  Bpe bpe;
  for (const std::string& s : ByteSymbols()) bpe.vocab.emplace(s, bpe.vocab.size());
  for (const char* t : {"<s>", "</s>", "<pad>", "<unk>"}) bpe.vocab.emplace(t, bpe.vocab.size());
  const std::vector<std::string> sym = ByteSymbols();
  const std::string sp = sym[' '];  // Ġ
  bpe.merges = {
      {sp, "t"},       {"h", "e"}, {sp + "t", "he"}, {"i", "n"},    {sp, "a"},
      {"e", "r"},      {"o", "n"}, {sp, sp},         {sp + sp, sp}, {"in", "g"},
      {sp, "s"},       {"r", "e"}, {"a", "n"},       {"l", "l"},    {sym[0xC3], sym[0xA9]},  // é
      {sp + "a", "n"}, {"o", "u"}};
  for (const auto& [l, r] : bpe.merges) bpe.vocab.emplace(l + r, bpe.vocab.size());
  return bpe;
}

struct Fixed {
  Vocab wordpiece_vocab = WordPieceVocab();
  std::unordered_set<int64_t> wordpiece_ids;
  std::unique_ptr<WordPieceTokenizer> wordpiece[32];
  Bpe bpe = BpeVocab();
  std::unordered_set<int64_t> bpe_ids;
  std::unordered_map<int64_t, std::string> bpe_tokens;
  std::unordered_map<std::string, unsigned char> symbol_byte;
  std::unique_ptr<ByteLevelBpeTokenizer> byte_level[2];

  Fixed() {
    for (const auto& [t, id] : wordpiece_vocab) wordpiece_ids.insert(id);
    for (int k = 0; k < 32; ++k) {
      WordPieceOptions o;
      o.clean_text = (k & 1) != 0;
      o.handle_chinese_chars = (k & 2) != 0;
      o.strip_accents = (k & 4) != 0;
      o.lowercase = (k & 8) != 0;
      o.max_input_chars_per_word = (k & 16) != 0 ? 3 : 100;
      auto t = WordPieceTokenizer::Create(wordpiece_vocab, o);
      FUZZ_CHECK(t.ok(), t.status().ToString());
      wordpiece[k] = std::move(*t);
    }
    for (const auto& [t, id] : bpe.vocab) {
      bpe_ids.insert(id);
      bpe_tokens[id] = t;
    }
    std::vector<std::string> symbols = ByteSymbols();
    for (int b = 0; b < 256; ++b) symbol_byte[symbols[b]] = static_cast<unsigned char>(b);
    for (int k = 0; k < 2; ++k) {
      ByteLevelBpeOptions o;
      o.add_prefix_space = k == 1;
      auto t = ByteLevelBpeTokenizer::Create(bpe.vocab, bpe.merges, o);
      FUZZ_CHECK(t.ok(), t.status().ToString());
      byte_level[k] = std::move(*t);
    }
  }
};

const Fixed& Tokenizers() {
  static const Fixed* fixed = new Fixed();
  return *fixed;
}

// How many tokens of each text longest-first truncation keeps within `budget`, as Hugging
// Face does: nothing is cut if both fit; else the shorter text (the first on a tie) is kept
// whole if it fills at most half the budget and the longer one gets the rest; else the
// shorter one gets floor(budget / 2) and the longer one ceil(budget / 2).
std::pair<size_t, size_t> LongestFirst(size_t a, size_t b, size_t budget) {
  if (a + b <= budget) return {a, b};
  const bool a_short = a <= b;
  const size_t s = a_short ? a : b;
  size_t keep_short, keep_long;
  if (2 * s <= budget) {
    keep_short = s;
    keep_long = budget - s;
  } else {
    keep_short = budget / 2;
    keep_long = budget - budget / 2;
  }
  return a_short ? std::pair{keep_short, keep_long} : std::pair{keep_long, keep_short};
}

// Checks the real tokens of `e` are BERT's `start a' sep [b' sep]` or RoBERTa's
// `start a' sep [sep b' sep]`, where a' and b' are the prefixes of the texts' own tokens
// `ta` and `tb` that truncation keeps.
void CheckLayout(const train::Encoding& e, const std::vector<int64_t>& ta,
                 const std::optional<std::vector<int64_t>>& tb, int64_t start, int64_t sep,
                 bool roberta, const train::TokenizeOptions& o) {
  const size_t added = tb ? (roberta ? 4 : 3) : 2;
  const size_t max_length = o.max_length > 0 ? static_cast<size_t>(o.max_length) : 0;
  size_t na = ta.size(), nb = tb ? tb->size() : 0;
  if (o.truncation && max_length >= added) {
    if (tb) {
      std::tie(na, nb) = LongestFirst(na, nb, max_length - added);
    } else {
      na = std::min(na, max_length - added);
    }
  }
  std::vector<int64_t> want = {start};
  want.insert(want.end(), ta.begin(), ta.begin() + na);
  want.push_back(sep);
  if (tb) {
    if (roberta) want.push_back(sep);
    want.insert(want.end(), tb->begin(), tb->begin() + nb);
    want.push_back(sep);
  }
  size_t real = 0;
  while (real < e.attention_mask.size() && e.attention_mask[real] == 1) ++real;
  std::vector<int64_t> got(e.input_ids.begin(), e.input_ids.begin() + real);
  FUZZ_CHECK(got == want,
             absl::StrCat(real, " real tokens for texts of ", ta.size(), " + ", tb ? tb->size() : 0,
                          " tokens; expected ", want.size(), " (keeping ", na, " + ", nb, ")"));
  if (tb && !roberta) {
    for (size_t i = 0; i < real; ++i) {
      FUZZ_CHECK(e.token_type_ids[i] == (i < na + 2 ? 0 : 1), absl::StrCat("BERT type id at ", i));
    }
  } else {
    for (size_t i = 0; i < real; ++i) FUZZ_CHECK(e.token_type_ids[i] == 0, "type id");
  }
}

bool IsAsciiText(absl::string_view s) {
  for (char c : s) {
    if (!((c >= 0x20 && c < 0x7F) || (c >= 0x09 && c <= 0x0D))) return false;
  }
  return true;
}

void CheckWordPieceSpelling(const WordPieceTokenizer& tok, const WordPieceOptions& o,
                            absl::string_view text, const std::vector<int64_t>& ids,
                            const Vocab& vocab) {
  if (!IsAsciiText(text)) return;
  std::unordered_map<int64_t, std::string> token_of;
  for (const auto& [t, id] : vocab) token_of[id] = t;
  std::string spelled;
  bool unk = false;
  for (int64_t id : ids) {
    const std::string& t = token_of[id];
    unk = unk || t == "[UNK]";
    spelled.append(t.rfind("##", 0) == 0 && t.size() > 2 ? t.substr(2) : t);
  }
  std::string want;
  size_t run = 0, longest = 0;
  for (char c : text) {
    // BERT's clean_text removes control characters; of ASCII's whitespace, \v and \f are
    // controls to it (Hugging Face: is_control is false only for \t, \n and \r).
    if (o.clean_text && (c == '\v' || c == '\f')) continue;
    if (absl::ascii_isspace(static_cast<unsigned char>(c))) {
      run = 0;
      continue;
    }
    want.push_back(o.lowercase ? absl::ascii_tolower(static_cast<unsigned char>(c)) : c);
    run = absl::ascii_isalnum(static_cast<unsigned char>(c)) ? run + 1 : 0;
    longest = std::max(longest, run);
  }
  if (unk) {
    FUZZ_CHECK(longest > o.max_input_chars_per_word,
               absl::StrCat("[UNK] for ASCII text whose longest word has ", longest, " chars"));
    return;
  }
  FUZZ_CHECK(spelled == want, absl::StrCat("tokens spell '", spelled, "', not '", want, "'"));
  (void)tok;
}

void CheckBpeBytes(const Fixed& f, bool add_prefix_space, absl::string_view text,
                   const std::vector<int64_t>& ids) {
  std::string want;
  std::vector<char32_t> cps = train::unicode::DecodeUtf8(text);
  if (add_prefix_space && (cps.empty() || cps[0] != ' ')) want.push_back(' ');
  for (char32_t cp : cps) train::unicode::AppendUtf8(cp, &want);
  std::string got;
  for (int64_t id : ids) {
    auto it = f.bpe_tokens.find(id);
    FUZZ_CHECK(it != f.bpe_tokens.end() && id != f.bpe.vocab.at("<unk>"),
               absl::StrCat("id ", id, " is unknown"));
    for (char32_t cp : train::unicode::DecodeUtf8(it->second)) {
      std::string symbol;
      train::unicode::AppendUtf8(cp, &symbol);
      auto b = f.symbol_byte.find(symbol);
      FUZZ_CHECK(b != f.symbol_byte.end(), absl::StrCat("token '", it->second, "' is not bytes"));
      got.push_back(static_cast<char>(b->second));
    }
  }
  FUZZ_CHECK(got == want, "the tokens do not map back to the text's bytes");
}

}  // namespace
}  // namespace coldfuse::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace coldfuse;
  using namespace coldfuse::fuzz;
  const Fixed& f = Tokenizers();
  FuzzInput in(data, size);
  const uint8_t which = in.Byte();
  bool pair = false;
  const train::TokenizeOptions o = ReadTokenizeOptions(in.Byte(), &pair);
  absl::string_view a = in.Rest();
  std::optional<absl::string_view> b;
  if (pair) {
    absl::string_view second;
    SplitOnce(a, "\x1f", &a, &second);
    b = second;
  }

  if ((which & 1) == 0) {
    const int k = (which >> 1) & 31;
    const WordPieceTokenizer& tok = *f.wordpiece[k];
    const int64_t cls = f.wordpiece_vocab.at("[CLS]"), sep = f.wordpiece_vocab.at("[SEP]");
    train::Encoding e = CheckEncode(tok, a, b, o, &f.wordpiece_ids);
    std::vector<int64_t> ta = tok.Tokenize(a);
    std::optional<std::vector<int64_t>> tb;
    if (b) tb = tok.Tokenize(*b);
    CheckLayout(e, ta, tb, cls, sep, /*roberta=*/false, o);
    WordPieceOptions wo;
    wo.clean_text = (k & 1) != 0;
    wo.lowercase = (k & 8) != 0;
    wo.max_input_chars_per_word = (k & 16) != 0 ? 3 : 100;
    CheckWordPieceSpelling(tok, wo, a, ta, f.wordpiece_vocab);
  } else {
    const int k = (which >> 1) & 1;
    const ByteLevelBpeTokenizer& tok = *f.byte_level[k];
    const int64_t bos = f.bpe.vocab.at("<s>"), eos = f.bpe.vocab.at("</s>");
    train::Encoding e = CheckEncode(tok, a, b, o, &f.bpe_ids);
    std::vector<int64_t> ta = tok.Tokenize(a);
    std::optional<std::vector<int64_t>> tb;
    if (b) tb = tok.Tokenize(*b);
    CheckLayout(e, ta, tb, bos, eos, /*roberta=*/true, o);
    CheckBpeBytes(f, k == 1, a, ta);
    if (b) CheckBpeBytes(f, k == 1, *b, *tb);
  }
  return 0;
}
