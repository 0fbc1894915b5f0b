// The contributor's state folder: what it keeps reads back exactly, as plain safetensors;
// a damaged file is named, never trained on; and a folder written by the release that
// kept .ctf files keeps working after the upgrade.
#include "client/daemon/state.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/posix_file.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/tensor_stream.h"
#include "common/test_tensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse::daemon {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::vector<HostTensor> Body(uint64_t seed) {
  return {MakeTensor("body.0.weight", v1::F32, {16, 8}, seed),
          MakeTensor("body.0.bias", v1::F32, {16}, seed + 1),
          MakeTensor("body.1.weight", v1::BF16, {4, 16}, seed + 2)};
}

std::vector<HostTensor> Head(uint64_t seed) {
  return {MakeTensor("head.weight", v1::F32, {3, 4}, seed),
          MakeTensor("head.bias", v1::F32, {3}, seed + 1)};
}

// The .ctf layout of the previous release (legacy_ctf.h), as its WriteTensorFile wrote it.
std::string LegacyFile(const std::vector<HostTensor>& tensors) {
  std::string manifest = ManifestOf(tensors).SerializeAsString();
  uint64_t n = manifest.size();
  std::string data;
  for (const auto& t : tensors) data += t.data;
  return "CFTENSR1" + std::string(reinterpret_cast<const char*>(&n), 8) + manifest + data +
         Sha256::Of(data);
}

void ExpectSameTensors(const std::vector<HostTensor>& got, const std::vector<HostTensor>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_EQ(got[i].spec.SerializeAsString(), want[i].spec.SerializeAsString()) << i;
    EXPECT_TRUE(got[i].data == want[i].data) << want[i].spec.name();
  }
}

v1::ContributionHeader Header(uint64_t round) {
  v1::ContributionHeader h;
  h.set_round(round);
  h.set_base_version(round - 1);
  h.set_contributor("alice");
  h.set_num_examples(100);
  h.set_upload_id(absl::StrCat("upload-", round));
  *h.mutable_manifest() = ManifestOf(Body(round));
  return h;
}

class StateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "state_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }
  void Put(const std::string& name, const std::string& contents) {
    ASSERT_TRUE(WriteFileAtomic(Path(name), contents).ok());
  }
  std::set<std::string> Files() const {
    std::set<std::string> names;
    for (const auto& e : fs::directory_iterator(dir_)) names.insert(e.path().filename());
    return names;
  }
  // Opens the folder (again) into state_.
  void Open() {
    absl::StatusOr<StateDir> s = StateDir::Open(dir_);
    ASSERT_TRUE(s.ok()) << s.status();
    state_.emplace(std::move(*s));
  }

  std::string dir_;
  std::optional<StateDir> state_;
};

TEST_F(StateDirTest, WhatIsSavedReadsBackAsPlainSafetensors) {
  ASSERT_NO_FATAL_FAILURE(Open());
  StateDir& state = *state_;
  CachedBase base{4, TensorsSha256(Body(1)), Body(1)};
  ASSERT_TRUE(state.SaveBase(base).ok());
  ASSERT_TRUE(state.SaveHead(Head(10), {"neg", "pos", "neutral"}).ok());
  Contribution c{Header(5), Body(5)};
  ASSERT_TRUE(state.SavePending(c).ok());

  auto loaded = state.LoadBase();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status();
  EXPECT_EQ((*loaded)->version, 4u);
  ExpectSameTensors((*loaded)->tensors, Body(1));
  auto head = state.LoadHead();
  ASSERT_TRUE(head.ok()) << head.status();
  ExpectSameTensors(*head, Head(10));
  auto pending = state.LoadPending();
  ASSERT_TRUE(pending.ok() && pending->has_value()) << pending.status();
  EXPECT_EQ((*pending)->header.SerializeAsString(), c.header.SerializeAsString());
  ExpectSameTensors((*pending)->tensors, Body(5));

  ASSERT_TRUE(state.ArchivePending(5, 2).ok());
  EXPECT_EQ(Files(),
            (std::set<std::string>{"base.safetensors", "base.version", "head.safetensors",
                                   "head.labels", "contrib-r5.safetensors", "contrib-r5.header"}));
  EXPECT_EQ(state.HeadPath(), Path("head.safetensors"));
  // Any safetensors reader opens them: the format is the standard one.
  std::map<std::string, std::string> metadata;
  auto archived = ReadSafetensors(Path("contrib-r5.safetensors"), &metadata);
  ASSERT_TRUE(archived.ok()) << archived.status();
  ExpectSameTensors(*archived, Body(5));
  EXPECT_EQ(metadata["format"], "pt");
  EXPECT_EQ(metadata["coldfuse.sha256"], ToHex(TensorsSha256(Body(5))));
}

// A contribution the daemon sends as an 8-bit delta (coldfuse-client --encoding=delta_int8)
// waits in pending.* with its I8 values, and a restart resumes it from there.
TEST_F(StateDirTest, AnEightBitDeltaWaitingToBeSentReadsBack) {
  ASSERT_NO_FATAL_FAILURE(Open());
  StateDir& state = *state_;
  HostTensor scales = MakeTensor("body.0.bias#scale", v1::F32, {2}, 3);
  HostTensor values;
  values.spec.set_name("body.0.bias");
  values.spec.set_dtype(v1::I8);
  values.spec.add_shape(16);
  for (int i = 0; i < 16; ++i) values.data.push_back(static_cast<char>(i * 17 - 127));
  Contribution c{Header(6), {scales, values}};
  c.header.set_encoding(v1::DELTA_INT8);
  c.header.set_int8_block_size(8);
  *c.header.mutable_manifest() = ManifestOf(c.tensors);
  ASSERT_TRUE(state.SavePending(c).ok());

  ASSERT_NO_FATAL_FAILURE(Open());  // a restart
  auto pending = state_->LoadPending();
  ASSERT_TRUE(pending.ok() && pending->has_value()) << pending.status();
  EXPECT_EQ((*pending)->header.SerializeAsString(), c.header.SerializeAsString());
  ExpectSameTensors((*pending)->tensors, c.tensors);

  // Kept as sent; only a reader that expects 8-bit values reads it.
  ASSERT_TRUE(state_->ArchivePending(6, 1).ok());
  const std::string archived = Path("contrib-r6.safetensors");
  auto plain = ReadSafetensors(archived);
  EXPECT_EQ(plain.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(plain.status().message(), HasSubstr("\"body.0.bias\" is I8"));
  auto int8 = ReadSafetensors(archived, nullptr, /*allow_int8=*/true);
  ASSERT_TRUE(int8.ok()) << int8.status();
  ExpectSameTensors(*int8, c.tensors);
}

TEST_F(StateDirTest, ADamagedTensorFileIsDataLossNamingIt) {
  ASSERT_NO_FATAL_FAILURE(Open());
  StateDir& state = *state_;
  ASSERT_TRUE(state.SaveHead(Head(1)).ok());
  const std::string path = Path("head.safetensors");
  std::string file = *ReadFileToString(path);
  std::string flipped = file;
  flipped[file.size() - 3] ^= 0x10;  // a byte of head.bias: still a valid safetensors file
  for (const std::string& bad : {flipped, file.substr(0, file.size() - 4), std::string("xy")}) {
    Put("head.safetensors", bad);
    absl::Status st = state.LoadHead().status();
    EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
    EXPECT_THAT(std::string(st.message()), HasSubstr(path));
    EXPECT_THAT(std::string(st.message()), HasSubstr("delete it"));
  }
  // A safetensors file without the checksum (written by another program) is not trusted.
  ASSERT_TRUE(WriteSafetensors(path, Head(1)).ok());
  EXPECT_EQ(state.LoadHead().status().code(), absl::StatusCode::kDataLoss);
}

// A training run saved midway reads back exactly (tensors, values, what it continues),
// is removed once dropped, and a damaged one is DATA_LOSS naming the file.
TEST_F(StateDirTest, ASavedTrainingRunReadsBackExactly) {
  ASSERT_NO_FATAL_FAILURE(Open());
  StateDir& state = *state_;
  auto none = state.LoadTraining();
  ASSERT_TRUE(none.ok()) << none.status();
  EXPECT_FALSE(none->has_value());
  EXPECT_TRUE(state.DropTraining().ok());  // nothing to drop is fine

  SavedTraining t;
  t.key = "abc123";
  t.base_version = 7;
  t.checkpoint.step = 11;
  t.checkpoint.total = 24;
  t.checkpoint.tensors = Head(3);
  t.checkpoint.values = {{"text.losses", "0.5,0.25"}, {"torch.generator.cpu", "00ff"}};
  ASSERT_TRUE(state.SaveTraining(t).ok());
  auto back = state.LoadTraining();
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_TRUE(back->has_value());
  EXPECT_EQ((*back)->key, "abc123");
  EXPECT_EQ((*back)->base_version, 7u);
  EXPECT_EQ((*back)->checkpoint.step, 11);
  EXPECT_EQ((*back)->checkpoint.total, 24);
  EXPECT_EQ((*back)->checkpoint.values, t.checkpoint.values);
  ASSERT_EQ((*back)->checkpoint.tensors.size(), 2u);
  EXPECT_EQ((*back)->checkpoint.tensors[1].data, t.checkpoint.tensors[1].data);
  EXPECT_EQ(state.TrainingPath(), Path("training.safetensors"));

  std::string file = *ReadFileToString(Path("training.safetensors"));
  file[file.size() - 2] ^= 0x01;
  Put("training.safetensors", file);
  absl::Status st = state.LoadTraining().status();
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr(Path("training.safetensors")));
  ASSERT_TRUE(state.DropTraining().ok());
  EXPECT_FALSE(fs::exists(Path("training.safetensors")));
}

// A state folder as the release with .ctf files left it (written here in that format):
// after the upgrade every part of it loads as before, and it is converted once.
TEST_F(StateDirTest, AFolderOfTheOldReleaseIsConvertedOnceOnOpen) {
  const std::vector<HostTensor> base = Body(1);
  Put("base.ctf", LegacyFile(base));
  Put("base.version", absl::StrCat("7 ", ToHex(TensorsSha256(base)), "\n"));
  Put("head.ctf", LegacyFile(Head(2)));
  Put("head.labels", "neg\npos\nneutral\n");
  Put("pending.ctf", LegacyFile(Body(8)));
  Put("pending.header", Header(8).SerializeAsString());
  for (uint64_t r : {6, 7}) {
    Put(absl::StrCat("contrib-r", r, ".ctf"), LegacyFile(Body(r)));
    Put(absl::StrCat("contrib-r", r, ".header"), Header(r).SerializeAsString());
  }
  Put("last_round", "7\n");
  Put("notes.ctf", "not ours");  // only the state's own files are converted

  ASSERT_NO_FATAL_FAILURE(Open());
  StateDir& state = *state_;
  const std::set<std::string> converted = {
      "base.safetensors", "base.version",           "head.safetensors",
      "head.labels",      "pending.safetensors",    "pending.header",
      "last_round",       "contrib-r6.safetensors", "contrib-r6.header",
      "notes.ctf",        "contrib-r7.safetensors", "contrib-r7.header"};
  EXPECT_EQ(Files(), converted);
  auto loaded = state.LoadBase();
  ASSERT_TRUE(loaded.ok() && loaded->has_value()) << loaded.status();
  EXPECT_EQ((*loaded)->version, 7u);
  ExpectSameTensors((*loaded)->tensors, base);
  auto head = state.LoadHead();
  ASSERT_TRUE(head.ok()) << head.status();
  ExpectSameTensors(*head, Head(2));
  auto labels = state.LoadHeadLabels();
  ASSERT_TRUE(labels.ok() && labels->has_value());
  EXPECT_EQ(**labels, (std::vector<std::string>{"neg", "pos", "neutral"}));
  auto pending = state.LoadPending();
  ASSERT_TRUE(pending.ok() && pending->has_value()) << pending.status();
  EXPECT_EQ((*pending)->header.upload_id(), "upload-8");  // resumed, not retrained
  ExpectSameTensors((*pending)->tensors, Body(8));
  EXPECT_EQ(*state.LoadLastRound(), 7u);
  auto archived = ReadSafetensors(Path("contrib-r6.safetensors"));
  ASSERT_TRUE(archived.ok()) << archived.status();
  ExpectSameTensors(*archived, Body(6));

  // Opening again changes nothing; archiving counts the converted contributions.
  ASSERT_NO_FATAL_FAILURE(Open());
  EXPECT_EQ(Files(), converted);
  ASSERT_TRUE(state_->ArchivePending(8, 2).ok());
  EXPECT_FALSE(fs::exists(Path("contrib-r6.safetensors")));
  EXPECT_TRUE(fs::exists(Path("contrib-r7.safetensors")));
  EXPECT_TRUE(fs::exists(Path("contrib-r8.safetensors")));
}

// A conversion cut short (the new file written, the old one not yet removed) is finished
// by the next Open, keeping the new file.
TEST_F(StateDirTest, AConversionCutShortIsFinished) {
  ASSERT_NO_FATAL_FAILURE(Open());
  ASSERT_TRUE(state_->SaveHead(Head(3)).ok());
  Put("head.ctf", LegacyFile(Head(2)));
  ASSERT_NO_FATAL_FAILURE(Open());
  EXPECT_EQ(Files(), std::set<std::string>{"head.safetensors"});
  auto head = state_->LoadHead();
  ASSERT_TRUE(head.ok()) << head.status();
  ExpectSameTensors(*head, Head(3));
}

TEST_F(StateDirTest, ADamagedOldFileStopsOpenNamingItAndIsKept) {
  std::string file = LegacyFile(Head(2));
  file[file.size() - 1] ^= 0x01;
  Put("head.ctf", file);
  absl::StatusOr<StateDir> state = StateDir::Open(dir_);
  ASSERT_FALSE(state.ok());
  EXPECT_EQ(state.status().code(), absl::StatusCode::kDataLoss) << state.status();
  EXPECT_THAT(std::string(state.status().message()), HasSubstr(Path("head.ctf")));
  EXPECT_THAT(std::string(state.status().message()), HasSubstr("delete it"));
  EXPECT_EQ(Files(), std::set<std::string>{"head.ctf"});
}

}  // namespace
}  // namespace coldfuse::daemon
