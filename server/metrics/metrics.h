// The server's Prometheus metrics (prometheus-cpp): what the services count as they go
// (streams, bytes, durations, rejected uploads) and what is read from the server's state
// at each scrape (base version, rounds, contributions, disk, tokens, evaluation scores),
// so counters derived from stored state survive restarts. Names follow Prometheus
// conventions: units in names, `_total` counters, low-cardinality labels; contributor
// names become labels only when the operator opts in. docs/operations.md lists them.
//
// Thread-safe.
#ifndef COLDFUSE_SERVER_METRICS_METRICS_H_
#define COLDFUSE_SERVER_METRICS_METRICS_H_

#include <prometheus/counter.h>
#include <prometheus/family.h>
#include <prometheus/gauge.h>
#include <prometheus/histogram.h>
#include <prometheus/registry.h>

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "server/auth/token_registry.h"
#include "server/rounds/evaluations.h"
#include "server/rounds/round_manager.h"

namespace coldfuse::metrics {

// The RPCs whose streams are counted.
enum class Stream { kPushContribution, kPullBase, kInitModel, kBackup, kWatchStatus };

struct MetricsOptions {
  // Per-contributor series (label `contributor`): one series per contributor, so off
  // unless the operator opts in (coldfused --metrics_contributor_labels). Default: false.
  bool contributor_labels = false;
};

class ServerMetrics {
 public:
  explicit ServerMetrics(const MetricsOptions& options);
  ~ServerMetrics();

  // The state read at scrape time. Any may be null (not open yet: those series are
  // left out). They must outlive this object, or be detached with Attach(nullptr...)
  // before they go; Attach also subscribes to round closes (fusion durations).
  void Attach(rounds::RoundManager* manager, const rounds::Evaluations* evaluations,
              const auth::TokenRegistry* tokens) ABSL_LOCKS_EXCLUDED(mu_);

  // One stream in progress: counted active until destroyed, when its duration is
  // observed (uploads and downloads). Thread-compatible (one stream's thread at a time).
  class StreamScope {
   public:
    ~StreamScope();
    StreamScope(const StreamScope&) = delete;
    StreamScope& operator=(const StreamScope&) = delete;
    // Tensor (or file) bytes received or sent.
    void AddBytes(uint64_t n) { bytes_->Increment(static_cast<double>(n)); }
    // How the call ended (uploads: a non-OK code counts as a rejected contribution).
    void SetOutcome(const absl::Status& status);

   private:
    friend class ServerMetrics;
    StreamScope(ServerMetrics* metrics, Stream kind);
    ServerMetrics* metrics_;
    Stream kind_;
    prometheus::Gauge* active_;
    prometheus::Counter* bytes_;
    prometheus::Histogram* duration_;  // null: not timed
    std::chrono::steady_clock::time_point start_;
  };
  std::unique_ptr<StreamScope> BeginStream(Stream kind);

  // The Prometheus text exposition of every metric.
  std::string Render() const ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void ObserveClosedRounds() ABSL_LOCKS_EXCLUDED(mu_);

  const MetricsOptions options_;
  std::shared_ptr<prometheus::Registry> registry_;
  prometheus::Family<prometheus::Gauge>* active_streams_;
  prometheus::Family<prometheus::Counter>* received_bytes_;
  prometheus::Family<prometheus::Counter>* sent_bytes_;
  prometheus::Family<prometheus::Counter>* rejected_;
  prometheus::Histogram* upload_seconds_;
  prometheus::Histogram* download_seconds_;
  prometheus::Histogram* fusion_seconds_;

  mutable absl::Mutex mu_;
  rounds::RoundManager* manager_ ABSL_GUARDED_BY(mu_) = nullptr;
  const rounds::Evaluations* evaluations_ ABSL_GUARDED_BY(mu_) = nullptr;
  const auth::TokenRegistry* tokens_ ABSL_GUARDED_BY(mu_) = nullptr;
  int listener_ ABSL_GUARDED_BY(mu_) = -1;
  // Rounds below this number had their fusion time observed.
  uint64_t next_round_to_observe_ ABSL_GUARDED_BY(mu_) = 0;
};

}  // namespace coldfuse::metrics

#endif  // COLDFUSE_SERVER_METRICS_METRICS_H_
