// coldfused: the fusion server. Flags -> ServerOptions -> run until SIGINT/SIGTERM.
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/posix_file.h"
#include "common/program.h"
#include "server/rounds/staleness.h"
#include "server/server.h"

ABSL_FLAG(std::string, data_dir, "", "Folder of the server's RocksDB store (created if missing)");
ABSL_FLAG(std::string, listen, "127.0.0.1:7878", "host:port to serve on; port 0 picks one");
ABSL_FLAG(std::string, port_file, "", "If set, write the bound port to this file once serving");
ABSL_FLAG(std::string, http_port_file, "",
          "If set, write the bound HTTP port (--http_listen) to this file once serving");
ABSL_FLAG(uint32_t, min_contributions, 3, "Close and fuse a round once this many are in");
ABSL_FLAG(double, round_timeout_s, 600,
          "Close a round with at least one contribution this many seconds after it opened "
          "(0: never)");
ABSL_FLAG(int, worker_threads, 4, "Threads for commits and fusion");
ABSL_FLAG(bool, blob_files, true,
          "Keep tensor chunks in RocksDB blob files (compaction never rewrites them)");
ABSL_FLAG(std::string, tls_cert, "", "PEM server certificate (deploy/make-certs.sh)");
ABSL_FLAG(std::string, tls_key, "", "PEM private key of --tls_cert");
ABSL_FLAG(std::string, tls_client_ca, "",
          "If set: mutual TLS; contributors must present a certificate from this CA");
ABSL_FLAG(bool, insecure, false,
          "No TLS and no tokens. For tests and local experiments only: anyone who can "
          "reach the port can administer the server");
ABSL_FLAG(std::string, bootstrap_token_file, "",
          "If no operator token exists, create one and write it here (mode 0600)");
ABSL_FLAG(uint32_t, max_uploads_per_round, 3, "Upload attempts per contributor per round");
ABSL_FLAG(uint64_t, max_bytes_per_day, 0,
          "Accepted bytes per contributor per UTC day (0: unlimited)");
ABSL_FLAG(double, outlier_factor, 3.0,
          "Quarantine a contribution whose delta norm exceeds this many times the round's "
          "median (needs >= 3 contributions; 0: off)");
ABSL_FLAG(int, keep_bases, 0,
          "Retention: keep the tensors of the newest N good bases (0: all). The current "
          "base, the one before it (rollback target), pinned bases and bases being "
          "downloaded are always kept; records and checksums are never removed");
ABSL_FLAG(int, keep_contribution_rounds, -1,
          "Retention: keep the contributions' tensors of the newest N closed rounds (-1: "
          "all; 0: remove them once their round is fused). Their records and metrics stay");
ABSL_FLAG(int, max_staleness, 4,
          "Asynchronous contributions: accept one fine-tuned from a base up to N fusions "
          "older than the open round's (0: only from the current base). Those bases are "
          "kept on disk whatever --keep_bases says");
ABSL_FLAG(double, staleness_exponent, 0.5,
          "A contribution s fusions stale is fused as its own delta times (1 + s)^-a, a "
          "this exponent (0.5: FedBuff's 1/sqrt(1 + s); 0: not down-weighted)");
ABSL_FLAG(std::string, umask, "077",
          "Permission bits (octal) kept from group and others on the data folder, its "
          "files and every file the server writes; 027 lets the service's group read");
ABSL_FLAG(double, tls_reload_s, 60,
          "Re-read --tls_cert, --tls_key and --tls_client_ca this often, so renewed files "
          "serve new connections without a restart (0: read once at start)");
ABSL_FLAG(bool, allow_readable_key, false,
          "Accept a --tls_key file that every local user can read (refused otherwise)");
ABSL_FLAG(int, max_connections, 0,
          "Most client connections open at once; at the limit a new connection replaces "
          "the one silent longest (if silent >= 1 s) or is closed (0: what the file "
          "descriptor limit allows)");
ABSL_FLAG(int, max_streams_per_connection, 100, "Most concurrent calls on one connection");
ABSL_FLAG(int, upload_memory_mb, 1024,
          "Memory for upload buffers: at most this / 5 MiB uploads stream at once");
ABSL_FLAG(int, max_uploads_per_contributor, 4, "Most uploads one contributor streams at once");
ABSL_FLAG(double, upload_idle_timeout_s, 300,
          "End an upload stream that sends nothing for this long (a chunk is 1 MiB)");
ABSL_FLAG(double, handshake_timeout_s, 10,
          "Close a connection that has not finished its TLS/HTTP2 handshake by then");
ABSL_FLAG(double, max_connection_idle_s, 600,
          "Close a connection with no call for this long (clients reconnect when needed)");
ABSL_FLAG(std::string, http_listen, "",
          "host:port for HTTP: /healthz, /readyz, /metrics, the JSON status API and the "
          "dashboard (HTTPS with --tls_cert unless --insecure; empty: off)");
ABSL_FLAG(bool, metrics_without_token, false,
          "Serve /metrics without a token (default: a viewer, evaluator or operator token, "
          "as for the status API)");
ABSL_FLAG(std::string, dashboard_dir, "",
          "For developing the dashboard: serve its files from this folder (e.g. "
          "server/http/dashboard) instead of the copies built in");
ABSL_FLAG(bool, metrics_contributor_labels, false,
          "Add per-contributor series to /metrics (one series per contributor)");
ABSL_FLAG(double, drain_s, 0,
          "On SIGTERM, report NOT_SERVING (gRPC health, /readyz) this long before refusing "
          "new calls, so load balancers stop sending first");
ABSL_FLAG(uint32_t, max_evaluations_per_base, 256,
          "Evaluation scores one base version may hold (all tasks, metrics and evaluators)");

namespace {

// Raises the soft file descriptor limit to the hard one: each connection and each open
// store file takes one, and the default soft limit (1024) is easy to reach.
void RaiseFdLimit() {
  rlimit lim{};
  if (::getrlimit(RLIMIT_NOFILE, &lim) != 0) return;
  rlim_t before = lim.rlim_cur;
  if (lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    if (::setrlimit(RLIMIT_NOFILE, &lim) != 0) lim.rlim_cur = before;
  }
  if (lim.rlim_cur != before) {
    CF_LOG(INFO) << "file descriptor limit raised from " << before << " to " << lim.rlim_cur;
  }
}

int Millis(double seconds) { return static_cast<int>(seconds * 1000); }

// A number flag must be finite and in [low, high]: a NaN would be stored or turned into
// an undefined integer.
constexpr int kExitConfig = 78;  // sysexits.h EX_CONFIG

// Tells systemd (Type=notify: $NOTIFY_SOCKET) the server's state, so `systemctl start`
// returns once it serves, with the bootstrap token written. No-op without the variable.
void NotifySystemd(const std::string& message) {
  const char* path = std::getenv("NOTIFY_SOCKET");
  if (path == nullptr || path[0] == '\0') return;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const size_t len = std::strlen(path);
  if (len >= sizeof(addr.sun_path)) return;
  std::memcpy(addr.sun_path, path, len);
  if (path[0] == '@') addr.sun_path[0] = '\0';  // an abstract socket
  const int fd = ::socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return;
  const socklen_t size = static_cast<socklen_t>(offsetof(sockaddr_un, sun_path) + len);
  if (::sendto(fd, message.data(), message.size(), MSG_NOSIGNAL,
               reinterpret_cast<const sockaddr*>(&addr), size) < 0) {
    CF_LOG(WARNING) << "cannot notify systemd at " << path << ": " << std::strerror(errno);
  }
  ::close(fd);
}

bool InRange(const char* flag, double value, double low, double high) {
  if (std::isfinite(value) && value >= low && value <= high) return true;
  CF_LOG(ERROR) << "--" << flag << "=" << value << " is out of range: give a number from " << low
                << " to " << high;
  return false;
}

}  // namespace

int main(int argc, char** argv) {
  coldfuse::InitProgram(
      argc, argv,
      "coldfused --data_dir=DIR --tls_cert=server.crt --tls_key=server.key "
      "[--tls_client_ca=ca.crt] [--bootstrap_token_file=FILE] [--listen=127.0.0.1:7878] "
      "[--min_contributions=3] [--round_timeout_s=600]\n"
      "coldfused --data_dir=DIR --insecure ...   (tests only)\nThe coldfuse fusion server.",
      __FILE__);

  // Block the signals in every thread; one thread waits for them.
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);

  if (!InRange("round_timeout_s", absl::GetFlag(FLAGS_round_timeout_s), 0, 1e9) ||
      !InRange("outlier_factor", absl::GetFlag(FLAGS_outlier_factor), 0, 1e6) ||
      !InRange("handshake_timeout_s", absl::GetFlag(FLAGS_handshake_timeout_s), 0.1, 3600) ||
      !InRange("max_connection_idle_s", absl::GetFlag(FLAGS_max_connection_idle_s), 1, 2e6) ||
      !InRange("max_connections", absl::GetFlag(FLAGS_max_connections), 0, 1 << 20) ||
      !InRange("max_streams_per_connection", absl::GetFlag(FLAGS_max_streams_per_connection), 1,
               1 << 20) ||
      !InRange("worker_threads", absl::GetFlag(FLAGS_worker_threads), 1, 1024) ||
      !InRange("upload_memory_mb", absl::GetFlag(FLAGS_upload_memory_mb), 5, 1 << 22) ||
      !InRange("max_uploads_per_contributor", absl::GetFlag(FLAGS_max_uploads_per_contributor), 1,
               1 << 20) ||
      !InRange("upload_idle_timeout_s", absl::GetFlag(FLAGS_upload_idle_timeout_s), 0.1, 2e6) ||
      !InRange("tls_reload_s", absl::GetFlag(FLAGS_tls_reload_s), 0, 86400) ||
      !InRange("drain_s", absl::GetFlag(FLAGS_drain_s), 0, 3600) ||
      !InRange("max_evaluations_per_base", absl::GetFlag(FLAGS_max_evaluations_per_base), 1,
               1 << 20) ||
      !InRange("keep_bases", absl::GetFlag(FLAGS_keep_bases), 0, 1 << 30) ||
      !InRange("keep_contribution_rounds", absl::GetFlag(FLAGS_keep_contribution_rounds), -1,
               1 << 30) ||
      !InRange("max_staleness", absl::GetFlag(FLAGS_max_staleness), 0,
               coldfuse::rounds::kMaxStalenessBound) ||
      !InRange("staleness_exponent", absl::GetFlag(FLAGS_staleness_exponent), 0, 16)) {
    return 2;
  }
  RaiseFdLimit();
  coldfuse::ServerOptions options;
  {
    const std::string mask = absl::GetFlag(FLAGS_umask);
    unsigned value = 0;
    if (mask.empty() || mask.size() > 4 ||
        mask.find_first_not_of("01234567") != std::string::npos ||
        (value = static_cast<unsigned>(std::stoul(mask, nullptr, 8))) > 0777) {
      CF_LOG(ERROR) << "--umask=" << mask << " is not an octal permission mask such as 077";
      return 2;
    }
    options.data_mode_mask = value;
    ::umask(value);
  }
  options.data_dir = absl::GetFlag(FLAGS_data_dir);
  options.listen = absl::GetFlag(FLAGS_listen);
  options.rounds.min_contributions = absl::GetFlag(FLAGS_min_contributions);
  options.rounds.round_timeout_ms =
      static_cast<int64_t>(absl::GetFlag(FLAGS_round_timeout_s) * 1000);
  options.worker_threads = absl::GetFlag(FLAGS_worker_threads);
  options.blob_files = absl::GetFlag(FLAGS_blob_files);
  options.tls.cert_file = absl::GetFlag(FLAGS_tls_cert);
  options.tls.key_file = absl::GetFlag(FLAGS_tls_key);
  options.tls.client_ca_file = absl::GetFlag(FLAGS_tls_client_ca);
  options.tls.allow_readable_key = absl::GetFlag(FLAGS_allow_readable_key);
  // Whole seconds, at least 1 unless 0 (gRPC's file watcher counts in seconds).
  options.tls.reload_interval_s =
      absl::GetFlag(FLAGS_tls_reload_s) <= 0
          ? 0
          : std::max(1u, static_cast<unsigned>(absl::GetFlag(FLAGS_tls_reload_s)));
  options.insecure = absl::GetFlag(FLAGS_insecure);
  options.bootstrap_token_file = absl::GetFlag(FLAGS_bootstrap_token_file);
  options.intake.max_uploads_per_round = absl::GetFlag(FLAGS_max_uploads_per_round);
  options.intake.max_bytes_per_day = absl::GetFlag(FLAGS_max_bytes_per_day);
  options.rounds.outlier_factor = absl::GetFlag(FLAGS_outlier_factor);
  options.rounds.keep_bases = static_cast<uint32_t>(absl::GetFlag(FLAGS_keep_bases));
  options.rounds.keep_contribution_rounds = absl::GetFlag(FLAGS_keep_contribution_rounds);
  options.rounds.max_staleness = static_cast<uint32_t>(absl::GetFlag(FLAGS_max_staleness));
  options.rounds.staleness_exponent = absl::GetFlag(FLAGS_staleness_exponent);
  options.max_connections = absl::GetFlag(FLAGS_max_connections);
  options.max_streams_per_connection = absl::GetFlag(FLAGS_max_streams_per_connection);
  options.handshake_timeout_ms = Millis(absl::GetFlag(FLAGS_handshake_timeout_s));
  options.upload_memory_bytes = int64_t{absl::GetFlag(FLAGS_upload_memory_mb)} << 20;
  options.max_uploads_per_contributor = absl::GetFlag(FLAGS_max_uploads_per_contributor);
  options.upload_idle_timeout_ms = Millis(absl::GetFlag(FLAGS_upload_idle_timeout_s));
  options.max_connection_idle_ms = Millis(absl::GetFlag(FLAGS_max_connection_idle_s));
  options.http_listen = absl::GetFlag(FLAGS_http_listen);
  options.http.metrics_without_token = absl::GetFlag(FLAGS_metrics_without_token);
  options.http.dashboard_dir = absl::GetFlag(FLAGS_dashboard_dir);
  options.metrics.contributor_labels = absl::GetFlag(FLAGS_metrics_contributor_labels);
  options.drain_ms = Millis(absl::GetFlag(FLAGS_drain_s));
  options.evaluations.max_per_base = absl::GetFlag(FLAGS_max_evaluations_per_base);

  auto server = coldfuse::Server::Start(options);
  if (!server.ok()) {
    CF_LOG(ERROR) << "coldfused cannot start: " << server.status();
    // Configuration errors (a TLS file missing, unreadable or invalid; a data folder it
    // may not use or another server holds) exit 78 (EX_CONFIG), which the systemd unit
    // does not restart: trying again cannot help until the operator fixes it.
    switch (server.status().code()) {
      case absl::StatusCode::kInvalidArgument:
      case absl::StatusCode::kNotFound:
      case absl::StatusCode::kPermissionDenied:
      case absl::StatusCode::kFailedPrecondition:
      case absl::StatusCode::kAlreadyExists:
        return kExitConfig;
      default:
        return 1;
    }
  }
  for (const auto& [file, port] :
       {std::pair{absl::GetFlag(FLAGS_port_file), (*server)->port()},
        std::pair{absl::GetFlag(FLAGS_http_port_file), (*server)->http_port()}}) {
    if (file.empty()) continue;
    auto st = coldfuse::WriteFileAtomic(file, std::to_string(port) + "\n");
    if (!st.ok()) {
      CF_LOG(ERROR) << st;
      return 1;
    }
  }
  NotifySystemd(absl::StrCat("READY=1\nSTATUS=serving on port ", (*server)->port(),
                             "\nMAINPID=", ::getpid()));
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    CF_LOG(INFO) << "signal " << sig << ": shutting down";
    NotifySystemd("STOPPING=1");
    (*server)->Shutdown();
  });
  (*server)->Wait();
  waiter.join();
  server->reset();
  CF_LOG(INFO) << "coldfused stopped";
  return 0;
}
