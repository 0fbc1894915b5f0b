#include "common/model_spec.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

std::vector<float> Floats(const HostTensor& t) {
  std::vector<float> v(t.data.size() / 4);
  std::memcpy(v.data(), t.data.data(), v.size() * 4);
  return v;
}

TEST(ModelSpecTest, ParsesGoodSpecs) {
  auto s = ParseModelSpec("mlp:64,128,64");
  ASSERT_TRUE(s.ok()) << s.status();
  EXPECT_THAT(s->dims, ElementsAre(64, 128, 64));
  EXPECT_THAT(ParseModelSpec("mlp:1,1")->dims, ElementsAre(1, 1));
  EXPECT_THAT(ParseModelSpec("mlp:1048576,3")->dims, ElementsAre(1048576, 3));
  // 64 layers is the most.
  std::vector<int> dims(65, 2);
  auto deep = ParseModelSpec(absl::StrCat("mlp:", absl::StrJoin(dims, ",")));
  ASSERT_TRUE(deep.ok()) << deep.status();
  EXPECT_EQ(deep->dims.size(), 65u);
}

TEST(ModelSpecTest, FormatRoundTrips) {
  for (const char* spec : {"mlp:64,128,64", "mlp:1,1", "mlp:5,16,8"}) {
    EXPECT_EQ(FormatModelSpec(*ParseModelSpec(spec)), spec);
  }
}

TEST(ModelSpecTest, RejectsBadSpecsWithAnExample) {
  std::vector<int> too_deep(66, 2);
  std::string deep = absl::StrCat("mlp:", absl::StrJoin(too_deep, ","));
  for (const std::string& bad :
       {std::string("mlp:64"), std::string("mlp:0,3"), std::string("mlp:-1,3"),
        std::string("cnn:1,2"), std::string("mlp:a,b"), std::string("mlp:"), std::string(""),
        std::string("mlp:1,,2"), std::string("mlp:1,2,"), std::string("mlp:1048577,2"),
        std::string("mlp:99999999999999999999,2"), std::string("MLP1,2"), std::string("mlp:1.5,2"),
        deep}) {
    auto s = ParseModelSpec(bad);
    ASSERT_FALSE(s.ok()) << bad;
    EXPECT_EQ(s.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(s.status().message(), HasSubstr("'" + bad + "'"));
    EXPECT_THAT(s.status().message(), HasSubstr("mlp:64,128,64"));
  }
  EXPECT_THAT(ParseModelSpec("mlp:0,3").status().message(), HasSubstr("'0'"));
  EXPECT_THAT(ParseModelSpec(deep).status().message(), HasSubstr("64 layers"));
}

TEST(ModelSpecTest, AcceptedSpecsHaveValidManifests) {
  auto s = ParseModelSpec("mlp:1048576,1048576");
  if (s.ok()) {
    EXPECT_TRUE(ValidateManifest(MlpManifest(*s)).ok());
  }
}

TEST(ModelSpecTest, MlpManifestNamesAndShapes) {
  v1::Manifest m = MlpManifest(*ParseModelSpec("mlp:4,8,2"));
  ASSERT_EQ(m.tensors_size(), 4);
  std::vector<std::string> got;
  for (const auto& t : m.tensors()) {
    EXPECT_EQ(t.dtype(), v1::F32) << t.name();
    got.push_back(absl::StrCat(t.name(), " ", ShapeString(t)));
  }
  EXPECT_THAT(got, ElementsAre("body.0.weight [8, 4]", "body.0.bias [8]", "body.1.weight [2, 8]",
                               "body.1.bias [2]"));
  EXPECT_TRUE(ValidateManifest(m).ok());
}

TEST(ModelSpecTest, InitMlpBodyMatchesTheManifest) {
  MlpSpec spec = *ParseModelSpec("mlp:4,8,2");
  std::vector<HostTensor> body = InitMlpBody(spec, 7);
  EXPECT_TRUE(CheckTensorSizes(body).ok());
  EXPECT_TRUE(CheckManifestMatches(MlpManifest(spec), ManifestOf(body)).ok());
}

TEST(ModelSpecTest, InitMlpBodyIsDeterministicPerSeed) {
  MlpSpec spec = *ParseModelSpec("mlp:16,32,8");
  std::vector<HostTensor> a = InitMlpBody(spec, 42), b = InitMlpBody(spec, 42);
  std::vector<HostTensor> c = InitMlpBody(spec, 43);
  ASSERT_EQ(a.size(), 4u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(a[i].data == b[i].data) << a[i].spec.name();
    EXPECT_FALSE(a[i].data == c[i].data) << a[i].spec.name();
  }
  // Tensors are not copies of each other.
  EXPECT_FALSE(a[1].data == a[3].data.substr(0, a[1].data.size()));
}

TEST(ModelSpecTest, InitMlpBodyIsUniformWithinPyTorchBounds) {
  MlpSpec spec = *ParseModelSpec("mlp:64,256,9");
  std::vector<HostTensor> body = InitMlpBody(spec, 1);
  for (size_t i = 0; i < body.size(); ++i) {
    double bound = 1.0 / std::sqrt(static_cast<double>(spec.dims[i / 2]));
    std::vector<float> v = Floats(body[i]);
    double lo = 0, hi = 0, sum = 0;
    for (float x : v) {
      ASSERT_TRUE(std::isfinite(x));
      ASSERT_LE(std::fabs(x), static_cast<float>(bound)) << body[i].spec.name();
      lo = std::min(lo, static_cast<double>(x));
      hi = std::max(hi, static_cast<double>(x));
      sum += x;
    }
    if (v.size() < 1000) continue;
    // Spread over the whole range, centred on zero.
    EXPECT_LT(lo, -0.95 * bound) << body[i].spec.name();
    EXPECT_GT(hi, 0.95 * bound) << body[i].spec.name();
    EXPECT_LT(std::fabs(sum / v.size()), 0.05 * bound) << body[i].spec.name();
  }
}

TEST(SplitMix64Test, MatchesThePublishedReference) {
  SplitMix64 rng(0);
  EXPECT_EQ(rng.Next(), 0xe220a8397b1dcdafULL);
  EXPECT_EQ(rng.Next(), 0x6e789e6aa1b965f4ULL);
  EXPECT_EQ(rng.Next(), 0x06c45d188009454fULL);
}

TEST(SplitMix64Test, UniformUsesTheTop53Bits) {
  SplitMix64 a(0);
  EXPECT_EQ(a.Uniform(), static_cast<double>(0xe220a8397b1dcdafULL >> 11) * 0x1.0p-53);
  SplitMix64 b(12345);
  for (int i = 0; i < 10000; ++i) {
    double u = b.Uniform();
    ASSERT_GE(u, 0.0);
    ASSERT_LT(u, 1.0);
  }
}

}  // namespace
}  // namespace coldfuse
