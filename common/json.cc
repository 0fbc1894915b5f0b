#include "common/json.h"

#include <algorithm>
#include <charconv>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "common/utf8.h"

namespace coldfuse {
namespace {

// Length of the valid UTF-8 sequence starting at s[i], or 0 if it is not valid.
size_t Utf8SequenceLength(absl::string_view s, size_t i) {
  auto byte = [&](size_t k) { return static_cast<unsigned char>(s[k]); };
  unsigned char c = byte(i);
  if (c < 0x80) return 1;
  size_t len;
  unsigned char lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (c >= 0xC2 && c <= 0xDF) {
    len = 2;
  } else if (c >= 0xE0 && c <= 0xEF) {
    len = 3;
    if (c == 0xE0) lo = 0xA0;  // overlong
    if (c == 0xED) hi = 0x9F;  // UTF-16 surrogates
  } else if (c >= 0xF0 && c <= 0xF4) {
    len = 4;
    if (c == 0xF0) lo = 0x90;  // overlong
    if (c == 0xF4) hi = 0x8F;  // past U+10FFFF
  } else {
    return 0;  // continuation byte, overlong C0/C1, or F5..FF
  }
  if (s.size() - i < len) return 0;
  if (byte(i + 1) < lo || byte(i + 1) > hi) return 0;
  for (size_t k = 2; k < len; ++k) {
    if ((byte(i + k) & 0xC0) != 0x80) return 0;
  }
  return len;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

class Parser {
 public:
  Parser(absl::string_view text, size_t max_depth) : text_(text), max_depth_(max_depth) {}

  absl::StatusOr<JsonValue> ParseDocument() {
    JsonValue v;
    SkipWhitespace();
    absl::Status st = ParseValue(0, &v);
    if (!st.ok()) return st;
    SkipWhitespace();
    if (pos_ != text_.size()) return Error("unexpected text after the JSON value");
    return v;
  }

 private:
  absl::Status Error(absl::string_view what) const { return ErrorAt(pos_, what); }
  absl::Status ErrorAt(size_t at, absl::string_view what) const {
    return absl::InvalidArgumentError(absl::StrCat("invalid JSON at byte ", at, ": ", what));
  }

  bool AtEnd() const { return pos_ >= text_.size(); }
  char Peek() const { return text_[pos_]; }

  void SkipWhitespace() {
    while (!AtEnd() && (Peek() == ' ' || Peek() == '\t' || Peek() == '\n' || Peek() == '\r')) {
      ++pos_;
    }
  }

  absl::Status ParseValue(size_t depth, JsonValue* out) {
    if (AtEnd()) return Error("unexpected end of input, expected a value");
    switch (Peek()) {
      case '{':
        return ParseObject(depth + 1, out);
      case '[':
        return ParseArray(depth + 1, out);
      case '"':
        out->type = JsonValue::Type::kString;
        return ParseString(&out->text);
      case 't':
        out->type = JsonValue::Type::kBool;
        out->boolean = true;
        return Literal("true");
      case 'f':
        out->type = JsonValue::Type::kBool;
        return Literal("false");
      case 'n':
        out->type = JsonValue::Type::kNull;
        return Literal("null");
      default:
        if (Peek() == '-' || IsDigit(Peek())) return ParseNumber(out);
        return Error(absl::StrCat("unexpected character ", Describe(Peek()), ", expected a value"));
    }
  }

  static std::string Describe(char c) {
    unsigned char u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7F) return absl::StrCat("'", std::string(1, c), "'");
    return absl::StrCat("byte 0x", absl::Hex(u, absl::kZeroPad2));
  }

  absl::Status Literal(absl::string_view word) {
    if (text_.substr(pos_, word.size()) != word) {
      return Error(absl::StrCat("invalid literal, expected '", word, "'"));
    }
    pos_ += word.size();
    return absl::OkStatus();
  }

  absl::Status ParseNumber(JsonValue* out) {
    size_t start = pos_;
    if (Peek() == '-') ++pos_;
    if (AtEnd() || !IsDigit(Peek())) return Error("expected a digit in number");
    if (Peek() == '0') {
      ++pos_;
      if (!AtEnd() && IsDigit(Peek())) return Error("number has a leading zero");
    } else {
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    if (!AtEnd() && Peek() == '.') {
      ++pos_;
      if (AtEnd() || !IsDigit(Peek())) return Error("expected a digit after '.'");
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    if (!AtEnd() && (Peek() == 'e' || Peek() == 'E')) {
      ++pos_;
      if (!AtEnd() && (Peek() == '+' || Peek() == '-')) ++pos_;
      if (AtEnd() || !IsDigit(Peek())) return Error("expected a digit in exponent");
      while (!AtEnd() && IsDigit(Peek())) ++pos_;
    }
    out->type = JsonValue::Type::kNumber;
    out->text.assign(text_.data() + start, pos_ - start);
    return absl::OkStatus();
  }

  absl::StatusOr<uint32_t> Hex4() {
    if (text_.size() - pos_ < 4) return Error("truncated \\u escape");
    uint32_t v = 0;
    for (int k = 0; k < 4; ++k) {
      char c = text_[pos_ + k];
      uint32_t d;
      if (IsDigit(c)) {
        d = c - '0';
      } else if (c >= 'a' && c <= 'f') {
        d = c - 'a' + 10;
      } else if (c >= 'A' && c <= 'F') {
        d = c - 'A' + 10;
      } else {
        return ErrorAt(pos_ + k, "\\u escape needs four hex digits");
      }
      v = v * 16 + d;
    }
    pos_ += 4;
    return v;
  }

  // REQUIRES: Peek() == '"'. The text is already known to be valid UTF-8.
  absl::Status ParseString(std::string* out) {
    size_t open = pos_++;
    out->clear();
    while (true) {
      size_t run = pos_;
      while (!AtEnd() && Peek() != '"' && Peek() != '\\' &&
             static_cast<unsigned char>(Peek()) >= 0x20) {
        ++pos_;
      }
      out->append(text_.data() + run, pos_ - run);
      if (AtEnd()) return ErrorAt(open, "unterminated string");
      char c = Peek();
      if (c == '"') {
        ++pos_;
        return absl::OkStatus();
      }
      if (c != '\\') return Error("raw control character in string; escape it");
      size_t esc = pos_++;
      if (AtEnd()) return ErrorAt(open, "unterminated string");
      char e = text_[pos_++];
      switch (e) {
        case '"':
          out->push_back('"');
          break;
        case '\\':
          out->push_back('\\');
          break;
        case '/':
          out->push_back('/');
          break;
        case 'b':
          out->push_back('\b');
          break;
        case 'f':
          out->push_back('\f');
          break;
        case 'n':
          out->push_back('\n');
          break;
        case 'r':
          out->push_back('\r');
          break;
        case 't':
          out->push_back('\t');
          break;
        case 'u': {
          absl::StatusOr<uint32_t> cp = Hex4();
          if (!cp.ok()) return cp.status();
          if (*cp >= 0xDC00 && *cp <= 0xDFFF) {
            return ErrorAt(esc, "unpaired low surrogate in \\u escape");
          }
          if (*cp >= 0xD800 && *cp <= 0xDBFF) {
            if (text_.substr(pos_, 2) != "\\u") {
              return ErrorAt(esc, "high surrogate in \\u escape is not followed by a low one");
            }
            pos_ += 2;
            absl::StatusOr<uint32_t> low = Hex4();
            if (!low.ok()) return low.status();
            if (*low < 0xDC00 || *low > 0xDFFF) {
              return ErrorAt(esc, "high surrogate in \\u escape is not followed by a low one");
            }
            *cp = 0x10000 + ((*cp - 0xD800) << 10) + (*low - 0xDC00);
          }
          AppendUtf8(*cp, out);
          break;
        }
        default:
          return ErrorAt(esc, absl::StrCat("invalid escape \\", Describe(e)));
      }
    }
  }

  absl::Status ParseArray(size_t depth, JsonValue* out) {
    if (depth > max_depth_) return Error(absl::StrCat("nesting deeper than ", max_depth_));
    out->type = JsonValue::Type::kArray;
    ++pos_;
    SkipWhitespace();
    if (!AtEnd() && Peek() == ']') {
      ++pos_;
      return absl::OkStatus();
    }
    while (true) {
      out->array.emplace_back();
      absl::Status st = ParseValue(depth, &out->array.back());
      if (!st.ok()) return st;
      SkipWhitespace();
      if (AtEnd()) return Error("unexpected end of input in array, expected ',' or ']'");
      if (Peek() == ']') {
        ++pos_;
        return absl::OkStatus();
      }
      if (Peek() != ',') return Error("expected ',' or ']' in array");
      ++pos_;
      SkipWhitespace();
    }
  }

  absl::Status ParseObject(size_t depth, JsonValue* out) {
    if (depth > max_depth_) return Error(absl::StrCat("nesting deeper than ", max_depth_));
    out->type = JsonValue::Type::kObject;
    ++pos_;
    SkipWhitespace();
    if (!AtEnd() && Peek() == '}') {
      ++pos_;
      return absl::OkStatus();
    }
    std::vector<size_t> key_offsets;
    while (true) {
      if (AtEnd() || Peek() != '"') return Error("expected a string key in object");
      key_offsets.push_back(pos_);
      out->object.emplace_back();
      auto& member = out->object.back();
      absl::Status st = ParseString(&member.first);
      if (!st.ok()) return st;
      SkipWhitespace();
      if (AtEnd() || Peek() != ':') return Error("expected ':' after object key");
      ++pos_;
      SkipWhitespace();
      st = ParseValue(depth, &member.second);
      if (!st.ok()) return st;
      SkipWhitespace();
      if (AtEnd()) return Error("unexpected end of input in object, expected ',' or '}'");
      if (Peek() == '}') {
        ++pos_;
        break;
      }
      if (Peek() != ',') return Error("expected ',' or '}' in object");
      ++pos_;
      SkipWhitespace();
    }
    // Sorting indices keeps this O(n log n) for headers with many tensors.
    const auto& members = out->object;
    std::vector<size_t> order(members.size());
    for (size_t i = 0; i < order.size(); ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
      int c = members[a].first.compare(members[b].first);
      return c != 0 ? c < 0 : a < b;
    });
    for (size_t i = 1; i < order.size(); ++i) {
      if (members[order[i]].first == members[order[i - 1]].first) {
        return ErrorAt(key_offsets[order[i]],
                       absl::StrCat("duplicate object key ", JsonQuote(members[order[i]].first)));
      }
    }
    return absl::OkStatus();
  }

  absl::string_view text_;
  size_t max_depth_;
  size_t pos_ = 0;
};

absl::Status NumberError(const JsonValue& v, absl::string_view want) {
  if (!v.is_number()) {
    return absl::InvalidArgumentError(absl::StrCat("expected ", want, ", got ", v.TypeName()));
  }
  return absl::InvalidArgumentError(absl::StrCat("expected ", want, ", got ", v.text));
}

bool IsIntegerLiteral(const std::string& text) {
  return text.find_first_of(".eE") == std::string::npos;
}

}  // namespace

JsonValue::JsonValue() = default;

absl::string_view JsonValue::TypeName() const {
  switch (type) {
    case Type::kNull:
      return "null";
    case Type::kBool:
      return "boolean";
    case Type::kNumber:
      return "number";
    case Type::kString:
      return "string";
    case Type::kArray:
      return "array";
    case Type::kObject:
      return "object";
  }
  return "unknown";
}

const JsonValue* JsonValue::Find(absl::string_view key) const {
  if (!is_object()) return nullptr;
  for (const auto& [k, v] : object) {
    if (k == key) return &v;
  }
  return nullptr;
}

absl::StatusOr<int64_t> JsonValue::AsInt64() const {
  if (!is_number() || !IsIntegerLiteral(text)) return NumberError(*this, "an integer");
  int64_t v;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return NumberError(*this, "an integer within 64-bit signed range");
  }
  return v;
}

absl::StatusOr<uint64_t> JsonValue::AsUint64() const {
  if (!is_number() || !IsIntegerLiteral(text) || text[0] == '-') {
    return NumberError(*this, "a non-negative integer");
  }
  uint64_t v;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return NumberError(*this, "a non-negative integer below 2^64");
  }
  return v;
}

absl::StatusOr<double> JsonValue::AsDouble() const {
  if (!is_number()) return NumberError(*this, "a number");
  double v;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || end != text.data() + text.size()) {
    return NumberError(*this, "a number within double range");
  }
  return v;
}

absl::Status CheckUtf8(absl::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    if (static_cast<unsigned char>(text[i]) < 0x80) {
      ++i;
      continue;
    }
    size_t len = Utf8SequenceLength(text, i);
    if (len == 0) {
      return absl::InvalidArgumentError(absl::StrCat("invalid UTF-8 at byte ", i));
    }
    i += len;
  }
  return absl::OkStatus();
}

absl::StatusOr<JsonValue> ParseJson(absl::string_view text, size_t max_depth) {
  absl::Status utf8 = CheckUtf8(text);
  if (!utf8.ok()) return absl::InvalidArgumentError(absl::StrCat("invalid JSON: ", utf8.message()));
  return Parser(text, max_depth).ParseDocument();
}

std::string JsonQuote(absl::string_view s) {
  std::string out;
  out.reserve(s.size() + 2);
  out.push_back('"');
  for (char c : s) {
    switch (c) {
      case '"':
        out.append("\\\"");
        break;
      case '\\':
        out.append("\\\\");
        break;
      case '\b':
        out.append("\\b");
        break;
      case '\f':
        out.append("\\f");
        break;
      case '\n':
        out.append("\\n");
        break;
      case '\r':
        out.append("\\r");
        break;
      case '\t':
        out.append("\\t");
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20) {
          absl::StrAppend(&out, "\\u00", absl::Hex(static_cast<unsigned char>(c), absl::kZeroPad2));
        } else {
          out.push_back(c);
        }
    }
  }
  out.push_back('"');
  return out;
}

}  // namespace coldfuse
