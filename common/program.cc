#include "common/program.h"

#include <grpc/support/log.h>

#include <cstdlib>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/flags/usage_config.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/logging.h"

// Defined here rather than in each main.cc: the three programs share them.
ABSL_FLAG(std::string, log_level, "info",
          "Least severe log messages written: info, warning or error (gRPC's own too)");
ABSL_FLAG(std::string, log_format, "text",
          "Log lines on stderr: text, or json (one object per line: time, level, file, "
          "line, msg)");

// Set by CMake (common/CMakeLists.txt).
#ifndef COLDFUSE_VERSION
#define COLDFUSE_VERSION "unknown"
#endif
#ifndef COLDFUSE_BUILD_TYPE
#define COLDFUSE_BUILD_TYPE "unknown"
#endif
#ifndef COLDFUSE_GIT_COMMIT
#define COLDFUSE_GIT_COMMIT ""
#endif

namespace coldfuse {
namespace {

constexpr absl::string_view kThisFile = __FILE__;
constexpr absl::string_view kThisFileInTree = "common/program.cc";

// A flag's file relative to the source tree ("server/main.cc"), so --help does not show
// the build machine's paths and the filter below can compare names.
std::string SourceRelative(absl::string_view file) {
  absl::string_view root = kThisFile;
  if (absl::ConsumeSuffix(&root, kThisFileInTree)) absl::ConsumePrefix(&file, root);
  return std::string(file);
}

void GrpcLogSink(gpr_log_func_args* args) {
  const LogLevel level =
      args->severity == GPR_LOG_SEVERITY_ERROR ? LogLevel::kError : LogLevel::kInfo;
  WriteLog(level, args->file != nullptr ? args->file : "grpc", args->line,
           args->message != nullptr ? args->message : "");
}

std::string BaseName(absl::string_view path) {
  const size_t slash = path.rfind('/');
  return std::string(slash == absl::string_view::npos ? path : path.substr(slash + 1));
}

// An invalid log flag is a configuration error: said plainly, exit 2 as for any bad flag.
template <typename T>
T FlagOrExit(absl::string_view program, absl::string_view flag, const std::string& value,
             absl::StatusOr<T> (*parse)(absl::string_view)) {
  absl::StatusOr<T> parsed = parse(value);
  if (!parsed.ok()) {
    std::cerr << program << ": --" << flag << "=" << value << ": " << parsed.status().message()
              << "\n";
    std::exit(2);
  }
  return *parsed;
}

}  // namespace

std::string VersionString(absl::string_view program) {
  std::string commit = COLDFUSE_GIT_COMMIT;
  return absl::StrCat(
      program, " (coldfuse) ", COLDFUSE_VERSION, "\n", COLDFUSE_BUILD_TYPE, " build",
      commit.empty() ? "" : absl::StrCat(", configured at git commit ", commit), "\n");
}

void RouteGrpcLogs() {
  gpr_set_log_function(&GrpcLogSink);
  // Above info, gRPC need not even format its INFO and DEBUG messages. At info, what gRPC
  // produces stays GRPC_VERBOSITY's choice (default ERROR): its INFO messages are
  // diagnostics, e.g. a line per failed reconnection while coldfusectl waits for a
  // restarting server.
  if (MinLogLevel() != LogLevel::kInfo) gpr_set_log_verbosity(GPR_LOG_SEVERITY_ERROR);
}

std::vector<char*> InitProgram(int argc, char** argv, absl::string_view usage,
                               absl::string_view main_file) {
  const std::string program = BaseName(argc > 0 ? argv[0] : "coldfuse");
  const std::string main = SourceRelative(main_file);
  const auto own_flags = [main](absl::string_view file) {
    return file == main || file == kThisFileInTree;
  };
  absl::FlagsUsageConfig config;
  config.contains_help_flags = own_flags;
  config.contains_helpshort_flags = own_flags;
  config.version_string = [program] { return VersionString(program); };
  config.normalize_filename = SourceRelative;
  absl::SetFlagsUsageConfig(config);
  absl::SetProgramUsageMessage(usage);
  // coldfusectl's --version=N is a base version, which hides Abseil's --version; alone on
  // the command line it can only mean this program's.
  if (argc == 2 &&
      (absl::string_view(argv[1]) == "--version" || absl::string_view(argv[1]) == "-version")) {
    std::cout << VersionString(program);
    std::exit(0);
  }
  std::vector<char*> args = absl::ParseCommandLine(argc, argv);
  SetMinLogLevel(FlagOrExit(program, "log_level", absl::GetFlag(FLAGS_log_level), &ParseLogLevel));
  SetLogFormat(FlagOrExit(program, "log_format", absl::GetFlag(FLAGS_log_format), &ParseLogFormat));
  RouteGrpcLogs();
  return args;
}

}  // namespace coldfuse
