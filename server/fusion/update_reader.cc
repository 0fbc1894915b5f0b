#include "server/fusion/update_reader.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "common/tensor.h"

namespace coldfuse::fusion {

UpdateReader::UpdateReader(const v1::Manifest& base_manifest, const ContributionSource& c)
    : base_manifest_(base_manifest), c_(c), stale_(static_cast<bool>(c.read_trained_from)) {}

ElementReader& UpdateReader::ReaderLocked(int which, uint32_t t) {
  auto& readers = readers_[which];
  auto& reader = readers[t];
  if (reader == nullptr) {
    readers.erase(readers.begin(), readers.lower_bound(t == 0 ? 0 : t - 1));
    auto& slot = readers[t];
    // The contribution in the dtype it was sent in; the trained-from base in the base's.
    const DType dtype =
        which == 0 ? c_.manifest.tensors(t).dtype() : base_manifest_.tensors(t).dtype();
    const uint64_t total = NumElements(base_manifest_.tensors(t)).value_or(0);
    const ChunkReader& read = which == 0 ? c_.read : c_.read_trained_from;
    if (which == 0 && c_.int8_block_size > 0) {
      // Scales at 2t, values at 2t + 1: q·s.
      slot = std::make_unique<ElementReader>(
          total, [read, t](uint64_t chunk) { return read(0, 2 * t + 1, chunk); },
          [read, t](uint64_t chunk) { return read(0, 2 * t, chunk); }, c_.int8_block_size);
      return *slot;
    }
    slot = std::make_unique<ElementReader>(dtype, total,
                                           [read, t](uint64_t chunk) { return read(0, t, chunk); });
    return *slot;
  }
  return *reader;
}

absl::Status UpdateReader::Read(uint32_t t, uint64_t begin, uint64_t n, const double* base,
                                double* out) {
  if (t >= static_cast<uint32_t>(base_manifest_.tensors_size()) ||
      t >= static_cast<uint32_t>(c_.manifest.tensors_size())) {
    return absl::OutOfRangeError(absl::StrCat("no tensor #", t, " in the base"));
  }
  std::vector<double> from;
  {
    std::lock_guard<std::mutex> l(mu_);
    RETURN_IF_ERROR(ReaderLocked(0, t).Read(begin, n, out));
    if (stale_ && !c_.delta) {
      from.resize(n);
      RETURN_IF_ERROR(ReaderLocked(1, t).Read(begin, n, from.data()));
    }
  }
  if (stale_) {
    // Its own update: stored as such (DELTA), or the values minus the base they came
    // from; then down-weighted.
    if (!c_.delta) {
      for (uint64_t i = 0; i < n; ++i) out[i] += -1.0 * from[i];
    }
    if (c_.weight != 1.0) {
      for (uint64_t i = 0; i < n; ++i) out[i] *= c_.weight;
    }
  } else if (!c_.delta) {
    for (uint64_t i = 0; i < n; ++i) out[i] += -1.0 * base[i];
  }
  return absl::OkStatus();
}

}  // namespace coldfuse::fusion
