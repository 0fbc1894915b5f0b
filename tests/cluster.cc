#include "tests/cluster.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"
#include "common/model_spec.h"
#include "common/posix_file.h"
#include "common/safetensors.h"
#include "gtest/gtest.h"

namespace coldfuse::testing {
namespace fs = std::filesystem;

std::unique_ptr<Process> Process::Start(const std::vector<std::string>& argv,
                                        const std::string& log_path) {
  auto p = std::unique_ptr<Process>(new Process());
  int fd = ::open(log_path.c_str(), O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
  EXPECT_GE(fd, 0) << "cannot open " << log_path;
  // Everything the child needs is made before fork: the test process has other threads
  // (gRPC's), and a child that allocated could wait forever on an allocator lock one of
  // them held at the fork (seen under ASan: coldfusectl never started, killed at 60 s).
  // Between fork and exec the child makes system calls only.
  std::vector<char*> args;
  for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
  args.push_back(nullptr);
  pid_t pid = ::fork();
  if (pid == 0) {
    // Die with the test, even if it crashes before its destructors run.
    ::prctl(PR_SET_PDEATHSIG, SIGKILL);
    ::dup2(fd, STDOUT_FILENO);
    ::dup2(fd, STDERR_FILENO);
    ::execvp(args[0], args.data());  // PATH lookup for tools like python3
    ::_exit(127);
  }
  ::close(fd);
  p->pid_ = pid;
  return p;
}

Process::~Process() {
  if (!reaped_ && pid_ > 0) {
    ::kill(pid_, SIGKILL);
    ::waitpid(pid_, nullptr, 0);
  }
}

void Process::Signal(int sig) {
  if (!reaped_) ::kill(pid_, sig);
}

std::optional<int> Process::Wait(std::chrono::milliseconds timeout) {
  if (reaped_) return exit_code_;
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (true) {
    int status = 0;
    pid_t r = ::waitpid(pid_, &status, WNOHANG);
    if (r == pid_) {
      reaped_ = true;
      exit_code_ = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
      return exit_code_;
    }
    if (std::chrono::steady_clock::now() >= deadline) return std::nullopt;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

CommandResult RunCommand(const std::vector<std::string>& argv, std::chrono::milliseconds timeout) {
  TempDir dir;
  std::string log = dir.path() + "/out";
  auto p = Process::Start(argv, log);
  CommandResult result;
  auto code = p->Wait(timeout);
  if (!code.has_value()) {
    p->Signal(SIGKILL);
    code = p->Wait(std::chrono::seconds(10));
  }
  result.exit_code = code.value_or(-1);
  auto out = ReadFileToString(log);
  if (out.ok()) result.output = *out;
  return result;
}

TempDir::TempDir() {
  std::string tmpl = (fs::path(::testing::TempDir()) / "coldfuse-XXXXXX").string();
  char* made = ::mkdtemp(tmpl.data());
  EXPECT_NE(made, nullptr);
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (std::getenv("COLDFUSE_KEEP_TEST_DIRS") != nullptr) return;  // for debugging
  std::error_code ec;
  fs::remove_all(path_, ec);
}

std::unique_ptr<ServerProcess> ServerProcess::Start(const std::string& data_dir,
                                                    const std::string& log_path,
                                                    std::vector<std::string> extra_flags, int port,
                                                    std::vector<std::string> launcher) {
  auto s = std::unique_ptr<ServerProcess>(new ServerProcess());
  std::string port_file = data_dir + ".port";
  std::error_code ec;
  fs::remove(port_file, ec);
  std::vector<std::string> argv = {ServerBinary(), "--data_dir=" + data_dir,
                                   absl::StrCat("--listen=127.0.0.1:", port),
                                   "--port_file=" + port_file};
  argv.insert(argv.end(), extra_flags.begin(), extra_flags.end());
  argv.insert(argv.begin(), launcher.begin(), launcher.end());
  // Plaintext and tokenless unless the test configures TLS itself.
  const bool secure = std::any_of(extra_flags.begin(), extra_flags.end(),
                                  [](const auto& f) { return absl::StartsWith(f, "--tls_cert"); });
  if (!secure) argv.push_back("--insecure");
  s->process_ = Process::Start(argv, log_path);
  for (int i = 0; i < 300; ++i) {  // up to 30 s
    auto text = ReadFileToString(port_file);
    int p = 0;
    if (text.ok() && absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &p) && p > 0) {
      s->port_ = p;
      break;
    }
    if (s->process_->Wait(std::chrono::milliseconds(100)).has_value()) break;  // died
  }
  if (s->port_ == 0) {
    auto log = ReadFileToString(log_path);
    ADD_FAILURE() << "coldfused did not start; log:\n" << (log.ok() ? *log : "");
    return nullptr;
  }
  if (!secure) s->channel_ = rpc::ConnectInsecure(s->address());
  return s;
}

v1::ServerStatus ServerProcess::Status() const {
  auto stub = v1::Status::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ServerStatus s;
  grpc::Status st = stub->GetStatus(&ctx, {}, &s);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return s;
}

std::vector<v1::RoundInfo> ServerProcess::Rounds() const {
  auto stub = v1::Status::NewStub(channel_);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::ListRoundsResponse r;
  grpc::Status st = stub->ListRounds(&ctx, {}, &r);
  EXPECT_TRUE(st.ok()) << st.error_message();
  return {r.rounds().begin(), r.rounds().end()};
}

bool ServerProcess::WaitForBase(uint64_t version, std::chrono::milliseconds timeout) const {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < deadline) {
    auto stub = v1::Status::NewStub(channel_);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::ServerStatus s;
    if (stub->GetStatus(&ctx, {}, &s).ok() && s.initialized() && s.base_version() >= version) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

int ServerProcess::Stop() {
  process_->Signal(SIGTERM);
  return process_->Wait(std::chrono::seconds(30)).value_or(-1);
}

HttpResult HttpGet(const std::string& url, const std::string& ca_file, const std::string& token) {
  TempDir tmp;
  const std::string body = tmp.path() + "/body", headers = tmp.path() + "/headers";
  std::vector<std::string> argv = {"curl", "-sS", "--max-time", "20", "-o",
                                   body,   "-D",  headers,      "-w", "%{http_code}"};
  if (!ca_file.empty()) argv.insert(argv.end(), {"--cacert", ca_file});
  // From a file, so the token never shows in the process list.
  const std::string header_file = tmp.path() + "/auth";
  if (!token.empty()) {
    std::ofstream(header_file) << "Authorization: Bearer " << token << "\n";
    argv.insert(argv.end(), {"-H", "@" + header_file});
  }
  argv.push_back(url);
  CommandResult r = RunCommand(argv, std::chrono::seconds(30));
  HttpResult out;
  int code = 0;
  std::string text = r.output;
  // curl prints the code last (its errors, if any, come before it on stderr).
  if (text.size() >= 3 && absl::SimpleAtoi(text.substr(text.size() - 3), &code)) out.status = code;
  auto b = ReadFileToString(body);
  if (b.ok()) out.body = *b;
  auto h = ReadFileToString(headers);
  if (h.ok()) out.headers = *h;
  return out;
}

int FreePort() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof(addr);
  int port = 0;
  if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0 &&
      ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0) {
    port = ntohs(addr.sin_port);
  }
  ::close(fd);
  return port;
}

std::string ServerBinary() { return COLDFUSED_BIN; }
std::string ClientBinary() { return COLDFUSE_CLIENT_BIN; }
std::string CtlBinary() { return COLDFUSECTL_BIN; }

void WriteBlobsCsv(const std::string& path, int features, int classes, int rows, uint64_t seed) {
  SplitMix64 rng(seed);
  // Fixed class centres (the same for every seed) so tasks share structure.
  SplitMix64 centres_rng(12345);
  std::vector<std::vector<double>> centres(classes, std::vector<double>(features));
  for (auto& c : centres) {
    for (auto& x : c) x = 4 * centres_rng.Uniform() - 2;
  }
  std::ofstream out(path);
  for (int f = 0; f < features; ++f) out << "x" << f << ",";
  out << "label\n";
  for (int r = 0; r < rows; ++r) {
    int label = r % classes;
    for (int f = 0; f < features; ++f) {
      // Box-Muller normal noise around the class centre.
      double u1 = std::max(rng.Uniform(), 1e-12), u2 = rng.Uniform();
      double z = std::sqrt(-2 * std::log(u1)) * std::cos(2 * M_PI * u2);
      out << centres[label][f] + 0.8 * z << ",";
    }
    out << label << "\n";
  }
}

SavedContribution ReadSavedContribution(const std::string& state_dir, uint64_t round) {
  SavedContribution c;
  auto header = ReadFileToString(absl::StrCat(state_dir, "/contrib-r", round, ".header"));
  EXPECT_TRUE(header.ok()) << header.status();
  if (header.ok()) {
    EXPECT_TRUE(c.header.ParseFromString(*header));
  }
  auto tensors = ReadSafetensors(absl::StrCat(state_dir, "/contrib-r", round, ".safetensors"),
                                 nullptr, /*allow_int8=*/true);
  EXPECT_TRUE(tensors.ok()) << tensors.status();
  if (tensors.ok()) c.tensors = std::move(*tensors);
  return c;
}

std::vector<float> Floats(const HostTensor& t) {
  std::vector<float> v(t.data.size() / 4);
  std::memcpy(v.data(), t.data.data(), v.size() * 4);
  return v;
}

}  // namespace coldfuse::testing
