// The fixture and helpers shared by the round manager and contribution intake tests.
// Test-only.
#ifndef COLDFUSE_SERVER_ROUNDS_ROUNDS_TEST_FIXTURE_H_
#define COLDFUSE_SERVER_ROUNDS_ROUNDS_TEST_FIXTURE_H_

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <functional>
#include <limits>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/model_spec.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "server/rounds/contribution_intake.h"
#include "server/rounds/round_manager.h"
#include "server/rounds/test_util.h"
#include "server/storage/store.h"

namespace coldfuse::rounds::testing_fixture {

using testing_util::BytesOf;
using testing_util::ValuesOf;

inline constexpr char kSpec[] = "mlp:4,3,2";
inline constexpr int64_t kStartMs = 1'700'000'000'000;

inline std::vector<HostTensor> Body(const std::string& spec, uint64_t seed) {
  return InitMlpBody(*ParseModelSpec(spec), seed);
}

inline v1::StreamTrailer TrailerFor(const std::vector<HostTensor>& tensors) {
  v1::StreamTrailer t;
  t.set_sha256(TensorsSha256(tensors));
  uint64_t total = 0;
  for (const auto& x : tensors) total += x.data.size();
  t.set_total_bytes(total);
  return t;
}

inline absl::Status SendChunks(TensorUpload* upload, const std::vector<HostTensor>& tensors) {
  return ForEachWireChunk(tensors, [&](v1::TensorChunk& c) { return upload->Accept(c); });
}

// Streams `tensors` and a matching trailer into `upload`.
inline absl::StatusOr<UploadResult> Send(TensorUpload* upload,
                                         const std::vector<HostTensor>& tensors) {
  absl::Status st = SendChunks(upload, tensors);
  if (!st.ok()) return st;
  return upload->Finish(TrailerFor(tensors));
}

// Element-wise sum_k weights[k] * tensors[k], computed in double, stored as F32.
inline std::vector<std::vector<float>> ExpectedFusion(
    const std::vector<std::vector<HostTensor>>& contributions, const std::vector<double>& weights) {
  std::vector<std::vector<float>> out;
  for (size_t t = 0; t < contributions[0].size(); ++t) {
    std::vector<double> acc(contributions[0][t].data.size() / 4, 0.0);
    for (size_t k = 0; k < contributions.size(); ++k) {
      std::vector<float> v = ValuesOf<float>(contributions[k][t].data);
      for (size_t i = 0; i < v.size(); ++i) acc[i] += weights[k] * v[i];
    }
    out.emplace_back(acc.begin(), acc.end());
  }
  return out;
}

// `base` moved by scale x a fixed pattern that `salt` varies; every element changes.
// Deltas of the same salt are parallel, so their norms scale with `scale`.
inline std::vector<HostTensor> Shifted(const std::vector<HostTensor>& base, double scale,
                                       int salt) {
  std::vector<HostTensor> out = base;
  for (size_t t = 0; t < out.size(); ++t) {
    std::vector<float> v = ValuesOf<float>(out[t].data);
    for (size_t i = 0; i < v.size(); ++i) {
      int step = static_cast<int>((i * 7 + t * 13 + static_cast<size_t>(salt) * 5) % 11) - 5;
      if (step == 0) step = 6;
      v[i] = static_cast<float>(v[i] + scale * 0.01 * step);
    }
    out[t].data = BytesOf(v);
  }
  return out;
}

// L2 norm of (x - base) over all F32 tensors, in double.
inline double DeltaL2(const std::vector<HostTensor>& x, const std::vector<HostTensor>& base) {
  double sum = 0;
  for (size_t t = 0; t < x.size(); ++t) {
    std::vector<float> a = ValuesOf<float>(x[t].data);
    std::vector<float> b = ValuesOf<float>(base[t].data);
    for (size_t i = 0; i < a.size(); ++i) {
      const double d = static_cast<double>(a[i]) - static_cast<double>(b[i]);
      sum += d * d;
    }
  }
  return std::sqrt(sum);
}

inline double MedianOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// At every coordinate, reduce(the contributions' values there), stored as F32.
inline std::vector<std::vector<float>> ExpectedPerCoordinate(
    const std::vector<std::vector<HostTensor>>& contributions,
    const std::function<double(std::vector<double>)>& reduce) {
  std::vector<std::vector<float>> out;
  for (size_t t = 0; t < contributions[0].size(); ++t) {
    std::vector<std::vector<float>> values;
    for (const auto& c : contributions) values.push_back(ValuesOf<float>(c[t].data));
    std::vector<float> fused(values[0].size());
    for (size_t i = 0; i < fused.size(); ++i) {
      std::vector<double> at;
      for (const auto& v : values) at.push_back(v[i]);
      fused[i] = static_cast<float>(reduce(std::move(at)));
    }
    out.push_back(std::move(fused));
  }
  return out;
}

inline std::vector<std::string> Actions(const std::vector<v1::AuditRecord>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.action());
  return out;
}

// A store in a temp folder, a round manager and a contribution intake over it (as the
// server makes them), a fake clock, and helpers to init, contribute, close and read.
class RoundsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.min_contributions = 3;
    options_.round_timeout_ms = 0;
    OpenStore();
    CreateManager();
  }

  void OpenStore() {
    auto s = storage::Store::Open(dir_.path(), store_options_);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }

  // The round manager and the contribution intake over the stored state, as the
  // server makes them.
  void CreateManager() {
    intake_.reset();
    manager_.reset();
    auto state = store_->Load();
    ASSERT_TRUE(state.ok()) << state.status();
    auto m = RoundManager::Create(store_.get(), *state, options_, &clock_);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
    auto in =
        ContributionIntake::Create(store_.get(), manager_.get(), *state, intake_options_, &clock_);
    ASSERT_TRUE(in.ok()) << in.status();
    intake_ = std::move(*in);
  }

  // A server restart: manager and store closed, the same folder opened again.
  void Restart() {
    intake_.reset();
    manager_.reset();
    store_.reset();
    OpenStore();
    CreateManager();
  }

  void Reconfigure(uint32_t min_contributions, int64_t round_timeout_ms) {
    options_.min_contributions = min_contributions;
    options_.round_timeout_ms = round_timeout_ms;
    CreateManager();
  }

  v1::InitHeader InitHeaderFor(const std::string& spec, v1::FusionMethod method) {
    v1::InitHeader h;
    h.set_model_spec(spec);
    *h.mutable_manifest() = MlpManifest(*ParseModelSpec(spec));
    h.set_fusion_method(method);
    return h;
  }

  // Stores base v0 of `spec` (seed 1) and opens round 1.
  void Init(v1::FusionMethod method = v1::MEAN, const std::string& spec = kSpec) {
    spec_ = spec;
    auto up = manager_->BeginInit(InitHeaderFor(spec, method), "op");
    ASSERT_TRUE(up.ok()) << up.status();
    base0_ = Body(spec, 1);
    auto r = Send(up->get(), base0_);
    ASSERT_TRUE(r.ok()) << r.status();
  }

  // A header for the open round and current base.
  v1::ContributionHeader Header(const std::string& contributor, uint64_t num_examples = 10) {
    auto round = manager_->GetRound();
    EXPECT_TRUE(round.ok()) << round.status();
    v1::ContributionHeader h;
    h.set_round(round.ok() ? round->round() : 0);
    h.set_base_version(round.ok() ? round->base_version() : 0);
    h.set_contributor(contributor);
    h.set_task("sst2");
    h.set_num_examples(num_examples);
    *h.mutable_manifest() = MlpManifest(*ParseModelSpec(spec_));
    return h;
  }

  absl::StatusOr<UploadResult> Contribute(const v1::ContributionHeader& header,
                                          const std::vector<HostTensor>& tensors) {
    auto up = intake_->Begin(header);
    if (!up.ok()) return up.status();
    return Send(up->get(), tensors);
  }

  // Uploads Body(spec_, seed) from `contributor`; fails the test if it is refused.
  std::vector<HostTensor> MustContribute(const std::string& contributor, uint64_t seed,
                                         uint64_t num_examples = 10) {
    std::vector<HostTensor> t = Body(spec_, seed);
    auto r = Contribute(Header(contributor, num_examples), t);
    EXPECT_TRUE(r.ok()) << r.status();
    return t;
  }

  // Base `version` (current when unset) read back through OpenBase.
  std::vector<HostTensor> ReadBase(std::optional<uint64_t> version = std::nullopt,
                                   std::string* sha256 = nullptr) {
    auto reader = manager_->OpenBase(version);
    EXPECT_TRUE(reader.ok()) << reader.status();
    if (!reader.ok()) return {};
    std::vector<HostTensor> out;
    for (const auto& spec : (*reader)->manifest().tensors()) out.push_back({spec, ""});
    v1::TensorChunk chunk;
    for (;;) {
      auto more = (*reader)->Next(&chunk);
      EXPECT_TRUE(more.ok()) << more.status();
      if (!more.ok() || !*more) break;
      HostTensor& t = out.at(chunk.tensor_index());
      EXPECT_EQ(chunk.offset(), t.data.size());
      t.data += chunk.data();
    }
    if (sha256 != nullptr) *sha256 = (*reader)->Trailer().sha256();
    return out;
  }

  static void ExpectTensorsEqual(const std::vector<HostTensor>& got,
                                 const std::vector<std::vector<float>>& want) {
    ASSERT_EQ(got.size(), want.size());
    for (size_t t = 0; t < got.size(); ++t) {
      std::vector<float> g = ValuesOf<float>(got[t].data);
      ASSERT_EQ(g.size(), want[t].size()) << got[t].spec.name();
      for (size_t i = 0; i < g.size(); ++i) {
        // Fusion accumulates in F32: allow its rounding where terms cancel.
        EXPECT_NEAR(g[i], want[t][i], 1e-6 * std::max(1.0f, std::fabs(want[t][i])))
            << got[t].spec.name() << "[" << i << "]";
      }
    }
  }

  // Like Init, with fusion options.
  void InitWithOptions(v1::FusionMethod method, const v1::FusionOptions& fusion_options) {
    v1::InitHeader h = InitHeaderFor(kSpec, method);
    *h.mutable_fusion_options() = fusion_options;
    InitWithHeader(h);
  }

  // Like Init, with a header for kSpec made by the caller (InitHeaderFor, then options).
  void InitWithHeader(const v1::InitHeader& h) {
    spec_ = kSpec;
    auto up = manager_->BeginInit(h, "op");
    ASSERT_TRUE(up.ok()) << up.status();
    base0_ = Body(kSpec, 1);
    auto r = Send(up->get(), base0_);
    ASSERT_TRUE(r.ok()) << r.status();
  }

  // Uploads `tensors` from `contributor`; fails the test if it is refused.
  std::vector<HostTensor> MustContributeTensors(const std::string& contributor,
                                                std::vector<HostTensor> tensors,
                                                uint64_t num_examples = 10) {
    auto r = Contribute(Header(contributor, num_examples), tensors);
    EXPECT_TRUE(r.ok()) << contributor << ": " << r.status();
    return tensors;
  }

  // The record of `contributor`'s contribution in round `round`.
  v1::ContributionInfo ContributionOf(uint64_t round, const std::string& contributor) {
    auto info = manager_->GetRoundInfo(round);
    EXPECT_TRUE(info.ok()) << info.status();
    if (info.ok()) {
      for (const auto& c : info->contributions()) {
        if (c.contributor() == contributor) return c;
      }
    }
    ADD_FAILURE() << "no contribution from " << contributor << " in round " << round;
    return v1::ContributionInfo();
  }

  void MustClose() {
    auto r = manager_->CloseRound(std::nullopt, "operator", "op");
    ASSERT_TRUE(r.ok()) << r.status();
  }

  std::vector<v1::AuditRecord> AuditAll() {
    auto a = manager_->ReadAudit(0, 1000);
    EXPECT_TRUE(a.ok()) << a.status();
    return a.ok() ? *std::move(a) : std::vector<v1::AuditRecord>();
  }

  // Nothing crashes in most tests: no syncs keeps the suite fast. Tests of durability
  // turn them on (and may add faults), then Restart().
  static storage::StoreOptions UnsyncedStore() {
    storage::StoreOptions so;
    so.sync_commits = false;
    return so;
  }

  testing_util::TempDir dir_;
  storage::StoreOptions store_options_ = UnsyncedStore();
  FakeClock clock_{kStartMs};
  RoundOptions options_;
  IntakeOptions intake_options_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<RoundManager> manager_;
  std::unique_ptr<ContributionIntake> intake_;
  std::string spec_ = kSpec;
  std::vector<HostTensor> base0_;
};

}  // namespace coldfuse::rounds::testing_fixture

#endif  // COLDFUSE_SERVER_ROUNDS_ROUNDS_TEST_FIXTURE_H_
