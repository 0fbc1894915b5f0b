// A small strict JSON (RFC 8259) parser and string quoting, for safetensors headers and
// checkpoint index files. Values are plain data; functions are stateless and thread-safe.
//
// Strict means: the text must be valid UTF-8 (no overlong forms, surrogates or code points
// past U+10FFFF); strings have no raw control characters and only the RFC's escapes, with
// \uXXXX surrogates in valid pairs; numbers have no leading zeros; objects have no
// duplicate keys; nothing but whitespace follows the value; nesting is bounded.
#ifndef COLDFUSE_COMMON_JSON_H_
#define COLDFUSE_COMMON_JSON_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace coldfuse {

struct JsonValue {
  enum class Type { kNull, kBool, kNumber, kString, kArray, kObject };

  // Defined in json.cc: in C++20, clang 14 with libstdc++ 12 rejects the implicit one, which
  // needs `object`'s element type complete while JsonValue is not yet.
  JsonValue();

  Type type = Type::kNull;
  bool boolean = false;  // kBool
  // kNumber: the literal as written (e.g. "-1.5e3"); kString: the decoded UTF-8 contents.
  std::string text;
  std::vector<JsonValue> array;                           // kArray
  std::vector<std::pair<std::string, JsonValue>> object;  // kObject, in document order

  bool is_null() const { return type == Type::kNull; }
  bool is_bool() const { return type == Type::kBool; }
  bool is_number() const { return type == Type::kNumber; }
  bool is_string() const { return type == Type::kString; }
  bool is_array() const { return type == Type::kArray; }
  bool is_object() const { return type == Type::kObject; }

  // "null", "boolean", "number", "string", "array" or "object", for error messages.
  absl::string_view TypeName() const;

  // The member named `key` of an object; nullptr if absent or not an object.
  const JsonValue* Find(absl::string_view key) const;

  // A number written as an integer literal (no fraction or exponent) that fits the type;
  // INVALID_ARGUMENT otherwise (not a number, not an integer, negative, out of range).
  absl::StatusOr<int64_t> AsInt64() const;
  absl::StatusOr<uint64_t> AsUint64() const;
  // Any number; INVALID_ARGUMENT if not a number or out of double's range.
  absl::StatusOr<double> AsDouble() const;
};

// Parses one JSON value filling all of `text`. INVALID_ARGUMENT naming the byte offset and
// the problem for any violation, including nesting deeper than `max_depth` arrays/objects.
absl::StatusOr<JsonValue> ParseJson(absl::string_view text, size_t max_depth = 64);

// OK if `text` is valid UTF-8; otherwise INVALID_ARGUMENT naming the first bad byte offset.
absl::Status CheckUtf8(absl::string_view text);

// `s` as a JSON string literal, quotes included; escapes '"', '\\' and control characters
// and passes other bytes through. REQUIRES: `s` is valid UTF-8 for the result to be JSON.
std::string JsonQuote(absl::string_view s);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_JSON_H_
