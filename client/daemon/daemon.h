// The contributor loop: wait for a round it has not contributed to, pull its base (only
// when newer than the cached one), fine-tune locally, push the shared tensors, repeat.
// Survives server restarts (retries with backoff) and its own crashes (state folder).
// Not thread-safe; Stop() may be called from another thread.
#ifndef COLDFUSE_CLIENT_DAEMON_DAEMON_H_
#define COLDFUSE_CLIENT_DAEMON_DAEMON_H_

#include <atomic>
#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "client/daemon/encoding.h"
#include "client/daemon/state.h"
#include "client/daemon/task.h"
#include "common/rpc/client.h"
#include "common/rpc/tls.h"

namespace coldfuse::daemon {

struct DaemonOptions {
  // This contributor's name, as shown in status (with tokens, the server uses the
  // token's name instead). Required.
  std::string contributor;
  // Task name reported with each contribution. Default: empty.
  std::string task;
  // The server (host:port) and TLS settings the channel uses: when the server cannot be
  // reached, the daemon checks them itself (rpc::DiagnoseConnection) and stops on a
  // problem retrying cannot fix. Empty server: no check.
  std::string server = "";
  rpc::ClientTlsOptions tls = {};
  // State folder (base cache, head, pending upload). Required.
  std::string state_dir;
  // Stop after contributing to this many rounds; 0 = run until stopped. Default: 0.
  int max_rounds = 0;
  // How often to ask for a new round while waiting. Default: 1 s.
  std::chrono::milliseconds poll_interval{1000};
  // Longest wait between retries when the server is unreachable. Default: 30 s.
  std::chrono::milliseconds max_backoff{30000};
  // Acknowledged contributions kept in the state folder (contrib-rN.*). Default: 0 (the
  // server has them; copies are for inspection only).
  int keep_contributions = 0;
  // Save a training run in progress this often (training.safetensors in the state
  // folder), so that a crash loses at most about this much training; a run is always
  // saved when the daemon is told to stop (SIGINT, SIGTERM), and a restart continues it
  // while its base is still accepted. 0: save only then. Default: 10 min.
  std::chrono::seconds save_training_every{600};
  // > 0 and the round has a deadline: end training this long before it (time for the
  // final evaluation and the upload) and contribute what was trained by then. 0: train
  // the planned steps (a contribution that misses its round is fused, down-weighted, as a
  // stale one in a later round). Default: 0.
  std::chrono::seconds stop_before_deadline{0};
  // How each contribution is sent (encoding.h): as trained (default), as a delta, or as
  // an 8-bit delta.
  SendEncoding send = {};
};

// Whether `st` is a failure of the state folder (Run returns it: retrying cannot help).
bool IsLocalFailure(const absl::Status& st);

class Daemon {
 public:
  // `channel` carries TLS and the contributor's token (rpc::Connect).
  Daemon(DaemonOptions options, std::shared_ptr<grpc::Channel> channel, StateDir state,
         std::unique_ptr<LocalTask> task);

  // Runs until max_rounds contributions are acknowledged, Stop() is called, or an error
  // that retrying cannot fix (rpc::Retryability kNever: bad data, a rejected contribution,
  // a corrupt state folder). kNow and kLater errors are retried with backoff, asking
  // GetRound again each time.
  absl::Status Run();
  void Stop() { stop_ = true; }

 private:
  // Contributes to `round` (pulling and training as needed). OK once acknowledged.
  absl::Status Contribute(const v1::GetRoundResponse& round);
  absl::StatusOr<CachedBase> EnsureBase(uint64_t version);
  // The training run saved in the state folder, if any; a damaged one is dropped (with a
  // warning): it only saves time.
  absl::StatusOr<std::optional<SavedTraining>> LoadSavedTraining();
  // What a saved run must match to be continued: the base, the head and the task.
  std::string TrainingKey(const CachedBase& base, const std::vector<HostTensor>& head) const;
  // Seconds training may take from now to end stop_before_deadline before `round` closes
  // (as GetRound said at `asked`); 0: no limit.
  double TimeBudget(const v1::GetRoundResponse& round,
                    std::chrono::steady_clock::time_point asked) const;
  // Pushes `c` (trained in round c.header.round()) while `open_round` is open, and
  // records the round it went to.
  absl::Status Push(const Contribution& c, uint64_t open_round);
  // Marks a state-folder failure (IsLocalFailure), saying what to do about a full disk.
  absl::Status Local(absl::Status st) const;
  // Sleeps up to `d`, waking early on Stop().
  void Sleep(std::chrono::milliseconds d);
  // Logs what the daemon waits for (the open round's progress and deadline), once per
  // change.
  void ReportWaiting(const v1::GetRoundResponse& round);

  DaemonOptions options_;
  StateDir state_;
  std::unique_ptr<LocalTask> task_;
  std::shared_ptr<grpc::Channel> channel_;
  std::atomic<bool> stop_{false};
  std::string last_wait_report_;
  std::chrono::steady_clock::time_point next_diagnosis_{};
};

}  // namespace coldfuse::daemon

#endif  // COLDFUSE_CLIENT_DAEMON_DAEMON_H_
