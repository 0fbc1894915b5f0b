#include "common/logging.h"

#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <ctime>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace coldfuse {
namespace {
std::atomic<LogLevel> g_min_level{LogLevel::kInfo};
std::atomic<LogFormat> g_format{LogFormat::kText};

absl::string_view LevelName(LogLevel level) {
  switch (level) {
    case LogLevel::kInfo:
      return "INFO";
    case LogLevel::kWarning:
      return "WARNING";
    case LogLevel::kError:
      return "ERROR";
  }
  return "UNKNOWN";
}

// "2026-11-29T12:00:00.123Z"
std::string FormatTime(int64_t unix_ms) {
  int64_t seconds = unix_ms / 1000, ms = unix_ms % 1000;
  if (ms < 0) {
    ms += 1000;
    --seconds;
  }
  std::time_t t = static_cast<std::time_t>(seconds);
  std::tm tm;
  gmtime_r(&t, &tm);
  char buf[32];
  std::strftime(buf, sizeof(buf), "%Y-%m-%dT%H:%M:%S", &tm);
  return absl::StrFormat("%s.%03dZ", buf, ms);
}

// Length of the valid UTF-8 sequence at s[i] (1-4), or 0 if there is none: overlong
// forms, surrogates and code points past U+10FFFF are invalid.
size_t Utf8Length(absl::string_view s, size_t i, uint32_t* cp) {
  const uint8_t c = static_cast<uint8_t>(s[i]);
  size_t n;
  uint32_t v;
  if (c < 0x80) {
    *cp = c;
    return 1;
  } else if ((c & 0xE0) == 0xC0) {
    n = 2, v = c & 0x1F;
  } else if ((c & 0xF0) == 0xE0) {
    n = 3, v = c & 0x0F;
  } else if ((c & 0xF8) == 0xF0) {
    n = 4, v = c & 0x07;
  } else {
    return 0;
  }
  if (i + n > s.size()) return 0;
  for (size_t k = 1; k < n; ++k) {
    const uint8_t b = static_cast<uint8_t>(s[i + k]);
    if ((b & 0xC0) != 0x80) return 0;
    v = (v << 6) | (b & 0x3F);
  }
  static constexpr uint32_t kMin[] = {0, 0, 0x80, 0x800, 0x10000};
  if (v < kMin[n] || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) return 0;
  *cp = v;
  return n;
}

// Appends `s` as a JSON string literal. Beyond RFC 8259's required escapes, DEL, the C1
// controls and U+2028/U+2029 are escaped too, so no log viewer or JavaScript reader
// interprets them; each invalid UTF-8 byte becomes U+FFFD.
void AppendJsonString(absl::string_view s, std::string* out) {
  out->push_back('"');
  for (size_t i = 0; i < s.size();) {
    uint32_t cp = 0;
    const size_t n = Utf8Length(s, i, &cp);
    if (n == 0) {
      out->append("\xEF\xBF\xBD");
      ++i;
      continue;
    }
    switch (cp) {
      case '"':
        out->append("\\\"");
        break;
      case '\\':
        out->append("\\\\");
        break;
      case '\n':
        out->append("\\n");
        break;
      case '\r':
        out->append("\\r");
        break;
      case '\t':
        out->append("\\t");
        break;
      default:
        if (cp < 0x20 || (cp >= 0x7F && cp <= 0x9F) || cp == 0x2028 || cp == 0x2029) {
          absl::StrAppendFormat(out, "\\u%04x", cp);
        } else {
          out->append(s.data() + i, n);
        }
    }
    i += n;
  }
  out->push_back('"');
}

absl::string_view BaseName(absl::string_view path) {
  const size_t slash = path.rfind('/');
  if (slash != absl::string_view::npos) path.remove_prefix(slash + 1);
  return path;
}

}  // namespace

void SetMinLogLevel(LogLevel level) { g_min_level = level; }
LogLevel MinLogLevel() { return g_min_level; }
void SetLogFormat(LogFormat format) { g_format = format; }
LogFormat GetLogFormat() { return g_format; }

absl::StatusOr<LogLevel> ParseLogLevel(absl::string_view name) {
  if (name == "info") return LogLevel::kInfo;
  if (name == "warning") return LogLevel::kWarning;
  if (name == "error") return LogLevel::kError;
  return absl::InvalidArgumentError(
      absl::StrCat("log level '", name, "' is not one of info, warning, error"));
}

absl::StatusOr<LogFormat> ParseLogFormat(absl::string_view name) {
  if (name == "text") return LogFormat::kText;
  if (name == "json") return LogFormat::kJson;
  return absl::InvalidArgumentError(
      absl::StrCat("log format '", name, "' is not one of text, json"));
}

std::string FormatLogRecord(LogFormat format, const LogRecord& record) {
  const absl::string_view file = BaseName(record.file);
  std::string out;
  if (format == LogFormat::kText) {
    out = absl::StrCat(LevelName(record.level).substr(0, 1), " ", FormatTime(record.unix_ms), " ",
                       file, ":", record.line, "] ", record.message, "\n");
    return out;
  }
  out.reserve(record.message.size() + file.size() + 96);
  absl::StrAppend(&out, "{\"time\":\"", FormatTime(record.unix_ms), "\",\"level\":\"",
                  LevelName(record.level), "\",\"file\":");
  AppendJsonString(file, &out);
  absl::StrAppend(&out, ",\"line\":", record.line, ",\"msg\":");
  AppendJsonString(record.message, &out);
  out.append("}\n");
  return out;
}

void WriteLog(LogLevel level, absl::string_view file, int line, absl::string_view message) {
  if (level < MinLogLevel()) return;
  const int64_t now_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count();
  const std::string s = FormatLogRecord(GetLogFormat(), {level, now_ms, file, line, message});
  ssize_t unused = ::write(STDERR_FILENO, s.data(), s.size());
  (void)unused;
}

LogMessage::LogMessage(LogLevel level, const char* file, int line)
    : level_(level), file_(file), line_(line) {}

// CF_LOG has already checked the level; WriteLog checks it again, harmlessly.
LogMessage::~LogMessage() { WriteLog(level_, file_, line_, stream_.str()); }

}  // namespace coldfuse
