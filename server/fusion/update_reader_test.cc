// UpdateReader: each kind of contribution read as its update, in double, across chunk
// boundaries of both grids (a 16-bit contribution of an F32 base), against the values
// computed here element by element.
#include "server/fusion/update_reader.h"

#include <gtest/gtest.h>

#include <cmath>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/tensor_stream.h"
#include "server/rounds/test_util.h"

namespace coldfuse::fusion {
namespace {

using testing_util::BytesOf;

// 300,000 F32 elements: two chunks of the base (262,144 per chunk), one and a half
// chunks of an F16/BF16 contribution (524,288 per chunk).
constexpr int64_t kN = 300000;

v1::Manifest OneTensor(v1::DType dtype) {
  v1::Manifest m;
  auto* s = m.add_tensors();
  s->set_name("w");
  s->set_dtype(dtype);
  s->add_shape(kN);
  return m;
}

std::vector<double> Pattern(double scale, double shift) {
  std::vector<double> v(kN);
  for (int64_t i = 0; i < kN; ++i) v[i] = scale * std::sin(0.001 * i + shift);
  return v;
}

// `values` stored in `dtype`, served in 1 MiB chunks; `decoded` gets what was stored.
ChunkReader Stored(v1::DType dtype, const std::vector<double>& values,
                   std::vector<double>* decoded) {
  std::string bytes(values.size() * DTypeSize(dtype), '\0');
  EncodeFromDouble(dtype, values.data(), values.size(), bytes.data());
  decoded->resize(values.size());
  DecodeToDouble(dtype, bytes.data(), values.size(), decoded->data());
  return [bytes](size_t, uint32_t t, uint64_t c) -> absl::StatusOr<std::string> {
    if (t != 0 || c * kChunkBytes >= bytes.size()) return absl::NotFoundError("no chunk");
    return bytes.substr(c * kChunkBytes, kChunkBytes);
  };
}

// Reads all of tensor 0 in pieces that straddle both grids' chunk boundaries.
std::vector<double> ReadAll(UpdateReader& r, const std::vector<double>& base) {
  std::vector<double> out(kN);
  for (int64_t begin = 0; begin < kN; begin += 77777) {
    const int64_t n = std::min<int64_t>(77777, kN - begin);
    absl::Status st = r.Read(0, begin, n, base.data() + begin, out.data() + begin);
    EXPECT_TRUE(st.ok()) << st;
  }
  return out;
}

TEST(UpdateReaderTest, EachKindOfContributionIsItsUpdateInDouble) {
  const v1::Manifest base_manifest = OneTensor(v1::F32);
  std::vector<double> b, f, x;
  ChunkReader read_base = Stored(v1::F32, Pattern(1.0, 0.0), &b);
  ChunkReader read_from = Stored(v1::F32, Pattern(1.0, 0.3), &f);

  struct Case {
    const char* what;
    v1::DType dtype;
    bool delta;
    bool stale;
    double weight;
  };
  for (const Case& k :
       {Case{"fresh FULL F16", v1::F16, false, false, 1.0},
        Case{"fresh FULL F32", v1::F32, false, false, 1.0},
        Case{"fresh DELTA BF16", v1::BF16, true, false, 1.0},
        Case{"stale FULL F32, weight 1/sqrt(2)", v1::F32, false, true, 1.0 / std::sqrt(2.0)},
        Case{"stale FULL BF16, weight 1", v1::BF16, false, true, 1.0},
        Case{"stale DELTA F16, weight 0.5", v1::F16, true, true, 0.5}}) {
    ContributionSource c;
    c.manifest = OneTensor(k.dtype);
    c.delta = k.delta;
    c.read = Stored(k.dtype, Pattern(k.delta ? 0.01 : 1.0, 0.7), &x);
    if (k.stale) {
      c.read_trained_from = read_from;
      c.weight = k.weight;
    }
    UpdateReader r(base_manifest, c);
    const std::vector<double> got = ReadAll(r, b);
    int64_t wrong = 0;
    for (int64_t i = 0; i < kN; ++i) {
      double u = x[i];
      if (k.stale) {
        if (!k.delta) u = x[i] + -1.0 * f[i];
        if (k.weight != 1.0) u *= k.weight;
      } else if (!k.delta) {
        u = x[i] + -1.0 * b[i];
      }
      wrong += got[i] != u;  // exact: the same operations in the same order
    }
    EXPECT_EQ(wrong, 0) << k.what;
  }
}

TEST(UpdateReaderTest, ErrorsNameWhatIsWrong) {
  const v1::Manifest base_manifest = OneTensor(v1::F32);
  std::vector<double> x;
  ContributionSource c;
  c.manifest = OneTensor(v1::F32);
  c.read = Stored(v1::F32, Pattern(1.0, 0.0), &x);
  UpdateReader r(base_manifest, c);
  std::vector<double> base(10), out(10);
  EXPECT_EQ(r.Read(1, 0, 10, base.data(), out.data()).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(r.Read(0, kN - 5, 10, base.data(), out.data()).code(), absl::StatusCode::kOutOfRange);
  // A stored chunk of the wrong size is DATA_LOSS.
  c.read = [](size_t, uint32_t, uint64_t) -> absl::StatusOr<std::string> {
    return std::string(12, '\0');
  };
  UpdateReader short_chunks(base_manifest, c);
  EXPECT_EQ(short_chunks.Read(0, 0, 10, base.data(), out.data()).code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace coldfuse::fusion
