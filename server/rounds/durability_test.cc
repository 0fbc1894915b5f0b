// Durability and lock discipline with faults injected below RocksDB
// (storage/fault_injection.h), syncs on:
// - nothing that reads state, and no admission of another upload, waits on a commit's
//   fsync;
// - every commit point (init, contribution, round close, rollback, prune, pin, token
//   changes) that
//   fails at the disk returns an error, and after a restart the state is exactly the
//   state before the operation or after it, never between; the server then works.
#include <gtest/gtest.h>

#include <chrono>
#include <functional>
#include <future>
#include <memory>

#include "absl/strings/str_cat.h"
#include "server/auth/token_registry.h"
#include "server/rounds/rounds_test_fixture.h"
#include "server/storage/fault_injection.h"

namespace coldfuse::rounds {
namespace {

using namespace testing_fixture;  // NOLINT: the shared test helpers
using Op = storage::FaultInjection::Op;

class DurabilityTest : public RoundsTest {
 protected:
  void SetUp() override {
    store_options_.sync_commits = true;
    store_options_.faults = faults_;
    RoundsTest::SetUp();
  }

  // A crash and restart after a failed write: the faults heal, the folder reopens.
  void RestartHealed() {
    faults_->Heal();
    Restart();
  }

  // Whether contribution `who` is in `round`, and if so that its record and its bytes
  // are exactly `tensors`.
  bool HasIntactContribution(uint64_t round, const std::string& who,
                             const std::vector<HostTensor>& tensors) {
    auto info = manager_->GetRoundInfo(round);
    EXPECT_TRUE(info.ok()) << info.status();
    if (!info.ok()) return false;
    for (const auto& c : info->contributions()) {
      if (c.contributor() != who) continue;
      EXPECT_EQ(c.sha256(), TensorsSha256(tensors));
      for (uint32_t t = 0; t < tensors.size(); ++t) {
        auto chunk = store_->GetContributionChunk(round, c.id(), t, 0);
        EXPECT_TRUE(chunk.ok()) << chunk.status();
        if (chunk.ok()) {
          EXPECT_EQ(*chunk, tensors[t].data.substr(0, chunk->size()));
        }
      }
      return true;
    }
    return false;
  }

  // Runs `op` on another thread, holding each of its write-ahead-log syncs until the
  // state readers have answered on this thread (within 30 s each); returns its result.
  template <typename Result>
  Result WhileEachSyncIsHeld(std::function<Result()> op, int* held) {
    faults_->HoldSyncs(/*wal_only=*/true);
    auto done = std::async(std::launch::async, std::move(op));
    while (done.wait_for(std::chrono::milliseconds(0)) != std::future_status::ready) {
      if (!faults_->WaitForHeldSync(absl::Milliseconds(50))) continue;
      ++*held;
      auto readers = std::async(std::launch::async, [&] {
        (void)manager_->GetStatus();
        (void)manager_->GetRound();
        (void)manager_->ListRounds();
      });
      const bool answered = readers.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
      faults_->ReleaseOneSync();
      EXPECT_TRUE(answered) << "a state reader waited on a commit's fsync";
      if (!answered) break;
    }
    faults_->ReleaseSyncs();
    return done.get();
  }

  std::shared_ptr<storage::FaultInjection> faults_ = std::make_shared<storage::FaultInjection>();
};

class DurabilityFaultTest : public DurabilityTest, public ::testing::WithParamInterface<Op> {};

TEST_F(DurabilityTest, ReadersAndAdmissionNeverWaitOnACommitsFsync) {
  Init();
  const auto alice = Body(spec_, 2);
  const auto alice_header = Header("alice");
  const auto bob = Body(spec_, 3);
  // bob has streamed his upload; he commits after alice.
  auto bob_upload = intake_->Begin(Header("bob"));
  ASSERT_TRUE(bob_upload.ok()) << bob_upload.status();
  ASSERT_TRUE(SendChunks(bob_upload->get(), bob).ok());
  int held = 0;
  auto a = WhileEachSyncIsHeld<absl::StatusOr<UploadResult>>(
      [&] {
        auto r = Contribute(alice_header, alice);
        return r;
      },
      &held);
  ASSERT_TRUE(a.ok()) << a.status();
  EXPECT_GE(held, 1);  // at least the commit's own synced write was held

  faults_->HoldSyncs(/*wal_only=*/true);
  auto commit =
      std::async(std::launch::async, [&] { return (*bob_upload)->Finish(TrailerFor(bob)); });
  if (!faults_->WaitForHeldSync(absl::Seconds(30))) {
    faults_->ReleaseSyncs();
    auto r = commit.get();
    FAIL() << "bob's commit never synced: " << (r.ok() ? std::string("ok") : r.status().ToString());
  }
  // A third upload is admitted while bob's commit waits. (Storing its chunks may wait:
  // RocksDB puts every write in one queue behind the synced one. That is why the server
  // stores chunks on its executor, never on a gRPC callback thread.)
  auto carol = std::async(std::launch::async, [&] { return intake_->Begin(Header("carol")); });
  const bool admitted = carol.wait_for(std::chrono::seconds(30)) == std::future_status::ready;
  faults_->ReleaseSyncs();
  ASSERT_TRUE(admitted) << "admitting an upload waited on bob's fsync";
  ASSERT_TRUE(commit.get().ok());
  auto carol_upload = carol.get();
  ASSERT_TRUE(carol_upload.ok()) << carol_upload.status();
  ASSERT_TRUE(Send(carol_upload->get(), Body(spec_, 4)).ok());

  // A round close's synced writes hold no reader either.
  held = 0;
  auto closed = WhileEachSyncIsHeld<absl::StatusOr<v1::CloseRoundResponse>>(
      [&] { return manager_->CloseRound(std::nullopt, "operator", "op"); }, &held);
  ASSERT_TRUE(closed.ok()) << closed.status();
  EXPECT_GE(held, 1);
  EXPECT_EQ(manager_->GetStatus().base_version(), 1u);
}

TEST_P(DurabilityFaultTest, AFailedInitLeavesNoModelOrTheWholeBase) {
  faults_->FailFrom(GetParam());
  {
    auto up = manager_->BeginInit(InitHeaderFor(kSpec, v1::MEAN), "op");
    if (up.ok()) {
      EXPECT_FALSE(Send(up->get(), Body(kSpec, 1)).ok());
    }
  }  // the upload goes here (its abort step runs)
  RestartHealed();
  if (manager_->GetStatus().initialized()) {
    EXPECT_EQ(manager_->GetStatus().base_sha256(), TensorsSha256(Body(kSpec, 1)));
    EXPECT_EQ(ReadBase()[0].data, Body(kSpec, 1)[0].data);
  } else {
    Init();  // before: the operator can init again
  }
  MustContribute("alice", 2);
}

TEST_P(DurabilityFaultTest, AFailedContributionCommitIsWhollyThereOrWhollyGone) {
  Init();
  const auto alice = Body(spec_, 2);
  faults_->FailFrom(GetParam());
  auto r = Contribute(Header("alice"), alice);
  EXPECT_FALSE(r.ok());
  RestartHealed();
  if (!HasIntactContribution(1, "alice", alice)) {
    // Before: nothing of it is stored, and alice can contribute again.
    EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
    EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 0).status().code(),
              absl::StatusCode::kNotFound);
    MustContribute("alice", 2);
  }
  MustContribute("bob", 3);
  MustClose();
  EXPECT_EQ(manager_->GetStatus().base_version(), 1u);
}

TEST_P(DurabilityFaultTest, AFailedRoundCloseLeavesTheRoundOpenOrTheNewBaseWhole) {
  Init();
  const auto alice = MustContribute("alice", 2);
  const auto bob = MustContribute("bob", 3);
  faults_->FailFrom(GetParam());
  EXPECT_FALSE(manager_->CloseRound(std::nullopt, "operator", "op").ok());
  RestartHealed();
  if (manager_->GetStatus().base_version() == 0) {  // before
    EXPECT_EQ(manager_->GetRoundInfo(1)->state(), v1::OPEN);
    EXPECT_TRUE(HasIntactContribution(1, "alice", alice));
    EXPECT_TRUE(HasIntactContribution(1, "bob", bob));
    MustClose();
  }
  // After: round 1 closed into base v1, whose bytes are the mean and match its sha.
  EXPECT_EQ(manager_->GetStatus().base_version(), 1u);
  EXPECT_EQ(manager_->GetRoundInfo(1)->state(), v1::CLOSED);
  std::string sha;
  ExpectTensorsEqual(ReadBase(std::nullopt, &sha), ExpectedFusion({alice, bob}, {0.5, 0.5}));
  EXPECT_EQ(sha, manager_->GetStatus().base_sha256());
}

TEST_P(DurabilityFaultTest, AFailedRollbackIsAllOrNothing) {
  Init();
  MustContribute("alice", 2);
  MustClose();
  MustContribute("alice", 3);
  faults_->FailFrom(GetParam());
  EXPECT_FALSE(manager_->RollbackBase(0, "bad", "op").ok());
  RestartHealed();
  const v1::ServerStatus s = manager_->GetStatus();
  if (s.base_version() == 1) {  // before: round 2 open from v1 with alice's upload
    EXPECT_TRUE(s.bad_base_versions().empty());
    EXPECT_EQ(s.open_round().number(), 2u);
    EXPECT_EQ(s.open_round().contributions_size(), 1);
  } else {  // after: v1 bad, round 2 closed unfused, round 3 open from v0
    EXPECT_EQ(s.base_version(), 0u);
    ASSERT_EQ(s.bad_base_versions_size(), 1);
    EXPECT_EQ(s.bad_base_versions(0), 1u);
    EXPECT_EQ(manager_->GetRoundInfo(2)->close_reason(), "rollback");
    EXPECT_EQ(s.open_round().number(), 3u);
  }
  MustContribute("bob", 4);
}

TEST_P(DurabilityFaultTest, AFailedPruneOrPinIsAllOrNothing) {
  Init();
  std::vector<std::vector<HostTensor>> bases = {ReadBase(0)};
  for (int r = 1; r <= 3; ++r) {
    MustContribute("alice", static_cast<uint64_t>(r + 1));
    MustClose();
    bases.push_back(ReadBase(r));
  }
  const uint64_t id1 = ContributionOf(1, "alice").id();
  options_.keep_bases = 1;
  options_.keep_contribution_rounds = 0;
  options_.max_staleness = 0;  // only the current base and the rollback target are needed
  CreateManager();
  faults_->FailFrom(GetParam());
  EXPECT_FALSE(manager_->PinBase(3, true, "keep", "op").ok());
  EXPECT_FALSE(manager_->Prune(false, "op").ok());
  RestartHealed();
  const v1::ServerStatus s = manager_->GetStatus();
  const std::vector<uint64_t> stored(s.storage().stored_base_versions().begin(),
                                     s.storage().stored_base_versions().end());
  // The pin is there or not; v0 and v1 are both stored (with round 1's contribution) or
  // both removed (with it), and every stored base reads back whole.
  EXPECT_LE(s.storage().pinned_base_versions_size(), 1);
  if (stored.size() == 4) {  // before
    EXPECT_FALSE(manager_->GetRoundInfo(1)->contributions_pruned());
    EXPECT_TRUE(store_->GetContributionChunk(1, id1, 0, 0).ok());
  } else {  // after
    EXPECT_EQ(stored, (std::vector<uint64_t>{2, 3}));
    EXPECT_TRUE(manager_->GetRoundInfo(1)->contributions_pruned());
    EXPECT_EQ(store_->GetContributionChunk(1, id1, 0, 0).status().code(),
              absl::StatusCode::kNotFound);
  }
  for (uint64_t v : stored) EXPECT_EQ(ReadBase(v)[0].data, bases[v][0].data) << "v" << v;
  // Retention works again.
  ASSERT_TRUE(manager_->Prune(false, "op").ok());
  const v1::ServerStatus after = manager_->GetStatus();
  EXPECT_EQ(std::vector<uint64_t>(after.storage().stored_base_versions().begin(),
                                  after.storage().stored_base_versions().end()),
            (std::vector<uint64_t>{2, 3}));
}

TEST_P(DurabilityFaultTest, FailedTokenChangesAreAllOrNothing) {
  auto tokens = auth::TokenRegistry::Create(store_.get(), &clock_);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  auto kept = (*tokens)->CreateToken("kept", v1::CONTRIBUTOR, 0, "op");
  ASSERT_TRUE(kept.ok()) << kept.status();
  faults_->FailFrom(GetParam());
  auto created = (*tokens)->CreateToken("new", v1::VIEWER, 0, "op");
  EXPECT_FALSE(created.ok());
  EXPECT_FALSE((*tokens)->Revoke("kept", "op").ok());
  tokens->reset();
  RestartHealed();
  tokens = auth::TokenRegistry::Create(store_.get(), &clock_);
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  // "kept" is live or revoked, never damaged: its secret authenticates exactly while it
  // is listed as not revoked.
  bool listed = false;
  for (const auto& t : (*tokens)->List()) {
    if (t.name() != "kept") continue;
    listed = true;
    EXPECT_EQ((*tokens)->Authenticate(kept->secret).ok(), !t.revoked());
  }
  EXPECT_TRUE(listed);
  // The registry works again.
  EXPECT_TRUE((*tokens)->CreateToken("later", v1::VIEWER, 0, "op").ok());
}

INSTANTIATE_TEST_SUITE_P(SyncOrAppend, DurabilityFaultTest,
                         ::testing::Values(Op::kSync, Op::kAppend),
                         [](const ::testing::TestParamInfo<Op>& info) {
                           return std::string(info.param == Op::kSync ? "FailedSync"
                                                                      : "FailedAppend");
                         });

}  // namespace
}  // namespace coldfuse::rounds
