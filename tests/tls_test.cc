// TLS credentials: deploy/make-certs.sh makes real certificates, MakeServerCredentials /
// MakeClientCredentials reject bad files by name, and a real mutual-TLS handshake on
// loopback lets in exactly the clients that the server's CA signed.
#include "common/rpc/tls.h"

#include <grpcpp/generic/async_generic_service.h>
#include <grpcpp/generic/generic_stub.h>
#include <grpcpp/grpcpp.h>
#include <grpcpp/health_check_service_interface.h>
#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdlib.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>

#include "common/tsan_handoff.h"
#include "server/service/tls.h"

namespace coldfuse {
namespace {

using rpc::ClientTlsOptions;
using rpc::MakeClientCredentials;
using service::MakeServerCredentials;
using service::ServerTlsOptions;

constexpr auto kDeadline = std::chrono::seconds(5);
constexpr char kWhoAmI[] = "/coldfuse.test.Tls/WhoAmI";

std::string MakeTempDir() {
  std::string templ = (std::filesystem::temp_directory_path() / "tls_test.XXXXXX").string();
  char* dir = ::mkdtemp(templ.data());
  EXPECT_NE(dir, nullptr);
  return templ;
}

// The message of `s` contains `text` (a file name, usually).
::testing::AssertionResult Mentions(const absl::Status& s, const std::string& text) {
  if (s.message().find(text) != absl::string_view::npos) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "\"" << s.message() << "\" does not mention " << text;
}

void WriteFile(const std::string& path, const std::string& contents) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << contents;
  ASSERT_TRUE(out.good()) << path;
}

// Writes a self-signed certificate (and its key) that expired yesterday.
void MakeExpiredCertificate(const std::string& cert_path, const std::string& key_path) {
  EVP_PKEY* key = EVP_EC_gen("P-256");
  ASSERT_NE(key, nullptr);
  X509* x = X509_new();
  ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
  X509_gmtime_adj(X509_getm_notBefore(x), -2 * 24 * 3600);
  X509_gmtime_adj(X509_getm_notAfter(x), -1 * 24 * 3600);
  X509_set_pubkey(x, key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("expired"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  ASSERT_GT(X509_sign(x, key, EVP_sha256()), 0);
  FILE* f = std::fopen(cert_path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_X509(f, x);
  std::fclose(f);
  f = std::fopen(key_path.c_str(), "w");
  ASSERT_NE(f, nullptr);
  PEM_write_PrivateKey(f, key, nullptr, nullptr, 0, nullptr, nullptr);
  std::fclose(f);
  X509_free(x);
  EVP_PKEY_free(key);
}

// Answers kWhoAmI with PeerCommonName of the caller; anything else with UNIMPLEMENTED.
class WhoAmIService final : public grpc::CallbackGenericService {
  grpc::ServerGenericBidiReactor* CreateReactor(grpc::GenericCallbackServerContext* ctx) override {
    return new Reactor(ctx);
  }

  class Reactor final : public grpc::ServerGenericBidiReactor {
   public:
    explicit Reactor(grpc::GenericCallbackServerContext* ctx) : ctx_(ctx) {
      TsanHandOff(this);
      StartRead(&request_);
    }
    void OnReadDone(bool ok) override {
      TsanTakeOver(this);
      if (!ok) {
        TsanHandOff(this);
        return Finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "no request"));
      }
      if (ctx_->method() != kWhoAmI) {
        grpc::Status unimplemented(grpc::StatusCode::UNIMPLEMENTED, ctx_->method());
        TsanHandOff(this);
        return Finish(unimplemented);
      }
      std::string name = service::PeerCommonName(*ctx_);
      grpc::Slice slice(name);
      response_ = grpc::ByteBuffer(&slice, 1);
      TsanHandOff(this);
      StartWriteAndFinish(&response_, grpc::WriteOptions(), grpc::Status::OK);
    }
    void OnDone() override {
      TsanTakeOver(this);
      delete this;
    }

   private:
    grpc::GenericCallbackServerContext* ctx_;
    grpc::ByteBuffer request_;
    grpc::ByteBuffer response_;
  };
};

class TlsTest : public ::testing::Test {
 protected:
  // Two unrelated CAs: `dir_` has ca + server + alice, `other_` has ca + server + mallory.
  static void SetUpTestSuite() {
    dir_ = new std::string(MakeTempDir());
    other_ = new std::string(MakeTempDir());
    for (const auto& [dir, client] : {std::pair{*dir_, "alice"}, std::pair{*other_, "mallory"}}) {
      std::string cmd = std::string(MAKE_CERTS) + " " + dir + " --client " + client + " > " + dir +
                        "/make-certs.log 2>&1";
      ASSERT_EQ(std::system(cmd.c_str()), 0) << cmd;
    }
  }
  static void TearDownTestSuite() {
    std::filesystem::remove_all(*dir_);
    std::filesystem::remove_all(*other_);
    delete dir_;
    delete other_;
  }
  static std::string F(const std::string& name) { return *dir_ + "/" + name; }
  static std::string O(const std::string& name) { return *other_ + "/" + name; }

  static inline std::string* dir_ = nullptr;
  static inline std::string* other_ = nullptr;
};

TEST_F(TlsTest, MakeCertsKeepsKeysPrivate) {
  EXPECT_EQ(std::filesystem::status(*dir_).permissions() & std::filesystem::perms::all,
            std::filesystem::perms::owner_all);
  for (const char* key : {"ca.key", "server.key", "alice.key"}) {
    EXPECT_EQ(std::filesystem::status(F(key)).permissions() & std::filesystem::perms::all,
              std::filesystem::perms::owner_read | std::filesystem::perms::owner_write)
        << key;
  }
}

TEST_F(TlsTest, MakeCertsRerunKeepsCaAndAddsClient) {
  std::string dir = MakeTempDir();
  std::string make = std::string(MAKE_CERTS) + " " + dir;
  ASSERT_EQ(std::system((make + " > /dev/null").c_str()), 0);
  std::ifstream in(dir + "/ca.crt");
  std::string ca((std::istreambuf_iterator<char>(in)), {});
  ASSERT_EQ(std::system((make + " --client bob > /dev/null").c_str()), 0);
  std::ifstream again(dir + "/ca.crt");
  EXPECT_EQ(std::string((std::istreambuf_iterator<char>(again)), {}), ca);
  EXPECT_TRUE(MakeClientCredentials({dir + "/ca.crt", dir + "/bob.crt", dir + "/bob.key"}).ok());
  std::filesystem::remove_all(dir);
}

TEST_F(TlsTest, ValidCredentials) {
  EXPECT_TRUE(MakeServerCredentials({F("server.crt"), F("server.key"), ""}).ok());
  EXPECT_TRUE(MakeServerCredentials({F("server.crt"), F("server.key"), F("ca.crt")}).ok());
  EXPECT_TRUE(MakeClientCredentials({F("ca.crt"), "", ""}).ok());
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> c =
      MakeClientCredentials({F("ca.crt"), F("alice.crt"), F("alice.key")});
  ASSERT_TRUE(c.ok()) << c.status();
  EXPECT_NE(*c, nullptr);
}

TEST_F(TlsTest, MissingKeyFileIsNotFound) {
  absl::Status s = MakeServerCredentials({F("server.crt"), F("nope.key"), ""}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(Mentions(s, F("nope.key")));
  s = MakeClientCredentials({F("ca.crt"), F("alice.crt"), F("nope.key")}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kNotFound) << s;
  EXPECT_TRUE(Mentions(s, F("nope.key")));
}

TEST_F(TlsTest, UnreadableFileIsPermissionDenied) {
  if (::geteuid() == 0) GTEST_SKIP() << "root reads any file";
  std::string path = F("unreadable.key");
  std::filesystem::copy_file(F("server.key"), path,
                             std::filesystem::copy_options::overwrite_existing);
  std::filesystem::permissions(path, std::filesystem::perms::none);
  absl::Status s = MakeServerCredentials({F("server.crt"), path, ""}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << s;
  EXPECT_TRUE(Mentions(s, path));
}

TEST_F(TlsTest, GarbageIsInvalidArgument) {
  std::string garbage = F("garbage.pem");
  WriteFile(garbage, "this is not a certificate\n");
  std::string bad_base64 = F("bad-base64.pem");
  WriteFile(bad_base64,
            "-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n");
  for (const std::string& path : {garbage, bad_base64}) {
    absl::Status s = MakeServerCredentials({path, F("server.key"), ""}).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(Mentions(s, path));
    s = MakeServerCredentials({F("server.crt"), path, ""}).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(Mentions(s, path));
    s = MakeClientCredentials({path, "", ""}).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
    EXPECT_TRUE(Mentions(s, path));
  }
}

TEST_F(TlsTest, KeyOfAnotherPairNamesBothFiles) {
  absl::Status s = MakeServerCredentials({F("server.crt"), O("server.key"), ""}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Mentions(s, F("server.crt")));
  EXPECT_TRUE(Mentions(s, O("server.key")));
  s = MakeClientCredentials({F("ca.crt"), F("alice.crt"), O("mallory.key")}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Mentions(s, F("alice.crt")));
  EXPECT_TRUE(Mentions(s, O("mallory.key")));
}

TEST_F(TlsTest, CaFileThatIsNotACertificate) {
  absl::Status s = MakeClientCredentials({F("ca.key"), "", ""}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Mentions(s, F("ca.key")));
  s = MakeServerCredentials({F("server.crt"), F("server.key"), F("ca.key")}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Mentions(s, F("ca.key")));
}

TEST_F(TlsTest, ExpiredCertificate) {
  MakeExpiredCertificate(F("expired.crt"), F("expired.key"));
  absl::Status s = MakeClientCredentials({F("expired.crt"), "", ""}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Mentions(s, "expired"));
  EXPECT_TRUE(Mentions(s, F("expired.crt")));
  s = MakeServerCredentials({F("expired.crt"), F("expired.key"), ""}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
}

TEST_F(TlsTest, WrongRoleOrMissingOption) {
  // A client certificate cannot serve, nor the server's be a client's.
  absl::Status s = MakeServerCredentials({F("alice.crt"), F("alice.key"), ""}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Mentions(s, "serverAuth"));
  s = MakeClientCredentials({F("ca.crt"), F("server.crt"), F("server.key")}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_TRUE(Mentions(s, "clientAuth"));
  EXPECT_EQ(MakeClientCredentials({"", "", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeClientCredentials({F("ca.crt"), F("alice.crt"), ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(MakeServerCredentials({F("server.crt"), "", ""}).status().code(),
            absl::StatusCode::kInvalidArgument);
}

// A mutual-TLS server on loopback that trusts the first CA's clients.
class TlsHandshakeTest : public TlsTest {
 protected:
  void SetUp() override {
    absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> creds =
        MakeServerCredentials({F("server.crt"), F("server.key"), F("ca.crt")});
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::EnableDefaultHealthCheckService(true);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", *creds, &port_);
    builder.RegisterCallbackGenericService(&who_am_i_);
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port_, 0);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now() + kDeadline);
  }

  // One unary call of `method` with an empty request; the reply's bytes go to `reply`.
  grpc::Status Call(const ClientTlsOptions& options, const std::string& method,
                    std::string* reply = nullptr) {
    absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> creds =
        MakeClientCredentials(options);
    if (!creds.ok())
      return grpc::Status(grpc::StatusCode::INTERNAL, std::string(creds.status().message()));
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // no connection reuse across cases
    std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel("localhost:" + std::to_string(port_), *creds, args);
    grpc::GenericStub stub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + kDeadline);
    grpc::Slice empty("");
    grpc::ByteBuffer request(&empty, 1);
    grpc::ByteBuffer response;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status result;
    stub.UnaryCall(&ctx, method, grpc::StubOptions(), &request, &response, [&](grpc::Status s) {
      std::lock_guard<std::mutex> lock(mu);
      result = std::move(s);
      done = true;
      cv.notify_one();
    });
    std::unique_lock<std::mutex> lock(mu);
    cv.wait(lock, [&] { return done; });  // bounded by the call's deadline
    if (result.ok() && reply != nullptr) {
      std::vector<grpc::Slice> slices;
      response.Dump(&slices);
      reply->clear();
      for (const grpc::Slice& s : slices)
        reply->append(reinterpret_cast<const char*>(s.begin()), s.size());
    }
    return result;
  }

  static constexpr char kHealthCheck[] = "/grpc.health.v1.Health/Check";
  WhoAmIService who_am_i_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsHandshakeTest, ClientSignedByServersCaGetsIn) {
  grpc::Status s = Call({F("ca.crt"), F("alice.crt"), F("alice.key")}, kHealthCheck);
  EXPECT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
}

TEST_F(TlsHandshakeTest, PeerCommonNameIsTheClientsCn) {
  std::string name;
  grpc::Status s = Call({F("ca.crt"), F("alice.crt"), F("alice.key")}, kWhoAmI, &name);
  ASSERT_TRUE(s.ok()) << s.error_code() << " " << s.error_message();
  EXPECT_EQ(name, "alice");
}

TEST_F(TlsHandshakeTest, ClientWithoutCertificateIsRefused) {
  grpc::Status s = Call({F("ca.crt"), "", ""}, kHealthCheck);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsHandshakeTest, ClientSignedByAnotherCaIsRefused) {
  grpc::Status s = Call({F("ca.crt"), O("mallory.crt"), O("mallory.key")}, kHealthCheck);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

TEST_F(TlsHandshakeTest, ClientThatTrustsAnotherCaRefusesTheServer) {
  grpc::Status s = Call({O("ca.crt"), O("mallory.crt"), O("mallory.key")}, kHealthCheck);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::UNAVAILABLE) << s.error_message();
}

}  // namespace
}  // namespace coldfuse
