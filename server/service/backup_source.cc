#include "server/service/backup_source.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <filesystem>

#include "absl/strings/str_cat.h"
#include "common/logging.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace coldfuse::service {
namespace {

constexpr size_t kChunkBytes = 1 << 20;

}  // namespace

BackupSource::~BackupSource() {
  if (fd_ >= 0) ::close(fd_);
  if (!dir_.empty()) {
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
    if (ec)
      CF_LOG(WARNING) << "cannot remove the backup checkpoint " << dir_ << ": " << ec.message();
  }
}

absl::StatusOr<v1::BackupResponse> BackupSource::Start() {
  const auto started = std::chrono::steady_clock::now();
  ASSIGN_OR_RETURN(dir_, store_->CreateCheckpoint());
  std::vector<std::string> names;
  std::error_code ec;
  for (const auto& e : std::filesystem::directory_iterator(dir_, ec)) {
    if (e.is_regular_file()) names.push_back(e.path().filename().string());
  }
  if (ec) {
    return absl::InternalError(
        absl::StrCat("cannot list the checkpoint ", dir_, ": ", ec.message()));
  }
  std::sort(names.begin(), names.end());
  v1::BackupResponse r;
  v1::BackupHeader* h = r.mutable_header();
  uint64_t total = 0;
  for (const auto& name : names) {
    struct stat st;
    const std::string path = dir_ + "/" + name;
    if (::stat(path.c_str(), &st) != 0) return ErrnoError("cannot stat", path);
    v1::BackupFile f;
    f.set_name(name);
    f.set_size(static_cast<uint64_t>(st.st_size));
    total += f.size();
    *h->add_files() = f;
    files_.push_back(std::move(f));
  }
  h->set_total_bytes(total);
  h->set_created_unix_ms(std::chrono::duration_cast<std::chrono::milliseconds>(
                             std::chrono::system_clock::now().time_since_epoch())
                             .count());
  CF_LOG(INFO) << "backup: checkpoint of " << files_.size() << " files (" << total
               << " bytes) taken in "
               << std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - started)
                      .count()
               << " ms; sending it";
  return r;
}

absl::StatusOr<std::optional<v1::BackupResponse>> BackupSource::Next() {
  if (!started_) {
    started_ = true;
    ASSIGN_OR_RETURN(v1::BackupResponse header, Start());
    return header;
  }
  if (file_ >= files_.size()) return std::nullopt;
  const v1::BackupFile& f = files_[file_];
  const std::string path = dir_ + "/" + f.name();
  if (fd_ < 0) {
    fd_ = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd_ < 0) return ErrnoError("cannot open", path);
    offset_ = 0;
    sha_ = Sha256();
  }
  v1::BackupResponse r;
  if (offset_ < f.size()) {
    const size_t want = static_cast<size_t>(std::min<uint64_t>(kChunkBytes, f.size() - offset_));
    std::string* data = r.mutable_chunk()->mutable_data();
    data->resize(want);
    size_t got = 0;
    while (got < want) {
      ssize_t n = ::pread(fd_, data->data() + got, want - got, static_cast<off_t>(offset_ + got));
      if (n < 0 && errno == EINTR) continue;
      if (n < 0) return ErrnoError("cannot read", path);
      if (n == 0) {
        return absl::InternalError(absl::StrCat("backup: ", path, " shrank while being sent (",
                                                offset_ + got, " of ", f.size(), " bytes)"));
      }
      got += static_cast<size_t>(n);
    }
    r.mutable_chunk()->set_file_index(static_cast<uint32_t>(file_));
    r.mutable_chunk()->set_offset(offset_);
    sha_.Update(*data);
    offset_ += want;
    return r;
  }
  ::close(fd_);
  fd_ = -1;
  r.mutable_file_end()->set_file_index(static_cast<uint32_t>(file_));
  r.mutable_file_end()->set_sha256(sha_.Finish());
  ++file_;
  return r;
}

}  // namespace coldfuse::service
