// Parity with Hugging Face `tokenizers` (fixtures from scripts/make_tokenizer_fixtures.py)
// and edge cases of the WordPiece and byte-level BPE tokenizers.
#include "client/train/tokenizer/tokenizer.h"

#include <chrono>
#include <cstdlib>
#include <fstream>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "client/train/tokenizer/byte_level_bpe.h"
#include "client/train/tokenizer/unicode.h"
#include "common/json.h"
#include "common/model_spec.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse::train {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

const std::string kDir = COLDFUSE_TOKENIZER_FIXTURES;

std::vector<int64_t> Ints(const JsonValue& v) {
  std::vector<int64_t> out;
  for (const JsonValue& x : v.array) out.push_back(*x.AsInt64());
  return out;
}

// Checks every expected.jsonl row for `name`; returns {matched, total}.
std::pair<int, int> CheckParity(const Tokenizer& tok, const std::string& name) {
  // COLDFUSE_TOKENIZER_EXPECTED may name a larger expected.jsonl made with the same
  // tokenizers (e.g. random strings), for a longer parity run.
  const char* override_path = std::getenv("COLDFUSE_TOKENIZER_EXPECTED");
  std::ifstream in(override_path != nullptr ? std::string(override_path)
                                            : kDir + "/expected.jsonl");
  EXPECT_TRUE(in.good());
  std::string line;
  int matched = 0, total = 0;
  while (std::getline(in, line)) {
    absl::StatusOr<JsonValue> row = ParseJson(line);
    EXPECT_TRUE(row.ok()) << row.status();
    if (!row.ok() || row->Find("tokenizer")->text != name) continue;
    ++total;
    TokenizeOptions opts;
    opts.max_length = static_cast<int>(*row->Find("max_length")->AsInt64());
    opts.pad_to_max_length = row->Find("pad")->boolean;
    const JsonValue* b = row->Find("b");
    std::optional<absl::string_view> second;
    if (!b->is_null()) second = b->text;
    Encoding e = tok.Encode(row->Find("a")->text, second, opts);
    bool ok = e.input_ids == Ints(*row->Find("ids")) &&
              e.token_type_ids == Ints(*row->Find("type_ids")) &&
              e.attention_mask == Ints(*row->Find("mask"));
    EXPECT_TRUE(ok) << name << " differs for a=\"" << row->Find("a")->text
                    << "\" b=" << (b->is_null() ? "null" : b->text)
                    << " max_length=" << opts.max_length;
    matched += ok;
  }
  return {matched, total};
}

TEST(TokenizerParityTest, WordPieceFromVocabTxt) {
  auto tok = LoadWordPiece(kDir + "/vocab.txt", /*lowercase=*/true, /*strip_accents=*/true);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto [matched, total] = CheckParity(**tok, "wordpiece");
  EXPECT_GE(total, 100);
  EXPECT_EQ(matched, total);
  std::cout << "wordpiece (vocab.txt): " << matched << "/" << total << " match\n";
}

TEST(TokenizerParityTest, WordPieceFromTokenizerJson) {
  auto tok = LoadTokenizerJson(kDir + "/wordpiece_tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto [matched, total] = CheckParity(**tok, "wordpiece");
  EXPECT_EQ(matched, total);
  std::cout << "wordpiece (tokenizer.json): " << matched << "/" << total << " match\n";
}

TEST(TokenizerParityTest, CasedWordPieceFromVocabTxt) {
  auto tok = LoadWordPiece(kDir + "/vocab.txt", /*lowercase=*/false, /*strip_accents=*/false);
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto [matched, total] = CheckParity(**tok, "wordpiece_cased");
  EXPECT_GE(total, 100);
  EXPECT_EQ(matched, total);
  std::cout << "wordpiece cased (vocab.txt): " << matched << "/" << total << " match\n";
}

TEST(TokenizerParityTest, BpeFromVocabAndMerges) {
  auto tok = LoadByteLevelBpe(kDir + "/vocab.json", kDir + "/merges.txt");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto [matched, total] = CheckParity(**tok, "bpe");
  EXPECT_GE(total, 100);
  EXPECT_EQ(matched, total);
  std::cout << "bpe (vocab.json+merges.txt): " << matched << "/" << total << " match\n";
}

TEST(TokenizerParityTest, BpeFromTokenizerJson) {
  auto tok = LoadTokenizerJson(kDir + "/bpe_tokenizer.json");
  ASSERT_TRUE(tok.ok()) << tok.status();
  auto [matched, total] = CheckParity(**tok, "bpe");
  EXPECT_EQ(matched, total);
  std::cout << "bpe (tokenizer.json): " << matched << "/" << total << " match\n";
}

class WordPieceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto t = LoadWordPiece(kDir + "/vocab.txt", true, true);
    ASSERT_TRUE(t.ok()) << t.status();
    tok_ = std::move(*t);
  }
  std::unique_ptr<Tokenizer> tok_;
  TokenizeOptions no_pad_{.max_length = 128, .pad_to_max_length = false};
};

// vocab.txt ids of the fixture: [PAD]=0 [UNK]=1 [CLS]=2 [SEP]=3.
TEST_F(WordPieceTest, EmptyAndWhitespaceOnlyGiveJustSpecials) {
  EXPECT_THAT(tok_->Encode("", std::nullopt, no_pad_).input_ids, ElementsAre(2, 3));
  EXPECT_THAT(tok_->Encode(" \t\n ", std::nullopt, no_pad_).input_ids, ElementsAre(2, 3));
}

TEST_F(WordPieceTest, WordOver100CharsIsUnk) {
  EXPECT_THAT(tok_->Encode(std::string(101, 'a'), std::nullopt, no_pad_).input_ids,
              ElementsAre(2, 1, 3));
}

TEST_F(WordPieceTest, PadsToMaxLength) {
  Encoding e = tok_->Encode("", std::nullopt, {.max_length = 4});
  EXPECT_THAT(e.input_ids, ElementsAre(2, 3, 0, 0));
  EXPECT_THAT(e.attention_mask, ElementsAre(1, 1, 0, 0));
  EXPECT_EQ(tok_->pad_id(), 0);
}

TEST_F(WordPieceTest, PairTruncationKeepsBothSpecialsAndLimit) {
  std::string a = "a a a a a a a a a a", b = "b b b";
  Encoding e = tok_->Encode(a, b, {.max_length = 9, .pad_to_max_length = false});
  ASSERT_EQ(e.input_ids.size(), 9u);
  // 6 tokens of budget: b (3) is shorter, so a gets 3 and b keeps 3.
  EXPECT_THAT(e.token_type_ids, ElementsAre(0, 0, 0, 0, 0, 1, 1, 1, 1));
  EXPECT_EQ(e.input_ids[0], 2);
  EXPECT_EQ(e.input_ids[4], 3);
  EXPECT_EQ(e.input_ids[8], 3);
}

TEST(TokenizerLoadTest, MissingFileIsNotFound) {
  auto t = LoadWordPiece(kDir + "/no_such_vocab.txt", true, true);
  EXPECT_EQ(t.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("no_such_vocab.txt"));
}

std::string WriteTemp(const std::string& name, const std::string& contents) {
  std::string path = absl::StrCat(testing::TempDir(), "/", name);
  std::ofstream(path, std::ios::binary) << contents;
  return path;
}

TEST(TokenizerLoadTest, CorruptFilesNameFileAndLine) {
  auto wp = LoadWordPiece(WriteTemp("bad_vocab.txt", "[PAD]\n[UNK]\n\xff\xfe\n"), true, true);
  EXPECT_EQ(wp.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(wp.status().message()), HasSubstr("bad_vocab.txt line 3"));

  auto missing = LoadWordPiece(WriteTemp("small_vocab.txt", "[PAD]\n[UNK]\n"), true, true);
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("[CLS]"));

  std::string vocab = WriteTemp("v.json", R"({"<s>":0,"<pad>":1,"</s>":2,"a":3,"b":4,"ab":5})");
  auto bad_merges = LoadByteLevelBpe(vocab, WriteTemp("m.txt", "#version: 0.2\na b\nab\n"));
  EXPECT_EQ(bad_merges.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_merges.status().message()), HasSubstr("m.txt line 3"));

  auto bad_json = LoadByteLevelBpe(WriteTemp("bad.json", "{\"a\": 1,\n\"b\" 2}"), vocab);
  EXPECT_EQ(bad_json.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(bad_json.status().message()), HasSubstr("bad.json line 2"));
}

TEST(TokenizerLoadTest, UnsupportedTokenizerJsonIsInvalidArgument) {
  auto t = LoadTokenizerJson(WriteTemp("unigram.json", R"({"model":{"type":"Unigram"}})"));
  EXPECT_EQ(t.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(t.status().message()), HasSubstr("Unigram"));
}

// Fixture ids: <s>=0 <pad>=1 </s>=2.
TEST(ByteLevelBpeTest, SpecialsPairLayoutAndTruncation) {
  auto tok = LoadByteLevelBpe(kDir + "/vocab.json", kDir + "/merges.txt");
  ASSERT_TRUE(tok.ok()) << tok.status();
  TokenizeOptions no_pad{.max_length = 128, .pad_to_max_length = false};
  EXPECT_THAT((*tok)->Encode("", std::nullopt, no_pad).input_ids, ElementsAre(0, 2));
  EXPECT_THAT((*tok)->Encode("", std::string(""), no_pad).input_ids, ElementsAre(0, 2, 2, 2));
  EXPECT_EQ((*tok)->pad_id(), 1);

  Encoding e = (*tok)->Encode("x x x x x x", std::string("y y y y y y"), {.max_length = 8});
  ASSERT_EQ(e.input_ids.size(), 8u);  // 4 specials + 2 + 2
  EXPECT_EQ(e.input_ids[0], 0);
  EXPECT_THAT(std::vector<int64_t>(e.input_ids.begin() + 3, e.input_ids.begin() + 5),
              ElementsAre(2, 2));
  EXPECT_EQ(e.input_ids[7], 2);
  EXPECT_THAT(e.token_type_ids, ::testing::Each(0));

  Encoding untruncated =
      (*tok)->Encode("x x x x x x", std::nullopt, {.max_length = 4, .truncation = false});
  EXPECT_GT(untruncated.input_ids.size(), 4u);  // longer than max_length: no padding either
  EXPECT_THAT(untruncated.attention_mask, ::testing::Each(1));
}

// A byte-level BPE over ASCII letters (which stand for themselves) with the given merges;
// the vocabulary is the specials, the letters and every merge's result.
std::unique_ptr<ByteLevelBpeTokenizer> LetterBpe(
    const std::vector<std::pair<std::string, std::string>>& merges,
    std::unordered_map<std::string, int64_t>* vocab) {
  for (const char* t : {"<s>", "</s>", "<pad>", "a", "b", "c", "e", "h", "l"}) {
    vocab->emplace(t, vocab->size());
  }
  for (const auto& [l, r] : merges) vocab->emplace(l + r, vocab->size());
  auto t = ByteLevelBpeTokenizer::Create(*vocab, merges, ByteLevelBpeOptions());
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

// The definition: merge the adjacent pair of lowest rank, leftmost on ties, until none is
// left; rescanning every pair after each merge.
std::vector<std::string> ReferenceBpe(
    const std::string& word, const std::vector<std::pair<std::string, std::string>>& merges) {
  std::vector<std::string> symbols;
  for (char c : word) symbols.emplace_back(1, c);
  while (true) {
    size_t best = 0, best_rank = merges.size();
    for (size_t k = 0; k + 1 < symbols.size(); ++k) {
      for (size_t r = 0; r < best_rank; ++r) {
        if (merges[r].first == symbols[k] && merges[r].second == symbols[k + 1]) {
          best_rank = r;
          best = k;
          break;
        }
      }
    }
    if (best_rank == merges.size()) return symbols;
    symbols[best] += symbols[best + 1];
    symbols.erase(symbols.begin() + best + 1);
  }
}

TEST(ByteLevelBpeTest, MergesLowestRankFirstLeftmostOnTies) {
  // Overlapping pairs, one pair whose merge enables a lower-ranked one, repeated ranks.
  const std::vector<std::pair<std::string, std::string>> merges = {
      {"a", "a"}, {"b", "a"},   {"aa", "a"},  {"a", "b"}, {"ab", "a"}, {"b", "b"},
      {"c", "a"}, {"aa", "aa"}, {"ba", "ab"}, {"c", "c"}, {"cc", "c"}, {"bb", "aa"}};
  std::unordered_map<std::string, int64_t> vocab;
  auto tok = LetterBpe(merges, &vocab);
  ASSERT_NE(tok, nullptr);
  SplitMix64 rng(7);
  for (int i = 0; i < 3000; ++i) {
    std::string word;
    const size_t n = rng.Next() % 24;
    for (size_t k = 0; k < n; ++k) word.push_back("abc"[rng.Next() % 3]);
    std::vector<int64_t> want;
    for (const std::string& s : ReferenceBpe(word, merges)) want.push_back(vocab.at(s));
    ASSERT_EQ(tok->Tokenize(word), want) << word;
  }
}

// Found by fuzz/tokenizer_load: rescanning every pair after each merge made one 8 KB piece
// a 10 s fuzzer timeout, and a 256 KB one would have taken about half an hour.
TEST(ByteLevelBpeTest, LongPieceMergesInLinearithmicTime) {
  std::unordered_map<std::string, int64_t> vocab;
  auto tok = LetterBpe({{"h", "e"}, {"l", "l"}, {"he", "ll"}}, &vocab);
  ASSERT_NE(tok, nullptr);
  std::string text;
  for (int i = 0; i < 65536; ++i) text += "hell";
  auto start = std::chrono::steady_clock::now();
  std::vector<int64_t> ids = tok->Tokenize(text);
  double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  EXPECT_EQ(ids.size(), 65536u);
  EXPECT_THAT(ids, ::testing::Each(vocab.at("hell")));
  EXPECT_LT(seconds, 20.0);  // well under 1 s in Release; the sanitizers are slower
}

TEST(ByteLevelBpeTest, Gpt2SplitMatchesRegex) {
  auto pieces = [](const std::string& s) {
    std::vector<char32_t> cps = unicode::DecodeUtf8(s);
    std::vector<std::string> out;
    for (auto [b, e] : SplitGpt2(cps)) {
      std::string p;
      for (size_t k = b; k < e; ++k) unicode::AppendUtf8(cps[k], &p);
      out.push_back(p);
    }
    return out;
  };
  EXPECT_THAT(pieces("I'm here  now!! 42x"),
              ElementsAre("I", "'m", " here", " ", " now", "!!", " 42", "x"));
  EXPECT_THAT(pieces("a \n\nb  "), ElementsAre("a", " \n", "\n", "b", "  "));
  EXPECT_THAT(pieces(""), ElementsAre());
}

}  // namespace
}  // namespace coldfuse::train
