#include "server/rounds/round_manager.h"

#include <google/protobuf/io/coded_stream.h>
#include <google/protobuf/io/zero_copy_stream_impl_lite.h>

#include <cmath>
#include <limits>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/match.h"
#include "absl/strings/string_view.h"
#include "common/logging.h"
#include "common/model_spec.h"
#include "common/names.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "server/fusion/fusion.h"
#include "server/fusion/robust.h"
#include "server/rounds/element_reader.h"

namespace coldfuse::rounds {
namespace {

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

v1::AuditRecord Audit(const std::string& actor, absl::string_view action, std::string detail) {
  v1::AuditRecord r;
  r.set_actor(actor);
  r.set_action(std::string(action));
  r.set_detail(std::move(detail));
  return r;
}

std::string Fmt(double x) { return absl::StrFormat("%.6g", x); }

}  // namespace

RoundManager::RoundManager(storage::Store* store, const RoundOptions& options, Clock* clock)
    : store_(store), options_(options), clock_(clock) {}

absl::StatusOr<std::unique_ptr<RoundManager>> RoundManager::Create(storage::Store* store,
                                                                  const RoundOptions& options,
                                                                  Clock* clock) {
  if (options.min_contributions == 0) {
    return absl::InvalidArgumentError("min_contributions must be at least 1");
  }
  if (options.outlier_factor != 0 && options.outlier_factor < 1) {
    return absl::InvalidArgumentError(
        "outlier_factor must be 0 (off) or at least 1: below 1 it could quarantine everyone");
  }
  ASSIGN_OR_RETURN(storage::LoadedState state, store->Load());
  std::unique_ptr<RoundManager> m(new RoundManager(store, options, clock));
  m->model_ = std::move(state.model);
  m->current_base_ = state.current_base;
  m->current_base_sha256_ = std::move(state.current_base_sha256);
  m->rounds_ = std::move(state.rounds);
  m->next_contribution_id_ = state.next_contribution_id;
  m->max_base_version_ = state.max_base_version;
  m->bad_base_versions_ = std::move(state.bad_base_versions);
  if (m->model_.has_value() &&
      (m->rounds_.empty() || m->rounds_.back().state() != v1::OPEN ||
       m->rounds_.back().base_version() != m->current_base_)) {
    return absl::DataLossError("storage: the open round does not match the current base");
  }
  // Interrupted uploads stay resumable while their round is open; the rest go.
  for (auto& rec : state.uploads) {
    const std::string& uid = rec.header().upload_id();
    if (m->model_.has_value() && rec.header().round() == m->rounds_.back().number()) {
      UploadSlot slot;
      slot.round = rec.header().round();
      slot.id = rec.contribution_id();
      slot.contributor = rec.header().contributor();
      slot.record = std::move(rec);
      m->uploads_[uid] = std::move(slot);
    } else {
      m->DropUpload(uid, rec.header().round(), rec.contribution_id());
    }
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
    auto closed = MaybeClose();  // policy closes are audited with actor "server"
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

absl::StatusOr<std::unique_ptr<TensorUpload>> RoundManager::BeginInit(const v1::InitHeader& header,
                                                                     const std::string& actor) {
  if (header.model_spec().empty()) {
    return absl::InvalidArgumentError("model_spec is empty: say which architecture this is");
  }
  RETURN_IF_ERROR(ValidateManifest(header.manifest()));
  if (absl::StartsWith(header.model_spec(), "mlp:")) {
    ASSIGN_OR_RETURN(MlpSpec spec, ParseModelSpec(header.model_spec()));
    RETURN_IF_ERROR(CheckManifestMatches(MlpManifest(spec), header.manifest()));
  }
  if (!v1::FusionMethod_IsValid(header.fusion_method())) {
    return absl::InvalidArgumentError("unknown fusion method");
  }
  const auto& fo = header.fusion_options();
  if (fo.trim_fraction() < 0 || fo.trim_fraction() >= 0.5 || fo.clip_factor() < 0) {
    return absl::InvalidArgumentError(
        "fusion options out of range: trim_fraction in [0, 0.5), clip_factor >= 0");
  }
  v1::ModelInfo model;
  model.set_model_spec(header.model_spec());
  *model.mutable_manifest() = header.manifest();
  model.set_fusion_method(header.fusion_method() == v1::FUSION_METHOD_UNSPECIFIED
                              ? v1::MEAN
                              : header.fusion_method());
  *model.mutable_fusion_options() = fo;
  if (fo.trim_fraction() == 0) model.mutable_fusion_options()->set_trim_fraction(0.2);
  if (fo.clip_factor() == 0) model.mutable_fusion_options()->set_clip_factor(1.0);
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
      [this, model, actor](const std::string& sha, uint64_t bytes) {
        return CommitInit(model, sha, bytes, actor);
      },
      [this](const absl::Status&) {
        std::lock_guard<std::mutex> l(mu_);
        init_in_progress_ = false;
        if (!model_.has_value()) (void)store_->DeleteBaseData(0);
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
  {
    std::lock_guard<std::mutex> l(mu_);
    RETURN_IF_ERROR(store_->CommitInit(
        model, sha256, first,
        {Audit(actor, "init",
               absl::StrCat(model.model_spec(), " fusion=",
                            v1::FusionMethod_Name(model.fusion_method()))),
         Audit(actor, "base_created", absl::StrCat("v0 sha256=", ToHex(sha256)))}));
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

void RoundManager::AuditRejection(const std::string& actor, const absl::Status& why) {
  // Unsynced: a rejection changes no state, and must not cost the server an fsync.
  absl::Status st = store_->AppendAudit({Audit(
      actor, "contribution_rejected",
      absl::StrCat(absl::StatusCodeToString(why.code()), ": ", why.message()))});
  if (!st.ok()) CF_LOG(ERROR) << "cannot write audit record: " << st;
}

absl::Status RoundManager::CheckQuotaLocked(const v1::ContributionHeader& header, uint64_t bytes) {
  const auto key = std::make_pair(header.round(), header.contributor());
  if (uploads_started_[key] >= options_.max_uploads_per_round) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "contributor '", header.contributor(), "' started ", uploads_started_[key],
        " uploads in round ", header.round(), "; the limit is ", options_.max_uploads_per_round,
        " per round"));
  }
  if (options_.max_bytes_per_day > 0) {
    const int64_t day = clock_->NowUnixMs() / (24 * 3600 * 1000LL);
    uint64_t used = bytes_by_day_[{day, header.contributor()}];
    if (used + bytes > options_.max_bytes_per_day) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "contributor '", header.contributor(), "' has ", used, " bytes accepted today; ",
          bytes, " more would pass the daily limit of ", options_.max_bytes_per_day));
    }
  }
  ++uploads_started_[key];
  return absl::OkStatus();
}

namespace {

absl::Status CheckUploadId(absl::string_view id) {
  bool ok = id.size() >= 8 && id.size() <= 64;
  for (char c : id) {
    ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                c == '-' || c == '_');
  }
  if (ok) return absl::OkStatus();
  return absl::InvalidArgumentError("upload_id must be 8 to 64 of A-Z a-z 0-9 _ -");
}

// The header without its resume position: what must match between an upload's streams.
// Deterministic serialization: map fields (metrics) otherwise come out in any order.
std::string HeaderKey(v1::ContributionHeader h) {
  h.clear_resume_tensor();
  h.clear_resume_offset();
  std::string out;
  {
    google::protobuf::io::StringOutputStream stream(&out);
    google::protobuf::io::CodedOutputStream coded(&stream);
    coded.SetSerializationDeterministic(true);
    h.SerializeToCodedStream(&coded);
  }
  return out;
}

// Names, shapes and order must match the base; dtypes may be any float type.
absl::Status CheckContributionManifest(const v1::Manifest& base, const v1::Manifest& got) {
  v1::Manifest same_dtypes = got;
  for (int i = 0; i < same_dtypes.tensors_size() && i < base.tensors_size(); ++i) {
    if (DTypeSize(got.tensors(i).dtype()) == 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", got.tensors(i).name(), "' has no float dtype: send F32, F16, BF16 or F64"));
    }
    same_dtypes.mutable_tensors(i)->set_dtype(base.tensors(i).dtype());
  }
  return CheckManifestMatches(base, same_dtypes);
}

// Shared by the sink and the commit step of one upload stream.
struct UploadProgressState {
  v1::UploadSessionRecord record;
  std::vector<std::unique_ptr<ElementReader>> base;  // per tensor, made on first use
};

}  // namespace

absl::StatusOr<std::unique_ptr<TensorUpload>> RoundManager::BeginContribution(
    const v1::ContributionHeader& header) {
  uint64_t id = 0;
  v1::Manifest base_manifest;
  auto progress = std::make_shared<UploadProgressState>();
  const std::string& uid = header.upload_id();
  bool resuming = false;
  absl::Status st = [&]() -> absl::Status {
    if (!uid.empty()) RETURN_IF_ERROR(CheckUploadId(uid));
    if (header.encoding() != v1::ENCODING_UNSPECIFIED && header.encoding() != v1::FULL &&
        header.encoding() != v1::DELTA) {
      return absl::InvalidArgumentError("unknown encoding: use FULL or DELTA");
    }
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
          open.number() + 1, " from the next base"));
    }
    RETURN_IF_ERROR(CheckHeader(header));
    for (const auto& c : open.contributions()) {
      if (c.contributor() == header.contributor()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "contributor '", header.contributor(), "' already contributed to round ",
            open.number(), " (contribution ", c.id(), ")"));
      }
    }
    RETURN_IF_ERROR(CheckContributionManifest(model_->manifest(), header.manifest()));
    base_manifest = model_->manifest();
    auto slot = uid.empty() ? uploads_.end() : uploads_.find(uid);
    if (slot != uploads_.end()) {
      UploadSlot& u = slot->second;
      if (u.contributor != header.contributor()) {
        return absl::PermissionDeniedError(absl::StrCat(
            "upload '", uid, "' belongs to another contributor; choose another upload_id"));
      }
      if (u.streaming) {
        return absl::AbortedError(absl::StrCat(
            "upload '", uid, "' is still streaming; retry in a moment"));
      }
      if (HeaderKey(u.record.header()) != HeaderKey(header)) {
        return absl::FailedPreconditionError(absl::StrCat(
            "the header differs from interrupted upload '", uid,
            "'; resume with the same header, or start over with a new upload_id"));
      }
      if (header.resume_tensor() != u.record.next_tensor() ||
          header.resume_offset() != u.record.next_offset()) {
        // The server may have stored more since the client asked: ask again.
        return absl::AbortedError(absl::StrCat(
            "upload '", uid, "' resumes at tensor #", u.record.next_tensor(), " offset ",
            u.record.next_offset(), " (ask GetUpload)"));
      }
      u.streaming = true;
      id = u.id;
      progress->record = u.record;
      resuming = true;
      return absl::OkStatus();
    }
    if (header.resume_tensor() != 0 || header.resume_offset() != 0) {
      return absl::NotFoundError(absl::StrCat(
          "the server holds nothing of upload '", uid, "': start it from the beginning"));
    }
    ASSIGN_OR_RETURN(uint64_t sent_bytes, TotalBytes(header.manifest()));
    RETURN_IF_ERROR(CheckQuotaLocked(header, sent_bytes));
    id = next_contribution_id_++;
    progress->record.set_contribution_id(id);
    *progress->record.mutable_header() = header;
    if (!uid.empty()) {
      UploadSlot u;
      u.round = header.round();
      u.id = id;
      u.contributor = header.contributor();
      u.streaming = true;
      u.record = progress->record;
      uploads_[uid] = std::move(u);
    }
    return absl::OkStatus();
  }();
  if (!st.ok()) {
    if (!absl::IsAlreadyExists(st) && !absl::IsAborted(st)) {
      AuditRejection(header.contributor(), st);
    }
    return st;
  }
  const uint64_t round = header.round();
  const uint64_t base_version = header.base_version();
  const bool delta = header.encoding() == v1::DELTA;
  const v1::Manifest sent = header.manifest();
  progress->base.resize(sent.tensors_size());
  storage::Store* store = store_;
  // GetUpload reports live progress while the stream is still attached.
  auto on_progress = [this, uid](const v1::UploadSessionRecord& rec) {
    std::lock_guard<std::mutex> l(mu_);
    auto it = uploads_.find(uid);
    if (it != uploads_.end()) it->second.record = rec;
  };
  // Each stored chunk (as sent): reject non-finite values, add to the update's norm,
  // store, and (resumable uploads) record how far the stored data goes.
  auto sink = [store, round, id, base_version, delta, sent, base_manifest, progress, uid,
               on_progress](
                  uint32_t t, uint64_t c, absl::string_view data) -> absl::Status {
    const v1::TensorSpec& spec = sent.tensors(t);
    const size_t esize = DTypeSize(spec.dtype());
    const uint64_t n = data.size() / esize;
    uint64_t first = 0;
    if (fusion::CountNonFinite(spec.dtype(), data, &first) > 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", spec.name(), "' holds a NaN or infinity at element ",
          c * (kChunkBytes / esize) + first, ": a diverged fine-tuning run cannot be fused"));
    }
    double sum_sq = 0;
    const v1::TensorSpec& bspec = base_manifest.tensors(t);
    if (!delta && spec.dtype() == bspec.dtype()) {
      // Sent as the base is stored: the same chunk grid, one pass over both buffers.
      ASSIGN_OR_RETURN(std::string base, store->GetBaseChunk(base_version, t, c));
      if (base.size() != data.size()) {
        return absl::DataLossError(absl::StrCat("base chunk ", c, " of '", spec.name(),
                                                "' has the wrong size"));
      }
      fusion::DeltaNormAccumulator acc;
      acc.Add(spec.dtype(), base, data);
      sum_sq = acc.Norm() * acc.Norm();
    } else {
      std::vector<double> values(n), base(n);  // base stays 0 for a DELTA
      DecodeToDouble(spec.dtype(), data.data(), n, values.data());
      if (!delta) {
        if (progress->base[t] == nullptr) {
          progress->base[t] = std::make_unique<ElementReader>(
              bspec.dtype(), *NumElements(bspec), [store, base_version, t](uint64_t chunk) {
                return store->GetBaseChunk(base_version, t, chunk);
              });
        }
        RETURN_IF_ERROR(progress->base[t]->Read(c * (kChunkBytes / esize), n, base.data()));
      }
      for (uint64_t i = 0; i < n; ++i) {
        const double d = values[i] - base[i];
        sum_sq += d * d;
      }
    }
    RETURN_IF_ERROR(store->PutContributionChunk(round, id, t, c, data));
    v1::UploadSessionRecord& rec = progress->record;
    rec.set_sum_sq(rec.sum_sq() + sum_sq);
    rec.set_bytes_stored(rec.bytes_stored() + data.size());
    const uint64_t end = c * kChunkBytes + data.size();
    if (end == *ByteLength(spec)) {
      rec.set_next_tensor(t + 1);
      rec.set_next_offset(0);
    } else {
      rec.set_next_tensor(t);
      rec.set_next_offset(end);
    }
    if (!uid.empty()) {
      RETURN_IF_ERROR(store->PutUpload(uid, rec));
      on_progress(rec);
    }
    return absl::OkStatus();
  };
  auto upload = std::make_unique<TensorUpload>(
      sent, sink,
      [this, header, id, progress](const std::string& sha, uint64_t bytes) {
        return CommitContribution(header, id, sha, bytes, std::sqrt(progress->record.sum_sq()));
      },
      [this, round, id, uid, progress, who = header.contributor()](const absl::Status& why) {
        // A broken connection keeps a resumable upload; anything else removes it.
        const bool broken = why.ok() || absl::IsCancelled(why) || absl::IsUnavailable(why) ||
                            absl::IsDeadlineExceeded(why);
        if (!uid.empty() && broken) {
          bool still_open;
          {
            std::lock_guard<std::mutex> l(mu_);
            still_open = !rounds_.empty() && rounds_.back().number() == round && !closing_;
            auto it = uploads_.find(uid);
            if (it != uploads_.end()) {
              it->second.streaming = false;
              it->second.record = progress->record;
              if (!still_open) uploads_.erase(it);
            }
          }
          if (still_open) {
            CF_LOG(INFO) << "upload " << uid << " interrupted ("
                         << (why.ok() ? std::string("stream dropped")
                                      : std::string(why.message()))
                         << "); kept for resumption";
            return;
          }
          // Its round closed while it streamed: it can never finish.
          DropUpload(uid, round, id);
          return;
        }
        if (!uid.empty()) {
          CF_LOG(INFO) << "upload " << uid << " dropped: " << why;
          std::lock_guard<std::mutex> l(mu_);
          uploads_.erase(uid);
        }
        DropUpload(uid, round, id);
        if (!why.ok() && !absl::IsAlreadyExists(why)) AuditRejection(who, why);
      });
  if (resuming) {
    // Re-hash what is stored, so the trailer still checks every byte from the start.
    const v1::UploadSessionRecord rec = progress->record;
    absl::Status resumed = upload->ResumeAt(
        rec.next_tensor(), rec.next_offset(),
        [store, round, id](uint32_t t, uint64_t c) {
          return store->GetContributionChunk(round, id, t, c);
        });
    if (!resumed.ok()) return resumed;  // the abort hook marks the slot idle again
  }
  return upload;
}

void RoundManager::DropUpload(const std::string& upload_id, uint64_t round, uint64_t id) {
  // The session first: chunks without a session or record are removed by Store::Load,
  // while a session without its chunks could never resume.
  absl::Status st = upload_id.empty() ? absl::OkStatus() : store_->DeleteUpload(upload_id);
  if (st.ok()) st = store_->DeleteContributionData(round, id);
  if (!st.ok()) CF_LOG(ERROR) << "cannot remove upload " << id << ": " << st;
}

absl::StatusOr<v1::UploadProgress> RoundManager::GetUpload(const std::string& upload_id,
                                                          const std::string& contributor) const {
  std::lock_guard<std::mutex> l(mu_);
  auto it = uploads_.find(upload_id);
  if (it == uploads_.end() || it->second.contributor != contributor) {
    return absl::NotFoundError(absl::StrCat(
        "the server holds nothing of upload '", upload_id, "': start it from the beginning"));
  }
  v1::UploadProgress p;
  p.set_upload_id(upload_id);
  p.set_round(it->second.round);
  p.set_tensor_index(it->second.record.next_tensor());
  p.set_offset(it->second.record.next_offset());
  p.set_bytes_stored(it->second.record.bytes_stored());
  return p;
}

fusion::ChunkReader RoundManager::ContributionAsBase(const v1::ContributionInfo& info,
                                                     uint64_t round, uint64_t base_version,
                                                     const v1::Manifest& base_manifest) const {
  storage::Store* store = store_;
  const uint64_t id = info.id();
  const bool delta = info.encoding() == v1::DELTA;
  bool same = !delta;
  for (int t = 0; same && t < info.manifest().tensors_size(); ++t) {
    same = info.manifest().tensors(t).dtype() == base_manifest.tensors(t).dtype();
  }
  if (same) {  // stored exactly as the base is: read the chunks as they are
    return [store, round, id](size_t, uint32_t t, uint64_t c) {
      return store->GetContributionChunk(round, id, t, c);
    };
  }
  // Convert: decode the stored dtype over the base chunk's element range, add the base
  // for a delta, encode in the base's dtype. Readers cache one stored chunk per tensor.
  auto readers = std::make_shared<std::vector<std::unique_ptr<ElementReader>>>(
      base_manifest.tensors_size());
  auto readers_mu = std::make_shared<std::mutex>();  // fusion reads two chunks at once
  const v1::Manifest sent = info.manifest();
  return [store, round, id, delta, base_version, base_manifest, sent, readers, readers_mu](
             size_t, uint32_t t, uint64_t c) -> absl::StatusOr<std::string> {
    std::lock_guard<std::mutex> l(*readers_mu);
    const v1::TensorSpec& bspec = base_manifest.tensors(t);
    const size_t bsize = DTypeSize(bspec.dtype());
    ASSIGN_OR_RETURN(uint64_t total, NumElements(bspec));
    const uint64_t begin = c * (kChunkBytes / bsize);
    const uint64_t n = std::min<uint64_t>(kChunkBytes / bsize, total - begin);
    if ((*readers)[t] == nullptr) {
      (*readers)[t] = std::make_unique<ElementReader>(
          sent.tensors(t).dtype(), total, [store, round, id, t](uint64_t chunk) {
            return store->GetContributionChunk(round, id, t, chunk);
          });
    }
    std::vector<double> values(n);
    RETURN_IF_ERROR((*readers)[t]->Read(begin, n, values.data()));
    if (delta) {
      ASSIGN_OR_RETURN(std::string base, store->GetBaseChunk(base_version, t, c));
      if (base.size() != n * bsize) return absl::DataLossError("base chunk size mismatch");
      std::vector<double> b(n);
      DecodeToDouble(bspec.dtype(), base.data(), n, b.data());
      for (uint64_t i = 0; i < n; ++i) values[i] += b[i];
    }
    std::string out(n * bsize, '\0');
    EncodeFromDouble(bspec.dtype(), values.data(), n, out.data());
    return out;
  };
}

absl::StatusOr<UploadResult> RoundManager::CommitContribution(
    const v1::ContributionHeader& header, uint64_t id, const std::string& sha256,
    uint64_t bytes, double delta_norm) {
  v1::ContributionInfo info;
  info.set_id(id);
  info.set_contributor(header.contributor());
  info.set_task(header.task());
  info.set_num_examples(header.num_examples());
  *info.mutable_metrics() = header.metrics();
  info.set_sha256(sha256);
  info.set_bytes(bytes);
  info.set_received_unix_ms(clock_->NowUnixMs());
  info.set_delta_norm(delta_norm);
  info.set_state(v1::ACCEPTED);
  info.set_encoding(header.encoding() == v1::DELTA ? v1::DELTA : v1::FULL);
  *info.mutable_manifest() = header.manifest();
  // Make this upload's chunks durable before taking the state lock (a flush can take a
  // while); the synced record write below points at them.
  RETURN_IF_ERROR(store_->FlushContributions());
  bool quorum;
  {
    std::lock_guard<std::mutex> l(mu_);
    v1::RoundInfo& open = rounds_.back();
    if (open.number() != header.round() || closing_) {
      return absl::FailedPreconditionError(absl::StrCat(
          "round ", header.round(), " closed while the contribution was uploading; "
          "pull the new base and contribute again"));
    }
    for (const auto& c : open.contributions()) {
      if (c.contributor() == header.contributor()) {
        return absl::AlreadyExistsError(absl::StrCat(
            "contributor '", header.contributor(), "' already contributed to round ",
            open.number()));
      }
    }
    RETURN_IF_ERROR(store_->CommitContribution(
        open.number(), info,
        {Audit(header.contributor(), "contribution_accepted",
               absl::StrCat("id=", id, " round=", open.number(), " bytes=", bytes,
                            " delta_norm=", Fmt(delta_norm), " sha256=", ToHex(sha256)))},
        header.upload_id()));
    if (!header.upload_id().empty()) uploads_.erase(header.upload_id());
    *open.add_contributions() = info;
    bytes_by_day_[{clock_->NowUnixMs() / (24 * 3600 * 1000LL), header.contributor()}] += bytes;
    ++change_seq_;
    quorum = static_cast<uint32_t>(open.contributions_size()) >= options_.min_contributions;
  }
  CF_LOG(INFO) << "round " << header.round() << ": accepted contribution " << id << " from "
               << header.contributor() << " (" << bytes << " bytes, delta norm "
               << Fmt(delta_norm) << ")";
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
  if (v > max_base_version_) {
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
  std::lock_guard<std::mutex> close_lock(close_mu_);
  return CloseLocked(round, reason, actor);
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
      audit->push_back(Audit("server", "contribution_quarantined",
                             absl::StrCat("id=", c.id(), " contributor=", c.contributor(),
                                          " round=", round->number(), ": ",
                                          c.quarantine_reason())));
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
    new_version = max_base_version_ + 1;
  }
  storage::AuditBatch audit;
  Screen(&closing, &audit);
  std::vector<uint64_t> ids, examples;
  std::vector<double> norms;
  std::vector<fusion::ChunkReader> readers;
  for (const auto& c : closing.contributions()) {
    if (c.state() == v1::QUARANTINED) continue;
    ids.push_back(c.id());
    examples.push_back(c.num_examples());
    norms.push_back(c.delta_norm());
    readers.push_back(
        ContributionAsBase(c, closing.number(), closing.base_version(), model.manifest()));
  }
  auto fail = [&](absl::Status st) {
    (void)store_->DeleteBaseData(new_version);
    std::lock_guard<std::mutex> l(mu_);
    closing_ = false;
    return st;
  };
  const uint64_t number = closing.number();
  const uint64_t base_version = closing.base_version();
  fusion::ChunkReader read = [&](size_t k, uint32_t t, uint64_t c) {
    return readers[k](k, t, c);
  };
  fusion::ChunkReader read_base = [&](size_t, uint32_t t, uint64_t c) {
    return store_->GetBaseChunk(base_version, t, c);
  };
  fusion::ChunkWriter write = [&](uint32_t t, uint64_t c, absl::string_view data) {
    return store_->PutBaseChunk(new_version, t, c, data);
  };
  absl::StatusOr<std::string> sha;
  auto weights = fusion::FusionWeights(model.fusion_method(), examples);
  if (!weights.ok()) return fail(weights.status());
  switch (model.fusion_method()) {
    case v1::COORDINATE_MEDIAN:
      sha = fusion::FuseMedian(model.manifest(), ids.size(), read, write);
      break;
    case v1::TRIMMED_MEAN:
      sha = fusion::FuseTrimmedMean(model.manifest(), ids.size(),
                                    model.fusion_options().trim_fraction(), read, write);
      break;
    case v1::NORM_CLIPPED_MEAN: {
      auto w = fusion::FusionWeights(v1::EXAMPLE_WEIGHTED_MEAN, examples);
      if (!w.ok()) return fail(w.status());
      // A zero median update clips every update to (almost) nothing: the base stays.
      const double clip = std::max(model.fusion_options().clip_factor() * fusion::Median(norms),
                                   std::numeric_limits<double>::min());
      sha = fusion::FuseNormClippedMean(model.manifest(), *w, norms, clip, read_base, read,
                                        write);
      break;
    }
    default:
      sha = fusion::FuseWeighted(model.manifest(), *weights, read, write,
                                 model.fusion_options().accumulate_f64());
  }
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
  audit.push_back(Audit(actor, "round_closed",
                        absl::StrCat("round=", number, " reason=", reason, " fused=", ids.size(),
                                     " quarantined=", closing.contributions_size() - ids.size(),
                                     " method=", v1::FusionMethod_Name(model.fusion_method()))));
  audit.push_back(Audit(actor, "base_created",
                        absl::StrCat("v", new_version, " from v", base_version,
                                     " sha256=", ToHex(*sha))));
  absl::Status st = store_->CommitRoundClose(closing, new_version, *sha, next, audit);
  if (!st.ok()) return fail(st);
  std::vector<std::pair<std::string, UploadSlot>> abandoned;
  {
    std::lock_guard<std::mutex> l(mu_);
    rounds_.back() = closing;
    rounds_.push_back(next);
    current_base_ = new_version;
    current_base_sha256_ = *sha;
    max_base_version_ = new_version;
    closing_ = false;
    ++change_seq_;
    // Interrupted uploads to the closed round can no longer finish. One still streaming
    // fails at its commit and removes itself.
    for (auto it = uploads_.begin(); it != uploads_.end();) {
      if (it->second.round == number && !it->second.streaming) {
        abandoned.emplace_back(it->first, it->second);
        it = uploads_.erase(it);
      } else {
        ++it;
      }
    }
  }
  for (const auto& [uid, slot] : abandoned) DropUpload(uid, slot.round, slot.id);
  CF_LOG(INFO) << "round " << number << " closed (" << reason << "): fused " << ids.size()
               << " of " << closing.contributions_size() << " contributions into base v"
               << new_version << "; round " << number + 1 << " open";
  NotifyChanged();
  v1::CloseRoundResponse resp;
  *resp.mutable_closed_round() = closing;
  resp.set_new_base_version(new_version);
  return resp;
}

absl::StatusOr<v1::RollbackBaseResponse> RoundManager::RollbackBase(uint64_t good_version,
                                                                    const std::string& reason,
                                                                    const std::string& actor) {
  std::lock_guard<std::mutex> close_lock(close_mu_);
  v1::RoundInfo closed, next;
  std::vector<uint64_t> bad;
  std::string good_sha;
  {
    std::lock_guard<std::mutex> l(mu_);
    RETURN_IF_ERROR(CheckInitializedLocked());
    auto is_bad = [&](uint64_t v) {
      return std::find(bad_base_versions_.begin(), bad_base_versions_.end(), v) !=
             bad_base_versions_.end();
    };
    if (good_version >= current_base_ || is_bad(good_version)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot roll back to base v", good_version, ": give a good base older than the "
          "current v", current_base_));
    }
    for (uint64_t v = good_version + 1; v <= max_base_version_; ++v) {
      if (!is_bad(v)) bad.push_back(v);
    }
    ASSIGN_OR_RETURN(good_sha, store_->GetBaseSha256(good_version));
    closed = rounds_.back();
    const int64_t now = clock_->NowUnixMs();
    closed.set_state(v1::CLOSED);
    closed.set_closed_unix_ms(now);
    closed.set_close_reason("rollback");
    next.set_number(closed.number() + 1);
    next.set_base_version(good_version);
    next.set_state(v1::OPEN);
    next.set_opened_unix_ms(now);
    std::string why = reason.empty() ? std::string("operator rollback") : reason;
    RETURN_IF_ERROR(store_->CommitRollback(
        closed, bad, why, good_version, next,
        {Audit(actor, "rollback",
               absl::StrCat("to v", good_version, "; bad: v", absl::StrJoin(bad, ", v"),
                            "; round ", closed.number(), " closed unfused with ",
                            closed.contributions_size(), " stored contributions; reason: ",
                            why))}));
    rounds_.back() = closed;
    rounds_.push_back(next);
    for (auto it = uploads_.begin(); it != uploads_.end();) {
      if (!it->second.streaming) DropUpload(it->first, it->second.round, it->second.id);
      it = it->second.streaming ? std::next(it) : uploads_.erase(it);
    }
    current_base_ = good_version;
    current_base_sha256_ = good_sha;
    bad_base_versions_.insert(bad_base_versions_.end(), bad.begin(), bad.end());
    std::sort(bad_base_versions_.begin(), bad_base_versions_.end());
    ++change_seq_;
  }
  CF_LOG(WARNING) << "rolled back to base v" << good_version << " (bad: "
                  << absl::StrJoin(bad, ", ") << "); round " << next.number() << " open";
  NotifyChanged();
  v1::RollbackBaseResponse resp;
  *resp.mutable_opened_round() = next;
  for (uint64_t v : bad_base_versions_) resp.add_bad_base_versions(v);
  return resp;
}

absl::StatusOr<std::vector<v1::AuditRecord>> RoundManager::ReadAudit(uint64_t after_seq,
                                                                     size_t limit) {
  if (limit == 0 || limit > 1000) limit = 1000;
  return store_->ReadAudit(after_seq, limit);
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
    for (uint64_t v : bad_base_versions_) s.add_bad_base_versions(v);
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
