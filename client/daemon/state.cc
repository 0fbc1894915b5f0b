#include "client/daemon/state.h"

#include <cstdio>
#include <filesystem>
#include <set>

#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/posix_file.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor_file.h"
#include "common/tensor_stream.h"

namespace coldfuse::daemon {
namespace fs = std::filesystem;

namespace {

absl::Status Remove(const std::string& path) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", ec.message()));
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<StateDir> StateDir::Open(const std::string& dir) {
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) {
    return absl::PermissionDeniedError(
        absl::StrCat("cannot create state folder ", dir, ": ", ec.message()));
  }
  return StateDir(dir);
}

std::string StateDir::Path(absl::string_view name) const {
  return (fs::path(dir_) / std::string(name)).string();
}

absl::StatusOr<std::optional<CachedBase>> StateDir::LoadBase() const {
  auto version = ReadFileToString(Path("base.version"));
  if (absl::IsNotFound(version.status())) return std::nullopt;
  RETURN_IF_ERROR(version.status());
  std::vector<std::string> parts = absl::StrSplit(absl::StripAsciiWhitespace(*version), ' ');
  CachedBase base;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &base.version)) {
    return absl::DataLossError(absl::StrCat(Path("base.version"),
                                            " is corrupt; delete it to pull the base again"));
  }
  base.sha256 = absl::HexStringToBytes(parts[1]);
  auto tensors = ReadTensorFile(Path("base.ctf"));
  if (absl::IsNotFound(tensors.status())) return std::nullopt;
  RETURN_IF_ERROR(tensors.status());
  if (TensorsSha256(*tensors) != base.sha256) return std::nullopt;  // stale pair: pull again
  base.tensors = std::move(*tensors);
  return base;
}

absl::Status StateDir::SaveBase(const CachedBase& base) const {
  RETURN_IF_ERROR(WriteTensorFile(Path("base.ctf"), base.tensors));
  return WriteFileAtomic(Path("base.version"),
                         absl::StrCat(base.version, " ", ToHex(base.sha256), "\n"));
}

absl::StatusOr<std::vector<HostTensor>> StateDir::LoadHead() const {
  auto head = ReadTensorFile(Path("head.ctf"));
  if (absl::IsNotFound(head.status())) return std::vector<HostTensor>();
  return head;
}

absl::Status StateDir::SaveHead(const std::vector<HostTensor>& head,
                               const std::vector<std::string>& labels) const {
  if (!labels.empty()) {
    RETURN_IF_ERROR(WriteFileAtomic(Path("head.labels"), absl::StrCat(absl::StrJoin(labels, "\n"), "\n")));
  }
  return WriteTensorFile(Path("head.ctf"), head);
}

absl::StatusOr<std::optional<std::vector<std::string>>> StateDir::LoadHeadLabels() const {
  auto text = ReadFileToString(Path("head.labels"));
  if (absl::IsNotFound(text.status())) return std::nullopt;
  RETURN_IF_ERROR(text.status());
  std::vector<std::string> labels = absl::StrSplit(*text, '\n', absl::SkipEmpty());
  return labels;
}

absl::StatusOr<std::optional<Contribution>> StateDir::LoadPending() const {
  auto header = ReadFileToString(Path("pending.header"));
  if (absl::IsNotFound(header.status())) return std::nullopt;
  RETURN_IF_ERROR(header.status());
  Contribution c;
  if (!c.header.ParseFromString(*header)) {
    return absl::DataLossError(
        absl::StrCat(Path("pending.header"), " is corrupt; delete it to train again"));
  }
  auto tensors = ReadTensorFile(Path("pending.ctf"));
  if (absl::IsNotFound(tensors.status())) return std::nullopt;
  RETURN_IF_ERROR(tensors.status());
  c.tensors = std::move(*tensors);
  return c;
}

absl::Status StateDir::SavePending(const Contribution& c) const {
  // Tensors first: a header without its tensors is never read as pending.
  RETURN_IF_ERROR(WriteTensorFile(Path("pending.ctf"), c.tensors));
  return WriteFileAtomic(Path("pending.header"), c.header.SerializeAsString());
}

absl::Status StateDir::DropPending() const {
  RETURN_IF_ERROR(Remove(Path("pending.header")));
  return Remove(Path("pending.ctf"));
}

absl::Status StateDir::ArchivePending(uint64_t round, int keep) const {
  std::error_code ec;
  fs::rename(Path("pending.ctf"), Path(absl::StrCat("contrib-r", round, ".ctf")), ec);
  if (!ec) {
    fs::rename(Path("pending.header"), Path(absl::StrCat("contrib-r", round, ".header")), ec);
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot archive contribution: ", ec.message()));
  std::set<uint64_t> rounds;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    absl::string_view v(name);
    uint64_t r;
    if (absl::ConsumePrefix(&v, "contrib-r") && absl::ConsumeSuffix(&v, ".ctf") &&
        absl::SimpleAtoi(v, &r)) {
      rounds.insert(r);
    }
  }
  while (static_cast<int>(rounds.size()) > keep) {
    uint64_t oldest = *rounds.begin();
    rounds.erase(rounds.begin());
    RETURN_IF_ERROR(Remove(Path(absl::StrCat("contrib-r", oldest, ".ctf"))));
    RETURN_IF_ERROR(Remove(Path(absl::StrCat("contrib-r", oldest, ".header"))));
  }
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> StateDir::LoadLastRound() const {
  auto text = ReadFileToString(Path("last_round"));
  if (absl::IsNotFound(text.status())) return 0;
  RETURN_IF_ERROR(text.status());
  uint64_t r;
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(*text), &r)) {
    return absl::DataLossError(absl::StrCat(Path("last_round"), " is corrupt"));
  }
  return r;
}

absl::Status StateDir::SaveLastRound(uint64_t round) const {
  return WriteFileAtomic(Path("last_round"), absl::StrCat(round, "\n"));
}

}  // namespace coldfuse::daemon
