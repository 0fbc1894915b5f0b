#include "common/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"

namespace coldfuse {
namespace {

constexpr int kBarWidth = 24;

std::string Amount(uint64_t n, Progress::Unit unit) {
  if (unit == Progress::Unit::kSteps) return absl::StrCat(n);
  const double mb = static_cast<double>(n) / 1e6;
  return mb >= 1000 ? absl::StrFormat("%.2f GB", mb / 1000) : absl::StrFormat("%.1f MB", mb);
}

std::string Duration(double s) {
  if (!std::isfinite(s) || s < 0) return "?";
  const int64_t t = static_cast<int64_t>(std::ceil(s));
  if (t >= 3600) return absl::StrFormat("%dh%02dm", t / 3600, (t % 3600) / 60);
  if (t >= 60) return absl::StrFormat("%dm%02ds", t / 60, t % 60);
  return absl::StrFormat("%ds", t);
}

// "12.3 MB/s" or "4.56 steps/s" for `amount` in `seconds` (empty when either is 0).
std::string Rate(uint64_t amount, double seconds, Progress::Unit unit) {
  if (seconds <= 0 || amount == 0) return "";
  const double r = static_cast<double>(amount) / seconds;
  return unit == Progress::Unit::kBytes ? absl::StrFormat("%.1f MB/s", r / 1e6)
                                        : absl::StrFormat("%.2f steps/s", r);
}

bool WantsBar(const Progress::Options& o) {
  if (const char* env = std::getenv("COLDFUSE_PROGRESS")) {
    if (std::string(env) == "plain") return false;
    if (std::string(env) == "bar") return true;
  }
  if (o.bar.has_value()) return *o.bar;
  return ::isatty(o.fd) == 1;
}

void WriteAll(int fd, const std::string& s) {
  size_t off = 0;
  while (off < s.size()) {
    const ssize_t n = ::write(fd, s.data() + off, s.size() - off);
    if (n <= 0) return;  // progress is best effort
    off += static_cast<size_t>(n);
  }
}

}  // namespace

Progress::Progress(std::string label, uint64_t total, Unit unit, Options options)
    : label_(std::move(label)),
      total_(total),
      unit_(unit),
      options_(options),
      bar_(WantsBar(options)),
      start_(std::chrono::steady_clock::now()) {}

Progress::Progress(std::string label, uint64_t total, Unit unit)
    : Progress(std::move(label), total, unit, Options{}) {}

Progress::~Progress() {
  if (bar_ && drew_ && !finished_) WriteAll(options_.fd, "\r\x1b[K");
}

std::string Progress::Line(uint64_t done, double seconds, absl::string_view detail,
                           bool with_bar) const {
  std::string out = label_;
  const double frac =
      total_ > 0 ? std::min(1.0, static_cast<double>(done) / static_cast<double>(total_)) : 0;
  if (with_bar && total_ > 0) {
    const int filled = static_cast<int>(frac * kBarWidth);
    absl::StrAppend(&out, " [", std::string(filled, '#'), std::string(kBarWidth - filled, '.'),
                    "]");
  }
  if (total_ > 0) {
    absl::StrAppendFormat(&out, " %3.0f%% %s/%s", frac * 100, Amount(done, unit_),
                          Amount(total_, unit_));
  } else {
    absl::StrAppend(&out, " ", Amount(done, unit_));
  }
  if (unit_ == Unit::kSteps) absl::StrAppend(&out, " steps");
  const uint64_t counted = done - std::min(done, first_.value_or(0));
  const double rate = seconds > 0 ? static_cast<double>(counted) / seconds : 0;
  if (rate > 0) absl::StrAppend(&out, ", ", Rate(counted, seconds, unit_));
  if (!detail.empty()) absl::StrAppend(&out, ", ", detail);
  if (total_ > 0 && done < total_) {
    absl::StrAppend(&out, ", ETA ",
                    rate > 0 ? Duration(static_cast<double>(total_ - done) / rate) : "?");
  }
  return out;
}

void Progress::Update(uint64_t done, absl::string_view detail) {
  if (finished_) return;
  const auto now = std::chrono::steady_clock::now();
  if (!first_.has_value()) {
    first_ = done;
    start_ = now;
  }
  last_done_ = done;
  const double secs = std::chrono::duration<double>(now - start_).count();
  if (bar_) {
    if (drew_ && now - last_draw_ < std::chrono::milliseconds(100) && done < total_) return;
    last_draw_ = now;
    drew_ = true;
    // \r and erase-to-end-of-line: the bar is redrawn in place.
    WriteAll(options_.fd, absl::StrCat("\r", Line(done, secs, detail, true), "\x1b[K"));
    return;
  }
  const double pct =
      total_ > 0 ? 100.0 * static_cast<double>(done) / static_cast<double>(total_) : 0;
  const bool by_time = !drew_ || now - last_draw_ >= options_.interval;
  const bool by_percent = total_ > 0 && pct >= last_percent_logged_ + options_.percent;
  if (!by_time && !by_percent) return;
  last_draw_ = now;
  drew_ = true;
  if (total_ > 0) last_percent_logged_ = std::floor(pct / options_.percent) * options_.percent;
  CF_LOG(INFO) << Line(done, secs, detail, false);
}

void Progress::Finish(absl::string_view detail) {
  if (finished_) return;
  finished_ = true;
  const double secs =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
  const uint64_t counted = last_done_ - std::min(last_done_, first_.value_or(0));
  std::string line =
      absl::StrCat(label_, ": ", Amount(last_done_, unit_), unit_ == Unit::kSteps ? " steps" : "",
                   " in ", absl::StrFormat("%.1f s", secs));
  const std::string rate = Rate(counted, secs, unit_);
  if (!rate.empty()) absl::StrAppend(&line, " (", rate, ")");
  if (!detail.empty()) absl::StrAppend(&line, ", ", detail);
  if (bar_ && drew_) WriteAll(options_.fd, "\r\x1b[K");
  CF_LOG(INFO) << line;
}

}  // namespace coldfuse
