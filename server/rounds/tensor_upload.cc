#include "server/rounds/tensor_upload.h"

#include "common/status_macros.h"

namespace coldfuse::rounds {

TensorUpload::TensorUpload(const v1::Manifest& manifest, StreamReceiver::ChunkSink sink,
                           CommitFn commit, AbortFn abort)
    : receiver_(manifest, std::move(sink)), commit_(std::move(commit)), abort_(std::move(abort)) {}

TensorUpload::~TensorUpload() {
  if (!committed_ && abort_) abort_();
}

absl::Status TensorUpload::Accept(const v1::TensorChunk& chunk) { return receiver_.Accept(chunk); }

absl::StatusOr<UploadResult> TensorUpload::Finish(const v1::StreamTrailer& trailer) {
  ASSIGN_OR_RETURN(std::string sha, receiver_.Finish(trailer));
  ASSIGN_OR_RETURN(UploadResult result, commit_(sha, receiver_.bytes_received()));
  committed_ = true;
  return result;
}

}  // namespace coldfuse::rounds
