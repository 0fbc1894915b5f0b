// What coldfused, coldfuse-client and coldfusectl share at start-up: --help that lists the
// program's own flags, a truthful --version, --log_level and --log_format, and gRPC's log
// messages written by the same logger. Call InitProgram once, first thing in main.
#ifndef COLDFUSE_COMMON_PROGRAM_H_
#define COLDFUSE_COMMON_PROGRAM_H_

#include <string>
#include <vector>

#include "absl/strings/string_view.h"

namespace coldfuse {

// Sets the usage message and flag help (--help and --helpshort list the flags defined in
// `main_file`, the caller's __FILE__, and the log flags), parses the command line (exits
// for --help, --version and unknown flags, as absl::ParseCommandLine does; `PROGRAM
// --version` alone prints the version even where a flag named version hides Abseil's,
// as coldfusectl's base version does), applies
// --log_level and --log_format (an invalid value: a message on stderr and exit 2), and
// routes gRPC's log messages through CF_LOG's logger. Returns the positional arguments,
// argv[0] first. Not thread-safe: call it before starting threads.
std::vector<char*> InitProgram(int argc, char** argv, absl::string_view usage,
                               absl::string_view main_file);

// What --version prints: "coldfused (coldfuse) 0.1.0\nRelease build, configured at git
// commit 3e3030e\n". The build type is CMake's for this build; the commit is the one
// checked out when CMake configured the build folder (left out when there was none).
std::string VersionString(absl::string_view program);

// Sends gRPC's log messages to WriteLog (gRPC's DEBUG and INFO as info, ERROR as error),
// so they have the same format and obey MinLogLevel(). At info, gRPC's own verbosity
// (GRPC_VERBOSITY, default ERROR) still decides which it produces. InitProgram calls it;
// exposed for tests.
void RouteGrpcLogs();

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_PROGRAM_H_
