#include "server/fusion/update_reader.h"

#include <vector>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "common/tensor.h"

namespace coldfuse::fusion {

namespace {

constexpr size_t kSharedChunksPerStream = 2;

SharedChunks::Fetch FetchFrom(const ChunkReader& read) {
  return [read](uint32_t t, uint64_t chunk) { return read(0, t, chunk); };
}

}  // namespace

SentReader::SentReader(const v1::Manifest& base_manifest, const ContributionSource& c)
    : base_manifest_(base_manifest),
      c_(c),
      values_(FetchFrom(c.read), kSharedChunksPerStream),
      scales_(FetchFrom(c.read), kSharedChunksPerStream) {}

absl::Status SentReader::Read(uint32_t t, uint64_t begin, uint64_t n, double* out) const {
  if (t >= static_cast<uint32_t>(base_manifest_.tensors_size())) {
    return absl::OutOfRangeError(absl::StrCat("no tensor #", t, " in the base"));
  }
  const v1::TensorSpec& bspec = base_manifest_.tensors(t);
  ASSIGN_OR_RETURN(uint64_t total, NumElements(bspec));
  if (c_.int8_block_size > 0) {
    if (2 * static_cast<uint64_t>(t) + 1 >= static_cast<uint64_t>(c_.manifest.tensors_size())) {
      return absl::OutOfRangeError(absl::StrCat("no tensor #", t, " in the contribution"));
    }
    return ElementReader(
               total, [this, t](uint64_t chunk) { return values_.Get(2 * t + 1, chunk); },
               [this, t](uint64_t chunk) { return scales_.Get(2 * t, chunk); }, c_.int8_block_size)
        .Read(begin, n, out);
  }
  if (t >= static_cast<uint32_t>(c_.manifest.tensors_size())) {
    return absl::OutOfRangeError(absl::StrCat("no tensor #", t, " in the contribution"));
  }
  const DType dtype = c_.manifest.tensors(t).dtype();
  if (DTypeSize(dtype) == DTypeSize(bspec.dtype())) {
    const ChunkReader& read = c_.read;
    return ElementReader(dtype, total, [&read, t](uint64_t chunk) { return read(0, t, chunk); })
        .Read(begin, n, out);
  }
  return ElementReader(dtype, total, [this, t](uint64_t chunk) { return values_.Get(t, chunk); })
      .Read(begin, n, out);
}

UpdateReader::UpdateReader(const v1::Manifest& base_manifest, const ContributionSource& c)
    : base_manifest_(base_manifest),
      c_(c),
      stale_(static_cast<bool>(c.read_trained_from)),
      sent_(base_manifest, c) {}

absl::Status UpdateReader::Read(uint32_t t, uint64_t begin, uint64_t n, const double* base,
                                double* out) const {
  RETURN_IF_ERROR(sent_.Read(t, begin, n, out));
  if (stale_) {
    // Its own update: stored as such (DELTA), or the values minus the base they came
    // from (stored in the base's dtype and grid); then down-weighted.
    if (!c_.delta) {
      const v1::TensorSpec& spec = base_manifest_.tensors(t);
      ASSIGN_OR_RETURN(uint64_t total, NumElements(spec));
      std::vector<double> from(n);
      const ChunkReader& read = c_.read_trained_from;
      RETURN_IF_ERROR(ElementReader(spec.dtype(), total, [&read, t](uint64_t chunk) {
                        return read(0, t, chunk);
                      }).Read(begin, n, from.data()));
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
