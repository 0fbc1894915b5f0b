#include "client/daemon/legacy_ctf.h"

#include <cstdint>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/posix_file.h"
#include "common/sha256.h"
#include "common/status_macros.h"

namespace coldfuse::daemon {
namespace {

constexpr char kMagic[] = "CFTENSR1";
constexpr size_t kMagicLen = 8;
constexpr uint64_t kMaxManifestBytes = uint64_t{64} << 20;

}  // namespace

absl::StatusOr<std::vector<HostTensor>> ReadLegacyTensorFile(const std::string& path) {
  ASSIGN_OR_RETURN(std::string file, ReadFileToString(path));
  auto corrupt = [&](absl::string_view why) {
    return absl::DataLossError(absl::StrCat(path, " is not a valid tensor file: ", why,
                                            "; delete it to start that state afresh"));
  };
  if (file.size() < kMagicLen + 8 + 32 || file.compare(0, kMagicLen, kMagic) != 0) {
    return corrupt("bad magic or too short");
  }
  uint64_t mlen;
  std::memcpy(&mlen, file.data() + kMagicLen, 8);
  const uint64_t body = file.size() - kMagicLen - 8 - 32;
  if (mlen > kMaxManifestBytes || mlen > body) return corrupt("manifest length out of range");
  v1::Manifest manifest;
  if (!manifest.ParseFromArray(file.data() + kMagicLen + 8, static_cast<int>(mlen))) {
    return corrupt("manifest does not parse");
  }
  absl::Status valid = ValidateManifest(manifest);
  if (!valid.ok()) return corrupt(valid.message());
  ASSIGN_OR_RETURN(uint64_t total, TotalBytes(manifest));
  if (total != body - mlen) return corrupt("data length does not match the manifest");
  size_t pos = kMagicLen + 8 + mlen;
  absl::string_view data(file.data() + pos, total);
  if (Sha256::Of(data) != absl::string_view(file.data() + pos + total, 32)) {
    return corrupt("checksum mismatch");
  }
  std::vector<HostTensor> out;
  out.reserve(manifest.tensors_size());
  for (const auto& spec : manifest.tensors()) {
    ASSIGN_OR_RETURN(uint64_t n, ByteLength(spec));
    HostTensor t;
    t.spec = spec;
    t.data.assign(file.data() + pos, n);
    pos += n;
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace coldfuse::daemon
