// Transport security and access control against the real coldfused: TLS with
// certificates from deploy/make-certs.sh, bearer tokens and roles on every RPC, mutual
// TLS, and a server that refuses to start with a broken key.
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <functional>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/model_spec.h"
#include "common/posix_file.h"
#include "common/rpc/client.h"
#include "common/tensor_stream.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;

constexpr char kSpec[] = "mlp:4,3,2";

void MakeCerts(const std::string& dir, const std::vector<std::string>& clients) {
  std::vector<std::string> argv = {"/bin/bash", MAKE_CERTS_SCRIPT, dir};
  for (const auto& c : clients) {
    argv.push_back("--client");
    argv.push_back(c);
  }
  auto r = RunCommand(argv);
  ASSERT_EQ(r.exit_code, 0) << r.output;
}

std::string ReadToken(const std::string& path) {
  auto t = ReadFileToString(path);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::string(absl::StripAsciiWhitespace(*t)) : "";
}

class SecurityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = dir_.path() + "/certs";
    MakeCerts(certs_, {"alice"});
  }

  std::unique_ptr<ServerProcess> StartSecure(std::vector<std::string> extra = {}) {
    std::vector<std::string> flags = {
        "--tls_cert=" + certs_ + "/server.crt", "--tls_key=" + certs_ + "/server.key",
        "--bootstrap_token_file=" + dir_.path() + "/operator.token", "--min_contributions=50"};
    flags.insert(flags.end(), extra.begin(), extra.end());
    return ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log", flags);
  }

  std::shared_ptr<grpc::Channel> Channel(const ServerProcess& s, const std::string& token,
                                         rpc::ClientTlsOptions tls = {}) {
    if (tls.ca_file.empty()) tls.ca_file = certs_ + "/ca.crt";
    auto c = rpc::Connect(s.address(), {.tls = tls, .token = token});
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }

  CommandResult Ctl(const ServerProcess& s, const std::string& token_file,
                    std::vector<std::string> args) {
    args.insert(args.begin(), {CtlBinary(), "--server=" + s.address(),
                               "--tls_ca=" + certs_ + "/ca.crt", "--token_file=" + token_file});
    return RunCommand(args);
  }

  TempDir dir_;
  std::string certs_;
};

// One call of each RPC, returning its status code.
using Call = std::function<grpc::StatusCode(const std::shared_ptr<grpc::Channel>&)>;

grpc::ClientContext* WithDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + seconds(10));
  return ctx;
}

std::map<std::string, std::pair<std::vector<v1::Role>, Call>> AllRpcs(
    const v1::Manifest& manifest) {
  std::map<std::string, std::pair<std::vector<v1::Role>, Call>> rpcs;
  auto contributor = [](const auto& ch) { return v1::Contributor::NewStub(ch); };
  auto status = [](const auto& ch) { return v1::Status::NewStub(ch); };
  auto admin = [](const auto& ch) { return v1::Admin::NewStub(ch); };
  rpcs["Contributor.GetRound"] = {
      {v1::CONTRIBUTOR, v1::EVALUATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::GetRoundResponse r;
        return contributor(ch)->GetRound(WithDeadline(&ctx), {}, &r).error_code();
      }};
  rpcs["Contributor.PullBase"] = {{v1::CONTRIBUTOR, v1::EVALUATOR}, [](const auto& ch) {
                                    auto r = rpc::PullBase(ch, std::nullopt,
                                                           {.deadline = std::chrono::seconds(10)});
                                    return static_cast<grpc::StatusCode>(r.status().code());
                                  }};
  rpcs["Contributor.PushContribution"] = {
      {v1::CONTRIBUTOR}, [=](const auto& ch) {
        auto tensors = InitMlpBody(*ParseModelSpec(kSpec), 5);
        v1::ContributionHeader h;
        h.set_round(1);
        h.set_base_version(0);
        h.set_contributor("");  // with tokens: the token's name
        h.set_num_examples(3);
        *h.mutable_manifest() = manifest;
        auto r = rpc::PushContribution(ch, h, tensors, {.deadline = std::chrono::seconds(10)});
        return static_cast<grpc::StatusCode>(r.status().code());
      }};
  rpcs["Contributor.RecordEvaluation"] = {
      {v1::CONTRIBUTOR, v1::EVALUATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::RecordEvaluationRequest q;
        q.mutable_evaluation()->set_base_version(0);
        q.mutable_evaluation()->set_task("sst2");
        q.mutable_evaluation()->set_metric("accuracy");
        q.mutable_evaluation()->set_value(0.5);
        v1::Evaluation r;
        return contributor(ch)->RecordEvaluation(WithDeadline(&ctx), q, &r).error_code();
      }};
  rpcs["Status.ListEvaluations"] = {
      {v1::VIEWER, v1::EVALUATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::ListEvaluationsResponse r;
        return status(ch)->ListEvaluations(WithDeadline(&ctx), {}, &r).error_code();
      }};
  rpcs["Status.GetStatus"] = {
      {v1::VIEWER, v1::EVALUATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::ServerStatus r;
        return status(ch)->GetStatus(WithDeadline(&ctx), {}, &r).error_code();
      }};
  rpcs["Status.ListRounds"] = {
      {v1::VIEWER, v1::EVALUATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::ListRoundsResponse r;
        return status(ch)->ListRounds(WithDeadline(&ctx), {}, &r).error_code();
      }};
  rpcs["Status.GetRound"] = {{v1::VIEWER, v1::EVALUATOR}, [=](const auto& ch) {
                               grpc::ClientContext ctx;
                               v1::GetRoundInfoRequest q;
                               q.set_number(1);
                               v1::RoundInfo r;
                               return status(ch)->GetRound(WithDeadline(&ctx), q, &r).error_code();
                             }};
  rpcs["Status.WatchStatus"] = {{v1::VIEWER, v1::EVALUATOR}, [=](const auto& ch) {
                                  grpc::ClientContext ctx;
                                  auto reader = status(ch)->WatchStatus(WithDeadline(&ctx), {});
                                  v1::ServerStatus s;
                                  if (reader->Read(&s)) {
                                    ctx.TryCancel();
                                    reader->Finish();
                                    return grpc::StatusCode::OK;
                                  }
                                  return reader->Finish().error_code();
                                }};
  rpcs["Admin.InitModel"] = {
      {v1::OPERATOR}, [=](const auto& ch) {
        v1::InitHeader h;
        h.set_model_spec(kSpec);
        *h.mutable_manifest() = manifest;
        auto r = rpc::InitModel(ch, h, InitMlpBody(*ParseModelSpec(kSpec), 9),
                                {.deadline = std::chrono::seconds(10)});
        return static_cast<grpc::StatusCode>(r.status().code());  // ALREADY_EXISTS when allowed
      }};
  rpcs["Admin.CloseRound"] = {
      {v1::OPERATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::CloseRoundRequest q;
        q.set_round(99);  // never the open round: allowed callers get FAILED_PRECONDITION
        v1::CloseRoundResponse r;
        return admin(ch)->CloseRound(WithDeadline(&ctx), q, &r).error_code();
      }};
  rpcs["Admin.CreateToken"] = {
      {v1::OPERATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::CreateTokenRequest q;
        q.set_name("bad name!");  // allowed callers get INVALID_ARGUMENT, nothing is created
        q.set_role(v1::VIEWER);
        v1::CreateTokenResponse r;
        return admin(ch)->CreateToken(WithDeadline(&ctx), q, &r).error_code();
      }};
  rpcs["Admin.RevokeToken"] = {
      {v1::OPERATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::RevokeTokenRequest q;
        q.set_name("nobody");  // allowed callers get NOT_FOUND
        v1::TokenInfo r;
        return admin(ch)->RevokeToken(WithDeadline(&ctx), q, &r).error_code();
      }};
  rpcs["Admin.ListTokens"] = {
      {v1::OPERATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::ListTokensResponse r;
        return admin(ch)->ListTokens(WithDeadline(&ctx), {}, &r).error_code();
      }};
  rpcs["Admin.RollbackBase"] = {
      {v1::OPERATOR}, [=](const auto& ch) {
        grpc::ClientContext ctx;
        v1::RollbackBaseRequest q;
        q.set_base_version(7);  // allowed callers get FAILED_PRECONDITION
        v1::RollbackBaseResponse r;
        return admin(ch)->RollbackBase(WithDeadline(&ctx), q, &r).error_code();
      }};
  rpcs["Admin.ListAudit"] = {{v1::OPERATOR}, [=](const auto& ch) {
                               grpc::ClientContext ctx;
                               v1::ListAuditResponse r;
                               return admin(ch)->ListAudit(WithDeadline(&ctx), {}, &r).error_code();
                             }};
  return rpcs;
}

TEST_F(SecurityTest, EveryRpcChecksTokenAndRoleOverTls) {
  auto server = StartSecure();
  ASSERT_NE(server, nullptr);
  const std::string op_file = dir_.path() + "/operator.token";
  const std::string op = ReadToken(op_file);
  ASSERT_TRUE(absl::StartsWith(op, "cf_")) << op;

  // Tokens made with the CLI, as an operator would.
  std::map<std::string, std::string> token;
  for (const auto& [name, role] :
       std::vector<std::pair<std::string, std::string>>{{"vera", "viewer"},
                                                        {"carl", "contributor"},
                                                        {"rita", "contributor"},
                                                        {"evan", "evaluator"}}) {
    std::string out = dir_.path() + "/" + name + ".token";
    auto r = Ctl(*server, op_file,
                 {"token", "create", "--name=" + name, "--role=" + role, "--out=" + out});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    token[name] = ReadToken(out);
  }
  ASSERT_EQ(Ctl(*server, op_file, {"token", "revoke", "--name=rita"}).exit_code, 0);
  auto init = Ctl(*server, op_file, {"init", std::string("--spec=") + kSpec});
  ASSERT_EQ(init.exit_code, 0) << init.output;

  auto manifest = MlpManifest(*ParseModelSpec(kSpec));
  struct Caller {
    std::string who;
    std::string token;
    v1::Role role;  // ROLE_UNSPECIFIED: must be refused as unauthenticated
  };
  std::vector<Caller> callers = {{"no token", "", v1::ROLE_UNSPECIFIED},
                                 {"revoked", token["rita"], v1::ROLE_UNSPECIFIED},
                                 {"forged", "cf_" + std::string(64, 'a'), v1::ROLE_UNSPECIFIED},
                                 {"viewer", token["vera"], v1::VIEWER},
                                 {"contributor", token["carl"], v1::CONTRIBUTOR},
                                 {"evaluator", token["evan"], v1::EVALUATOR},
                                 {"operator", op, v1::OPERATOR}};
  int checked = 0;
  for (const auto& [rpc_name, rpc] : AllRpcs(manifest)) {
    for (const auto& caller : callers) {
      // A token-less call needs a TLS channel without call credentials.
      auto channel = Channel(*server, caller.token);
      grpc::StatusCode got = rpc.second(channel);
      SCOPED_TRACE(absl::StrCat(rpc_name, " as ", caller.who));
      if (caller.role == v1::ROLE_UNSPECIFIED) {
        EXPECT_EQ(got, grpc::StatusCode::UNAUTHENTICATED);
      } else if (caller.role == v1::OPERATOR ||
                 std::find(rpc.first.begin(), rpc.first.end(), caller.role) != rpc.first.end()) {
        EXPECT_NE(got, grpc::StatusCode::UNAUTHENTICATED);
        EXPECT_NE(got, grpc::StatusCode::PERMISSION_DENIED);
        EXPECT_NE(got, grpc::StatusCode::UNAVAILABLE);
      } else {
        EXPECT_EQ(got, grpc::StatusCode::PERMISSION_DENIED);
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 16 * 7);

  // The contributor named in an upload is the token's identity, not the header's.
  auto rounds = [&] {
    grpc::ClientContext ctx;
    v1::ListRoundsResponse r;
    EXPECT_TRUE(
        v1::Status::NewStub(Channel(*server, op))->ListRounds(WithDeadline(&ctx), {}, &r).ok());
    return r;
  }();
  std::vector<std::string> names;
  for (const auto& c : rounds.rounds(0).contributions()) names.push_back(c.contributor());
  EXPECT_EQ(names, (std::vector<std::string>{"carl", "operator"}));

  // A stale upload is refused, and the refusal is audited.
  {
    v1::ContributionHeader h;
    h.set_round(1);
    h.set_base_version(3);
    h.set_num_examples(1);
    *h.mutable_manifest() = manifest;
    auto r = rpc::PushContribution(Channel(*server, token["carl"]), h,
                                   InitMlpBody(*ParseModelSpec(kSpec), 1));
    EXPECT_TRUE(absl::IsFailedPrecondition(r.status())) << r.status();
  }

  // Everything above is in the audit log.
  auto audit = Ctl(*server, op_file, {"audit", "--limit=1000"});
  ASSERT_EQ(audit.exit_code, 0) << audit.output;
  for (const char* action : {"token_created", "token_revoked", "init", "base_created",
                             "contribution_accepted", "contribution_rejected"}) {
    EXPECT_NE(audit.output.find(action), std::string::npos) << action << "\n" << audit.output;
  }

  // Plaintext to a TLS port fails; a token without TLS is refused client-side.
  grpc::ClientContext ctx;
  v1::ServerStatus st;
  EXPECT_EQ(v1::Status::NewStub(rpc::ConnectInsecure(server->address()))
                ->GetStatus(WithDeadline(&ctx), {}, &st)
                .error_code(),
            grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(absl::IsInvalidArgument(rpc::Connect(server->address(), {.token = op}).status()));
}

TEST_F(SecurityTest, MutualTlsRefusesCertificatesFromAnotherCa) {
  MakeCerts(dir_.path() + "/other", {"mallory"});
  auto server = StartSecure({"--tls_client_ca=" + certs_ + "/ca.crt"});
  ASSERT_NE(server, nullptr);
  const std::string op = ReadToken(dir_.path() + "/operator.token");
  auto get_status = [&](rpc::ClientTlsOptions tls) {
    auto ch = Channel(*server, op, tls);
    grpc::ClientContext ctx;
    v1::ServerStatus s;
    return v1::Status::NewStub(ch)->GetStatus(WithDeadline(&ctx), {}, &s).error_code();
  };
  EXPECT_EQ(get_status({.cert_file = certs_ + "/alice.crt", .key_file = certs_ + "/alice.key"}),
            grpc::StatusCode::OK);
  EXPECT_EQ(get_status({}), grpc::StatusCode::UNAVAILABLE);  // no client certificate
  EXPECT_EQ(get_status({.cert_file = dir_.path() + "/other/mallory.crt",
                        .key_file = dir_.path() + "/other/mallory.key"}),
            grpc::StatusCode::UNAVAILABLE);
}

// A daemon set up wrongly stops with one message saying what to fix, instead of
// retrying (or training) forever: each case runs it against a live server.
TEST_F(SecurityTest, TheDaemonStopsWithOneClearMessageOnEachErrorRetryingCannotFix) {
  MakeCerts(dir_.path() + "/other", {"alice"});
  auto server = StartSecure();
  ASSERT_NE(server, nullptr);
  const std::string op_file = dir_.path() + "/operator.token";
  server->set_channel(Channel(*server, ReadToken(op_file)));
  // Large enough that a 1.5 MiB state folder holds the base but not a contribution too.
  ASSERT_EQ(Ctl(*server, op_file, {"init", "--spec=mlp:8,512,512,8", "--seed=1"}).exit_code, 0);
  for (const char* name : {"alice", "rita"}) {
    ASSERT_EQ(Ctl(*server, op_file,
                  {"token", "create", absl::StrCat("--name=", name), "--role=contributor",
                   absl::StrCat("--out=", dir_.path(), "/", name, ".token")})
                  .exit_code,
              0);
  }
  ASSERT_EQ(Ctl(*server, op_file, {"token", "revoke", "--name=rita"}).exit_code, 0);
  std::vector<std::string> mtls_flags = {
      "--tls_cert=" + certs_ + "/server.crt", "--tls_key=" + certs_ + "/server.key",
      "--tls_client_ca=" + certs_ + "/ca.crt",
      "--bootstrap_token_file=" + dir_.path() + "/mtls-operator.token"};
  auto mtls = ServerProcess::Start(dir_.path() + "/db-mtls", dir_.path() + "/mtls.log", mtls_flags);
  ASSERT_NE(mtls, nullptr);
  WriteBlobsCsv(dir_.path() + "/train.csv", 8, 3, 60, 1);

  const std::string ca = "--tls_ca=" + certs_ + "/ca.crt";
  const std::string token = "--token_file=" + dir_.path() + "/alice.token";
  struct Case {
    std::string what;
    std::vector<std::string> flags;  // besides --train/--test/--state_dir
    std::string says;
  };
  std::vector<Case> cases = {
      {"wrong CA",
       {"--server=" + server->address(), "--tls_ca=" + dir_.path() + "/other/ca.crt", token,
        "--name=alice"},
       "does not verify against --tls_ca="},
      {"no client certificate for a mutual-TLS server",
       {"--server=" + mtls->address(), ca, token, "--name=alice"},
       "requires a client certificate"},
      {"client certificate from another CA",
       {"--server=" + mtls->address(), ca, "--tls_cert=" + dir_.path() + "/other/alice.crt",
        "--tls_key=" + dir_.path() + "/other/alice.key", token, "--name=alice"},
       "does not accept the client certificate"},
      {"unknown host",
       {absl::StrCat("--server=no-such-host.invalid:", server->port()), ca, token, "--name=alice"},
       "cannot find the server's host 'no-such-host.invalid'"},
      {"revoked token",
       {"--server=" + server->address(), ca, "--token_file=" + dir_.path() + "/rita.token",
        "--name=rita"},
       "UNAUTHENTICATED"},
      {"another contributor's name",
       {"--server=" + server->address(), ca, token, "--name=bob"},
       "this token belongs to 'alice', but the caller names itself 'bob'"},
  };
  // A full disk: the state folder on a small tmpfs (needs root to mount).
  const std::string small = dir_.path() + "/small";
  std::filesystem::create_directories(small);
  const bool mounted =
      ::geteuid() == 0 &&
      RunCommand({"mount", "-t", "tmpfs", "-o", "size=1536k", "tmpfs", small}).exit_code == 0;
  if (mounted) {
    cases.push_back({"full disk",
                     {"--server=" + server->address(), ca, token, "--name=alice",
                      "--state_dir=" + small + "/state"},
                     "No space left on device"});
  } else {
    std::cout << "not root: the full-disk case is left out\n";
  }
  int n = 0;
  for (const Case& c : cases) {
    std::vector<std::string> args = {ClientBinary(),
                                     "--train=" + dir_.path() + "/train.csv",
                                     "--test=" + dir_.path() + "/train.csv",
                                     "--steps=2",
                                     "--threads=1",
                                     "--poll_s=0.1",
                                     absl::StrCat("--state_dir=", dir_.path(), "/state-", n++)};
    args.insert(args.end(), c.flags.begin(), c.flags.end());
    const auto start = std::chrono::steady_clock::now();
    CommandResult r = RunCommand(args, seconds(60));
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    EXPECT_EQ(r.exit_code, 1) << c.what << ": " << r.output;
    EXPECT_LT(secs, 30) << c.what << " took " << secs << " s: it retried";
    EXPECT_TRUE(absl::StrContains(r.output, c.says)) << c.what << ": " << r.output;
    // One error line, and at most one training: no retraining loop.
    size_t errors = 0, trainings = 0;
    for (absl::string_view line : absl::StrSplit(r.output, '\n')) {
      if (absl::StartsWith(line, "E ") && !absl::StrContains(line, "ssl_transport_security")) {
        ++errors;
      }
      if (absl::StrContains(line, ": fine-tuning base v")) ++trainings;
    }
    EXPECT_EQ(errors, 1u) << c.what << ": " << r.output;
    EXPECT_LE(trainings, 1u) << c.what << ": " << r.output;
  }
  if (mounted) {
    // The head never got ahead of a contribution that was not written.
    EXPECT_FALSE(std::filesystem::exists(small + "/state/head.safetensors"));
    RunCommand({"umount", small});
  }
  // Nothing was pushed by any of them.
  EXPECT_EQ(server->Rounds().back().contributions_size(), 0);
  EXPECT_EQ(server->Status().base_version(), 0u);
}

// The serial number of the certificate the server presents to a new connection.
std::string ServedSerial(int port) {
  auto r = RunCommand({"/bin/bash", "-c",
                       absl::StrCat("openssl s_client -connect 127.0.0.1:", port,
                                    " -servername localhost </dev/null 2>/dev/null | "
                                    "openssl x509 -noout -serial")});
  return std::string(absl::StripAsciiWhitespace(r.output));
}

std::string FileSerial(const std::string& crt) {
  auto r = RunCommand({"openssl", "x509", "-noout", "-serial", "-in", crt});
  return std::string(absl::StripAsciiWhitespace(r.output));
}

TEST_F(SecurityTest, ARenewedCertificateServesNewConnectionsWithoutARestart) {
  auto server = StartSecure({"--tls_reload_s=1"});
  ASSERT_NE(server, nullptr);
  const std::string token = dir_.path() + "/operator.token";
  const std::string first = FileSerial(certs_ + "/server.crt");
  ASSERT_TRUE(absl::StartsWith(first, "serial=")) << first;
  EXPECT_EQ(ServedSerial(server->port()), first);
  // Renew (a new key and certificate from the same CA), as an operator would.
  std::vector<std::string> argv = {"/bin/bash", MAKE_CERTS_SCRIPT, certs_, "--server-name",
                                   "localhost"};
  ASSERT_EQ(RunCommand(argv).exit_code, 0);
  const std::string second = FileSerial(certs_ + "/server.crt");
  ASSERT_NE(second, first);
  std::string served;
  for (int i = 0; i < 100 && (served = ServedSerial(server->port())) != second; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(served, second) << "the renewed certificate was not served within 10 s";
  // Same process, and clients go on working.
  EXPECT_EQ(server->process()->Wait(std::chrono::milliseconds(0)), std::nullopt);
  auto st = Ctl(*server, token, {"status"});
  EXPECT_EQ(st.exit_code, 0) << st.output;
}

TEST_F(SecurityTest, AServerWithoutAPortOrAnotherNameIsAClearErrorAndTheNameCanBeGiven) {
  auto server = StartSecure();
  ASSERT_NE(server, nullptr);
  const std::string token = dir_.path() + "/operator.token";
  auto no_port = RunCommand({CtlBinary(), "--server=localhost", "--tls_ca=" + certs_ + "/ca.crt",
                             "--token_file=" + token, "status"});
  EXPECT_EQ(no_port.exit_code, 1);
  EXPECT_TRUE(absl::StrContains(no_port.output, "INVALID_ARGUMENT")) << no_port.output;
  EXPECT_TRUE(absl::StrContains(no_port.output, "localhost:7878")) << no_port.output;
  // The certificate names localhost and 127.0.0.1; a name it does not carry fails the
  // handshake, the right one given by --tls_server_name passes.
  auto named = [&](const std::string& name) {
    return RunCommand({CtlBinary(), absl::StrCat("--server=127.0.0.1:", server->port()),
                       "--tls_ca=" + certs_ + "/ca.crt", "--tls_server_name=" + name,
                       "--token_file=" + token, "--retry_for_s=0", "--timeout_s=5", "status"});
  };
  EXPECT_NE(named("fuse.example.org").exit_code, 0);
  auto ok = named("localhost");
  EXPECT_EQ(ok.exit_code, 0) << ok.output;
}

TEST_F(SecurityTest, ServerRefusesToStartWithABrokenKeyAndNamesTheFile) {
  std::string bad_key = dir_.path() + "/broken.key";
  ASSERT_TRUE(WriteFileAtomic(bad_key, "not a key\n").ok());
  auto r = RunCommand({ServerBinary(), "--data_dir=" + dir_.path() + "/db2", "--listen=127.0.0.1:0",
                       "--tls_cert=" + certs_ + "/server.crt", "--tls_key=" + bad_key,
                       "--bootstrap_token_file=" + dir_.path() + "/t"});
  EXPECT_EQ(r.exit_code, 78);  // EX_CONFIG: the unit does not restart it
  EXPECT_NE(r.output.find(bad_key), std::string::npos) << r.output;
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/db2")) << "nothing should be created";

  auto missing =
      RunCommand({ServerBinary(), "--data_dir=" + dir_.path() + "/db3", "--listen=127.0.0.1:0"});
  EXPECT_EQ(missing.exit_code, 78);
  EXPECT_NE(missing.output.find("--tls_cert"), std::string::npos) << missing.output;

  auto insecure = ServerProcess::Start(dir_.path() + "/db4", dir_.path() + "/insecure.log");
  ASSERT_NE(insecure, nullptr);
  auto log = ReadFileToString(dir_.path() + "/insecure.log");
  EXPECT_NE(log->find("INSECURE"), std::string::npos) << *log;
}

}  // namespace
}  // namespace coldfuse::testing
