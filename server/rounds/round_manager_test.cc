#include "server/rounds/round_manager.h"

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
#include "server/rounds/test_util.h"
#include "server/storage/store.h"

namespace coldfuse::rounds {
namespace {

using testing_util::BytesOf;
using testing_util::ValuesOf;

constexpr char kSpec[] = "mlp:4,3,2";
constexpr int64_t kStartMs = 1'700'000'000'000;

std::vector<HostTensor> Body(const std::string& spec, uint64_t seed) {
  return InitMlpBody(*ParseModelSpec(spec), seed);
}

v1::StreamTrailer TrailerFor(const std::vector<HostTensor>& tensors) {
  v1::StreamTrailer t;
  t.set_sha256(TensorsSha256(tensors));
  uint64_t total = 0;
  for (const auto& x : tensors) total += x.data.size();
  t.set_total_bytes(total);
  return t;
}

absl::Status SendChunks(TensorUpload* upload, const std::vector<HostTensor>& tensors) {
  return ForEachWireChunk(tensors, [&](v1::TensorChunk& c) { return upload->Accept(c); });
}

// Streams `tensors` and a matching trailer into `upload`.
absl::StatusOr<UploadResult> Send(TensorUpload* upload, const std::vector<HostTensor>& tensors) {
  absl::Status st = SendChunks(upload, tensors);
  if (!st.ok()) return st;
  return upload->Finish(TrailerFor(tensors));
}

// Element-wise sum_k weights[k] * tensors[k], computed in double, stored as F32.
std::vector<std::vector<float>> ExpectedFusion(
    const std::vector<std::vector<HostTensor>>& contributions,
    const std::vector<double>& weights) {
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
std::vector<HostTensor> Shifted(const std::vector<HostTensor>& base, double scale, int salt) {
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
double DeltaL2(const std::vector<HostTensor>& x, const std::vector<HostTensor>& base) {
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

double MedianOf(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 == 1 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

// At every coordinate, reduce(the contributions' values there), stored as F32.
std::vector<std::vector<float>> ExpectedPerCoordinate(
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

std::vector<std::string> Actions(const std::vector<v1::AuditRecord>& records) {
  std::vector<std::string> out;
  for (const auto& r : records) out.push_back(r.action());
  return out;
}

class RoundManagerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    options_.min_contributions = 3;
    options_.round_timeout_ms = 0;
    OpenStore();
    CreateManager();
  }

  void OpenStore() {
    storage::StoreOptions so;
    so.sync_commits = false;  // nothing here crashes; keeps the suite fast
    auto s = storage::Store::Open(dir_.path(), so);
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }

  void CreateManager() {
    manager_.reset();
    auto m = RoundManager::Create(store_.get(), options_, &clock_);
    ASSERT_TRUE(m.ok()) << m.status();
    manager_ = std::move(*m);
  }

  // A server restart: manager and store closed, the same folder opened again.
  void Restart() {
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
    auto up = manager_->BeginContribution(header);
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
    spec_ = kSpec;
    v1::InitHeader h = InitHeaderFor(kSpec, method);
    *h.mutable_fusion_options() = fusion_options;
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

  testing_util::TempDir dir_;
  FakeClock clock_{kStartMs};
  RoundOptions options_;
  std::unique_ptr<storage::Store> store_;
  std::unique_ptr<RoundManager> manager_;
  std::string spec_ = kSpec;
  std::vector<HostTensor> base0_;
};

// ------------------------------------------------------------------ init

TEST_F(RoundManagerTest, NothingWorksBeforeInit) {
  EXPECT_EQ(manager_->GetRound().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(manager_->GetStatus().initialized());
  v1::ContributionHeader h;
  h.set_round(1);
  h.set_contributor("alice");
  h.set_num_examples(1);
  EXPECT_EQ(manager_->BeginContribution(h).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->OpenBase(std::nullopt).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(manager_->CloseRound(std::nullopt, "operator", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);
  auto closed = manager_->MaybeClose();
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_FALSE(*closed);
}

TEST_F(RoundManagerTest, InitStoresBaseV0AndOpensRound1) {
  Init();
  auto round = manager_->GetRound();
  ASSERT_TRUE(round.ok()) << round.status();
  EXPECT_EQ(round->round(), 1u);
  EXPECT_EQ(round->base_version(), 0u);
  EXPECT_EQ(round->model_spec(), kSpec);
  EXPECT_EQ(round->fusion_method(), v1::MEAN);
  EXPECT_EQ(round->manifest().tensors_size(), 4);

  std::string sha;
  std::vector<HostTensor> base = ReadBase(std::nullopt, &sha);
  ASSERT_EQ(base.size(), base0_.size());
  for (size_t t = 0; t < base.size(); ++t) EXPECT_EQ(base[t].data, base0_[t].data);
  EXPECT_EQ(sha, TensorsSha256(base0_));
  EXPECT_EQ(manager_->GetStatus().base_sha256(), TensorsSha256(base0_));
}

TEST_F(RoundManagerTest, InitTwiceIsAlreadyExistsEvenAfterRestart) {
  Init();
  EXPECT_EQ(manager_->BeginInit(InitHeaderFor(kSpec, v1::MEAN), "op").status().code(),
            absl::StatusCode::kAlreadyExists);
  Restart();
  EXPECT_EQ(manager_->BeginInit(InitHeaderFor(kSpec, v1::MEAN), "op").status().code(),
            absl::StatusCode::kAlreadyExists);
}

TEST_F(RoundManagerTest, InitWithBadChecksumStoresNothingAndCanBeRetried) {
  {
    auto up = manager_->BeginInit(InitHeaderFor(kSpec, v1::MEAN), "op");
    ASSERT_TRUE(up.ok()) << up.status();
    std::vector<HostTensor> t = Body(kSpec, 1);
    ASSERT_TRUE(SendChunks(up->get(), t).ok());
    ASSERT_TRUE(store_->GetBaseChunk(0, 0, 0).ok());  // stored as it arrived
    v1::StreamTrailer bad = TrailerFor(t);
    bad.mutable_sha256()->at(0) ^= 1;
    EXPECT_EQ((*up)->Finish(bad).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(store_->GetBaseChunk(0, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetRound().status().code(), absl::StatusCode::kFailedPrecondition);
  Init();  // the operator fixes the upload and tries again
  EXPECT_TRUE(manager_->GetRound().ok());
}

TEST_F(RoundManagerTest, InitManifestMustMatchTheModelSpec) {
  v1::InitHeader h = InitHeaderFor(kSpec, v1::MEAN);
  h.mutable_manifest()->mutable_tensors(0)->set_shape(0, 5);
  EXPECT_EQ(manager_->BeginInit(h, "op").status().code(), absl::StatusCode::kInvalidArgument);
  h = InitHeaderFor(kSpec, v1::MEAN);
  h.clear_model_spec();
  EXPECT_EQ(manager_->BeginInit(h, "op").status().code(), absl::StatusCode::kInvalidArgument);
}

// ------------------------------------------------------------------ contributions

TEST_F(RoundManagerTest, ContributionIsListedInTheOpenRound) {
  Init();
  clock_.AdvanceMs(1234);
  std::vector<HostTensor> t = Body(kSpec, 7);
  auto r = Contribute(Header("alice", 250), t);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->round, 1u);
  EXPECT_EQ(r->base_version, 0u);
  EXPECT_EQ(r->sha256, TensorsSha256(t));
  EXPECT_EQ(r->bytes, TrailerFor(t).total_bytes());

  auto info = manager_->GetRoundInfo(1);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->state(), v1::OPEN);
  ASSERT_EQ(info->contributions_size(), 1);
  const v1::ContributionInfo& c = info->contributions(0);
  EXPECT_EQ(c.id(), r->id);
  EXPECT_EQ(c.contributor(), "alice");
  EXPECT_EQ(c.task(), "sst2");
  EXPECT_EQ(c.num_examples(), 250u);
  EXPECT_EQ(c.sha256(), TensorsSha256(t));
  EXPECT_EQ(c.received_unix_ms(), kStartMs + 1234);
}

TEST_F(RoundManagerTest, StaleBaseVersionIsFailedPrecondition) {
  Init();
  Reconfigure(/*min_contributions=*/1, /*round_timeout_ms=*/0);
  MustContribute("alice", 2);
  auto closed = manager_->MaybeClose();
  ASSERT_TRUE(closed.ok() && *closed) << closed.status();
  // Round 2 takes base v1; bob fine-tuned from v0.
  v1::ContributionHeader h = Header("bob");
  ASSERT_EQ(h.base_version(), 1u);
  h.set_base_version(0);
  auto r = Contribute(h, Body(kSpec, 3));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
}

TEST_F(RoundManagerTest, WrongRoundIsFailedPrecondition) {
  Init();
  v1::ContributionHeader h = Header("alice");
  h.set_round(2);
  EXPECT_EQ(Contribute(h, Body(kSpec, 2)).status().code(),
            absl::StatusCode::kFailedPrecondition);
  h.set_round(0);
  EXPECT_EQ(Contribute(h, Body(kSpec, 2)).status().code(),
            absl::StatusCode::kFailedPrecondition);
}

TEST_F(RoundManagerTest, HeaderManifestMismatchIsInvalidArgumentAndStoresNothing) {
  Init();
  struct Case {
    const char* what;
    std::function<void(v1::Manifest*)> edit;
  };
  std::vector<Case> cases = {
      {"unknown name", [](v1::Manifest* m) { m->mutable_tensors(1)->set_name("body.9.bias"); }},
      {"wrong shape", [](v1::Manifest* m) { m->mutable_tensors(0)->set_shape(1, 5); }},
      // A narrower or wider float is converted at fusion; a non-float dtype is not.
      {"non-float dtype",
       [](v1::Manifest* m) { m->mutable_tensors(2)->set_dtype(v1::DTYPE_UNSPECIFIED); }},
      {"missing tensor", [](v1::Manifest* m) { m->mutable_tensors()->RemoveLast(); }},
      {"extra tensor",
       [](v1::Manifest* m) {
         v1::TensorSpec* t = m->add_tensors();
         t->set_name("head.weight");
         t->set_dtype(v1::F32);
         t->add_shape(2);
       }},
  };
  for (const Case& c : cases) {
    v1::ContributionHeader h = Header("alice");
    c.edit(h.mutable_manifest());
    EXPECT_EQ(manager_->BeginContribution(h).status().code(),
              absl::StatusCode::kInvalidArgument)
        << c.what;
  }
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
  Restart();
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
  // alice was not marked as having contributed.
  MustContribute("alice", 2);
}

TEST_F(RoundManagerTest, DataNotMatchingTheManifestIsInvalidArgumentAndStoresNothing) {
  Init();
  std::vector<HostTensor> t = Body(kSpec, 2);
  {
    auto up = manager_->BeginContribution(Header("alice"));
    ASSERT_TRUE(up.ok()) << up.status();
    // Every tensor but the last.
    std::vector<HostTensor> partial(t.begin(), t.end() - 1);
    ASSERT_TRUE(SendChunks(up->get(), partial).ok());
    // Data is stored as it arrives (this is the first upload: id 1)...
    ASSERT_TRUE(store_->GetContributionChunk(1, 1, 0, 0).ok());
    EXPECT_EQ((*up)->Finish(TrailerFor(partial)).status().code(),
              absl::StatusCode::kInvalidArgument);
  }
  // ...and gone once the rejected upload is dropped.
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 0).status().code(),
            absl::StatusCode::kNotFound);
  {
    auto up = manager_->BeginContribution(Header("alice"));
    ASSERT_TRUE(up.ok()) << up.status();
    // A tensor's bytes beyond its manifest shape.
    v1::TensorChunk c;
    c.set_tensor_index(0);
    c.set_offset(0);
    c.set_data(std::string(t[0].data.size() + 4, '\0'));
    EXPECT_EQ((*up)->Accept(c).code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
  Restart();
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 0).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(RoundManagerTest, BadChecksumIsInvalidArgumentAndStoresNothing) {
  Init();
  std::vector<HostTensor> t = Body(kSpec, 2);
  {
    auto up = manager_->BeginContribution(Header("alice"));
    ASSERT_TRUE(up.ok()) << up.status();
    ASSERT_TRUE(SendChunks(up->get(), t).ok());
    ASSERT_TRUE(store_->GetContributionChunk(1, 1, 3, 0).ok());
    v1::StreamTrailer bad = TrailerFor(t);
    bad.mutable_sha256()->at(31) ^= 0x80;
    auto r = (*up)->Finish(bad);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  }
  for (uint32_t tensor = 0; tensor < 4; ++tensor) {
    EXPECT_EQ(store_->GetContributionChunk(1, 1, tensor, 0).status().code(),
              absl::StatusCode::kNotFound);
  }
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
  Restart();
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
}

TEST_F(RoundManagerTest, SameContributorTwiceInARoundIsAlreadyExists) {
  Init();
  MustContribute("alice", 2);
  EXPECT_EQ(Contribute(Header("alice"), Body(kSpec, 3)).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 1);
}

TEST_F(RoundManagerTest, SameContributorRacingTwoUploadsGetsOneAccepted) {
  Init();
  auto first = manager_->BeginContribution(Header("alice"));
  auto second = manager_->BeginContribution(Header("alice"));
  ASSERT_TRUE(first.ok() && second.ok());
  std::vector<HostTensor> t = Body(kSpec, 2);
  EXPECT_TRUE(Send(first->get(), t).ok());
  EXPECT_EQ(Send(second->get(), t).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 1);
}

TEST_F(RoundManagerTest, BadContributorNameOrZeroExamplesIsInvalidArgument) {
  Init();
  for (const char* name : {"", "bad name", "semi;colon", "slash/name"}) {
    EXPECT_EQ(manager_->BeginContribution(Header(name)).status().code(),
              absl::StatusCode::kInvalidArgument)
        << "'" << name << "'";
  }
  EXPECT_EQ(manager_->BeginContribution(Header(std::string(129, 'a'))).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(manager_->BeginContribution(Header("alice", 0)).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(manager_->BeginContribution(Header("alice.o-k_1@lab")).ok());
}

// ------------------------------------------------------------------ round policy

TEST_F(RoundManagerTest, QuorumClosesTheRound) {
  Init();  // min_contributions = 3
  MustContribute("alice", 2);
  MustContribute("bob", 3);
  auto closed = manager_->MaybeClose();
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_FALSE(*closed);
  EXPECT_EQ(manager_->GetRound()->round(), 1u);

  MustContribute("carol", 4);
  closed = manager_->MaybeClose();
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_TRUE(*closed);
  auto round = manager_->GetRound();
  EXPECT_EQ(round->round(), 2u);
  EXPECT_EQ(round->base_version(), 1u);
  auto info = manager_->GetRoundInfo(1);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->close_reason(), "quorum");
  EXPECT_EQ(info->state(), v1::CLOSED);
  // Nothing more to close.
  closed = manager_->MaybeClose();
  ASSERT_TRUE(closed.ok());
  EXPECT_FALSE(*closed);
}

TEST_F(RoundManagerTest, TimeoutClosesARoundBelowQuorum) {
  Init();
  Reconfigure(/*min_contributions=*/3, /*round_timeout_ms=*/60'000);
  MustContribute("alice", 2);
  clock_.AdvanceMs(59'999);
  auto closed = manager_->MaybeClose();
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_FALSE(*closed);
  clock_.AdvanceMs(1);
  closed = manager_->MaybeClose();
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_TRUE(*closed);
  auto info = manager_->GetRoundInfo(1);
  ASSERT_TRUE(info.ok());
  EXPECT_EQ(info->close_reason(), "timeout");
  EXPECT_EQ(info->closed_unix_ms(), kStartMs + 60'000);
  // Round 2's clock starts when it opens.
  auto r2 = manager_->GetRoundInfo(2);
  ASSERT_TRUE(r2.ok());
  EXPECT_EQ(r2->opened_unix_ms(), kStartMs + 60'000);
}

TEST_F(RoundManagerTest, EmptyRoundNeverClosesOnTimeout) {
  Init();
  Reconfigure(/*min_contributions=*/3, /*round_timeout_ms=*/60'000);
  clock_.AdvanceMs(10 * 60'000);
  auto closed = manager_->MaybeClose();
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_FALSE(*closed);
  EXPECT_EQ(manager_->GetRound()->round(), 1u);
  EXPECT_EQ(manager_->GetStatus().base_version(), 0u);
}

TEST_F(RoundManagerTest, OperatorCloseNeedsContributionsAndTheOpenRound) {
  Init();
  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  MustContribute("alice", 2);
  r = manager_->CloseRound(2, "operator", "op");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_EQ(manager_->GetRound()->round(), 1u);

  r = manager_->CloseRound(1, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->new_base_version(), 1u);
  EXPECT_EQ(r->closed_round().number(), 1u);
  EXPECT_EQ(r->closed_round().close_reason(), "operator");
  // A retried close of round 1 does not close round 2.
  MustContribute("bob", 3);
  r = manager_->CloseRound(1, "operator", "op");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_EQ(manager_->GetRound()->round(), 2u);
}

// ------------------------------------------------------------------ fusion

TEST_F(RoundManagerTest, ClosedRoundFusesToTheMeanOfItsContributions) {
  Init(v1::MEAN);
  // Example counts differ, but MEAN ignores them.
  std::vector<std::vector<HostTensor>> c = {MustContribute("alice", 2, 10),
                                            MustContribute("bob", 3, 20),
                                            MustContribute("carol", 4, 70)};
  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();

  std::string sha;
  std::vector<HostTensor> base1 = ReadBase(std::nullopt, &sha);
  ExpectTensorsEqual(base1, ExpectedFusion(c, {1.0 / 3, 1.0 / 3, 1.0 / 3}));
  EXPECT_EQ(sha, TensorsSha256(base1));
  EXPECT_EQ(manager_->GetStatus().base_sha256(), sha);
  EXPECT_EQ(manager_->GetStatus().base_version(), 1u);

  // The old base stays readable and unchanged; there is no v2 yet.
  std::string old_sha;
  std::vector<HostTensor> old = ReadBase(0, &old_sha);
  EXPECT_EQ(old_sha, TensorsSha256(base0_));
  ASSERT_EQ(old.size(), base0_.size());
  for (size_t t = 0; t < old.size(); ++t) EXPECT_EQ(old[t].data, base0_[t].data);
  EXPECT_EQ(manager_->OpenBase(2).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(RoundManagerTest, ExampleWeightedModelFusesToTheWeightedMean) {
  Init(v1::EXAMPLE_WEIGHTED_MEAN);
  EXPECT_EQ(manager_->GetRound()->fusion_method(), v1::EXAMPLE_WEIGHTED_MEAN);
  std::vector<std::vector<HostTensor>> c = {MustContribute("alice", 2, 100),
                                            MustContribute("bob", 3, 100),
                                            MustContribute("carol", 4, 200)};
  ASSERT_TRUE(manager_->CloseRound(std::nullopt, "operator", "op").ok());
  ExpectTensorsEqual(ReadBase(), ExpectedFusion(c, {0.25, 0.25, 0.5}));
}

TEST_F(RoundManagerTest, MultiChunkTensorIsFusedThroughStorage) {
  // body.0.weight is 500 x 600 F32 = 1.2 MB: two storage chunks.
  Init(v1::MEAN, "mlp:600,500");
  std::vector<std::vector<HostTensor>> c = {MustContribute("alice", 2),
                                            MustContribute("bob", 3)};
  ASSERT_TRUE(manager_->CloseRound(std::nullopt, "operator", "op").ok());
  std::vector<HostTensor> base1 = ReadBase();
  ASSERT_EQ(base1.size(), 2u);
  ASSERT_EQ(base1[0].data.size(), 500u * 600 * 4);
  ExpectTensorsEqual(base1, ExpectedFusion(c, {0.5, 0.5}));
}

TEST_F(RoundManagerTest, RestartKeepsBaseRoundsAndContributions) {
  Init();
  MustContribute("alice", 2);
  MustContribute("bob", 3);
  auto closed = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(closed.ok()) << closed.status();
  auto third = Contribute(Header("carol"), Body(kSpec, 4));  // to round 2
  ASSERT_TRUE(third.ok()) << third.status();

  std::string sha_before;
  std::vector<HostTensor> base_before = ReadBase(std::nullopt, &sha_before);
  std::vector<v1::RoundInfo> rounds_before = manager_->ListRounds();
  Restart();

  v1::ServerStatus status = manager_->GetStatus();
  EXPECT_TRUE(status.initialized());
  EXPECT_EQ(status.base_version(), 1u);
  EXPECT_EQ(status.base_sha256(), sha_before);
  EXPECT_EQ(status.open_round().number(), 2u);
  EXPECT_EQ(manager_->GetRound()->round(), 2u);
  std::string sha_after;
  std::vector<HostTensor> base_after = ReadBase(std::nullopt, &sha_after);
  EXPECT_EQ(sha_after, sha_before);
  ASSERT_EQ(base_after.size(), base_before.size());
  for (size_t t = 0; t < base_after.size(); ++t) EXPECT_EQ(base_after[t].data, base_before[t].data);

  std::vector<v1::RoundInfo> rounds_after = manager_->ListRounds();
  ASSERT_EQ(rounds_after.size(), rounds_before.size());
  for (size_t i = 0; i < rounds_after.size(); ++i) {
    EXPECT_EQ(rounds_after[i].SerializeAsString(), rounds_before[i].SerializeAsString())
        << "round " << i + 1;
  }
  // carol may not contribute twice to round 2; a new contributor gets a fresh id.
  EXPECT_EQ(Contribute(Header("carol"), Body(kSpec, 5)).status().code(),
            absl::StatusCode::kAlreadyExists);
  auto fourth = Contribute(Header("dave"), Body(kSpec, 6));
  ASSERT_TRUE(fourth.ok()) << fourth.status();
  EXPECT_GT(fourth->id, third->id);
}

TEST_F(RoundManagerTest, UploadInFlightWhenTheRoundClosesIsRefusedAndStoresNothing) {
  Init();
  std::vector<HostTensor> a = MustContribute("alice", 2);
  auto up = manager_->BeginContribution(Header("bob"));
  ASSERT_TRUE(up.ok()) << up.status();
  std::vector<HostTensor> b = Body(kSpec, 3);
  ASSERT_TRUE(SendChunks(up->get(), b).ok());
  const uint64_t bob_id = 2;  // ids are handed out in order
  ASSERT_TRUE(store_->GetContributionChunk(1, bob_id, 0, 0).ok());

  ASSERT_TRUE(manager_->CloseRound(std::nullopt, "operator", "op").ok());
  auto r = (*up)->Finish(TrailerFor(b));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  up->reset();

  EXPECT_EQ(store_->GetContributionChunk(1, bob_id, 0, 0).status().code(),
            absl::StatusCode::kNotFound);
  auto info = manager_->GetRoundInfo(1);
  ASSERT_TRUE(info.ok());
  ASSERT_EQ(info->contributions_size(), 1);
  EXPECT_EQ(info->contributions(0).contributor(), "alice");
  EXPECT_EQ(manager_->GetRoundInfo(2)->contributions_size(), 0);
  // The base is alice's alone.
  ExpectTensorsEqual(ReadBase(), ExpectedFusion({a}, {1.0}));
}

// ------------------------------------------------------------------ dashboards

TEST_F(RoundManagerTest, ListenersSeeEveryContributionAndClose) {
  Init();
  struct Seen {
    int contributions;
    uint64_t base_version;
  };
  std::vector<Seen> seen;
  int id = manager_->AddListener([&] {
    v1::ServerStatus s = manager_->GetStatus();
    seen.push_back({s.open_round().contributions_size(), s.base_version()});
  });
  const uint64_t seq0 = manager_->GetStatus().change_seq();
  MustContribute("alice", 2);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0].contributions, 1);
  EXPECT_EQ(seen[0].base_version, 0u);
  const uint64_t seq1 = manager_->GetStatus().change_seq();
  EXPECT_GT(seq1, seq0);

  ASSERT_TRUE(manager_->CloseRound(std::nullopt, "operator", "op").ok());
  ASSERT_EQ(seen.size(), 2u);
  EXPECT_EQ(seen[1].contributions, 0);  // round 2 just opened
  EXPECT_EQ(seen[1].base_version, 1u);
  EXPECT_GT(manager_->GetStatus().change_seq(), seq1);

  // Refused requests change nothing and notify no one; a removed listener hears nothing.
  EXPECT_FALSE(manager_->CloseRound(std::nullopt, "operator", "op").ok());
  EXPECT_EQ(seen.size(), 2u);
  manager_->RemoveListener(id);
  MustContribute("bob", 3);
  EXPECT_EQ(seen.size(), 2u);
}

TEST_F(RoundManagerTest, ListRoundsAndGetRoundInfoDescribeHistory) {
  Init();
  MustContribute("alice", 2, 5);
  MustContribute("bob", 3, 7);
  clock_.AdvanceMs(500);
  ASSERT_TRUE(manager_->CloseRound(std::nullopt, "operator", "op").ok());

  std::vector<v1::RoundInfo> rounds = manager_->ListRounds();
  ASSERT_EQ(rounds.size(), 2u);
  const v1::RoundInfo& r1 = rounds[0];
  EXPECT_EQ(r1.number(), 1u);
  EXPECT_EQ(r1.base_version(), 0u);
  EXPECT_EQ(r1.state(), v1::CLOSED);
  EXPECT_EQ(r1.result_base_version(), 1u);
  EXPECT_EQ(r1.close_reason(), "operator");
  EXPECT_EQ(r1.opened_unix_ms(), kStartMs);
  EXPECT_EQ(r1.closed_unix_ms(), kStartMs + 500);
  ASSERT_EQ(r1.contributions_size(), 2);
  EXPECT_EQ(r1.contributions(0).contributor(), "alice");
  EXPECT_EQ(r1.contributions(0).num_examples(), 5u);
  EXPECT_EQ(r1.contributions(1).contributor(), "bob");
  EXPECT_EQ(r1.contributions(1).num_examples(), 7u);
  const v1::RoundInfo& r2 = rounds[1];
  EXPECT_EQ(r2.number(), 2u);
  EXPECT_EQ(r2.base_version(), 1u);
  EXPECT_EQ(r2.state(), v1::OPEN);
  EXPECT_EQ(r2.contributions_size(), 0);

  auto info = manager_->GetRoundInfo(1);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->SerializeAsString(), r1.SerializeAsString());
  EXPECT_EQ(manager_->GetRoundInfo(99).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetRoundInfo(0).status().code(), absl::StatusCode::kNotFound);
}

// The one test of the policy thread: quorum reached by an upload closes the round on its
// own. Bounded wait on a condition, no sleeps.
TEST_F(RoundManagerTest, PolicyThreadClosesOnQuorum) {
  Init();
  Reconfigure(/*min_contributions=*/1, /*round_timeout_ms=*/0);
  std::mutex mu;
  std::condition_variable cv;
  bool fused = false;
  manager_->AddListener([&] {
    const bool now_fused = manager_->GetStatus().base_version() == 1;
    std::lock_guard<std::mutex> l(mu);
    fused = fused || now_fused;
    cv.notify_all();
  });
  manager_->Start();
  MustContribute("alice", 2);
  {
    std::unique_lock<std::mutex> l(mu);
    EXPECT_TRUE(cv.wait_for(l, std::chrono::seconds(20), [&] { return fused; }));
  }
  EXPECT_EQ(manager_->GetRound()->round(), 2u);
  EXPECT_EQ(manager_->GetRoundInfo(1)->close_reason(), "quorum");
  manager_.reset();  // stops the thread before the listener's captures go away
}

// ------------------------------------------------------------------ screening uploads

TEST_F(RoundManagerTest, NonFiniteContributionIsInvalidArgumentAndStoresNothing) {
  Init();
  struct Case {
    const char* contributor;
    float value;
  };
  const Case cases[] = {{"alice", std::nanf("")},
                        {"bob", std::numeric_limits<float>::infinity()},
                        {"carol", -std::numeric_limits<float>::infinity()}};
  for (const Case& c : cases) {
    SCOPED_TRACE(c.contributor);
    // The bad value is in the last tensor, so the first three were stored before it.
    std::vector<HostTensor> t = Body(kSpec, 2);
    std::vector<float> last = ValuesOf<float>(t[3].data);
    last[1] = c.value;
    t[3].data = BytesOf(last);
    {
      auto up = manager_->BeginContribution(Header(c.contributor));
      ASSERT_TRUE(up.ok()) << up.status();
      absl::Status st = SendChunks(up->get(), t);
      if (st.ok()) st = (*up)->Finish(TrailerFor(t)).status();
      EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
      EXPECT_TRUE(absl::StrContains(st.message(), "NaN or infinity")) << st;
      EXPECT_TRUE(absl::StrContains(st.message(), t[3].spec.name())) << st;
      EXPECT_TRUE(absl::StrContains(st.message(), "element 1")) << st;
    }
    EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
  }
  // No chunk of any of the three uploads (ids 1..3) is left.
  for (uint64_t id = 1; id <= 3; ++id) {
    for (uint32_t tensor = 0; tensor < 4; ++tensor) {
      EXPECT_EQ(store_->GetContributionChunk(1, id, tensor, 0).status().code(),
                absl::StatusCode::kNotFound)
          << "id " << id << " tensor " << tensor;
    }
  }
  std::vector<v1::AuditRecord> audit = AuditAll();
  int rejected = 0;
  for (const auto& r : audit) {
    if (r.action() != "contribution_rejected") continue;
    ++rejected;
    EXPECT_TRUE(absl::StrContains(r.detail(), "INVALID_ARGUMENT")) << r.detail();
  }
  EXPECT_EQ(rejected, 3);
  // The contributors may send a finite update.
  MustContribute("alice", 3);
  Restart();
  ASSERT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 1);
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions(0).contributor(), "alice");
}

TEST_F(RoundManagerTest, NonFiniteValueInALaterStorageChunkNamesItsElement) {
  // body.0.weight is 500 x 600 F32: two storage chunks.
  Init(v1::MEAN, "mlp:600,500");
  std::vector<HostTensor> t = Body(spec_, 2);
  std::vector<float> w = ValuesOf<float>(t[0].data);
  const size_t bad = kChunkBytes / sizeof(float) + 5;
  w[bad] = std::nanf("");
  t[0].data = BytesOf(w);
  auto r = Contribute(Header("alice"), t);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), absl::StrCat("element ", bad)))
      << r.status();
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
}

TEST_F(RoundManagerTest, DeltaNormIsTheL2NormOfTheUpdate) {
  Init();
  std::vector<HostTensor> a = MustContribute("alice", 2);
  std::vector<HostTensor> b = MustContributeTensors("bob", Shifted(base0_, 3.0, 1));
  std::vector<HostTensor> c = MustContributeTensors("carol", base0_);  // no change
  const double want_a = DeltaL2(a, base0_);
  const double want_b = DeltaL2(b, base0_);
  ASSERT_GT(want_a, 0);
  EXPECT_NEAR(ContributionOf(1, "alice").delta_norm(), want_a, 1e-12 * want_a);
  EXPECT_NEAR(ContributionOf(1, "bob").delta_norm(), want_b, 1e-12 * want_b);
  EXPECT_EQ(ContributionOf(1, "carol").delta_norm(), 0.0);
  Restart();
  EXPECT_NEAR(ContributionOf(1, "alice").delta_norm(), want_a, 1e-12 * want_a);
}

TEST_F(RoundManagerTest, OutlierIsQuarantinedAndLeftOutOfTheFusion) {
  Init();  // outlier_factor 3 (the default)
  ASSERT_EQ(options_.outlier_factor, 3.0);
  std::vector<std::vector<HostTensor>> honest = {
      MustContributeTensors("alice", Shifted(base0_, 1.0, 1)),
      MustContributeTensors("bob", Shifted(base0_, 1.5, 2)),
      MustContributeTensors("carol", Shifted(base0_, 2.0, 3))};
  std::vector<HostTensor> big = MustContributeTensors("mallory", Shifted(base0_, 100.0, 1));
  const uint64_t mallory_id = ContributionOf(1, "mallory").id();

  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& c : r->closed_round().contributions()) {
    SCOPED_TRACE(c.contributor());
    if (c.contributor() == "mallory") {
      EXPECT_EQ(c.state(), v1::QUARANTINED);
      EXPECT_TRUE(absl::StrContains(c.quarantine_reason(), "median")) << c.quarantine_reason();
    } else {
      EXPECT_EQ(c.state(), v1::ACCEPTED);
      EXPECT_TRUE(c.quarantine_reason().empty());
    }
  }
  ExpectTensorsEqual(ReadBase(), ExpectedFusion(honest, {1.0 / 3, 1.0 / 3, 1.0 / 3}));

  std::vector<v1::AuditRecord> audit = AuditAll();
  int quarantined = 0;
  for (const auto& rec : audit) {
    if (rec.action() != "contribution_quarantined") continue;
    ++quarantined;
    EXPECT_TRUE(absl::StrContains(rec.detail(), "mallory")) << rec.detail();
  }
  EXPECT_EQ(quarantined, 1);

  // Quarantined, not deleted; and it stays quarantined after a restart.
  auto kept = store_->GetContributionChunk(1, mallory_id, 0, 0);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(*kept, big[0].data);
  Restart();
  v1::ContributionInfo m = ContributionOf(1, "mallory");
  EXPECT_EQ(m.state(), v1::QUARANTINED);
  EXPECT_TRUE(absl::StrContains(m.quarantine_reason(), "median"));
  EXPECT_EQ(ContributionOf(1, "alice").state(), v1::ACCEPTED);
}

TEST_F(RoundManagerTest, OutlierFactorZeroFusesEverything) {
  options_.outlier_factor = 0;
  CreateManager();
  Init();
  std::vector<std::vector<HostTensor>> all = {
      MustContributeTensors("alice", Shifted(base0_, 1.0, 1)),
      MustContributeTensors("bob", Shifted(base0_, 1.5, 2)),
      MustContributeTensors("carol", Shifted(base0_, 2.0, 3)),
      MustContributeTensors("mallory", Shifted(base0_, 100.0, 1))};
  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& c : r->closed_round().contributions()) {
    EXPECT_EQ(c.state(), v1::ACCEPTED) << c.contributor();
  }
  ExpectTensorsEqual(ReadBase(), ExpectedFusion(all, {0.25, 0.25, 0.25, 0.25}));
  for (const auto& rec : AuditAll()) EXPECT_NE(rec.action(), "contribution_quarantined");
}

TEST_F(RoundManagerTest, FewerThanThreeContributionsAreNeverScreened) {
  // With two contributions the median is their mean, so factor 1 would flag the larger
  // one; only the three-contribution rule keeps it.
  options_.outlier_factor = 1.0;
  CreateManager();
  Init();
  std::vector<std::vector<HostTensor>> all = {
      MustContributeTensors("alice", Shifted(base0_, 1.0, 1)),
      MustContributeTensors("mallory", Shifted(base0_, 100.0, 1))};
  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& c : r->closed_round().contributions()) {
    EXPECT_EQ(c.state(), v1::ACCEPTED) << c.contributor();
  }
  ExpectTensorsEqual(ReadBase(), ExpectedFusion(all, {0.5, 0.5}));
}

// ------------------------------------------------------------------ robust fusion

TEST_F(RoundManagerTest, CoordinateMedianModelFusesToTheMedian) {
  Init(v1::COORDINATE_MEDIAN);
  std::vector<std::vector<HostTensor>> c = {MustContribute("alice", 2, 10),
                                            MustContribute("bob", 3, 20),
                                            MustContribute("carol", 4, 70)};
  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& x : r->closed_round().contributions()) EXPECT_EQ(x.state(), v1::ACCEPTED);
  ExpectTensorsEqual(ReadBase(), ExpectedPerCoordinate(c, MedianOf));
}

TEST_F(RoundManagerTest, TrimmedMeanModelDropsTheExtremesAtEachCoordinate) {
  v1::FusionOptions fo;
  fo.set_trim_fraction(0.25);
  InitWithOptions(v1::TRIMMED_MEAN, fo);
  EXPECT_EQ(manager_->GetStatus().model().fusion_options().trim_fraction(), 0.25);
  std::vector<std::vector<HostTensor>> c = {
      MustContribute("alice", 2), MustContribute("bob", 3), MustContribute("carol", 4),
      MustContribute("dave", 5)};
  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& x : r->closed_round().contributions()) EXPECT_EQ(x.state(), v1::ACCEPTED);
  // floor(0.25 * 4) = 1 value dropped at each end; the middle two averaged.
  ExpectTensorsEqual(ReadBase(), ExpectedPerCoordinate(c, [](std::vector<double> v) {
                       std::sort(v.begin(), v.end());
                       return (v[1] + v[2]) / 2;
                     }));
}

TEST_F(RoundManagerTest, NormClippedMeanModelClipsLargeUpdatesToTheMedianNorm) {
  v1::FusionOptions fo;
  fo.set_clip_factor(1.5);
  InitWithOptions(v1::NORM_CLIPPED_MEAN, fo);
  // Parallel deltas of norm n, 2n and 5n: the clip norm is 1.5 x 2n = 3n, so only the
  // last is scaled (by 3/5); 5n stays under the outlier limit 3 x 2n.
  const std::vector<double> examples = {10, 20, 30};
  std::vector<std::vector<HostTensor>> c = {
      MustContributeTensors("alice", Shifted(base0_, 1.0, 1), 10),
      MustContributeTensors("bob", Shifted(base0_, 2.0, 1), 20),
      MustContributeTensors("carol", Shifted(base0_, 5.0, 1), 30)};
  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();
  for (const auto& x : r->closed_round().contributions()) EXPECT_EQ(x.state(), v1::ACCEPTED);

  std::vector<double> norms;
  for (const auto& x : c) norms.push_back(DeltaL2(x, base0_));
  const double clip = 1.5 * MedianOf(norms);
  std::vector<double> coef;
  for (size_t k = 0; k < c.size(); ++k) {
    coef.push_back(examples[k] / 60.0 * std::min(1.0, clip / norms[k]));
  }
  ASSERT_LT(coef[2], 0.5 * 0.99);  // carol really was clipped
  std::vector<std::vector<float>> want;
  for (size_t t = 0; t < base0_.size(); ++t) {
    std::vector<float> b = ValuesOf<float>(base0_[t].data);
    std::vector<float> out(b.size());
    for (size_t i = 0; i < b.size(); ++i) {
      double acc = b[i];
      for (size_t k = 0; k < c.size(); ++k) {
        acc += coef[k] * (static_cast<double>(ValuesOf<float>(c[k][t].data)[i]) - b[i]);
      }
      out[i] = static_cast<float>(acc);
    }
    want.push_back(std::move(out));
  }
  ExpectTensorsEqual(ReadBase(), want);
}

TEST_F(RoundManagerTest, NormClippedMeanClosesWhenTheMedianUpdateIsZero) {
  Init(v1::NORM_CLIPPED_MEAN);
  MustContributeTensors("alice", base0_);
  MustContributeTensors("bob", base0_);
  MustContributeTensors("carol", Shifted(base0_, 1.0, 1));
  auto r = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(r.ok()) << r.status();
  ExpectTensorsEqual(ReadBase(), ExpectedFusion({base0_}, {1.0}));
}

// ------------------------------------------------------------------ rollback

TEST_F(RoundManagerTest, RollbackReopensFromTheGoodBaseAndSurvivesARestart) {
  Init();
  MustContribute("alice", 2);
  MustClose();  // v1
  std::string sha1;
  const std::vector<HostTensor> v1_data = ReadBase(1, &sha1);
  MustContribute("bob", 3);
  MustClose();  // v2
  const std::vector<HostTensor> v2_data = ReadBase(2);
  const std::vector<HostTensor> carol = MustContribute("carol", 4);  // round 3, on v2
  const uint64_t carol_id = ContributionOf(3, "carol").id();
  clock_.AdvanceMs(1000);

  auto rb = manager_->RollbackBase(1, "v2 diverged", "op");
  ASSERT_TRUE(rb.ok()) << rb.status();
  EXPECT_EQ(rb->opened_round().number(), 4u);
  EXPECT_EQ(rb->opened_round().base_version(), 1u);
  EXPECT_EQ(rb->opened_round().state(), v1::OPEN);
  ASSERT_EQ(rb->bad_base_versions_size(), 1);
  EXPECT_EQ(rb->bad_base_versions(0), 2u);

  auto check_rolled_back = [&] {
    v1::ServerStatus s = manager_->GetStatus();
    EXPECT_EQ(s.base_version(), 1u);
    EXPECT_EQ(s.base_sha256(), sha1);
    ASSERT_EQ(s.bad_base_versions_size(), 1);
    EXPECT_EQ(s.bad_base_versions(0), 2u);
    EXPECT_EQ(s.open_round().number(), 4u);
    EXPECT_EQ(s.open_round().base_version(), 1u);
    EXPECT_EQ(manager_->GetRound()->round(), 4u);
    EXPECT_EQ(manager_->GetRound()->base_version(), 1u);
    auto r3 = manager_->GetRoundInfo(3);
    ASSERT_TRUE(r3.ok()) << r3.status();
    EXPECT_EQ(r3->state(), v1::CLOSED);
    EXPECT_EQ(r3->close_reason(), "rollback");
    EXPECT_EQ(r3->closed_unix_ms(), kStartMs + 1000);
    ASSERT_EQ(r3->contributions_size(), 1);
    EXPECT_EQ(r3->contributions(0).contributor(), "carol");
    EXPECT_EQ(r3->contributions(0).id(), carol_id);
    for (uint32_t t = 0; t < carol.size(); ++t) {
      auto chunk = store_->GetContributionChunk(3, carol_id, t, 0);
      ASSERT_TRUE(chunk.ok()) << chunk.status();
      EXPECT_EQ(*chunk, carol[t].data);
    }
    std::string sha;
    std::vector<HostTensor> current = ReadBase(std::nullopt, &sha);
    EXPECT_EQ(sha, sha1);
    ASSERT_EQ(current.size(), v1_data.size());
    for (size_t t = 0; t < current.size(); ++t) EXPECT_EQ(current[t].data, v1_data[t].data);
  };
  check_rolled_back();
  std::vector<v1::AuditRecord> audit = AuditAll();
  ASSERT_FALSE(audit.empty());
  EXPECT_EQ(audit.back().action(), "rollback");
  EXPECT_EQ(audit.back().actor(), "op");
  EXPECT_TRUE(absl::StrContains(audit.back().detail(), "v2 diverged")) << audit.back().detail();

  Restart();
  check_rolled_back();

  // The next fusion writes v3 (v2 keeps its bytes), from round 4 on v1.
  const std::vector<HostTensor> dave = MustContribute("dave", 5);
  const double want_norm = DeltaL2(dave, v1_data);
  EXPECT_NEAR(ContributionOf(4, "dave").delta_norm(), want_norm, 1e-12 * want_norm);
  auto closed = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_EQ(closed->new_base_version(), 3u);
  EXPECT_EQ(closed->closed_round().number(), 4u);
  EXPECT_EQ(closed->closed_round().base_version(), 1u);
  ExpectTensorsEqual(ReadBase(), ExpectedFusion({dave}, {1.0}));
  audit = AuditAll();
  ASSERT_FALSE(audit.empty());
  EXPECT_EQ(audit.back().action(), "base_created");
  EXPECT_TRUE(absl::StrContains(audit.back().detail(), "v3 from v1")) << audit.back().detail();
  std::vector<HostTensor> v2_after = ReadBase(2);
  ASSERT_EQ(v2_after.size(), v2_data.size());
  for (size_t t = 0; t < v2_after.size(); ++t) EXPECT_EQ(v2_after[t].data, v2_data[t].data);

  Restart();
  v1::ServerStatus s = manager_->GetStatus();
  EXPECT_EQ(s.base_version(), 3u);
  ASSERT_EQ(s.bad_base_versions_size(), 1);
  EXPECT_EQ(s.bad_base_versions(0), 2u);
  EXPECT_EQ(s.open_round().number(), 5u);
  EXPECT_EQ(s.open_round().base_version(), 3u);
  ExpectTensorsEqual(ReadBase(), ExpectedFusion({dave}, {1.0}));
  MustContribute("erin", 6);
  auto next = manager_->CloseRound(std::nullopt, "operator", "op");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->new_base_version(), 4u);
}

TEST_F(RoundManagerTest, RollbackToTheCurrentOrABadBaseIsFailedPrecondition) {
  Init();
  EXPECT_EQ(manager_->RollbackBase(0, "", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);
  MustContribute("alice", 2);
  MustClose();  // v1
  MustContribute("bob", 3);
  MustClose();  // v2
  EXPECT_EQ(manager_->RollbackBase(2, "", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);  // current
  EXPECT_EQ(manager_->RollbackBase(7, "", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);  // does not exist
  ASSERT_TRUE(manager_->RollbackBase(1, "", "op").ok());
  EXPECT_EQ(manager_->RollbackBase(1, "", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);  // current again
  EXPECT_EQ(manager_->RollbackBase(2, "", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);  // bad
  MustContribute("carol", 4);
  MustClose();  // v3 from v1
  EXPECT_EQ(manager_->RollbackBase(2, "", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);  // bad, though older than v3
  const size_t rounds = manager_->ListRounds().size();
  v1::ServerStatus s = manager_->GetStatus();
  EXPECT_EQ(s.base_version(), 3u);
  ASSERT_EQ(s.bad_base_versions_size(), 1);
  EXPECT_EQ(s.bad_base_versions(0), 2u);
  // Refusals changed nothing.
  Restart();
  EXPECT_EQ(manager_->ListRounds().size(), rounds);
  EXPECT_EQ(manager_->GetStatus().base_version(), 3u);
  // Rolling back over v3 marks it bad too; v2 is not listed twice.
  auto rb = manager_->RollbackBase(1, "", "op");
  ASSERT_TRUE(rb.ok()) << rb.status();
  ASSERT_EQ(rb->bad_base_versions_size(), 2);
  EXPECT_EQ(rb->bad_base_versions(0), 2u);
  EXPECT_EQ(rb->bad_base_versions(1), 3u);
}

// ------------------------------------------------------------------ quotas

TEST_F(RoundManagerTest, UploadsPerRoundQuotaIsResourceExhausted) {
  Init();
  options_.max_uploads_per_round = 2;
  CreateManager();
  for (int i = 0; i < 2; ++i) {
    auto up = manager_->BeginContribution(Header("alice"));
    ASSERT_TRUE(up.ok()) << up.status();
  }  // both dropped (the client went away)
  auto third = manager_->BeginContribution(Header("alice"));
  EXPECT_EQ(third.status().code(), absl::StatusCode::kResourceExhausted) << third.status();
  // Rejected uploads count too: two failed uploads use up carol's quota.
  for (int i = 0; i < 2; ++i) {
    std::vector<HostTensor> t = Body(kSpec, 3);
    const v1::StreamTrailer trailer = TrailerFor(t);
    t[0].data[0] ^= 1;  // corrupted on the way
    auto up = manager_->BeginContribution(Header("carol"));
    ASSERT_TRUE(up.ok()) << up.status();
    ASSERT_TRUE(SendChunks(up->get(), t).ok());
    EXPECT_EQ((*up)->Finish(trailer).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(Contribute(Header("carol"), Body(kSpec, 3)).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Others are unaffected.
  MustContribute("bob", 4);
  EXPECT_EQ(manager_->BeginContribution(Header("alice")).status().code(),
            absl::StatusCode::kResourceExhausted);
  // The quota is per round.
  MustClose();
  MustContribute("alice", 5);
}

TEST_F(RoundManagerTest, DailyBytesQuotaIsResourceExhaustedUntilTheNextDay) {
  Init();
  const uint64_t model_bytes = manager_->GetStatus().model().total_bytes();
  ASSERT_GT(model_bytes, 0u);
  options_.max_bytes_per_day = 2 * model_bytes;  // exactly two uploads a day
  CreateManager();
  MustContribute("alice", 2);
  MustClose();
  MustContribute("alice", 3);
  MustClose();
  auto r = Contribute(Header("alice"), Body(kSpec, 4));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kResourceExhausted) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "daily limit")) << r.status();
  MustContribute("bob", 5);  // others are unaffected
  clock_.AdvanceMs(24 * 3600 * 1000LL);
  MustContribute("alice", 4);
  EXPECT_EQ(manager_->GetRoundInfo(3)->contributions_size(), 2);
}

// ------------------------------------------------------------------ audit log

TEST_F(RoundManagerTest, AuditLogRecordsChangesInOrderAndContinuesAfterARestart) {
  Init();
  MustContribute("alice", 2);
  MustContribute("bob", 3);
  MustClose();
  std::vector<v1::AuditRecord> audit = AuditAll();
  EXPECT_EQ(Actions(audit),
            std::vector<std::string>({"init", "base_created", "contribution_accepted",
                                      "contribution_accepted", "round_closed", "base_created"}));
  ASSERT_EQ(audit.size(), 6u);
  const std::vector<std::string> actors = {"op", "op", "alice", "bob", "op", "op"};
  for (size_t i = 0; i < audit.size(); ++i) {
    EXPECT_EQ(audit[i].actor(), actors[i]) << i;
    if (i > 0) EXPECT_GT(audit[i].seq(), audit[i - 1].seq()) << i;
  }
  EXPECT_TRUE(absl::StrContains(audit[5].detail(), "v1 from v0")) << audit[5].detail();

  auto later = manager_->ReadAudit(audit[2].seq(), 100);
  ASSERT_TRUE(later.ok()) << later.status();
  ASSERT_EQ(later->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ((*later)[i].SerializeAsString(), audit[i + 3].SerializeAsString()) << i;
  }
  auto none = manager_->ReadAudit(audit.back().seq(), 100);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  auto two = manager_->ReadAudit(0, 2);
  ASSERT_TRUE(two.ok());
  EXPECT_EQ(two->size(), 2u);

  Restart();
  MustContribute("carol", 4);
  std::vector<v1::AuditRecord> after = AuditAll();
  ASSERT_EQ(after.size(), 7u);
  for (size_t i = 0; i < audit.size(); ++i) {
    EXPECT_EQ(after[i].SerializeAsString(), audit[i].SerializeAsString()) << i;
  }
  EXPECT_GT(after[6].seq(), audit.back().seq());
  EXPECT_EQ(after[6].action(), "contribution_accepted");
  EXPECT_EQ(after[6].actor(), "carol");
}

TEST(RoundManagerCreateTest, ZeroMinContributionsIsInvalid) {
  testing_util::TempDir dir;
  auto store = storage::Store::Open(dir.path(), storage::StoreOptions());
  ASSERT_TRUE(store.ok()) << store.status();
  FakeClock clock(kStartMs);
  RoundOptions options;
  options.min_contributions = 0;
  EXPECT_EQ(RoundManager::Create(store->get(), options, &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace coldfuse::rounds
