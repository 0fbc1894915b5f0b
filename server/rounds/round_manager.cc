#include "server/rounds/round_manager.h"

#include <algorithm>
#include <chrono>
#include <cmath>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "common/model_spec.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "server/fusion/outer_optimizer.h"
#include "server/fusion/robust.h"
#include "server/fusion/round_fusion.h"
#include "server/rounds/staleness.h"

namespace coldfuse::rounds {
namespace {

std::string Fmt(double x) { return absl::StrFormat("%.6g", x); }

// model_spec is echoed in every GetRound and status reply: keep it a name, not a payload.
constexpr size_t kMaxModelSpecBytes = 256;

}  // namespace

v1::AuditRecord MakeAudit(absl::string_view actor, absl::string_view action, std::string detail) {
  v1::AuditRecord r;
  r.set_actor(std::string(actor));
  r.set_action(std::string(action));
  r.set_detail(std::move(detail));
  return r;
}

RoundManager::RoundManager(storage::Store* store, const RoundOptions& options, Clock* clock)
    : store_(store), options_(options), clock_(clock) {}

absl::StatusOr<std::unique_ptr<RoundManager>> RoundManager::Create(
    storage::Store* store, const storage::LoadedState& state, const RoundOptions& options,
    Clock* clock) {
  if (options.min_contributions == 0) {
    return absl::InvalidArgumentError("min_contributions must be at least 1");
  }
  if (!(options.outlier_factor == 0 || options.outlier_factor >= 1) ||
      !std::isfinite(options.outlier_factor)) {
    return absl::InvalidArgumentError(
        "outlier_factor must be 0 (off) or a finite number of at least 1: below 1 it could "
        "quarantine everyone");
  }
  if (options.max_staleness > kMaxStalenessBound) {
    return absl::InvalidArgumentError(
        absl::StrCat("max_staleness must be at most ", kMaxStalenessBound,
                     ": each step keeps one more base on disk (see docs/protocol.md)"));
  }
  if (!std::isfinite(options.staleness_exponent) || options.staleness_exponent < 0) {
    return absl::InvalidArgumentError(
        "staleness_exponent must be a finite number >= 0 (0: stale contributions are not "
        "down-weighted)");
  }
  if (state.model.has_value() && (state.rounds.empty() || state.rounds.back().state() != v1::OPEN ||
                                  state.rounds.back().base_version() != state.current_base)) {
    return absl::DataLossError("storage: the open round does not match the current base");
  }
  std::unique_ptr<RoundManager> m(new RoundManager(store, options, clock));
  {
    absl::MutexLock l(&m->mu_);
    m->model_ = state.model;
    m->current_base_ = state.current_base;
    m->current_base_sha256_ = state.current_base_sha256;
    m->rounds_ = state.rounds;
    m->max_base_version_ = state.max_base_version;
    m->bad_base_versions_ = state.bad_base_versions;
    m->change_seq_ = state.last_audit_seq + 1;
    m->pinned_.insert(state.pinned_base_versions.begin(), state.pinned_base_versions.end());
    m->pruned_.insert(state.pruned_base_versions.begin(), state.pruned_base_versions.end());
  }
  m->RefreshDiskUsage();
  return m;
}

RoundManager::~RoundManager() {
  {
    absl::MutexLock l(&policy_mu_);
    stop_ = true;
  }
  if (policy_thread_.joinable()) policy_thread_.join();
}

void RoundManager::Start() {
  policy_thread_ = std::thread([this] { PolicyLoop(); });
}

void RoundManager::PolicyLoop() {
  absl::MutexLock l(&policy_mu_);
  while (!stop_) {
    auto woken = [this]() ABSL_SHARED_LOCKS_REQUIRED(policy_mu_) { return stop_ || wake_; };
    policy_mu_.AwaitWithTimeout(absl::Condition(&woken),
                                absl::Milliseconds(options_.policy_poll_ms));
    if (stop_) break;
    wake_ = false;
    policy_mu_.Unlock();
    auto closed = MaybeClose();  // policy closes are audited with actor "server"
    if (!closed.ok()) CF_LOG(ERROR) << "closing the round failed: " << closed.status();
    if (clock_->NowUnixMs() >= next_disk_refresh_ms_) {
      RefreshDiskUsage();
      next_disk_refresh_ms_ = clock_->NowUnixMs() + 30000;
    }
    policy_mu_.Lock();
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

absl::StatusOr<std::unique_ptr<TensorUpload>> RoundManager::BeginInit(const v1::InitHeader& header,
                                                                      const std::string& actor) {
  if (header.model_spec().empty()) {
    return absl::InvalidArgumentError("model_spec is empty: say which architecture this is");
  }
  if (header.model_spec().size() > kMaxModelSpecBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model_spec is ", header.model_spec().size(), " bytes; at most ", kMaxModelSpecBytes,
        " are allowed (it names the architecture, e.g. mlp:64,128,64 or checkpoint:NAME)"));
  }
  RETURN_IF_ERROR(ValidateManifest(header.manifest()));
  for (const auto& t : header.manifest().tensors()) {
    if (!IsFloatDType(t.dtype())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.name(), "' is ",
                                                     DTypeName(t.dtype()),
                                                     ": a base holds F32, F16, BF16 or F64"));
    }
  }
  if (absl::StartsWith(header.model_spec(), "mlp:")) {
    ASSIGN_OR_RETURN(MlpSpec spec, ParseModelSpec(header.model_spec()));
    RETURN_IF_ERROR(CheckManifestMatches(MlpManifest(spec), header.manifest()));
  }
  if (!v1::FusionMethod_IsValid(header.fusion_method())) {
    return absl::InvalidArgumentError("unknown fusion method");
  }
  const auto& fo = header.fusion_options();
  // Written so that NaN fails too: a NaN option would make every close fail.
  if (!(fo.trim_fraction() >= 0 && fo.trim_fraction() < 0.5) || !(fo.clip_factor() >= 0) ||
      !std::isfinite(fo.clip_factor())) {
    return absl::InvalidArgumentError(
        "fusion options out of range: trim_fraction in [0, 0.5), clip_factor a finite "
        "number >= 0 (0 picks the default)");
  }
  v1::ModelInfo model;
  model.set_model_spec(header.model_spec());
  *model.mutable_manifest() = header.manifest();
  model.set_fusion_method(
      header.fusion_method() == v1::FUSION_METHOD_UNSPECIFIED ? v1::MEAN : header.fusion_method());
  *model.mutable_fusion_options() = fo;
  if (fo.trim_fraction() == 0) model.mutable_fusion_options()->set_trim_fraction(0.2);
  if (fo.clip_factor() == 0) model.mutable_fusion_options()->set_clip_factor(1.0);
  if (fusion::IsMergeMethod(model.fusion_method())) {
    // Written so that NaN fails too. Zero picks the default, as for the options above.
    v1::FusionOptions* mo = model.mutable_fusion_options();
    if (mo->merge_scale() == 0) mo->set_merge_scale(1.0);
    if (!(mo->merge_scale() > 0) || !std::isfinite(mo->merge_scale())) {
      return absl::InvalidArgumentError(absl::StrCat("merge_scale is ", mo->merge_scale(),
                                                     "; it must be a finite number > 0 (0: 1.0)"));
    }
    if (model.fusion_method() == v1::TIES) {
      if (mo->ties_density() == 0) mo->set_ties_density(0.2);
      if (!(mo->ties_density() > 0 && mo->ties_density() <= 1)) {
        return absl::InvalidArgumentError(absl::StrCat("ties_density is ", mo->ties_density(),
                                                       "; it must be in (0, 1] (0: 0.2)"));
      }
    }
    if (model.fusion_method() == v1::DARE) {
      if (mo->dare_drop_rate() == 0) mo->set_dare_drop_rate(0.5);
      if (!(mo->dare_drop_rate() > 0 && mo->dare_drop_rate() < 1)) {
        return absl::InvalidArgumentError(absl::StrCat("dare_drop_rate is ", mo->dare_drop_rate(),
                                                       "; it must be in (0, 1) (0: 0.5)"));
      }
    }
  }
  ASSIGN_OR_RETURN(uint64_t total, TotalBytes(header.manifest()));
  model.set_total_bytes(total);
  v1::OuterOptimizer outer = header.outer_optimizer();
  v1::OuterOptimizerOptions outer_options = header.outer_optimizer_options();
  RETURN_IF_ERROR(fusion::ResolveOuterOptimizer(&outer, &outer_options));
  model.set_outer_optimizer(outer);
  if (outer_options.ByteSizeLong() > 0) *model.mutable_outer_optimizer_options() = outer_options;
  {
    absl::MutexLock l(&mu_);
    if (model_.has_value()) {
      return absl::AlreadyExistsError(absl::StrCat("the server already holds a model (base v",
                                                   current_base_,
                                                   "); init works once per data folder"));
    }
    if (init_in_progress_) {
      return absl::AbortedError("another init upload is in progress");
    }
    init_in_progress_ = true;
  }
  storage::Store* store = store_;
  const v1::Manifest manifest = header.manifest();
  return std::make_unique<TensorUpload>(
      manifest,
      [store, manifest](uint32_t t, uint64_t c, absl::string_view data) -> absl::Status {
        // Every contribution trained from a base with NaN or Inf would be refused.
        const v1::TensorSpec& spec = manifest.tensors(t);
        uint64_t first = 0;
        if (fusion::CountNonFinite(spec.dtype(), data, &first) > 0) {
          return absl::InvalidArgumentError(absl::StrCat(
              "tensor '", spec.name(), "' holds a NaN or infinity at element ",
              c * (kChunkBytes / DTypeSize(spec.dtype())) + first, " (read as ",
              DTypeName(spec.dtype()),
              "): a base must be finite, or every contribution trained from it is refused"));
        }
        return store->PutBaseChunk(0, t, c, data);
      },
      [this, model, actor](const std::string& sha, uint64_t bytes) {
        return CommitInit(model, sha, bytes, actor);
      },
      [this](TensorUpload::EndKind, const absl::Status& why) {
        // Only this upload writes base v0 until init_in_progress_ is cleared.
        bool initialised;
        {
          absl::MutexLock l(&mu_);
          initialised = model_.has_value();
        }
        if (!initialised) (void)store_->DeleteBaseData(0);
        absl::MutexLock l(&mu_);
        init_in_progress_ = false;
        return why;
      });
}

absl::StatusOr<UploadResult> RoundManager::CommitInit(const v1::ModelInfo& model,
                                                      const std::string& sha256, uint64_t bytes,
                                                      const std::string& actor) {
  v1::RoundInfo first;
  first.set_number(1);
  first.set_base_version(0);
  first.set_state(v1::OPEN);
  first.set_opened_unix_ms(clock_->NowUnixMs());
  // init_in_progress_ keeps every other init out while this writes without the lock.
  RETURN_IF_ERROR(store_->CommitInit(
      model, sha256, first,
      {MakeAudit(actor, "init",
                 absl::StrCat(model.model_spec(),
                              " fusion=", v1::FusionMethod_Name(model.fusion_method()),
                              " outer=", v1::OuterOptimizer_Name(model.outer_optimizer()))),
       MakeAudit(actor, "base_created", absl::StrCat("v0 sha256=", ToHex(sha256)))}));
  {
    absl::MutexLock l(&mu_);
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
  absl::MutexLock l(&mu_);
  RETURN_IF_ERROR(CheckInitializedLocked());
  v1::GetRoundResponse r;
  r.set_round(rounds_.back().number());
  r.set_base_version(current_base_);
  r.set_model_spec(model_->model_spec());
  *r.mutable_manifest() = model_->manifest();
  r.set_fusion_method(model_->fusion_method());
  r.set_contributions(static_cast<uint32_t>(rounds_.back().contributions_size()));
  r.set_min_contributions(options_.min_contributions);
  r.set_closes_by_unix_ms(ClosesByLocked());
  r.set_server_time_unix_ms(clock_->NowUnixMs());
  r.set_round_timeout_ms(options_.round_timeout_ms);
  *r.mutable_staleness() = StalenessPolicyLocked();
  return r;
}

int64_t RoundManager::ClosesByLocked() const {
  if (!model_.has_value() || options_.round_timeout_ms <= 0 ||
      rounds_.back().contributions_size() == 0) {
    return 0;
  }
  return rounds_.back().opened_unix_ms() + options_.round_timeout_ms;
}

v1::StalenessPolicy RoundManager::StalenessPolicyLocked() const {
  v1::StalenessPolicy p;
  p.set_max_staleness(options_.max_staleness);
  p.set_staleness_exponent(options_.staleness_exponent);
  if (model_.has_value()) {
    for (uint64_t v : LineageLocked(options_.max_staleness + 1)) p.add_accepted_base_versions(v);
  }
  return p;
}

std::vector<uint64_t> RoundManager::LineageLocked(size_t limit) const {
  return Lineage(rounds_, current_base_, limit,
                 [this](uint64_t v) ABSL_NO_THREAD_SAFETY_ANALYSIS { return IsGoneLocked(v); });
}

absl::StatusOr<uint32_t> RoundManager::StalenessLocked(uint64_t from) const {
  const std::vector<uint64_t> line = LineageLocked(options_.max_staleness + 1);
  for (size_t s = 0; s < line.size(); ++s) {
    if (line[s] == from) return static_cast<uint32_t>(s);
  }
  const std::string again =
      absl::StrCat("pull the current base v", current_base_, " and fine-tune again");
  if (from > max_base_version_) {
    return absl::FailedPreconditionError(absl::StrCat("contribution was fine-tuned from base v",
                                                      from,
                                                      ", which does not exist (the newest "
                                                      "base is v",
                                                      max_base_version_, "): ", again));
  }
  if (IsBadLocked(from)) {
    return absl::FailedPreconditionError(
        absl::StrCat("contribution was fine-tuned from base v", from,
                     ", which an operator rolled back (marked bad); the current base is v",
                     current_base_, ": ", again));
  }
  // How far back it is, if it is an ancestor at all (for the message).
  const std::vector<uint64_t> all =
      Lineage(rounds_, current_base_, SIZE_MAX, [](uint64_t) { return false; });
  std::string how_old = "which is not an ancestor of the current base";
  for (size_t s = 0; s < all.size(); ++s) {
    if (all[s] == from) how_old = absl::StrCat(s, " fusions older than the current base");
  }
  std::string bound =
      options_.max_staleness == 0
          ? std::string(
                "this server takes contributions from the current base "
                "only (--max_staleness=0)")
          : absl::StrCat("this server takes contributions at most ", options_.max_staleness,
                         " fusions old (--max_staleness=", options_.max_staleness, "): from base v",
                         absl::StrJoin(line, ", v"));
  if (IsGoneLocked(from)) absl::StrAppend(&how_old, ", and retention removed its tensors");
  return absl::FailedPreconditionError(absl::StrCat("contribution was fine-tuned from base v", from,
                                                    ", ", how_old, "; ", bound, "; ", again));
}

bool RoundManager::IsAcceptableBase(uint64_t version) const {
  absl::MutexLock l(&mu_);
  return model_.has_value() && StalenessLocked(version).ok();
}

absl::StatusOr<OpenRound> RoundManager::CheckAdmission(const v1::ContributionHeader& header) const {
  absl::MutexLock l(&mu_);
  RETURN_IF_ERROR(CheckInitializedLocked());
  const v1::RoundInfo& open = rounds_.back();
  // The round the client last saw open: the open one, or an earlier one while it trained.
  if (header.round() == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("round 0 does not exist; send the round GetRound named (the open round is ",
                     open.number(), ")"));
  }
  if (header.round() > open.number()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "round ", header.round(), " has not opened yet; the open round is ", open.number()));
  }
  ASSIGN_OR_RETURN(uint32_t staleness, StalenessLocked(header.base_version()));
  if (closing_) {
    // Not a reason to train again: once fused, the same upload goes to the next round.
    return absl::UnavailableError(absl::StrCat("round ", open.number(),
                                               " is being fused; send the contribution again in "
                                               "a moment (it then goes to round ",
                                               open.number() + 1, ")"));
  }
  for (const auto& c : open.contributions()) {
    if (c.contributor() == header.contributor()) {
      return absl::AlreadyExistsError(absl::StrCat("contributor '", header.contributor(),
                                                   "' already contributed to round ", open.number(),
                                                   " (contribution ", c.id(), ")"));
    }
  }
  OpenRound r;
  r.number = open.number();
  r.base_version = current_base_;
  r.base_manifest = model_->manifest();
  r.trained_from = header.base_version();
  r.staleness = staleness;
  return r;
}

std::optional<uint64_t> RoundManager::OpenRoundNumber() const {
  absl::MutexLock l(&mu_);
  if (!model_.has_value()) return std::nullopt;
  return rounds_.back().number();
}

absl::StatusOr<Accepted> RoundManager::Accept(v1::ContributionInfo info,
                                              const std::string& upload_id) {
  const std::string who = info.contributor();
  Accepted at;
  {
    absl::MutexLock l(&mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    // The whole upload is here: rather than fail it, wait for a fusion in progress and
    // count it in the next round (if it is not too stale by then).
    auto not_closing = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return !closing_; };
    if (!mu_.AwaitWithTimeout(absl::Condition(&not_closing),
                              absl::Milliseconds(options_.commit_wait_ms))) {
      return absl::UnavailableError(
          absl::StrCat("round ", rounds_.back().number(),
                       " is still being fused; the upload is kept: send it again in a moment"));
    }
    v1::RoundInfo& open = rounds_.back();
    ASSIGN_OR_RETURN(const uint32_t staleness, StalenessLocked(info.trained_from_base()));
    at.round = open.number();
    at.base_version = current_base_;
    at.staleness = staleness;
    info.set_staleness(staleness);
    info.set_staleness_weight(StalenessWeight(staleness, options_.staleness_exponent));
    const uint64_t round = at.round;
    // The same upload sent again after its receipt was lost, once its round had closed,
    // is not taken twice. Only rounds since its base can hold it.
    for (auto it = rounds_.rbegin(); it != rounds_.rend(); ++it) {
      for (const auto& c : it->contributions()) {
        if (c.contributor() == who && c.sha256() == info.sha256() &&
            c.trained_from_base() == info.trained_from_base()) {
          return absl::AlreadyExistsError(absl::StrCat(
              "this contribution (sha256 ", ToHex(info.sha256()).substr(0, 16), "...) from '", who,
              "' was already accepted in round ", it->number(), " (contribution ", c.id(), ")"));
        }
      }
      if (it->base_version() == info.trained_from_base()) break;
    }
    bool taken = committing_.count(who) > 0;
    for (const auto& c : open.contributions()) taken = taken || c.contributor() == who;
    if (taken) {
      return absl::AlreadyExistsError(
          absl::StrCat("contributor '", who, "' already contributed to round ", round));
    }
    // A close waits for this commit before it takes its snapshot of the round.
    committing_.insert(who);
  }
  const uint64_t round = at.round;
  std::string detail =
      absl::StrCat("id=", info.id(), " round=", round, " bytes=", info.bytes(),
                   " delta_norm=", Fmt(info.delta_norm()), " sha256=", ToHex(info.sha256()));
  if (at.staleness > 0) {
    absl::StrAppend(&detail, " trained_from=v", info.trained_from_base(),
                    " staleness=", at.staleness, " weight=", Fmt(info.staleness_weight()));
  }
  absl::Status st = store_->CommitContribution(
      round, info, {MakeAudit(who, "contribution_accepted", std::move(detail))}, upload_id);
  bool quorum = false;
  {
    absl::MutexLock l(&mu_);
    committing_.erase(who);
    if (st.ok()) {
      v1::RoundInfo& open = rounds_.back();
      *open.add_contributions() = info;
      ++change_seq_;
      quorum = static_cast<uint32_t>(open.contributions_size()) >= options_.min_contributions;
    }
  }
  RETURN_IF_ERROR(st);
  CF_LOG(INFO) << "round " << round << ": accepted contribution " << info.id() << " from " << who
               << " (" << info.bytes() << " bytes, delta norm " << Fmt(info.delta_norm())
               << (at.staleness > 0
                       ? absl::StrCat(", trained from v", info.trained_from_base(), ": staleness ",
                                      at.staleness, ", weight ", Fmt(info.staleness_weight()))
                       : std::string())
               << ")";
  NotifyChanged();
  if (quorum) {
    absl::MutexLock l(&policy_mu_);
    wake_ = true;
  }
  return at;
}

absl::StatusOr<std::unique_ptr<BaseReader>> RoundManager::OpenBase(
    std::optional<uint64_t> version) const {
  v1::ModelInfo model;
  uint64_t v;
  std::string sha;
  {
    absl::MutexLock l(&mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    v = version.value_or(current_base_);
    if (v > max_base_version_) {
      return absl::NotFoundError(
          absl::StrCat("base v", v, " does not exist; the current base is v", current_base_));
    }
    if (IsGoneLocked(v)) {
      return absl::NotFoundError(absl::StrCat(
          "base v", v,
          " was removed by retention (its record and checksum are kept); stored bases: ",
          StoredBasesLocked()));
    }
    model = *model_;
    if (v == current_base_) sha = current_base_sha256_;
    ++readers_[v];
  }
  std::shared_ptr<void> hold(nullptr, [this, v](void*) { ReleaseReader(v); });
  if (sha.empty()) {
    ASSIGN_OR_RETURN(sha, store_->GetBaseSha256(v));
  }
  return std::make_unique<BaseReader>(store_, v, model, std::move(sha), std::move(hold));
}

// ------------------------------------------------------------------ closing

absl::StatusOr<bool> RoundManager::MaybeClose() {
  std::string reason;
  uint64_t number;
  {
    absl::MutexLock l(&mu_);
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
  if (clock_->NowUnixMs() < retry_close_after_ms_) return false;
  auto r = CloseRound(number, reason, "server");
  if (absl::IsFailedPrecondition(r.status())) return false;  // someone else closed it
  if (!r.ok()) {
    // A fusion that failed (unreadable chunk, full disk) is not retried at once.
    retry_close_after_ms_ = clock_->NowUnixMs() + 30000;
    return r.status();
  }
  return true;
}

absl::StatusOr<v1::CloseRoundResponse> RoundManager::CloseRound(std::optional<uint64_t> round,
                                                                const std::string& reason,
                                                                const std::string& actor) {
  absl::MutexLock close_lock(&close_mu_);
  auto closed = CloseLocked(round, reason, actor);
  if (closed.ok()) {
    if (RetentionConfigured()) {
      auto pruned = PruneLocked(/*dry_run=*/false, "server");
      // The round is closed and its base committed either way; the next close tries again.
      if (!pruned.ok()) CF_LOG(ERROR) << "retention after round close failed: " << pruned.status();
    } else {
      RefreshDiskUsage();
    }
  }
  return closed;
}

void RoundManager::BeginClosingLocked() {
  closing_ = true;
  // Commits that passed their checks before closing_ was set finish first, so the
  // snapshot of the round holds every contribution that was acknowledged in it.
  auto idle = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return committing_.empty(); };
  mu_.Await(absl::Condition(&idle));
}

void RoundManager::Screen(v1::RoundInfo* round, storage::AuditBatch* audit) const {
  if (options_.outlier_factor <= 0 || round->contributions_size() < 3) return;
  std::vector<double> norms;
  for (const auto& c : round->contributions()) norms.push_back(c.delta_norm());
  const double median = fusion::Median(norms);
  // With a zero median (most uploads changed nothing) there is no scale to compare to.
  if (median <= 0) return;
  const double limit = options_.outlier_factor * median;
  for (auto& c : *round->mutable_contributions()) {
    if (c.delta_norm() > limit) {
      c.set_state(v1::QUARANTINED);
      c.set_quarantine_reason(absl::StrCat("delta norm ", Fmt(c.delta_norm()), " > ",
                                           Fmt(options_.outlier_factor), " x round median ",
                                           Fmt(median)));
      audit->push_back(
          MakeAudit("server", "contribution_quarantined",
                    absl::StrCat("id=", c.id(), " contributor=", c.contributor(),
                                 " round=", round->number(), ": ", c.quarantine_reason())));
    }
  }
}

absl::StatusOr<v1::CloseRoundResponse> RoundManager::CloseLocked(std::optional<uint64_t> round,
                                                                 const std::string& reason,
                                                                 const std::string& actor) {
  v1::RoundInfo closing;
  v1::ModelInfo model;
  uint64_t new_version;
  {
    absl::MutexLock l(&mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    const v1::RoundInfo& open = rounds_.back();
    if (round.has_value() && *round != open.number()) {
      return absl::FailedPreconditionError(
          absl::StrCat("round ", *round, " is not open; the open round is ", open.number()));
    }
    BeginClosingLocked();
    if (rounds_.back().contributions_size() == 0) {
      closing_ = false;
      return absl::FailedPreconditionError(absl::StrCat(
          "round ", rounds_.back().number(), " has no contributions yet; nothing to fuse"));
    }
    closing = rounds_.back();
    model = *model_;
    new_version = max_base_version_ + 1;
  }
  auto fail = [&](absl::Status st) {
    (void)store_->DeleteBaseData(new_version);
    absl::MutexLock l(&mu_);
    closing_ = false;
    return st;
  };
  const auto fusion_start = std::chrono::steady_clock::now();
  storage::AuditBatch audit;
  Screen(&closing, &audit);
  const uint64_t number = closing.number();
  const uint64_t base_version = closing.base_version();
  std::vector<fusion::ContributionSource> sources;
  for (const auto& c : closing.contributions()) {
    if (c.state() == v1::QUARANTINED) continue;
    fusion::ContributionSource s;
    s.manifest = c.manifest();
    s.delta = c.encoding() == v1::DELTA || c.encoding() == v1::DELTA_INT8;
    if (c.encoding() == v1::DELTA_INT8) s.int8_block_size = c.int8_block_size();
    s.num_examples = c.num_examples();
    s.delta_norm = c.delta_norm();
    s.id = c.id();
    // Its chunks are under the round its upload began in.
    s.read = [store = store_, stored = c.upload_round(), id = c.id()](size_t, uint32_t t,
                                                                      uint64_t chunk) {
      return store->GetContributionChunk(stored, id, t, chunk);
    };
    if (c.trained_from_base() != base_version) {
      s.read_trained_from = [store = store_, from = c.trained_from_base()](size_t, uint32_t t,
                                                                           uint64_t chunk) {
        return store->GetBaseChunk(from, t, chunk);
      };
      s.weight = c.staleness_weight();
    }
    sources.push_back(std::move(s));
  }
  // The outer optimizer continues from the state stored with the round's base (after a
  // rollback, the good base's), never from the newest base's.
  fusion::OptimizerIo optimizer;
  auto base_state = store_->GetOptimizerState(base_version);
  if (base_state.ok()) {
    optimizer.round_base_step = base_state->step;
    optimizer.round_base_slots = base_state->slots;
    optimizer.round_base_state_sha256 = base_state->state_sha256;
  } else if (!absl::IsNotFound(base_state.status()) || !fusion::IsPlain(model)) {
    // Bases made before storage format 3 have no record; their models are all plain.
    return fail(
        absl::DataLossError(absl::StrCat("the optimizer state record of base v", base_version,
                                         " cannot be read: ", base_state.status().message())));
  }
  optimizer.read_state = [this, base_version](size_t slot, uint32_t t, uint64_t c) {
    return store_->GetOptimizerStateChunk(base_version, static_cast<uint32_t>(slot), t, c);
  };
  optimizer.write_state = [this, new_version](uint32_t slot, uint32_t t, uint64_t c,
                                              absl::string_view data) {
    return store_->PutOptimizerStateChunk(new_version, slot, t, c, data);
  };
  auto fusion_result = fusion::FuseRoundStep(
      number, model, sources,
      [this, base_version](size_t, uint32_t t, uint64_t c) {
        return store_->GetBaseChunk(base_version, t, c);
      },
      [this, new_version](uint32_t t, uint64_t c, absl::string_view data) {
        return store_->PutBaseChunk(new_version, t, c, data);
      },
      optimizer);
  if (!fusion_result.ok()) return fail(fusion_result.status());
  const std::string* sha = &fusion_result->base_sha256;
  storage::BaseOptimizerState made;
  made.kind = fusion::IsPlain(model) ? v1::OUTER_PLAIN : model.outer_optimizer();
  made.step = fusion_result->step;
  made.slots = fusion_result->slots;
  made.state_sha256 = fusion_result->state_sha256;
  made.from_base = base_version;
  const int64_t fusion_ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                                std::chrono::steady_clock::now() - fusion_start)
                                .count();

  const int64_t now = clock_->NowUnixMs();
  closing.set_fusion_duration_ms(fusion_ms);
  closing.set_state(v1::CLOSED);
  closing.set_closed_unix_ms(now);
  closing.set_result_base_version(new_version);
  closing.set_close_reason(reason);
  v1::RoundInfo next;
  next.set_number(number + 1);
  next.set_base_version(new_version);
  next.set_state(v1::OPEN);
  next.set_opened_unix_ms(now);
  const size_t fused = sources.size();
  audit.push_back(
      MakeAudit(actor, "round_closed",
                absl::StrCat("round=", number, " reason=", reason, " fused=", fused,
                             " quarantined=", closing.contributions_size() - fused,
                             " method=", v1::FusionMethod_Name(model.fusion_method()),
                             " outer=", v1::OuterOptimizer_Name(made.kind), " step=", made.step)));
  audit.push_back(
      MakeAudit(actor, "base_created",
                absl::StrCat("v", new_version, " from v", base_version, " sha256=", ToHex(*sha))));
  absl::Status st = store_->CommitRoundClose(closing, new_version, *sha, next, made, audit);
  if (!st.ok()) return fail(st);
  {
    absl::MutexLock l(&mu_);
    rounds_.back() = closing;
    rounds_.push_back(next);
    current_base_ = new_version;
    current_base_sha256_ = *sha;
    max_base_version_ = new_version;
    closing_ = false;
    ++change_seq_;
  }
  // The one line per round an operator reads in the log.
  CF_LOG(INFO) << "round " << number << " closed (" << reason << "): fused " << fused << " of "
               << closing.contributions_size() << " contributions ("
               << closing.contributions_size() - fused << " quarantined) with "
               << v1::FusionMethod_Name(model.fusion_method())
               << (fusion::IsPlain(model)
                       ? std::string()
                       : absl::StrCat(" and ", v1::OuterOptimizer_Name(made.kind), " step ",
                                      made.step))
               << " into base v" << new_version << " from v" << base_version << " in "
               << absl::StrFormat("%.1f", fusion_ms / 1e3) << " s; round " << number + 1 << " open";
  NotifyChanged();
  v1::CloseRoundResponse resp;
  *resp.mutable_closed_round() = closing;
  resp.set_new_base_version(new_version);
  return resp;
}

absl::StatusOr<v1::RollbackBaseResponse> RoundManager::RollbackBase(uint64_t good_version,
                                                                    const std::string& reason,
                                                                    const std::string& actor) {
  absl::MutexLock close_lock(&close_mu_);
  v1::RoundInfo closed, next;
  std::vector<uint64_t> bad;
  {
    absl::MutexLock l(&mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    auto is_bad = [&](uint64_t v) ABSL_SHARED_LOCKS_REQUIRED(mu_) {
      return std::find(bad_base_versions_.begin(), bad_base_versions_.end(), v) !=
             bad_base_versions_.end();
    };
    if (good_version >= current_base_ || is_bad(good_version)) {
      return absl::FailedPreconditionError(absl::StrCat("cannot roll back to base v", good_version,
                                                        ": give a good base older than the "
                                                        "current v",
                                                        current_base_));
    }
    if (IsGoneLocked(good_version)) {
      return absl::FailedPreconditionError(
          absl::StrCat("cannot roll back to base v", good_version,
                       ": retention removed its tensors; stored bases: ", StoredBasesLocked(),
                       " (pin the bases you may want to roll back to: coldfusectl pin)"));
    }
    for (uint64_t v = good_version + 1; v <= max_base_version_; ++v) {
      if (!is_bad(v)) bad.push_back(v);
    }
    BeginClosingLocked();
    closed = rounds_.back();
  }
  auto fail = [&](absl::Status st) {
    absl::MutexLock l(&mu_);
    closing_ = false;
    return st;
  };
  auto good_sha = store_->GetBaseSha256(good_version);
  if (!good_sha.ok()) return fail(good_sha.status());
  const int64_t now = clock_->NowUnixMs();
  closed.set_state(v1::CLOSED);
  closed.set_closed_unix_ms(now);
  closed.set_close_reason("rollback");
  next.set_number(closed.number() + 1);
  next.set_base_version(good_version);
  next.set_state(v1::OPEN);
  next.set_opened_unix_ms(now);
  const std::string why = reason.empty() ? std::string("operator rollback") : reason;
  absl::Status st = store_->CommitRollback(
      closed, bad, why, good_version, next,
      {MakeAudit(
          actor, "rollback",
          absl::StrCat("to v", good_version, "; bad: v", absl::StrJoin(bad, ", v"), "; round ",
                       closed.number(), " closed unfused with ", closed.contributions_size(),
                       " stored contributions; reason: ", why))});
  if (!st.ok()) return fail(st);
  v1::RollbackBaseResponse resp;
  {
    absl::MutexLock l(&mu_);
    rounds_.back() = closed;
    rounds_.push_back(next);
    current_base_ = good_version;
    current_base_sha256_ = *good_sha;
    bad_base_versions_.insert(bad_base_versions_.end(), bad.begin(), bad.end());
    std::sort(bad_base_versions_.begin(), bad_base_versions_.end());
    closing_ = false;
    ++change_seq_;
    for (uint64_t v : bad_base_versions_) resp.add_bad_base_versions(v);
  }
  CF_LOG(WARNING) << "rolled back to base v" << good_version
                  << " (bad: " << absl::StrJoin(bad, ", ") << "); round " << next.number()
                  << " open";
  NotifyChanged();
  *resp.mutable_opened_round() = next;
  return resp;
}

absl::StatusOr<std::vector<v1::AuditRecord>> RoundManager::ReadAudit(uint64_t after_seq,
                                                                     size_t limit) {
  ASSIGN_OR_RETURN(AuditPage page, ReadAuditPage(after_seq, limit));
  return std::move(page.records);
}

absl::StatusOr<RoundManager::AuditPage> RoundManager::ReadAuditPage(uint64_t after_seq,
                                                                    size_t limit) {
  if (limit == 0 || limit > 1000) limit = 1000;
  AuditPage page;
  ASSIGN_OR_RETURN(page.records,
                   store_->ReadAudit(after_seq, limit, kMaxAuditReplyBytes, &page.more));
  return page;
}

int RoundManager::AddListener(std::function<void()> fn) {
  absl::MutexLock l(&listeners_mu_);
  int id = next_listener_++;
  auto listener = std::make_shared<Listener>();
  listener->fn = std::move(fn);
  listeners_[id] = std::move(listener);
  return id;
}

void RoundManager::RemoveListener(int id) {
  absl::MutexLock l(&listeners_mu_);
  auto it = listeners_.find(id);
  if (it == listeners_.end()) return;
  std::shared_ptr<Listener> listener = std::move(it->second);
  listeners_.erase(it);
  listener->removed = true;
  // Listeners do their own I/O (the intake deletes stale sessions with synced writes);
  // only a call of this listener is waited for, never the others.
  listeners_mu_.Await(absl::Condition(
      +[](Listener* x) { return !x->running; }, listener.get()));
}

void RoundManager::NotifyChanged() {
  absl::MutexLock serial(&notify_mu_);
  std::vector<std::shared_ptr<Listener>> now;
  {
    absl::MutexLock l(&listeners_mu_);
    now.reserve(listeners_.size());
    for (auto& [id, x] : listeners_) now.push_back(x);
  }
  for (auto& x : now) {
    {
      absl::MutexLock l(&listeners_mu_);
      if (x->removed) continue;  // its owner may be gone
      x->running = true;
    }
    x->fn();
    absl::MutexLock l(&listeners_mu_);
    x->running = false;
  }
}

}  // namespace coldfuse::rounds
