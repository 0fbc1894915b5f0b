// FuseUpdates: Δ from three kinds of contribution (fresh FULL, fresh DELTA in
// another dtype, stale FULL down-weighted), then a Nesterov step with a stored momentum,
// over a tensor spanning two chunks and a BF16 one; every byte of the new base and state
// is checked against a computation done here element by element.
#include "server/fusion/update_fusion.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "server/fusion/coordinatewise.h"

namespace coldfuse::fusion {
namespace {

v1::Manifest TwoTensors(v1::DType first, v1::DType second) {
  v1::Manifest m;
  auto add = [&](const char* name, v1::DType d, int64_t n) {
    auto* s = m.add_tensors();
    s->set_name(name);
    s->set_dtype(d);
    s->add_shape(n);
  };
  add("a", first, 300000);
  add("b", second, 1000);
  return m;
}

std::vector<double> Pattern(int64_t n, double scale, double shift) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) v[i] = scale * std::sin(0.003 * i + shift);
  return v;
}

// A model of `manifest`'s shapes in `dtypes`, stored and served in chunks; `decoded` gets
// the stored values.
struct Stored {
  std::vector<std::string> bytes;
  std::vector<std::vector<double>> decoded;
  ChunkReader reader() const {
    return [b = bytes](size_t, uint32_t t, uint64_t c) -> absl::StatusOr<std::string> {
      if (t >= b.size() || c * kChunkBytes >= b[t].size()) return absl::NotFoundError("none");
      return b[t].substr(c * kChunkBytes, kChunkBytes);
    };
  }
};

Stored Store(const std::vector<v1::DType>& dtypes, double scale, double shift) {
  Stored s;
  const int64_t sizes[] = {300000, 1000};
  for (size_t t = 0; t < 2; ++t) {
    std::vector<double> v = Pattern(sizes[t], scale, shift + t);
    std::string bytes(v.size() * DTypeSize(dtypes[t]), '\0');
    EncodeFromDouble(dtypes[t], v.data(), v.size(), bytes.data());
    std::vector<double> back(v.size());
    DecodeToDouble(dtypes[t], bytes.data(), v.size(), back.data());
    s.bytes.push_back(std::move(bytes));
    s.decoded.push_back(std::move(back));
  }
  return s;
}

TEST(UpdateFusionTest, NesterovOverThreeKindsOfUpdateIsExactByteForByte) {
  const v1::Manifest manifest = TwoTensors(v1::F32, v1::BF16);
  const Stored base = Store({v1::F32, v1::BF16}, 1.0, 0.0);
  const Stored from = Store({v1::F32, v1::BF16}, 1.0, 0.2);       // a stale one's base
  const Stored full = Store({v1::F32, v1::BF16}, 1.0, 0.05);      // fresh FULL, base dtypes
  const Stored delta = Store({v1::F16, v1::F16}, 0.01, 0.9);      // fresh DELTA, F16
  const Stored stale = Store({v1::F32, v1::F32}, 1.0, 0.25);      // stale FULL, F32
  const Stored momentum = Store({v1::F32, v1::F32}, 0.001, 1.3);  // the base's state

  std::vector<ContributionSource> sources(3);
  sources[0].manifest = TwoTensors(v1::F32, v1::BF16);
  sources[0].read = full.reader();
  sources[1].manifest = TwoTensors(v1::F16, v1::F16);
  sources[1].delta = true;
  sources[1].read = delta.reader();
  sources[2].manifest = TwoTensors(v1::F32, v1::F32);
  sources[2].read = stale.reader();
  sources[2].read_trained_from = from.reader();
  sources[2].weight = 1.0 / std::sqrt(2.0);
  std::vector<std::unique_ptr<UpdateReader>> owned;
  std::vector<UpdateReader*> updates;
  for (const auto& s : sources) {
    owned.push_back(std::make_unique<UpdateReader>(manifest, s));
    updates.push_back(owned.back().get());
  }
  const std::vector<double> coefficients(3, 1.0 / 3.0);
  const OuterStep step{.kind = OuterKind::kNesterov, .lr = 0.7, .momentum = 0.9};

  std::map<std::pair<uint32_t, uint64_t>, std::string> written, state;
  StateIo io;
  io.read = momentum.reader();  // slot 0 only
  io.write = [&](uint32_t slot, uint32_t t, uint64_t c, absl::string_view d) {
    EXPECT_EQ(slot, 0u);
    state[{t, c}] = std::string(d);
    return absl::OkStatus();
  };
  auto result = FuseUpdates(
      manifest, updates, DeltaReducer{.coefficients = coefficients}, step, base.reader(),
      [&](uint32_t t, uint64_t c, absl::string_view d) {
        written[{t, c}] = std::string(d);
        return absl::OkStatus();
      },
      io);
  ASSERT_TRUE(result.ok()) << result.status();

  Sha256 base_sha, state_sha;
  for (uint32_t t = 0; t < 2; ++t) {
    const DType dtype = manifest.tensors(t).dtype();
    const size_t n = base.decoded[t].size();
    std::vector<double> want(n), m_want(n);
    for (size_t i = 0; i < n; ++i) {
      const double b = base.decoded[t][i];
      const double u0 = full.decoded[t][i] + -1.0 * b;
      const double u1 = delta.decoded[t][i];
      const double u2 = (stale.decoded[t][i] + -1.0 * from.decoded[t][i]) * sources[2].weight;
      double d = 0.0;
      d = d + coefficients[0] * u0;
      d = d + coefficients[1] * u1;
      d = d + coefficients[2] * u2;
      const double m = static_cast<float>(0.9 * momentum.decoded[t][i] + d);
      m_want[i] = m;
      want[i] = b + 0.7 * (d + 0.9 * m);
    }
    std::string want_bytes(n * DTypeSize(dtype), '\0'), m_bytes(n * 4, '\0');
    EncodeFromDouble(dtype, want.data(), n, want_bytes.data());
    EncodeFromDouble(v1::F32, m_want.data(), n, m_bytes.data());
    std::string got, got_m;
    for (uint64_t c = 0; written.count({t, c}); ++c) {
      got += written[{t, c}];
      got_m += state[{t, c}];
      base_sha.Update(written[{t, c}]);
      state_sha.Update(state[{t, c}]);
    }
    EXPECT_TRUE(got == want_bytes) << "base tensor " << t;
    EXPECT_TRUE(got_m == m_bytes) << "momentum of tensor " << t;
  }
  EXPECT_EQ(written.size(), 3u);  // two chunks of "a", one of "b"
  EXPECT_EQ(result->base_sha256, base_sha.Finish());
  EXPECT_EQ(result->state_written, state_sha.Finish());
}

// The median of three updates, with a memory bound that cuts every chunk into slices of
// 1000 elements and leaves one chunk in flight at a time, equals the unsliced result of
// several chunks in flight on the worker pool, and the median computed here; the PLAIN
// step writes enc(b + Δ).
TEST(UpdateFusionTest, TheCoordinatewiseMedianIsTheSameInSlices) {
  const v1::Manifest manifest = TwoTensors(v1::F32, v1::BF16);
  const Stored base = Store({v1::F32, v1::BF16}, 1.0, 0.0);
  std::vector<Stored> models;
  for (int k = 0; k < 3; ++k) models.push_back(Store({v1::F32, v1::F32}, 1.0 + 0.01 * k, 0.1 * k));
  std::vector<ContributionSource> sources(3);
  std::vector<std::unique_ptr<UpdateReader>> readers;
  std::vector<UpdateReader*> updates;
  for (int k = 0; k < 3; ++k) {
    sources[k].manifest = manifest;
    sources[k].manifest.mutable_tensors(1)->set_dtype(v1::F32);
    sources[k].read = models[k].reader();
    readers.push_back(std::make_unique<UpdateReader>(manifest, sources[k]));
    updates.push_back(readers.back().get());
  }
  auto run = [&](size_t memory_bytes) {
    std::string bytes;
    auto result = FuseUpdates(
        manifest, updates, DeltaReducer{.coordinatewise = MedianInPlace}, OuterStep(),
        base.reader(),
        [&](uint32_t, uint64_t, absl::string_view d) {
          bytes.append(d.data(), d.size());
          return absl::OkStatus();
        },
        {}, memory_bytes);
    EXPECT_TRUE(result.ok()) << result.status();
    return bytes;
  };
  const std::string whole = run(kUpdateFusionMemoryBytes);
  EXPECT_EQ(run(2 * 3 * 1000 * sizeof(double)), whole);
  std::string want;
  for (uint32_t t = 0; t < 2; ++t) {
    const DType dtype = manifest.tensors(t).dtype();
    const size_t n = base.decoded[t].size();
    std::vector<double> v(n);
    for (size_t i = 0; i < n; ++i) {
      const double b = base.decoded[t][i];
      double col[3];
      for (int k = 0; k < 3; ++k) col[k] = models[k].decoded[t][i] + -1.0 * b;
      std::sort(col, col + 3);
      v[i] = b + col[1];
    }
    std::string bytes(n * DTypeSize(dtype), '\0');
    EncodeFromDouble(dtype, v.data(), n, bytes.data());
    want += bytes;
  }
  EXPECT_TRUE(whole == want);
}

TEST(UpdateFusionTest, MismatchedInputsAreErrors) {
  const v1::Manifest manifest = TwoTensors(v1::F32, v1::BF16);
  const Stored base = Store({v1::F32, v1::BF16}, 1.0, 0.0);
  ContributionSource s;
  s.manifest = manifest;
  s.read = base.reader();
  UpdateReader r(manifest, s);
  auto write = [](uint32_t, uint64_t, absl::string_view) { return absl::OkStatus(); };
  EXPECT_EQ(FuseUpdates(manifest, {&r}, DeltaReducer{.coefficients = {0.5, 0.5}}, OuterStep(),
                        base.reader(), write, {})
                .status()
                .code(),
            absl::StatusCode::kInvalidArgument);
  StateIo short_state;
  short_state.read = [](size_t, uint32_t, uint64_t) -> absl::StatusOr<std::string> {
    return std::string(8, '\0');
  };
  const OuterStep sgd{.kind = OuterKind::kSgd, .lr = 1.0, .momentum = 0.5};
  EXPECT_EQ(FuseUpdates(manifest, {&r}, DeltaReducer{.coefficients = {1.0}}, sgd, base.reader(),
                        write, short_state)
                .status()
                .code(),
            absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace coldfuse::fusion
