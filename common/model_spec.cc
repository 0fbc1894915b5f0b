#include "common/model_spec.h"

#include <cmath>
#include <cstring>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace coldfuse {

uint64_t SplitMix64::Next() {
  uint64_t z = (state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

absl::StatusOr<MlpSpec> ParseModelSpec(absl::string_view spec) {
  auto bad = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat("bad model spec '", spec, "': ", why,
                     "; expected e.g. 'mlp:64,128,64' (input width, then each layer's width)"));
  };
  absl::string_view rest = spec;
  if (!absl::ConsumePrefix(&rest, "mlp:")) return bad("unknown architecture");
  MlpSpec out;
  for (absl::string_view part : absl::StrSplit(rest, ',')) {
    int64_t d;
    if (!absl::SimpleAtoi(part, &d) || d < 1 || d > (1 << 20)) {
      return bad(absl::StrCat("'", part, "' is not a width in 1..1048576"));
    }
    out.dims.push_back(d);
  }
  if (out.dims.size() < 2) return bad("needs at least an input and one layer width");
  if (out.dims.size() > 65) return bad("at most 64 layers");
  // Refuse what could never be stored before anyone allocates it.
  absl::Status valid = ValidateManifest(MlpManifest(out));
  if (!valid.ok()) return bad(valid.message());
  return out;
}

std::string FormatModelSpec(const MlpSpec& spec) {
  return absl::StrCat("mlp:", absl::StrJoin(spec.dims, ","));
}

v1::Manifest MlpManifest(const MlpSpec& spec) {
  v1::Manifest m;
  for (size_t i = 0; i + 1 < spec.dims.size(); ++i) {
    auto* w = m.add_tensors();
    w->set_name(absl::StrCat("body.", i, ".weight"));
    w->set_dtype(v1::F32);
    w->add_shape(spec.dims[i + 1]);
    w->add_shape(spec.dims[i]);
    auto* b = m.add_tensors();
    b->set_name(absl::StrCat("body.", i, ".bias"));
    b->set_dtype(v1::F32);
    b->add_shape(spec.dims[i + 1]);
  }
  return m;
}

std::vector<HostTensor> InitMlpBody(const MlpSpec& spec, uint64_t seed) {
  SplitMix64 rng(seed);
  std::vector<HostTensor> out;
  v1::Manifest m = MlpManifest(spec);
  for (int i = 0; i < m.tensors_size(); ++i) {
    const auto& t = m.tensors(i);
    int64_t fan_in = spec.dims[i / 2];
    float bound = static_cast<float>(1.0 / std::sqrt(static_cast<double>(fan_in)));
    int64_t n = 1;
    for (int64_t d : t.shape()) n *= d;
    HostTensor h;
    h.spec = t;
    h.data.resize(static_cast<size_t>(n) * 4);
    for (int64_t k = 0; k < n; ++k) {
      float v = static_cast<float>((2.0 * rng.Uniform() - 1.0) * bound);
      std::memcpy(h.data.data() + 4 * k, &v, 4);
    }
    out.push_back(std::move(h));
  }
  return out;
}

}  // namespace coldfuse
