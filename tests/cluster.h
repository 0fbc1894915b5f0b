// Test harness for end-to-end tests: runs the real coldfused, coldfuse-client and
// coldfusectl binaries as child processes on loopback, in a temp folder, and talks to
// the server over gRPC like any client would. Not thread-safe.
#ifndef COLDFUSE_TESTS_CLUSTER_H_
#define COLDFUSE_TESTS_CLUSTER_H_

#include <sys/types.h>

#include <chrono>
#include <condition_variable>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "coldfuse/v1/coldfuse.grpc.pb.h"
#include "common/rpc/client.h"

namespace coldfuse::testing {

// A child process; killed (SIGKILL) on destruction if still running.
class Process {
 public:
  // Starts `argv` with stdout and stderr appended to `log_path`.
  static std::unique_ptr<Process> Start(const std::vector<std::string>& argv,
                                        const std::string& log_path);
  ~Process();
  pid_t pid() const { return pid_; }
  void Signal(int sig);
  // Waits up to `timeout`; returns the exit code (128+signal if killed), or nullopt.
  std::optional<int> Wait(std::chrono::milliseconds timeout);

 private:
  pid_t pid_ = -1;
  bool reaped_ = false;
  int exit_code_ = -1;
};

struct CommandResult {
  int exit_code = -1;
  std::string output;  // stdout and stderr together
};
// Runs a command to completion (bounded by `timeout`, then SIGKILL).
CommandResult RunCommand(const std::vector<std::string>& argv,
                         std::chrono::milliseconds timeout = std::chrono::seconds(60));

// An HTTP(S) GET with curl: `ca_file` (HTTPS) and `token` (a bearer token) optional.
struct HttpResult {
  int status = 0;  // 0: no response (connection refused, TLS failure, ...)
  std::string body;
  std::string headers;  // the response's header lines
};
HttpResult HttpGet(const std::string& url, const std::string& ca_file = "",
                   const std::string& token = "");

// A TCP port on 127.0.0.1 that was free a moment ago (for programs that need one given).
int FreePort();

// A fresh temp folder, removed on destruction.
class TempDir {
 public:
  TempDir();
  ~TempDir();
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// One coldfused on an ephemeral loopback port over a data folder.
class ServerProcess {
 public:
  // Starts coldfused and waits until it serves. `port` 0 picks a free one. Adds
  // --insecure unless `extra_flags` has --tls_cert. `launcher` is put before the binary
  // (e.g. {"prlimit", "--nofile=256:256"}).
  static std::unique_ptr<ServerProcess> Start(const std::string& data_dir,
                                              const std::string& log_path,
                                              std::vector<std::string> extra_flags = {},
                                              int port = 0, std::vector<std::string> launcher = {});
  int port() const { return port_; }
  std::string address() const { return "127.0.0.1:" + std::to_string(port_); }
  // Plaintext channel (null for a TLS server: set one with set_channel).
  std::shared_ptr<grpc::Channel> channel() const { return channel_; }
  void set_channel(std::shared_ptr<grpc::Channel> c) { channel_ = std::move(c); }
  Process* process() { return process_.get(); }

  v1::ServerStatus Status() const;
  std::vector<v1::RoundInfo> Rounds() const;
  // Polls status until base_version >= version (bounded); returns whether it got there.
  bool WaitForBase(uint64_t version, std::chrono::milliseconds timeout) const;
  // SIGTERM and wait for a clean exit; returns the exit code.
  int Stop();

 private:
  std::unique_ptr<Process> process_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
};

// Paths of the binaries under test (set by CMake).
std::string ServerBinary();
std::string ClientBinary();
std::string CtlBinary();

// Writes a synthetic classification task (deterministic gaussian blobs) as CSV:
// `features` columns, `classes` classes, `rows` rows.
void WriteBlobsCsv(const std::string& path, int features, int classes, int rows, uint64_t seed);

// Reads a contributor's archived contribution (state_dir/contrib-rN.{safetensors,header}).
struct SavedContribution {
  v1::ContributionHeader header;
  std::vector<HostTensor> tensors;
};
SavedContribution ReadSavedContribution(const std::string& state_dir, uint64_t round);

// A source that stops before byte `gate` of tensor 0 until released, so a test can break
// the link at a known point.
class GatedSource final : public rpc::TensorSource {
 public:
  GatedSource(const std::vector<HostTensor>& t, uint64_t gate) : inner_(t), gate_(gate) {}
  absl::Status Read(uint32_t tensor, uint64_t offset, uint64_t length, std::string* out) override {
    if (tensor > 0 || offset >= gate_) {
      std::unique_lock<std::mutex> l(mu_);
      reached_ = true;
      cv_.notify_all();
      cv_.wait(l, [&] { return open_; });
    }
    return inner_.Read(tensor, offset, length, out);
  }
  void WaitUntilReached() {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return reached_; });
  }
  void Open() {
    std::lock_guard<std::mutex> l(mu_);
    open_ = true;
    cv_.notify_all();
  }

 private:
  rpc::HostTensorSource inner_;
  const uint64_t gate_;
  std::mutex mu_;
  std::condition_variable cv_;
  bool reached_ = false, open_ = false;
};

// Float values of an F32 host tensor.
std::vector<float> Floats(const HostTensor& t);

}  // namespace coldfuse::testing

#endif  // COLDFUSE_TESTS_CLUSTER_H_
