#include "server/service/upload_streams.h"

#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "common/logging.h"
#include "common/printable.h"

namespace coldfuse::service {
namespace {

int64_t NowMs() { return absl::ToUnixMillis(absl::Now()); }

}  // namespace

UploadStreams::UploadStreams(const UploadStreamOptions& options,
                             std::function<std::optional<uint64_t>()> open_round)
    : options_(options), open_round_(std::move(open_round)) {
  sweeper_ = std::thread([this] {
    absl::MutexLock l(&mu_);
    while (!stopping_) {
      // Wakes early only to stop.
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), absl::Milliseconds(options_.sweep_ms));
      if (stopping_) break;
      mu_.Unlock();
      Sweep();
      mu_.Lock();
    }
  });
}

UploadStreams::~UploadStreams() {
  {
    absl::MutexLock l(&mu_);
    stopping_ = true;
  }
  sweeper_.join();
}

absl::StatusOr<uint64_t> UploadStreams::Open(grpc::CallbackServerContext* ctx) {
  absl::MutexLock l(&mu_);
  if (streams_.size() >= static_cast<size_t>(options_.max_streams)) {
    return absl::ResourceExhaustedError(
        absl::StrCat("the server has ", streams_.size(),
                     " uploads in progress, its limit (--max_upload_streams): retry in a minute"));
  }
  const uint64_t id = next_id_++;
  streams_[id] = Stream{ctx, "", std::nullopt, true, NowMs(), false};
  return id;
}

absl::Status UploadStreams::Claim(uint64_t stream, const std::string& contributor, uint64_t round) {
  absl::MutexLock l(&mu_);
  auto it = streams_.find(stream);
  if (it == streams_.end()) return absl::InternalError("upload stream not registered");
  int& count = per_contributor_[contributor];
  if (count >= options_.max_per_contributor) {
    if (count == 0) per_contributor_.erase(contributor);
    return absl::ResourceExhaustedError(absl::StrCat(
        "contributor '", PrintableTruncated(contributor, 128), "' has ", count,
        " uploads in progress, the limit per contributor (--max_uploads_per_contributor): "
        "finish or cancel one first"));
  }
  ++count;
  it->second.contributor = contributor;
  it->second.round = round;
  return absl::OkStatus();
}

void UploadStreams::Waiting(uint64_t stream) {
  absl::MutexLock l(&mu_);
  auto it = streams_.find(stream);
  if (it == streams_.end()) return;
  it->second.waiting = true;
  it->second.since_ms = NowMs();
}

void UploadStreams::Working(uint64_t stream) {
  absl::MutexLock l(&mu_);
  auto it = streams_.find(stream);
  if (it != streams_.end()) it->second.waiting = false;
}

void UploadStreams::Close(uint64_t stream) {
  absl::MutexLock l(&mu_);
  auto it = streams_.find(stream);
  if (it == streams_.end()) return;
  mu_.Await(absl::Condition(
      +[](Stream* s) { return !s->cancelling; }, &it->second));
  if (it->second.round.has_value()) {
    auto c = per_contributor_.find(it->second.contributor);
    if (c != per_contributor_.end() && --c->second <= 0) per_contributor_.erase(c);
  }
  streams_.erase(it);
}

void UploadStreams::Sweep() {
  const std::optional<uint64_t> open = open_round_();  // not under mu_: it takes the round lock
  const int64_t now = NowMs();
  std::vector<std::pair<uint64_t, grpc::CallbackServerContext*>> cancel;
  absl::MutexLock l(&mu_);
  for (auto& [id, s] : streams_) {
    if (s.cancelled || !s.waiting) continue;  // working streams finish on their own
    const bool stale = s.round.has_value() && s.round != open;
    const bool idle = now - s.since_ms >= options_.idle_timeout_ms;
    if (!stale && !idle) continue;
    s.cancelled = true;
    if (stale) {
      ++cancelled_stale_;
      CF_LOG(INFO) << "ending an upload stream of '" << PrintableTruncated(s.contributor, 128)
                   << "': its round " << *s.round << " has closed";
    } else {
      ++cancelled_idle_;
      CF_LOG(INFO) << "ending an upload stream of '"
                   << (s.contributor.empty() ? std::string("(no header yet)")
                                             : PrintableTruncated(s.contributor, 128))
                   << "': no message for " << (now - s.since_ms) / 1000 << " s";
    }
    s.cancelling = true;
    cancel.emplace_back(id, s.ctx);
  }
  if (cancel.empty()) return;
  mu_.Unlock();
  for (const auto& [id, ctx] : cancel) ctx->TryCancel();
  mu_.Lock();
  for (const auto& [id, ctx] : cancel) streams_.at(id).cancelling = false;
}

int UploadStreams::open_streams() const {
  absl::MutexLock l(&mu_);
  return static_cast<int>(streams_.size());
}

uint64_t UploadStreams::cancelled_idle() const {
  absl::MutexLock l(&mu_);
  return cancelled_idle_;
}

uint64_t UploadStreams::cancelled_stale() const {
  absl::MutexLock l(&mu_);
  return cancelled_stale_;
}

}  // namespace coldfuse::service
