// One in-progress tensor upload (a contribution, or an initial base): checks every chunk
// against the manifest, writes it to storage as it arrives, and on a valid trailer hands
// over to a commit step. Data of an upload that is not committed is deleted when the
// object is destroyed, so nothing of a rejected upload stays stored. Not thread-safe:
// one per stream.
#ifndef COLDFUSE_SERVER_ROUNDS_TENSOR_UPLOAD_H_
#define COLDFUSE_SERVER_ROUNDS_TENSOR_UPLOAD_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "coldfuse/v1/tensor.pb.h"
#include "common/tensor_stream.h"

namespace coldfuse::rounds {

struct UploadResult {
  uint64_t id = 0;            // contribution id (0 for an initial base)
  uint64_t round = 0;         // the round it went to (for init: the first round)
  uint64_t base_version = 0;  // for init: 0
  std::string sha256;
  uint64_t bytes = 0;
};

class TensorUpload {
 public:
  // Commits a fully received, checksum-verified upload of `bytes` bytes.
  using CommitFn =
      std::function<absl::StatusOr<UploadResult>(const std::string& sha256, uint64_t bytes)>;
  // How an upload ended without a commit.
  enum class EndKind {
    kBroken,     // the connection broke or the client went away (why: OK or CANCELLED)
    kNoTrailer,  // the client closed its stream before the trailer
    kRejected,   // a chunk, the trailer or the commit was refused (why: the error)
  };
  // Called once when the upload ends uncommitted: keeps what a resumption can use or
  // removes it, and returns the status the client should get (one that says truly
  // what was kept).
  using AbortFn = std::function<absl::Status(EndKind kind, const absl::Status& why)>;

  TensorUpload(const v1::Manifest& manifest, StreamReceiver::ChunkSink sink, CommitFn commit,
               AbortFn abort);
  ~TensorUpload();
  TensorUpload(const TensorUpload&) = delete;
  TensorUpload& operator=(const TensorUpload&) = delete;

  // Continues an interrupted upload: see StreamReceiver::ResumeAt.
  absl::Status ResumeAt(uint32_t tensor, uint64_t offset,
                        const StreamReceiver::StoredChunkReader& read);
  absl::Status Accept(const v1::TensorChunk& chunk);
  absl::StatusOr<UploadResult> Finish(const v1::StreamTrailer& trailer);
  // Ends the upload uncommitted (runs the abort step now rather than on destruction);
  // returns the status for the client. `why` is used unless Accept or Finish failed.
  absl::Status Abandon(EndKind kind, const absl::Status& why);

 private:
  StreamReceiver receiver_;
  CommitFn commit_;
  AbortFn abort_;
  bool ended_ = false;    // committed or abandoned
  absl::Status failure_;  // the first error Accept or Finish returned
};

}  // namespace coldfuse::rounds

#endif  // COLDFUSE_SERVER_ROUNDS_TENSOR_UPLOAD_H_
