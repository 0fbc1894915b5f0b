// Fuzzes the upload stream: TensorUpload (server/rounds/tensor_upload.h) around
// StreamReceiver (common/tensor_stream.h), with no store behind it, and InMemoryAssembler
// fed the same chunks. The input is a program: a manifest (1-4 tensors, some larger than a
// storage chunk), optionally a resumption point, then up to 64 steps: the next chunk of
// some size, a chunk out of place, a chunk with a flipped byte, a trailer (right or wrong)
// or an abandon. The sink and the stored-chunk reader can be told to fail.
//
// A model of the wire rule predicts every answer. Asserts: no crash or UB; each Accept,
// ResumeAt and Finish succeeds exactly when the model says; the sink receives each
// tensor's storage chunks in order, each complete (kChunkBytes, or the tensor's tail),
// holding exactly the bytes sent for that range, and never more bytes than the manifest
// gives the tensor; the commit step runs once, only after a complete stream with the right
// trailer, with its SHA-256 and byte count; the abort step runs at most once, never after a
// commit, and always when the upload ends uncommitted, as kRejected once anything failed;
// the assembler returns exactly the bytes sent.
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/sha256.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "fuzz/fuzz_util.h"
#include "server/rounds/tensor_upload.h"

namespace coldfuse::fuzz {
namespace {

using rounds::TensorUpload;
using rounds::UploadResult;

constexpr uint64_t kMaxTotal = 4 * kChunkBytes;  // keeps one run within milliseconds
constexpr int kMaxSteps = 64;

// The bytes the model sends for tensor `t` from `offset`: byte `pos` of tensor `t` is
// noise[(t * 4099 + pos) % size], a buffer of pseudo-random bytes whose size is no multiple
// of a storage chunk, so that a byte out of place shows. Copied in runs, not per byte:
// per-byte code instrumented for libFuzzer dominated the run time.
std::string Pattern(uint32_t t, uint64_t offset, uint64_t n) {
  static const std::string* noise = [] {
    auto* s = new std::string(kChunkBytes + 4093, '\0');
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (char& c : *s) {
      x ^= x << 13;
      x ^= x >> 7;
      x ^= x << 17;
      c = static_cast<char>(x);
    }
    return s;
  }();
  std::string out(n, '\0');
  uint64_t at = (t * 4099ull + offset) % noise->size();
  for (uint64_t done = 0; done < n;) {
    const uint64_t run = std::min<uint64_t>(n - done, noise->size() - at);
    std::memcpy(out.data() + done, noise->data() + at, run);
    done += run;
    at = 0;
  }
  return out;
}

struct Model {
  std::vector<uint64_t> lengths;
  std::vector<std::string> sent;    // bytes of each tensor the receiver has (or resumed)
  std::vector<uint64_t> delivered;  // bytes of each tensor the sink has been given
  uint32_t tensor = 0;              // the tensor the next chunk belongs to
  bool finished = false;            // a trailer was taken (right or wrong)
  bool failed = false;              // an Accept, Finish or resume failed the upload
  bool committed = false;
  int commits = 0;
  int aborts = 0;
  std::optional<TensorUpload::EndKind> abort_kind;

  uint64_t offset() const { return tensor < lengths.size() ? sent[tensor].size() : 0; }
  void SkipComplete() {
    while (tensor < lengths.size() && sent[tensor].size() == lengths[tensor]) ++tensor;
  }
  bool Complete() const { return tensor >= lengths.size(); }
  uint64_t TotalBytes() const {
    uint64_t total = 0;
    for (const std::string& s : sent) total += s.size();
    return total;
  }
  std::string Digest() const {
    Sha256 h;
    for (const std::string& s : sent) h.Update(s);
    return h.Finish();
  }
};

// Reads the manifest; nullopt if it is too large for one run.
std::optional<v1::Manifest> ReadManifest(FuzzInput& in) {
  v1::Manifest m;
  const int n = in.IntInRange(1, 4);
  static const DType kTypes[] = {v1::F32, v1::F16, v1::BF16, v1::F64};
  uint64_t total = 0;
  for (int i = 0; i < n; ++i) {
    v1::TensorSpec* t = m.add_tensors();
    t->set_name(absl::StrCat("t", i));
    const uint8_t kind = in.Byte();
    t->set_dtype(kTypes[kind & 3]);
    const size_t item = DTypeSize(t->dtype());
    if (kind & 4) {  // one long dimension: up to 3 storage chunks
      t->add_shape(in.IntInRange<uint32_t>(0, static_cast<uint32_t>(3 * kChunkBytes / item)));
    } else {
      const int rank = in.IntInRange(0, 3);
      for (int d = 0; d < rank; ++d) t->add_shape(in.IntInRange(0, 40));
    }
    absl::StatusOr<uint64_t> bytes = ByteLength(*t);
    FUZZ_CHECK(bytes.ok(), bytes.status().ToString());
    total += *bytes;
  }
  if (total > kMaxTotal) return std::nullopt;
  FUZZ_CHECK(ValidateManifest(m).ok(), ValidateManifest(m).ToString());
  return m;
}

// A chunk size relative to where the stream is: small, to a storage-chunk boundary, to the
// tensor's end, the largest allowed, or just past a limit.
uint64_t ReadChunkSize(FuzzInput& in, uint64_t offset, uint64_t length) {
  const uint64_t left = length > offset ? length - offset : 0;
  const uint64_t to_boundary = kChunkBytes - offset % kChunkBytes;
  switch (in.Byte() % 8) {
    case 0:
      return in.IntInRange<uint64_t>(1, 300);
    case 1:
      return std::min(left, to_boundary);
    case 2:
      return left;
    case 3:
      return kMaxChunkBytes;
    case 4:
      return left + 1;
    case 5:
      return kMaxChunkBytes + 1;
    case 6:
      return 0;
    default:
      return in.IntInRange<uint64_t>(1, kMaxChunkBytes);
  }
}

}  // namespace
}  // namespace coldfuse::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace coldfuse;
  using namespace coldfuse::fuzz;
  FuzzInput in(data, size);
  std::optional<v1::Manifest> manifest = ReadManifest(in);
  if (!manifest) return 0;

  Model m;
  for (const auto& t : manifest->tensors()) m.lengths.push_back(*ByteLength(t));
  const size_t n = m.lengths.size();
  m.sent.resize(n);
  m.delivered.assign(n, 0);
  m.SkipComplete();

  const uint8_t faults = in.Byte();
  const int sink_fail_at = (faults & 1) ? in.IntInRange(0, 15) : -1;  // the k-th sink call
  const bool commit_fails = (faults & 2) != 0;
  int sink_calls = 0;

  auto sink = [&](uint32_t t, uint64_t chunk, absl::string_view bytes) -> absl::Status {
    FUZZ_CHECK(t < n, absl::StrCat("sink got tensor #", t));
    FUZZ_CHECK(chunk * kChunkBytes == m.delivered[t],
               absl::StrCat("tensor #", t, " chunk ", chunk, " after ", m.delivered[t], " bytes"));
    const uint64_t want = std::min<uint64_t>(kChunkBytes, m.lengths[t] - m.delivered[t]);
    FUZZ_CHECK(bytes.size() == want && m.delivered[t] + bytes.size() <= m.lengths[t],
               absl::StrCat("tensor #", t, " chunk ", chunk, " has ", bytes.size(),
                            " bytes, expected ", want, " of ", m.lengths[t]));
    FUZZ_CHECK(m.sent[t].size() >= m.delivered[t] + bytes.size() &&
                   bytes == absl::string_view(m.sent[t]).substr(m.delivered[t], bytes.size()),
               absl::StrCat("tensor #", t, " chunk ", chunk, " holds other bytes than were sent"));
    if (sink_calls++ == sink_fail_at) return absl::InternalError("injected sink failure");
    m.delivered[t] += bytes.size();
    return absl::OkStatus();
  };
  auto commit = [&](const std::string& sha, uint64_t bytes) -> absl::StatusOr<UploadResult> {
    ++m.commits;
    FUZZ_CHECK(m.commits == 1, "a second commit");
    FUZZ_CHECK(m.Complete(), "commit of an incomplete stream");
    FUZZ_CHECK(sha == m.Digest() && bytes == m.TotalBytes(), "commit with the wrong digest");
    for (size_t t = 0; t < n; ++t) {
      FUZZ_CHECK(m.delivered[t] == m.lengths[t],
                 absl::StrCat("commit before tensor #", t, " reached the sink"));
    }
    if (commit_fails) return absl::AbortedError("injected commit failure");
    UploadResult r;
    r.sha256 = sha;
    r.bytes = bytes;
    return r;
  };
  auto abort_step = [&](TensorUpload::EndKind kind, const absl::Status& why) -> absl::Status {
    ++m.aborts;
    FUZZ_CHECK(m.aborts == 1, "a second abort");
    FUZZ_CHECK(!m.committed, "abort after a commit");
    m.abort_kind = kind;
    if (m.failed) FUZZ_CHECK(kind == TensorUpload::EndKind::kRejected, "a failure not rejected");
    return why;
  };

  bool stop = false;  // the upload's state is undefined to the model (a fault was injected)
  {
    TensorUpload upload(*manifest, sink, commit, abort_step);
    // The assembler sees the same stream when there is no resumption.
    std::unique_ptr<InMemoryAssembler> assembler;

    if (in.Bool()) {  // resume before the first chunk
      const uint32_t t = in.IntInRange<uint32_t>(0, static_cast<uint32_t>(n + 1));
      const uint64_t len = t < n ? m.lengths[t] : 0;
      uint64_t offset;
      switch (in.Byte() % 4) {
        case 0:
          offset = in.IntInRange<uint64_t>(0, 3) * kChunkBytes;
          break;
        case 1:
          offset = len;
          break;
        default:
          offset = in.IntInRange<uint64_t>(0, len + 1);
      }
      const bool valid =
          t <= n && (t == n || (offset <= len && (offset % kChunkBytes == 0 || offset == len)));
      const uint8_t read_fault = in.Byte();  // 1: NOT_FOUND, 2: short chunk, at read #k
      const int fault_at = in.IntInRange(0, 7);
      int reads = 0;
      bool faulted = false;
      auto read = [&](uint32_t rt, uint64_t chunk) -> absl::StatusOr<std::string> {
        const uint64_t upto = rt < t ? m.lengths[rt] : offset;
        FUZZ_CHECK(valid && rt <= t && rt < n && chunk * kChunkBytes < upto,
                   absl::StrCat("read of stored chunk ", chunk, " of tensor #", rt,
                                " resuming at #", t, " offset ", offset));
        const uint64_t bytes = std::min<uint64_t>(kChunkBytes, m.lengths[rt] - chunk * kChunkBytes);
        if (reads++ == fault_at && (read_fault % 3) != 0) {
          faulted = true;
          if (read_fault % 3 == 1) return absl::NotFoundError("injected: chunk gone");
          return Pattern(rt, chunk * kChunkBytes, bytes - 1);
        }
        return Pattern(rt, chunk * kChunkBytes, bytes);
      };
      absl::Status st = upload.ResumeAt(t, offset, read);
      if (!valid) {
        FUZZ_CHECK(absl::IsInvalidArgument(st), st.ToString());
      } else if (faulted) {
        FUZZ_CHECK(!st.ok(), "a failed read did not fail the resumption");
        m.failed = true;
        stop = true;
      } else {
        FUZZ_CHECK(st.ok(), st.ToString());
        for (uint32_t k = 0; k < n && k <= t; ++k) {
          const uint64_t upto = k < t ? m.lengths[k] : offset;
          m.sent[k] = Pattern(k, 0, upto);
          m.delivered[k] = upto;  // already stored: the sink never sees it again
        }
        m.tensor = std::min<uint32_t>(t, static_cast<uint32_t>(n));
        m.SkipComplete();
      }
    } else {
      assembler = std::make_unique<InMemoryAssembler>(*manifest);
    }

    bool ended = false;
    for (int step = 0; step < kMaxSteps && !stop && !ended && in.remaining() > 0; ++step) {
      const uint8_t op = in.Byte();
      switch (op % 8) {
        case 0:
        case 1:
        case 2:
        case 3:    // the next chunk, or
        case 4: {  // one out of place, or
          v1::TensorChunk chunk;
          uint32_t t = m.tensor;
          uint64_t offset = m.offset();
          if (op % 8 == 4) {
            if (in.Bool()) {
              t = in.IntInRange<uint32_t>(0, static_cast<uint32_t>(n + 1));
            } else {
              offset = in.IntInRange<uint64_t>(0, 2 * kChunkBytes);
            }
          }
          const uint64_t len = t < n ? m.lengths[t] : 0;
          const uint64_t bytes = ReadChunkSize(in, offset, len);
          chunk.set_tensor_index(t);
          chunk.set_offset(offset);
          chunk.set_data(Pattern(t, offset, std::min<uint64_t>(bytes, kMaxChunkBytes + 1)));
          if ((op & 0x80) && !chunk.data().empty()) {  // a corrupted byte
            (*chunk.mutable_data())[in.IntInRange<size_t>(0, chunk.data().size() - 1)] ^= 1;
          }
          const bool ok = !m.finished && !m.Complete() && t == m.tensor && offset == m.offset() &&
                          !chunk.data().empty() && chunk.data().size() <= kMaxChunkBytes &&
                          chunk.data().size() <= len - offset;
          if (ok) m.sent[t] += chunk.data();
          const int calls_before = sink_calls;
          absl::Status st = upload.Accept(chunk);
          if (ok && sink_fail_at >= calls_before && sink_fail_at < sink_calls) {
            FUZZ_CHECK(absl::IsInternal(st), st.ToString());  // the sink's error, passed on
            m.failed = true;
            stop = true;
            break;
          }
          FUZZ_CHECK(st.ok() == ok, absl::StrCat("Accept(tensor #", t, " offset ", offset, ", ",
                                                 chunk.data().size(), " bytes) returned ",
                                                 st.ToString(), "; the model says ", ok));
          if (!ok) {
            FUZZ_CHECK(absl::IsInvalidArgument(st), st.ToString());
            m.failed = true;
          }
          if (assembler) {
            absl::Status sa = assembler->Accept(chunk);
            FUZZ_CHECK(sa.ok() == ok, absl::StrCat("the assembler says ", sa.ToString()));
          }
          m.SkipComplete();
          break;
        }
        case 5:
        case 6: {  // a trailer, right or (6) wrong
          const uint64_t total = m.TotalBytes();
          v1::StreamTrailer trailer;
          trailer.set_sha256(m.Digest());
          trailer.set_total_bytes(total);
          const bool wrong = op % 8 == 6;
          if (wrong) {
            if (in.Bool()) {
              trailer.set_total_bytes(total + 1);
            } else {
              (*trailer.mutable_sha256())[0] ^= 1;
            }
          }
          const bool complete = m.Complete();
          const bool ok = !m.finished && complete && !wrong;
          std::optional<absl::StatusOr<std::vector<HostTensor>>> assembled;
          if (assembler) assembled = assembler->Finish(trailer);
          absl::StatusOr<UploadResult> r = upload.Finish(trailer);
          if (!m.finished && complete) m.finished = true;
          if (ok && !commit_fails) {
            FUZZ_CHECK(r.ok() && m.commits == 1, r.status().ToString());
            FUZZ_CHECK(r->sha256 == trailer.sha256() && r->bytes == total, "the result");
            m.committed = true;
            ended = true;
          } else {
            FUZZ_CHECK(!r.ok(), "Finish succeeded against the model");
            FUZZ_CHECK(ok ? absl::IsAborted(r.status()) : absl::IsInvalidArgument(r.status()),
                       r.status().ToString());
            m.failed = true;
          }
          if (assembled) {
            FUZZ_CHECK(assembled->ok() == ok, assembled->status().ToString());
            if (ok) {
              FUZZ_CHECK((*assembled)->size() == n, "the assembler's tensor count");
              for (size_t t = 0; t < n; ++t) {
                FUZZ_CHECK((**assembled)[t].data == m.sent[t],
                           absl::StrCat("the assembler's tensor #", t));
                FUZZ_CHECK(CheckTensorSizes(**assembled).ok(), "assembled sizes");
              }
            }
            assembler.reset();  // an assembler takes one trailer
          }
          break;
        }
        default: {  // the client goes away
          const bool broken = in.Bool();
          const absl::Status why =
              broken ? absl::CancelledError("client went away") : absl::OkStatus();
          absl::Status st = upload.Abandon(
              broken ? TensorUpload::EndKind::kBroken : TensorUpload::EndKind::kNoTrailer, why);
          FUZZ_CHECK(m.aborts == 1, "Abandon did not run the abort step");
          if (!m.failed) {
            FUZZ_CHECK(m.abort_kind == (broken ? TensorUpload::EndKind::kBroken
                                               : TensorUpload::EndKind::kNoTrailer),
                       "Abandon changed the kind");
          }
          (void)st;
          ended = true;
          break;
        }
      }
    }
    if (!ended && !stop) {
      // Ends by destruction: the abort step runs then, unless committed.
      FUZZ_CHECK(m.aborts == 0, "aborted before the end");
    }
  }
  FUZZ_CHECK(m.committed ? m.aborts == 0 : m.aborts == 1,
             absl::StrCat(m.commits, " commits, ", m.aborts, " aborts"));
  if (m.committed) {
    for (size_t t = 0; t < n; ++t) {
      FUZZ_CHECK(m.delivered[t] == m.lengths[t], absl::StrCat("tensor #", t, " incomplete"));
    }
  }
  for (size_t t = 0; t < n; ++t) {
    FUZZ_CHECK(m.delivered[t] <= m.lengths[t], absl::StrCat("tensor #", t, " overflowed"));
  }
  return 0;
}
