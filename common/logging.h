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

// Messages below this level are dropped. Default: kInfo.
void SetMinLogLevel(LogLevel level);
LogLevel MinLogLevel();

}  // namespace coldfuse

#define CF_LOG_LEVEL_INFO ::coldfuse::LogLevel::kInfo
#define CF_LOG_LEVEL_WARNING ::coldfuse::LogLevel::kWarning
#define CF_LOG_LEVEL_ERROR ::coldfuse::LogLevel::kError
#define CF_LOG(level)                                         \
  if (CF_LOG_LEVEL_##level < ::coldfuse::MinLogLevel()) {     \
  } else                                                      \
    ::coldfuse::LogMessage(CF_LOG_LEVEL_##level, __FILE__, __LINE__).stream()

#endif  // COLDFUSE_COMMON_LOGGING_H_
