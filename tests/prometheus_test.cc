// A real Prometheus (Debian's prometheus package) scrapes a real coldfused over HTTPS
// with a viewer token, as docs/operations.md tells operators to set it up, through two
// fused rounds; what Prometheus's query API then says must match the server's status.
#include <signal.h>

#include <cctype>
#include <fstream>
#include <map>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "common/json.h"
#include "common/model_spec.h"
#include "common/posix_file.h"
#include "common/rpc/client.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

constexpr char kSpec[] = "mlp:4,3,2";

std::string ReadToken(const std::string& path) {
  auto t = ReadFileToString(path);
  return t.ok() ? std::string(absl::StripAsciiWhitespace(*t)) : "";
}

// The value of an instant query's single sample, or nullopt (no sample yet).
std::optional<double> Query(int prometheus_port, const std::string& promql) {
  std::string encoded;
  for (unsigned char c : promql) {
    if (std::isalnum(c) || c == '_') {
      encoded += static_cast<char>(c);
    } else {
      encoded += absl::StrCat("%", absl::Hex(c, absl::kZeroPad2));
    }
  }
  HttpResult r =
      HttpGet(absl::StrCat("http://127.0.0.1:", prometheus_port, "/api/v1/query?query=", encoded));
  if (r.status != 200) return std::nullopt;
  // {"status":"success","data":{"resultType":"vector","result":[{"metric":{...},
  //  "value":[1700000000.1,"3"]}]}}
  auto json = ParseJson(r.body);
  if (!json.ok()) return std::nullopt;
  const JsonValue* data = json->Find("data");
  const JsonValue* result = data != nullptr ? data->Find("result") : nullptr;
  if (result == nullptr || result->array.size() != 1) return std::nullopt;
  const JsonValue* value = result->array[0].Find("value");
  double v = 0;
  if (value == nullptr || value->array.size() != 2 || !absl::SimpleAtod(value->array[1].text, &v)) {
    return std::nullopt;
  }
  return v;
}

// Polls until Prometheus has scraped `promql` == `want` (bounded).
bool Eventually(int port, const std::string& promql, double want, double* last) {
  for (int i = 0; i < 600; ++i) {  // 60 s
    auto v = Query(port, promql);
    if (v.has_value()) *last = *v;
    if (v.has_value() && *v == want) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  return false;
}

TEST(PrometheusTest, ARealPrometheusScrapesTheServerAndAgreesWithItsStatus) {
  TempDir dir;
  const std::string certs = dir.path() + "/certs";
  auto made = RunCommand({"/bin/bash", MAKE_CERTS_SCRIPT, certs});
  ASSERT_EQ(made.exit_code, 0) << made.output;
  const int http_port = FreePort();
  auto server = ServerProcess::Start(
      dir.path() + "/db", dir.path() + "/server.log",
      {"--tls_cert=" + certs + "/server.crt", "--tls_key=" + certs + "/server.key",
       "--bootstrap_token_file=" + dir.path() + "/operator.token", "--min_contributions=2",
       absl::StrCat("--http_listen=127.0.0.1:", http_port)});
  ASSERT_NE(server, nullptr);
  const std::string op_file = dir.path() + "/operator.token";
  auto ctl = [&](std::vector<std::string> args) {
    args.insert(args.begin(), {CtlBinary(), "--server=" + server->address(),
                               "--tls_ca=" + certs + "/ca.crt", "--token_file=" + op_file});
    return RunCommand(args);
  };
  std::map<std::string, std::string> token;
  for (const auto& [name, role] : std::vector<std::pair<std::string, std::string>>{
           {"prometheus", "viewer"}, {"alice", "contributor"}, {"bob", "contributor"}}) {
    auto r = ctl({"token", "create", "--name=" + name, "--role=" + role,
                  "--out=" + dir.path() + "/" + name + ".token"});
    ASSERT_EQ(r.exit_code, 0) << r.output;
    token[name] = ReadToken(dir.path() + "/" + name + ".token");
  }
  ASSERT_EQ(ctl({"init", std::string("--spec=") + kSpec}).exit_code, 0);

  // Prometheus as docs/operations.md configures it: HTTPS with the server's CA, the
  // viewer token from a file.
  const int prom_port = FreePort();
  const std::string config = dir.path() + "/prometheus.yml";
  std::ofstream(config) << "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n"
                        << "scrape_configs:\n  - job_name: coldfuse\n    scheme: https\n"
                        << "    tls_config:\n      ca_file: " << certs << "/ca.crt\n"
                        << "    authorization:\n      type: Bearer\n      credentials_file: "
                        << dir.path() << "/prometheus.token\n"
                        << "    static_configs:\n      - targets: ['127.0.0.1:" << http_port
                        << "']\n";
  auto prometheus = Process::Start(
      {"prometheus", "--config.file=" + config, "--storage.tsdb.path=" + dir.path() + "/tsdb",
       absl::StrCat("--web.listen-address=127.0.0.1:", prom_port)},
      dir.path() + "/prometheus.log");
  ASSERT_NE(prometheus, nullptr);

  double last = -1;
  ASSERT_TRUE(Eventually(prom_port, "up{job=\"coldfuse\"}", 1, &last))
      << "Prometheus never scraped coldfused; its log:\n"
      << ReadFileToString(dir.path() + "/prometheus.log").value_or("");

  auto channel = [&](const std::string& t) {
    return *rpc::Connect(server->address(), {.tls = {.ca_file = certs + "/ca.crt"}, .token = t});
  };
  auto status = [&] {
    grpc::ClientContext ctx;
    v1::ServerStatus s;
    EXPECT_TRUE(v1::Status::NewStub(channel(token["prometheus"]))->GetStatus(&ctx, {}, &s).ok());
    return s;
  };
  // Two rounds of two contributions, each fused into the next base.
  for (uint64_t round = 1; round <= 2; ++round) {
    for (const char* who : {"alice", "bob"}) {
      v1::ContributionHeader h;
      h.set_round(round);
      h.set_base_version(round - 1);
      h.set_task(who);
      h.set_num_examples(10);
      *h.mutable_manifest() = MlpManifest(*ParseModelSpec(kSpec));
      auto r = rpc::PushContribution(channel(token[who]), h,
                                     InitMlpBody(*ParseModelSpec(kSpec), round * 10 + who[0]));
      ASSERT_TRUE(r.ok()) << r.status();
    }
    for (int i = 0; i < 300 && status().base_version() < round; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }
  const v1::ServerStatus s = status();
  ASSERT_EQ(s.base_version(), 2u);
  int contributions = 0;
  {
    grpc::ClientContext ctx;
    v1::ListRoundsResponse rounds;
    ASSERT_TRUE(
        v1::Status::NewStub(channel(token["prometheus"]))->ListRounds(&ctx, {}, &rounds).ok());
    for (const auto& r : rounds.rounds()) contributions += r.contributions_size();
  }
  ASSERT_EQ(contributions, 4);

  // What Prometheus stored matches the server's status.
  EXPECT_TRUE(Eventually(prom_port, "coldfuse_base_version", s.base_version(), &last)) << last;
  EXPECT_TRUE(Eventually(prom_port, "coldfuse_open_round", s.open_round().number(), &last)) << last;
  EXPECT_TRUE(Eventually(prom_port, "coldfuse_contributions_accepted_total", contributions, &last))
      << last;
  EXPECT_TRUE(Eventually(prom_port, "coldfuse_rounds_closed_total{reason=\"quorum\"}", 2, &last))
      << last;
  EXPECT_TRUE(Eventually(prom_port, "coldfuse_fusion_duration_seconds_count", 2, &last)) << last;
  EXPECT_TRUE(Eventually(prom_port, "coldfuse_upload_duration_seconds_count", 4, &last)) << last;
  EXPECT_TRUE(Eventually(prom_port, "coldfuse_store_disk_bytes > bool 0", 1, &last)) << last;

  prometheus->Signal(SIGTERM);
  prometheus->Wait(std::chrono::seconds(20));
  EXPECT_EQ(server->Stop(), 0);
}

}  // namespace
}  // namespace coldfuse::testing
