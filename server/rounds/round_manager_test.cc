#include "server/rounds/round_manager.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <limits>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/rounds/rounds_test_fixture.h"

namespace coldfuse::rounds {
namespace {

using namespace testing_fixture;  // NOLINT: the shared test helpers

class RoundManagerTest : public RoundsTest {};

// ------------------------------------------------------------------ init

TEST_F(RoundManagerTest, NothingWorksBeforeInit) {
  EXPECT_EQ(manager_->GetRound().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_FALSE(manager_->GetStatus().initialized());
  v1::ContributionHeader h;
  h.set_round(1);
  h.set_contributor("alice");
  h.set_num_examples(1);
  EXPECT_EQ(intake_->Begin(h).status().code(), absl::StatusCode::kFailedPrecondition);
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

TEST_F(RoundManagerTest, InitWithANonFiniteBaseIsInvalidArgumentAndStoresNothing) {
  // Every contribution trained from such a base would be refused: refuse the base.
  for (float bad : {std::nanf(""), std::numeric_limits<float>::infinity()}) {
    auto up = manager_->BeginInit(InitHeaderFor(kSpec, v1::MEAN), "op");
    ASSERT_TRUE(up.ok()) << up.status();
    std::vector<HostTensor> t = Body(kSpec, 1);
    std::vector<float> w = ValuesOf<float>(t[2].data);
    w[3] = bad;
    t[2].data = BytesOf(w);
    auto r = Send(up->get(), t);
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
    EXPECT_TRUE(absl::StrContains(r.status().message(), absl::StrCat("'", t[2].spec.name(),
                                                                     "' holds a NaN or "
                                                                     "infinity at element 3")))
        << r.status();
  }
  EXPECT_EQ(store_->GetBaseChunk(0, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetRound().status().code(), absl::StatusCode::kFailedPrecondition);
  Init();  // a finite base is then accepted
  EXPECT_TRUE(manager_->GetRound().ok());
}

TEST_F(RoundManagerTest, OverlongModelSpecIsInvalidArgument) {
  // The spec is echoed in every GetRound and status reply.
  v1::InitHeader h = InitHeaderFor(kSpec, v1::MEAN);
  h.set_model_spec("checkpoint:" + std::string(1 << 20, 'x'));
  auto r = manager_->BeginInit(h, "op");
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "at most 256")) << r.status();
  EXPECT_LT(r.status().message().size(), 400u);
  h.set_model_spec("checkpoint:" + std::string(200, 'x'));
  EXPECT_TRUE(manager_->BeginInit(h, "op").ok());
}

TEST_F(RoundManagerTest, NonFiniteOrOutOfRangeFusionOptionsAreRefusedAtInit) {
  // A stored NaN option would make every close fail, and options cannot change later.
  const double nan = std::nan("");
  const double inf = std::numeric_limits<double>::infinity();
  struct Case {
    v1::FusionMethod method;
    double trim, clip;
  };
  for (const Case& c : {Case{v1::TRIMMED_MEAN, nan, 0}, Case{v1::NORM_CLIPPED_MEAN, 0, nan},
                        Case{v1::NORM_CLIPPED_MEAN, 0, inf}, Case{v1::TRIMMED_MEAN, 0.5, 0},
                        Case{v1::TRIMMED_MEAN, -0.1, 0}, Case{v1::NORM_CLIPPED_MEAN, 0, -1}}) {
    v1::InitHeader h = InitHeaderFor(kSpec, c.method);
    h.mutable_fusion_options()->set_trim_fraction(c.trim);
    h.mutable_fusion_options()->set_clip_factor(c.clip);
    auto r = manager_->BeginInit(h, "op");
    EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument)
        << "trim " << c.trim << " clip " << c.clip;
  }
  EXPECT_FALSE(manager_->GetStatus().initialized());
}

TEST_F(RoundManagerTest, ChangeSeqNeverGoesBackAcrossRestarts) {
  // A dashboard that de-duplicates on change_seq after reconnecting must not drop
  // updates: every change raises it, and a restart never lowers it (a value seen again
  // after a restart describes the same state).
  std::vector<std::pair<uint64_t, bool>> seen;  // (change_seq, the state changed before)
  auto look = [&](bool changed) { seen.push_back({manager_->GetStatus().change_seq(), changed}); };
  look(false);
  Init();
  look(true);
  Restart();
  look(false);
  MustContribute("alice", 2);
  look(true);
  Restart();
  look(false);
  MustContribute("bob", 3);
  look(true);
  MustClose();
  look(true);
  Restart();
  look(false);
  Restart();
  look(false);
  ASSERT_GT(seen.back().first, 1u);
  for (size_t i = 1; i < seen.size(); ++i) {
    if (seen[i].second) {
      EXPECT_GT(seen[i].first, seen[i - 1].first) << "step " << i;
    } else {
      EXPECT_GE(seen[i].first, seen[i - 1].first) << "step " << i;
    }
  }
}

TEST_F(RoundManagerTest, InitManifestMustMatchTheModelSpec) {
  v1::InitHeader h = InitHeaderFor(kSpec, v1::MEAN);
  h.mutable_manifest()->mutable_tensors(0)->set_shape(0, 5);
  EXPECT_EQ(manager_->BeginInit(h, "op").status().code(), absl::StatusCode::kInvalidArgument);
  h = InitHeaderFor(kSpec, v1::MEAN);
  h.clear_model_spec();
  EXPECT_EQ(manager_->BeginInit(h, "op").status().code(), absl::StatusCode::kInvalidArgument);
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
  std::vector<std::vector<HostTensor>> c = {
      MustContribute("alice", 2, 10), MustContribute("bob", 3, 20), MustContribute("carol", 4, 70)};
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
  std::vector<std::vector<HostTensor>> c = {MustContribute("alice", 2), MustContribute("bob", 3)};
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

// A listener that blocks (the intake deletes stale sessions with synced writes) does not
// hold up the removal of another one, such as a dashboard's watch going away; removing
// the blocked listener itself waits until its call returns.
TEST_F(RoundManagerTest, ASlowListenerDoesNotHoldUpRemovingAnother) {
  Init();
  std::mutex mu;
  std::condition_variable cv;
  bool entered = false, release = false, returned = false;
  int slow = manager_->AddListener([&] {
    std::unique_lock<std::mutex> l(mu);
    entered = true;
    cv.notify_all();
    cv.wait(l, [&] { return release; });
    returned = true;
  });
  int quick_calls = 0;
  int quick = manager_->AddListener([&] { ++quick_calls; });

  std::thread contributor([&] { MustContribute("alice", 2); });
  {
    std::unique_lock<std::mutex> l(mu);
    ASSERT_TRUE(cv.wait_for(l, std::chrono::seconds(20), [&] { return entered; }));
  }
  manager_->RemoveListener(quick);  // returns while the slow listener is still inside
  std::thread remover([&] { manager_->RemoveListener(slow); });
  {
    std::lock_guard<std::mutex> l(mu);
    EXPECT_FALSE(returned);
    release = true;
    cv.notify_all();
  }
  remover.join();  // returned only after the slow call did
  {
    std::lock_guard<std::mutex> l(mu);
    EXPECT_TRUE(returned);
  }
  contributor.join();
  EXPECT_EQ(quick_calls, 0);  // removed before the notification reached it
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
  intake_.reset();
  manager_.reset();  // stops the thread before the listener's captures go away
}

// ------------------------------------------------------------------ screening at close

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
  std::vector<std::vector<HostTensor>> c = {
      MustContribute("alice", 2, 10), MustContribute("bob", 3, 20), MustContribute("carol", 4, 70)};
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
  std::vector<std::vector<HostTensor>> c = {MustContribute("alice", 2), MustContribute("bob", 3),
                                            MustContribute("carol", 4), MustContribute("dave", 5)};
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
    if (i > 0) {
      EXPECT_GT(audit[i].seq(), audit[i - 1].seq()) << i;
    }
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
  auto state = (*store)->Load();
  ASSERT_TRUE(state.ok()) << state.status();
  EXPECT_EQ(RoundManager::Create(store->get(), *state, options, &clock).status().code(),
            absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace coldfuse::rounds
