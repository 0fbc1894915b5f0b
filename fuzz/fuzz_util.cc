#include "fuzz/fuzz_util.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <system_error>

namespace coldfuse::fuzz {
namespace {

namespace fs = std::filesystem;

// Owns the scratch folder; removes it when the process exits normally.
struct Scratch {
  std::string dir;
  Scratch() {
    std::string base = "/dev/shm";
    std::error_code ec;
    if (!fs::is_directory(base, ec) || ::access(base.c_str(), W_OK) != 0) {
      const char* tmp = std::getenv("TMPDIR");
      base = tmp != nullptr && *tmp != '\0' ? tmp : "/tmp";
    }
    std::string tmpl = base + "/coldfuse_fuzz.XXXXXX";
    if (::mkdtemp(tmpl.data()) == nullptr) {
      std::fprintf(stderr, "fuzz: cannot create a scratch folder under %s\n", base.c_str());
      std::abort();
    }
    dir = tmpl;
  }
  ~Scratch() {
    std::error_code ec;
    fs::remove_all(dir, ec);
  }
};

}  // namespace

void Fail(const char* file, int line, const char* cond, const std::string& msg) {
  std::fprintf(stderr, "\n%s:%d: fuzz invariant failed: %s\n  %s\n", file, line, cond, msg.c_str());
  std::fflush(stderr);
  std::abort();
}

const std::string& ScratchDir() {
  static Scratch scratch;  // destroyed, and the folder removed, at exit
  return scratch.dir;
}

std::string ScratchPath(absl::string_view name) { return ScratchDir() + "/" + std::string(name); }

std::string WriteScratchFile(absl::string_view name, absl::string_view contents) {
  std::string path = ScratchPath(name);
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  FUZZ_CHECK(fd >= 0, "cannot create scratch file " + path);
  size_t done = 0;
  while (done < contents.size()) {
    ssize_t n = ::write(fd, contents.data() + done, contents.size() - done);
    FUZZ_CHECK(n > 0, "cannot write scratch file " + path);
    done += static_cast<size_t>(n);
  }
  ::close(fd);
  return path;
}

void SplitOnce(absl::string_view text, absl::string_view sep, absl::string_view* before,
               absl::string_view* after) {
  size_t at = text.find(sep);
  if (at == absl::string_view::npos) {
    *before = text;
    *after = absl::string_view();
    return;
  }
  *before = text.substr(0, at);
  *after = text.substr(at + sep.size());
}

}  // namespace coldfuse::fuzz
