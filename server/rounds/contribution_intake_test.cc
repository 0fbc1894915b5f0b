#include "server/rounds/contribution_intake.h"

#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <functional>
#include <limits>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/int8_delta.h"
#include "server/rounds/rounds_test_fixture.h"

namespace coldfuse::rounds {
namespace {

using namespace testing_fixture;  // NOLINT: the shared test helpers

class ContributionIntakeTest : public RoundsTest {};

// ------------------------------------------------------------------ admission

TEST_F(ContributionIntakeTest, ContributionIsListedInTheOpenRound) {
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

TEST_F(ContributionIntakeTest, StaleBaseVersionIsFailedPreconditionInSynchronousRounds) {
  Init();
  options_.max_staleness = 0;
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
  EXPECT_NE(r.status().message().find("--max_staleness=0"), std::string::npos) << r.status();
}

// The weight a contribution `s` fusions stale gets by default: FedBuff's 1/sqrt(1 + s).
double DefaultWeight(uint32_t s) { return 1.0 / std::sqrt(1.0 + s); }

// round base + w * (x - from), element-wise in double (what fusion feeds the mean).
std::vector<std::vector<float>> StaleInput(const std::vector<HostTensor>& round_base,
                                           const std::vector<HostTensor>& x,
                                           const std::vector<HostTensor>& from, double w) {
  std::vector<std::vector<float>> out;
  for (size_t t = 0; t < x.size(); ++t) {
    std::vector<float> b = ValuesOf<float>(round_base[t].data);
    std::vector<float> v = ValuesOf<float>(x[t].data);
    std::vector<float> f = ValuesOf<float>(from[t].data);
    std::vector<float> r(v.size());
    for (size_t i = 0; i < v.size(); ++i) {
      r[i] = static_cast<float>(double{b[i]} + w * (double{v[i]} - double{f[i]}));
    }
    out.push_back(std::move(r));
  }
  return out;
}

TEST_F(ContributionIntakeTest, AStaleContributionIsFusedAsItsOwnWeightedDeltaOnTheRoundsBase) {
  Init();
  Reconfigure(/*min_contributions=*/1, /*round_timeout_ms=*/0);
  const v1::ContributionHeader from_v0 = Header("bob");  // bob pulls v0 in round 1 ...
  const std::vector<HostTensor> a = MustContribute("alice", 2);
  ASSERT_TRUE(*manager_->MaybeClose());  // ... alice's round makes v1 while bob trains
  const std::vector<HostTensor> v1_base = ReadBase(1);
  Reconfigure(/*min_contributions=*/2, /*round_timeout_ms=*/0);

  const std::vector<HostTensor> b = Body(kSpec, 3);
  auto r = Contribute(from_v0, b);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->round, 2u);  // counted in the open round, not the one bob named
  const std::vector<HostTensor> c = MustContribute("carol", 4);  // fresh, from v1
  ASSERT_TRUE(*manager_->MaybeClose());

  const v1::ContributionInfo bob = ContributionOf(2, "bob");
  EXPECT_EQ(bob.trained_from_base(), 0u);
  EXPECT_EQ(bob.staleness(), 1u);
  EXPECT_DOUBLE_EQ(bob.staleness_weight(), DefaultWeight(1));
  EXPECT_EQ(bob.upload_round(), 2u);
  // bob's delta norm is against v0, the base he trained from.
  EXPECT_NEAR(bob.delta_norm(), DeltaL2(b, base0_), 1e-9 * DeltaL2(b, base0_));
  const v1::ContributionInfo carol = ContributionOf(2, "carol");
  EXPECT_EQ(carol.trained_from_base(), 1u);
  EXPECT_EQ(carol.staleness(), 0u);
  EXPECT_EQ(carol.staleness_weight(), 1.0);

  // v2 = mean(carol, v1 + w (bob - v0)).
  const auto stale = StaleInput(v1_base, b, base0_, DefaultWeight(1));
  std::vector<std::vector<float>> want;
  for (size_t t = 0; t < c.size(); ++t) {
    std::vector<float> cv = ValuesOf<float>(c[t].data);
    std::vector<float> w(cv.size());
    for (size_t i = 0; i < cv.size(); ++i) {
      w[i] = static_cast<float>(0.5 * double{cv[i]} + 0.5 * double{stale[t][i]});
    }
    want.push_back(std::move(w));
  }
  ExpectTensorsEqual(ReadBase(), want);
}

TEST_F(ContributionIntakeTest,
       BeyondMaxStalenessIsFailedPreconditionNamingTheBoundAndStoresNothing) {
  Init();
  options_.max_staleness = 1;
  Reconfigure(/*min_contributions=*/1, /*round_timeout_ms=*/0);
  std::vector<v1::ContributionHeader> pulled;  // what a contributor saw at each base
  for (int v = 0; v < 3; ++v) {
    pulled.push_back(Header("bob"));
    MustContribute("alice", 10 + v);
    ASSERT_TRUE(*manager_->MaybeClose());
  }
  pulled.push_back(Header("bob"));
  ASSERT_EQ(pulled[3].base_version(), 3u);
  const uint64_t next_id = 4;  // alice's were 1..3

  auto r = Contribute(pulled[1], Body(kSpec, 5));  // from v1: 2 fusions old
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  const std::string msg(r.status().message());
  for (const char* says :
       {"base v1", "2 fusions older", "--max_staleness=1", "v3, v2", "pull the current base v3"}) {
    EXPECT_NE(msg.find(says), std::string::npos) << says << " in: " << msg;
  }
  EXPECT_EQ(manager_->GetRoundInfo(4)->contributions_size(), 0);
  EXPECT_EQ(store_->GetContributionChunk(4, next_id, 0, 0).status().code(),
            absl::StatusCode::kNotFound);

  auto ok = Contribute(pulled[2], Body(kSpec, 6));  // from v2: 1 fusion old
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ(ContributionOf(4, "bob").staleness(), 1u);
}

TEST_F(ContributionIntakeTest, AContributionFromARolledBackBaseIsRefusedSayingSo) {
  Init();
  Reconfigure(/*min_contributions=*/1, /*round_timeout_ms=*/0);
  MustContribute("alice", 2);
  ASSERT_TRUE(*manager_->MaybeClose());
  const v1::ContributionHeader from_v1 = Header("bob");
  MustContribute("alice", 3);
  ASSERT_TRUE(*manager_->MaybeClose());
  ASSERT_TRUE(manager_->RollbackBase(0, "bad data", "op").ok());  // v1 and v2 bad

  auto r = Contribute(from_v1, Body(kSpec, 4));
  ASSERT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition) << r.status();
  EXPECT_NE(r.status().message().find("rolled back"), std::string::npos) << r.status();
  // After the rollback, v0 is current again: a contribution from it is fresh.
  const v1::ContributionHeader from_v0 = Header("carol");
  EXPECT_EQ(from_v0.base_version(), 0u);
  ASSERT_TRUE(Contribute(from_v0, Body(kSpec, 5)).ok());
}

TEST_F(ContributionIntakeTest, ARoundNotYetOpenOrZeroIsFailedPrecondition) {
  Init();
  v1::ContributionHeader h = Header("alice");
  h.set_round(2);
  EXPECT_EQ(Contribute(h, Body(kSpec, 2)).status().code(), absl::StatusCode::kFailedPrecondition);
  h.set_round(0);
  EXPECT_EQ(Contribute(h, Body(kSpec, 2)).status().code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ContributionIntakeTest, HeaderManifestMismatchIsInvalidArgumentAndStoresNothing) {
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
    EXPECT_EQ(intake_->Begin(h).status().code(), absl::StatusCode::kInvalidArgument) << c.what;
  }
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
  Restart();
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
  // alice was not marked as having contributed.
  MustContribute("alice", 2);
}

TEST_F(ContributionIntakeTest, DataNotMatchingTheManifestIsInvalidArgumentAndStoresNothing) {
  Init();
  std::vector<HostTensor> t = Body(kSpec, 2);
  {
    auto up = intake_->Begin(Header("alice"));
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
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 0).status().code(), absl::StatusCode::kNotFound);
  {
    auto up = intake_->Begin(Header("alice"));
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
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 0).status().code(), absl::StatusCode::kNotFound);
}

TEST_F(ContributionIntakeTest, BadChecksumIsInvalidArgumentAndStoresNothing) {
  Init();
  std::vector<HostTensor> t = Body(kSpec, 2);
  {
    auto up = intake_->Begin(Header("alice"));
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

TEST_F(ContributionIntakeTest, SameContributorTwiceInARoundIsAlreadyExists) {
  Init();
  MustContribute("alice", 2);
  EXPECT_EQ(Contribute(Header("alice"), Body(kSpec, 3)).status().code(),
            absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 1);
}

TEST_F(ContributionIntakeTest, SameContributorRacingTwoUploadsGetsOneAccepted) {
  Init();
  auto first = intake_->Begin(Header("alice"));
  auto second = intake_->Begin(Header("alice"));
  ASSERT_TRUE(first.ok() && second.ok());
  std::vector<HostTensor> t = Body(kSpec, 2);
  EXPECT_TRUE(Send(first->get(), t).ok());
  EXPECT_EQ(Send(second->get(), t).status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 1);
}

TEST_F(ContributionIntakeTest, BadContributorNameOrZeroExamplesIsInvalidArgument) {
  Init();
  for (const char* name : {"", "bad name", "semi;colon", "slash/name"}) {
    EXPECT_EQ(intake_->Begin(Header(name)).status().code(), absl::StatusCode::kInvalidArgument)
        << "'" << name << "'";
  }
  EXPECT_EQ(intake_->Begin(Header(std::string(129, 'a'))).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(intake_->Begin(Header("alice", 0)).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(intake_->Begin(Header("alice.o-k_1@lab")).ok());
}

TEST_F(ContributionIntakeTest, AnUploadInFlightWhenItsRoundClosesGoesToTheNextRound) {
  Init();
  const std::vector<HostTensor> a = MustContribute("alice", 2);
  auto up = intake_->Begin(Header("bob"));
  ASSERT_TRUE(up.ok()) << up.status();
  const std::vector<HostTensor> b = Body(kSpec, 3);
  ASSERT_TRUE(SendChunks(up->get(), b).ok());
  const uint64_t bob_id = 2;  // ids are handed out in order
  ASSERT_TRUE(manager_->CloseRound(std::nullopt, "operator", "op").ok());  // v1 = a

  auto r = (*up)->Finish(TrailerFor(b));
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->round, 2u);
  up->reset();
  const v1::ContributionInfo bob = ContributionOf(2, "bob");
  EXPECT_EQ(bob.staleness(), 1u);
  EXPECT_EQ(bob.upload_round(), 1u);  // its chunks stay where they were written
  EXPECT_TRUE(store_->GetContributionChunk(1, bob_id, 0, 0).ok());

  // A restart (which removes chunks no record points at) keeps them, and they fuse.
  Restart();
  ASSERT_TRUE(manager_->CloseRound(std::nullopt, "operator", "op").ok());
  ExpectTensorsEqual(ReadBase(), StaleInput(ReadBase(1), b, base0_, DefaultWeight(1)));
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 1);
}

TEST_F(ContributionIntakeTest, UploadInFlightWhenTheRoundClosesIsRefusedInSynchronousRounds) {
  Init();
  options_.max_staleness = 0;
  CreateManager();
  std::vector<HostTensor> a = MustContribute("alice", 2);
  auto up = intake_->Begin(Header("bob"));
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

TEST_F(ContributionIntakeTest, NonFiniteContributionIsInvalidArgumentAndStoresNothing) {
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
      auto up = intake_->Begin(Header(c.contributor));
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

TEST_F(ContributionIntakeTest, NonFiniteValueInALaterStorageChunkNamesItsElement) {
  // body.0.weight is 500 x 600 F32: two storage chunks.
  Init(v1::MEAN, "mlp:600,500");
  std::vector<HostTensor> t = Body(spec_, 2);
  std::vector<float> w = ValuesOf<float>(t[0].data);
  const size_t bad = kChunkBytes / sizeof(float) + 5;
  w[bad] = std::nanf("");
  t[0].data = BytesOf(w);
  auto r = Contribute(Header("alice"), t);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), absl::StrCat("element ", bad))) << r.status();
  EXPECT_EQ(store_->GetContributionChunk(1, 1, 0, 0).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);
}

TEST_F(ContributionIntakeTest, F16ManifestCarryingF32BytesIsNamedAsADtypeProblem) {
  // The same byte count as F16 elements of twice the count: only the values give it
  // away. The message must not only blame training.
  Init(v1::MEAN, "mlp:600,500");
  std::vector<HostTensor> t = Body(spec_, 2);
  v1::ContributionHeader h = Header("alice");
  HostTensor& w = t[0];
  // The F32 bytes of the first half of the weights fill exactly an F16 tensor; their low
  // mantissa halves, read as F16, hit the NaN/Inf exponent about once in 32 elements.
  w.data.resize(w.data.size() / 2);
  h.mutable_manifest()->mutable_tensors(0)->set_dtype(v1::F16);
  w.spec.set_dtype(v1::F16);
  auto r = Contribute(h, t);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "read as F16")) << r.status();
  EXPECT_TRUE(absl::StrContains(r.status().message(), "really is F16")) << r.status();
}

TEST_F(ContributionIntakeTest, DeltaNormIsTheL2NormOfTheUpdate) {
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

// `x` minus base v0 as DELTA_INT8 tensors (scales, then values, per tensor) with
// `block` values per scale; `decoded` gets q·s per tensor.
std::vector<HostTensor> Int8Delta(const std::vector<HostTensor>& x,
                                  const std::vector<HostTensor>& base, uint32_t block,
                                  std::vector<std::vector<double>>* decoded) {
  std::vector<HostTensor> out;
  for (size_t t = 0; t < x.size(); ++t) {
    std::vector<float> xv = ValuesOf<float>(x[t].data), bv = ValuesOf<float>(base[t].data);
    const size_t n = xv.size(), blocks = (n + block - 1) / block;
    std::vector<double> d(n);
    for (size_t i = 0; i < n; ++i) d[i] = static_cast<double>(xv[i]) - bv[i];
    HostTensor scales, values;
    scales.spec.set_name(x[t].spec.name() + "#scale");
    scales.spec.set_dtype(v1::F32);
    scales.spec.add_shape(static_cast<int64_t>(blocks));
    values.spec = x[t].spec;
    values.spec.set_dtype(v1::I8);
    values.data.resize(n);
    decoded->emplace_back(n);
    for (size_t b = 0; b < blocks; ++b) {
      const size_t b0 = b * block, bn = std::min<size_t>(block, n - b0);
      const float s = Int8BlockScale(&d[b0], bn);
      scales.data.append(reinterpret_cast<const char*>(&s), 4);
      QuantizeInt8Block(&d[b0], bn, s, reinterpret_cast<int8_t*>(&values.data[b0]));
      for (size_t i = b0; i < b0 + bn; ++i) {
        decoded->back()[i] = static_cast<int8_t>(values.data[i]) * static_cast<double>(s);
      }
    }
    out.push_back(scales);
    out.push_back(values);
  }
  return out;
}

// An 8-bit delta is accepted with the norm of its decoded update and fused as base + q·s;
// malformed ones are refused at the header or at the data, storing nothing.
TEST_F(ContributionIntakeTest, An8BitDeltaIsFusedAsItsDecodedUpdate) {
  Init();
  const std::vector<HostTensor> x = Body(kSpec, 2);
  std::vector<std::vector<double>> decoded;
  const std::vector<HostTensor> sent = Int8Delta(x, base0_, 8, &decoded);
  v1::ContributionHeader h = Header("alice");
  h.set_encoding(v1::DELTA_INT8);
  h.set_int8_block_size(8);
  *h.mutable_manifest() = *Int8DeltaManifest(h.manifest(), 8);

  struct Case {
    const char* what;
    std::function<void(v1::ContributionHeader*)> edit;
  };
  for (const Case& c : std::vector<Case>{
           {"block of 7", [](v1::ContributionHeader* b) { b->set_int8_block_size(7); }},
           {"block without DELTA_INT8",
            [](v1::ContributionHeader* b) { b->set_encoding(v1::DELTA); }},
           {"the manifest of another block",
            [](v1::ContributionHeader* b) { b->set_int8_block_size(16); }},
           {"values before scales",
            [](v1::ContributionHeader* b) {
              b->mutable_manifest()->mutable_tensors()->SwapElements(0, 1);
            }},
       }) {
    v1::ContributionHeader bad = h;
    c.edit(&bad);
    EXPECT_EQ(intake_->Begin(bad).status().code(), absl::StatusCode::kInvalidArgument) << c.what;
  }
  v1::ContributionHeader full_i8 = Header("alice");
  full_i8.mutable_manifest()->mutable_tensors(0)->set_dtype(v1::I8);
  auto refused = intake_->Begin(full_i8);
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(refused.status().message(), "has no float dtype"))
      << refused.status();
  // A negative scale.
  std::vector<HostTensor> negative = sent;
  const float minus = -1.0f;
  std::memcpy(negative[0].data.data(), &minus, 4);
  auto r = Contribute(h, negative);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(absl::StrContains(r.status().message(), "never negative")) << r.status();
  EXPECT_EQ(manager_->GetRoundInfo(1)->contributions_size(), 0);

  ASSERT_TRUE(Contribute(h, sent).ok());
  const v1::ContributionInfo info = ContributionOf(1, "alice");
  EXPECT_EQ(info.encoding(), v1::DELTA_INT8);
  EXPECT_EQ(info.int8_block_size(), 8u);
  double sum_sq = 0;
  for (const auto& t : decoded) {
    for (double u : t) sum_sq += u * u;
  }
  EXPECT_NEAR(info.delta_norm(), std::sqrt(sum_sq), 1e-12 * std::sqrt(sum_sq));
  Restart();  // the record keeps the encoding and block size
  EXPECT_EQ(ContributionOf(1, "alice").int8_block_size(), 8u);
  MustContribute("bob", 3);
  MustContribute("carol", 4);
  MustClose();
  // Rule 1: alice's tensors enter as f32(b + q·s); then rule 2's F32 mean.
  std::vector<HostTensor> alice = base0_;
  for (size_t t = 0; t < alice.size(); ++t) {
    std::vector<float> b = ValuesOf<float>(base0_[t].data);
    for (size_t i = 0; i < b.size(); ++i) {
      const float v = static_cast<float>(b[i] + decoded[t][i]);
      std::memcpy(&alice[t].data[4 * i], &v, 4);
    }
  }
  ExpectTensorsEqual(ReadBase(1), ExpectedFusion({alice, Body(kSpec, 3), Body(kSpec, 4)},
                                                 {1.0 / 3, 1.0 / 3, 1.0 / 3}));
}

TEST_F(ContributionIntakeTest, UploadsPerRoundQuotaCountsRejectedUploadsNotBrokenConnections) {
  Init();
  intake_options_.max_uploads_per_round = 2;
  CreateManager();
  // An upload without an upload_id whose connection broke leaves nothing behind and
  // does not count: a client on a flaky network is not locked out by its own retries.
  for (int i = 0; i < 3; ++i) {
    auto up = intake_->Begin(Header("alice"));
    ASSERT_TRUE(up.ok()) << "attempt " << i << ": " << up.status();
    ASSERT_TRUE(SendChunks(up->get(), Body(kSpec, 3)).ok());
  }  // each dropped mid-stream (the client went away)
  // Rejected uploads count: two failed uploads use up carol's quota.
  for (int i = 0; i < 2; ++i) {
    std::vector<HostTensor> t = Body(kSpec, 3);
    const v1::StreamTrailer trailer = TrailerFor(t);
    t[0].data[0] ^= 1;  // corrupted on the way
    auto up = intake_->Begin(Header("carol"));
    ASSERT_TRUE(up.ok()) << up.status();
    ASSERT_TRUE(SendChunks(up->get(), t).ok());
    EXPECT_EQ((*up)->Finish(trailer).status().code(), absl::StatusCode::kInvalidArgument);
  }
  EXPECT_EQ(Contribute(Header("carol"), Body(kSpec, 3)).status().code(),
            absl::StatusCode::kResourceExhausted);
  // Others are unaffected, alice's broken attempts included.
  MustContribute("bob", 4);
  MustContribute("alice", 6);
  // The quota is per round.
  MustClose();
  MustContribute("carol", 5);
}

TEST_F(ContributionIntakeTest, DailyBytesQuotaIsResourceExhaustedUntilTheNextDay) {
  Init();
  const uint64_t model_bytes = manager_->GetStatus().model().total_bytes();
  ASSERT_GT(model_bytes, 0u);
  intake_options_.max_bytes_per_day = 2 * model_bytes;  // exactly two uploads a day
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

}  // namespace
}  // namespace coldfuse::rounds
