#include "client/train/testing/tiny_text.h"

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/model_spec.h"

namespace coldfuse::train::testing {
namespace {

const std::vector<std::string>& Upbeat() {
  static const auto* w = new std::vector<std::string>{
      "good",  "great", "happy", "bright", "warm",  "kind", "fine", "calm", "fresh", "sweet",
      "brave", "clean", "fair",  "glad",   "lucky", "neat", "rich", "safe", "smart", "wise"};
  return *w;
}
const std::vector<std::string>& Downbeat() {
  static const auto* w = new std::vector<std::string>{
      "bad",  "awful", "sad",    "dark", "cold",    "cruel", "poor",  "tense", "stale", "sour",
      "weak", "dirty", "unfair", "grim", "unlucky", "messy", "broke", "risky", "dull",  "rash"};
  return *w;
}
const std::vector<std::string>& Neutral() {
  static const auto* w = new std::vector<std::string>{
      "the",    "a",     "day",   "was",     "and",  "it",    "film",  "food",    "room",  "trip",
      "very",   "quite", "this",  "that",    "is",   "of",    "in",    "on",      "for",   "with",
      "my",     "our",   "old",   "new",     "city", "book",  "song",  "team",    "game",  "plan",
      "car",    "house", "show",  "meal",    "view", "staff", "price", "service", "place", "story",
      "ending", "music", "hotel", "weather", "road", "town",  "park",  "shop",    "class", "work",
      "week",   "year",  "night", "morning", "."};
  return *w;
}

void Die(const std::string& what) {
  std::cerr << "tiny_text: " << what << "\n";
  std::abort();
}

}  // namespace

std::string WriteTinyTextModel(const std::string& fixture_dir, const std::string& dir,
                               double dropout, bool with_weights) {
  std::filesystem::create_directories(dir);
  std::ifstream in(fixture_dir + "/config.json");
  if (!in) Die("cannot read " + fixture_dir + "/config.json");
  std::stringstream text;
  text << in.rdbuf();
  std::string config = text.str();
  for (const char* key :
       {"\"attention_probs_dropout_prob\": 0.1", "\"hidden_dropout_prob\": 0.1"}) {
    size_t at = config.find(key);
    if (at == std::string::npos) Die(absl::StrCat("no ", key, " in the fixture config"));
    std::string replacement(key);
    replacement.replace(replacement.size() - 3, 3, absl::StrFormat("%g", dropout));
    config.replace(at, std::string(key).size(), replacement);
  }
  std::ofstream(dir + "/config.json") << config;
  std::vector<std::string> vocab = {"[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"};
  for (const auto* words : {&Upbeat(), &Downbeat(), &Neutral()}) {
    vocab.insert(vocab.end(), words->begin(), words->end());
  }
  if (vocab.size() != 100)
    Die(absl::StrCat("the vocabulary has ", vocab.size(), " tokens, not 100"));
  std::ofstream(dir + "/vocab.txt") << absl::StrJoin(vocab, "\n") << "\n";
  const std::string weights = fixture_dir + "/model.safetensors";
  if (!with_weights) return weights;
  std::filesystem::copy_file(weights, dir + "/model.safetensors",
                             std::filesystem::copy_options::overwrite_existing);
  return dir + "/model.safetensors";
}

void WriteTinyTextCsv(const std::string& path, int rows, uint64_t seed, bool regression) {
  SplitMix64 rng(seed);
  auto pick = [&](const std::vector<std::string>& words) -> const std::string& {
    return words[rng.Next() % words.size()];
  };
  std::ofstream out(path);
  if (!out) Die("cannot write " + path);
  out << "text,label\n";
  for (int r = 0; r < rows; ++r) {
    // Classification: one to three words of one mood. Regression: a mix of both moods,
    // the target being the upbeat share.
    int up = 1 + static_cast<int>(rng.Next() % 3);
    int down = regression ? static_cast<int>(rng.Next() % 4) : 0;
    if (!regression && rng.Next() % 2 == 0) std::swap(up, down);
    std::vector<std::string> words;
    for (int i = 0; i < up; ++i) words.push_back(pick(Upbeat()));
    for (int i = 0; i < down; ++i) words.push_back(pick(Downbeat()));
    const int neutral = 3 + static_cast<int>(rng.Next() % 5);
    for (int i = 0; i < neutral; ++i) words.push_back(pick(Neutral()));
    for (size_t i = words.size() - 1; i > 0; --i) std::swap(words[i], words[rng.Next() % (i + 1)]);
    const int sentiment = up + down;
    std::string label;
    if (regression) {
      label = absl::StrFormat("%.4f", sentiment == 0 ? 0.5 : static_cast<double>(up) / sentiment);
    } else {
      label = up > down ? "pos" : "neg";
    }
    out << '"' << absl::StrJoin(words, " ") << "\"," << label << "\n";
  }
  if (!out) Die("cannot write " + path);
}

}  // namespace coldfuse::train::testing
