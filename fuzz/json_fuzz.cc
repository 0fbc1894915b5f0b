// Fuzzes the strict JSON reader (common/json.h) with the input as the JSON text.
//
// Asserts: no crash or UB; a rejection is INVALID_ARGUMENT "invalid JSON ..."; an accepted
// text is valid UTF-8, every decoded string is valid UTF-8, no object has a duplicate key,
// every number literal follows RFC 8259's grammar and the integer accessors agree with it;
// the nesting limit is exact (a value nested d deep parses with max_depth d, not d - 1);
// parse -> serialize (with JsonQuote) -> parse gives the same value, and serializing again
// gives the same text; JsonQuote(input) parses back to the input iff it is valid UTF-8.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <set>
#include <string>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "fuzz/fuzz_util.h"

namespace coldfuse::fuzz {
namespace {

void Serialize(const JsonValue& v, std::string* out) {
  switch (v.type) {
    case JsonValue::Type::kNull:
      out->append("null");
      return;
    case JsonValue::Type::kBool:
      out->append(v.boolean ? "true" : "false");
      return;
    case JsonValue::Type::kNumber:
      out->append(v.text);
      return;
    case JsonValue::Type::kString:
      out->append(JsonQuote(v.text));
      return;
    case JsonValue::Type::kArray:
      out->push_back('[');
      for (size_t i = 0; i < v.array.size(); ++i) {
        if (i > 0) out->push_back(',');
        Serialize(v.array[i], out);
      }
      out->push_back(']');
      return;
    case JsonValue::Type::kObject:
      out->push_back('{');
      for (size_t i = 0; i < v.object.size(); ++i) {
        if (i > 0) out->push_back(',');
        out->append(JsonQuote(v.object[i].first));
        out->push_back(':');
        Serialize(v.object[i].second, out);
      }
      out->push_back('}');
      return;
  }
}

bool Equal(const JsonValue& a, const JsonValue& b) {
  if (a.type != b.type || a.boolean != b.boolean || a.text != b.text ||
      a.array.size() != b.array.size() || a.object.size() != b.object.size()) {
    return false;
  }
  for (size_t i = 0; i < a.array.size(); ++i) {
    if (!Equal(a.array[i], b.array[i])) return false;
  }
  for (size_t i = 0; i < a.object.size(); ++i) {
    if (a.object[i].first != b.object[i].first || !Equal(a.object[i].second, b.object[i].second)) {
      return false;
    }
  }
  return true;
}

bool IsDigit(char c) { return c >= '0' && c <= '9'; }

// RFC 8259: -?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?
bool IsJsonNumber(const std::string& s) {
  size_t i = 0, n = s.size();
  if (i < n && s[i] == '-') ++i;
  if (i >= n || !IsDigit(s[i])) return false;
  if (s[i] == '0') {
    ++i;
  } else {
    while (i < n && IsDigit(s[i])) ++i;
  }
  if (i < n && s[i] == '.') {
    ++i;
    if (i >= n || !IsDigit(s[i])) return false;
    while (i < n && IsDigit(s[i])) ++i;
  }
  if (i < n && (s[i] == 'e' || s[i] == 'E')) {
    ++i;
    if (i < n && (s[i] == '+' || s[i] == '-')) ++i;
    if (i >= n || !IsDigit(s[i])) return false;
    while (i < n && IsDigit(s[i])) ++i;
  }
  return i == n;
}

void CheckNumber(const JsonValue& v) {
  FUZZ_CHECK(IsJsonNumber(v.text), absl::StrCat("number literal '", v.text, "'"));
  const bool integer = v.text.find_first_of(".eE") == std::string::npos;
  absl::StatusOr<int64_t> i = v.AsInt64();
  absl::StatusOr<uint64_t> u = v.AsUint64();
  if (i.ok()) {
    FUZZ_CHECK(integer, v.text);
    std::string back = std::to_string(*i);
    FUZZ_CHECK(back == v.text || (v.text == "-0" && *i == 0),
               absl::StrCat(v.text, " read as ", *i));
    if (*i >= 0 && v.text[0] != '-') {
      FUZZ_CHECK(u.ok() && *u == static_cast<uint64_t>(*i), v.text);
    }
  }
  if (u.ok()) {
    FUZZ_CHECK(integer && v.text[0] != '-', v.text);
    FUZZ_CHECK(std::to_string(*u) == v.text, absl::StrCat(v.text, " read as ", *u));
  }
  // Short integer literals are exact doubles.
  if (integer && v.text.size() <= 16) {
    absl::StatusOr<double> d = v.AsDouble();
    FUZZ_CHECK(d.ok(), v.text);
    if (i.ok()) FUZZ_CHECK(*d == static_cast<double>(*i), v.text);
  }
  (void)v.AsDouble();
}

// Checks `v` and returns its nesting depth (arrays and objects; 0 for a scalar).
size_t CheckValue(const JsonValue& v) {
  switch (v.type) {
    case JsonValue::Type::kNull:
    case JsonValue::Type::kBool:
      return 0;
    case JsonValue::Type::kNumber:
      CheckNumber(v);
      return 0;
    case JsonValue::Type::kString:
      FUZZ_CHECK(CheckUtf8(v.text).ok(), "decoded string is not UTF-8");
      return 0;
    case JsonValue::Type::kArray: {
      size_t depth = 0;
      for (const JsonValue& e : v.array) depth = std::max(depth, CheckValue(e));
      return depth + 1;
    }
    case JsonValue::Type::kObject: {
      size_t depth = 0;
      std::set<std::string> keys;
      for (const auto& [key, member] : v.object) {
        FUZZ_CHECK(CheckUtf8(key).ok(), "decoded key is not UTF-8");
        FUZZ_CHECK(keys.insert(key).second, absl::StrCat("duplicate key ", JsonQuote(key)));
        FUZZ_CHECK(v.Find(key) == &member, absl::StrCat("Find(", JsonQuote(key), ")"));
        depth = std::max(depth, CheckValue(member));
      }
      return depth + 1;
    }
  }
  return 0;
}

void CheckRejection(const absl::Status& status) {
  FUZZ_CHECK(status.code() == absl::StatusCode::kInvalidArgument, status.ToString());
  FUZZ_CHECK(absl::StartsWith(status.message(), "invalid JSON"), status.ToString());
}

}  // namespace
}  // namespace coldfuse::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace coldfuse;
  using namespace coldfuse::fuzz;
  absl::string_view text(reinterpret_cast<const char*>(data), size);

  // JsonQuote: a valid UTF-8 string survives quoting and parsing; anything else is refused.
  const bool utf8 = CheckUtf8(text).ok();
  absl::StatusOr<JsonValue> quoted = ParseJson(JsonQuote(text));
  FUZZ_CHECK(quoted.ok() == utf8, quoted.status().ToString());
  if (quoted.ok()) FUZZ_CHECK(quoted->is_string() && quoted->text == text, "JsonQuote round trip");

  absl::StatusOr<JsonValue> v = ParseJson(text);
  if (!v.ok()) {
    CheckRejection(v.status());
    return 0;
  }
  FUZZ_CHECK(utf8, "accepted text that is not UTF-8");
  const size_t depth = CheckValue(*v);
  FUZZ_CHECK(depth <= 64, absl::StrCat("accepted depth ", depth, " past the default 64"));
  absl::StatusOr<JsonValue> exact = ParseJson(text, depth);
  FUZZ_CHECK(exact.ok() && Equal(*exact, *v), absl::StrCat("max_depth ", depth, " refused"));
  if (depth > 0) {
    absl::StatusOr<JsonValue> shallow = ParseJson(text, depth - 1);
    FUZZ_CHECK(!shallow.ok(), absl::StrCat("max_depth ", depth - 1, " accepted depth ", depth));
    CheckRejection(shallow.status());
  }

  std::string once;
  Serialize(*v, &once);
  absl::StatusOr<JsonValue> again = ParseJson(once);
  FUZZ_CHECK(again.ok(), absl::StrCat("serialized form refused: ", again.status().ToString()));
  FUZZ_CHECK(Equal(*again, *v), "parse(serialize(v)) != v");
  std::string twice;
  Serialize(*again, &twice);
  FUZZ_CHECK(twice == once, "serialization is not stable");
  return 0;
}
