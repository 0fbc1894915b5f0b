#include "ctl/checkpoint_commands.h"

#include <algorithm>
#include <cmath>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/dtype.h"
#include "common/int8_delta.h"
#include "common/progress.h"
#include "common/rpc/client.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"

namespace coldfuse::ctl {
namespace {

// A transfer's call options whose progress goes to `p`: a bar on a terminal, a plain line
// every few seconds otherwise.
rpc::CallOptions Transfer(std::chrono::milliseconds deadline, Progress* p) {
  rpc::CallOptions o;
  o.deadline = deadline;
  o.on_progress = p->TransferHook();
  return o;
}

double Seconds(std::chrono::steady_clock::time_point since) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - since).count();
}

// Reads checkpoint tensors in the manifest's order and dtypes: bytes are converted from
// the checkpoint's dtype when they differ, and the base is subtracted for a delta.
class CheckpointSource final : public rpc::TensorSource {
 public:
  CheckpointSource(const Checkpoint* ckpt, std::vector<const SafetensorsEntry*> entries,
                   v1::Manifest manifest, const SafetensorsFile* base = nullptr)
      : ckpt_(ckpt), entries_(std::move(entries)), manifest_(std::move(manifest)), base_(base) {}

  absl::Status Read(uint32_t t, uint64_t offset, uint64_t length, std::string* out) override {
    const SafetensorsEntry& e = *entries_[t];
    const DType sent = manifest_.tensors(t).dtype();
    absl::string_view data = ckpt_->Data(e);
    if (sent == e.dtype && base_ == nullptr) {  // as stored: no conversion
      if (offset > data.size() || length > data.size() - offset) {
        return absl::OutOfRangeError("read past a checkpoint tensor");
      }
      out->assign(data.data() + offset, length);
      return absl::OkStatus();
    }
    const size_t ss = DTypeSize(sent), cs = DTypeSize(e.dtype);
    const uint64_t first = offset / ss, n = length / ss;
    values_.resize(n);
    DecodeToDouble(e.dtype, data.data() + first * cs, n, values_.data());
    if (base_ != nullptr) {
      const SafetensorsEntry* b = base_->Find(e.name);
      if (b == nullptr) return absl::NotFoundError(absl::StrCat("base lacks ", e.name));
      base_values_.resize(n);
      DecodeToDouble(b->dtype, base_->Data(*b).data() + first * DTypeSize(b->dtype), n,
                     base_values_.data());
      for (uint64_t i = 0; i < n; ++i) values_[i] -= base_values_[i];
    }
    out->resize(length);
    EncodeFromDouble(sent, values_.data(), n, out->data());
    return absl::OkStatus();
  }

 private:
  const Checkpoint* ckpt_;
  std::vector<const SafetensorsEntry*> entries_;
  v1::Manifest manifest_;
  const SafetensorsFile* base_;
  std::vector<double> values_, base_values_;
};

// A DELTA_INT8 contribution (common/int8_delta.h): entry 2t holds the scales of
// checkpoint tensor t's blocks, entry 2t + 1 its int8 values; each block's scale comes from
// the whole block, wherever a read starts.
class Int8DeltaSource final : public rpc::TensorSource {
 public:
  Int8DeltaSource(const Checkpoint* ckpt, std::vector<const SafetensorsEntry*> entries,
                  const SafetensorsFile* base, uint32_t block)
      : ckpt_(ckpt), entries_(std::move(entries)), base_(base), block_(block) {}

  absl::Status Read(uint32_t t, uint64_t offset, uint64_t length, std::string* out) override {
    const SafetensorsEntry& e = *entries_[t / 2];
    const uint64_t n = NumElementsOf(e);
    const bool scales = t % 2 == 0;
    // Elements [first, last) of the blocks this read covers.
    const uint64_t first_block = scales ? offset / 4 : offset / block_;
    const uint64_t end_block =
        scales ? (offset + length) / 4 : (offset + length + block_ - 1) / block_;
    const uint64_t first = first_block * block_, last = std::min(n, end_block * block_);
    RETURN_IF_ERROR(Deltas(e, first, last - first));
    out->resize(length);
    std::vector<int8_t> q(block_);
    for (uint64_t b = first_block; b < end_block; ++b) {
      const uint64_t b0 = b * block_, bn = std::min<uint64_t>(block_, n - b0);
      const float s = Int8BlockScale(&d_[b0 - first], bn);
      if (scales) {
        std::memcpy(out->data() + (b - first_block) * 4, &s, 4);
        continue;
      }
      QuantizeInt8Block(&d_[b0 - first], bn, s, q.data());
      // The part of this block inside [offset, offset + length).
      const uint64_t lo = std::max(b0, offset), hi = std::min(b0 + bn, offset + length);
      for (uint64_t i = lo; i < hi; ++i) (*out)[i - offset] = static_cast<char>(q[i - b0]);
    }
    return absl::OkStatus();
  }

 private:
  static uint64_t NumElementsOf(const SafetensorsEntry& e) {
    uint64_t n = 1;
    for (int64_t d : e.shape) n *= static_cast<uint64_t>(d);
    return n;
  }
  // d_ = checkpoint − base over elements [first, first + n) of `e`, in double.
  absl::Status Deltas(const SafetensorsEntry& e, uint64_t first, uint64_t n) {
    const SafetensorsEntry* b = base_->Find(e.name);
    if (b == nullptr) return absl::NotFoundError(absl::StrCat("base lacks ", e.name));
    d_.resize(n);
    base_values_.resize(n);
    DecodeToDouble(e.dtype, ckpt_->Data(e).data() + first * DTypeSize(e.dtype), n, d_.data());
    DecodeToDouble(b->dtype, base_->Data(*b).data() + first * DTypeSize(b->dtype), n,
                   base_values_.data());
    for (uint64_t i = 0; i < n; ++i) {
      d_[i] -= base_values_[i];
      if (!std::isfinite(d_[i])) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor '", e.name, "' minus the base is not finite at element ",
                         first + i, ": a diverged run cannot be sent"));
      }
    }
    return absl::OkStatus();
  }

  const Checkpoint* ckpt_;
  std::vector<const SafetensorsEntry*> entries_;
  const SafetensorsFile* base_;
  uint32_t block_;
  std::vector<double> d_, base_values_;
};

// Discards a pulled base (pull measures and verifies only).
class NullSink final : public rpc::TensorSink {
 public:
  absl::Status Begin(uint64_t, const std::string&, const v1::Manifest&) override {
    return absl::OkStatus();
  }
  absl::Status Write(uint32_t, uint64_t, absl::string_view) override { return absl::OkStatus(); }
};

// Writes a pulled base straight into one safetensors file.
class SafetensorsSink final : public rpc::TensorSink {
 public:
  explicit SafetensorsSink(std::string path) : path_(std::move(path)) {}
  absl::Status Begin(uint64_t, const std::string&, const v1::Manifest& manifest) override {
    if (writer_ != nullptr) return absl::OkStatus();  // resumed
    ASSIGN_OR_RETURN(writer_, SafetensorsWriter::Create(path_, manifest));
    return absl::OkStatus();
  }
  absl::Status Write(uint32_t, uint64_t, absl::string_view data) override {
    return writer_->Append(data);
  }
  absl::Status Finish() { return writer_->Finish(); }

 private:
  std::string path_;
  std::unique_ptr<SafetensorsWriter> writer_;
};

v1::TensorSpec SpecOf(const SafetensorsEntry& e, DType dtype) {
  v1::TensorSpec s;
  s.set_name(e.name);
  s.set_dtype(dtype);
  for (int64_t d : e.shape) s.add_shape(d);
  return s;
}

}  // namespace

absl::Status InitFrom(const std::shared_ptr<grpc::Channel>& channel, const InitFromOptions& o,
                      std::chrono::milliseconds deadline) {
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(o.path));
  v1::InitHeader header;
  std::vector<const SafetensorsEntry*> entries;
  int skipped = 0;
  for (const SafetensorsEntry* e : ckpt->Entries()) {
    bool shared = o.shared_prefixes.empty();
    for (const auto& p : o.shared_prefixes) shared = shared || absl::StartsWith(e->name, p);
    if (!shared) {
      ++skipped;
      continue;
    }
    if (e->dtype == v1::DTYPE_UNSPECIFIED) {
      // Integer buffers (e.g. position ids) are not trained: they stay out of the base.
      std::cerr << "not shared: '" << e->name << "' (" << e->dtype_name << ", not a float)\n";
      ++skipped;
      continue;
    }
    *header.mutable_manifest()->add_tensors() = SpecOf(*e, e->dtype);
    entries.push_back(e);
  }
  if (entries.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("no float tensor of ", o.path, " matches --shared_prefix; nothing to share"));
  }
  header.set_model_spec(
      absl::StrCat("checkpoint:", std::filesystem::path(o.path).filename().string()));
  header.set_fusion_method(o.fusion_method);
  *header.mutable_fusion_options() = o.fusion_options;
  header.set_outer_optimizer(o.outer_optimizer);
  if (o.outer_optimizer_options.ByteSizeLong() > 0) {
    *header.mutable_outer_optimizer_options() = o.outer_optimizer_options;
  }
  CheckpointSource source(ckpt.get(), entries, header.manifest());
  ASSIGN_OR_RETURN(uint64_t bytes, TotalBytes(header.manifest()));
  auto start = std::chrono::steady_clock::now();
  Progress progress("init base v0", bytes, Progress::Unit::kBytes);
  ASSIGN_OR_RETURN(v1::InitModelResponse r,
                   rpc::InitModel(channel, header, &source, Transfer(deadline, &progress)));
  const double secs = Seconds(start);
  std::cout << absl::StrFormat(
      "initialised from %s: %d shared tensors (%d not shared), %d bytes in %.2f s "
      "(%.1f MB/s); base v%d sha256 %s; round %d open\n",
      o.path, entries.size(), skipped, bytes, secs, bytes / secs / 1e6, r.base_version(),
      ToHex(r.sha256()), r.round());
  return absl::OkStatus();
}

absl::Status PushCheckpoint(const std::shared_ptr<grpc::Channel>& channel, const PushOptions& o,
                            std::chrono::milliseconds deadline) {
  if (o.num_examples == 0) {
    return absl::InvalidArgumentError("--num_examples is required: how many examples trained it");
  }
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(o.checkpoint));
  ASSIGN_OR_RETURN(v1::GetRoundResponse round, rpc::GetRound(channel, deadline, o.retry));
  DType forced = v1::DTYPE_UNSPECIFIED;
  if (!o.send_dtype.empty()) {
    ASSIGN_OR_RETURN(forced, ParseDType(o.send_dtype));
  }

  v1::ContributionHeader header;
  const uint64_t from =
      o.from_base >= 0 ? static_cast<uint64_t>(o.from_base) : round.base_version();
  header.set_round(round.round());
  header.set_base_version(from);
  header.set_contributor(o.contributor);
  header.set_task(o.task);
  header.set_num_examples(o.num_examples);
  for (const auto& [name, value] : o.metrics) (*header.mutable_metrics())[name] = value;
  header.set_encoding(o.int8_block > 0 ? v1::DELTA_INT8 : (o.delta ? v1::DELTA : v1::FULL));
  if (o.int8_block > 0) {
    RETURN_IF_ERROR(CheckInt8BlockSize(o.int8_block));
    header.set_int8_block_size(o.int8_block);
  }
  header.set_upload_id(rpc::NewUploadId());
  std::vector<const SafetensorsEntry*> entries;
  for (const auto& spec : round.manifest().tensors()) {
    const SafetensorsEntry* e = ckpt->Find(spec.name());
    if (e == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat(o.checkpoint, " has no tensor '", spec.name(),
                                                     "' of the base: was it fine-tuned "
                                                     "from this model?"));
    }
    v1::TensorSpec mine = SpecOf(*e, forced != v1::DTYPE_UNSPECIFIED ? forced : e->dtype);
    if (!IsFloatDType(e->dtype)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", e->name, "' is ", e->dtype_name, ", not a float"));
    }
    if (mine.shape_size() != spec.shape_size() ||
        !std::equal(mine.shape().begin(), mine.shape().end(), spec.shape().begin())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", e->name, "' has shape ",
                                                     ShapeString(mine), "; the base has ",
                                                     ShapeString(spec)));
    }
    *header.mutable_manifest()->add_tensors() = mine;
    entries.push_back(e);
  }
  // A delta needs the base: stream it to a temp file next to nothing else in memory.
  std::unique_ptr<SafetensorsFile> base;
  std::string base_path;
  if (o.delta) {
    base_path = (std::filesystem::temp_directory_path() /
                 absl::StrCat("coldfuse-base-", rpc::NewUploadId(), ".safetensors"))
                    .string();
    SafetensorsSink sink(base_path);
    Progress progress(absl::StrCat("pull base v", from, " (for the delta)"), 0,
                      Progress::Unit::kBytes);
    ASSIGN_OR_RETURN(rpc::PullResult pulled,
                     rpc::PullBaseTo(channel, from, &sink, Transfer(deadline, &progress), o.retry));
    RETURN_IF_ERROR(sink.Finish());
    ASSIGN_OR_RETURN(base, SafetensorsFile::Open(base_path));
    (void)pulled;
  }
  CheckpointSource full_source(ckpt.get(), entries, header.manifest(), base.get());
  std::unique_ptr<Int8DeltaSource> int8_source;
  if (o.int8_block > 0) {
    ASSIGN_OR_RETURN(*header.mutable_manifest(),
                     Int8DeltaManifest(header.manifest(), o.int8_block));
    int8_source = std::make_unique<Int8DeltaSource>(ckpt.get(), entries, base.get(), o.int8_block);
  }
  rpc::TensorSource& source =
      int8_source ? static_cast<rpc::TensorSource&>(*int8_source) : full_source;
  ASSIGN_OR_RETURN(uint64_t bytes, TotalBytes(header.manifest()));
  rpc::TransferStats stats;
  auto start = std::chrono::steady_clock::now();
  Progress progress(absl::StrCat("push to round ", header.round()), bytes, Progress::Unit::kBytes);
  auto receipt = rpc::PushContribution(channel, header, &source, Transfer(deadline, &progress),
                                       o.retry, &stats);
  const double secs = Seconds(start);
  if (!base_path.empty()) std::filesystem::remove(base_path);
  RETURN_IF_ERROR(receipt.status());
  std::cout << absl::StrFormat(
      "contribution %d to round %d accepted: %d bytes%s in %.2f s (%.1f MB/s), %d attempt(s), "
      "%d bytes on the wire%s\n",
      receipt->contribution_id(), receipt->round(), bytes,
      o.int8_block > 0 ? absl::StrCat(" (8-bit delta, ", o.int8_block, " values per scale)")
                       : (o.delta ? " (delta)" : ""),
      secs, bytes / secs / 1e6, stats.attempts, stats.bytes_on_wire,
      from != round.base_version()
          ? absl::StrCat("; trained from base v", from, ", fused as a stale contribution")
          : "");
  return absl::OkStatus();
}

absl::Status Pull(const std::shared_ptr<grpc::Channel>& channel, int64_t version,
                  std::chrono::milliseconds deadline) {
  NullSink sink;
  std::optional<uint64_t> v;
  if (version >= 0) v = version;
  rpc::TransferStats stats;
  auto start = std::chrono::steady_clock::now();
  Progress progress(v.has_value() ? absl::StrCat("pull base v", *v) : "pull the current base", 0,
                    Progress::Unit::kBytes);
  ASSIGN_OR_RETURN(rpc::PullResult r,
                   rpc::PullBaseTo(channel, v, &sink, Transfer(deadline, &progress), {}, &stats));
  const double secs = Seconds(start);
  std::cout << absl::StrFormat(
      "pulled base v%d: %d bytes in %.2f s (%.1f MB/s), sha256 %s verified, %d attempt(s)\n",
      r.version, r.bytes, secs, r.bytes / secs / 1e6, ToHex(r.sha256), stats.attempts);
  return absl::OkStatus();
}

absl::Status Export(const std::shared_ptr<grpc::Channel>& channel, int64_t version,
                    const std::string& out_dir, uint64_t shard_bytes,
                    std::chrono::milliseconds deadline) {
  if (out_dir.empty()) return absl::InvalidArgumentError("export needs --out=DIR");
  std::optional<uint64_t> v;
  if (version >= 0) v = version;
  // The pull runs on its own thread and hands chunks over a small bounded queue to the
  // checkpoint writer, which asks for bytes in manifest order.
  struct Queue {
    std::mutex mu;
    std::condition_variable cv;
    std::deque<std::string> chunks;
    bool done = false;
    bool header = false;
    v1::Manifest manifest;
    absl::Status status;
  } q;
  class QueueSink final : public rpc::TensorSink {
   public:
    explicit QueueSink(Queue* q) : q_(q) {}
    absl::Status Begin(uint64_t, const std::string&, const v1::Manifest& m) override {
      std::lock_guard<std::mutex> l(q_->mu);
      q_->manifest = m;
      q_->header = true;
      q_->cv.notify_all();
      return absl::OkStatus();
    }
    absl::Status Write(uint32_t, uint64_t, absl::string_view data) override {
      std::unique_lock<std::mutex> l(q_->mu);
      q_->cv.wait(l, [&] { return q_->chunks.size() < 16; });
      q_->chunks.emplace_back(data.data(), data.size());
      q_->cv.notify_all();
      return absl::OkStatus();
    }

   private:
    Queue* q_;
  } sink(&q);
  rpc::PullResult pulled;
  std::thread puller([&] {
    Progress progress(v.has_value() ? absl::StrCat("export base v", *v) : "export the current base",
                      0, Progress::Unit::kBytes);
    auto r = rpc::PullBaseTo(channel, v, &sink, Transfer(deadline, &progress));
    std::lock_guard<std::mutex> l(q.mu);
    q.status = r.status();
    if (r.ok()) pulled = *r;
    q.done = true;
    q.cv.notify_all();
  });
  v1::Manifest manifest;
  {
    std::unique_lock<std::mutex> l(q.mu);
    q.cv.wait(l, [&] { return q.header || q.done; });
    if (!q.header) {
      l.unlock();
      puller.join();
      return q.status;
    }
    manifest = q.manifest;
  }
  std::string pending;  // bytes taken from the queue but not yet handed to the writer
  auto start = std::chrono::steady_clock::now();
  absl::Status written = WriteCheckpoint(
      out_dir, manifest, shard_bytes,
      [&](uint32_t, uint64_t, uint64_t length, std::string* out) -> absl::Status {
        out->clear();
        while (out->size() < length) {
          if (pending.empty()) {
            std::unique_lock<std::mutex> l(q.mu);
            q.cv.wait(l, [&] { return !q.chunks.empty() || q.done; });
            if (q.chunks.empty()) {
              return q.status.ok() ? absl::DataLossError("the base ended early") : q.status;
            }
            pending = std::move(q.chunks.front());
            q.chunks.pop_front();
            q.cv.notify_all();
          }
          const size_t take = std::min<size_t>(length - out->size(), pending.size());
          out->append(pending, 0, take);
          pending.erase(0, take);
        }
        return absl::OkStatus();
      });
  if (!written.ok()) {
    {
      std::lock_guard<std::mutex> l(q.mu);
      q.chunks.clear();
    }
    // Let the puller finish or fail; drain so it never blocks on a full queue.
    std::thread drainer([&] {
      std::unique_lock<std::mutex> l(q.mu);
      while (!q.done) {
        q.chunks.clear();
        q.cv.notify_all();
        q.cv.wait_for(l, std::chrono::milliseconds(50));
      }
    });
    puller.join();
    drainer.join();
    return written;
  }
  puller.join();
  if (!q.status.ok()) {  // e.g. the checksum failed at the end: remove what was written
    for (const auto& f : std::filesystem::directory_iterator(out_dir)) {
      const std::string name = f.path().filename().string();
      if (absl::StartsWith(name, "model") && absl::StrContains(name, ".safetensors")) {
        std::filesystem::remove(f.path());
      }
    }
    return q.status;
  }
  const double secs = Seconds(start);
  std::cout << absl::StrFormat(
      "exported base v%d to %s: %d bytes in %.2f s (%.1f MB/s), sha256 %s verified\n",
      pulled.version, out_dir, pulled.bytes, secs, pulled.bytes / secs / 1e6, ToHex(pulled.sha256));
  return absl::OkStatus();
}

}  // namespace coldfuse::ctl
