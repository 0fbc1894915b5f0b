// A contribution read as its update: what it moves the round's base by, per element, in
// double and in the base's element order, never rounded to the base's dtype. The input
// of fusion in the "update domain" (outer optimizers and merging methods, issue 13):
//   fresh FULL x:               u = x - b   (b: the round's base)
//   fresh DELTA d:              u = d
//   stale FULL x (from f, w):   u = (x - f) * w   (no multiplication when w = 1)
//   stale DELTA d (weight w):   u = d * w
// in that order of operations, as ReadInBaseGrid computes before it re-encodes.
// Thread-safe: fusion reads different base chunks of one contribution on several threads
// at once (SentReader).
#ifndef COLDFUSE_SERVER_FUSION_UPDATE_READER_H_
#define COLDFUSE_SERVER_FUSION_UPDATE_READER_H_

#include <cstdint>

#include "absl/status/status.h"
#include "coldfuse/v1/tensor.pb.h"
#include "server/fusion/element_reader.h"
#include "server/fusion/round_fusion.h"

namespace coldfuse::fusion {

// What contribution `c` sent, read in the base's element ranges, by several threads at
// once: decoded to double, in its own dtype, or q·s for DELTA_INT8 (scales at entry 2t,
// values at 2t + 1). A stored chunk in the base's grid (the same element size) is read by
// the thread that needs it; one that spans several base chunks (another dtype's grid,
// 8-bit values and their scales) is read once for the threads working on neighbouring
// base chunks (SharedChunks: the 2 most recent per stream). Thread-safe.
class SentReader {
 public:
  // `base_manifest` is the round base's; `c` is copied.
  SentReader(const v1::Manifest& base_manifest, const ContributionSource& c);

  // Elements [begin, begin + n) of base tensor `t`. OUT_OF_RANGE past the end; DATA_LOSS
  // for a stored chunk of the wrong size; the reader's errors as they are.
  absl::Status Read(uint32_t t, uint64_t begin, uint64_t n, double* out) const;

 private:
  const v1::Manifest base_manifest_;
  const ContributionSource c_;
  mutable SharedChunks values_, scales_;
};

class UpdateReader {
 public:
  // `base_manifest` is the round base's; `c.manifest` must match it in names, shapes and
  // order (the intake checked). `c` is copied.
  UpdateReader(const v1::Manifest& base_manifest, const ContributionSource& c);

  // out[i] = u of elements [begin, begin + n) of tensor `t`, where base[i] holds the round
  // base's values of the same elements (decoded by the caller, once for all
  // contributions). OUT_OF_RANGE past the tensor; DATA_LOSS for a stored chunk of the
  // wrong size; the readers' errors as they are.
  absl::Status Read(uint32_t t, uint64_t begin, uint64_t n, const double* base, double* out) const;
  // Whether Read uses `base` (a fresh FULL contribution); otherwise it may be null.
  bool NeedsBase() const { return !stale_ && !c_.delta; }

 private:
  const v1::Manifest base_manifest_;
  const ContributionSource c_;
  const bool stale_;
  const SentReader sent_;
};

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_UPDATE_READER_H_
