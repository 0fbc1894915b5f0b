#include "common/logging.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

class LoggingTest : public ::testing::Test {
 protected:
  ~LoggingTest() override { SetMinLogLevel(LogLevel::kInfo); }
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

}  // namespace
}  // namespace coldfuse
