// gRPC client helpers shared by coldfusectl and coldfuse-client: connecting, converting
// statuses, and the three tensor streams (pull a base, push a contribution, init).
// Every call has a deadline. Thread-safe (channels are).
#ifndef COLDFUSE_COMMON_RPC_CLIENT_H_
#define COLDFUSE_COMMON_RPC_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "coldfuse/v1/coldfuse.grpc.pb.h"
#include "common/tensor.h"

namespace coldfuse::rpc {

struct CallOptions {
  // Deadline of one call, streams included. Default: 10 minutes.
  std::chrono::milliseconds deadline{10 * 60 * 1000};
};

// An insecure channel to `target` ("host:port").
std::shared_ptr<grpc::Channel> Connect(const std::string& target);

// grpc::Status -> absl::Status (same codes); the message says which call failed.
absl::Status FromGrpc(const grpc::Status& s, absl::string_view call);

struct PulledBase {
  uint64_t version = 0;
  std::string model_spec;
  std::vector<HostTensor> tensors;
  std::string sha256;
};

// Pulls a base (the current one when `version` is unset), verifying its checksum.
absl::StatusOr<PulledBase> PullBase(const std::shared_ptr<grpc::Channel>& channel, std::optional<uint64_t> version,
                                    const CallOptions& options = {});

// Streams `tensors` (whose manifest must be header.manifest()) as a contribution.
absl::StatusOr<v1::ContributionReceipt> PushContribution(
    const std::shared_ptr<grpc::Channel>& channel, const v1::ContributionHeader& header,
    const std::vector<HostTensor>& tensors, const CallOptions& options = {});

// Stores base v0.
absl::StatusOr<v1::InitModelResponse> InitModel(const std::shared_ptr<grpc::Channel>& channel,
                                                const v1::InitHeader& header,
                                                const std::vector<HostTensor>& tensors,
                                                const CallOptions& options = {});

}  // namespace coldfuse::rpc

#endif  // COLDFUSE_COMMON_RPC_CLIENT_H_
