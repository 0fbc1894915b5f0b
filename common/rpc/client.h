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
#include "common/rpc/tls.h"
#include "common/tensor.h"

namespace coldfuse::rpc {

struct CallOptions {
  // Deadline of one call, streams included. Default: 10 minutes.
  std::chrono::milliseconds deadline{10 * 60 * 1000};
};

struct ConnectOptions {
  // TLS: ca_file empty means a plaintext channel (only for a server run --insecure).
  ClientTlsOptions tls;
  // Bearer token sent with every call; needs TLS. Default: empty.
  std::string token;
};

// A channel to `target` ("host:port"). INVALID_ARGUMENT for a token without TLS; the TLS
// files are checked up front (errors name the file).
absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const std::string& target,
                                                       const ConnectOptions& options);
// A plaintext channel without a token, for servers run --insecure.
std::shared_ptr<grpc::Channel> ConnectInsecure(const std::string& target);

// The token in `token_file` (surrounding whitespace dropped); when `token_file` is empty,
// the COLDFUSE_TOKEN environment variable; else empty.
absl::StatusOr<std::string> LoadToken(const std::string& token_file);

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
