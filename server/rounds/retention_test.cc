// Retention: which bases and contributions the round manager removes (--keep_bases,
// --keep_contribution_rounds), what it always keeps (current base, rollback target, pins,
// bases being downloaded), and that records, checksums and a restart survive it.
#include <gtest/gtest.h>

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "server/rounds/rounds_test_fixture.h"

namespace coldfuse::rounds {
namespace {

using namespace testing_fixture;  // NOLINT: the shared test helpers

class RetentionTest : public RoundsTest {
 protected:
  // Retention by count alone: synchronous rounds (no base kept for stale contributions)
  // unless `max_staleness` says otherwise.
  void Keep(uint32_t bases, int32_t contribution_rounds, uint32_t max_staleness = 0) {
    options_.keep_bases = bases;
    options_.keep_contribution_rounds = contribution_rounds;
    options_.max_staleness = max_staleness;
    options_.min_contributions = 100;  // the tests close rounds themselves
    CreateManager();
  }

  // One contribution, then a close: returns the new base's tensors and checksum.
  std::vector<HostTensor> NextBase(int seed, std::string* sha = nullptr) {
    MustContribute(absl::StrCat("c", seed), static_cast<uint64_t>(seed));
    MustClose();
    return ReadBase(std::nullopt, sha);
  }

  std::vector<uint64_t> Stored() {
    const v1::ServerStatus s = manager_->GetStatus();
    const auto& v = s.storage().stored_base_versions();
    return {v.begin(), v.end()};
  }
};

using V = std::vector<uint64_t>;

TEST_F(RetentionTest, KeepsTheBasesAStaleContributionMayStillComeFrom) {
  Keep(1, 0, /*max_staleness=*/2);
  Init();
  const v1::ContributionHeader from_v2 = [&] {
    for (int r = 1; r <= 2; ++r) NextBase(r + 1);
    return Header("late");
  }();
  for (int r = 3; r <= 4; ++r) NextBase(r + 1);
  // v4 is current; v3 and v2 are one and two fusions older.
  EXPECT_EQ(Stored(), (V{2, 3, 4}));
  auto dry = manager_->Prune(/*dry_run=*/true, "op");
  ASSERT_TRUE(dry.ok()) << dry.status();
  EXPECT_EQ(absl::StrJoin(dry->kept_reasons(), "; "),
            "v2: a contribution may be trained from it (--max_staleness=2); "
            "v3: the rollback target (the newest good base before the current one)");
  // The contribution trained from v2 is taken, and fuses (it reads v2).
  const std::vector<HostTensor> late = Body(kSpec, 9);
  auto r = Contribute(from_v2, late);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(ContributionOf(5, "late").staleness(), 2u);
  MustClose();
  EXPECT_EQ(Stored(), (V{3, 4, 5}));
}

TEST_F(RetentionTest, KeepsTheNewestBasesAndRoundsAndSurvivesARestart) {
  Keep(2, 1);
  Init();
  std::vector<std::vector<HostTensor>> bases = {ReadBase(0)};
  std::vector<std::string> shas(1);
  ReadBase(0, &shas[0]);
  std::map<uint64_t, uint64_t> ids;  // round -> its contribution's id
  for (int r = 1; r <= 5; ++r) {
    shas.emplace_back();
    bases.push_back(NextBase(r + 1, &shas.back()));
    ids[r] = ContributionOf(r, absl::StrCat("c", r + 1)).id();
  }
  auto check = [&] {
    EXPECT_EQ(Stored(), (V{4, 5}));
    v1::ServerStatus s = manager_->GetStatus();
    EXPECT_EQ(s.storage().keep_bases(), 2u);
    EXPECT_EQ(s.storage().keep_contribution_rounds(), 1);
    // The kept bases are exactly what was fused.
    for (uint64_t v : {4u, 5u}) {
      std::string sha;
      std::vector<HostTensor> got = ReadBase(v, &sha);
      EXPECT_EQ(sha, shas[v]);
      ASSERT_EQ(got.size(), bases[v].size());
      for (size_t t = 0; t < got.size(); ++t) EXPECT_EQ(got[t].data, bases[v][t].data);
    }
    // A removed base says so, and what is stored instead.
    auto gone = manager_->OpenBase(2);
    ASSERT_EQ(gone.status().code(), absl::StatusCode::kNotFound) << gone.status();
    EXPECT_TRUE(absl::StrContains(gone.status().message(), "removed by retention"))
        << gone.status();
    EXPECT_TRUE(absl::StrContains(gone.status().message(), "v4, v5")) << gone.status();
    // Its checksum stays.
    auto sha2 = store_->GetBaseSha256(2);
    ASSERT_TRUE(sha2.ok()) << sha2.status();
    EXPECT_EQ(*sha2, shas[2]);
    // Contributions: the tensors of rounds 1-4 are gone, their records stay; round 5 keeps
    // its tensors.
    for (uint64_t r = 1; r <= 5; ++r) {
      auto info = manager_->GetRoundInfo(r);
      ASSERT_TRUE(info.ok()) << info.status();
      EXPECT_EQ(info->contributions_pruned(), r <= 4) << "round " << r;
      ASSERT_EQ(info->contributions_size(), 1);
      EXPECT_EQ(info->contributions(0).id(), ids[r]);
      EXPECT_EQ(info->contributions(0).num_examples(), 10u);
      auto chunk = store_->GetContributionChunk(r, ids[r], 0, 0);
      EXPECT_EQ(chunk.ok(), r == 5) << "round " << r << ": " << chunk.status();
    }
  };
  check();
  std::vector<std::string> actions = Actions(AuditAll());
  EXPECT_EQ(std::count(actions.begin(), actions.end(), "pruned"), 4);  // after closes 2..5
  Restart();
  check();
  // The next round fuses from the kept current base as usual.
  bases.push_back(NextBase(20));
  EXPECT_EQ(Stored(), (V{5, 6}));
}

TEST_F(RetentionTest, PinsAndTheRollbackTargetAreKeptAndRollbackNeedsAStoredBase) {
  Keep(1, -1);
  Init();
  NextBase(2);  // v1
  auto pin = manager_->PinBase(1, true, "release candidate", "op");
  ASSERT_TRUE(pin.ok()) << pin.status();
  EXPECT_EQ(pin->pinned_base_versions_size(), 1);
  NextBase(3);  // v2
  std::string sha3;
  NextBase(4, &sha3);  // v3
  // Newest 1 (v3), the rollback target (v2) and the pin (v1); v0 went.
  EXPECT_EQ(Stored(), (V{1, 2, 3}));
  auto dry = manager_->Prune(/*dry_run=*/true, "op");
  ASSERT_TRUE(dry.ok()) << dry.status();
  EXPECT_EQ(dry->pruned_base_versions_size(), 0);
  const std::string reasons = absl::StrJoin(dry->kept_reasons(), "; ");
  EXPECT_TRUE(absl::StrContains(reasons, "v1: pinned")) << reasons;
  EXPECT_TRUE(absl::StrContains(reasons, "v2: the rollback target")) << reasons;

  // Pins are checked.
  EXPECT_EQ(manager_->PinBase(0, true, "", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);  // already removed
  EXPECT_EQ(manager_->PinBase(99, true, "", "op").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->PinBase(2, false, "", "op").status().code(),
            absl::StatusCode::kFailedPrecondition);  // not pinned
  auto to_removed = manager_->RollbackBase(0, "", "op");
  ASSERT_EQ(to_removed.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(absl::StrContains(to_removed.status().message(), "retention")) << to_removed.status();

  // Rolling back to the pinned base works; the bad bases go at the next prune, the pin
  // stays until it is lifted.
  ASSERT_TRUE(manager_->RollbackBase(1, "v2 diverged", "op").ok());
  auto pruned = manager_->Prune(false, "op");
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(V(pruned->pruned_base_versions().begin(), pruned->pruned_base_versions().end()),
            (V{2, 3}));
  EXPECT_EQ(Stored(), (V{1}));
  Restart();
  EXPECT_EQ(Stored(), (V{1}));
  ASSERT_EQ(manager_->GetStatus().storage().pinned_base_versions_size(), 1);
  auto unpin = manager_->PinBase(1, false, "", "op");
  ASSERT_TRUE(unpin.ok()) << unpin.status();
  EXPECT_EQ(unpin->pinned_base_versions_size(), 0);
  // v1 is current: still kept.
  ASSERT_TRUE(manager_->Prune(false, "op").ok());
  EXPECT_EQ(Stored(), (V{1}));
  std::vector<std::string> actions = Actions(AuditAll());
  EXPECT_EQ(std::count(actions.begin(), actions.end(), "base_pinned"), 1);
  EXPECT_EQ(std::count(actions.begin(), actions.end(), "base_unpinned"), 1);
}

TEST_F(RetentionTest, ABaseBeingDownloadedIsKeptUntilItsDownloadEnds) {
  Keep(1, -1);
  Init();
  std::string sha0;
  ReadBase(0, &sha0);
  auto reader = manager_->OpenBase(0);
  ASSERT_TRUE(reader.ok()) << reader.status();
  NextBase(2);
  NextBase(3);
  NextBase(4);  // v3: v1 goes, v0 is being downloaded
  EXPECT_EQ(Stored(), (V{0, 2, 3}));
  v1::TensorChunk chunk;
  uint64_t bytes = 0;
  for (;;) {
    auto more = (*reader)->Next(&chunk);
    ASSERT_TRUE(more.ok()) << more.status();
    if (!*more) break;
    bytes += chunk.data().size();
  }
  EXPECT_GT(bytes, 0u);
  EXPECT_EQ((*reader)->Trailer().sha256(), sha0);
  reader->reset();
  auto pruned = manager_->Prune(false, "op");
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(V(pruned->pruned_base_versions().begin(), pruned->pruned_base_versions().end()),
            (V{0}));
}

TEST_F(RetentionTest, WithoutSettingsNothingIsRemoved) {
  Keep(0, -1);
  Init();
  for (int r = 1; r <= 3; ++r) NextBase(r + 1);
  EXPECT_EQ(Stored(), (V{0, 1, 2, 3}));
  auto pruned = manager_->Prune(false, "op");
  ASSERT_TRUE(pruned.ok()) << pruned.status();
  EXPECT_EQ(pruned->pruned_base_versions_size(), 0);
  EXPECT_EQ(pruned->pruned_contribution_rounds_size(), 0);
  EXPECT_FALSE(manager_->GetRoundInfo(1)->contributions_pruned());
  std::vector<std::string> actions = Actions(AuditAll());
  EXPECT_EQ(std::count(actions.begin(), actions.end(), "pruned"), 0);
}

TEST_F(RetentionTest, ContributionsOfFusedRoundsCanGoAtOnce) {
  Keep(0, 0);
  Init();
  NextBase(2);
  const uint64_t id = ContributionOf(1, "c2").id();
  EXPECT_EQ(store_->GetContributionChunk(1, id, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(manager_->GetRoundInfo(1)->contributions_pruned());
  EXPECT_EQ(Stored(), (V{0, 1}));  // bases: all kept
}

TEST_F(RetentionTest, DryRunRemovesNothing) {
  Keep(0, -1);
  Init();
  for (int r = 1; r <= 3; ++r) NextBase(r + 1);
  Keep(1, 0);  // a restart with tighter settings
  auto dry = manager_->Prune(/*dry_run=*/true, "op");
  ASSERT_TRUE(dry.ok()) << dry.status();
  EXPECT_TRUE(dry->dry_run());
  EXPECT_EQ(V(dry->pruned_base_versions().begin(), dry->pruned_base_versions().end()), (V{0, 1}));
  EXPECT_EQ(dry->pruned_contribution_rounds_size(), 3);
  EXPECT_EQ(Stored(), (V{0, 1, 2, 3}));
  EXPECT_TRUE(manager_->OpenBase(0).ok());
  auto real = manager_->Prune(false, "op");
  ASSERT_TRUE(real.ok()) << real.status();
  EXPECT_EQ(Stored(), (V{2, 3}));
}

}  // namespace
}  // namespace coldfuse::rounds
