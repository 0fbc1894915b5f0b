#include "server/storage/store.h"

#include <gtest/gtest.h>
#include <rocksdb/db.h>

#include <cstdint>
#include <filesystem>
#include <memory>
#include <string>
#include <tuple>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "server/rounds/test_util.h"
#include "server/storage/keys.h"
#include "server/storage/records.h"
#include "server/storage/records.pb.h"
#include "server/storage/rocks_util.h"

namespace coldfuse::storage {
namespace {

v1::ModelInfo TestModel() {
  v1::ModelInfo m;
  m.set_model_spec("mlp:2,2");
  v1::TensorSpec* w = m.mutable_manifest()->add_tensors();
  w->set_name("body.0.weight");
  w->set_dtype(v1::F32);
  w->add_shape(2);
  w->add_shape(2);
  v1::TensorSpec* b = m.mutable_manifest()->add_tensors();
  b->set_name("body.0.bias");
  b->set_dtype(v1::F32);
  b->add_shape(2);
  m.set_fusion_method(v1::EXAMPLE_WEIGHTED_MEAN);
  m.set_total_bytes(24);
  return m;
}

v1::RoundInfo OpenRound(uint64_t number, uint64_t base_version, int64_t opened_ms) {
  v1::RoundInfo r;
  r.set_number(number);
  r.set_base_version(base_version);
  r.set_state(v1::OPEN);
  r.set_opened_unix_ms(opened_ms);
  return r;
}

v1::ContributionInfo Contribution(uint64_t id, const std::string& who) {
  v1::ContributionInfo c;
  c.set_id(id);
  c.set_contributor(who);
  c.set_num_examples(100 * id);
  c.set_sha256(std::string(32, static_cast<char>(id)));
  c.set_bytes(24);
  return c;
}

const std::string kSha0(32, 'a');
const std::string kSha1(32, 'b');

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override { Reopen(); }

  // Closes the store (if open) and opens the same folder again, as a restart would.
  void Reopen() {
    store_.reset();
    auto s = Store::Open(dir_.path(), StoreOptions());
    ASSERT_TRUE(s.ok()) << s.status();
    store_ = std::move(*s);
  }

  LoadedState MustLoad() {
    auto state = store_->Load();
    EXPECT_TRUE(state.ok()) << state.status();
    return state.ok() ? *std::move(state) : LoadedState();
  }

  // Base v0 (two tensors) and round 1, committed.
  void Init() {
    ASSERT_TRUE(store_->PutBaseChunk(0, 0, 0, "weight-bytes-v0").ok());
    ASSERT_TRUE(store_->PutBaseChunk(0, 1, 0, "bias-bytes-v0").ok());
    ASSERT_TRUE(store_->CommitInit(TestModel(), kSha0, OpenRound(1, 0, 1000)).ok());
  }

  testing_util::TempDir dir_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, EmptyFolderHasNoModel) {
  LoadedState state = MustLoad();
  EXPECT_FALSE(state.model.has_value());
  EXPECT_TRUE(state.rounds.empty());
  EXPECT_EQ(state.current_base, 0u);
  EXPECT_EQ(state.next_contribution_id, 1u);
}

TEST_F(StoreTest, InitIsVisibleAfterReopen) {
  Init();
  Reopen();
  LoadedState state = MustLoad();
  ASSERT_TRUE(state.model.has_value());
  EXPECT_EQ(state.model->model_spec(), "mlp:2,2");
  EXPECT_EQ(state.model->fusion_method(), v1::EXAMPLE_WEIGHTED_MEAN);
  ASSERT_EQ(state.model->manifest().tensors_size(), 2);
  EXPECT_EQ(state.model->manifest().tensors(1).name(), "body.0.bias");
  EXPECT_EQ(state.current_base, 0u);
  EXPECT_EQ(state.current_base_sha256, kSha0);
  ASSERT_EQ(state.rounds.size(), 1u);
  EXPECT_EQ(state.rounds[0].number(), 1u);
  EXPECT_EQ(state.rounds[0].base_version(), 0u);
  EXPECT_EQ(state.rounds[0].state(), v1::OPEN);
  EXPECT_EQ(state.rounds[0].opened_unix_ms(), 1000);
  EXPECT_EQ(state.rounds[0].contributions_size(), 0);

  auto w = store_->GetBaseChunk(0, 0, 0);
  ASSERT_TRUE(w.ok()) << w.status();
  EXPECT_EQ(*w, "weight-bytes-v0");
  auto b = store_->GetBaseChunk(0, 1, 0);
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(*b, "bias-bytes-v0");
  auto sha = store_->GetBaseSha256(0);
  ASSERT_TRUE(sha.ok()) << sha.status();
  EXPECT_EQ(*sha, kSha0);
}

TEST_F(StoreTest, BaseChunksRoundTripByVersionTensorAndChunk) {
  Init();
  ASSERT_TRUE(store_->PutBaseChunk(0, 0, 1, "second-chunk").ok());
  auto c0 = store_->GetBaseChunk(0, 0, 0);
  auto c1 = store_->GetBaseChunk(0, 0, 1);
  ASSERT_TRUE(c0.ok() && c1.ok());
  EXPECT_EQ(*c0, "weight-bytes-v0");
  EXPECT_EQ(*c1, "second-chunk");
  EXPECT_EQ(store_->GetBaseChunk(0, 0, 2).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetBaseChunk(0, 2, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetBaseChunk(1, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetBaseSha256(1).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, CrashedInitLeavesNothingBehind) {
  MustLoad();
  ASSERT_TRUE(store_->PutBaseChunk(0, 0, 0, "half-written").ok());
  Reopen();  // the init never committed
  LoadedState state = MustLoad();
  EXPECT_FALSE(state.model.has_value());
  EXPECT_EQ(store_->GetBaseChunk(0, 0, 0).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, UncommittedContributionIsDeletedOnLoadCommittedOneSurvives) {
  Init();
  MustLoad();
  // Contribution 2 commits; contribution 3 was still uploading when the server died.
  ASSERT_TRUE(store_->PutContributionChunk(1, 2, 0, 0, "c2-t0").ok());
  ASSERT_TRUE(store_->PutContributionChunk(1, 2, 1, 0, "c2-t1").ok());
  ASSERT_TRUE(store_->CommitContribution(1, Contribution(2, "alice")).ok());
  ASSERT_TRUE(store_->PutContributionChunk(1, 3, 0, 0, "c3-t0").ok());
  ASSERT_TRUE(store_->PutContributionChunk(1, 3, 1, 0, "c3-t1").ok());

  Reopen();
  LoadedState state = MustLoad();
  ASSERT_EQ(state.rounds.size(), 1u);
  ASSERT_EQ(state.rounds[0].contributions_size(), 1);
  EXPECT_EQ(state.rounds[0].contributions(0).id(), 2u);
  EXPECT_EQ(state.rounds[0].contributions(0).contributor(), "alice");
  EXPECT_EQ(state.rounds[0].contributions(0).num_examples(), 200u);
  EXPECT_GT(state.next_contribution_id, 2u);

  auto kept = store_->GetContributionChunk(1, 2, 1, 0);
  ASSERT_TRUE(kept.ok()) << kept.status();
  EXPECT_EQ(*kept, "c2-t1");
  EXPECT_EQ(store_->GetContributionChunk(1, 3, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetContributionChunk(1, 3, 1, 0).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, BaseChunksAboveCurrentVersionAreDeletedOnLoad) {
  Init();
  // A fusion into v1 crashed before its commit.
  ASSERT_TRUE(store_->PutBaseChunk(1, 0, 0, "half-fused").ok());
  ASSERT_TRUE(store_->PutBaseChunk(1, 1, 0, "half-fused").ok());
  Reopen();
  LoadedState state = MustLoad();
  EXPECT_EQ(state.current_base, 0u);
  EXPECT_EQ(store_->GetBaseChunk(1, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetBaseChunk(1, 1, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->GetBaseChunk(0, 0, 0).ok());
  EXPECT_TRUE(store_->GetBaseChunk(0, 1, 0).ok());
}

TEST_F(StoreTest, RoundCloseIsVisibleAfterReopen) {
  Init();
  ASSERT_TRUE(store_->PutContributionChunk(1, 1, 0, 0, "c1").ok());
  ASSERT_TRUE(store_->CommitContribution(1, Contribution(1, "alice")).ok());
  ASSERT_TRUE(store_->PutBaseChunk(1, 0, 0, "weight-bytes-v1").ok());
  ASSERT_TRUE(store_->PutBaseChunk(1, 1, 0, "bias-bytes-v1").ok());
  v1::RoundInfo closed = OpenRound(1, 0, 1000);
  *closed.add_contributions() = Contribution(1, "alice");
  closed.set_state(v1::CLOSED);
  closed.set_closed_unix_ms(5000);
  closed.set_result_base_version(1);
  closed.set_close_reason("operator");
  ASSERT_TRUE(store_->CommitRoundClose(closed, 1, kSha1, OpenRound(2, 1, 5000), {}).ok());

  Reopen();
  LoadedState state = MustLoad();
  EXPECT_EQ(state.current_base, 1u);
  EXPECT_EQ(state.current_base_sha256, kSha1);
  ASSERT_EQ(state.rounds.size(), 2u);
  const v1::RoundInfo& r1 = state.rounds[0];
  EXPECT_EQ(r1.number(), 1u);
  EXPECT_EQ(r1.state(), v1::CLOSED);
  EXPECT_EQ(r1.closed_unix_ms(), 5000);
  EXPECT_EQ(r1.result_base_version(), 1u);
  EXPECT_EQ(r1.close_reason(), "operator");
  ASSERT_EQ(r1.contributions_size(), 1);  // listed once, not twice
  EXPECT_EQ(r1.contributions(0).contributor(), "alice");
  const v1::RoundInfo& r2 = state.rounds[1];
  EXPECT_EQ(r2.number(), 2u);
  EXPECT_EQ(r2.base_version(), 1u);
  EXPECT_EQ(r2.state(), v1::OPEN);
  EXPECT_EQ(r2.contributions_size(), 0);

  // Both versions stay readable; v1 is current, so Load kept it.
  auto base1 = store_->GetBaseChunk(1, 0, 0);
  ASSERT_TRUE(base1.ok()) << base1.status();
  EXPECT_EQ(*base1, "weight-bytes-v1");
  auto base0 = store_->GetBaseChunk(0, 0, 0);
  ASSERT_TRUE(base0.ok()) << base0.status();
  EXPECT_EQ(*base0, "weight-bytes-v0");
  auto sha0 = store_->GetBaseSha256(0);
  ASSERT_TRUE(sha0.ok());
  EXPECT_EQ(*sha0, kSha0);
  // The closed round's contribution data is still there.
  EXPECT_TRUE(store_->GetContributionChunk(1, 1, 0, 0).ok());
}

TEST_F(StoreTest, DeleteContributionDataRemovesOnlyThatContribution) {
  Init();
  ASSERT_TRUE(store_->PutContributionChunk(1, 1, 0, 0, "c1-t0-c0").ok());
  ASSERT_TRUE(store_->PutContributionChunk(1, 1, 0, 7, "c1-t0-c7").ok());
  ASSERT_TRUE(store_->PutContributionChunk(1, 1, 1, 0, "c1-t1-c0").ok());
  ASSERT_TRUE(store_->PutContributionChunk(1, 2, 0, 0, "c2-t0-c0").ok());
  ASSERT_TRUE(store_->PutContributionChunk(2, 1, 0, 0, "r2-c1").ok());

  ASSERT_TRUE(store_->DeleteContributionData(1, 1).ok());
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 7).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 1, 0).status().code(), absl::StatusCode::kNotFound);
  auto other = store_->GetContributionChunk(1, 2, 0, 0);
  ASSERT_TRUE(other.ok()) << other.status();
  EXPECT_EQ(*other, "c2-t0-c0");
  auto other_round = store_->GetContributionChunk(2, 1, 0, 0);
  ASSERT_TRUE(other_round.ok()) << other_round.status();
  EXPECT_EQ(*other_round, "r2-c1");
}

TEST_F(StoreTest, SecondOpenOfTheSameFolderFailsClearly) {
  auto second = Store::Open(dir_.path(), StoreOptions());
  ASSERT_FALSE(second.ok());
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition) << second.status();
  EXPECT_TRUE(absl::StrContains(second.status().message(), "another coldfused")) << second.status();

  // Once the first one is closed, the folder opens again.
  store_.reset();
  auto third = Store::Open(dir_.path(), StoreOptions());
  EXPECT_TRUE(third.ok()) << third.status();
}

// Round `number` (opened on `base`) closed into `new_base`, and the next round opened.
void MustCloseRound(Store* store, uint64_t number, uint64_t base, uint64_t new_base,
                    const std::string& sha) {
  ASSERT_TRUE(store->PutBaseChunk(new_base, 0, 0, absl::StrCat("weight-bytes-v", new_base)).ok());
  ASSERT_TRUE(store->PutBaseChunk(new_base, 1, 0, absl::StrCat("bias-bytes-v", new_base)).ok());
  v1::RoundInfo closed = OpenRound(number, base, 1000 * number);
  closed.set_state(v1::CLOSED);
  closed.set_closed_unix_ms(1000 * (number + 1));
  closed.set_result_base_version(new_base);
  closed.set_close_reason("operator");
  v1::RoundInfo next = OpenRound(number + 1, new_base, 1000 * (number + 1));
  ASSERT_TRUE(store->CommitRoundClose(closed, new_base, sha, next, {}).ok());
}

v1::AuditRecord Record(const std::string& actor, const std::string& action) {
  v1::AuditRecord r;
  r.set_actor(actor);
  r.set_action(action);
  r.set_detail(absl::StrCat(action, " by ", actor));
  return r;
}

TEST_F(StoreTest, RollbackIsVisibleAfterReopenAndKeepsTheBadBaseData) {
  Init();
  MustLoad();
  MustCloseRound(store_.get(), 1, 0, 1, kSha1);
  MustCloseRound(store_.get(), 2, 1, 2, std::string(32, 'c'));
  // Round 3 (on v2) has a committed contribution when the operator rolls back to v1.
  ASSERT_TRUE(store_->PutContributionChunk(3, 7, 0, 0, "c7-t0").ok());
  ASSERT_TRUE(store_->CommitContribution(3, Contribution(7, "carol")).ok());
  v1::RoundInfo closed = OpenRound(3, 2, 3000);
  *closed.add_contributions() = Contribution(7, "carol");
  closed.set_state(v1::CLOSED);
  closed.set_closed_unix_ms(4000);
  closed.set_close_reason("rollback");
  ASSERT_TRUE(store_
                  ->CommitRollback(closed, {2}, "diverged", 1, OpenRound(4, 1, 4000),
                                   {Record("op", "rollback")})
                  .ok());
  // A later fusion into v3 crashed before its commit.
  ASSERT_TRUE(store_->PutBaseChunk(3, 0, 0, "half-fused").ok());

  Reopen();
  LoadedState state = MustLoad();
  EXPECT_EQ(state.current_base, 1u);
  EXPECT_EQ(state.current_base_sha256, kSha1);
  EXPECT_EQ(state.bad_base_versions, std::vector<uint64_t>({2}));
  // v2 is bad but was stored: the next fusion must write v3, not reuse v2.
  EXPECT_EQ(state.max_base_version, 2u);
  ASSERT_EQ(state.rounds.size(), 4u);
  const v1::RoundInfo& r3 = state.rounds[2];
  EXPECT_EQ(r3.state(), v1::CLOSED);
  EXPECT_EQ(r3.close_reason(), "rollback");
  EXPECT_EQ(r3.result_base_version(), 0u);
  ASSERT_EQ(r3.contributions_size(), 1);  // from the contribs family, listed once
  EXPECT_EQ(r3.contributions(0).contributor(), "carol");
  EXPECT_EQ(state.rounds[3].state(), v1::OPEN);
  EXPECT_EQ(state.rounds[3].base_version(), 1u);
  EXPECT_GT(state.next_contribution_id, 7u);

  // The bad base and the rolled-back round's data stay readable; only the crashed v3 goes.
  auto v2 = store_->GetBaseChunk(2, 0, 0);
  ASSERT_TRUE(v2.ok()) << v2.status();
  EXPECT_EQ(*v2, "weight-bytes-v2");
  auto c7 = store_->GetContributionChunk(3, 7, 0, 0);
  ASSERT_TRUE(c7.ok()) << c7.status();
  EXPECT_EQ(*c7, "c7-t0");
  EXPECT_EQ(store_->GetBaseChunk(3, 0, 0).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, BadBaseVersionsLoadInNumericOrder) {
  Init();
  MustLoad();
  // "bad_base/10" sorts before "bad_base/9" as a key.
  v1::RoundInfo closed = OpenRound(1, 0, 1000);
  closed.set_state(v1::CLOSED);
  closed.set_close_reason("rollback");
  ASSERT_TRUE(store_->CommitRollback(closed, {10, 9}, "bad", 0, OpenRound(2, 0, 2000)).ok());
  Reopen();
  EXPECT_EQ(MustLoad().bad_base_versions, std::vector<uint64_t>({9, 10}));
}

TEST_F(StoreTest, AuditRecordsAreNumberedInOrderAndContinueAfterReopen) {
  Init();
  MustLoad();
  ASSERT_TRUE(store_->AppendAudit({Record("a", "one"), Record("b", "two")}).ok());
  ASSERT_TRUE(
      store_->CommitContribution(1, Contribution(1, "alice"), {Record("alice", "three")}).ok());
  auto all = store_->ReadAudit(0, 100);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 3u);
  for (size_t i = 0; i < all->size(); ++i) EXPECT_EQ((*all)[i].seq(), i + 1);
  EXPECT_EQ((*all)[0].action(), "one");
  EXPECT_EQ((*all)[0].actor(), "a");
  EXPECT_GT((*all)[0].unix_ms(), 0);  // filled in by the store
  EXPECT_EQ((*all)[2].action(), "three");

  auto later = store_->ReadAudit(1, 100);
  ASSERT_TRUE(later.ok());
  ASSERT_EQ(later->size(), 2u);
  EXPECT_EQ((*later)[0].seq(), 2u);
  auto limited = store_->ReadAudit(0, 2);
  ASSERT_TRUE(limited.ok());
  EXPECT_EQ(limited->size(), 2u);
  auto none = store_->ReadAudit(3, 100);
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->empty());
  // after_seq + 1 must not wrap around to the start of the log.
  auto past_the_end = store_->ReadAudit(UINT64_MAX, 100);
  ASSERT_TRUE(past_the_end.ok());
  EXPECT_TRUE(past_the_end->empty());

  Reopen();
  MustLoad();
  ASSERT_TRUE(store_->AppendAudit({Record("c", "four")}).ok());
  all = store_->ReadAudit(0, 100);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[0].action(), "one");
  EXPECT_EQ((*all)[3].action(), "four");
  EXPECT_EQ((*all)[3].seq(), 4u);
}

TEST_F(StoreTest, AuditReadsStopAtTheirByteCapAndRecordsAreBoundedAndEscaped) {
  MustLoad();
  // 1500 records of the largest detail kept: 1000 of them would pass 1 MiB.
  for (int i = 0; i < 1500; ++i) {
    v1::AuditRecord r = Record("mallory", "contribution_rejected");
    r.set_detail(std::string(5000, 'x') + "\x1b[2J\n");
    ASSERT_TRUE(store_->AppendAudit({r}).ok());
  }
  bool more = false;
  auto page = store_->ReadAudit(0, 1000, 1 << 20, &more);
  ASSERT_TRUE(page.ok()) << page.status();
  EXPECT_TRUE(more);
  EXPECT_LT(page->size(), 1000u);
  EXPECT_GT(page->size(), 500u);
  size_t bytes = 0;
  for (const auto& r : *page) {
    bytes += r.ByteSizeLong();
    EXPECT_LE(r.detail().size(), kAuditDetailMaxBytes);
    EXPECT_EQ(r.detail().find('\x1b'), std::string::npos);
  }
  EXPECT_LE(bytes, size_t{1} << 20);
  // Paging from the last record reaches the end.
  size_t seen = page->size();
  uint64_t after = page->back().seq();
  while (more) {
    page = store_->ReadAudit(after, 1000, 1 << 20, &more);
    ASSERT_TRUE(page.ok());
    ASSERT_FALSE(page->empty());
    EXPECT_EQ(page->front().seq(), after + 1);
    seen += page->size();
    after = page->back().seq();
  }
  EXPECT_EQ(seen, 1500u);
  // A single record larger than the cap still comes back alone.
  page = store_->ReadAudit(0, 1000, 10, &more);
  ASSERT_TRUE(page.ok());
  EXPECT_EQ(page->size(), 1u);
  EXPECT_TRUE(more);
}

TEST_F(StoreTest, AuditSeqContinuesAfterReopenEvenBeforeLoad) {
  MustLoad();
  ASSERT_TRUE(
      store_->AppendAudit({Record("a", "one"), Record("b", "two"), Record("c", "three")}).ok());
  Reopen();
  ASSERT_TRUE(store_->AppendAudit({Record("d", "four")}).ok());
  auto all = store_->ReadAudit(0, 100);
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 4u);
  EXPECT_EQ((*all)[0].action(), "one");
  EXPECT_EQ((*all)[3].action(), "four");
  EXPECT_EQ((*all)[3].seq(), 4u);
}

TEST_F(StoreTest, TokensRoundTripAndReplaceByName) {
  StoredToken t;
  t.secret_sha256 = std::string(32, '\x01');
  t.info.set_name("alice");
  t.info.set_role(v1::CONTRIBUTOR);
  ASSERT_TRUE(store_->PutToken(t).ok());
  t.secret_sha256 = std::string(32, '\x02');
  t.info.set_revoked(true);
  ASSERT_TRUE(store_->PutToken(t).ok());
  StoredToken b;
  b.secret_sha256 = std::string(32, '\x03');
  b.info.set_name("bob");
  b.info.set_role(v1::VIEWER);
  ASSERT_TRUE(store_->PutToken(b).ok());

  Reopen();
  auto tokens = store_->LoadTokens();
  ASSERT_TRUE(tokens.ok()) << tokens.status();
  ASSERT_EQ(tokens->size(), 2u);
  EXPECT_EQ((*tokens)[0].info.name(), "alice");
  EXPECT_EQ((*tokens)[0].secret_sha256, std::string(32, '\x02'));
  EXPECT_TRUE((*tokens)[0].info.revoked());
  EXPECT_EQ((*tokens)[1].info.name(), "bob");
  EXPECT_EQ((*tokens)[1].info.role(), v1::VIEWER);
  // Tokens are not mistaken for other meta records.
  EXPECT_FALSE(MustLoad().model.has_value());
}

// ------------------------------------------------------------------ storage format

// Opens a store's RocksDB folder as another release would, bypassing Store, and calls
// edit(db, the meta family).
template <typename Edit>
void EditRaw(const std::string& dir, Edit edit) {
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  descs.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  for (int i = 0; i < kNumCfs; ++i) descs.emplace_back(kCfNames[i], rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(rocksdb::DBOptions(), dir, descs, &handles, &db).ok());
  edit(db, handles[1 + kMeta]);
  for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
  delete db;
}

// Writes `puts` ((family, key, value)) into a RocksDB folder with the store's families,
// as another release would have, bypassing Store.
void WriteRaw(const std::string& dir,
              const std::vector<std::tuple<Cf, std::string, std::string>>& puts) {
  rocksdb::DBOptions opts;
  opts.create_if_missing = true;
  opts.create_missing_column_families = true;
  std::vector<rocksdb::ColumnFamilyDescriptor> descs;
  descs.emplace_back(rocksdb::kDefaultColumnFamilyName, rocksdb::ColumnFamilyOptions());
  for (int i = 0; i < kNumCfs; ++i) descs.emplace_back(kCfNames[i], rocksdb::ColumnFamilyOptions());
  std::vector<rocksdb::ColumnFamilyHandle*> handles;
  rocksdb::DB* db = nullptr;
  ASSERT_TRUE(rocksdb::DB::Open(opts, dir, descs, &handles, &db).ok());
  for (const auto& [cf, k, v] : puts) {
    ASSERT_TRUE(db->Put(rocksdb::WriteOptions(), handles[1 + cf], k, v).ok());
  }
  for (auto* h : handles) db->DestroyColumnFamilyHandle(h);
  delete db;
}

// Base v1's optimizer state: visible with its record after the close, kept by a
// restart, removed with the base's own chunks (a failed fusion, retention) and by the
// clean-up of a fusion a crash cut before its commit; the record stays.
TEST_F(StoreTest, OptimizerStateFollowsItsBase) {
  v1::ModelInfo model = TestModel();
  model.set_outer_optimizer(v1::OUTER_NESTEROV);
  model.mutable_outer_optimizer_options()->set_learning_rate(0.7);
  model.mutable_outer_optimizer_options()->set_momentum(0.0);  // set, even though 0
  ASSERT_TRUE(store_->PutBaseChunk(0, 0, 0, "weight-bytes-v0").ok());
  ASSERT_TRUE(store_->CommitInit(model, kSha0, OpenRound(1, 0, 1000)).ok());
  auto v0 = store_->GetOptimizerState(0);
  ASSERT_TRUE(v0.ok()) << v0.status();
  EXPECT_EQ(v0->kind, v1::OUTER_NESTEROV);
  EXPECT_EQ(v0->step, 0u);
  EXPECT_TRUE(v0->slots.empty());

  ASSERT_TRUE(store_->PutBaseChunk(1, 0, 0, "weight-bytes-v1").ok());
  ASSERT_TRUE(store_->PutOptimizerStateChunk(1, 0, 0, 0, "momentum-v1").ok());
  v1::RoundInfo closed = OpenRound(1, 0, 1000);
  closed.set_state(v1::CLOSED);
  closed.set_result_base_version(1);
  BaseOptimizerState made;
  made.kind = v1::OUTER_NESTEROV;
  made.step = 1;
  made.slots = {0};
  made.state_sha256 = std::string(32, 's');
  made.from_base = 0;
  ASSERT_TRUE(store_->CommitRoundClose(closed, 1, kSha1, OpenRound(2, 1, 5000), made).ok());
  // A fusion cut by a crash: v2's chunks and state, never committed.
  ASSERT_TRUE(store_->PutBaseChunk(2, 0, 0, "weight-bytes-v2").ok());
  ASSERT_TRUE(store_->PutOptimizerStateChunk(2, 0, 0, 0, "momentum-v2").ok());

  Reopen();
  LoadedState state = MustLoad();
  ASSERT_TRUE(state.model.has_value());
  EXPECT_EQ(state.model->outer_optimizer(), v1::OUTER_NESTEROV);
  EXPECT_EQ(state.model->outer_optimizer_options().learning_rate(), 0.7);
  EXPECT_TRUE(state.model->outer_optimizer_options().has_momentum());
  EXPECT_FALSE(state.model->outer_optimizer_options().has_beta1());
  auto rec = store_->GetOptimizerState(1);
  ASSERT_TRUE(rec.ok()) << rec.status();
  EXPECT_EQ(rec->step, 1u);
  EXPECT_EQ(rec->slots, std::vector<uint32_t>{0});
  EXPECT_EQ(rec->state_sha256, made.state_sha256);
  auto chunk = store_->GetOptimizerStateChunk(1, 0, 0, 0);
  ASSERT_TRUE(chunk.ok()) << chunk.status();
  EXPECT_EQ(*chunk, "momentum-v1");
  // The state does not shadow the base's chunks, nor they it.
  EXPECT_EQ(*store_->GetBaseChunk(1, 0, 0), "weight-bytes-v1");
  EXPECT_EQ(store_->GetOptimizerStateChunk(1, 1, 0, 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetOptimizerStateChunk(2, 0, 0, 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetOptimizerState(2).status().code(), absl::StatusCode::kNotFound);

  ASSERT_TRUE(store_->Prune({1}, {}).ok());
  EXPECT_EQ(store_->GetOptimizerStateChunk(1, 0, 0, 0).status().code(),
            absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->GetOptimizerState(1).ok());
  EXPECT_EQ(*store_->GetBaseChunk(0, 0, 0), "weight-bytes-v0");

  ASSERT_TRUE(store_->PutOptimizerStateChunk(3, 1, 0, 0, "second-moment-v3").ok());
  ASSERT_TRUE(store_->DeleteBaseData(3).ok());
  EXPECT_EQ(store_->GetOptimizerStateChunk(3, 1, 0, 0).status().code(),
            absl::StatusCode::kNotFound);
}

// A format 2 folder (made before outer optimizers) opens as format 3 with nothing else
// changed; its model is plain and its bases have no optimizer record.
TEST_F(StoreTest, AFormat2StoreIsMigratedTo3) {
  Init();
  store_.reset();
  WriteRaw(dir_.path(), {{kMeta, keys::FormatVersion(), keys::EncodeU64(2)}});
  EditRaw(dir_.path(), [](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* meta) {
    ASSERT_TRUE(db->Delete(rocksdb::WriteOptions(), meta, keys::OptimizerState(0)).ok());
  });
  Reopen();
  LoadedState state = MustLoad();
  ASSERT_TRUE(state.model.has_value());
  EXPECT_EQ(state.current_base_sha256, kSha0);
  EXPECT_EQ(state.model->outer_optimizer(), v1::OUTER_OPTIMIZER_UNSPECIFIED);
  EXPECT_EQ(store_->GetOptimizerState(0).status().code(), absl::StatusCode::kNotFound);
  store_.reset();
  std::string version;
  EditRaw(dir_.path(), [&](rocksdb::DB* db, rocksdb::ColumnFamilyHandle* meta) {
    ASSERT_TRUE(db->Get(rocksdb::ReadOptions(), meta, keys::FormatVersion(), &version).ok());
  });
  EXPECT_EQ(version, keys::EncodeU64(3));
}

TEST_F(StoreTest, AFormatNewerThanThisBuildIsRefusedAndLeftAlone) {
  Init();
  store_.reset();
  WriteRaw(dir_.path(),
           {{kMeta, keys::FormatVersion(), keys::EncodeU64(keys::kFormatVersion + 1)}});
  auto s = Store::Open(dir_.path(), StoreOptions());
  EXPECT_EQ(s.status().code(), absl::StatusCode::kFailedPrecondition) << s.status();
  EXPECT_TRUE(absl::StrContains(s.status().message(), "newer coldfused")) << s.status();
  // Nothing was changed: this build opens it again once the version is its own.
  WriteRaw(dir_.path(), {{kMeta, keys::FormatVersion(), keys::EncodeU64(keys::kFormatVersion)}});
  Reopen();
  EXPECT_EQ(MustLoad().current_base_sha256, kSha0);
}

// Format 1 kept an interrupted upload as one record (the API's UploadSessionRecord,
// header and progress together); it is still resumable after the migration.
TEST_F(StoreTest, AFormat1UploadSessionIsMigratedWithItsProgress) {
  store_.reset();
  testing_util::TempDir old_dir;
  v1::ContributionHeader h;
  h.set_round(1);
  h.set_contributor("alice");
  h.set_num_examples(7);
  h.set_upload_id("upload-0001");
  (*h.mutable_metrics())["accuracy_after"] = 0.5;
  *h.mutable_manifest() = TestModel().manifest();
  LegacyUploadSession legacy;  // the same fields and numbers as format 1's record
  legacy.set_header(h.SerializeAsString());
  legacy.set_contribution_id(3);
  legacy.set_next_tensor(1);
  legacy.set_next_offset(0);
  legacy.set_bytes_stored(16);
  legacy.set_sum_sq(2.25);
  v1::RoundInfo round = OpenRound(1, 0, 1000);
  WriteRaw(old_dir.path(),
           {{kMeta, keys::format1::kModel, TestModel().SerializeAsString()},
            {kMeta, keys::format1::kCurrentBase, keys::EncodeU64(0)},
            {kMeta, "base_sha/0", kSha0},
            {kBases, keys::BaseChunk(0, 0, 0), "weight-bytes-v0"},
            {kBases, keys::BaseChunk(0, 1, 0), "bias-bytes-v0"},
            {kRounds, keys::Round(1), round.SerializeAsString()},
            {kContribs, keys::UploadSession("upload-0001"), legacy.SerializeAsString()},
            {kContribs, keys::ContributionChunk(1, 3, 0, 0), std::string(16, 'x')}});
  auto s = Store::Open(old_dir.path(), StoreOptions());
  ASSERT_TRUE(s.ok()) << s.status();
  auto state = (*s)->Load();
  ASSERT_TRUE(state.ok()) << state.status();
  ASSERT_TRUE(state->model.has_value());
  EXPECT_EQ(state->model->model_spec(), "mlp:2,2");
  EXPECT_EQ(state->current_base_sha256, kSha0);
  ASSERT_EQ(state->uploads.size(), 1u);
  const StoredUpload& u = state->uploads[0];
  EXPECT_EQ(u.header.upload_id(), "upload-0001");
  EXPECT_EQ(u.header.contributor(), "alice");
  EXPECT_EQ(u.header.metrics().at("accuracy_after"), 0.5);
  EXPECT_EQ(u.contribution_id, 3u);
  EXPECT_EQ(u.progress.next_tensor, 1u);
  EXPECT_EQ(u.progress.bytes_stored, 16u);
  EXPECT_EQ(u.progress.sum_sq, 2.25);
  // Its chunks were kept (the session points at them), and ids continue past it.
  EXPECT_TRUE((*s)->GetContributionChunk(1, 3, 0, 0).ok());
  EXPECT_EQ(state->next_contribution_id, 4u);
}

}  // namespace
}  // namespace coldfuse::storage

namespace coldfuse::storage {
namespace {

// Retention's store side: Prune removes tensors in one synced write that keeps records and
// checksums, and ReclaimSpace gives the disk space back (RocksDB drops the blob files).
TEST_F(StoreTest, PrunedTensorsGiveTheirDiskSpaceBackAndRecordsStay) {
  constexpr int kChunks = 24;  // 24 MiB per base and per contribution
  const std::string mib(1 << 20, 'x');
  for (int c = 0; c < kChunks; ++c) ASSERT_TRUE(store_->PutBaseChunk(0, 0, c, mib).ok());
  ASSERT_TRUE(store_->CommitInit(TestModel(), kSha0, OpenRound(1, 0, 1000)).ok());
  v1::RoundInfo closed[3];
  for (uint64_t r = 1; r <= 3; ++r) {
    for (int c = 0; c < kChunks; ++c) {
      ASSERT_TRUE(store_->PutContributionChunk(r, r, 0, c, mib).ok());
      ASSERT_TRUE(store_->PutBaseChunk(r, 0, c, mib).ok());
    }
    ASSERT_TRUE(store_->FlushContributions().ok());
    ASSERT_TRUE(store_->CommitContribution(r, Contribution(r, "alice")).ok());
    closed[r - 1] = OpenRound(r, r - 1, 1000 * r);
    *closed[r - 1].add_contributions() = Contribution(r, "alice");
    closed[r - 1].set_state(v1::CLOSED);
    closed[r - 1].set_result_base_version(r);
    ASSERT_TRUE(store_
                    ->CommitRoundClose(closed[r - 1], r, std::string(32, 'a' + r),
                                       OpenRound(r + 1, r, 1000 * (r + 1)), {})
                    .ok());
  }
  auto before = store_->DiskBytes();
  ASSERT_TRUE(before.ok()) << before.status();
  EXPECT_GE(*before, uint64_t{7 * kChunks} << 20);  // 4 bases + 3 contributions

  // Bases v0, v1 and the contributions of rounds 1, 2 go.
  std::vector<v1::RoundInfo> rounds = {closed[0], closed[1]};
  for (auto& r : rounds) r.set_contributions_pruned(true);  // with the contributions to remove
  ASSERT_TRUE(store_->Prune({0, 1}, rounds).ok());
  ASSERT_TRUE(store_->ReclaimSpace().ok());
  auto after = store_->DiskBytes();
  ASSERT_TRUE(after.ok()) << after.status();
  // 4 x 24 MiB removed; allow 4 MiB of slack (logs, manifests, tables).
  EXPECT_LE(*after + (uint64_t{4 * kChunks - 4} << 20), *before)
      << "before " << *before << " after " << *after;

  Reopen();
  LoadedState state = MustLoad();
  EXPECT_EQ(state.pruned_base_versions, (std::vector<uint64_t>{0, 1}));
  EXPECT_EQ(store_->GetBaseChunk(1, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store_->GetContributionChunk(2, 2, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_TRUE(store_->GetBaseChunk(2, 0, kChunks - 1).ok());
  EXPECT_TRUE(store_->GetContributionChunk(3, 3, 0, kChunks - 1).ok());
  auto sha1 = store_->GetBaseSha256(1);
  ASSERT_TRUE(sha1.ok()) << sha1.status();
  EXPECT_EQ(*sha1, std::string(32, 'b'));
  ASSERT_EQ(state.rounds.size(), 4u);
  EXPECT_TRUE(state.rounds[0].contributions_pruned());
  EXPECT_EQ(state.rounds[0].contributions_size(), 1);  // the record stays
  EXPECT_FALSE(state.rounds[2].contributions_pruned());
}

}  // namespace
}  // namespace coldfuse::storage

namespace coldfuse::storage {
namespace {

TEST_F(StoreTest, ACheckpointOpensAsAStoreAndOneLeftByACrashIsRemovedAtOpen) {
  Init();
  const std::string mib(1 << 20, 'y');
  for (int c = 0; c < 8; ++c) ASSERT_TRUE(store_->PutBaseChunk(1, 0, c, mib).ok());
  v1::RoundInfo closed = OpenRound(1, 0, 1000);
  closed.set_state(v1::CLOSED);
  closed.set_result_base_version(1);
  ASSERT_TRUE(store_->CommitRoundClose(closed, 1, kSha1, OpenRound(2, 1, 2000), {}).ok());
  auto before = store_->DiskBytes();
  ASSERT_TRUE(before.ok()) << before.status();
  auto checkpoint = store_->CreateCheckpoint();
  ASSERT_TRUE(checkpoint.ok()) << checkpoint.status();
  EXPECT_EQ(std::filesystem::path(*checkpoint).parent_path(), std::filesystem::path(dir_.path()));
  // Its table and blob files are links: the folder does not count them twice.
  auto with = store_->DiskBytes();
  ASSERT_TRUE(with.ok()) << with.status();
  EXPECT_LT(*with, *before + (uint64_t{2} << 20));
  {
    auto copy = Store::Open(*checkpoint, StoreOptions());
    ASSERT_TRUE(copy.ok()) << copy.status();
    auto state = (*copy)->Load();
    ASSERT_TRUE(state.ok()) << state.status();
    EXPECT_EQ(state->current_base, 1u);
    EXPECT_EQ(state->current_base_sha256, kSha1);
    auto chunk = (*copy)->GetBaseChunk(1, 0, 7);
    ASSERT_TRUE(chunk.ok()) << chunk.status();
    EXPECT_EQ(*chunk, mib);
  }
  // A crash before the backup ended leaves the checkpoint: the next open removes it.
  Reopen();
  EXPECT_FALSE(std::filesystem::exists(*checkpoint));
  EXPECT_EQ(MustLoad().current_base, 1u);
}

}  // namespace
}  // namespace coldfuse::storage
