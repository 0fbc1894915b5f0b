#include "common/rpc/client.h"

#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "gtest/gtest.h"

namespace coldfuse::rpc {
namespace {

// Every status code, and when a client here tries again after it.
TEST(RetryabilityTest, OneRuleForEveryCode) {
  using absl::StatusCode;
  const std::vector<std::pair<StatusCode, RetryWhen>> table = {
      // Transient: the connection or the server went away, or the server says "retry".
      {StatusCode::kUnavailable, RetryWhen::kNow},
      {StatusCode::kDeadlineExceeded, RetryWhen::kNow},
      {StatusCode::kAborted, RetryWhen::kNow},
      {StatusCode::kCancelled, RetryWhen::kNow},
      // Only a change on the server helps: no model yet, the round moved on, a quota.
      {StatusCode::kFailedPrecondition, RetryWhen::kLater},
      {StatusCode::kResourceExhausted, RetryWhen::kLater},
      // Something must be fixed first.
      {StatusCode::kInvalidArgument, RetryWhen::kNever},
      {StatusCode::kNotFound, RetryWhen::kNever},
      {StatusCode::kAlreadyExists, RetryWhen::kNever},
      {StatusCode::kPermissionDenied, RetryWhen::kNever},
      {StatusCode::kUnauthenticated, RetryWhen::kNever},
      {StatusCode::kDataLoss, RetryWhen::kNever},
      {StatusCode::kOutOfRange, RetryWhen::kNever},
      {StatusCode::kUnimplemented, RetryWhen::kNever},
      {StatusCode::kInternal, RetryWhen::kNever},
      {StatusCode::kUnknown, RetryWhen::kNever},
      {StatusCode::kOk, RetryWhen::kNever},
  };
  for (const auto& [code, when] : table) {
    EXPECT_EQ(Retryability(absl::Status(code, "x")), when) << absl::StatusCodeToString(code);
  }
}

// A quota answer from the server, converted as every call here converts it, is not
// resent at once.
TEST(RetryabilityTest, AQuotaFromTheServerWaitsForLater) {
  absl::Status quota =
      FromGrpc(grpc::Status(grpc::StatusCode::RESOURCE_EXHAUSTED, "the limit is 3 per round"),
               "PushContribution");
  EXPECT_EQ(quota.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(Retryability(quota), RetryWhen::kLater);
  EXPECT_EQ(Retryability(FromGrpc(grpc::Status(grpc::StatusCode::UNAVAILABLE, "down"), "GetRound")),
            RetryWhen::kNow);
}

}  // namespace
}  // namespace coldfuse::rpc
