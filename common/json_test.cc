#include "common/json.h"

#include <cstdint>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

using ::testing::HasSubstr;

// Asserts `text` is rejected with INVALID_ARGUMENT whose message contains `what`.
void ExpectRejected(const std::string& text, const std::string& what) {
  absl::StatusOr<JsonValue> v = ParseJson(text);
  ASSERT_FALSE(v.ok()) << "accepted: " << text;
  EXPECT_EQ(v.status().code(), absl::StatusCode::kInvalidArgument) << text;
  EXPECT_THAT(std::string(v.status().message()), HasSubstr(what)) << text;
}

TEST(JsonTest, ParsesAllValueKindsKeepingKeyOrder) {
  auto v = ParseJson(R"( {"z": null, "a": [true, false, -1.5e3, 0, "s"], "m": {}} )");
  ASSERT_TRUE(v.ok()) << v.status();
  ASSERT_TRUE(v->is_object());
  ASSERT_EQ(v->object.size(), 3u);
  EXPECT_EQ(v->object[0].first, "z");
  EXPECT_EQ(v->object[1].first, "a");
  EXPECT_EQ(v->object[2].first, "m");
  EXPECT_TRUE(v->Find("z")->is_null());
  const JsonValue& a = *v->Find("a");
  ASSERT_EQ(a.array.size(), 5u);
  EXPECT_TRUE(a.array[0].boolean);
  EXPECT_FALSE(a.array[1].boolean);
  EXPECT_EQ(a.array[2].text, "-1.5e3");
  EXPECT_EQ(*a.array[2].AsDouble(), -1500.0);
  EXPECT_FALSE(a.array[2].AsInt64().ok());
  EXPECT_EQ(*a.array[3].AsUint64(), 0u);
  EXPECT_EQ(a.array[4].text, "s");
  EXPECT_TRUE(v->Find("m")->is_object());
  EXPECT_EQ(v->Find("missing"), nullptr);
}

TEST(JsonTest, IntegerAccessorsCheckRange) {
  EXPECT_EQ(*ParseJson("18446744073709551615")->AsUint64(), UINT64_MAX);
  EXPECT_FALSE(ParseJson("18446744073709551616")->AsUint64().ok());
  EXPECT_EQ(*ParseJson("-9223372036854775808")->AsInt64(), INT64_MIN);
  EXPECT_FALSE(ParseJson("9223372036854775808")->AsInt64().ok());
  EXPECT_FALSE(ParseJson("-1")->AsUint64().ok());
  EXPECT_FALSE(ParseJson("1.0")->AsUint64().ok());
  EXPECT_FALSE(ParseJson("1e2")->AsInt64().ok());
  EXPECT_FALSE(ParseJson("\"1\"")->AsInt64().ok());
  EXPECT_FALSE(ParseJson("1e400")->AsDouble().ok());
}

TEST(JsonTest, DecodesEscapesAndSurrogatePairs) {
  auto v = ParseJson(R"("a\"\\\/\b\f\n\r\t\u0041\u00e9\u20AC\ud83d\ude00")");
  ASSERT_TRUE(v.ok()) << v.status();
  EXPECT_EQ(v->text, "a\"\\/\b\f\n\r\tA\xC3\xA9\xE2\x82\xAC\xF0\x9F\x98\x80");
  EXPECT_EQ(ParseJson(R"("\u0000")")->text, std::string(1, '\0'));
}

TEST(JsonTest, RejectsBadEscapes) {
  ExpectRejected(R"("\x")", "invalid escape");
  ExpectRejected(R"("\u12")", "\\u");
  ExpectRejected(R"("\u12G4")", "hex digits");
  ExpectRejected(R"("\ud83d")", "not followed by a low");
  ExpectRejected(R"("\ud83d\u0041")", "not followed by a low");
  ExpectRejected(R"("\ude00")", "unpaired low surrogate");
}

TEST(JsonTest, RejectsInvalidUtf8WithOffset) {
  ExpectRejected("\"\xC0\xAF\"", "invalid UTF-8 at byte 1");          // overlong '/'
  ExpectRejected("\"\xE0\x80\xAF\"", "invalid UTF-8 at byte 1");      // overlong 3-byte
  ExpectRejected("\"ab\xED\xA0\x80\"", "invalid UTF-8 at byte 3");    // encoded surrogate
  ExpectRejected("\"\xF4\x90\x80\x80\"", "invalid UTF-8 at byte 1");  // > U+10FFFF
  ExpectRejected("\"\xF5\x80\x80\x80\"", "invalid UTF-8");
  ExpectRejected("\"\x80\"", "invalid UTF-8");          // stray continuation byte
  ExpectRejected("\"\xC3\"", "invalid UTF-8");          // truncated sequence
  EXPECT_TRUE(ParseJson("\"\xF4\x8F\xBF\xBF\"").ok());  // U+10FFFF itself is fine
  EXPECT_TRUE(CheckUtf8("caf\xC3\xA9").ok());
}

TEST(JsonTest, RejectsControlCharactersInStrings) {
  ExpectRejected("\"a\nb\"", "control character");
  ExpectRejected(std::string("\"a\0b\"", 5), "control character");
  ExpectRejected("\"abc", "unterminated string");
}

TEST(JsonTest, RejectsBadNumbers) {
  ExpectRejected("01", "leading zero");
  ExpectRejected("-01", "leading zero");
  ExpectRejected("1.", "digit after '.'");
  ExpectRejected(".5", "unexpected character");
  ExpectRejected("1e", "exponent");
  ExpectRejected("+1", "unexpected character");
  ExpectRejected("-", "expected a digit");
  ExpectRejected("NaN", "unexpected character");
}

TEST(JsonTest, RejectsStructuralErrorsWithOffsets) {
  ExpectRejected("", "byte 0: unexpected end of input");
  ExpectRejected("{} x", "byte 3: unexpected text after the JSON value");
  ExpectRejected("[1,]", "byte 3: unexpected character ']'");
  ExpectRejected("[1 2]", "expected ',' or ']'");
  ExpectRejected("{\"a\" 1}", "expected ':'");
  ExpectRejected("{\"a\":1,}", "expected a string key");
  ExpectRejected("{a:1}", "expected a string key");
  ExpectRejected("tru", "expected 'true'");
  ExpectRejected("[1", "unexpected end of input in array");
  ExpectRejected("\xEF\xBB\xBF{}", "unexpected character");  // a BOM is not JSON
}

TEST(JsonTest, RejectsDuplicateKeys) {
  ExpectRejected(R"({"a":1,"b":2,"a":3})", "byte 13: duplicate object key \"a\"");
  EXPECT_TRUE(ParseJson(R"({"a":{"a":1},"b":{"a":2}})").ok());
}

TEST(JsonTest, EnforcesDepthLimit) {
  EXPECT_TRUE(ParseJson(std::string(64, '[') + std::string(64, ']')).ok());
  ExpectRejected(std::string(65, '[') + std::string(65, ']'), "nesting deeper than 64");
  EXPECT_TRUE(ParseJson("[[1]]", 2).ok());
  auto deep = ParseJson("[{\"a\":[]}]", 2);
  EXPECT_EQ(deep.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(deep.status().message()), HasSubstr("byte 6: nesting deeper than 2"));
  ExpectRejected(std::string(100000, '['), "nesting deeper than 64");  // no stack overflow
}

TEST(JsonTest, QuoteRoundTrips) {
  std::string raw = std::string("q\"b\\s/\n\t\x01\x1f\x7f caf\xC3\xA9") + std::string(1, '\0');
  std::string quoted = JsonQuote(raw);
  EXPECT_EQ(quoted, "\"q\\\"b\\\\s/\\n\\t\\u0001\\u001f\x7f caf\xC3\xA9\\u0000\"");
  auto back = ParseJson(quoted);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->text, raw);
}

}  // namespace
}  // namespace coldfuse
