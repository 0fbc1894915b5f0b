#include "common/logging.h"

#include "common/json.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

class LoggingTest : public ::testing::Test {
 protected:
  ~LoggingTest() override {
    SetMinLogLevel(LogLevel::kInfo);
    SetLogFormat(LogFormat::kText);
  }
};

int Count(int* calls) { return ++*calls; }

TEST_F(LoggingTest, DroppedMessagesAreNotFormatted) {
  SetMinLogLevel(LogLevel::kWarning);
  int calls = 0;
  ::testing::internal::CaptureStderr();
  CF_LOG(INFO) << "dropped " << Count(&calls);
  CF_LOG(WARNING) << "kept " << Count(&calls);
  std::string err = ::testing::internal::GetCapturedStderr();
  EXPECT_EQ(calls, 1);
  EXPECT_THAT(err, HasSubstr("logging_test.cc:"));
  EXPECT_THAT(err, HasSubstr("] kept 1\n"));
  EXPECT_EQ(err.find("dropped"), std::string::npos);
}

// The macro is an expression: an `else` after it belongs to the caller's `if`.
TEST_F(LoggingTest, ElseBindsToTheCallersIf) {
  for (bool cond : {true, false}) {
    bool else_ran = false;
    ::testing::internal::CaptureStderr();
    if (cond)
      CF_LOG(INFO) << "then";
    else
      else_ran = true;
    std::string err = ::testing::internal::GetCapturedStderr();
    EXPECT_EQ(else_ran, !cond);
    if (cond) {
      EXPECT_THAT(err, HasSubstr("] then\n"));
    } else {
      EXPECT_THAT(err, IsEmpty());
    }
  }
}

constexpr int64_t kNoonMs = 1795953600123;  // 2026-11-29T12:00:00.123Z

TEST_F(LoggingTest, TextLineKeepsItsFormat) {
  EXPECT_EQ(FormatLogRecord(LogFormat::kText,
                            {LogLevel::kWarning, kNoonMs, "/src/server/server.cc", 12, "hi"}),
            "W 2026-11-29T12:00:00.123Z server.cc:12] hi\n");
}

TEST_F(LoggingTest, JsonLineIsOneObjectWithTheDocumentedFields) {
  EXPECT_EQ(
      FormatLogRecord(LogFormat::kJson, {LogLevel::kInfo, kNoonMs, "/src/server.cc", 12, "hi"}),
      R"({"time":"2026-11-29T12:00:00.123Z","level":"INFO","file":"server.cc","line":12,)"
      R"("msg":"hi"})"
      "\n");
}

// Any bytes in a message, a client's name for one, still make exactly one valid JSON line
// that decodes to the message (invalid UTF-8 replaced, nothing else lost).
TEST_F(LoggingTest, JsonEscapesWhatWouldBreakTheLine) {
  const std::string message = std::string("q\"b\\n\nt\tc\x01\x1b[2Jd\x7f") + "\xC2\x85" +
                              "\xE2\x80\xA8" + "\xC3\xA9" + "\xFF" + "\xC3" + std::string(1, '\0') +
                              "end";
  const std::string line =
      FormatLogRecord(LogFormat::kJson, {LogLevel::kError, kNoonMs, "a.cc", 1, message});
  ASSERT_EQ(line.back(), '\n');
  EXPECT_EQ(line.find('\n'), line.size() - 1) << line;
  EXPECT_THAT(line, HasSubstr(R"("level":"ERROR")"));
  EXPECT_THAT(line, HasSubstr(R"("msg":"q\"b\\n\nt\tc\u0001\u001b[2Jd\u007f\u0085\u2028)"
                              "\xC3\xA9\xEF\xBF\xBD\xEF\xBF\xBD"
                              R"(\u0000end"})"));
  absl::StatusOr<JsonValue> json = ParseJson(line.substr(0, line.size() - 1));
  ASSERT_TRUE(json.ok()) << json.status() << "\n" << line;
  ASSERT_NE(json->Find("msg"), nullptr);
  EXPECT_EQ(json->Find("msg")->text,
            std::string("q\"b\\n\nt\tc\x01\x1b[2Jd\x7f\xC2\x85\xE2\x80\xA8\xC3\xA9") +
                "\xEF\xBF\xBD\xEF\xBF\xBD" + std::string(1, '\0') + "end");
}

TEST_F(LoggingTest, CfLogWritesJsonWhenAsked) {
  SetLogFormat(LogFormat::kJson);
  ::testing::internal::CaptureStderr();
  CF_LOG(WARNING) << "disk " << 93 << "% full";
  std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_FALSE(err.empty());
  absl::StatusOr<JsonValue> json = ParseJson(err.substr(0, err.size() - 1));
  ASSERT_TRUE(json.ok()) << json.status() << "\n" << err;
  EXPECT_EQ(json->Find("level")->text, "WARNING");
  EXPECT_EQ(json->Find("file")->text, "logging_test.cc");
  EXPECT_EQ(json->Find("msg")->text, "disk 93% full");
  EXPECT_TRUE(json->Find("line")->is_number());
}

TEST_F(LoggingTest, ParsesTheFlagValuesAndNamesTheAcceptedOnes) {
  EXPECT_EQ(*ParseLogLevel("warning"), LogLevel::kWarning);
  EXPECT_EQ(*ParseLogFormat("json"), LogFormat::kJson);
  EXPECT_THAT(ParseLogLevel("debug").status().message(), HasSubstr("info, warning, error"));
  EXPECT_THAT(ParseLogFormat("JSON").status().message(), HasSubstr("text, json"));
}

}  // namespace
}  // namespace coldfuse
