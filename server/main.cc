// coldfused: the fusion server. Flags -> ServerOptions -> run until SIGINT/SIGTERM.
#include <signal.h>

#include <cstdio>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "common/logging.h"
#include "common/tensor_file.h"
#include "server/server.h"

ABSL_FLAG(std::string, data_dir, "", "Folder of the server's RocksDB store (created if missing)");
ABSL_FLAG(std::string, listen, "127.0.0.1:7878", "host:port to serve on; port 0 picks one");
ABSL_FLAG(std::string, port_file, "", "If set, write the bound port to this file once serving");
ABSL_FLAG(uint32_t, min_contributions, 3, "Close and fuse a round once this many are in");
ABSL_FLAG(double, round_timeout_s, 600,
          "Close a round with at least one contribution this many seconds after it opened "
          "(0: never)");
ABSL_FLAG(int, worker_threads, 4, "Threads for commits and fusion");

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(
      "coldfused --data_dir=DIR [--listen=127.0.0.1:7878] [--min_contributions=3] "
      "[--round_timeout_s=600]\nThe coldfuse fusion server.");
  absl::ParseCommandLine(argc, argv);

  // Block the signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  coldfuse::ServerOptions options;
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.listen = absl::GetFlag(FLAGS_listen);
  options.rounds.min_contributions = absl::GetFlag(FLAGS_min_contributions);
  options.rounds.round_timeout_ms =
      static_cast<int64_t>(absl::GetFlag(FLAGS_round_timeout_s) * 1000);
  options.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  if (options.worker_threads < 1) options.worker_threads = 1;

  auto server = coldfuse::Server::Start(options);
  if (!server.ok()) {
    CF_LOG(ERROR) << "coldfused cannot start: " << server.status();
    return 1;
  }
  std::string port_file = absl::GetFlag(FLAGS_port_file);
  if (!port_file.empty()) {
    auto st = coldfuse::WriteFileAtomic(port_file, std::to_string((*server)->port()) + "\n");
    if (!st.ok()) {
      CF_LOG(ERROR) << st;
      return 1;
    }
  }
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    CF_LOG(INFO) << "signal " << sig << ": shutting down";
    (*server)->Shutdown();
  });
  (*server)->Wait();
  waiter.join();
  server->reset();
  CF_LOG(INFO) << "coldfused stopped";
  return 0;
}
