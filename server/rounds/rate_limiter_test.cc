#include "server/rounds/rate_limiter.h"

#include <gtest/gtest.h>

#include <string>

#include "absl/strings/str_cat.h"

namespace coldfuse::rounds {
namespace {

int AllowedOf(RateLimiter* r, const std::string& key, int tries, int64_t now_ms) {
  int allowed = 0;
  for (int i = 0; i < tries; ++i) allowed += r->Allow(key, now_ms, nullptr) ? 1 : 0;
  return allowed;
}

TEST(RateLimiterTest, AKeyGetsItsBurstThenItsRateAndHearsWhatWasDropped) {
  RateLimiter r({.burst = 3, .per_second = 1, .total_burst = 100, .total_per_second = 100});
  EXPECT_EQ(AllowedOf(&r, "mallory", 50, 1000), 3);
  EXPECT_EQ(r.dropped_total(), 47u);
  uint64_t dropped = 0;
  EXPECT_FALSE(r.Allow("mallory", 1500, &dropped));  // half a token
  ASSERT_TRUE(r.Allow("mallory", 2000, &dropped));
  EXPECT_EQ(dropped, 48u);
  ASSERT_TRUE(r.Allow("mallory", 3000, &dropped));
  EXPECT_EQ(dropped, 0u);
  // Another key is unaffected.
  EXPECT_EQ(AllowedOf(&r, "alice", 3, 3000), 3);
}

TEST(RateLimiterTest, TheTotalBoundsManyKeys) {
  RateLimiter r({.burst = 2, .per_second = 1, .total_burst = 10, .total_per_second = 1});
  int allowed = 0;
  for (int k = 0; k < 100; ++k) allowed += AllowedOf(&r, absl::StrCat("name", k), 2, 0);
  EXPECT_EQ(allowed, 10);
  // One second later: one more, whoever asks.
  EXPECT_EQ(AllowedOf(&r, "fresh", 5, 1000), 1);
}

TEST(RateLimiterTest, KeysAreBoundedAndIdleOnesForgotten) {
  RateLimiter r(
      {.burst = 1, .per_second = 1, .total_burst = 1e9, .total_per_second = 1e9, .max_keys = 4});
  for (int k = 0; k < 4; ++k) EXPECT_TRUE(r.Allow(absl::StrCat("k", k), 0, nullptr));
  // Full: new keys share one bucket.
  EXPECT_TRUE(r.Allow("new1", 0, nullptr));
  EXPECT_FALSE(r.Allow("new2", 0, nullptr));
  // Once the old keys have refilled, they are forgotten and new keys get their own.
  EXPECT_TRUE(r.Allow("new3", 5000, nullptr));
  EXPECT_TRUE(r.Allow("new4", 5000, nullptr));
}

}  // namespace
}  // namespace coldfuse::rounds
