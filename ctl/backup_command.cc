#include "ctl/backup_command.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <condition_variable>
#include <filesystem>
#include <iostream>
#include <mutex>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coldfuse/v1/coldfuse.grpc.pb.h"
#include "common/posix_file.h"
#include "common/printable.h"
#include "common/rpc/client.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace coldfuse::ctl {
namespace {

namespace fs = std::filesystem;

// A file name the server may send: plain, no folder, nothing hidden.
bool SafeName(const std::string& name) {
  if (name.empty() || name.size() > 255 || name[0] == '.') return false;
  for (char c : name) {
    if (!(std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.')) {
      return false;
    }
  }
  return true;
}

// Cancels `ctx` when Touch has not been called for `idle` (a stalled server or link).
class Watchdog {
 public:
  Watchdog(grpc::ClientContext* ctx, std::chrono::milliseconds idle) : ctx_(ctx), idle_(idle) {
    thread_ = std::thread([this] { Run(); });
  }
  ~Watchdog() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }
  void Touch() { last_ = std::chrono::steady_clock::now().time_since_epoch().count(); }
  bool fired() const { return fired_; }

 private:
  void Run() {
    std::unique_lock<std::mutex> l(mu_);
    while (!stop_) {
      cv_.wait_for(l, std::chrono::milliseconds(200));
      const auto since = std::chrono::steady_clock::now().time_since_epoch() -
                         std::chrono::steady_clock::duration(last_.load());
      if (!stop_ && since > idle_) {
        fired_ = true;
        ctx_->TryCancel();
        return;
      }
    }
  }
  grpc::ClientContext* const ctx_;
  const std::chrono::milliseconds idle_;
  std::atomic<int64_t> last_{std::chrono::steady_clock::now().time_since_epoch().count()};
  std::atomic<bool> fired_{false};
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

absl::Status Protocol(const std::string& what) {
  return absl::DataLossError(absl::StrCat("backup stream: ", what, "; nothing was kept"));
}

}  // namespace

absl::Status Backup(const std::shared_ptr<grpc::Channel>& channel, const std::string& out,
                    std::chrono::milliseconds idle_timeout) {
  if (out.empty()) return absl::InvalidArgumentError("backup needs --out=DIR (a new folder)");
  std::error_code ec;
  if (fs::exists(out, ec) && !(fs::is_directory(out, ec) && fs::is_empty(out, ec))) {
    return absl::AlreadyExistsError(
        absl::StrCat("--out=", out, " exists and is not an empty folder: give a new folder"));
  }
  const std::string tmp = absl::StrCat(out, ".partial-", ::getpid());
  fs::remove_all(tmp, ec);
  if (::mkdir(tmp.c_str(), 0700) != 0) return ErrnoError("cannot create folder", tmp);
  // Whatever fails from here on, no half backup is left behind.
  bool done = false;
  struct Cleanup {
    const std::string& dir;
    bool& done;
    ~Cleanup() {
      if (!done) {
        std::error_code e;
        fs::remove_all(dir, e);
      }
    }
  } cleanup{tmp, done};

  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  Watchdog watchdog(&ctx, idle_timeout);
  auto reader = stub->Backup(&ctx, v1::BackupRequest());
  const auto started = std::chrono::steady_clock::now();
  v1::BackupResponse m;
  std::vector<v1::BackupFile> files;
  uint64_t total = 0, received = 0;
  size_t file = 0;  // the file being received
  int fd = -1;
  uint64_t offset = 0;
  Sha256 sha;
  std::string path;
  absl::Status failed;
  auto fail = [&](absl::Status st) {
    failed = std::move(st);
    ctx.TryCancel();
  };
  bool header = false;
  while (failed.ok() && reader->Read(&m)) {
    watchdog.Touch();
    if (m.has_header()) {
      if (header) {
        fail(Protocol("a second header"));
        break;
      }
      header = true;
      for (const auto& f : m.header().files()) {
        if (!SafeName(f.name())) {
          fail(Protocol(absl::StrCat("file name '", Printable(f.name()), "' is not a plain name")));
          break;
        }
        files.push_back(f);
        total += f.size();
      }
      if (failed.ok() && total != m.header().total_bytes()) {
        fail(Protocol("the header's sizes do not add up"));
      }
      std::cerr << absl::StrFormat("backup: %d files, %.1f MiB\n", files.size(), total / 1048576.0);
      continue;
    }
    if (!header || file >= files.size()) {
      fail(Protocol(header ? "data after the last file" : "data before the header"));
      break;
    }
    const v1::BackupFile& f = files[file];
    if (fd < 0) {
      path = tmp + "/" + f.name();
      fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
      if (fd < 0) {
        fail(ErrnoError("cannot create", path));
        break;
      }
      offset = 0;
      sha = Sha256();
    }
    if (m.has_chunk()) {
      const auto& c = m.chunk();
      if (c.file_index() != file || c.offset() != offset || c.data().size() > f.size() - offset) {
        fail(Protocol(absl::StrCat("chunk of file #", c.file_index(), " at ", c.offset(),
                                   " out of order (expected file #", file, " at ", offset, ")")));
        break;
      }
      absl::Status st = WriteAll(fd, c.data(), path);
      if (!st.ok()) {
        fail(st);
        break;
      }
      sha.Update(c.data());
      offset += c.data().size();
      received += c.data().size();
    } else if (m.has_file_end()) {
      if (m.file_end().file_index() != file || offset != f.size()) {
        fail(Protocol(absl::StrCat(f.name(), " ended at ", offset, " of ", f.size(), " bytes")));
        break;
      }
      if (sha.Finish() != m.file_end().sha256()) {
        fail(absl::DataLossError(
            absl::StrCat("backup: ", f.name(), " does not match its SHA-256; nothing was kept")));
        break;
      }
      if (::fsync(fd) != 0) {
        fail(ErrnoError("cannot sync", path));
        break;
      }
      ::close(fd);
      fd = -1;
      ++file;
    } else {
      fail(Protocol("an empty message"));
      break;
    }
  }
  if (fd >= 0) ::close(fd);
  grpc::Status st = reader->Finish();
  if (!failed.ok()) return failed;
  if (watchdog.fired()) {
    return absl::DeadlineExceededError(absl::StrCat("backup: nothing arrived for ",
                                                    idle_timeout.count() / 1000.0,
                                                    " s (--timeout_s); nothing was kept"));
  }
  RETURN_IF_ERROR(rpc::FromGrpc(st, "Backup"));
  if (!header || file != files.size()) {
    return Protocol(absl::StrCat("the stream ended after ", file, " of ", files.size(), " files"));
  }
  SyncParentFolder(tmp + "/x");                  // the files' names
  if (fs::exists(out, ec)) fs::remove(out, ec);  // the empty folder the caller gave
  if (::rename(tmp.c_str(), out.c_str()) != 0) return ErrnoError("cannot rename to", out);
  SyncParentFolder(out);
  done = true;
  const double s =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  std::cout << absl::StrFormat(
      "backup: %d files, %.1f MiB in %.1f s (%.0f MiB/s), each checked against its SHA-256, "
      "in %s\nrestore: coldfused --data_dir=%s ... (see docs/operations.md, Backup)\n",
      files.size(), received / 1048576.0, s, s > 0 ? received / 1048576.0 / s : 0.0, out, out);
  return absl::OkStatus();
}

}  // namespace coldfuse::ctl
