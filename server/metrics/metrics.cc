#include "server/metrics/metrics.h"

#include <prometheus/metric_family.h>
#include <prometheus/text_serializer.h>

#include <map>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"

namespace coldfuse::metrics {
namespace {

using prometheus::ClientMetric;
using prometheus::MetricFamily;
using prometheus::MetricType;

const char* RpcName(Stream kind) {
  switch (kind) {
    case Stream::kPushContribution:
      return "PushContribution";
    case Stream::kPullBase:
      return "PullBase";
    case Stream::kInitModel:
      return "InitModel";
    case Stream::kBackup:
      return "Backup";
    case Stream::kWatchStatus:
      return "WatchStatus";
  }
  return "unknown";
}

bool Receives(Stream kind) {
  return kind == Stream::kPushContribution || kind == Stream::kInitModel;
}

// Transfers of megabytes to gigabytes: 0.1 s to ~1.8 h; fusion alike.
prometheus::Histogram::BucketBoundaries DurationBuckets() {
  return {0.1, 0.25, 0.5, 1, 2.5, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 6400};
}

// A family built at scrape time from the server's state.
struct Built {
  MetricFamily family;
  Built(std::string name, std::string help, MetricType type) {
    family.name = std::move(name);
    family.help = std::move(help);
    family.type = type;
  }
  void Add(double value, std::vector<ClientMetric::Label> labels = {}) {
    ClientMetric m;
    m.label = std::move(labels);
    if (family.type == MetricType::Counter) {
      m.counter.value = value;
    } else {
      m.gauge.value = value;
    }
    family.metric.push_back(std::move(m));
  }
};

}  // namespace

ServerMetrics::ServerMetrics(const MetricsOptions& options)
    : options_(options), registry_(std::make_shared<prometheus::Registry>()) {
  active_streams_ = &prometheus::BuildGauge()
                         .Name("coldfuse_active_streams")
                         .Help("Streaming calls in progress, by RPC")
                         .Register(*registry_);
  received_bytes_ = &prometheus::BuildCounter()
                         .Name("coldfuse_received_bytes_total")
                         .Help("Tensor bytes received in uploads (PushContribution, InitModel)")
                         .Register(*registry_);
  sent_bytes_ = &prometheus::BuildCounter()
                     .Name("coldfuse_sent_bytes_total")
                     .Help("Bytes sent in downloads (PullBase: tensor bytes; Backup: file bytes)")
                     .Register(*registry_);
  rejected_ = &prometheus::BuildCounter()
                   .Name("coldfuse_contributions_rejected_total")
                   .Help(
                       "PushContribution calls that ended without storing a contribution, by "
                       "gRPC status code (since the server started)")
                   .Register(*registry_);
  auto& upload = prometheus::BuildHistogram()
                     .Name("coldfuse_upload_duration_seconds")
                     .Help("Duration of PushContribution calls (accepted or not)")
                     .Register(*registry_);
  upload_seconds_ = &upload.Add({}, DurationBuckets());
  auto& download = prometheus::BuildHistogram()
                       .Name("coldfuse_download_duration_seconds")
                       .Help("Duration of PullBase calls")
                       .Register(*registry_);
  download_seconds_ = &download.Add({}, DurationBuckets());
  auto& fusion = prometheus::BuildHistogram()
                     .Name("coldfuse_fusion_duration_seconds")
                     .Help(
                         "Screening and fusion time of each round closed since the server "
                         "started")
                     .Register(*registry_);
  fusion_seconds_ = &fusion.Add({}, DurationBuckets());
  // Every series exists from the start, so rate() works from the first scrape.
  for (Stream s : {Stream::kPushContribution, Stream::kPullBase, Stream::kInitModel,
                   Stream::kBackup, Stream::kWatchStatus}) {
    active_streams_->Add({{"rpc", RpcName(s)}});
    if (s == Stream::kWatchStatus) continue;
    (Receives(s) ? received_bytes_ : sent_bytes_)->Add({{"rpc", RpcName(s)}});
  }
}

ServerMetrics::~ServerMetrics() { Attach(nullptr, nullptr, nullptr); }

void ServerMetrics::Attach(rounds::RoundManager* manager, const rounds::Evaluations* evaluations,
                           const auth::TokenRegistry* tokens) {
  rounds::RoundManager* old_manager;
  int old_listener;
  {
    absl::MutexLock l(&mu_);
    old_manager = manager_;
    old_listener = listener_;
    manager_ = nullptr;
    listener_ = -1;
  }
  // Outside mu_: this waits for a listener call in progress, which takes mu_.
  if (old_manager != nullptr && old_listener >= 0) old_manager->RemoveListener(old_listener);
  absl::MutexLock l(&mu_);
  manager_ = manager;
  evaluations_ = evaluations;
  tokens_ = tokens;
  if (manager_ != nullptr) {
    // Rounds closed before now were timed by an earlier run (their RoundInfo says).
    next_round_to_observe_ = manager_->GetStatus().open_round().number();
    listener_ = manager_->AddListener([this] { ObserveClosedRounds(); });
  }
}

void ServerMetrics::ObserveClosedRounds() {
  absl::MutexLock l(&mu_);
  if (manager_ == nullptr) return;
  const uint64_t open = manager_->GetStatus().open_round().number();
  for (; next_round_to_observe_ != 0 && next_round_to_observe_ < open; ++next_round_to_observe_) {
    auto r = manager_->GetRoundInfo(next_round_to_observe_);
    if (r.ok() && r->result_base_version() != 0) {
      fusion_seconds_->Observe(static_cast<double>(r->fusion_duration_ms()) / 1000.0);
    }
  }
  if (next_round_to_observe_ == 0) next_round_to_observe_ = open;  // initialised just now
}

ServerMetrics::StreamScope::StreamScope(ServerMetrics* metrics, Stream kind)
    : metrics_(metrics),
      kind_(kind),
      active_(&metrics->active_streams_->Add({{"rpc", RpcName(kind)}})),
      bytes_(kind == Stream::kWatchStatus
                 ? nullptr
                 : &(Receives(kind) ? metrics->received_bytes_ : metrics->sent_bytes_)
                        ->Add({{"rpc", RpcName(kind)}})),
      duration_(kind == Stream::kPushContribution ? metrics->upload_seconds_
                : kind == Stream::kPullBase       ? metrics->download_seconds_
                                                  : nullptr),
      start_(std::chrono::steady_clock::now()) {
  active_->Increment();
}

ServerMetrics::StreamScope::~StreamScope() {
  active_->Decrement();
  if (duration_ != nullptr) {
    duration_->Observe(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count());
  }
}

void ServerMetrics::StreamScope::SetOutcome(const absl::Status& status) {
  if (kind_ != Stream::kPushContribution || status.ok()) return;
  metrics_->rejected_->Add({{"code", absl::StatusCodeToString(status.code())}}).Increment();
}

std::unique_ptr<ServerMetrics::StreamScope> ServerMetrics::BeginStream(Stream kind) {
  return std::unique_ptr<StreamScope>(new StreamScope(this, kind));
}

std::string ServerMetrics::Render() const {
  std::vector<MetricFamily> families = registry_->Collect();
  absl::MutexLock l(&mu_);
  Built up("coldfuse_up", "1 while the server serves", MetricType::Gauge);
  up.Add(1);
  families.push_back(std::move(up.family));
  if (manager_ != nullptr) {
    const v1::ServerStatus s = manager_->GetStatus();
    Built initialized("coldfuse_initialized", "1 once an operator stored base v0",
                      MetricType::Gauge);
    initialized.Add(s.initialized() ? 1 : 0);
    families.push_back(std::move(initialized.family));
    if (s.initialized()) {
      Built base("coldfuse_base_version", "The current base version", MetricType::Gauge);
      base.Add(static_cast<double>(s.base_version()));
      Built round("coldfuse_open_round", "The open round's number", MetricType::Gauge);
      round.Add(static_cast<double>(s.open_round().number()));
      Built in_round("coldfuse_open_round_contributions", "Contributions in the open round",
                     MetricType::Gauge);
      in_round.Add(s.open_round().contributions_size());
      Built quorum("coldfuse_round_quorum_contributions",
                   "Contributions that close a round (--min_contributions)", MetricType::Gauge);
      quorum.Add(s.min_contributions());
      Built opened("coldfuse_open_round_opened_timestamp_seconds",
                   "When the open round opened (Unix time)", MetricType::Gauge);
      opened.Add(static_cast<double>(s.open_round().opened_unix_ms()) / 1000.0);
      Built bad("coldfuse_bad_bases", "Bases rolled back from", MetricType::Gauge);
      bad.Add(s.bad_base_versions_size());
      for (Built* b : {&base, &round, &in_round, &quorum, &opened, &bad}) {
        families.push_back(std::move(b->family));
      }
      // Counters from the stored rounds (counted in place, nothing copied): they count
      // every contribution ever stored, so a restart does not reset them.
      Built accepted("coldfuse_contributions_accepted_total",
                     "Contributions stored (including those screening later quarantined)",
                     MetricType::Counter);
      Built quarantined("coldfuse_contributions_quarantined_total",
                        "Contributions screening left out of fusion", MetricType::Counter);
      Built closed("coldfuse_rounds_closed_total", "Rounds closed, by reason", MetricType::Counter);
      Built contributed("coldfuse_contributor_contributions_total",
                        "Contributions stored, by contributor", MetricType::Counter);
      rounds::RoundManager::Tally tally = manager_->CountRounds(options_.contributor_labels);
      accepted.Add(static_cast<double>(tally.contributions));
      quarantined.Add(static_cast<double>(tally.quarantined));
      for (const char* reason : {"quorum", "timeout", "operator", "rollback"}) {
        tally.closed_by_reason[reason];
      }
      for (const auto& [reason, n] : tally.closed_by_reason) {
        closed.Add(static_cast<double>(n), {{"reason", reason}});
      }
      families.push_back(std::move(accepted.family));
      families.push_back(std::move(quarantined.family));
      families.push_back(std::move(closed.family));
      if (options_.contributor_labels) {
        for (const auto& [name, n] : tally.by_contributor) {
          contributed.Add(static_cast<double>(n), {{"contributor", name}});
        }
        families.push_back(std::move(contributed.family));
      }
    }
    Built disk("coldfuse_store_disk_bytes", "Bytes of the data folder on disk", MetricType::Gauge);
    disk.Add(static_cast<double>(s.storage().disk_bytes()));
    Built stored("coldfuse_stored_bases", "Bases whose tensors are stored", MetricType::Gauge);
    stored.Add(s.storage().stored_base_versions_size());
    families.push_back(std::move(disk.family));
    families.push_back(std::move(stored.family));
  }
  if (tokens_ != nullptr) {
    Built tokens("coldfuse_tokens", "Tokens that are neither revoked nor expired, by role",
                 MetricType::Gauge);
    std::map<std::string, int> by_role = {
        {"contributor", 0}, {"viewer", 0}, {"operator", 0}, {"evaluator", 0}};
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    for (const v1::TokenInfo& t : tokens_->List()) {
      if (t.revoked() || (t.expires_unix_ms() != 0 && t.expires_unix_ms() <= now_ms)) continue;
      std::string role = v1::Role_Name(t.role());
      for (char& c : role) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
      ++by_role[role];
    }
    for (const auto& [role, n] : by_role) tokens.Add(n, {{"role", role}});
    families.push_back(std::move(tokens.family));
  }
  if (evaluations_ != nullptr) {
    Built score("coldfuse_evaluation_score",
                "The newest base's recorded score, by task, metric and training examples "
                "(num_train_examples: the few-shot k)",
                MetricType::Gauge);
    Built version("coldfuse_evaluation_base_version",
                  "The base version coldfuse_evaluation_score belongs to", MetricType::Gauge);
    for (const v1::Evaluation& e : evaluations_->Latest()) {
      std::vector<ClientMetric::Label> labels = {
          {"task", e.task()},
          {"metric", e.metric()},
          {"num_train_examples", absl::StrCat(e.num_train_examples())},
          {"seen", e.task_seen() ? "true" : "false"}};
      score.Add(e.value(), labels);
      version.Add(static_cast<double>(e.base_version()), labels);
    }
    families.push_back(std::move(score.family));
    families.push_back(std::move(version.family));
  }
  return prometheus::TextSerializer().Serialize(families);
}

}  // namespace coldfuse::metrics
