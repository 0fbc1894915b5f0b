#include "server/rounds/round_manager.h"

#include <gtest/gtest.h>

#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "common/model_spec.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "server/rounds/test_util.h"

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
        EXPECT_FLOAT_EQ(g[i], want[t][i]) << got[t].spec.name() << "[" << i << "]";
      }
    }
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
      {"wrong dtype", [](v1::Manifest* m) { m->mutable_tensors(2)->set_dtype(v1::F64); }},
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
