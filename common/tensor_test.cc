#include "common/tensor.h"

#include <cstdint>
#include <initializer_list>
#include <limits>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

v1::TensorSpec Spec(const std::string& name, DType dtype, std::initializer_list<int64_t> shape) {
  v1::TensorSpec s;
  s.set_name(name);
  s.set_dtype(dtype);
  for (int64_t d : shape) s.add_shape(d);
  return s;
}

v1::Manifest MakeManifest(std::initializer_list<v1::TensorSpec> specs) {
  v1::Manifest m;
  for (const auto& s : specs) *m.add_tensors() = s;
  return m;
}

v1::Manifest TwoTensors() {
  return MakeManifest({Spec("w", v1::F32, {2, 3}), Spec("b", v1::F16, {3})});
}

TEST(TensorTest, NumElementsAndByteLength) {
  EXPECT_EQ(*NumElements(Spec("s", v1::F32, {})), 1u);  // scalar
  EXPECT_EQ(*ByteLength(Spec("s", v1::F64, {})), 8u);
  EXPECT_EQ(*NumElements(Spec("t", v1::F32, {2, 3, 4})), 24u);
  EXPECT_EQ(*ByteLength(Spec("t", v1::F32, {2, 3, 4})), 96u);
  EXPECT_EQ(*ByteLength(Spec("t", v1::F16, {3, 5})), 30u);
  EXPECT_EQ(*ByteLength(Spec("t", v1::BF16, {7})), 14u);
  EXPECT_EQ(*NumElements(Spec("z", v1::F32, {0, 5})), 0u);
  EXPECT_EQ(*NumElements(Spec("z", v1::F32, {5, 0})), 0u);
  EXPECT_EQ(*ByteLength(Spec("z", v1::F64, {4, 0, 9})), 0u);
}

TEST(TensorTest, NegativeDimensionIsInvalidArgument) {
  for (const auto& shape : std::vector<std::vector<int64_t>>{{-1}, {3, -2}, {0, -1}, {-1, 0}}) {
    v1::TensorSpec s = Spec("neg", v1::F32, {});
    for (int64_t d : shape) s.add_shape(d);
    auto n = NumElements(s);
    ASSERT_FALSE(n.ok()) << ShapeString(s);
    EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(n.status().message(), HasSubstr("'neg'"));
    EXPECT_EQ(ByteLength(s).status().code(), absl::StatusCode::kInvalidArgument);
  }
}

TEST(TensorTest, OverflowingShapesAreInvalidArgumentNotWrapped) {
  const int64_t big = int64_t{1} << 32;
  const int64_t max = std::numeric_limits<int64_t>::max();
  // 2^96 elements would wrap to 0 in uint64 arithmetic.
  for (const auto& shape :
       std::vector<std::vector<int64_t>>{{big, big, big}, {max, 2}, {max, max}, {2, max}}) {
    v1::TensorSpec s = Spec("huge", v1::F32, {});
    for (int64_t d : shape) s.add_shape(d);
    auto n = NumElements(s);
    EXPECT_EQ(n.status().code(), absl::StatusCode::kInvalidArgument) << ShapeString(s);
    auto b = ByteLength(s);
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument) << ShapeString(s);
    EXPECT_THAT(b.status().message(), HasSubstr("'huge'"));
  }
}

TEST(TensorTest, ByteLengthLimitIsOneTebibyte) {
  auto at_limit = ByteLength(Spec("t", v1::F32, {int64_t{1} << 38}));
  ASSERT_TRUE(at_limit.ok()) << at_limit.status();
  EXPECT_EQ(*at_limit, kMaxTotalBytes);
  EXPECT_EQ(ByteLength(Spec("t", v1::F32, {(int64_t{1} << 38) + 1})).status().code(),
            absl::StatusCode::kInvalidArgument);
  // 2^40 elements are fine as a count but not as F32 bytes.
  EXPECT_TRUE(NumElements(Spec("t", v1::F32, {1 << 20, 1 << 20})).ok());
  EXPECT_EQ(ByteLength(Spec("t", v1::F32, {1 << 20, 1 << 20})).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, ByteLengthRejectsUnknownDType) {
  for (DType d : {v1::DTYPE_UNSPECIFIED, static_cast<DType>(42)}) {
    auto b = ByteLength(Spec("odd", d, {2}));
    ASSERT_FALSE(b.ok());
    EXPECT_EQ(b.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(b.status().message(), AllOf(HasSubstr("'odd'"), HasSubstr("dtype")));
  }
}

TEST(TensorTest, TotalBytesSumsAndChecksOverflow) {
  EXPECT_EQ(*TotalBytes(TwoTensors()), 24u + 6u);
  EXPECT_EQ(*TotalBytes(v1::Manifest()), 0u);
  const int64_t half_tib_f32 = int64_t{1} << 37;  // 2^39 bytes each
  EXPECT_EQ(*TotalBytes(MakeManifest(
                {Spec("a", v1::F32, {half_tib_f32}), Spec("b", v1::F32, {half_tib_f32})})),
            kMaxTotalBytes);
  auto over = TotalBytes(
      MakeManifest({Spec("a", v1::F32, {half_tib_f32}), Spec("b", v1::F32, {half_tib_f32 + 1})}));
  EXPECT_EQ(over.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(TensorTest, ValidateManifestAcceptsWellFormed) {
  EXPECT_TRUE(ValidateManifest(TwoTensors()).ok());
  // Zero-size tensors and scalars are fine; 16 dimensions are fine.
  v1::TensorSpec deep = Spec("deep", v1::F32, {});
  for (int i = 0; i < 16; ++i) deep.add_shape(1);
  EXPECT_TRUE(ValidateManifest(
                  MakeManifest({Spec("empty", v1::F32, {0, 3}), Spec("scalar", v1::F64, {}), deep}))
                  .ok());
  EXPECT_TRUE(ValidateManifest(MakeManifest({Spec(std::string(1024, 'n'), v1::F32, {1})})).ok());
}

void ExpectInvalid(const v1::Manifest& m, const std::string& substr) {
  absl::Status s = ValidateManifest(m);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr(substr));
}

TEST(TensorTest, ValidateManifestRejectsMalformed) {
  ExpectInvalid(v1::Manifest(), "no tensors");
  ExpectInvalid(MakeManifest({Spec("ok", v1::F32, {1}), Spec("", v1::F32, {1})}), "#1");
  ExpectInvalid(MakeManifest({Spec(std::string(1025, 'n'), v1::F32, {1})}), "#0");
  ExpectInvalid(
      MakeManifest({Spec("w", v1::F32, {1}), Spec("b", v1::F32, {1}), Spec("w", v1::F16, {2})}),
      "'w'");
  ExpectInvalid(MakeManifest({Spec("u", v1::DTYPE_UNSPECIFIED, {1})}), "'u'");
  ExpectInvalid(MakeManifest({Spec("a\nb", v1::F32, {1})}), "control");
  ExpectInvalid(MakeManifest({Spec(std::string("a\0b", 3), v1::F32, {1})}), "control");
  ExpectInvalid(MakeManifest({Spec("del\x7f", v1::F32, {1})}), "control");
  ExpectInvalid(MakeManifest({Spec("neg", v1::F32, {2, -3})}), "'neg'");
  v1::TensorSpec deep = Spec("deep", v1::F32, {});
  for (int i = 0; i < 17; ++i) deep.add_shape(1);
  ExpectInvalid(MakeManifest({deep}), "17");
  ExpectInvalid(MakeManifest({Spec("big", v1::F64, {int64_t{1} << 38})}), "'big'");
}

TEST(TensorTest, CheckManifestMatchesAcceptsEqual) {
  EXPECT_TRUE(CheckManifestMatches(TwoTensors(), TwoTensors()).ok());
}

void ExpectMismatch(const v1::Manifest& got, std::initializer_list<const char*> substrs) {
  absl::Status s = CheckManifestMatches(TwoTensors(), got);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  for (const char* sub : substrs) EXPECT_THAT(s.message(), HasSubstr(sub));
}

TEST(TensorTest, CheckManifestMatchesNamesTheOffendingTensor) {
  ExpectMismatch(MakeManifest({Spec("w", v1::F32, {2, 3}), Spec("bias", v1::F16, {3})}),
                 {"'bias'", "'b'"});
  ExpectMismatch(MakeManifest({Spec("b", v1::F16, {3}), Spec("w", v1::F32, {2, 3})}),
                 {"'b'", "'w'"});
  ExpectMismatch(MakeManifest({Spec("w", v1::F32, {2, 3}), Spec("b", v1::BF16, {3})}),
                 {"'b'", "BF16", "F16"});
  ExpectMismatch(MakeManifest({Spec("w", v1::F32, {3, 2}), Spec("b", v1::F16, {3})}),
                 {"'w'", "[3, 2]", "[2, 3]"});
  // Same element count, different rank.
  ExpectMismatch(MakeManifest({Spec("w", v1::F32, {6}), Spec("b", v1::F16, {3})}),
                 {"'w'", "[6]", "[2, 3]"});
  ExpectMismatch(MakeManifest({Spec("w", v1::F32, {2, 3, 1}), Spec("b", v1::F16, {3})}),
                 {"'w'", "[2, 3, 1]"});
  ExpectMismatch(MakeManifest({Spec("w", v1::F32, {2, 3})}), {"missing", "'b'"});
  ExpectMismatch(v1::Manifest(), {"missing", "'w'"});
  ExpectMismatch(MakeManifest({Spec("w", v1::F32, {2, 3}), Spec("b", v1::F16, {3}),
                               Spec("head", v1::F32, {3})}),
                 {"unexpected", "'head'"});
}

TEST(TensorTest, ShapeString) {
  EXPECT_EQ(ShapeString(Spec("t", v1::F32, {128, 64})), "[128, 64]");
  EXPECT_EQ(ShapeString(Spec("t", v1::F32, {})), "[]");
  EXPECT_EQ(ShapeString(Spec("t", v1::F32, {0})), "[0]");
}

TEST(TensorTest, ManifestOfAndCheckTensorSizes) {
  std::vector<HostTensor> tensors(2);
  tensors[0].spec = Spec("w", v1::F32, {2, 3});
  tensors[0].data.assign(24, 'x');
  tensors[1].spec = Spec("b", v1::F16, {3});
  tensors[1].data.assign(6, 'y');
  EXPECT_EQ(ManifestOf(tensors).SerializeAsString(), TwoTensors().SerializeAsString());
  EXPECT_TRUE(CheckTensorSizes(tensors).ok());
  EXPECT_TRUE(CheckTensorSizes({}).ok());

  tensors[1].data.push_back('z');
  absl::Status s = CheckTensorSizes(tensors);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), AllOf(HasSubstr("'b'"), HasSubstr("7"), HasSubstr("6")));

  tensors[1].data.clear();
  EXPECT_EQ(CheckTensorSizes(tensors).code(), absl::StatusCode::kInvalidArgument);
  tensors[1].data.assign(6, 'y');
  tensors[0].spec.set_dtype(v1::DTYPE_UNSPECIFIED);
  EXPECT_EQ(CheckTensorSizes(tensors).code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace coldfuse
