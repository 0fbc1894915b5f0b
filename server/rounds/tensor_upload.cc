#include "server/rounds/tensor_upload.h"

#include "common/status_macros.h"

namespace coldfuse::rounds {

TensorUpload::TensorUpload(const v1::Manifest& manifest, StreamReceiver::ChunkSink sink,
                           CommitFn commit, AbortFn abort)
    : receiver_(manifest, std::move(sink)), commit_(std::move(commit)), abort_(std::move(abort)) {}

TensorUpload::~TensorUpload() {
  if (!ended_ && abort_) {
    (void)abort_(failure_.ok() ? EndKind::kBroken : EndKind::kRejected, failure_);
  }
}

absl::Status TensorUpload::Abandon(EndKind kind, const absl::Status& why) {
  if (ended_) return why;
  ended_ = true;
  if (!failure_.ok()) {
    kind = EndKind::kRejected;  // the first error is what stopped it
  }
  const absl::Status& reason = failure_.ok() ? why : failure_;
  return abort_ ? abort_(kind, reason) : reason;
}

absl::Status TensorUpload::ResumeAt(uint32_t tensor, uint64_t offset,
                                    const StreamReceiver::StoredChunkReader& read) {
  absl::Status st = receiver_.ResumeAt(tensor, offset, read);
  // Stored chunks that are gone or damaged can never be resumed from: drop the upload.
  if ((absl::IsNotFound(st) || absl::IsDataLoss(st)) && failure_.ok()) failure_ = st;
  return st;
}

absl::Status TensorUpload::Accept(const v1::TensorChunk& chunk) {
  absl::Status st = receiver_.Accept(chunk);
  if (!st.ok() && failure_.ok()) failure_ = st;
  return st;
}

absl::StatusOr<UploadResult> TensorUpload::Finish(const v1::StreamTrailer& trailer) {
  auto sha = receiver_.Finish(trailer);
  absl::StatusOr<UploadResult> result =
      sha.ok() ? commit_(*sha, receiver_.bytes_received()) : sha.status();
  if (result.ok()) {
    ended_ = true;
  } else if (failure_.ok()) {
    failure_ = result.status();
  }
  return result;
}

}  // namespace coldfuse::rounds
