// A contribution read as its update: what it moves the round's base by, per element, in
// double and in the base's element order, never rounded to the base's dtype. The input
// of fusion in the "update domain" (outer optimizers and merging methods, issue 13):
//   fresh FULL x:               u = x - b   (b: the round's base)
//   fresh DELTA d:              u = d
//   stale FULL x (from f, w):   u = (x - f) * w   (no multiplication when w = 1)
//   stale DELTA d (weight w):   u = d * w
// in that order of operations, as ReadInBaseGrid computes before it re-encodes.
// Thread-safe (a mutex over the cached element readers).
#ifndef COLDFUSE_SERVER_FUSION_UPDATE_READER_H_
#define COLDFUSE_SERVER_FUSION_UPDATE_READER_H_

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>

#include "absl/status/status.h"
#include "coldfuse/v1/tensor.pb.h"
#include "server/fusion/element_reader.h"
#include "server/fusion/round_fusion.h"

namespace coldfuse::fusion {

class UpdateReader {
 public:
  // `base_manifest` is the round base's; `c.manifest` must match it in names, shapes and
  // order (the intake checked). `c` is copied.
  UpdateReader(const v1::Manifest& base_manifest, const ContributionSource& c);

  // out[i] = u of elements [begin, begin + n) of tensor `t`, where base[i] holds the round
  // base's values of the same elements (decoded by the caller, once for all
  // contributions). OUT_OF_RANGE past the tensor; DATA_LOSS for a stored chunk of the
  // wrong size; the readers' errors as they are.
  absl::Status Read(uint32_t t, uint64_t begin, uint64_t n, const double* base, double* out);

 private:
  // The cached reader of tensor `t` of `which` (0: the contribution, 1: the base it was
  // trained from); readers of tensors before t - 1 are dropped, as fusion walks the
  // tensors in order.
  ElementReader& ReaderLocked(int which, uint32_t t);

  const v1::Manifest base_manifest_;
  const ContributionSource c_;
  const bool stale_;
  std::mutex mu_;
  std::map<uint32_t, std::unique_ptr<ElementReader>> readers_[2];
};

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_UPDATE_READER_H_
