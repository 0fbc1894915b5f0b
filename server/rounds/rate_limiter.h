// Token buckets per key (a contributor) and in total, for things done on a client's
// behalf that must stay bounded however often it asks: audit records and log lines of
// rejected requests. A refused event is counted, and the count is handed to the next
// allowed event of that key so it can say how many went unrecorded. Thread-safe.
#ifndef COLDFUSE_SERVER_ROUNDS_RATE_LIMITER_H_
#define COLDFUSE_SERVER_ROUNDS_RATE_LIMITER_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "absl/strings/string_view.h"
#include "absl/synchronization/mutex.h"

namespace coldfuse::rounds {

struct RateLimiterOptions {
  // Events one key may have at once, and per second after that. Default: 10, 1/min.
  double burst = 10;
  double per_second = 1.0 / 60;
  // The same for all keys together. Default: 100, 1/s.
  double total_burst = 100;
  double total_per_second = 1;
  // Keys tracked at most; past it, idle keys (full buckets) are forgotten, and new keys
  // share one bucket until some are. Default: 10000.
  size_t max_keys = 10000;
};

class RateLimiter {
 public:
  explicit RateLimiter(const RateLimiterOptions& options) : options_(options) {}

  // Whether one more event of `key` at `now_ms` is allowed. If allowed, *dropped_before
  // is the number of this key's events refused since its last allowed one.
  bool Allow(absl::string_view key, int64_t now_ms, uint64_t* dropped_before)
      ABSL_LOCKS_EXCLUDED(mu_);
  // Events refused so far, all keys.
  uint64_t dropped_total() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Bucket {
    double tokens = 0;
    int64_t last_ms = 0;
    uint64_t dropped = 0;
  };
  static bool Take(Bucket* b, double burst, double rate, int64_t now_ms);
  static void Refill(Bucket* b, double burst, double rate, int64_t now_ms);

  const RateLimiterOptions options_;
  mutable absl::Mutex mu_;
  std::unordered_map<std::string, Bucket> keys_ ABSL_GUARDED_BY(mu_);
  Bucket overflow_ ABSL_GUARDED_BY(mu_);  // new keys while keys_ is full
  Bucket total_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t dropped_total_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace coldfuse::rounds

#endif  // COLDFUSE_SERVER_ROUNDS_RATE_LIMITER_H_
