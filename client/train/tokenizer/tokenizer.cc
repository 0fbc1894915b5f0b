// The loaders: vocab.txt, vocab.json + merges.txt, and tokenizer.json.
#include "client/train/tokenizer/tokenizer.h"

#include <algorithm>
#include <unordered_map>
#include <utility>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/train/tokenizer/byte_level_bpe.h"
#include "client/train/tokenizer/post_process.h"
#include "client/train/tokenizer/wordpiece.h"
#include "common/json.h"
#include "common/status_macros.h"

namespace coldfuse::train {
namespace {

using Vocab = std::unordered_map<std::string, int64_t>;
using Merges = std::vector<std::pair<std::string, std::string>>;

absl::Status Prefixed(const std::string& file, const absl::Status& s) {
  return absl::Status(s.code(), absl::StrCat(file, ": ", s.message()));
}

absl::StatusOr<JsonValue> ReadJson(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  absl::StatusOr<JsonValue> json = ParseJson(text);
  if (json.ok()) return json;
  // ParseJson names a byte offset ("invalid JSON at byte N: ..."); add its line.
  std::string where = path;
  absl::string_view msg = json.status().message();
  constexpr absl::string_view kAt = "invalid JSON at byte ";
  size_t byte = 0;
  if (absl::StartsWith(msg, kAt) &&
      absl::SimpleAtoi(msg.substr(kAt.size(), msg.find(':') - kAt.size()), &byte) &&
      byte <= text.size()) {
    absl::StrAppend(&where, " line ", 1 + std::count(text.begin(), text.begin() + byte, '\n'));
  }
  return Prefixed(where, json.status());
}

absl::StatusOr<Vocab> VocabFromJson(const JsonValue& v, const std::string& where) {
  if (!v.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat(where, ": vocabulary must be an object, not ", v.TypeName()));
  }
  Vocab vocab;
  for (const auto& [token, id] : v.object) {
    absl::StatusOr<int64_t> n = id.AsInt64();
    if (!n.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(where, ": id of token \"", token, "\": ", n.status().message()));
    }
    vocab[token] = *n;
  }
  return vocab;
}

// One "left right" merge; `what` names the file and line for the error.
absl::Status ParseMerge(absl::string_view line, const std::string& what, Merges* merges) {
  std::vector<absl::string_view> parts = absl::StrSplit(line, ' ');
  if (parts.size() != 2 || parts[0].empty() || parts[1].empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, ": expected two tokens separated by one space, got \"", line, "\""));
  }
  merges->emplace_back(std::string(parts[0]), std::string(parts[1]));
  return absl::OkStatus();
}

absl::StatusOr<Merges> ReadMergesTxt(const std::string& path) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(path));
  RETURN_IF_ERROR(Prefixed(path, CheckUtf8(text)));
  Merges merges;
  int line_no = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty() || (line_no == 1 && absl::StartsWith(line, "#version"))) continue;
    RETURN_IF_ERROR(ParseMerge(line, absl::StrCat(path, " line ", line_no), &merges));
  }
  return merges;
}

std::string StringOr(const JsonValue* v, const std::string& fallback) {
  return v != nullptr && v->is_string() ? v->text : fallback;
}

bool BoolOr(const JsonValue* v, bool fallback) {
  return v != nullptr && v->is_bool() ? v->boolean : fallback;
}

// A post-processor's special token: ["[SEP]", 102] in BertProcessing/RobertaProcessing.
std::string SpecialFrom(const JsonValue* post, const char* key, const std::string& fallback) {
  if (post == nullptr) return fallback;
  const JsonValue* v = post->Find(key);
  if (v == nullptr || !v->is_array() || v->array.empty() || !v->array[0].is_string()) {
    return fallback;
  }
  return v->array[0].text;
}

absl::StatusOr<std::unique_ptr<Tokenizer>> WordPieceFromJson(const JsonValue& root,
                                                             const std::string& path) {
  const JsonValue& model = *root.Find("model");
  const JsonValue* vocab_json = model.Find("vocab");
  if (vocab_json == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": model has no \"vocab\""));
  }
  ASSIGN_OR_RETURN(Vocab vocab, VocabFromJson(*vocab_json, path));
  WordPieceOptions o;
  o.unk_token = StringOr(model.Find("unk_token"), o.unk_token);
  o.continuing_subword_prefix =
      StringOr(model.Find("continuing_subword_prefix"), o.continuing_subword_prefix);
  if (const JsonValue* m = model.Find("max_input_chars_per_word"); m != nullptr) {
    absl::StatusOr<int64_t> n = m->AsInt64();
    if (!n.ok()) return Prefixed(path, n.status());
    o.max_input_chars_per_word = static_cast<size_t>(*n);
  }
  const JsonValue* norm = root.Find("normalizer");
  if (norm != nullptr && norm->is_object() &&
      StringOr(norm->Find("type"), "") == "BertNormalizer") {
    o.clean_text = BoolOr(norm->Find("clean_text"), true);
    o.handle_chinese_chars = BoolOr(norm->Find("handle_chinese_chars"), true);
    o.lowercase = BoolOr(norm->Find("lowercase"), true);
    o.strip_accents = BoolOr(norm->Find("strip_accents"), o.lowercase);  // null: lowercase
  } else if (norm == nullptr || norm->is_null()) {
    o.clean_text = o.handle_chinese_chars = o.lowercase = o.strip_accents = false;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": only a BertNormalizer (or none) is supported for WordPiece"));
  }
  const JsonValue* post = root.Find("post_processor");
  o.cls_token = SpecialFrom(post, "cls", o.cls_token);
  o.sep_token = SpecialFrom(post, "sep", o.sep_token);
  if (const JsonValue* pad = root.Find("padding"); pad != nullptr && pad->is_object()) {
    o.pad_token = StringOr(pad->Find("pad_token"), o.pad_token);
  }
  absl::StatusOr<std::unique_ptr<WordPieceTokenizer>> t =
      WordPieceTokenizer::Create(std::move(vocab), std::move(o));
  if (!t.ok()) return Prefixed(path, t.status());
  return std::unique_ptr<Tokenizer>(std::move(*t));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> BpeFromJson(const JsonValue& root,
                                                       const std::string& path) {
  const JsonValue& model = *root.Find("model");
  const JsonValue* vocab_json = model.Find("vocab");
  const JsonValue* merges_json = model.Find("merges");
  if (vocab_json == nullptr || merges_json == nullptr || !merges_json->is_array()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": BPE model needs \"vocab\" and a \"merges\" array"));
  }
  ASSIGN_OR_RETURN(Vocab vocab, VocabFromJson(*vocab_json, path));
  Merges merges;
  for (size_t i = 0; i < merges_json->array.size(); ++i) {
    const JsonValue& m = merges_json->array[i];
    std::string what = absl::StrCat(path, " merge ", i);
    if (m.is_string()) {  // "a b" (older files)
      RETURN_IF_ERROR(ParseMerge(m.text, what, &merges));
    } else if (m.is_array() && m.array.size() == 2 && m.array[0].is_string() &&
               m.array[1].is_string()) {  // ["a", "b"]
      merges.emplace_back(m.array[0].text, m.array[1].text);
    } else {
      return absl::InvalidArgumentError(absl::StrCat(what, ": not a pair of strings"));
    }
  }
  const JsonValue* pre = root.Find("pre_tokenizer");
  if (pre == nullptr || StringOr(pre->Find("type"), "") != "ByteLevel") {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": only BPE with a ByteLevel pre_tokenizer is supported"));
  }
  ByteLevelBpeOptions o;
  o.add_prefix_space = BoolOr(pre->Find("add_prefix_space"), false);
  const JsonValue* post = root.Find("post_processor");
  o.bos_token = SpecialFrom(post, "cls", o.bos_token);
  o.eos_token = SpecialFrom(post, "sep", o.eos_token);
  o.unk_token = StringOr(model.Find("unk_token"), o.unk_token);
  if (const JsonValue* pad = root.Find("padding"); pad != nullptr && pad->is_object()) {
    o.pad_token = StringOr(pad->Find("pad_token"), o.pad_token);
  }
  absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> t =
      ByteLevelBpeTokenizer::Create(std::move(vocab), merges, std::move(o));
  if (!t.ok()) return Prefixed(path, t.status());
  return std::unique_ptr<Tokenizer>(std::move(*t));
}

}  // namespace

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadWordPiece(const std::string& vocab_txt,
                                                         bool lowercase, bool strip_accents) {
  ASSIGN_OR_RETURN(std::string text, ReadTextFile(vocab_txt));
  Vocab vocab;
  int64_t id = 0;
  absl::string_view body = text;
  if (absl::EndsWith(body, "\n")) body.remove_suffix(1);  // no token after the last newline
  for (absl::string_view line : absl::StrSplit(body, '\n')) {
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    absl::Status utf8 = CheckUtf8(line);
    if (!utf8.ok()) {
      return absl::InvalidArgumentError(
          absl::StrCat(vocab_txt, " line ", id + 1, ": ", utf8.message()));
    }
    vocab[std::string(line)] = id++;
  }
  WordPieceOptions o;
  o.lowercase = lowercase;
  o.strip_accents = strip_accents;
  absl::StatusOr<std::unique_ptr<WordPieceTokenizer>> t =
      WordPieceTokenizer::Create(std::move(vocab), std::move(o));
  if (!t.ok()) return Prefixed(vocab_txt, t.status());
  return std::unique_ptr<Tokenizer>(std::move(*t));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadByteLevelBpe(const std::string& vocab_json,
                                                            const std::string& merges_txt) {
  ASSIGN_OR_RETURN(JsonValue json, ReadJson(vocab_json));
  ASSIGN_OR_RETURN(Vocab vocab, VocabFromJson(json, vocab_json));
  ASSIGN_OR_RETURN(Merges merges, ReadMergesTxt(merges_txt));
  absl::StatusOr<std::unique_ptr<ByteLevelBpeTokenizer>> t =
      ByteLevelBpeTokenizer::Create(std::move(vocab), merges, ByteLevelBpeOptions());
  if (!t.ok()) return Prefixed(absl::StrCat(vocab_json, " + ", merges_txt), t.status());
  return std::unique_ptr<Tokenizer>(std::move(*t));
}

absl::StatusOr<std::unique_ptr<Tokenizer>> LoadTokenizerJson(const std::string& tokenizer_json) {
  ASSIGN_OR_RETURN(JsonValue root, ReadJson(tokenizer_json));
  const JsonValue* model = root.is_object() ? root.Find("model") : nullptr;
  std::string type = model != nullptr ? StringOr(model->Find("type"), "") : "";
  if (type == "WordPiece") return WordPieceFromJson(root, tokenizer_json);
  if (type == "BPE") return BpeFromJson(root, tokenizer_json);
  return absl::InvalidArgumentError(absl::StrCat(
      tokenizer_json, ": model.type must be \"WordPiece\" or \"BPE\", got \"", type, "\""));
}

}  // namespace coldfuse::train
