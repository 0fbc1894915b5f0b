// What an operator sees from the three programs: --help and --version, and log flags.

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/json.h"
#include "common/posix_file.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;
using ::testing::AllOf;
using ::testing::ContainsRegex;
using ::testing::HasSubstr;
using ::testing::Not;

struct Program {
  std::string binary;
  std::string own_flag;  // one flag its main.cc defines
};

std::vector<Program> Programs() {
  return {{ServerBinary(), "--data_dir"},
          {ClientBinary(), "--state_dir"},
          {CtlBinary(), "--token_file"}};
}

TEST(CliTest, HelpListsTheProgramsOwnFlagsAndTheLogFlags) {
  for (const Program& p : Programs()) {
    for (const char* help : {"--help", "--helpshort"}) {
      CommandResult r = RunCommand({p.binary, help});
      EXPECT_THAT(r.output, AllOf(HasSubstr(p.own_flag + " ("), HasSubstr("--log_level ("),
                                  HasSubstr("--log_format ("), Not(HasSubstr("No modules matched")),
                                  Not(HasSubstr("No flags matched"))))
          << p.binary << " " << help;
    }
  }
  // The --fusion help names every method coldfusectl init accepts (read as one line: the
  // help text is wrapped).
  CommandResult r = RunCommand({CtlBinary(), "--help"});
  const std::string help =
      absl::StrJoin(absl::StrSplit(r.output, absl::ByAnyChar(" \n"), absl::SkipEmpty()), " ");
  ASSERT_THAT(help, HasSubstr("--fusion (init: fusion method: "));
  for (const char* method : {"mean (", "weighted (", "median (", "trimmed (", "clipped ("}) {
    EXPECT_THAT(help, HasSubstr(method));
  }
}

TEST(CliTest, VersionSaysTheBuildTypeCMakeBuilt) {
  for (const Program& p : Programs()) {
    CommandResult r = RunCommand({p.binary, "--version"});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    EXPECT_THAT(r.output, HasSubstr(absl::StrCat("\n", COLDFUSE_BUILD_TYPE, " build")));
    if (std::string(COLDFUSE_BUILD_TYPE) != "Debug") {
      EXPECT_THAT(r.output, Not(HasSubstr("Debug build"))) << p.binary;
    }
  }
}

TEST(CliTest, AnInvalidLogFlagExits2WithAMessage) {
  for (const Program& p : Programs()) {
    CommandResult level = RunCommand({p.binary, "--log_level=debug"});
    EXPECT_EQ(level.exit_code, 2) << p.binary;
    EXPECT_THAT(level.output, HasSubstr("--log_level=debug: log level 'debug' is not one of"));
    CommandResult format = RunCommand({p.binary, "--log_format=xml"});
    EXPECT_EQ(format.exit_code, 2) << p.binary;
    EXPECT_THAT(format.output, HasSubstr("--log_format=xml"));
  }
}

// With --log_format=json every line the server writes is a JSON object; with
// --log_level=warning its info lines are gone.
TEST(CliTest, ServerLogsFollowTheLogFlags) {
  TempDir dir;
  const std::string json_log = dir.path() + "/json.log";
  auto server = ServerProcess::Start(dir.path() + "/db", json_log, {"--log_format=json"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->Stop(), 0);
  auto text = ReadFileToString(json_log);
  ASSERT_TRUE(text.ok());
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(*text, '\n', absl::SkipEmpty())) {
    ++lines;
    absl::StatusOr<JsonValue> json = ParseJson(line);
    ASSERT_TRUE(json.ok()) << json.status() << ": " << line;
    for (const char* key : {"time", "level", "file", "line", "msg"}) {
      EXPECT_NE(json->Find(key), nullptr) << key << " in " << line;
    }
  }
  EXPECT_GE(lines, 2) << "start and stop are logged";

  const std::string quiet_log = dir.path() + "/quiet.log";
  server = ServerProcess::Start(dir.path() + "/db", quiet_log, {"--log_level=warning"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(server->Stop(), 0);
  text = ReadFileToString(quiet_log);
  ASSERT_TRUE(text.ok());
  EXPECT_THAT(*text, Not(ContainsRegex("(^|\n)I ")));
}

}  // namespace
}  // namespace coldfuse::testing
