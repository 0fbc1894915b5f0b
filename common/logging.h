// Minimal leveled logging to stderr: CF_LOG(INFO) << "message";
// Lines are plain text (`I 2026-11-29T12:00:00.123Z file.cc:12] message`) or one JSON
// object each (SetLogFormat). Thread-safe: each line is written with a single write.
#ifndef COLDFUSE_COMMON_LOGGING_H_
#define COLDFUSE_COMMON_LOGGING_H_

#include <cstdint>
#include <sstream>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace coldfuse {

enum class LogLevel { kInfo, kWarning, kError };
enum class LogFormat { kText, kJson };

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
  const LogLevel level_;
  const char* const file_;
  const int line_;
  std::ostringstream stream_;
};

namespace log_internal {
// Makes `stream << ...` a void expression for CF_LOG's `?:`. `&` binds looser than `<<`
// and tighter than `?:`, so the whole message chain is its operand.
struct Voidify {
  void operator&(std::ostream&) {}
};
}  // namespace log_internal

// Messages below this level are dropped. Default: kInfo.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();

// How lines are written. Default: kText.
void SetLogFormat(LogFormat format);
LogFormat GetLogFormat();

// "info", "warning", "error" / "text", "json" (the --log_level and --log_format values);
// INVALID_ARGUMENT naming the accepted values otherwise.
absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name);
absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name);

// One log line, before formatting.
struct LogRecord {
  LogLevel level = LogLevel::kInfo;
  int64_t unix_ms = 0;
  absl::string_view file;  // a path; only its last component is written
  int line = 0;
  absl::string_view message;
};

// The line (with its '\n') that `record` is written as. JSON: {"time", "level", "file",
// "line", "msg"} on one line; control characters, quotes and backslashes are escaped and
// invalid UTF-8 becomes U+FFFD, so any message makes exactly one valid JSON line.
std::string FormatLogRecord(LogFormat format, const LogRecord& record);

// Writes one message at the current time, unless below MinLogLevel(); for messages that
// come from another logging system (gRPC's).
void WriteLog(LogLevel level, absl::string_view file, int line, absl::string_view message);

}  // namespace coldfuse

#define CF_LOG_LEVEL_INFO ::coldfuse::LogLevel::kInfo
#define CF_LOG_LEVEL_WARNING ::coldfuse::LogLevel::kWarning
#define CF_LOG_LEVEL_ERROR ::coldfuse::LogLevel::kError
// An expression, not an `if`: it cannot capture the `else` of an enclosing unbraced `if`
// (the glog/Abseil shape). The message is formatted only when it is logged.
#define CF_LOG(level)                                \
  (CF_LOG_LEVEL_##level < ::coldfuse::MinLogLevel()) \
      ? (void)0                                      \
      : ::coldfuse::log_internal::Voidify() &        \
            ::coldfuse::LogMessage(CF_LOG_LEVEL_##level, __FILE__, __LINE__).stream()

#endif  // COLDFUSE_COMMON_LOGGING_H_
