// Bad input gets a status code and a message saying what to fix, and loses nothing that
// was stored: checked against the real coldfused over gRPC, and across a restart.
#include <cmath>
#include <cstring>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/model_spec.h"
#include "common/tensor_stream.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

constexpr char kSpec[] = "mlp:4,3,2";

class BadInputTest : public ::testing::Test {
 protected:
  void SetUp() override {
    // Many rejected uploads from one contributor below: lift the per-round limit.
    server_ = ServerProcess::Start(
        dir_.path() + "/db", dir_.path() + "/server.log",
        {"--min_contributions=2", "--round_timeout_s=0", "--max_uploads_per_round=100"});
    ASSERT_NE(server_, nullptr);
  }

  void Init() {
    auto r = RunCommand(
        {CtlBinary(), "--server=" + server_->address(), "init", std::string("--spec=") + kSpec});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  // A well-formed contribution to round 1 from base v0.
  static std::pair<v1::ContributionHeader, std::vector<HostTensor>> Good(std::string who) {
    auto spec = ParseModelSpec(kSpec);
    std::vector<HostTensor> tensors = InitMlpBody(*spec, 99);
    v1::ContributionHeader h;
    h.set_round(1);
    h.set_base_version(0);
    h.set_contributor(std::move(who));
    h.set_task("t");
    h.set_num_examples(10);
    *h.mutable_manifest() = ManifestOf(tensors);
    return {h, tensors};
  }

  // Sends requests as given (no checks client-side) and returns the server's status.
  grpc::Status RawPush(const std::vector<v1::PushContributionRequest>& requests) {
    auto stub = v1::Contributor::NewStub(server_->channel());
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(30));
    v1::ContributionReceipt receipt;
    auto writer = stub->PushContribution(&ctx, &receipt);
    for (const auto& r : requests) {
      if (!writer->Write(r)) break;
    }
    writer->WritesDone();
    return writer->Finish();
  }

  static std::vector<v1::PushContributionRequest> Stream(const v1::ContributionHeader& h,
                                                         const std::vector<HostTensor>& t) {
    std::vector<v1::PushContributionRequest> out(1);
    *out[0].mutable_header() = h;
    (void)ForEachWireChunk(t, [&](v1::TensorChunk& c) {
      out.emplace_back();
      *out.back().mutable_chunk() = c;
      return absl::OkStatus();
    });
    out.emplace_back();
    uint64_t total = 0;
    for (const auto& x : t) total += x.data.size();
    out.back().mutable_trailer()->set_sha256(TensorsSha256(t));
    out.back().mutable_trailer()->set_total_bytes(total);
    return out;
  }

  void ExpectRejected(const grpc::Status& st, grpc::StatusCode code, const std::string& says) {
    EXPECT_EQ(st.error_code(), code) << st.error_message();
    EXPECT_NE(st.error_message().find(says), std::string::npos)
        << "message should mention '" << says << "': " << st.error_message();
  }

  TempDir dir_;
  std::unique_ptr<ServerProcess> server_;
};

TEST_F(BadInputTest, BeforeInitContributorsAreToldToWaitForAnOperator) {
  auto stub = v1::Contributor::NewStub(server_->channel());
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
  v1::GetRoundResponse r;
  ExpectRejected(stub->GetRound(&ctx, {}, &r), grpc::StatusCode::FAILED_PRECONDITION,
                 "coldfusectl init");
  auto base = rpc::PullBase(server_->channel(), std::nullopt);
  EXPECT_TRUE(absl::IsFailedPrecondition(base.status())) << base.status();
}

TEST_F(BadInputTest, EachBadUploadGetsItsCodeAndNothingIsStored) {
  Init();
  const std::string sha_before = server_->Status().base_sha256();
  auto [h, t] = Good("mallory");

  {  // trained from an older (here: nonexistent) base
    auto bad = h;
    bad.set_base_version(5);
    ExpectRejected(RawPush(Stream(bad, t)), grpc::StatusCode::FAILED_PRECONDITION,
                   "pull the current base");
  }
  {  // wrong round
    auto bad = h;
    bad.set_round(4);
    ExpectRejected(RawPush(Stream(bad, t)), grpc::StatusCode::FAILED_PRECONDITION,
                   "round 4 has not opened yet");
  }
  {  // unknown tensor name
    auto bad_t = t;
    bad_t[0].spec.set_name("encoder.secret");
    auto bad = h;
    *bad.mutable_manifest() = ManifestOf(bad_t);
    ExpectRejected(RawPush(Stream(bad, bad_t)), grpc::StatusCode::INVALID_ARGUMENT,
                   "encoder.secret");
  }
  {  // wrong shape
    auto bad_t = t;
    bad_t[1].spec.set_shape(0, 4);
    bad_t[1].data.resize(16);
    auto bad = h;
    *bad.mutable_manifest() = ManifestOf(bad_t);
    ExpectRejected(RawPush(Stream(bad, bad_t)), grpc::StatusCode::INVALID_ARGUMENT, "shape [4]");
  }
  {  // a dtype that is not a float (F16/BF16/F64 for an F32 base are converted)
    auto bad = h;
    bad.mutable_manifest()->mutable_tensors(0)->set_dtype(v1::DTYPE_UNSPECIFIED);
    ExpectRejected(RawPush(Stream(bad, t)), grpc::StatusCode::INVALID_ARGUMENT, "no float dtype");
  }
  {  // a head sneaked in: an extra tensor
    auto bad_t = t;
    HostTensor head;
    head.spec.set_name("head.weight");
    head.spec.set_dtype(v1::F32);
    head.spec.add_shape(2);
    head.data.assign(8, '\0');
    bad_t.push_back(head);
    auto bad = h;
    *bad.mutable_manifest() = ManifestOf(bad_t);
    ExpectRejected(RawPush(Stream(bad, bad_t)), grpc::StatusCode::INVALID_ARGUMENT, "head.weight");
  }
  {  // corrupted in transit: checksum mismatch after every chunk was stored
    auto stream = Stream(h, t);
    stream.back().mutable_trailer()->set_sha256(std::string(32, 'x'));
    ExpectRejected(RawPush(stream), grpc::StatusCode::INVALID_ARGUMENT, "checksum");
  }
  {  // data longer than the manifest says
    auto stream = Stream(h, t);
    stream[1].mutable_chunk()->mutable_data()->append("extra bytes");
    ExpectRejected(RawPush(stream), grpc::StatusCode::INVALID_ARGUMENT, "exceed");
  }
  {  // stream cut before the trailer
    auto stream = Stream(h, t);
    stream.pop_back();
    ExpectRejected(RawPush(stream), grpc::StatusCode::INVALID_ARGUMENT, "before its trailer");
  }
  {  // chunk out of order
    auto stream = Stream(h, t);
    std::swap(stream[1], stream[2]);
    ExpectRejected(RawPush(stream), grpc::StatusCode::INVALID_ARGUMENT, "out-of-order");
  }
  {  // bad contributor name, zero examples
    auto bad = h;
    bad.set_contributor("bad name!");
    ExpectRejected(RawPush(Stream(bad, t)), grpc::StatusCode::INVALID_ARGUMENT, "contributor");
    bad = h;
    bad.set_num_examples(0);
    ExpectRejected(RawPush(Stream(bad, t)), grpc::StatusCode::INVALID_ARGUMENT, "num_examples");
  }

  // Nothing of the rejected uploads is stored, before or after a restart.
  EXPECT_EQ(server_->Status().open_round().contributions_size(), 0);
  ASSERT_EQ(server_->Stop(), 0);
  server_ = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log");
  ASSERT_NE(server_, nullptr);
  auto status = server_->Status();
  EXPECT_EQ(status.open_round().contributions_size(), 0);
  EXPECT_EQ(status.base_version(), 0u);
  EXPECT_EQ(status.base_sha256(), sha_before);

  // A good upload still works, once per contributor and round.
  auto receipt = rpc::PushContribution(server_->channel(), h, t);
  ASSERT_TRUE(receipt.ok()) << receipt.status();
  EXPECT_EQ(receipt->sha256(), TensorsSha256(t));
  auto again = rpc::PushContribution(server_->channel(), h, t);
  EXPECT_TRUE(absl::IsAlreadyExists(again.status())) << again.status();
  EXPECT_EQ(server_->Status().open_round().contributions_size(), 1);
}

// A client that closes its stream before the trailer is told what happened to the bytes
// it sent, and the server then behaves as it said.
TEST_F(BadInputTest, AStreamEndedBeforeItsTrailerIsToldTrulyWhatWasKept) {
  Init();
  // Not a structured binding: clang 14 (the sanitizer builds) cannot capture one.
  auto good = Good("early-closer");
  auto& h = good.first;
  auto& t = good.second;
  uint64_t total = 0;
  for (const auto& x : t) total += x.data.size();
  auto get_upload = [&](const std::string& upload_id) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + seconds(10));
    v1::GetUploadRequest req;
    req.set_upload_id(upload_id);
    req.set_contributor(h.contributor());
    v1::UploadProgress p;
    grpc::Status st = v1::Contributor::NewStub(server_->channel())->GetUpload(&ctx, req, &p);
    return std::make_pair(st, p);
  };
  // Header and trailer only, resuming where `at` says the server's data ends.
  auto finish_only = [&](v1::ContributionHeader header, const v1::UploadProgress& at) {
    header.set_resume_tensor(at.tensor_index());
    header.set_resume_offset(at.offset());
    auto full = Stream(header, t);
    return RawPush({full.front(), full.back()});
  };

  {  // Without an upload_id nothing can resume: nothing is kept, and the message says so.
    auto stream = Stream(h, t);
    stream.pop_back();
    ExpectRejected(RawPush(stream), grpc::StatusCode::INVALID_ARGUMENT, "nothing was stored");
    // A follow-up with only header and trailer has no data behind it and is refused.
    ExpectRejected(finish_only(h, v1::UploadProgress()), grpc::StatusCode::INVALID_ARGUMENT, "");
    EXPECT_EQ(server_->Status().open_round().contributions_size(), 0);
  }
  {  // A resumable upload keeps its bytes, says so, and GetUpload agrees.
    auto resumable = h;
    resumable.set_upload_id("early-closer-1");
    auto stream = Stream(resumable, t);
    stream.pop_back();
    grpc::Status st = RawPush(stream);
    ExpectRejected(st, grpc::StatusCode::INVALID_ARGUMENT, "are kept");
    EXPECT_NE(st.error_message().find(absl::StrCat(total, " bytes")), std::string::npos)
        << st.error_message();
    auto [got, progress] = get_upload("early-closer-1");
    ASSERT_TRUE(got.ok()) << got.error_message();
    EXPECT_EQ(progress.bytes_stored(), total);
    EXPECT_EQ(progress.tensor_index(), static_cast<uint32_t>(t.size()));
    // Finishing it is what the message promised: the trailer checks every byte.
    ASSERT_TRUE(finish_only(resumable, progress).ok());
    EXPECT_EQ(server_->Status().open_round().contributions_size(), 1);
    EXPECT_EQ(get_upload("early-closer-1").first.error_code(), grpc::StatusCode::NOT_FOUND);
  }
}

TEST_F(BadInputTest, NonFiniteValuesAreRejectedAndUploadAttemptsAreLimited) {
  Init();
  auto [h, t] = Good("nan-sender");
  float nan = std::nanf("");
  std::memcpy(t[2].data.data() + 4, &nan, 4);  // element 1 of body.1.weight
  ExpectRejected(RawPush(Stream(h, t)), grpc::StatusCode::INVALID_ARGUMENT,
                 "'body.1.weight' holds a NaN or infinity at element 1");
  EXPECT_EQ(server_->Status().open_round().contributions_size(), 0);

  // A second server with the default limit of 3 upload attempts per round.
  ASSERT_EQ(server_->Stop(), 0);
  server_ = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                 {"--max_uploads_per_round=3"});
  ASSERT_NE(server_, nullptr);
  auto [h2, good] = Good("flaky");
  auto corrupt = Stream(h2, good);
  corrupt.back().mutable_trailer()->set_sha256(std::string(32, 'x'));
  for (int i = 0; i < 3; ++i) {
    ExpectRejected(RawPush(corrupt), grpc::StatusCode::INVALID_ARGUMENT, "checksum");
  }
  ExpectRejected(RawPush(Stream(h2, good)), grpc::StatusCode::RESOURCE_EXHAUSTED,
                 "limit is 3 per round");
  // A quota is not resent at once (rpc::Retryability: kLater): even a resumable push
  // gives up after one attempt and says why.
  h2.set_upload_id(rpc::NewUploadId());
  rpc::HostTensorSource source(good);
  rpc::TransferStats stats;
  auto receipt = rpc::PushContribution(server_->channel(), h2, &source, {}, {}, &stats);
  EXPECT_TRUE(absl::IsResourceExhausted(receipt.status())) << receipt.status();
  EXPECT_NE(receipt.status().message().find("limit is 3 per round"), std::string::npos)
      << receipt.status();
  EXPECT_EQ(stats.attempts, 1);
}

TEST_F(BadInputTest, InitTwiceIsRefusedAndKeepsTheFirstBase) {
  Init();
  const std::string sha = server_->Status().base_sha256();
  auto again = RunCommand(
      {CtlBinary(), "--server=" + server_->address(), "init", "--spec=mlp:4,3,2", "--seed=5"});
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_NE(again.output.find("ALREADY_EXISTS"), std::string::npos) << again.output;
  EXPECT_EQ(server_->Status().base_sha256(), sha);
  auto bad_spec =
      RunCommand({CtlBinary(), "--server=" + server_->address(), "init", "--spec=mlp:4"});
  EXPECT_EQ(bad_spec.exit_code, 1);
  EXPECT_NE(bad_spec.output.find("mlp:64,128,64"), std::string::npos) << bad_spec.output;
}

TEST_F(BadInputTest, MalformedTrainingDataIsReportedWithFileAndLineAndNothingIsUploaded) {
  Init();
  std::string csv = dir_.path() + "/train.csv";
  {
    std::FILE* f = std::fopen(csv.c_str(), "w");
    std::fputs("a,b,c,d,label\n1,2,3,4,0\n1,2,oops,4,1\n", f);
    std::fclose(f);
  }
  auto r = RunCommand({ClientBinary(), "--server=" + server_->address(), "--name=dave",
                       "--state_dir=" + dir_.path() + "/state", "--train=" + csv, "--test=" + csv,
                       "--max_rounds=1"});
  EXPECT_EQ(r.exit_code, 1);
  EXPECT_NE(r.output.find("train.csv"), std::string::npos) << r.output;
  EXPECT_NE(r.output.find("line 3"), std::string::npos) << r.output;
  EXPECT_EQ(server_->Status().open_round().contributions_size(), 0);
}

// The daemon keeps its head across rounds; when the data changes so that the kept head no
// longer fits, it stops and says which file to delete, and deleting it is enough.
TEST_F(BadInputTest, AKeptHeadThatNoLongerFitsIsNamedAndDeletingItStartsANewOne) {
  Init();
  const std::string state = dir_.path() + "/state";
  auto run = [&](int classes) {
    const std::string csv = absl::StrCat(dir_.path(), "/classes", classes, ".csv");
    WriteBlobsCsv(csv, 4, classes, 60, static_cast<uint64_t>(classes));
    return RunCommand({ClientBinary(), "--server=" + server_->address(), "--name=erin",
                       "--state_dir=" + state, "--train=" + csv, "--test=" + csv, "--max_rounds=1",
                       "--epochs=1", "--threads=1", "--poll_s=0.1"});
  };
  auto first = run(2);
  ASSERT_EQ(first.exit_code, 0) << first.output;
  auto closed = RunCommand({CtlBinary(), "--server=" + server_->address(), "close-round"});
  ASSERT_EQ(closed.exit_code, 0) << closed.output;
  ASSERT_TRUE(server_->WaitForBase(1, seconds(30)));

  // Round 2 with three classes: the kept two-class head does not fit.
  auto second = run(3);
  EXPECT_EQ(second.exit_code, 1);
  EXPECT_NE(second.output.find("head does not fit"), std::string::npos) << second.output;
  EXPECT_NE(second.output.find(state + "/head.safetensors does not fit this model or data; "
                                       "delete it to start a new head"),
            std::string::npos)
      << second.output;
  EXPECT_EQ(server_->Status().open_round().contributions_size(), 0);

  ASSERT_TRUE(std::filesystem::remove(state + "/head.safetensors"));
  auto third = run(3);
  EXPECT_EQ(third.exit_code, 0) << third.output;
  EXPECT_EQ(server_->Status().open_round().contributions_size(), 1);
}

}  // namespace
}  // namespace coldfuse::testing
