// Fuzzes the safetensors reader (common/safetensors.h) with the input as a whole file
// (written to a scratch file in /dev/shm, since SafetensorsFile maps a path).
//
// Asserts: no crash or UB; a rejection is INVALID_ARGUMENT naming the file; an accepted
// file has a header length within the limit and the file, entries in (begin, end) order
// that tile the data section exactly, each with a known dtype name, non-negative dims and
// end - begin == numel * itemsize, unique names that Find() returns, and Data() equal to
// the file's bytes at those offsets. Round trip: when every dtype is F32/F16/BF16/F64,
// ReadSafetensors returns the same tensors in file order, and WriteSafetensors of them
// succeeds exactly when their manifest is valid, after which reading the written file
// gives the same tensors and metadata and the same entries in the same order.
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "common/json.h"
#include "common/safetensors.h"
#include "common/tensor.h"
#include "fuzz/fuzz_util.h"

namespace coldfuse::fuzz {
namespace {

std::string Describe(const SafetensorsEntry& e) {
  return absl::StrCat(JsonQuote(e.name), " ", e.dtype_name, " [", absl::StrJoin(e.shape, ","),
                      "] [", e.begin, ", ", e.end, ")");
}

bool SameEntries(const std::vector<SafetensorsEntry>& a, const std::vector<SafetensorsEntry>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].name != b[i].name || a[i].dtype_name != b[i].dtype_name || a[i].dtype != b[i].dtype ||
        a[i].shape != b[i].shape || a[i].begin != b[i].begin || a[i].end != b[i].end) {
      return false;
    }
  }
  return true;
}

bool SameTensors(const std::vector<HostTensor>& a, const std::vector<HostTensor>& b) {
  if (a.size() != b.size()) return false;
  for (size_t i = 0; i < a.size(); ++i) {
    if (a[i].spec.SerializeAsString() != b[i].spec.SerializeAsString() || a[i].data != b[i].data) {
      return false;
    }
  }
  return true;
}

// The invariants of an accepted file whose bytes are `file`.
void CheckAccepted(const SafetensorsFile& f, absl::string_view file) {
  FUZZ_CHECK(file.size() >= 8, "accepted a file shorter than its header length");
  uint64_t n;
  std::memcpy(&n, file.data(), 8);
  FUZZ_CHECK(n <= kMaxSafetensorsHeaderBytes && n <= file.size() - 8,
             absl::StrCat("accepted header length ", n));
  FUZZ_CHECK(CheckUtf8(file.substr(8, n)).ok(), "accepted a header that is not UTF-8");
  const uint64_t data_size = file.size() - 8 - n;
  absl::string_view data = file.substr(8 + n);

  uint64_t expected = 0;
  std::set<std::string> names;
  for (const SafetensorsEntry& e : f.entries()) {
    FUZZ_CHECK(e.begin == expected, absl::StrCat(Describe(e), " does not start at ", expected));
    FUZZ_CHECK(e.end >= e.begin && e.end <= data_size, Describe(e));
    expected = e.end;
    const size_t itemsize = SafetensorsDTypeSize(e.dtype_name);
    FUZZ_CHECK(itemsize > 0, Describe(e));
    unsigned __int128 bytes = itemsize;
    for (int64_t d : e.shape) {
      FUZZ_CHECK(d >= 0, Describe(e));
      bytes *= static_cast<uint64_t>(d);
      if (bytes > UINT64_MAX) bytes = static_cast<unsigned __int128>(UINT64_MAX) + 1;
    }
    FUZZ_CHECK(bytes == e.end - e.begin, absl::StrCat(Describe(e), ": size != numel * itemsize"));
    if (e.dtype != v1::DTYPE_UNSPECIFIED) {
      FUZZ_CHECK(DTypeName(e.dtype) == e.dtype_name, Describe(e));
    } else {
      FUZZ_CHECK(e.dtype_name != "F32" && e.dtype_name != "F16" && e.dtype_name != "BF16" &&
                     e.dtype_name != "F64",
                 Describe(e));
    }
    FUZZ_CHECK(e.name != "__metadata__", "a tensor called __metadata__");
    FUZZ_CHECK(names.insert(e.name).second, absl::StrCat("duplicate tensor ", Describe(e)));
    FUZZ_CHECK(f.Find(e.name) == &e, absl::StrCat("Find(", JsonQuote(e.name), ")"));
    absl::string_view got = f.Data(e);
    FUZZ_CHECK(got == data.substr(e.begin, e.end - e.begin), absl::StrCat("Data of ", Describe(e)));
  }
  FUZZ_CHECK(expected == data_size,
             absl::StrCat("tensors end at ", expected, " but the data section has ", data_size));
  for (const auto& [key, value] : f.metadata()) {
    FUZZ_CHECK(CheckUtf8(key).ok() && CheckUtf8(value).ok(), "metadata is not UTF-8");
  }
}

void RoundTrip(const SafetensorsFile& f, const std::string& path) {
  bool all_known = true;
  for (const SafetensorsEntry& e : f.entries()) all_known &= e.dtype != v1::DTYPE_UNSPECIFIED;
  std::map<std::string, std::string> metadata;
  absl::StatusOr<std::vector<HostTensor>> read = ReadSafetensors(path, &metadata);
  if (!all_known) {
    FUZZ_CHECK(absl::IsInvalidArgument(read.status()),
               absl::StrCat("read a file with other dtypes: ", read.status().ToString()));
    return;
  }
  FUZZ_CHECK(read.ok(), read.status().ToString());
  FUZZ_CHECK(read->size() == f.entries().size(), "ReadSafetensors lost tensors");
  FUZZ_CHECK(metadata == f.metadata(), "ReadSafetensors changed the metadata");
  for (size_t i = 0; i < read->size(); ++i) {
    const HostTensor& t = (*read)[i];
    const SafetensorsEntry& e = f.entries()[i];
    FUZZ_CHECK(t.spec.name() == e.name && t.spec.dtype() == e.dtype &&
                   std::vector<int64_t>(t.spec.shape().begin(), t.spec.shape().end()) == e.shape &&
                   t.data == f.Data(e),
               absl::StrCat("tensor #", i, " read back differs from ", Describe(e)));
  }

  const std::string out = ScratchPath("out.safetensors");
  absl::Status valid = ValidateManifest(ManifestOf(*read));
  absl::Status written = WriteSafetensors(out, *read, metadata);
  FUZZ_CHECK(written.ok() == valid.ok(),
             absl::StrCat("manifest check: ", valid.ToString(), "; write: ", written.ToString()));
  if (!written.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(written), written.ToString());
    return;
  }
  std::map<std::string, std::string> metadata_again;
  absl::StatusOr<std::vector<HostTensor>> again = ReadSafetensors(out, &metadata_again);
  FUZZ_CHECK(again.ok(), absl::StrCat("cannot read what was written: ", again.status().ToString()));
  FUZZ_CHECK(SameTensors(*again, *read), "write -> read changed the tensors");
  FUZZ_CHECK(metadata_again == metadata, "write -> read changed the metadata");
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> reopened = SafetensorsFile::Open(out);
  FUZZ_CHECK(reopened.ok(), reopened.status().ToString());
  FUZZ_CHECK(SameEntries((*reopened)->entries(), f.entries()), "write -> open changed entries");
}

}  // namespace
}  // namespace coldfuse::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace coldfuse;
  using namespace coldfuse::fuzz;
  absl::string_view file(reinterpret_cast<const char*>(data), size);
  const std::string path = WriteScratchFile("in.safetensors", file);
  absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(path);
  if (!f.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(f.status()), f.status().ToString());
    FUZZ_CHECK(absl::StrContains(f.status().message(), path), f.status().ToString());
    return 0;
  }
  CheckAccepted(**f, file);
  RoundTrip(**f, path);
  return 0;
}
