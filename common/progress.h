// Progress of one long operation (a pull, a push, training) for the person waiting on it.
// On a terminal: one bar redrawn in place (at most 10 times a second) with the share
// done, the amounts, the rate and an ETA. Without one (a log file, systemd's journal):
// never a bar, but a plain log line every few seconds or every 10%, whichever comes
// first. Not thread-safe: one per operation, updated from one thread.
#ifndef COLDFUSE_COMMON_PROGRESS_H_
#define COLDFUSE_COMMON_PROGRESS_H_

#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "absl/strings/string_view.h"

namespace coldfuse {

class Progress {
 public:
  enum class Unit { kBytes, kSteps };
  struct Options {
    // Where a bar is drawn (a file descriptor). Default: stderr.
    int fd = 2;
    // Draw a bar: unset means "if `fd` is a terminal" (COLDFUSE_PROGRESS=plain or =bar
    // in the environment overrides both).
    std::optional<bool> bar;
    // Without a bar: a line at most this often, and at least every `percent` percent
    // (or this often when the total is unknown). Default: 5 s, 10%.
    std::chrono::milliseconds interval{5000};
    double percent = 10;
  };

  // `label` says what runs, e.g. "pull base v3". `total` 0: not known in advance.
  Progress(std::string label, uint64_t total, Unit unit, Options options);
  Progress(std::string label, uint64_t total, Unit unit);
  // Erases a bar (without a summary) if Finish was not called.
  ~Progress();
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  // `done` so far (of the total), and a short detail shown after the rate (e.g.
  // "loss 0.4321"). Amounts done before the first update (a resumed transfer) do not count
  // toward the rate.
  void Update(uint64_t done, absl::string_view detail = "");
  // The total, when it becomes known after the start (a pull learns it from the header).
  void SetTotal(uint64_t total) { total_ = total; }
  // A transfer's progress callback (rpc::CallOptions::on_progress) feeding this: the
  // total, then the bytes done. `this` must outlive the transfer.
  std::function<void(uint64_t done, uint64_t total)> TransferHook() {
    return [this](uint64_t done, uint64_t total) {
      SetTotal(total);
      Update(done);
    };
  }
  // Ends the operation: the bar is replaced by (or the log gets) one summary line with the
  // overall rate and `detail`.
  void Finish(absl::string_view detail = "");

  bool drawing_bar() const { return bar_; }
  // The text of a line for these figures (for tests): label, percent, amounts, rate, ETA.
  std::string Line(uint64_t done, double seconds, absl::string_view detail, bool with_bar) const;

 private:
  std::string label_;
  uint64_t total_;
  Unit unit_;
  Options options_;
  bool bar_ = false;
  bool finished_ = false;
  bool drew_ = false;
  std::chrono::steady_clock::time_point start_;
  std::optional<uint64_t> first_;  // `done` at the first update
  uint64_t last_done_ = 0;
  std::chrono::steady_clock::time_point last_draw_{};
  double last_percent_logged_ = 0;
};

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_PROGRESS_H_
