// Model specs: which architecture the shared tensors belong to, its manifest, and a
// deterministic initial base. Used by the CLI (init), the server (status) and the
// client (building the LibTorch model). Stateless; thread-safe.
//
// "mlp:D0,D1,...,Dn" is an MLP body: Linear(D0->D1), ReLU, ..., Linear(Dn-1->Dn), ReLU.
// Its shared tensors are "body.{i}.weight" [D(i+1), D(i)] and "body.{i}.bias" [D(i+1)]
// for i = 0..n-1, all F32. A task head (Linear(Dn -> classes)) stays with each
// contributor and is not part of the spec.
#ifndef COLDFUSE_COMMON_MODEL_SPEC_H_
#define COLDFUSE_COMMON_MODEL_SPEC_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "coldfuse/v1/tensor.pb.h"
#include "common/tensor.h"

namespace coldfuse {

struct MlpSpec {
  // dims[0] is the input width, dims.back() the body's output width. At least 2.
  std::vector<int64_t> dims;
};

// INVALID_ARGUMENT with an example of the right form when `spec` is malformed.
absl::StatusOr<MlpSpec> ParseModelSpec(absl::string_view spec);
std::string FormatModelSpec(const MlpSpec& spec);

v1::Manifest MlpManifest(const MlpSpec& spec);

// Initial body weights: each Linear's weight and bias uniform in
// [-1/sqrt(fan_in), 1/sqrt(fan_in)] (PyTorch's default), from a seeded generator
// that gives the same bytes on every platform.
std::vector<HostTensor> InitMlpBody(const MlpSpec& spec, uint64_t seed);

// A portable uniform [0, 1) generator (splitmix64), used wherever runs must repeat
// across machines.
class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}
  uint64_t Next();
  double Uniform() { return static_cast<double>(Next() >> 11) * 0x1.0p-53; }
  // SplitMix64(state()) continues this generator's sequence.
  uint64_t state() const { return state_; }

 private:
  uint64_t state_;
};

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_MODEL_SPEC_H_
