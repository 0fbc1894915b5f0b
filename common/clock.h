// Wall-clock time behind an interface, so round-policy tests can use a fake clock.
// Thread-safe.
#ifndef COLDFUSE_COMMON_CLOCK_H_
#define COLDFUSE_COMMON_CLOCK_H_

#include <atomic>
#include <cstdint>

namespace coldfuse {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual int64_t NowUnixMs() const = 0;
};

// The system clock.
Clock* SystemClock();

// A clock that only moves when told; for tests.
class FakeClock final : public Clock {
 public:
  explicit FakeClock(int64_t start_ms) : now_ms_(start_ms) {}
  int64_t NowUnixMs() const override { return now_ms_.load(); }
  void AdvanceMs(int64_t ms) { now_ms_ += ms; }

 private:
  std::atomic<int64_t> now_ms_;
};

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_CLOCK_H_
