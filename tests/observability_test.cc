// What operators and dashboards watch, against the real coldfused over TLS with tokens:
// the standard gRPC health service (no token; NOT_SERVING while draining), /healthz and
// /readyz, /metrics and the JSON API behind a viewer token, and stored evaluations with
// the evaluator role.
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "common/model_spec.h"
#include "common/posix_file.h"
#include "common/rpc/client.h"
#include "grpc/health/v1/health.grpc.pb.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using grpc::health::v1::HealthCheckRequest;
using grpc::health::v1::HealthCheckResponse;

constexpr char kSpec[] = "mlp:4,3,2";

class ObservabilityTest : public ::testing::Test {
 protected:
  void SetUp() override {
    certs_ = dir_.path() + "/certs";
    auto r = RunCommand({"/bin/bash", MAKE_CERTS_SCRIPT, certs_});
    ASSERT_EQ(r.exit_code, 0) << r.output;
  }

  std::unique_ptr<ServerProcess> Start(std::vector<std::string> extra = {}) {
    http_port_file_ = dir_.path() + "/http.port";
    std::vector<std::string> flags = {"--tls_cert=" + certs_ + "/server.crt",
                                      "--tls_key=" + certs_ + "/server.key",
                                      "--bootstrap_token_file=" + dir_.path() + "/operator.token",
                                      "--min_contributions=2",
                                      "--http_listen=127.0.0.1:0",
                                      "--http_port_file=" + http_port_file_};
    flags.insert(flags.end(), extra.begin(), extra.end());
    std::filesystem::remove(http_port_file_);  // a restart must not read the last run's
    auto s = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log", flags);
    if (s == nullptr) return s;
    // Written just after the gRPC port file the harness waits for.
    absl::StatusOr<std::string> port;
    for (int i = 0; i < 100 && !(port = ReadFileToString(http_port_file_)).ok(); ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    EXPECT_TRUE(port.ok()) << port.status();
    if (port.ok())
      http_base_ = "https://127.0.0.1:" + std::string(absl::StripAsciiWhitespace(*port));
    operator_ = Token(dir_.path() + "/operator.token");
    return s;
  }

  std::string Token(const std::string& path) {
    auto t = ReadFileToString(path);
    return t.ok() ? std::string(absl::StripAsciiWhitespace(*t)) : "";
  }

  // A token made with the CLI, as an operator would.
  std::string MakeToken(const ServerProcess& s, const std::string& name, const std::string& role) {
    const std::string out = dir_.path() + "/" + name + ".token";
    auto r = RunCommand({CtlBinary(), "--server=" + s.address(), "--tls_ca=" + certs_ + "/ca.crt",
                         "--token_file=" + dir_.path() + "/operator.token", "token", "create",
                         "--name=" + name, "--role=" + role, "--out=" + out});
    EXPECT_EQ(r.exit_code, 0) << r.output;
    return Token(out);
  }

  std::shared_ptr<grpc::Channel> Channel(const ServerProcess& s, const std::string& token) {
    auto c = rpc::Connect(s.address(), {.tls = {.ca_file = certs_ + "/ca.crt"}, .token = token});
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }

  HttpResult Get(const std::string& path, const std::string& token = "") {
    return HttpGet(http_base_ + path, certs_ + "/ca.crt", token);
  }

  // grpc.health.v1.Health/Check without a token.
  std::pair<grpc::StatusCode, HealthCheckResponse::ServingStatus> Health(
      const ServerProcess& s, const std::string& service) {
    auto stub = grpc::health::v1::Health::NewStub(Channel(s, ""));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    HealthCheckRequest q;
    q.set_service(service);
    HealthCheckResponse r;
    grpc::Status st = stub->Check(&ctx, q, &r);
    return {st.error_code(), r.status()};
  }

  void Init(const ServerProcess& s) {
    v1::InitHeader h;
    h.set_model_spec(kSpec);
    *h.mutable_manifest() = MlpManifest(*ParseModelSpec(kSpec));
    auto r = rpc::InitModel(Channel(s, operator_), h, InitMlpBody(*ParseModelSpec(kSpec), 1));
    ASSERT_TRUE(r.ok()) << r.status();
  }

  absl::Status Push(const ServerProcess& s, const std::string& token, uint64_t round, uint64_t base,
                    const std::string& task, uint64_t seed) {
    v1::ContributionHeader h;
    h.set_round(round);
    h.set_base_version(base);
    h.set_task(task);
    h.set_num_examples(10);
    *h.mutable_manifest() = MlpManifest(*ParseModelSpec(kSpec));
    return rpc::PushContribution(Channel(s, token), h, InitMlpBody(*ParseModelSpec(kSpec), seed))
        .status();
  }

  absl::StatusOr<v1::Evaluation> Record(const ServerProcess& s, const std::string& token,
                                        uint64_t base, const std::string& task, double value,
                                        uint64_t k = 64) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::RecordEvaluationRequest q;
    q.mutable_evaluation()->set_base_version(base);
    q.mutable_evaluation()->set_task(task);
    q.mutable_evaluation()->set_metric("accuracy");
    q.mutable_evaluation()->set_value(value);
    q.mutable_evaluation()->set_num_train_examples(k);
    v1::Evaluation e;
    grpc::Status st = v1::Contributor::NewStub(Channel(s, token))->RecordEvaluation(&ctx, q, &e);
    if (!st.ok())
      return absl::Status(static_cast<absl::StatusCode>(st.error_code()), st.error_message());
    return e;
  }

  bool WaitForBase(const ServerProcess& s, const std::string& token, uint64_t version) {
    for (int i = 0; i < 300; ++i) {
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      v1::ServerStatus st;
      if (v1::Status::NewStub(Channel(s, token))->GetStatus(&ctx, {}, &st).ok() &&
          st.base_version() >= version) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  TempDir dir_;
  std::string certs_, http_port_file_, http_base_, operator_;
};

TEST_F(ObservabilityTest, HealthAnswersWithoutATokenAndSaysNotServingWhileDraining) {
  auto server = Start({"--drain_s=5"});
  ASSERT_NE(server, nullptr);
  EXPECT_EQ(Health(*server, ""),
            std::make_pair(grpc::StatusCode::OK, HealthCheckResponse::SERVING));
  EXPECT_EQ(Health(*server, "coldfuse.v1.Contributor"),
            std::make_pair(grpc::StatusCode::OK, HealthCheckResponse::SERVING));
  EXPECT_EQ(Health(*server, "no.such.Service").first, grpc::StatusCode::NOT_FOUND);
  HttpResult healthz = Get("/healthz"), readyz = Get("/readyz");
  EXPECT_EQ(healthz.status, 200) << healthz.body;
  EXPECT_EQ(readyz.status, 200) << readyz.body;
  // Plain HTTP to the HTTPS port gets no page.
  EXPECT_NE(HttpGet("http" + http_base_.substr(5) + "/healthz").status, 200);

  server->process()->Signal(SIGTERM);
  // Within the drain: NOT_SERVING and 503, while /healthz still says the process lives.
  bool draining = false;
  for (int i = 0; i < 40 && !draining; ++i) {
    draining = Health(*server, "").second == HealthCheckResponse::NOT_SERVING;
    if (!draining) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(draining);
  EXPECT_EQ(Health(*server, "coldfuse.v1.Contributor").second, HealthCheckResponse::NOT_SERVING);
  readyz = Get("/readyz");
  EXPECT_EQ(readyz.status, 503);
  EXPECT_NE(readyz.body.find("shutting down"), std::string::npos) << readyz.body;
  EXPECT_EQ(Get("/healthz").status, 200);
  EXPECT_EQ(server->process()->Wait(std::chrono::seconds(30)), 0);
}

std::string Serial(const std::string& command) {
  auto r = RunCommand({"/bin/bash", "-c", command + " | openssl x509 -noout -serial"});
  return std::string(absl::StripAsciiWhitespace(r.output));
}

TEST_F(ObservabilityTest, HttpsServesARenewedCertificateWithoutARestart) {
  auto server = Start({"--tls_reload_s=1"});
  ASSERT_NE(server, nullptr);
  const std::string port = http_base_.substr(http_base_.rfind(':') + 1);
  auto served = [&] {
    return Serial("openssl s_client -connect 127.0.0.1:" + port + " </dev/null 2>/dev/null");
  };
  const std::string first = Serial("cat " + certs_ + "/server.crt");
  ASSERT_TRUE(absl::StartsWith(first, "serial=")) << first;
  EXPECT_EQ(served(), first);
  // Renewed from the same CA (a new name makes make-certs.sh issue a new certificate).
  ASSERT_EQ(
      RunCommand({"/bin/bash", MAKE_CERTS_SCRIPT, certs_, "--server-name", "localhost"}).exit_code,
      0);
  const std::string second = Serial("cat " + certs_ + "/server.crt");
  ASSERT_NE(second, first);
  std::string now;
  for (int i = 0; i < 100 && (now = served()) != second; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_EQ(now, second) << "the renewed certificate was not served within 10 s";
  EXPECT_EQ(Get("/readyz").status, 200);
}

TEST_F(ObservabilityTest, MetricsAndTheJsonApiNeedAViewerToken) {
  auto server = Start();
  ASSERT_NE(server, nullptr);
  Init(*server);
  const std::string viewer = MakeToken(*server, "vera", "viewer");
  const std::string carl = MakeToken(*server, "carl", "contributor");
  ASSERT_TRUE(Push(*server, carl, 1, 0, "sst2", 2).ok());

  HttpResult none = Get("/metrics");
  EXPECT_EQ(none.status, 401);
  EXPECT_NE(none.headers.find("WWW-Authenticate: Bearer"), std::string::npos) << none.headers;
  EXPECT_NE(none.body.find("Authorization: Bearer"), std::string::npos) << none.body;
  EXPECT_EQ(Get("/metrics", "cf_" + std::string(64, 'a')).status, 401);
  HttpResult wrong_role = Get("/metrics", carl);
  EXPECT_EQ(wrong_role.status, 403);
  EXPECT_NE(wrong_role.body.find("VIEWER"), std::string::npos) << wrong_role.body;

  HttpResult metrics = Get("/metrics", viewer);
  ASSERT_EQ(metrics.status, 200) << metrics.body;
  EXPECT_NE(metrics.headers.find("text/plain; version=0.0.4"), std::string::npos);
  for (const char* line :
       {"coldfuse_base_version 0", "coldfuse_open_round 1", "coldfuse_open_round_contributions 1",
        "coldfuse_contributions_accepted_total 1", "coldfuse_tokens{role=\"viewer\"} 1",
        "coldfuse_tokens{role=\"contributor\"} 1",
        "coldfuse_received_bytes_total{rpc=\"PushContribution\"}",
        "# TYPE coldfuse_upload_duration_seconds histogram",
        "coldfuse_upload_duration_seconds_count 1"}) {
    EXPECT_NE(metrics.body.find(line), std::string::npos) << line << "\n" << metrics.body;
  }
  // No contributor names as labels unless the operator opts in.
  EXPECT_EQ(metrics.body.find("carl"), std::string::npos);

  HttpResult status = Get("/api/v1/status", viewer);
  ASSERT_EQ(status.status, 200) << status.body;
  EXPECT_NE(status.body.find("\"base_version\":\"0\""), std::string::npos) << status.body;
  EXPECT_NE(status.body.find("\"contributor\":\"carl\""), std::string::npos) << status.body;
  EXPECT_EQ(Get("/api/v1/status").status, 401);
  EXPECT_EQ(Get("/api/v1/status", carl).status, 403);
  HttpResult round = Get("/api/v1/rounds/1", viewer);
  EXPECT_EQ(round.status, 200);
  EXPECT_NE(round.body.find("\"state\":\"OPEN\""), std::string::npos) << round.body;
  HttpResult missing = Get("/api/v1/rounds/9", viewer);
  EXPECT_EQ(missing.status, 404);
  EXPECT_NE(missing.body.find("\"code\":\"NOT_FOUND\""), std::string::npos) << missing.body;
  EXPECT_EQ(Get("/api/v1/rounds/x", viewer).status, 400);
  EXPECT_EQ(Get("/no/such/page", viewer).status, 404);
  // The dashboard's page and Debian's Chart.js are served without a token (the page
  // asks for one), with a policy that runs only this server's scripts.
  HttpResult page = Get("/");
  EXPECT_EQ(page.status, 200);
  EXPECT_NE(page.headers.find("Content-Security-Policy: default-src 'self'"), std::string::npos);
  HttpResult chart = Get("/chart.min.js");
  EXPECT_EQ(chart.status, 200);
  EXPECT_NE(chart.body.find("Chart.js v3"), std::string::npos);
}

TEST_F(ObservabilityTest, EvaluatorsPullAndRecordScoresButCannotContribute) {
  auto server = Start({"--max_evaluations_per_base=3"});
  ASSERT_NE(server, nullptr);
  Init(*server);
  const std::string evan = MakeToken(*server, "evan", "evaluator");
  const std::string viewer = MakeToken(*server, "vera", "viewer");
  const std::string alice = MakeToken(*server, "alice", "contributor");
  const std::string bob = MakeToken(*server, "bob", "contributor");

  // An evaluator may pull a base (a viewer may not), but not contribute.
  EXPECT_TRUE(rpc::PullBase(Channel(*server, evan), 0).ok());
  EXPECT_TRUE(absl::IsPermissionDenied(rpc::PullBase(Channel(*server, viewer), 0).status()));
  absl::Status pushed = Push(*server, evan, 1, 0, "sst2", 3);
  EXPECT_TRUE(absl::IsPermissionDenied(pushed)) << pushed;

  // Round 1 fuses sst2 and mnli into base v1.
  ASSERT_TRUE(Push(*server, alice, 1, 0, "sst2", 4).ok());
  ASSERT_TRUE(Push(*server, bob, 1, 0, "mnli", 5).ok());
  ASSERT_TRUE(WaitForBase(*server, viewer, 1));

  auto unseen0 = Record(*server, evan, 0, "nyt_sentiment", 0.61);
  ASSERT_TRUE(unseen0.ok()) << unseen0.status();
  EXPECT_EQ(unseen0->evaluator(), "evan");
  EXPECT_FALSE(unseen0->task_seen());
  EXPECT_GT(unseen0->recorded_unix_ms(), 0);
  auto unseen1 = Record(*server, evan, 1, "nyt_sentiment", 0.7);
  ASSERT_TRUE(unseen1.ok()) << unseen1.status();
  EXPECT_FALSE(unseen1->task_seen());
  // A contributor's probe records too; sst2 was fused into v1, so it is a seen task.
  auto seen = Record(*server, alice, 1, "sst2", 0.9, 0);
  ASSERT_TRUE(seen.ok()) << seen.status();
  EXPECT_TRUE(seen->task_seen());
  // Recording the same (base, task, metric, k) again replaces the score.
  ASSERT_TRUE(Record(*server, evan, 1, "nyt_sentiment", 0.72).ok());

  // Refused: a viewer; a base never made; a value that is not a number; a bad name;
  // more scores than one base may hold.
  EXPECT_TRUE(absl::IsPermissionDenied(Record(*server, viewer, 1, "x", 0.5).status()));
  auto future = Record(*server, evan, 7, "nyt_sentiment", 0.5);
  EXPECT_TRUE(absl::IsNotFound(future.status())) << future.status();
  EXPECT_NE(future.status().message().find("v0..v1"), std::string::npos) << future.status();
  EXPECT_TRUE(absl::IsInvalidArgument(Record(*server, evan, 1, "t", std::nan("")).status()));
  EXPECT_TRUE(absl::IsInvalidArgument(Record(*server, evan, 1, "bad task!", 0.5).status()));
  ASSERT_TRUE(Record(*server, evan, 1, "rte", 0.5).ok());  // v1's third score
  auto full = Record(*server, evan, 1, "qnli", 0.5);
  EXPECT_TRUE(absl::IsResourceExhausted(full.status())) << full.status();

  auto list = [&](const std::string& token) {
    grpc::ClientContext ctx;
    v1::ListEvaluationsResponse r;
    EXPECT_TRUE(v1::Status::NewStub(Channel(*server, token))->ListEvaluations(&ctx, {}, &r).ok());
    return r;
  };
  v1::ListEvaluationsResponse all = list(viewer);
  ASSERT_EQ(all.evaluations_size(), 4);
  EXPECT_EQ(all.evaluations(1).base_version(), 1u);
  EXPECT_EQ(all.evaluations(1).task(), "nyt_sentiment");
  EXPECT_DOUBLE_EQ(all.evaluations(1).value(), 0.72);

  // /metrics shows the newest base's score per task.
  HttpResult metrics = Get("/metrics", viewer);
  EXPECT_NE(
      metrics.body.find("coldfuse_evaluation_score{task=\"nyt_sentiment\",metric=\"accuracy\","
                        "num_train_examples=\"64\",seen=\"false\"} 0.72"),
      std::string::npos)
      << metrics.body;

  // Stored: a restart keeps them.
  ASSERT_EQ(server->Stop(), 0);
  server = Start({"--max_evaluations_per_base=3"});
  ASSERT_NE(server, nullptr);
  v1::ListEvaluationsResponse again = list(evan);
  ASSERT_EQ(again.evaluations_size(), 4);
  EXPECT_DOUBLE_EQ(again.evaluations(1).value(), 0.72);
  EXPECT_EQ(again.evaluations(3).task(), "sst2");
  EXPECT_TRUE(again.evaluations(3).task_seen());
  HttpResult api = Get("/api/v1/evaluations?task=nyt%5Fsentiment", viewer);
  EXPECT_EQ(api.status, 200);
  EXPECT_NE(api.body.find("\"value\":0.72"), std::string::npos) << api.body;
  EXPECT_EQ(api.body.find("sst2"), std::string::npos) << api.body;
}

}  // namespace
}  // namespace coldfuse::testing
