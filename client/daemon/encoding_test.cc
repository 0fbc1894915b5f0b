// What the daemon sends: its flags' words parsed with errors that say what to fix, 8-bit
// deltas within half a scale of the trained change (rule 14), deltas in the dtype asked
// for, and a trained model that does not fit its base or diverged refused before sending.
#include "client/daemon/encoding.h"

#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse::daemon {
namespace {

using ::testing::HasSubstr;

HostTensor Make(const std::string& name, DType dtype, std::vector<int64_t> shape,
                const std::vector<double>& values) {
  HostTensor t;
  t.spec.set_name(name);
  t.spec.set_dtype(dtype);
  for (int64_t d : shape) t.spec.add_shape(d);
  t.data.resize(values.size() * DTypeSize(dtype));
  EncodeFromDouble(dtype, values.data(), values.size(), t.data.data());
  return t;
}

std::vector<double> Values(const HostTensor& t) {
  const size_t n = t.data.size() / DTypeSize(t.spec.dtype());
  std::vector<double> v(n);
  DecodeToDouble(t.spec.dtype(), t.data.data(), n, v.data());
  return v;
}

// A base (F32 [1000] and BF16 [3, 70]) and the model trained from it, in F32: small
// changes of mixed size, one block of none.
struct Trained {
  std::vector<HostTensor> base, trained;
};

Trained MakeTrained() {
  std::mt19937_64 rng(3);
  std::normal_distribution<double> normal;
  Trained m;
  const std::vector<std::pair<std::vector<int64_t>, DType>> specs = {{{1000}, v1::F32},
                                                                     {{3, 70}, v1::BF16}};
  for (size_t t = 0; t < specs.size(); ++t) {
    const size_t n = t == 0 ? 1000 : 210;
    std::vector<double> b(n), x(n);
    for (size_t i = 0; i < n; ++i) {
      b[i] = normal(rng);
      const double change = i < 64 ? 0.0 : normal(rng) * std::ldexp(1e-3, static_cast<int>(i % 9));
      x[i] = b[i] + change;
    }
    const std::string name = t == 0 ? "encoder.weight" : "encoder.bias";
    m.base.push_back(Make(name, specs[t].second, specs[t].first, b));
    // The trained values start from the base as stored (BF16 rounds b).
    std::vector<double> stored = Values(m.base.back());
    for (size_t i = 0; i < n; ++i) x[i] = stored[i] + (x[i] - b[i]);
    m.trained.push_back(Make(name, v1::F32, specs[t].first, x));
  }
  return m;
}

TEST(EncodingTest, FlagsAreParsedAndBadOnesSayWhatToFix) {
  auto full = ParseSendEncoding("full", "", 64);
  ASSERT_TRUE(full.ok());
  EXPECT_EQ(full->encoding, v1::FULL);
  auto delta = ParseSendEncoding("delta", "bf16", 64);
  ASSERT_TRUE(delta.ok());
  EXPECT_EQ(delta->encoding, v1::DELTA);
  EXPECT_EQ(delta->dtype, v1::BF16);
  auto int8 = ParseSendEncoding("delta_int8", "", 128);
  ASSERT_TRUE(int8.ok());
  EXPECT_EQ(int8->encoding, v1::DELTA_INT8);
  EXPECT_EQ(int8->int8_block_size, 128u);

  auto bad = ParseSendEncoding("zip", "", 64);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("full, delta or delta_int8"));
  bad = ParseSendEncoding("delta_int8", "f16", 64);
  EXPECT_THAT(bad.status().message(), HasSubstr("--send_dtype does not apply"));
  bad = ParseSendEncoding("delta_int8", "", 4);
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("--int8_block_size is 4"));
  bad = ParseSendEncoding("delta", "i8", 64);
  EXPECT_THAT(bad.status().message(), HasSubstr("--send_dtype=i8"));
}

TEST(EncodingTest, EightBitDeltasAreWithinHalfAScaleOfTheChange) {
  Trained m = MakeTrained();
  std::vector<HostTensor> sent = m.trained;
  v1::ContributionHeader header;
  const SendEncoding how{.encoding = v1::DELTA_INT8, .int8_block_size = 64};
  ASSERT_TRUE(EncodeContribution(how, m.base, &sent, &header).ok());
  EXPECT_EQ(header.encoding(), v1::DELTA_INT8);
  EXPECT_EQ(header.int8_block_size(), 64u);
  auto want = Int8DeltaManifest(ManifestOf(m.base), 64);
  ASSERT_TRUE(want.ok());
  EXPECT_EQ(header.manifest().SerializeAsString(), want->SerializeAsString());
  ASSERT_EQ(sent.size(), 4u);
  for (size_t t = 0; t < 2; ++t) {
    const std::vector<double> b = Values(m.base[t]), x = Values(m.trained[t]);
    const std::vector<double> scales = Values(sent[2 * t]);
    const HostTensor& q = sent[2 * t + 1];
    EXPECT_EQ(q.spec.dtype(), v1::I8);
    ASSERT_EQ(q.data.size(), b.size());
    ASSERT_EQ(scales.size(), (b.size() + 63) / 64);
    for (size_t blk = 0; blk < scales.size(); ++blk) {
      double largest = 0;
      for (size_t i = blk * 64; i < std::min(b.size(), blk * 64 + 64); ++i) {
        largest = std::max(largest, std::fabs(x[i] - b[i]));
      }
      EXPECT_EQ(scales[blk], static_cast<double>(static_cast<float>(largest / 127.0)));
    }
    EXPECT_EQ(scales[0], 0.0) << "the first block did not change";
    for (size_t i = 0; i < b.size(); ++i) {
      const double s = scales[i / 64];
      const double decoded = static_cast<int8_t>(q.data[i]) * s;
      EXPECT_LE(std::fabs(decoded - (x[i] - b[i])), s / 2) << "tensor " << t << " element " << i;
    }
  }
}

TEST(EncodingTest, DeltasAreSentInTheDtypeAskedFor) {
  Trained m = MakeTrained();
  std::vector<HostTensor> sent = m.trained;
  v1::ContributionHeader header;
  ASSERT_TRUE(
      EncodeContribution({.encoding = v1::DELTA, .dtype = v1::BF16}, m.base, &sent, &header).ok());
  EXPECT_EQ(header.encoding(), v1::DELTA);
  EXPECT_EQ(header.int8_block_size(), 0u);
  for (size_t t = 0; t < 2; ++t) {
    EXPECT_EQ(sent[t].spec.dtype(), v1::BF16);
    EXPECT_EQ(header.manifest().tensors(t).dtype(), v1::BF16);
    const std::vector<double> b = Values(m.base[t]), x = Values(m.trained[t]);
    std::vector<double> d(b.size());
    for (size_t i = 0; i < b.size(); ++i) d[i] = x[i] - b[i];
    std::string want(d.size() * 2, '\0');
    EncodeFromDouble(v1::BF16, d.data(), d.size(), want.data());
    EXPECT_TRUE(sent[t].data == want) << "tensor " << t;
  }
  // FULL as trained: the same bytes.
  sent = m.trained;
  ASSERT_TRUE(EncodeContribution({}, m.base, &sent, &header).ok());
  EXPECT_EQ(header.encoding(), v1::FULL);
  EXPECT_TRUE(sent[0].data == m.trained[0].data && sent[1].data == m.trained[1].data);
}

TEST(EncodingTest, AModelThatDoesNotFitItsBaseOrDivergedIsNotSent) {
  Trained m = MakeTrained();
  v1::ContributionHeader header;
  std::vector<HostTensor> wrong = m.trained;
  wrong[1].spec.set_shape(0, 70);
  wrong[1].spec.set_shape(1, 3);
  auto st = EncodeContribution({.encoding = v1::DELTA_INT8}, m.base, &wrong, &header);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("does not match its base"));

  std::vector<HostTensor> diverged = m.trained;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::memcpy(diverged[0].data.data() + 4 * 500, &nan, 4);
  for (v1::Encoding e : {v1::FULL, v1::DELTA, v1::DELTA_INT8}) {
    std::vector<HostTensor> sent = diverged;
    st = EncodeContribution({.encoding = e}, m.base, &sent, &header);
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << v1::Encoding_Name(e);
    EXPECT_THAT(st.message(), HasSubstr("'encoder.weight' element 500 is not finite"));
  }

  // A change larger than F16's range: refused as F16, with the dtypes that hold it.
  std::vector<HostTensor> large = m.trained;
  const float big = 1e5f;
  std::memcpy(large[0].data.data() + 4 * 700, &big, 4);
  st = EncodeContribution({.encoding = v1::DELTA, .dtype = v1::F16}, m.base, &large, &header);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(st.message(), HasSubstr("'encoder.weight' element 700"));
  EXPECT_THAT(st.message(), HasSubstr("does not fit F16: send it as bf16 or f32"));
  EXPECT_TRUE(
      EncodeContribution({.encoding = v1::DELTA, .dtype = v1::BF16}, m.base, &large, &header).ok());
}

}  // namespace
}  // namespace coldfuse::daemon
