// Test-only helper: deterministic host tensors of any dtype and shape (random bytes).
#ifndef COLDFUSE_COMMON_TEST_TENSORS_H_
#define COLDFUSE_COMMON_TEST_TENSORS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/model_spec.h"
#include "common/tensor.h"

namespace coldfuse {

// A tensor whose bytes come from SplitMix64(seed): the same on every machine.
inline HostTensor MakeTensor(const std::string& name, DType dtype, std::vector<int64_t> shape,
                             uint64_t seed) {
  HostTensor t;
  t.spec.set_name(name);
  t.spec.set_dtype(dtype);
  for (int64_t d : shape) t.spec.add_shape(d);
  SplitMix64 rng(seed);
  t.data.resize(*ByteLength(t.spec));
  for (char& c : t.data) c = static_cast<char>(rng.Next());
  return t;
}

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_TEST_TENSORS_H_
