#include "common/program.h"

#include <grpc/grpc.h>
#include <grpc/support/log.h>

#include <cstdlib>
#include <string>

#include "common/json.h"
#include "common/logging.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

class ProgramTest : public ::testing::Test {
 protected:
  ~ProgramTest() override {
    SetMinLogLevel(LogLevel::kInfo);
    SetLogFormat(LogFormat::kText);
  }
};

// gRPC's own messages come out as our lines: same format, same level filter.
TEST_F(ProgramTest, GrpcMessagesUseTheLogFormatAndLevel) {
  ::unsetenv("GRPC_VERBOSITY");
  SetLogFormat(LogFormat::kJson);
  RouteGrpcLogs();
  grpc_init();  // as a program's first channel or server does: gRPC reads GRPC_VERBOSITY
  ::testing::internal::CaptureStderr();
  gpr_log(GPR_ERROR, "listener on %s: \"%s\"", "[::]:7878", "address in use");
  std::string err = ::testing::internal::GetCapturedStderr();
  ASSERT_FALSE(err.empty());
  absl::StatusOr<JsonValue> json = ParseJson(err.substr(0, err.size() - 1));
  ASSERT_TRUE(json.ok()) << json.status() << "\n" << err;
  EXPECT_EQ(json->Find("level")->text, "ERROR");
  EXPECT_EQ(json->Find("file")->text, "program_test.cc");
  EXPECT_EQ(json->Find("msg")->text, "listener on [::]:7878: \"address in use\"");

  // Without GRPC_VERBOSITY gRPC keeps its INFO diagnostics to itself.
  ::testing::internal::CaptureStderr();
  gpr_log(GPR_INFO, "diagnostics");
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), IsEmpty());

  // As with GRPC_VERBOSITY=DEBUG: gRPC's DEBUG and INFO messages are our info.
  gpr_set_log_verbosity(GPR_LOG_SEVERITY_DEBUG);
  ::testing::internal::CaptureStderr();
  gpr_log(GPR_INFO, "connected");
  gpr_log(GPR_DEBUG, "details");
  err = ::testing::internal::GetCapturedStderr();
  EXPECT_THAT(err, HasSubstr(R"("level":"INFO","file":"program_test.cc")"));
  EXPECT_THAT(err, HasSubstr(R"("msg":"connected"})"));
  EXPECT_THAT(err, HasSubstr(R"("msg":"details"})"));

  SetMinLogLevel(LogLevel::kError);
  RouteGrpcLogs();
  ::testing::internal::CaptureStderr();
  gpr_log(GPR_INFO, "dropped");
  gpr_log(GPR_DEBUG, "dropped");
  EXPECT_THAT(::testing::internal::GetCapturedStderr(), IsEmpty());
  grpc_shutdown();
}

TEST_F(ProgramTest, VersionSaysTheBuildType) {
  const std::string v = VersionString("coldfused");
  EXPECT_THAT(v, HasSubstr("coldfused (coldfuse) "));
  EXPECT_THAT(v, HasSubstr(std::string("\n") + COLDFUSE_BUILD_TYPE + " build"));
}

TEST(ProgramDeathTest, InvalidLogFlagsExit2WithAMessage) {
  for (const char* flag : {"--log_level=debug", "--log_format=xml"}) {
    std::string arg0 = "coldfusectl", arg1 = flag;
    char* argv[] = {arg0.data(), arg1.data(), nullptr};
    EXPECT_EXIT(InitProgram(2, argv, "usage", __FILE__), ::testing::ExitedWithCode(2),
                "coldfusectl: --log_.*is not one of");
  }
}

}  // namespace
}  // namespace coldfuse
