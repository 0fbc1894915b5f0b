// Minimal leveled logging to stderr: CF_LOG(INFO) << "message";
// Thread-safe: each message is written with a single write.
#ifndef COLDFUSE_COMMON_LOGGING_H_
#define COLDFUSE_COMMON_LOGGING_H_

#include <sstream>

#include "absl/strings/string_view.h"

namespace coldfuse {

enum class LogLevel { kInfo, kWarning, kError };

class LogMessage {
 public:
  LogMessage(LogLevel level, const char* file, int line);
  ~LogMessage();
  std::ostream& stream() { return stream_; }

 private:
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
