#include "common/tensor.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "common/status_macros.h"

namespace coldfuse {

absl::StatusOr<uint64_t> NumElements(const v1::TensorSpec& spec) {
  uint64_t n = 1;
  for (int64_t d : spec.shape()) {
    if (d < 0) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name(),
                                                     "' has negative dimension ", d, " in shape ",
                                                     ShapeString(spec)));
    }
    if (d != 0 && n > kMaxTotalBytes / static_cast<uint64_t>(d)) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", spec.name(), "' shape ", ShapeString(spec), " is too large"));
    }
    n *= static_cast<uint64_t>(d);
  }
  return n;
}

absl::StatusOr<uint64_t> ByteLength(const v1::TensorSpec& spec) {
  size_t size = DTypeSize(spec.dtype());
  if (size == 0) {
    return absl::InvalidArgumentError(absl::StrCat("tensor '", spec.name(), "' has unknown dtype ",
                                                   static_cast<int>(spec.dtype()),
                                                   ": use F32, F16, BF16 or F64"));
  }
  ASSIGN_OR_RETURN(uint64_t n, NumElements(spec));
  if (n > kMaxTotalBytes / size) {
    return absl::InvalidArgumentError(
        absl::StrCat("tensor '", spec.name(), "' is larger than ", kMaxTotalBytes, " bytes"));
  }
  return n * size;
}

absl::StatusOr<uint64_t> TotalBytes(const v1::Manifest& manifest) {
  uint64_t total = 0;
  for (const auto& t : manifest.tensors()) {
    ASSIGN_OR_RETURN(uint64_t b, ByteLength(t));
    if (b > kMaxTotalBytes - total) {
      return absl::InvalidArgumentError(
          absl::StrCat("manifest is larger than ", kMaxTotalBytes, " bytes in total"));
    }
    total += b;
  }
  return total;
}

absl::Status ValidateManifest(const v1::Manifest& manifest) {
  if (manifest.tensors_size() == 0) {
    return absl::InvalidArgumentError("manifest lists no tensors");
  }
  if (manifest.tensors_size() > kMaxTensors) {
    return absl::InvalidArgumentError(absl::StrCat("manifest lists ", manifest.tensors_size(),
                                                   " tensors; at most ", kMaxTensors));
  }
  std::set<std::string> names;
  for (int i = 0; i < manifest.tensors_size(); ++i) {
    const auto& t = manifest.tensors(i);
    if (t.name().empty() || t.name().size() > 1024) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor #", i, " has an empty or over-long name (1..1024 bytes)"));
    }
    for (unsigned char c : t.name()) {
      if (c < 0x20 || c == 0x7f) {
        return absl::InvalidArgumentError(
            absl::StrCat("tensor #", i, " name contains a control character"));
      }
    }
    if (!names.insert(t.name()).second) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor name '", t.name(), "' appears twice in the manifest"));
    }
    if (t.shape_size() > 16) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.name(), "' has ", t.shape_size(), " dimensions; at most 16"));
    }
  }
  return TotalBytes(manifest).status();
}

absl::Status CheckManifestMatches(const v1::Manifest& expected, const v1::Manifest& got) {
  for (int i = 0; i < got.tensors_size(); ++i) {
    const auto& g = got.tensors(i);
    if (i >= expected.tensors_size()) {
      return absl::InvalidArgumentError(
          absl::StrCat("unexpected tensor '", g.name(), "' (#", i, "): the base has only ",
                       expected.tensors_size(), " shared tensors; send only those"));
    }
    const auto& e = expected.tensors(i);
    if (g.name() != e.name()) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor #", i, " is '", g.name(), "' but the base has '", e.name(),
                       "' there: send the base's shared tensors by name, in manifest order"));
    }
    if (g.dtype() != e.dtype()) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", g.name(), "' has dtype ",
                                                     DTypeName(g.dtype()), " but the base has ",
                                                     DTypeName(e.dtype())));
    }
    if (g.shape_size() != e.shape_size() ||
        !std::equal(g.shape().begin(), g.shape().end(), e.shape().begin())) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", g.name(), "' has shape ",
                                                     ShapeString(g), " but the base has ",
                                                     ShapeString(e)));
    }
  }
  if (got.tensors_size() < expected.tensors_size()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "missing tensor '", expected.tensors(got.tensors_size()).name(), "': the base has ",
        expected.tensors_size(), " shared tensors and all must be sent"));
  }
  return absl::OkStatus();
}

std::string ShapeString(const v1::TensorSpec& spec) {
  return absl::StrCat("[", absl::StrJoin(spec.shape(), ", "), "]");
}

v1::Manifest ManifestOf(const std::vector<HostTensor>& tensors) {
  v1::Manifest m;
  for (const auto& t : tensors) *m.add_tensors() = t.spec;
  return m;
}

absl::Status CheckTensorSizes(const std::vector<HostTensor>& tensors) {
  for (const auto& t : tensors) {
    ASSIGN_OR_RETURN(uint64_t want, ByteLength(t.spec));
    if (t.data.size() != want) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.spec.name(), "' holds ", t.data.size(), " bytes; its spec needs ", want));
    }
  }
  return absl::OkStatus();
}

}  // namespace coldfuse
