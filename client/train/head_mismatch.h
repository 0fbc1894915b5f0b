// "The kept head does not fit": a typed error, so that a caller (the contributor daemon)
// tells a head it must replace from other bad input without reading messages. The
// trainers (trainer.h, text_trainer.h) return it when the head they are given has other
// tensors, dtypes, shapes or sizes than the model and the data need. Header-only and
// torch-free; stateless, thread-safe.
#ifndef COLDFUSE_CLIENT_TRAIN_HEAD_MISMATCH_H_
#define COLDFUSE_CLIENT_TRAIN_HEAD_MISMATCH_H_

#include "absl/status/status.h"
#include "absl/strings/cord.h"
#include "absl/strings/string_view.h"

namespace coldfuse::train {

// The type URL of the payload that marks the error (its value is empty). Part of the API:
// a status carrying it means "replace the head", whatever its message says.
inline constexpr absl::string_view kHeadMismatchTypeUrl = "type.coldfuse/train.HeadMismatch";

// INVALID_ARGUMENT with `message` (saying what does not fit) and the payload.
inline absl::Status HeadMismatchError(absl::string_view message) {
  absl::Status s = absl::InvalidArgumentError(message);
  s.SetPayload(kHeadMismatchTypeUrl, absl::Cord());
  return s;
}

// Whether `s` came from HeadMismatchError: INVALID_ARGUMENT with the payload.
inline bool IsHeadMismatch(const absl::Status& s) {
  return absl::IsInvalidArgument(s) && s.GetPayload(kHeadMismatchTypeUrl).has_value();
}

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_HEAD_MISMATCH_H_
