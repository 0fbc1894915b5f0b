#include "common/safetensors.h"

#include <cerrno>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "common/model_spec.h"
#include "common/posix_file.h"
#include "common/tensor.h"
#include "common/test_tensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

std::string U64(uint64_t v) { return std::string(reinterpret_cast<const char*>(&v), 8); }

// A safetensors file with any header text and data bytes.
std::string Craft(const std::string& header, const std::string& data) {
  return U64(header.size()) + header + data;
}

// One header entry: "name":{"dtype":...,"shape":...,"data_offsets":[b,e]}.
std::string Entry(const std::string& name, const std::string& dtype, const std::string& shape,
                  uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"" + dtype + "\",\"shape\":" + shape +
         ",\"data_offsets\":[" + std::to_string(begin) + "," + std::to_string(end) + "]}";
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "safetensors_test.XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr) << std::strerror(errno);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::error_code ec;
    fs::remove_all(dir_, ec);
  }

  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  std::string Put(const std::string& name, const std::string& contents) {
    std::string p = Path(name);
    EXPECT_TRUE(WriteFileAtomic(p, contents).ok());
    return p;
  }

  // Writes `file`, opens it and expects `code` with a message naming the file and `what`.
  void ExpectOpenFails(const std::string& file, absl::StatusCode code, const std::string& what) {
    std::string p = Put("bad.safetensors", file);
    auto f = SafetensorsFile::Open(p);
    ASSERT_FALSE(f.ok()) << "accepted: " << what;
    EXPECT_EQ(f.status().code(), code) << f.status();
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(p));
    EXPECT_THAT(std::string(f.status().message()), HasSubstr(what));
  }

  void ExpectInvalid(const std::string& file, const std::string& what) {
    ExpectOpenFails(file, absl::StatusCode::kInvalidArgument, what);
  }

  static absl::Status WriteAll(SafetensorsWriter* w, const std::vector<HostTensor>& tensors,
                               size_t piece) {
    for (const auto& t : tensors) {
      for (size_t off = 0; off < t.data.size(); off += piece) {
        absl::Status st = w->Append(absl::string_view(t.data).substr(off, piece));
        if (!st.ok()) return st;
      }
    }
    return w->Finish();
  }

  std::string dir_;
};

std::vector<HostTensor> Sample() {
  return {MakeTensor("body.0.weight", v1::F32, {16, 8}, 1),
          MakeTensor("body.0.bias", v1::F16, {16}, 2), MakeTensor("empty", v1::BF16, {0, 3}, 3),
          MakeTensor("scalar", v1::F64, {}, 4), MakeTensor("a.last", v1::BF16, {3, 5}, 5)};
}

TEST_F(SafetensorsTest, WriterRoundTripsWithMetadataAndEmptyTensor) {
  std::vector<HostTensor> tensors = Sample();
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note \"q\"", "caf\xC3\xA9"}};
  std::string path = Path("m.safetensors");
  auto w = SafetensorsWriter::Create(path, ManifestOf(tensors), meta);
  ASSERT_TRUE(w.ok()) << w.status();
  ASSERT_TRUE(WriteAll(w->get(), tensors, 7).ok());

  auto f = SafetensorsFile::Open(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ((*f)->metadata(), meta);
  const auto& entries = (*f)->entries();
  ASSERT_EQ(entries.size(), tensors.size());
  uint64_t offset = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {  // file order is manifest order
    const SafetensorsEntry& e = entries[i];
    EXPECT_EQ(e.name, tensors[i].spec.name());
    EXPECT_EQ(e.dtype, tensors[i].spec.dtype());
    EXPECT_EQ(e.dtype_name, DTypeName(tensors[i].spec.dtype()));
    EXPECT_EQ(e.shape,
              std::vector<int64_t>(tensors[i].spec.shape().begin(), tensors[i].spec.shape().end()));
    EXPECT_EQ(e.begin, offset);
    offset = e.end;
    EXPECT_EQ((*f)->Data(e), tensors[i].data) << e.name;
    EXPECT_EQ((*f)->Find(e.name), &e);
  }
  EXPECT_EQ((*f)->Find("nope"), nullptr);
  EXPECT_EQ(entries[2].begin, entries[2].end);  // the 0-element tensor

  std::string raw = *ReadFileToString(path);
  uint64_t n;
  std::memcpy(&n, raw.data(), 8);
  EXPECT_EQ(n % 8, 0u);  // header padded with spaces, as the reference does
  EXPECT_EQ(raw[8 + n - 1] == ' ' || raw[8 + n - 1] == '}', true);
  EXPECT_EQ(raw.substr(8, 16), "{\"__metadata__\":");
}

// Whole files in memory, as the contributor's state folder keeps them: read back exactly
// as given, order included, even for zero-size tensors sharing an offset.
TEST_F(SafetensorsTest, WholeFilesRoundTripInTheOrderGiven) {
  std::vector<HostTensor> tensors = Sample();
  tensors.insert(tensors.begin() + 3, MakeTensor("z.empty", v1::F32, {0}, 6));
  tensors.insert(tensors.begin() + 4, MakeTensor("b.empty", v1::F16, {2, 0}, 7));
  const std::map<std::string, std::string> meta = {{"format", "pt"}, {"k", "v"}};
  const std::string path = Path("state.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, tensors, meta).ok());
  ASSERT_TRUE(WriteSafetensors(path, tensors, meta).ok());  // over an existing file
  EXPECT_EQ(std::vector<fs::path>(fs::directory_iterator(dir_), {}),
            std::vector<fs::path>{path});  // no temp files left

  std::map<std::string, std::string> got_meta;
  auto got = ReadSafetensors(path, &got_meta);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got_meta, meta);
  ASSERT_EQ(got->size(), tensors.size());
  for (size_t i = 0; i < tensors.size(); ++i) {
    EXPECT_EQ((*got)[i].spec.SerializeAsString(), tensors[i].spec.SerializeAsString()) << i;
    EXPECT_TRUE((*got)[i].data == tensors[i].data) << i;
  }
}

TEST_F(SafetensorsTest, WholeFileWriteChecksSizesAndKeepsTheOldFile) {
  const std::string path = Path("state.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, Sample()).ok());
  std::vector<HostTensor> bad = Sample();
  bad[1].data.pop_back();
  absl::Status st = WriteSafetensors(path, bad);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("body.0.bias"));
  auto got = ReadSafetensors(path);
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->size(), Sample().size());
  EXPECT_EQ(ReadSafetensors(Path("missing.safetensors")).status().code(),
            absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, WholeFileReadNamesATensorOfAnotherDtype) {
  std::string p =
      Put("ids.safetensors",
          Craft("{" + Entry("position_ids", "I64", "[1]", 0, 8) + "}", std::string(8, '\0')));
  absl::Status st = ReadSafetensors(p).status();
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  EXPECT_THAT(std::string(st.message()), HasSubstr("\"position_ids\" is I64"));
}

TEST_F(SafetensorsTest, WriterChecksByteCounts) {
  std::vector<HostTensor> tensors = Sample();
  std::string path = Path("w.safetensors");
  {
    auto w = SafetensorsWriter::Create(path, ManifestOf(tensors));
    ASSERT_TRUE(w.ok()) << w.status();
    ASSERT_TRUE((*w)->Append(tensors[0].data).ok());
    ASSERT_TRUE((*w)->Append(tensors[1].data.substr(0, 10)).ok());
    absl::Status st = (*w)->Finish();
    EXPECT_EQ(st.code(), absl::StatusCode::kFailedPrecondition);
    EXPECT_THAT(std::string(st.message()), HasSubstr("\"body.0.bias\" has 10 of its 32 bytes"));
    st = (*w)->Append(std::string(1000, 'x'));
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_THAT(std::string(st.message()), HasSubstr("would pass"));
  }  // abandoned: no file, no temp file
  EXPECT_TRUE(fs::is_empty(dir_));

  v1::Manifest named_meta;
  *named_meta.add_tensors() = tensors[0].spec;
  named_meta.mutable_tensors(0)->set_name("__metadata__");
  EXPECT_EQ(SafetensorsWriter::Create(path, named_meta).status().code(),
            absl::StatusCode::kInvalidArgument);
}

TEST_F(SafetensorsTest, WriteCheckpointShardsAndReadsBack) {
  std::vector<HostTensor> tensors = {
      MakeTensor("z.big", v1::F32, {600, 600}, 1),  // 1.44 MB: own shard, chunked reads
      MakeTensor("b.small", v1::F16, {100}, 2), MakeTensor("c.small", v1::BF16, {50}, 3),
      MakeTensor("a.empty", v1::F32, {0}, 4), MakeTensor("d.mid", v1::F64, {200}, 5)};
  v1::Manifest manifest = ManifestOf(tensors);
  int reads = 0;
  auto read = [&](uint32_t i, uint64_t off, uint64_t len, std::string* out) {
    ++reads;
    out->assign(tensors[i].data, off, len);
    return absl::OkStatus();
  };
  std::string out = Path("ckpt");
  ASSERT_TRUE(WriteCheckpoint(out, manifest, 1000, read).ok());
  EXPECT_EQ(reads, 2 + 3);  // the big tensor in two 1 MiB chunks; no read for the empty one
  EXPECT_TRUE(fs::exists(fs::path(out) / "model.safetensors.index.json"));
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors"));
  // Shards: [z.big] [b.small c.small a.empty] [d.mid] (200 + 100 + 0 + 1600 > 1000).
  EXPECT_TRUE(fs::exists(fs::path(out) / "model-00003-of-00003.safetensors"));

  for (const std::string& open_path : {out, out + "/model.safetensors.index.json"}) {
    auto c = Checkpoint::Open(open_path);
    ASSERT_TRUE(c.ok()) << c.status();
    EXPECT_EQ((*c)->files().size(), 3u);
    std::vector<const SafetensorsEntry*> entries = (*c)->Entries();
    ASSERT_EQ(entries.size(), tensors.size());
    for (size_t i = 1; i < entries.size(); ++i) EXPECT_LT(entries[i - 1]->name, entries[i]->name);
    for (const auto& t : tensors) {
      const SafetensorsEntry* e = (*c)->Find(t.spec.name());
      ASSERT_NE(e, nullptr) << t.spec.name();
      EXPECT_EQ(e->dtype, t.spec.dtype());
      EXPECT_EQ((*c)->Data(*e), t.data) << t.spec.name();
    }
    EXPECT_EQ((*c)->files()[0]->metadata().at("format"), "pt");
  }
  std::string index = *ReadFileToString(out + "/model.safetensors.index.json");
  EXPECT_THAT(index, HasSubstr("\"total_size\": 1441900"));
  EXPECT_THAT(index, HasSubstr("\"z.big\": \"model-00001-of-00003.safetensors\""));

  // Writing again into the same folder refuses rather than mixing stale shards.
  absl::Status again = WriteCheckpoint(out, manifest, 1000, read);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(SafetensorsTest, WriteCheckpointSingleFileAndShortRead) {
  std::vector<HostTensor> tensors = Sample();
  auto read = [&](uint32_t i, uint64_t off, uint64_t len, std::string* out) {
    out->assign(tensors[i].data, off, len);
    return absl::OkStatus();
  };
  std::string out = Path("single");
  ASSERT_TRUE(WriteCheckpoint(out, ManifestOf(tensors), uint64_t{1} << 30, read).ok());
  EXPECT_FALSE(fs::exists(fs::path(out) / "model.safetensors.index.json"));
  auto c = Checkpoint::Open(out);
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_EQ((*c)->Entries().size(), tensors.size());
  auto file = Checkpoint::Open(out + "/model.safetensors");
  ASSERT_TRUE(file.ok()) << file.status();

  auto short_read = [&](uint32_t i, uint64_t off, uint64_t len, std::string* out) {
    out->assign(tensors[i].data, off, len / 2);
    return absl::OkStatus();
  };
  std::string out2 = Path("short");
  absl::Status st = WriteCheckpoint(out2, ManifestOf(tensors), 100, short_read);
  EXPECT_EQ(st.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(st.message()), HasSubstr("\"body.0.weight\""));
  EXPECT_TRUE(fs::is_empty(out2));  // nothing partial left behind
}

TEST_F(SafetensorsTest, AcceptsReferenceLayouts) {
  // Keys out of offset order, padding, a zero-size tensor sharing an offset; no tensors
  // (with whitespace around the object, which the reference also accepts).
  std::string header = "{" + Entry("b", "I64", "[1]", 2, 10) + "," + Entry("a", "U8", "[2]", 0, 2) +
                       "," + Entry("e", "BOOL", "[0]", 2, 2) + ",\"__metadata__\":null}   ";
  auto f = SafetensorsFile::Open(Put("ok.safetensors", Craft(header, std::string(10, 'x'))));
  ASSERT_TRUE(f.ok()) << f.status();
  ASSERT_EQ((*f)->entries().size(), 3u);
  EXPECT_EQ((*f)->entries()[0].name, "a");
  EXPECT_EQ((*f)->entries()[1].name, "e");
  EXPECT_EQ((*f)->entries()[2].name, "b");
  EXPECT_EQ((*f)->entries()[2].dtype, v1::DTYPE_UNSPECIFIED);
  EXPECT_EQ((*f)->entries()[2].dtype_name, "I64");
  EXPECT_TRUE(SafetensorsFile::Open(Put("none.safetensors", Craft(" {} ", ""))).ok());
}

TEST_F(SafetensorsTest, RejectsBadHeaderLengths) {
  ExpectOpenFails(U64(1000) + "{}", absl::StatusCode::kInvalidArgument,
                  "header length 1000 runs past the end of the file (10 bytes)");
  ExpectInvalid(U64(100'000'001) + "{}", "header length 100000001 exceeds the limit");
  ExpectOpenFails("abc", absl::StatusCode::kInvalidArgument, "it has 3 bytes");
  ExpectInvalid(Craft("[]", ""), "header must be a JSON object, not array");
  auto missing = SafetensorsFile::Open(Path("missing.safetensors"));
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
}

TEST_F(SafetensorsTest, RejectsMalformedHeaders) {
  std::string data4(4, 'x');
  ExpectInvalid(Craft("{\"a\xff\":{}}", ""), "invalid UTF-8 at byte 3");
  ExpectInvalid(Craft("{\"a\":", ""), "invalid JSON");
  ExpectInvalid(Craft("{" + Entry("a", "F4", "[1]", 0, 1) + "}", "x"),
                "unknown dtype \"F4\"; expected one of BOOL");
  ExpectInvalid(Craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4],"
                      "\"offset\":0}}",
                      data4),
                "tensor \"a\" has unexpected field \"offset\"");
  ExpectInvalid(Craft("{\"a\":{\"dtype\":\"F32\",\"shape\":[1]}}", data4),
                "tensor \"a\" lacks data_offsets");
  ExpectInvalid(Craft("{" + Entry("a", "F32", "[-1]", 0, 4) + "}", data4),
                "tensor \"a\" shape[0] is -1; dimensions must be non-negative integers");
  ExpectInvalid(Craft("{" + Entry("a", "F32", "[1.5]", 0, 4) + "}", data4), "shape[0] is 1.5");
  ExpectInvalid(Craft("{" + Entry("a", "F32", "[\"1\"]", 0, 4) + "}", data4), "shape[0] is string");
  ExpectInvalid(Craft("{" + Entry("a", "F32", "[2]", 0, 4) + "}", data4),
                "tensor \"a\" data_offsets [0, 4] hold 4 bytes but dtype F32 and shape [2] "
                "need 8");
  ExpectInvalid(Craft("{" + Entry("a", "F32", "[1099511627776,1099511627776]", 0, 4) + "}", data4),
                "shape [1099511627776, 1099511627776] overflows");
  ExpectInvalid(Craft("{" + Entry("a", "U8", "[4]", 4, 0) + "}", data4), "end before");
  ExpectInvalid(
      Craft("{" + Entry("a", "F32", "[1]", 0, 4) + "," + Entry("a", "F32", "[1]", 0, 4) + "}",
            data4),
      "duplicate object key \"a\"");
  ExpectInvalid(Craft("{\"__metadata__\":{\"k\":1}}", ""),
                "__metadata__ value for key \"k\" is a number");
  ExpectInvalid(Craft("{\"__metadata__\":[]}", ""), "__metadata__ must be an object");
  ExpectInvalid(Craft("{\"a\":[]}", ""), "tensor \"a\" must be an object");
}

TEST_F(SafetensorsTest, RejectsBadDataLayouts) {
  ExpectInvalid(
      Craft("{" + Entry("a", "U8", "[8]", 0, 8) + "," + Entry("b", "U8", "[8]", 4, 12) + "}",
            std::string(12, 'x')),
      "tensor \"b\" data_offsets [4, 12] overlap tensor \"a\" [0, 8]");
  ExpectInvalid(
      Craft("{" + Entry("a", "U8", "[4]", 0, 4) + "," + Entry("b", "U8", "[4]", 8, 12) + "}",
            std::string(12, 'x')),
      "gap of 4 bytes before tensor \"b\"");
  ExpectInvalid(Craft("{" + Entry("a", "U8", "[4]", 2, 6) + "}", std::string(6, 'x')),
                "gap of 2 bytes before tensor \"a\"");
  ExpectInvalid(Craft("{" + Entry("a", "U8", "[4]", 0, 4) + "}", std::string(6, 'x')),
                "2 trailing bytes after the last tensor");
  ExpectOpenFails(Craft("{" + Entry("a", "U8", "[8]", 0, 8) + "}", std::string(4, 'x')),
                  absl::StatusCode::kInvalidArgument, "its tensors need 8 data bytes but only 4");
}

TEST_F(SafetensorsTest, RejectsInconsistentShardIndex) {
  std::string a = Craft("{" + Entry("a", "U8", "[2]", 0, 2) + "}", "xy");
  std::string b = Craft("{" + Entry("b", "U8", "[1]", 0, 1) + "}", "z");
  Put("s1.safetensors", a);
  Put("s2.safetensors", b);
  auto open_with = [&](const std::string& index) {
    Put("model.safetensors.index.json", index);
    return Checkpoint::Open(dir_);
  };
  auto ok = open_with(R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors"}})");
  ASSERT_TRUE(ok.ok()) << ok.status();
  EXPECT_EQ((*ok)->Data(*(*ok)->Find("b")), "z");

  auto missing = open_with(R"({"weight_map": {"a": "s1.safetensors", "b": "gone.safetensors"}})");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()),
              HasSubstr("names shard \"gone.safetensors\""));

  auto absent = open_with(
      R"({"weight_map": {"a": "s1.safetensors", "b": "s2.safetensors", "c": "s2.safetensors"}})");
  EXPECT_EQ(absent.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(absent.status().message()),
              HasSubstr("maps tensor \"c\" to shard \"s2.safetensors\", which has no such tensor"));

  Put("s3.safetensors",
      Craft("{" + Entry("x", "U8", "[1]", 0, 1) + "," + Entry("y", "U8", "[1]", 1, 2) + "}", "pq"));
  auto unlisted = open_with(R"({"weight_map": {"x": "s3.safetensors"}})");
  EXPECT_EQ(unlisted.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(unlisted.status().message()),
              HasSubstr("holds tensor \"y\", which the weight_map does not list"));

  auto escape = open_with(R"({"weight_map": {"a": "../s1.safetensors"}})");
  EXPECT_EQ(escape.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(escape.status().message()), HasSubstr("file name in the index's"));

  auto no_map = open_with(R"({"metadata": {}})");
  EXPECT_EQ(no_map.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(std::string(no_map.status().message()), HasSubstr("weight_map"));

  auto empty = Checkpoint::Open(Path("nowhere"));
  EXPECT_EQ(empty.status().code(), absl::StatusCode::kNotFound);
}

}  // namespace
}  // namespace coldfuse
