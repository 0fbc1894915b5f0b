// What an operator sees from the three programs: --help and --version, log flags, and
// the coldfusectl tables (token list, status, round) against a real coldfused.
#include <filesystem>
#include <regex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/json.h"
#include "common/posix_file.h"
#include "common/rpc/client.h"
#include "common/safetensors.h"
#include "common/tensor.h"
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
  for (const char* method : {"mean (", "weighted (", "median (", "trimmed (", "clipped (",
                             "task_arithmetic (", "ties (", "dare ("}) {
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

// Offsets where each whitespace-separated field of `line` starts.
std::vector<size_t> FieldStarts(const std::string& line) {
  std::vector<size_t> out;
  for (size_t i = 0; i < line.size(); ++i) {
    if (line[i] != ' ' && (i == 0 || line[i - 1] == ' ')) out.push_back(i);
  }
  return out;
}

// The lines of `output` from the one starting with `first` on.
std::vector<std::string> LinesFrom(const std::string& output, absl::string_view first) {
  std::vector<std::string> lines = absl::StrSplit(output, '\n', absl::SkipEmpty());
  auto it = std::find_if(lines.begin(), lines.end(),
                         [&](const std::string& l) { return absl::StartsWith(l, first); });
  return {it, lines.end()};
}

class CtlDisplayTest : public ::testing::Test {
 protected:
  // A one-tensor base ("w", four F32 zeros) in dir_/base.safetensors; returns the tensor.
  HostTensor WriteTinyBase() {
    HostTensor w;
    w.spec.set_name("w");
    w.spec.set_dtype(v1::F32);
    w.spec.add_shape(4);
    w.data.assign(16, '\0');
    EXPECT_TRUE(WriteSafetensors(dir_.path() + "/base.safetensors", {w}).ok());
    return w;
  }

  CommandResult Ctl(const std::string& address, std::vector<std::string> args) {
    args.insert(args.begin(), {CtlBinary(), "--server=" + address});
    return RunCommand(args);
  }

  TempDir dir_;
};

// Expiry as a UTC date, and a token past it shown as expired (it was shown as active).
TEST_F(CtlDisplayTest, TokenListShowsDatesAndExpiredTokens) {
  const std::string certs = dir_.path() + "/certs";
  CommandResult made = RunCommand({"/bin/bash", MAKE_CERTS_SCRIPT, certs});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const std::string op_token = dir_.path() + "/op.token";
  auto server = ServerProcess::Start(
      dir_.path() + "/db", dir_.path() + "/server.log",
      {"--tls_cert=" + certs + "/server.crt", "--tls_key=" + certs + "/server.key",
       "--bootstrap_token_file=" + op_token});
  ASSERT_NE(server, nullptr);
  const std::vector<std::string> auth = {"--tls_ca=" + certs + "/ca.crt",
                                         "--token_file=" + op_token};
  auto ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), auth.begin(), auth.end());
    return Ctl(server->address(), args);
  };
  for (auto args : std::vector<std::vector<std::string>>{
           {"token", "create", "--name=brief", "--ttl_s=1", "--out=" + dir_.path() + "/b"},
           {"token", "create", "--name=year", "--ttl_s=31536000", "--out=" + dir_.path() + "/y"},
           {"token", "create", "--name=gone", "--out=" + dir_.path() + "/g"},
           {"token", "revoke", "--name=gone"}}) {
    CommandResult r = ctl(args);
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  CommandResult list = ctl({"token", "list"});
  ASSERT_EQ(list.exit_code, 0) << list.output;
  const std::string date = "20[0-9]{2}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z";
  EXPECT_THAT(list.output, ContainsRegex("\nbrief +CONTRIBUTOR +" + date + " +expired\n"));
  EXPECT_THAT(list.output, ContainsRegex("\nyear +CONTRIBUTOR +" + date + " +active\n"));
  EXPECT_THAT(list.output, ContainsRegex("\ngone +CONTRIBUTOR +never +revoked\n"));
  std::vector<std::string> rows = LinesFrom(list.output, "NAME");
  ASSERT_EQ(rows.size(), 5u) << list.output;  // header, bootstrap operator, three
  for (const auto& row : rows) EXPECT_EQ(FieldStarts(row), FieldStarts(rows[0])) << row;

  // --json stays the protobuf mapping, for machines.
  CommandResult json = ctl({"token", "list", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  EXPECT_THAT(json.output, HasSubstr("\"expires_unix_ms\": \""));
}

// --round_timeout_s=0 reads as "no deadline"; rolled-back bases are listed; a
// contribution without a task keeps the round table's columns aligned.
TEST_F(CtlDisplayTest, StatusAndRoundTablesSayWhatTheServerHas) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--round_timeout_s=0", "--min_contributions=2"});
  ASSERT_NE(server, nullptr);
  const HostTensor w = WriteTinyBase();
  CommandResult init =
      Ctl(server->address(), {"init", "--from=" + dir_.path() + "/base.safetensors"});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  CommandResult status = Ctl(server->address(), {"status"});
  ASSERT_EQ(status.exit_code, 0) << status.output;
  EXPECT_THAT(status.output, HasSubstr("close at 2 contributions; no deadline"));
  EXPECT_THAT(status.output, Not(HasSubstr("0 s after opening")));
  EXPECT_THAT(status.output, Not(HasSubstr("bad bases")));

  // Rounds 1 and 2, each from one contributor with a task and one without.
  for (uint64_t round = 1; round <= 2; ++round) {
    for (const char* task : {"", "digits"}) {
      v1::ContributionHeader h;
      h.set_round(round);
      h.set_base_version(round - 1);
      h.set_contributor(*task ? "with-task" : "no-task");
      h.set_task(task);
      h.set_num_examples(1000);
      h.set_upload_id(rpc::NewUploadId());
      *h.mutable_manifest() = ManifestOf({w});
      auto receipt = rpc::PushContribution(server->channel(), h, std::vector<HostTensor>{w});
      ASSERT_TRUE(receipt.ok()) << receipt.status();
    }
    ASSERT_TRUE(server->WaitForBase(round, seconds(60)));
  }
  CommandResult round = Ctl(server->address(), {"round", "1"});
  ASSERT_EQ(round.exit_code, 0) << round.output;
  std::vector<std::string> rows = LinesFrom(round.output, "id");
  ASSERT_EQ(rows.size(), 3u) << round.output;
  for (const auto& row : rows) EXPECT_EQ(FieldStarts(row), FieldStarts(rows[0])) << round.output;
  EXPECT_THAT(round.output, ContainsRegex("no-task +- +1000"));

  CommandResult rollback = Ctl(server->address(), {"rollback", "--base=1", "--reason=test"});
  ASSERT_EQ(rollback.exit_code, 0) << rollback.output;
  status = Ctl(server->address(), {"status"});
  ASSERT_EQ(status.exit_code, 0) << status.output;
  EXPECT_THAT(status.output, HasSubstr("\nbad bases   v2 "));
}

// init takes the outer optimizer and its options; the server refuses an option the
// optimizer does not use, and status names what it resolved.
TEST_F(CtlDisplayTest, InitTakesAnOuterOptimizerAndStatusShowsIt) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--round_timeout_s=0", "--min_contributions=1"});
  ASSERT_NE(server, nullptr);
  WriteTinyBase();
  const std::string from = "--from=" + dir_.path() + "/base.safetensors";

  CommandResult bad = Ctl(server->address(), {"init", from, "--outer_optimizer=lion"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.output, HasSubstr("--outer_optimizer=lion is not one of plain, sgd, nesterov"));
  bad = Ctl(server->address(), {"init", from, "--outer_optimizer=plain", "--outer_lr=0.5"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.output, HasSubstr("OUTER_PLAIN takes no options"));
  bad = Ctl(server->address(), {"init", from, "--outer_optimizer=nesterov", "--outer_tau=1"});
  EXPECT_NE(bad.exit_code, 0);
  EXPECT_THAT(bad.output, HasSubstr("tau is set, but OUTER_NESTEROV does not use it"));

  CommandResult init =
      Ctl(server->address(), {"init", from, "--outer_optimizer=nesterov", "--outer_lr=0.5"});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  CommandResult status = Ctl(server->address(), {"status"});
  ASSERT_EQ(status.exit_code, 0) << status.output;
  EXPECT_THAT(status.output, HasSubstr("fusion MEAN, outer NESTEROV (lr 0.5, momentum 0.9))"));
  CommandResult json = Ctl(server->address(), {"status", "--json"});
  ASSERT_EQ(json.exit_code, 0) << json.output;
  EXPECT_THAT(json.output, HasSubstr("\"outer_optimizer\": \"OUTER_NESTEROV\""));
}

// Transfers show progress: on a terminal (a pseudo-terminal made by script(1)) a bar
// redrawn in place with the rate and an ETA; in a log, plain lines every 10% or 5 s.
TEST(CliTest, TransfersDrawABarOnATerminalAndPlainLinesInALog) {
  TempDir dir;
  auto server = ServerProcess::Start(dir.path() + "/db", dir.path() + "/server.log",
                                     {"--min_contributions=5"});
  ASSERT_NE(server, nullptr);
  const std::string ctl = absl::StrCat(CtlBinary(), " --server=", server->address());
  ASSERT_EQ(
      RunCommand({CtlBinary(), "--server=" + server->address(), "init", "--spec=mlp:8,2896,2896,8"})
          .exit_code,
      0);  // about 35 MB: 35 chunks

  // In a log (output to a pipe): no bar, no carriage return; a line per 10%.
  CommandResult plain = RunCommand({CtlBinary(), "--server=" + server->address(), "pull"});
  ASSERT_EQ(plain.exit_code, 0) << plain.output;
  EXPECT_THAT(plain.output, Not(HasSubstr("\r")));
  EXPECT_THAT(plain.output, Not(HasSubstr("[#")));
  int lines = 0;
  for (absl::string_view line : absl::StrSplit(plain.output, '\n')) {
    if (absl::StrContains(line, "pull the current base") && absl::StrContains(line, "MB/s") &&
        absl::StrContains(line, "% ")) {
      ++lines;
    }
  }
  EXPECT_GE(lines, 5) << plain.output;

  // On a terminal: the bar, redrawn with \r, with a rate and an ETA; for pull, export
  // and push alike.
  const std::string out = dir.path() + "/exported";
  for (const std::string& command :
       {ctl + " pull", ctl + " export --out=" + out,
        ctl + " push --name=pty --num_examples=10 --checkpoint=" + out + "/model.safetensors"}) {
    CommandResult tty = RunCommand({"script", "-qec", command, "/dev/null"}, seconds(120));
    ASSERT_EQ(tty.exit_code, 0) << command << "\n" << tty.output;
    EXPECT_THAT(tty.output, HasSubstr("\r")) << command;
    EXPECT_THAT(tty.output, ContainsRegex("\\[#+\\.*\\] +[0-9]+% ")) << command;
    EXPECT_THAT(tty.output, HasSubstr(" MB/s")) << command;
    EXPECT_THAT(tty.output, HasSubstr(", ETA ")) << command;
  }
}

// `coldfusectl wait` started before the server is up, and kept waiting through a server
// restart, returns once the base appears; a base that never comes is DEADLINE_EXCEEDED.
TEST(CliTest, WaitRidesOutAServerThatIsNotUpYetAndOneThatRestarts) {
  TempDir dir;
  const int port = FreePort();
  const std::string address = absl::StrCat("127.0.0.1:", port);
  auto wait =
      Process::Start({CtlBinary(), "--server=" + address, "wait", "--base=1", "--timeout_s=120"},
                     dir.path() + "/wait.log");
  std::this_thread::sleep_for(std::chrono::seconds(1));  // nothing listens yet
  auto server = ServerProcess::Start(dir.path() + "/db", dir.path() + "/server.log",
                                     {"--min_contributions=1"}, port);
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(RunCommand({CtlBinary(), "--server=" + address, "init", "--spec=mlp:4,8,4"}).exit_code,
            0);
  // The waiting client reconnects at least every second (ClientChannelArguments): give it
  // time to be watching this server before it goes.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  ASSERT_EQ(server->Stop(), 0);  // the watch ends under it
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_FALSE(wait->Wait(std::chrono::milliseconds(10)).has_value()) << "wait gave up";
  server = ServerProcess::Start(dir.path() + "/db", dir.path() + "/server.log",
                                {"--min_contributions=1"}, port);
  ASSERT_NE(server, nullptr);
  auto base = rpc::PullBase(server->channel(), std::nullopt);
  ASSERT_TRUE(base.ok()) << base.status();
  v1::ContributionHeader h;
  h.set_round(1);
  h.set_base_version(0);
  h.set_contributor("alice");
  h.set_num_examples(1);
  *h.mutable_manifest() = ManifestOf(base->tensors);
  ASSERT_TRUE(rpc::PushContribution(server->channel(), h, base->tensors).ok());
  auto code = wait->Wait(std::chrono::seconds(60));
  ASSERT_TRUE(code.has_value());
  EXPECT_EQ(*code, 0);
  auto log = ReadFileToString(dir.path() + "/wait.log");
  ASSERT_TRUE(log.ok());
  EXPECT_THAT(*log, HasSubstr("base v1\n"));
  EXPECT_THAT(*log, HasSubstr("waiting for it to come back"));

  CommandResult never =
      RunCommand({CtlBinary(), "--server=" + address, "wait", "--base=9", "--timeout_s=1"});
  EXPECT_EQ(never.exit_code, 1);
  EXPECT_THAT(never.output, HasSubstr("base v9 did not appear within 1 s"));
}

}  // namespace
}  // namespace coldfuse::testing
