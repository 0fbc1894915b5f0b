// Bounds the upload streams (PushContribution) open at once, in total and per
// contributor, and ends the ones that cannot lead anywhere: a stream that has sent no
// message for `idle_timeout_ms`, and a stream whose round has closed. Each open stream
// can hold up to one message in gRPC's buffers plus one chunk in ours, so bounding
// their number bounds their memory (docs/operations.md, "Limits").
// Thread-safe. A sweeper thread runs every `sweep_ms`; it cancels streams with
// CallbackServerContext::TryCancel outside the lock (gRPC may run a reactor's callbacks
// inline), and Close() waits while its stream is being cancelled, so a context is never
// touched after its reactor is done.
#ifndef COLDFUSE_SERVER_SERVICE_UPLOAD_STREAMS_H_
#define COLDFUSE_SERVER_SERVICE_UPLOAD_STREAMS_H_

#include <grpcpp/grpcpp.h>

#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace coldfuse::service {

struct UploadStreamOptions {
  // Most upload streams open at once. Required (> 0).
  int max_streams = 200;
  // Most of them with one contributor's name. Default: 4.
  int max_per_contributor = 4;
  // A stream waiting this long for its next message is cancelled. Default: 300 s.
  int64_t idle_timeout_ms = 300'000;
  // How often idle and stale streams are looked for. Default: 1 s.
  int64_t sweep_ms = 1000;
};

class UploadStreams {
 public:
  // `open_round` says which round is open now (nullopt: none).
  UploadStreams(const UploadStreamOptions& options,
                std::function<std::optional<uint64_t>()> open_round);
  ~UploadStreams();  // stops the sweeper
  UploadStreams(const UploadStreams&) = delete;
  UploadStreams& operator=(const UploadStreams&) = delete;

  // A new stream; RESOURCE_EXHAUSTED at the total limit. The stream counts as waiting
  // for its first message.
  absl::StatusOr<uint64_t> Open(grpc::CallbackServerContext* ctx) ABSL_LOCKS_EXCLUDED(mu_);
  // Its header named `contributor` for `round`: RESOURCE_EXHAUSTED if that contributor
  // has max_per_contributor streams already.
  absl::Status Claim(uint64_t stream, const std::string& contributor, uint64_t round)
      ABSL_LOCKS_EXCLUDED(mu_);
  // The stream waits for the client's next message (idle from now), or got one.
  void Waiting(uint64_t stream) ABSL_LOCKS_EXCLUDED(mu_);
  void Working(uint64_t stream) ABSL_LOCKS_EXCLUDED(mu_);
  // The stream no longer counts (its reactor is finishing); later calls for it do
  // nothing. REQUIRES: called before the reactor is done with its context.
  void Close(uint64_t stream) ABSL_LOCKS_EXCLUDED(mu_);

  int open_streams() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t cancelled_idle() const ABSL_LOCKS_EXCLUDED(mu_);
  uint64_t cancelled_stale() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  struct Stream {
    grpc::CallbackServerContext* ctx;
    std::string contributor;
    std::optional<uint64_t> round;
    bool waiting = true;
    int64_t since_ms = 0;
    bool cancelled = false;
    bool cancelling = false;  // the sweeper is in TryCancel: Close() waits
  };
  void Sweep() ABSL_LOCKS_EXCLUDED(mu_);

  const UploadStreamOptions options_;
  const std::function<std::optional<uint64_t>()> open_round_;
  mutable absl::Mutex mu_;
  uint64_t next_id_ ABSL_GUARDED_BY(mu_) = 1;
  std::map<uint64_t, Stream> streams_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> per_contributor_ ABSL_GUARDED_BY(mu_);
  uint64_t cancelled_idle_ ABSL_GUARDED_BY(mu_) = 0;
  uint64_t cancelled_stale_ ABSL_GUARDED_BY(mu_) = 0;
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  std::thread sweeper_;
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_UPLOAD_STREAMS_H_
