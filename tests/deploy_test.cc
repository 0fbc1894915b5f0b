// The deployment guide, followed literally: the shell blocks of deploy/README.md's
// walk-through run in order, as root, with every absolute path moved under a temp folder,
// the server's name mapped to localhost and port 7878 to a free one. `systemctl` is
// played by a shell function that does what the installed unit says (user, group, state
// folder, umask, ExecStart with its flags file) and checks the unit with
// `systemd-analyze verify`; so the server runs as the unit's user and must be able to
// read what make-certs.sh made for it. Skipped (with the reason) when not root.
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <regex>
#include <sstream>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

namespace fs = std::filesystem;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The ```sh blocks between the walkthrough markers, in order.
std::vector<std::string> WalkthroughBlocks(const std::string& readme) {
  const size_t start = readme.find("<!-- walkthrough:start -->");
  const size_t end = readme.find("<!-- walkthrough:end -->");
  std::vector<std::string> blocks;
  if (start == std::string::npos || end == std::string::npos) return blocks;
  const std::string part = readme.substr(start, end - start);
  size_t at = 0;
  while ((at = part.find("```sh\n", at)) != std::string::npos) {
    const size_t body = at + 6;
    const size_t close = part.find("```", body);
    if (close == std::string::npos) break;
    blocks.push_back(part.substr(body, close - body));
    at = close + 3;
  }
  return blocks;
}

int FreePort() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a));
  socklen_t len = sizeof(a);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST(DeployTest, TheOperatorWalkthroughRunsAsWrittenWithTheUnitsUser) {
  if (::geteuid() != 0) GTEST_SKIP() << "needs root (useradd, and running as the unit's user)";
  TempDir tmp;
  const std::string root = tmp.path() + "/root";
  // Folders the service user must traverse, as on a real system.
  for (const char* d :
       {"", "/etc", "/var", "/var/lib", "/usr/local/bin", "/etc/systemd/system", "/home/alice"}) {
    fs::create_directories(root + d);
  }
  for (const std::string& d : {tmp.path(), root, root + "/etc", root + "/var", root + "/var/lib"}) {
    fs::permissions(d, fs::perms(0755));
  }
  const int port = FreePort();
  WriteBlobsCsv(root + "/train.csv", 64, 10, 200, 1);
  WriteBlobsCsv(root + "/test.csv", 64, 10, 100, 2);

  const std::vector<std::string> blocks =
      WalkthroughBlocks(ReadFile(SOURCE_DIR "/deploy/README.md"));
  ASSERT_GE(blocks.size(), 5u) << "deploy/README.md has no walk-through markers";
  // The only changes to the commands: where things are.
  const std::vector<std::pair<std::string, std::string>> moved = {
      {"build/", std::string(BUILD_DIR) + "/"},
      {"/usr/local/bin/", root + "/usr/local/bin/"},
      {"/etc/systemd/system/", root + "/etc/systemd/system/"},
      {"/etc/coldfuse", root + "/etc/coldfuse"},
      {"/var/lib/coldfuse", root + "/var/lib/coldfuse"},
      {"fuse.example.org:7878", absl::StrCat("localhost:", port)},
      {"localhost:7878", absl::StrCat("localhost:", port)},
      {"0.0.0.0:7878", absl::StrCat("127.0.0.1:", port)},
      {"--train=train.csv", "--train=" + root + "/train.csv"},
      {"--test=test.csv", "--test=" + root + "/test.csv"},
  };
  auto move = [&](std::string s) {
    for (const auto& [from, to] : moved) s = absl::StrReplaceAll(s, {{from, to}});
    return s;
  };
  // The same moves for files the walk-through installs (sed script), and systemctl.
  std::string sed;
  for (const auto& [from, to] : moved) {
    if (from == "build/" || absl::StartsWith(from, "--")) continue;
    sed += absl::StrCat(" -e 's|", from, "|", to, "|g'");
  }
  const std::string unit = root + "/etc/systemd/system/coldfused.service";
  // @ROOT@, @UNIT@, @PORT@ and @SED@ are filled in below.
  std::string script = R"SH(set -euo pipefail
export PATH="@ROOT@/usr/local/bin:$PATH" HOME="@ROOT@/home/alice"
map() { sed -i @SED@ "$@"; }
systemctl() {
  case "$*" in
    daemon-reload)
      map "@UNIT@"
      if command -v systemd-analyze >/dev/null; then
        systemd-analyze verify "@UNIT@"
      else
        echo "systemd-analyze is not installed (package systemd): the unit was not verified"
      fi ;;
    "enable --now coldfused")
      local user group state mode mask exec
      user=$(sed -n 's/^User=//p' "@UNIT@")
      group=$(sed -n 's/^Group=//p' "@UNIT@")
      state=$(sed -n 's/^StateDirectory=//p' "@UNIT@")
      mode=$(sed -n 's/^StateDirectoryMode=//p' "@UNIT@")
      mask=$(sed -n 's/^UMask=//p' "@UNIT@")
      exec=$(sed -n 's/^ExecStart=//p' "@UNIT@")
      map "@ROOT@/etc/coldfuse/coldfused.flags"
      install -d -m "$mode" -o "$user" -g "$group" "@ROOT@/var/lib/$state"
      # Type=notify: systemctl start returns once the service says READY=1.
      [ "$(sed -n 's/^Type=//p' "@UNIT@")" = notify ] || { echo "the unit is not Type=notify" >&2; return 1; }
      /usr/bin/python3 -c '
import os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
s.bind(sys.argv[1]); os.chmod(sys.argv[1], 0o777); s.settimeout(120)
while "READY=1" not in s.recv(4096).decode().split("\n"): pass' "@ROOT@/notify.sock" &
      local waiter=$!
      for i in $(seq 1 100); do [ -S "@ROOT@/notify.sock" ] && break; sleep 0.05; done
      (umask "$mask"; export NOTIFY_SOCKET="@ROOT@/notify.sock"; exec setpriv --reuid="$user" --regid="$group" --init-groups $exec) > "@ROOT@/server.log" 2>&1 &
      echo $! > "@ROOT@/server.pid"
      while kill -0 "$waiter" 2>/dev/null; do
        kill -0 "$(cat "@ROOT@/server.pid")" 2>/dev/null || { kill "$waiter"; cat "@ROOT@/server.log"; return 1; }
        sleep 0.05
      done
      wait "$waiter" ;;
    *) echo "systemctl $* is not played by this test" >&2; return 1 ;;
  esac
}
)SH";
  script = absl::StrReplaceAll(
      script, {{"@ROOT@", root}, {"@UNIT@", unit}, {"@PORT@", absl::StrCat(port)}, {"@SED@", sed}});
  for (size_t i = 0; i < blocks.size(); ++i) {
    script += absl::StrCat("echo '=== walk-through block ", i + 1, "'\n", move(blocks[i]), "\n");
  }
  std::ofstream(tmp.path() + "/walkthrough.sh") << script;
  auto r = RunCommand({"bash", "-c", "cd " SOURCE_DIR " && bash " + tmp.path() + "/walkthrough.sh"},
                      std::chrono::seconds(300));
  const std::string pid = ReadFile(root + "/server.pid");
  EXPECT_EQ(r.exit_code, 0) << r.output << "\n--- server log:\n" << ReadFile(root + "/server.log");
  // The server ran as the unit's user, and alice's state is in her home, not in "~".
  if (!pid.empty()) {
    auto user = RunCommand({"ps", "-o", "user=", "-p", absl::StrCat(std::stoi(pid))});
    EXPECT_TRUE(absl::StartsWith(user.output, "coldfuse")) << user.output;
    RunCommand({"kill", absl::StrCat(std::stoi(pid))});
  }
  EXPECT_TRUE(fs::exists(root + "/home/alice/.coldfuse/base.safetensors"));
  EXPECT_TRUE(absl::StrContains(r.output, "\"initialized\": true")) << r.output;
}

}  // namespace
}  // namespace coldfuse::testing

namespace coldfuse::testing {
namespace {

TEST(DeployTest, AStateDirWithAnUnexpandedTildeIsRefusedWithTheFix) {
  TempDir tmp;
  auto r = RunCommand({"bash", "-c",
                       "cd " + tmp.path() + " && " + ClientBinary() +
                           " --server=127.0.0.1:1 --name=alice '--state_dir=~/.coldfuse' "
                           "--train=x.csv --test=y.csv"});
  EXPECT_NE(r.exit_code, 0);
  EXPECT_TRUE(absl::StrContains(r.output, "--state_dir=\"$HOME/.coldfuse\"")) << r.output;
  EXPECT_FALSE(fs::exists(tmp.path() + "/~")) << "a folder named ~ was made";
}

}  // namespace
}  // namespace coldfuse::testing
