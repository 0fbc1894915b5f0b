#include "client/daemon/daemon.h"

#include <algorithm>
#include <thread>

#include "absl/strings/cord.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/train/head_mismatch.h"
#include "common/logging.h"
#include "common/progress.h"
#include "common/rpc/diagnose.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"

namespace coldfuse::daemon {
namespace {

constexpr absl::string_view kLocalPayload = "type.coldfuse.dev/state-folder";

}  // namespace

absl::Status Daemon::Local(absl::Status st) const {
  if (st.ok() || IsLocalFailure(st)) return st;
  std::string message(st.message());
  if (absl::IsResourceExhausted(st)) {
    absl::StrAppend(&message, " (the state folder ", options_.state_dir,
                    " holds the base, the head and one contribution: about twice the model; "
                    "free space there and start coldfuse-client again)");
  }
  absl::Status out(st.code(), message);
  out.SetPayload(kLocalPayload, absl::Cord("state folder"));
  return out;
}

bool IsLocalFailure(const absl::Status& st) { return st.GetPayload(kLocalPayload).has_value(); }

Daemon::Daemon(DaemonOptions options, std::shared_ptr<grpc::Channel> channel, StateDir state,
               std::unique_ptr<LocalTask> task)
    : options_(std::move(options)),
      state_(std::move(state)),
      task_(std::move(task)),
      channel_(std::move(channel)) {}

void Daemon::Sleep(std::chrono::milliseconds d) {
  auto until = std::chrono::steady_clock::now() + d;
  while (!stop_ && std::chrono::steady_clock::now() < until) {
    std::this_thread::sleep_for(std::min<std::chrono::milliseconds>(
        std::chrono::milliseconds(50), std::chrono::duration_cast<std::chrono::milliseconds>(
                                           until - std::chrono::steady_clock::now()) +
                                           std::chrono::milliseconds(1)));
  }
}

absl::Status Daemon::Run() {
  auto stub = v1::Contributor::NewStub(channel_);
  int contributed = 0;
  auto backoff = std::chrono::milliseconds(500);
  std::string last_problem;
  while (!stop_) {
    auto polled = rpc::GetRound(channel_, std::chrono::seconds(10), options_.contributor);
    absl::Status st = polled.status();
    const v1::GetRoundResponse round = polled.ok() ? *polled : v1::GetRoundResponse();
    if (st.ok()) {
      ASSIGN_OR_RETURN(uint64_t last, state_.LoadLastRound());
      if (round.round() > last) st = Contribute(round);
      if (st.ok() && round.round() <= last) ReportWaiting(round);
      if (st.ok() && round.round() > last) {
        backoff = std::chrono::milliseconds(500);
        last_problem.clear();
        if (options_.max_rounds > 0 && ++contributed >= options_.max_rounds) {
          CF_LOG(INFO) << "contributed to " << contributed << " rounds; stopping";
          return absl::OkStatus();
        }
        continue;
      }
    }
    if (!st.ok()) {
      if (stop_) {  // e.g. training cancelled by Stop(): state stays resumable
        // Unless saving it failed (a full disk): say so, the next start begins afresh.
        if (!absl::IsCancelled(st)) CF_LOG(WARNING) << "while stopping: " << st.message();
        break;
      }
      // Now or later alike: the next pass asks GetRound again, after the backoff.
      // A write to the state folder that failed (a full disk, permissions) fails again.
      if (IsLocalFailure(st) || rpc::Retryability(st) == rpc::RetryWhen::kNever) return st;
      if (absl::IsUnavailable(st) && !options_.server.empty() &&
          std::chrono::steady_clock::now() >= next_diagnosis_) {
        // Unreachable: a server not up yet (wait), or a setup no retry can fix (stop).
        next_diagnosis_ = std::chrono::steady_clock::now() + std::chrono::seconds(30);
        absl::Status why =
            rpc::DiagnoseConnection(options_.server, options_.tls, std::chrono::seconds(3));
        if (!why.ok()) {
          return absl::FailedPreconditionError(
              absl::StrCat("cannot reach ", options_.server, ": ", why.message()));
        }
      }
      std::string problem(st.message());
      if (problem != last_problem) {  // say it once, not every retry
        CF_LOG(WARNING) << problem << " (retrying every <= " << options_.max_backoff.count() / 1000
                        << " s)";
        last_problem = problem;
      }
      if (rpc::Retryability(st) == rpc::RetryWhen::kNow) {
        // The server is unreachable or restarting: try again as soon as it answers
        // (the channel reconnects at least every second), not after the full backoff.
        Sleep(std::chrono::milliseconds(200));
        const auto until = std::chrono::steady_clock::now() + backoff;
        while (!stop_ && std::chrono::steady_clock::now() < until &&
               !channel_->WaitForConnected(std::chrono::system_clock::now() +
                                           std::chrono::milliseconds(200))) {
        }
      } else {
        Sleep(backoff);
      }
      backoff = std::min(backoff * 2, options_.max_backoff);
      continue;
    }
    Sleep(options_.poll_interval);  // nothing new: wait for the next round
  }
  return absl::OkStatus();
}

void Daemon::ReportWaiting(const v1::GetRoundResponse& r) {
  std::string closes;
  if (r.closes_by_unix_ms() > 0) {
    const int64_t left = std::max<int64_t>(0, r.closes_by_unix_ms() - r.server_time_unix_ms());
    closes = absl::StrFormat(", closes in <= %d s", (left + 999) / 1000);
  } else if (r.round_timeout_ms() > 0) {
    closes =
        absl::StrFormat(", closes <= %d s after it opened", (r.round_timeout_ms() + 999) / 1000);
  }
  // Once per change of the round or its count (the deadline moves with the clock).
  const std::string key = absl::StrCat(r.round(), "/", r.contributions());
  if (key == last_wait_report_) return;
  last_wait_report_ = key;
  CF_LOG(INFO) << absl::StrFormat(
      "waiting for round %d: round %d (ours is in) has %d/%d contributions%s", r.round() + 1,
      r.round(), r.contributions(), r.min_contributions(), closes);
}

absl::StatusOr<CachedBase> Daemon::EnsureBase(uint64_t version) {
  ASSIGN_OR_RETURN(std::optional<CachedBase> cached, state_.LoadBase());
  if (cached.has_value() && cached->version == version) return std::move(*cached);
  Progress progress(absl::StrCat("pull base v", version), 0, Progress::Unit::kBytes);
  rpc::CallOptions call;
  call.cancel = &stop_;
  call.on_progress = progress.TransferHook();
  ASSIGN_OR_RETURN(rpc::PulledBase pulled, rpc::PullBase(channel_, version, call));
  progress.Finish();
  CachedBase base;
  base.version = pulled.version;
  base.sha256 = pulled.sha256;
  base.tensors = std::move(pulled.tensors);
  RETURN_IF_ERROR(Local(state_.SaveBase(base)));
  return base;
}

absl::StatusOr<std::optional<SavedTraining>> Daemon::LoadSavedTraining() {
  absl::StatusOr<std::optional<SavedTraining>> saved = state_.LoadTraining();
  if (absl::IsDataLoss(saved.status())) {
    CF_LOG(WARNING) << saved.status().message() << ": dropping it";
    RETURN_IF_ERROR(Local(state_.DropTraining()));
    return std::nullopt;
  }
  return saved;
}

std::string Daemon::TrainingKey(const CachedBase& base, const std::vector<HostTensor>& head) const {
  Sha256 h;
  h.Update(absl::StrCat("base ", base.version, " "));
  h.Update(base.sha256);
  h.Update(head.empty() ? std::string("no head") : TensorsSha256(head));
  h.Update(task_->Fingerprint());
  return ToHex(h.Finish());
}

double Daemon::TimeBudget(const v1::GetRoundResponse& r,
                          std::chrono::steady_clock::time_point asked) const {
  if (options_.stop_before_deadline.count() <= 0 || r.closes_by_unix_ms() <= 0) return 0;
  // The server's clock for how long the round had left (no clock sync needed), ours for
  // the time since, less the margin asked for.
  const double left_s =
      static_cast<double>(r.closes_by_unix_ms() - r.server_time_unix_ms()) / 1000.0 -
      std::chrono::duration<double>(std::chrono::steady_clock::now() - asked).count() -
      static_cast<double>(options_.stop_before_deadline.count());
  // Already too late to train at all: one step, so the round still gets a contribution.
  return std::max(left_s, 1e-3);
}

absl::Status Daemon::Contribute(const v1::GetRoundResponse& round) {
  const auto asked = std::chrono::steady_clock::now();  // just after GetRound answered
  ASSIGN_OR_RETURN(std::optional<Contribution> pending, state_.LoadPending());
  if (pending.has_value()) {
    // Trained before a restart (or a failed push): the server takes it while its base is
    // recent enough (an asynchronous contribution), and says FAILED_PRECONDITION if not.
    CF_LOG(INFO) << "round " << round.round() << ": sending the contribution trained from base v"
                 << pending->header.base_version() << " before a restart or a failed push";
    return Push(*pending, round.round());
  }

  // A model this task cannot train is a setup problem: say so before pulling gigabytes.
  RETURN_IF_ERROR(task_->CheckModel(round.model_spec()));
  // A run stopped midway continues on its own base while the server still takes
  // contributions trained from it (it is then fused as a stale one), rather than
  // starting over on the current base.
  ASSIGN_OR_RETURN(std::optional<SavedTraining> saved, LoadSavedTraining());
  uint64_t version = round.base_version();
  if (saved.has_value() && saved->base_version != version) {
    const auto& accepted = round.staleness().accepted_base_versions();
    if (std::find(accepted.begin(), accepted.end(), saved->base_version) != accepted.end()) {
      version = saved->base_version;
    }
  }
  ASSIGN_OR_RETURN(CachedBase base, EnsureBase(version));
  ASSIGN_OR_RETURN(std::vector<HostTensor> head, state_.LoadHead());
  if (!head.empty()) {
    ASSIGN_OR_RETURN(std::optional<std::vector<std::string>> kept, state_.LoadHeadLabels());
    const std::vector<std::string> labels = task_->HeadLabels();
    if (kept.has_value() && *kept != labels) {
      return absl::InvalidArgumentError(
          absl::StrCat("the head in ", state_.HeadPath(), " was trained for the labels [",
                       absl::StrJoin(*kept, ", "), "] but this data has [",
                       absl::StrJoin(labels, ", "), "]: pass --labels=", absl::StrJoin(*kept, ","),
                       " to keep it, or delete "
                       "head.safetensors and head.labels to start a new head"));
    }
  }
  const std::string key = TrainingKey(base, head);
  if (saved.has_value() && saved->key != key) {
    CF_LOG(INFO) << "the training saved in " << state_.TrainingPath() << " (base v"
                 << saved->base_version << ", step " << saved->checkpoint.step << " of "
                 << saved->checkpoint.total
                 << ") was for another base, head, data or options; starting afresh";
    saved.reset();
    RETURN_IF_ERROR(Local(state_.DropTraining()));
  }
  train::TrainControl control;
  control.should_stop = [this] { return stop_.load(); };
  control.checkpoint_seconds = static_cast<double>(options_.save_training_every.count());
  control.time_budget_seconds = TimeBudget(round, asked);
  control.on_checkpoint = [&](const train::TrainCheckpoint& c) {
    SavedTraining t;
    t.key = key;
    t.base_version = base.version;
    t.checkpoint = c;
    return Local(state_.SaveTraining(t));
  };
  if (saved.has_value()) {
    control.resume = &saved->checkpoint;
    CF_LOG(INFO) << "round " << round.round() << ": continuing the training of base v"
                 << base.version << " saved at step " << saved->checkpoint.step << " of "
                 << saved->checkpoint.total
                 << (base.version != round.base_version()
                         ? absl::StrCat(" (the server now has v", round.base_version(),
                                        "; this one is fused as a stale contribution)")
                         : std::string());
  } else {
    CF_LOG(INFO) << "round " << round.round() << ": fine-tuning base v" << base.version << " ("
                 << round.model_spec() << ")";
  }
  auto result = task_->Train(round.model_spec(), base.tensors, head, 0, control);
  if (!result.ok() && control.resume != nullptr && absl::IsInvalidArgument(result.status()) &&
      absl::StartsWith(result.status().message(), "the saved training state")) {
    CF_LOG(WARNING) << result.status().message() << " (" << state_.TrainingPath()
                    << "); starting the round's training afresh";
    RETURN_IF_ERROR(Local(state_.DropTraining()));
    control.resume = nullptr;
    result = task_->Train(round.model_spec(), base.tensors, head, 0, control);
  }
  if (!result.ok() && absl::IsCancelled(result.status()) && stop_) {
    CF_LOG(INFO) << result.status().message() << "; saved in " << state_.TrainingPath()
                 << " (start coldfuse-client again to continue from there)";
    return result.status();
  }
  if (!result.ok()) {
    // Only a head that does not fit is the head's fault (the trainers mark it); other
    // problems keep their own message.
    if (!head.empty() && train::IsHeadMismatch(result.status())) {
      return absl::InvalidArgumentError(
          absl::StrCat(result.status().message(), " (the head in ", state_.HeadPath(),
                       " does not fit this model or data; delete it to start a new head)"));
    }
    return result.status();
  }
  CF_LOG(INFO) << "round " << round.round() << ": " << result->summary;

  Contribution c;
  c.header.set_round(round.round());
  c.header.set_base_version(base.version);
  c.header.set_contributor(options_.contributor);
  c.header.set_task(options_.task);
  c.header.set_num_examples(result->num_examples);
  auto& metrics = *c.header.mutable_metrics();
  for (const auto& [name, value] : result->metrics) metrics[name] = value;
  // Resumable: kept with the pending contribution, so a push broken off (or a daemon
  // restarted) continues where the server stopped instead of resending.
  c.header.set_upload_id(rpc::NewUploadId());
  c.tensors = std::move(result->body);
  // Encoded once, here: the pending contribution is what is sent, byte for byte.
  RETURN_IF_ERROR(EncodeContribution(options_.send, base.tensors, &c.tensors, &c.header));
  // The contribution first, then the head trained with it: a write that fails leaves the
  // head as it was, so a restart never trains a head on from an unsent contribution.
  RETURN_IF_ERROR(Local(state_.SavePending(c)));
  RETURN_IF_ERROR(Local(state_.SaveHead(result->head, task_->HeadLabels())));
  // The run is finished (a crash before this line finds a head it does not match).
  RETURN_IF_ERROR(Local(state_.DropTraining()));
  return Push(c, round.round());
}

absl::Status Daemon::Push(const Contribution& c, uint64_t open_round) {
  rpc::HostTensorSource source(c.tensors);
  Progress progress(absl::StrCat("push to round ", open_round), 0, Progress::Unit::kBytes);
  rpc::CallOptions call;
  call.cancel = &stop_;  // Ctrl-C stops the upload within a chunk; it stays resumable
  call.on_progress = progress.TransferHook();
  rpc::TransferStats stats;
  auto receipt = rpc::PushContribution(channel_, c.header, &source, call, {}, &stats);
  if (receipt.ok()) {
    // What went over the wire this time: less than the contribution when an upload that
    // was cut off (or stopped) before resumed from what the server had stored.
    progress.Finish(
        absl::StrCat(stats.bytes_on_wire, " bytes on the wire in ", stats.attempts, " attempt(s)"));
  }
  if (receipt.ok() || absl::IsAlreadyExists(receipt.status())) {
    // The round it counts in: the open one, later than the one we trained in if rounds
    // closed meanwhile (it is then fused as a stale contribution).
    uint64_t round = std::max(open_round, c.header.round());
    if (receipt.ok()) {
      round = receipt->round();
      CF_LOG(INFO) << "round " << round << ": contribution " << receipt->contribution_id()
                   << " accepted (" << receipt->bytes() << " bytes"
                   << (round != c.header.round()
                           ? absl::StrCat("; trained in round ", c.header.round(), " from base v",
                                          c.header.base_version(),
                                          ", fused as a stale "
                                          "contribution")
                           : std::string())
                   << ")";
    } else {
      CF_LOG(INFO) << "round " << round
                   << ": the server already has our contribution: " << receipt.status().message();
    }
    RETURN_IF_ERROR(Local(state_.SaveLastRound(round)));
    return Local(state_.ArchivePending(round, options_.keep_contributions));
  }
  if (absl::IsFailedPrecondition(receipt.status())) {
    // Its base is too old now (or was rolled back): train again from the current base.
    CF_LOG(WARNING) << receipt.status().message();
    RETURN_IF_ERROR(Local(state_.DropPending()));
  }
  return receipt.status();
}

}  // namespace coldfuse::daemon
