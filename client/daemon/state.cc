#include "client/daemon/state.h"

#include <filesystem>
#include <map>
#include <set>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "client/daemon/legacy_ctf.h"
#include "common/logging.h"
#include "common/posix_file.h"
#include "common/safetensors.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "common/tensor_stream.h"

namespace coldfuse::daemon {
namespace fs = std::filesystem;

namespace {

constexpr char kTensors[] = ".safetensors";
constexpr char kLegacyTensors[] = ".ctf";
// Metadata key of the SHA-256 (hex) of a tensor file's data, in tensor order.
constexpr char kShaKey[] = "coldfuse.sha256";

absl::Status Remove(const std::string& path) {
  std::error_code ec;
  fs::remove(path, ec);
  if (ec) return absl::InternalError(absl::StrCat("cannot remove ", path, ": ", ec.message()));
  return absl::OkStatus();
}

absl::Status SaveTensors(const std::string& path, const std::vector<HostTensor>& tensors,
                         std::map<std::string, std::string> metadata = {}) {
  metadata["format"] = "pt";
  metadata[kShaKey] = ToHex(TensorsSha256(tensors));
  return WriteSafetensors(path, tensors, metadata);
}

// NOT_FOUND if missing; DATA_LOSS naming the file if it is damaged. The metadata (with the
// checksum checked) goes to `*metadata` when given. I8 tensors only with `allow_int8` (a
// contribution sent as an 8-bit delta).
absl::StatusOr<std::vector<HostTensor>> LoadTensors(
    const std::string& path, std::map<std::string, std::string>* metadata_out = nullptr,
    bool allow_int8 = false) {
  auto damaged = [&](absl::string_view why) {
    return absl::DataLossError(
        absl::StrCat(path, " is damaged (", why, "); delete it to start that state afresh"));
  };
  std::map<std::string, std::string> metadata;
  absl::StatusOr<std::vector<HostTensor>> tensors = ReadSafetensors(path, &metadata, allow_int8);
  if (absl::IsInvalidArgument(tensors.status())) return damaged(tensors.status().message());
  RETURN_IF_ERROR(tensors.status());
  auto sha = metadata.find(kShaKey);
  if (sha == metadata.end()) return damaged(absl::StrCat("no ", kShaKey, " in its metadata"));
  if (sha->second != ToHex(TensorsSha256(*tensors))) return damaged("checksum mismatch");
  if (metadata_out != nullptr) *metadata_out = std::move(metadata);
  return tensors;
}

// Metadata keys of training.safetensors: the run's values are kept under kValuePrefix.
constexpr char kTrainingKey[] = "coldfuse.training.key";
constexpr char kTrainingBase[] = "coldfuse.training.base_version";
constexpr char kTrainingStep[] = "coldfuse.training.step";
constexpr char kTrainingTotal[] = "coldfuse.training.total";
constexpr char kValuePrefix[] = "value.";

// Whether `name` is a tensor file of the state folder with extension `ext` (base, head,
// pending, contrib-rN); sets *stem to the name without it.
bool IsStateTensorFile(absl::string_view name, absl::string_view ext, std::string* stem) {
  if (!absl::ConsumeSuffix(&name, ext)) return false;
  uint64_t round;
  absl::string_view r = name;
  if (name != "base" && name != "head" && name != "pending" &&
      !(absl::ConsumePrefix(&r, "contrib-r") && absl::SimpleAtoi(r, &round))) {
    return false;
  }
  *stem = std::string(name);
  return true;
}

// Converts the .ctf files of an older release to safetensors (see StateDir::Open).
absl::Status ConvertLegacyFiles(const std::string& dir) {
  std::vector<std::string> stems;
  std::error_code ec;
  for (const auto& entry : fs::directory_iterator(dir, ec)) {
    std::string stem;
    if (IsStateTensorFile(entry.path().filename().string(), kLegacyTensors, &stem)) {
      stems.push_back(std::move(stem));
    }
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot list ", dir, ": ", ec.message()));
  for (const std::string& stem : stems) {
    const std::string legacy = (fs::path(dir) / (stem + kLegacyTensors)).string();
    const std::string target = (fs::path(dir) / (stem + kTensors)).string();
    // Both present: a conversion cut short after its atomic write; the new file is whole.
    if (!fs::exists(target, ec)) {
      ASSIGN_OR_RETURN(std::vector<HostTensor> tensors, ReadLegacyTensorFile(legacy));
      RETURN_IF_ERROR(SaveTensors(target, tensors));
      CF_LOG(INFO) << "converted " << legacy << " to " << target;
    }
    RETURN_IF_ERROR(Remove(legacy));
  }
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
  RETURN_IF_ERROR(ConvertLegacyFiles(dir));
  return StateDir(dir);
}

std::string StateDir::Path(absl::string_view name) const {
  return (fs::path(dir_) / std::string(name)).string();
}

std::string StateDir::HeadPath() const { return Path(absl::StrCat("head", kTensors)); }

absl::StatusOr<std::optional<CachedBase>> StateDir::LoadBase() const {
  auto version = ReadFileToString(Path("base.version"));
  if (absl::IsNotFound(version.status())) return std::nullopt;
  RETURN_IF_ERROR(version.status());
  std::vector<std::string> parts = absl::StrSplit(absl::StripAsciiWhitespace(*version), ' ');
  CachedBase base;
  if (parts.size() != 2 || !absl::SimpleAtoi(parts[0], &base.version)) {
    return absl::DataLossError(
        absl::StrCat(Path("base.version"), " is corrupt; delete it to pull the base again"));
  }
  base.sha256 = absl::HexStringToBytes(parts[1]);
  auto tensors = LoadTensors(Path(absl::StrCat("base", kTensors)));
  if (absl::IsNotFound(tensors.status())) return std::nullopt;
  RETURN_IF_ERROR(tensors.status());
  if (TensorsSha256(*tensors) != base.sha256) return std::nullopt;  // stale pair: pull again
  base.tensors = std::move(*tensors);
  return base;
}

absl::Status StateDir::SaveBase(const CachedBase& base) const {
  RETURN_IF_ERROR(SaveTensors(Path(absl::StrCat("base", kTensors)), base.tensors));
  return WriteFileAtomic(Path("base.version"),
                         absl::StrCat(base.version, " ", ToHex(base.sha256), "\n"));
}

absl::StatusOr<std::vector<HostTensor>> StateDir::LoadHead() const {
  auto head = LoadTensors(HeadPath());
  if (absl::IsNotFound(head.status())) return std::vector<HostTensor>();
  return head;
}

absl::Status StateDir::SaveHead(const std::vector<HostTensor>& head,
                                const std::vector<std::string>& labels) const {
  if (!labels.empty()) {
    RETURN_IF_ERROR(
        WriteFileAtomic(Path("head.labels"), absl::StrCat(absl::StrJoin(labels, "\n"), "\n")));
  }
  return SaveTensors(HeadPath(), head);
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
  auto tensors = LoadTensors(Path(absl::StrCat("pending", kTensors)), nullptr, /*allow_int8=*/true);
  if (absl::IsNotFound(tensors.status())) return std::nullopt;
  RETURN_IF_ERROR(tensors.status());
  c.tensors = std::move(*tensors);
  return c;
}

absl::Status StateDir::SavePending(const Contribution& c) const {
  // Tensors first: a header without its tensors is never read as pending.
  RETURN_IF_ERROR(SaveTensors(Path(absl::StrCat("pending", kTensors)), c.tensors));
  return WriteFileAtomic(Path("pending.header"), c.header.SerializeAsString());
}

absl::Status StateDir::DropPending() const {
  RETURN_IF_ERROR(Remove(Path("pending.header")));
  return Remove(Path(absl::StrCat("pending", kTensors)));
}

absl::Status StateDir::ArchivePending(uint64_t round, int keep) const {
  std::error_code ec;
  fs::rename(Path(absl::StrCat("pending", kTensors)),
             Path(absl::StrCat("contrib-r", round, kTensors)), ec);
  if (!ec) {
    fs::rename(Path("pending.header"), Path(absl::StrCat("contrib-r", round, ".header")), ec);
  }
  if (ec) return absl::InternalError(absl::StrCat("cannot archive contribution: ", ec.message()));
  std::set<uint64_t> rounds;
  for (const auto& entry : fs::directory_iterator(dir_, ec)) {
    std::string name = entry.path().filename().string();
    absl::string_view v(name);
    uint64_t r;
    if (absl::ConsumePrefix(&v, "contrib-r") && absl::ConsumeSuffix(&v, kTensors) &&
        absl::SimpleAtoi(v, &r)) {
      rounds.insert(r);
    }
  }
  while (static_cast<int>(rounds.size()) > keep) {
    uint64_t oldest = *rounds.begin();
    rounds.erase(rounds.begin());
    RETURN_IF_ERROR(Remove(Path(absl::StrCat("contrib-r", oldest, kTensors))));
    RETURN_IF_ERROR(Remove(Path(absl::StrCat("contrib-r", oldest, ".header"))));
  }
  return absl::OkStatus();
}

std::string StateDir::TrainingPath() const { return Path(absl::StrCat("training", kTensors)); }

absl::StatusOr<std::optional<SavedTraining>> StateDir::LoadTraining() const {
  std::map<std::string, std::string> metadata;
  auto tensors = LoadTensors(TrainingPath(), &metadata);
  if (absl::IsNotFound(tensors.status())) return std::nullopt;
  RETURN_IF_ERROR(tensors.status());
  SavedTraining t;
  t.checkpoint.tensors = std::move(*tensors);
  auto get = [&](const char* key) -> std::string {
    auto it = metadata.find(key);
    return it == metadata.end() ? std::string() : it->second;
  };
  t.key = get(kTrainingKey);
  if (t.key.empty() || !absl::SimpleAtoi(get(kTrainingBase), &t.base_version) ||
      !absl::SimpleAtoi(get(kTrainingStep), &t.checkpoint.step) ||
      !absl::SimpleAtoi(get(kTrainingTotal), &t.checkpoint.total)) {
    return absl::DataLossError(absl::StrCat(TrainingPath(),
                                            " is damaged (its metadata is incomplete); delete it "
                                            "to start the round's training afresh"));
  }
  for (auto& [key, value] : metadata) {
    absl::string_view k(key);
    if (absl::ConsumePrefix(&k, kValuePrefix)) t.checkpoint.values[std::string(k)] = value;
  }
  return t;
}

absl::Status StateDir::SaveTraining(const SavedTraining& t) const {
  std::map<std::string, std::string> metadata = {
      {kTrainingKey, t.key},
      {kTrainingBase, absl::StrCat(t.base_version)},
      {kTrainingStep, absl::StrCat(t.checkpoint.step)},
      {kTrainingTotal, absl::StrCat(t.checkpoint.total)}};
  for (const auto& [key, value] : t.checkpoint.values) metadata[kValuePrefix + key] = value;
  return SaveTensors(TrainingPath(), t.checkpoint.tensors, std::move(metadata));
}

absl::Status StateDir::DropTraining() const { return Remove(TrainingPath()); }

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
