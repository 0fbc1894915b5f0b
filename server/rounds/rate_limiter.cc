#include "server/rounds/rate_limiter.h"

#include <algorithm>

namespace coldfuse::rounds {

void RateLimiter::Refill(Bucket* b, double burst, double rate, int64_t now_ms) {
  if (now_ms > b->last_ms) {
    b->tokens = std::min(burst, b->tokens + static_cast<double>(now_ms - b->last_ms) / 1000 * rate);
    b->last_ms = now_ms;
  }
}

bool RateLimiter::Take(Bucket* b, double burst, double rate, int64_t now_ms) {
  Refill(b, burst, rate, now_ms);
  if (b->tokens < 1) return false;
  b->tokens -= 1;
  return true;
}

bool RateLimiter::Allow(absl::string_view key, int64_t now_ms, uint64_t* dropped_before) {
  absl::MutexLock l(&mu_);
  if (!started_) {
    started_ = true;
    total_ = {options_.total_burst, now_ms, 0};
    overflow_ = {options_.burst, now_ms, 0};
  }
  auto it = keys_.find(std::string(key));
  if (it == keys_.end() && keys_.size() >= options_.max_keys) {
    // Forget keys whose buckets have refilled: they hold no state worth keeping.
    for (auto k = keys_.begin(); k != keys_.end();) {
      Refill(&k->second, options_.burst, options_.per_second, now_ms);
      if (k->second.tokens >= options_.burst && k->second.dropped == 0) {
        k = keys_.erase(k);
      } else {
        ++k;
      }
    }
  }
  Bucket* b = &overflow_;
  if (it != keys_.end()) {
    b = &it->second;
  } else if (keys_.size() < options_.max_keys) {
    b = &keys_.emplace(std::string(key), Bucket{options_.burst, now_ms, 0}).first->second;
  }
  // The key's bucket first: a key over its own rate must not drain the total.
  Refill(&total_, options_.total_burst, options_.total_per_second, now_ms);
  if (total_.tokens < 1 || !Take(b, options_.burst, options_.per_second, now_ms)) {
    ++b->dropped;
    ++dropped_total_;
    return false;
  }
  total_.tokens -= 1;
  if (dropped_before != nullptr) *dropped_before = b->dropped;
  b->dropped = 0;
  return true;
}

uint64_t RateLimiter::dropped_total() const {
  absl::MutexLock l(&mu_);
  return dropped_total_;
}

}  // namespace coldfuse::rounds
