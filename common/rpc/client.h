// gRPC client helpers shared by coldfusectl and coldfuse-client: connecting, converting
// statuses, and the three tensor streams (pull a base, push a contribution, init).
// Every call has a deadline. Thread-safe (channels are).
#ifndef COLDFUSE_COMMON_RPC_CLIENT_H_
#define COLDFUSE_COMMON_RPC_CLIENT_H_

#include <grpcpp/grpcpp.h>

#include <atomic>
#include <chrono>
#include <functional>
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
  // Transfers (PullBaseTo, PushContribution): called on the calling thread with the
  // bytes done of the total as chunks go (a resumed transfer starts where it resumes; the
  // total is known once the header is). Default: none.
  std::function<void(uint64_t done, uint64_t total)> on_progress = nullptr;
  // Transfers: when this becomes true (e.g. set by a SIGINT handler) the call is
  // cancelled within a chunk (about a second at 1 MB/s) and returns CANCELLED saying so;
  // a resumable upload stays resumable. Default: none.
  const std::atomic<bool>* cancel = nullptr;
};

struct ConnectOptions {
  // TLS: ca_file empty means a plaintext channel (only for a server run --insecure).
  ClientTlsOptions tls;
  // Bearer token sent with every call; needs TLS. Default: empty.
  std::string token;
};

// A channel to `target` ("host:port"). INVALID_ARGUMENT for a target without a port
// (gRPC would quietly use 443), or a token without TLS; the TLS files are checked up front
// (errors name the file).
absl::StatusOr<std::shared_ptr<grpc::Channel>> Connect(const std::string& target,
                                                       const ConnectOptions& options);
// A plaintext channel without a token, for servers run --insecure.
std::shared_ptr<grpc::Channel> ConnectInsecure(const std::string& target);

// The token in `token_file` (surrounding whitespace dropped); when `token_file` is empty,
// the COLDFUSE_TOKEN environment variable; else empty.
absl::StatusOr<std::string> LoadToken(const std::string& token_file);

// Connect with TLS files and the token from `token_file` (see LoadToken): what the
// programs' --tls_ca/--tls_cert/--tls_key/--token_file flags ask for.
absl::StatusOr<std::shared_ptr<grpc::Channel>> ConnectWithFiles(const std::string& target,
                                                                const ClientTlsOptions& tls,
                                                                const std::string& token_file);

// grpc::Status -> absl::Status (same codes); the message says which call failed.
absl::Status FromGrpc(const grpc::Status& s, absl::string_view call);

// Contributor.GetRound: the open round, its base version and the model spec (once; the
// overload below retries). A non-empty `contributor` is checked against the token's
// name (PERMISSION_DENIED if they differ).
absl::StatusOr<v1::GetRoundResponse> GetRound(const std::shared_ptr<grpc::Channel>& channel,
                                              std::chrono::milliseconds deadline,
                                              const std::string& contributor = "");

// Supplies the bytes of the tensors of a manifest, in any order the caller asks for.
class TensorSource {
 public:
  virtual ~TensorSource() = default;
  // Bytes [offset, offset + length) of tensor `tensor`.
  virtual absl::Status Read(uint32_t tensor, uint64_t offset, uint64_t length,
                            std::string* out) = 0;
};

// A TensorSource over tensors in memory (which must outlive it).
class HostTensorSource final : public TensorSource {
 public:
  explicit HostTensorSource(const std::vector<HostTensor>& tensors) : tensors_(tensors) {}
  absl::Status Read(uint32_t tensor, uint64_t offset, uint64_t length, std::string* out) override;

 private:
  const std::vector<HostTensor>& tensors_;
};

// Receives a pulled base in order: Begin once, then every byte of every tensor.
class TensorSink {
 public:
  virtual ~TensorSink() = default;
  virtual absl::Status Begin(uint64_t version, const std::string& model_spec,
                             const v1::Manifest& manifest) = 0;
  virtual absl::Status Write(uint32_t tensor, uint64_t offset, absl::string_view data) = 0;
};

// The one retry rule for every client here: the transfers below (PullBaseTo,
// PushContribution) and the contributor daemon's loop. From what coldfused returns
// (docs/protocol.md, "Error codes") and what gRPC reports when a connection breaks:
//   kNow   UNAVAILABLE (server down or restarting, connection lost, storage busy),
//          DEADLINE_EXCEEDED (slow link or busy server; a resumable transfer continues),
//          ABORTED (an upload still attached to its broken stream, a resume position
//          that moved on, two inits at once: the server says "retry"), CANCELLED (the
//          server cancelled the call while shutting down). Transient: the same call again
//          after a short backoff.
//   kLater FAILED_PRECONDITION (no model yet, the round or base moved on, a round being
//          fused) and RESOURCE_EXHAUSTED (a per-round or per-day quota, a full disk).
//          Resending at once gets the same answer: only a change of state helps (an
//          operator's init, the next round, the next day, freed space), so the transfer
//          gives up at once and the daemon asks GetRound again after its backoff.
//   kNever everything else: INVALID_ARGUMENT, NOT_FOUND, ALREADY_EXISTS, PERMISSION_DENIED,
//          UNAUTHENTICATED, DATA_LOSS, OUT_OF_RANGE, UNIMPLEMENTED, and INTERNAL and UNKNOWN
//          (a failure inside the server or this process, e.g. LibTorch or a state folder it
//          cannot write, which repeating does not fix): the request, the data or the set-up
//          must change first.
enum class RetryWhen { kNever, kNow, kLater };
RetryWhen Retryability(const absl::Status& s);

struct RetryOptions {
  // Attempts in all (1 = no retry). Default: 1000.
  int max_attempts = 1000;
  // Keep retrying kNow failures for this long after the first one of a streak (an
  // attempt that moves data ends the streak): a server restart or a network outage up
  // to this long is ridden out. Default: 120 s.
  std::chrono::milliseconds ride_out{120000};
  // Waits between attempts double from this up to max_backoff; before each attempt the
  // channel is also given until the server answers again (at most the ride-out left),
  // so an attempt starts as soon as the server is back. Default: 0.2 s, 1 s.
  std::chrono::milliseconds initial_backoff{200};
  std::chrono::milliseconds max_backoff{1000};
};

// Channel arguments of every client channel: reconnect at least every second while the
// server is unreachable (gRPC's default backoff grows to 2 minutes, which left clients
// stuck in CONNECTING for 13 s after a restart), keepalive pings to notice a dead
// server, and 4 MiB messages.
grpc::ChannelArguments ClientChannelArguments();

// Calls `call` (an idempotent RPC: a read, or a resumable step) until it succeeds, fails
// with an error that retrying cannot fix, or `retry` gives up (see RetryOptions).
// `call` gets a fresh context each time (deadline set from `options`).
absl::Status RetryIdempotent(const std::shared_ptr<grpc::Channel>& channel,
                             const CallOptions& options, const RetryOptions& retry,
                             const std::function<absl::Status(grpc::ClientContext*)>& call);

// Contributor.RecordEvaluation, retried like GetRound (recording the same score again
// replaces it, so a retry is harmless). Returns the stored evaluation.
absl::StatusOr<v1::Evaluation> RecordEvaluation(const std::shared_ptr<grpc::Channel>& channel,
                                                const v1::Evaluation& evaluation,
                                                std::chrono::milliseconds deadline,
                                                const RetryOptions& retry = {});

// GetRound, retried.
absl::StatusOr<v1::GetRoundResponse> GetRound(const std::shared_ptr<grpc::Channel>& channel,
                                              std::chrono::milliseconds deadline,
                                              const RetryOptions& retry);

// What a transfer did, for progress reports and tests.
struct TransferStats {
  int attempts = 0;
  // Tensor bytes sent or received over the wire, all attempts together (more than the
  // payload only by what was in flight, not yet stored, when a stream broke).
  uint64_t bytes_on_wire = 0;
};

struct PulledBase {
  uint64_t version = 0;
  std::string model_spec;
  std::vector<HostTensor> tensors;
  std::string sha256;
};

struct PullResult {
  uint64_t version = 0;
  std::string model_spec;
  v1::Manifest manifest;
  std::string sha256;
  uint64_t bytes = 0;
};

// Pulls a base (the current one when `version` is unset) into `sink`, verifying its
// checksum. A stream broken by a kNow error is resumed where it stopped (same version),
// up to retry.max_attempts.
absl::StatusOr<PullResult> PullBaseTo(const std::shared_ptr<grpc::Channel>& channel,
                                      std::optional<uint64_t> version, TensorSink* sink,
                                      const CallOptions& options = {},
                                      const RetryOptions& retry = {},
                                      TransferStats* stats = nullptr);

// Pulls a base into memory.
absl::StatusOr<PulledBase> PullBase(const std::shared_ptr<grpc::Channel>& channel,
                                    std::optional<uint64_t> version,
                                    const CallOptions& options = {});

// Streams a contribution whose bytes come from `source` (in header.manifest()'s order
// and dtypes). With header.upload_id set, a stream broken by a kNow error is resumed
// from what the server stored (GetUpload), up to retry.max_attempts; without, it is sent
// once.
absl::StatusOr<v1::ContributionReceipt> PushContribution(
    const std::shared_ptr<grpc::Channel>& channel, const v1::ContributionHeader& header,
    TensorSource* source, const CallOptions& options = {}, const RetryOptions& retry = {},
    TransferStats* stats = nullptr);

// Same, from tensors in memory.
absl::StatusOr<v1::ContributionReceipt> PushContribution(
    const std::shared_ptr<grpc::Channel>& channel, const v1::ContributionHeader& header,
    const std::vector<HostTensor>& tensors, const CallOptions& options = {});

// Stores base v0.
absl::StatusOr<v1::InitModelResponse> InitModel(const std::shared_ptr<grpc::Channel>& channel,
                                                const v1::InitHeader& header, TensorSource* source,
                                                const CallOptions& options = {});
absl::StatusOr<v1::InitModelResponse> InitModel(const std::shared_ptr<grpc::Channel>& channel,
                                                const v1::InitHeader& header,
                                                const std::vector<HostTensor>& tensors,
                                                const CallOptions& options = {});

// A random upload id (32 hex digits).
std::string NewUploadId();

}  // namespace coldfuse::rpc

#endif  // COLDFUSE_COMMON_RPC_CLIENT_H_
