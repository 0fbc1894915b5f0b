#include "server/rounds/round_manager.h"

#include <cmath>

#include "absl/strings/str_cat.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "common/model_spec.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "server/fusion/fusion.h"

namespace coldfuse::rounds {
namespace {

absl::Status CheckName(absl::string_view what, absl::string_view name, bool allow_empty) {
  if (name.empty() && allow_empty) return absl::OkStatus();
  bool ok = !name.empty() && name.size() <= 128;
  for (char c : name) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '_' || c == '.' || c == '@');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(
      what, " '", name, "' is not allowed: use 1-128 characters from A-Z a-z 0-9 - _ . @"));
}

absl::Status CheckHeader(const v1::ContributionHeader& h) {
  RETURN_IF_ERROR(CheckName("contributor", h.contributor(), /*allow_empty=*/false));
  RETURN_IF_ERROR(CheckName("task", h.task(), /*allow_empty=*/true));
  if (h.num_examples() == 0) {
    return absl::InvalidArgumentError(
        "num_examples is 0: give the number of training examples the contribution used");
  }
  if (h.metrics_size() > 64) {
    return absl::InvalidArgumentError("more than 64 metrics in one contribution");
  }
  for (const auto& [k, v] : h.metrics()) {
    RETURN_IF_ERROR(CheckName("metric name", k, /*allow_empty=*/false));
    if (!std::isfinite(v)) {
      return absl::InvalidArgumentError(absl::StrCat("metric '", k, "' is not finite"));
    }
  }
  return absl::OkStatus();
}

}  // namespace

RoundManager::RoundManager(storage::Store* store, const RoundOptions& options, Clock* clock)
    : store_(store), options_(options), clock_(clock) {}

absl::StatusOr<std::unique_ptr<RoundManager>> RoundManager::Create(storage::Store* store,
                                                                  const RoundOptions& options,
                                                                  Clock* clock) {
  if (options.min_contributions == 0) {
    return absl::InvalidArgumentError("min_contributions must be at least 1");
  }
  ASSIGN_OR_RETURN(storage::LoadedState state, store->Load());
  std::unique_ptr<RoundManager> m(new RoundManager(store, options, clock));
  m->model_ = std::move(state.model);
  m->current_base_ = state.current_base;
  m->current_base_sha256_ = std::move(state.current_base_sha256);
  m->rounds_ = std::move(state.rounds);
  m->next_contribution_id_ = state.next_contribution_id;
  if (m->model_.has_value() &&
      (m->rounds_.empty() || m->rounds_.back().state() != v1::OPEN ||
       m->rounds_.back().base_version() != m->current_base_)) {
    return absl::DataLossError("storage: the open round does not match the current base");
  }
  return m;
}

RoundManager::~RoundManager() {
  {
    std::lock_guard<std::mutex> l(policy_mu_);
    stop_ = true;
  }
  policy_cv_.notify_all();
  if (policy_thread_.joinable()) policy_thread_.join();
}

void RoundManager::Start() {
  policy_thread_ = std::thread([this] { PolicyLoop(); });
}

void RoundManager::PolicyLoop() {
  std::unique_lock<std::mutex> l(policy_mu_);
  while (!stop_) {
    policy_cv_.wait_for(l, std::chrono::milliseconds(options_.policy_poll_ms),
                        [this] { return stop_ || wake_; });
    if (stop_) break;
    wake_ = false;
    l.unlock();
    auto closed = MaybeClose();
    if (!closed.ok()) CF_LOG(ERROR) << "closing the round failed: " << closed.status();
    l.lock();
  }
}

absl::Status RoundManager::CheckInitializedLocked() const {
  if (!model_.has_value()) {
    return absl::FailedPreconditionError(
        "the server has no model yet: an operator must run `coldfusectl init`");
  }
  return absl::OkStatus();
}

// ------------------------------------------------------------------ init

absl::StatusOr<std::unique_ptr<TensorUpload>> RoundManager::BeginInit(
    const v1::InitHeader& header) {
  if (header.model_spec().empty()) {
    return absl::InvalidArgumentError("model_spec is empty: say which architecture this is");
  }
  RETURN_IF_ERROR(ValidateManifest(header.manifest()));
  if (absl::StartsWith(header.model_spec(), "mlp:")) {
    ASSIGN_OR_RETURN(MlpSpec spec, ParseModelSpec(header.model_spec()));
    RETURN_IF_ERROR(CheckManifestMatches(MlpManifest(spec), header.manifest()));
  }
  v1::ModelInfo model;
  model.set_model_spec(header.model_spec());
  *model.mutable_manifest() = header.manifest();
  model.set_fusion_method(header.fusion_method() == v1::FUSION_METHOD_UNSPECIFIED
                              ? v1::MEAN
                              : header.fusion_method());
  ASSIGN_OR_RETURN(uint64_t total, TotalBytes(header.manifest()));
  model.set_total_bytes(total);
  {
    std::lock_guard<std::mutex> l(mu_);
    if (model_.has_value()) {
      return absl::AlreadyExistsError(absl::StrCat(
          "the server already holds a model (base v", current_base_,
          "); init works once per data folder"));
    }
    if (init_in_progress_) {
      return absl::AbortedError("another init upload is in progress");
    }
    init_in_progress_ = true;
  }
  storage::Store* store = store_;
  return std::make_unique<TensorUpload>(
      header.manifest(),
      [store](uint32_t t, uint64_t c, absl::string_view data) {
        return store->PutBaseChunk(0, t, c, data);
      },
      [this, model](const std::string& sha, uint64_t bytes) {
        return CommitInit(model, sha, bytes);
      },
      [this] {
        std::lock_guard<std::mutex> l(mu_);
        init_in_progress_ = false;
        if (!model_.has_value()) (void)store_->DeleteBaseData(0);
      });
}

absl::StatusOr<UploadResult> RoundManager::CommitInit(const v1::ModelInfo& model,
                                                      const std::string& sha256,
                                                      uint64_t bytes) {
  v1::RoundInfo first;
  first.set_number(1);
  first.set_base_version(0);
  first.set_state(v1::OPEN);
  first.set_opened_unix_ms(clock_->NowUnixMs());
  {
    std::lock_guard<std::mutex> l(mu_);
    RETURN_IF_ERROR(store_->CommitInit(model, sha256, first));
    model_ = model;
    current_base_ = 0;
    current_base_sha256_ = sha256;
    rounds_.push_back(first);
    init_in_progress_ = false;
    ++change_seq_;
  }
  CF_LOG(INFO) << "initialised " << model.model_spec() << ": base v0 (" << bytes
               << " bytes, sha256 " << ToHex(sha256).substr(0, 16) << "), round 1 open";
  NotifyChanged();
  UploadResult r;
  r.round = 1;
  r.sha256 = sha256;
  r.bytes = bytes;
  return r;
}

// ------------------------------------------------------------------ contributions

absl::StatusOr<v1::GetRoundResponse> RoundManager::GetRound() const {
  std::lock_guard<std::mutex> l(mu_);
  RETURN_IF_ERROR(CheckInitializedLocked());
  v1::GetRoundResponse r;
  r.set_round(rounds_.back().number());
  r.set_base_version(current_base_);
  r.set_model_spec(model_->model_spec());
  *r.mutable_manifest() = model_->manifest();
  r.set_fusion_method(model_->fusion_method());
  return r;
}

absl::StatusOr<std::unique_ptr<TensorUpload>> RoundManager::BeginContribution(
    const v1::ContributionHeader& header) {
  uint64_t id;
  v1::Manifest manifest;
  {
    std::lock_guard<std::mutex> l(mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    const v1::RoundInfo& open = rounds_.back();
    if (header.base_version() != current_base_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "contribution was fine-tuned from base v", header.base_version(), " but round ",
          open.number(), " takes base v", current_base_,
          ": pull the current base and fine-tune again"));
    }
    if (header.round() != open.number()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "round ", header.round(), " is not open; the open round is ", open.number()));
    }
    if (closing_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "round ", open.number(), " is being fused; contribute to round ",
          open.number() + 1, " from base v", current_base_ + 1));
    }
    RETURN_IF_ERROR(CheckHeader(header));
    for (const auto& c : open.contributions()) {
      if (c.contributor() == header.contributor()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "contributor '", header.contributor(), "' already contributed to round ",
            open.number(), " (contribution ", c.id(), ")"));
      }
    }
    RETURN_IF_ERROR(CheckManifestMatches(model_->manifest(), header.manifest()));
    id = next_contribution_id_++;
    manifest = model_->manifest();
  }
  const uint64_t round = header.round();
  storage::Store* store = store_;
  return std::make_unique<TensorUpload>(
      manifest,
      [store, round, id](uint32_t t, uint64_t c, absl::string_view data) {
        return store->PutContributionChunk(round, id, t, c, data);
      },
      [this, header, id](const std::string& sha, uint64_t bytes) {
        return CommitContribution(header, id, sha, bytes);
      },
      [store, round, id] {
        absl::Status st = store->DeleteContributionData(round, id);
        if (!st.ok()) CF_LOG(ERROR) << "cannot remove rejected upload " << id << ": " << st;
      });
}

absl::StatusOr<UploadResult> RoundManager::CommitContribution(
    const v1::ContributionHeader& header, uint64_t id, const std::string& sha256,
    uint64_t bytes) {
  v1::ContributionInfo info;
  info.set_id(id);
  info.set_contributor(header.contributor());
  info.set_task(header.task());
  info.set_num_examples(header.num_examples());
  *info.mutable_metrics() = header.metrics();
  info.set_sha256(sha256);
  info.set_bytes(bytes);
  info.set_received_unix_ms(clock_->NowUnixMs());
  bool quorum;
  {
    std::lock_guard<std::mutex> l(mu_);
    v1::RoundInfo& open = rounds_.back();
    if (open.number() != header.round() || closing_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "round ", header.round(), " closed while the contribution was uploading; "
          "pull base v", current_base_ + (closing_ ? 1 : 0), " and contribute again"));
    }
    for (const auto& c : open.contributions()) {
      if (c.contributor() == header.contributor()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "contributor '", header.contributor(), "' already contributed to round ",
            open.number()));
      }
    }
    RETURN_IF_ERROR(store_->CommitContribution(open.number(), info));
    *open.add_contributions() = info;
    ++change_seq_;
    quorum = static_cast<uint32_t>(open.contributions_size()) >= options_.min_contributions;
  }
  CF_LOG(INFO) << "round " << header.round() << ": accepted contribution " << id << " from "
               << header.contributor() << " (" << bytes << " bytes)";
  NotifyChanged();
  if (quorum) {
    std::lock_guard<std::mutex> l(policy_mu_);
    wake_ = true;
    policy_cv_.notify_all();
  }
  UploadResult r;
  r.id = id;
  r.round = header.round();
  r.base_version = header.base_version();
  r.sha256 = sha256;
  r.bytes = bytes;
  return r;
}

absl::StatusOr<std::unique_ptr<BaseReader>> RoundManager::OpenBase(
    std::optional<uint64_t> version) const {
  std::lock_guard<std::mutex> l(mu_);
  RETURN_IF_ERROR(CheckInitializedLocked());
  uint64_t v = version.value_or(current_base_);
  if (v > current_base_) {
    return absl::NotFoundError(
        absl::StrCat("base v", v, " does not exist; the current base is v", current_base_));
  }
  std::string sha = current_base_sha256_;
  if (v != current_base_) {
    ASSIGN_OR_RETURN(sha, store_->GetBaseSha256(v));
  }
  return std::make_unique<BaseReader>(store_, v, *model_, std::move(sha));
}

// ------------------------------------------------------------------ closing

absl::StatusOr<bool> RoundManager::MaybeClose() {
  std::string reason;
  uint64_t number;
  {
    std::lock_guard<std::mutex> l(mu_);
    if (!model_.has_value() || closing_) return false;
    const v1::RoundInfo& open = rounds_.back();
    uint32_t n = static_cast<uint32_t>(open.contributions_size());
    if (n >= options_.min_contributions) {
      reason = "quorum";
    } else if (n > 0 && options_.round_timeout_ms > 0 &&
               clock_->NowUnixMs() - open.opened_unix_ms() >= options_.round_timeout_ms) {
      reason = "timeout";
    } else {
      return false;
    }
    number = open.number();
  }
  auto r = CloseRound(number, reason);
  if (absl::IsFailedPrecondition(r.status())) return false;  // someone else closed it
  RETURN_IF_ERROR(r.status());
  return true;
}

absl::StatusOr<v1::CloseRoundResponse> RoundManager::CloseRound(std::optional<uint64_t> round,
                                                                const std::string& reason) {
  std::lock_guard<std::mutex> close_lock(close_mu_);
  return CloseLocked(round, reason);
}

absl::StatusOr<v1::CloseRoundResponse> RoundManager::CloseLocked(std::optional<uint64_t> round,
                                                                 const std::string& reason) {
  v1::RoundInfo closing;
  v1::ModelInfo model;
  {
    std::lock_guard<std::mutex> l(mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    const v1::RoundInfo& open = rounds_.back();
    if (round.has_value() && *round != open.number()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "round ", *round, " is not open; the open round is ", open.number()));
    }
    if (open.contributions_size() == 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "round ", open.number(), " has no contributions yet; nothing to fuse"));
    }
    closing_ = true;
    closing = open;
    model = *model_;
  }
  const uint64_t new_version = closing.base_version() + 1;
  std::vector<uint64_t> ids, examples;
  for (const auto& c : closing.contributions()) {
    ids.push_back(c.id());
    examples.push_back(c.num_examples());
  }
  auto fail = [&](absl::Status st) {
    (void)store_->DeleteBaseData(new_version);
    std::lock_guard<std::mutex> l(mu_);
    closing_ = false;
    return st;
  };
  auto weights = fusion::FusionWeights(model.fusion_method(), examples);
  if (!weights.ok()) return fail(weights.status());
  const uint64_t number = closing.number();
  auto sha = fusion::FuseWeighted(
      model.manifest(), *weights,
      [&](size_t k, uint32_t t, uint64_t c) {
        return store_->GetContributionChunk(number, ids[k], t, c);
      },
      [&](uint32_t t, uint64_t c, absl::string_view data) {
        return store_->PutBaseChunk(new_version, t, c, data);
      });
  if (!sha.ok()) return fail(sha.status());

  const int64_t now = clock_->NowUnixMs();
  closing.set_state(v1::CLOSED);
  closing.set_closed_unix_ms(now);
  closing.set_result_base_version(new_version);
  closing.set_close_reason(reason);
  v1::RoundInfo next;
  next.set_number(number + 1);
  next.set_base_version(new_version);
  next.set_state(v1::OPEN);
  next.set_opened_unix_ms(now);
  absl::Status st = store_->CommitRoundClose(closing, new_version, *sha, next);
  if (!st.ok()) return fail(st);
  {
    std::lock_guard<std::mutex> l(mu_);
    rounds_.back() = closing;
    rounds_.push_back(next);
    current_base_ = new_version;
    current_base_sha256_ = *sha;
    closing_ = false;
    ++change_seq_;
  }
  CF_LOG(INFO) << "round " << number << " closed (" << reason << "): fused "
               << ids.size() << " contributions into base v" << new_version
               << "; round " << number + 1 << " open";
  NotifyChanged();
  v1::CloseRoundResponse resp;
  *resp.mutable_closed_round() = closing;
  resp.set_new_base_version(new_version);
  return resp;
}

// ------------------------------------------------------------------ status

v1::ServerStatus RoundManager::GetStatus() const {
  std::lock_guard<std::mutex> l(mu_);
  v1::ServerStatus s;
  s.set_initialized(model_.has_value());
  if (model_.has_value()) {
    *s.mutable_model() = *model_;
    s.set_base_version(current_base_);
    *s.mutable_open_round() = rounds_.back();
    s.set_base_sha256(current_base_sha256_);
  }
  s.set_min_contributions(options_.min_contributions);
  s.set_round_timeout_ms(options_.round_timeout_ms);
  s.set_change_seq(change_seq_);
  s.set_server_time_unix_ms(clock_->NowUnixMs());
  return s;
}

std::vector<v1::RoundInfo> RoundManager::ListRounds() const {
  std::lock_guard<std::mutex> l(mu_);
  return rounds_;
}

absl::StatusOr<v1::RoundInfo> RoundManager::GetRoundInfo(uint64_t number) const {
  std::lock_guard<std::mutex> l(mu_);
  if (number == 0 || number > rounds_.size()) {
    return absl::NotFoundError(absl::StrCat("round ", number, " does not exist; rounds are 1..",
                                            rounds_.size()));
  }
  return rounds_[number - 1];
}

int RoundManager::AddListener(std::function<void()> fn) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  int id = next_listener_++;
  listeners_[id] = std::move(fn);
  return id;
}

void RoundManager::RemoveListener(int id) {
  std::lock_guard<std::mutex> l(listeners_mu_);
  listeners_.erase(id);
}

void RoundManager::NotifyChanged() {
  std::lock_guard<std::mutex> l(listeners_mu_);
  for (auto& [id, fn] : listeners_) fn();
}

}  // namespace coldfuse::rounds
