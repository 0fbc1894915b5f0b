// Fuzzes loading tokenizers from their files (client/train/tokenizer/tokenizer.h): a
// WordPiece vocab.txt, a byte-level BPE vocab.json + merges.txt, or a Hugging Face
// tokenizer.json, then encoding with what loaded. Input: one byte choosing the format (and
// lowercase / strip_accents for vocab.txt), one byte of TokenizeOptions
// (tokenizer_checks.h), then the files and the text to encode, separated by 0x1F bytes:
//   vocab.txt 0x1F text | vocab.json 0x1F merges.txt 0x1F text | tokenizer.json 0x1F text
//
// Asserts: no crash or UB; a rejection is INVALID_ARGUMENT naming the file; a loaded
// tokenizer encodes the text (and a fixed multilingual one) meeting CheckEncode's
// invariants, with every id one the vocabulary file gives (a vocab.txt line number, a
// vocab.json or model.vocab value).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <unordered_set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/train/tokenizer/tokenizer.h"
#include "common/json.h"
#include "fuzz/fuzz_util.h"
#include "fuzz/tokenizer_checks.h"

namespace coldfuse::fuzz {
namespace {

constexpr char kSep[] = "\x1f";

// The ids of a vocab.txt: one per line, the line index.
std::unordered_set<int64_t> LineIds(absl::string_view text) {
  if (absl::EndsWith(text, "\n")) text.remove_suffix(1);
  std::unordered_set<int64_t> ids;
  int64_t n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    (void)line;
    ids.insert(n++);
  }
  return ids;
}

// The values of a JSON vocabulary object; empty if it is not one.
std::unordered_set<int64_t> JsonIds(const JsonValue* vocab) {
  std::unordered_set<int64_t> ids;
  if (vocab == nullptr) return ids;
  for (const auto& [token, id] : vocab->object) {
    absl::StatusOr<int64_t> n = id.AsInt64();
    if (n.ok()) ids.insert(*n);
  }
  return ids;
}

void CheckRejection(const absl::Status& s, const std::string& file) {
  FUZZ_CHECK(absl::IsInvalidArgument(s), s.ToString());
  FUZZ_CHECK(absl::StartsWith(s.message(), file), s.ToString());
}

}  // namespace
}  // namespace coldfuse::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace coldfuse;
  using namespace coldfuse::fuzz;
  FuzzInput in(data, size);
  const uint8_t mode = in.Byte();
  bool pair = false;
  const train::TokenizeOptions options = ReadTokenizeOptions(in.Byte(), &pair);
  absl::string_view rest = in.Rest();

  absl::string_view first, second, text;
  absl::StatusOr<std::unique_ptr<train::Tokenizer>> tok;
  std::unordered_set<int64_t> ids;
  switch (mode % 3) {
    case 0: {
      SplitOnce(rest, kSep, &first, &text);
      const std::string vocab = WriteScratchFile("vocab.txt", first);
      tok = train::LoadWordPiece(vocab, (mode & 4) != 0, (mode & 8) != 0);
      if (!tok.ok()) {
        CheckRejection(tok.status(), vocab);
        return 0;
      }
      ids = LineIds(first);
      break;
    }
    case 1: {
      absl::string_view after;
      SplitOnce(rest, kSep, &first, &after);
      SplitOnce(after, kSep, &second, &text);
      const std::string vocab = WriteScratchFile("vocab.json", first);
      const std::string merges = WriteScratchFile("merges.txt", second);
      tok = train::LoadByteLevelBpe(vocab, merges);
      if (!tok.ok()) {
        FUZZ_CHECK(absl::IsInvalidArgument(tok.status()), tok.status().ToString());
        FUZZ_CHECK(absl::StartsWith(tok.status().message(), vocab) ||
                       absl::StartsWith(tok.status().message(), merges),
                   tok.status().ToString());
        return 0;
      }
      absl::StatusOr<JsonValue> json = ParseJson(first);
      FUZZ_CHECK(json.ok(), "loaded an invalid vocab.json");
      ids = JsonIds(&*json);
      break;
    }
    default: {
      SplitOnce(rest, kSep, &first, &text);
      const std::string path = WriteScratchFile("tokenizer.json", first);
      tok = train::LoadTokenizerJson(path);
      if (!tok.ok()) {
        CheckRejection(tok.status(), path);
        return 0;
      }
      absl::StatusOr<JsonValue> json = ParseJson(first);
      FUZZ_CHECK(json.ok(), "loaded an invalid tokenizer.json");
      const JsonValue* model = json->Find("model");
      ids = JsonIds(model != nullptr ? model->Find("vocab") : nullptr);
      break;
    }
  }
  FUZZ_CHECK(!ids.empty(), "loaded a tokenizer with an empty vocabulary");

  absl::string_view a = text;
  std::optional<absl::string_view> b;
  if (pair) {
    absl::string_view tail;
    SplitOnce(text, kSep, &a, &tail);
    b = tail;
  }
  CheckEncode(**tok, a, b, options, &ids);
  CheckEncode(**tok,
              "Hello, WORLD! Caf\xc3\xa9 na\xc3\xafve \xe4\xb8\xad\xe6\x96\x87 \xf0\x9f\x98\x80 "
              "don't \xff\xfe",
              std::nullopt, options, &ids);
  return 0;
}
