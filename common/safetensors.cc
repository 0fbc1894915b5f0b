#include "common/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <set>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/json.h"
#include "common/posix_file.h"
#include "common/status_macros.h"
#include "common/tensor.h"

namespace coldfuse {
namespace {

namespace fs = std::filesystem;

constexpr char kSingleFile[] = "model.safetensors";
constexpr char kIndexFile[] = "model.safetensors.index.json";
constexpr size_t kChunkBytes = size_t{1} << 20;
constexpr size_t kWriteBuffer = size_t{1} << 20;

struct DTypeInfo {
  const char* name;
  size_t size;
};
constexpr DTypeInfo kDTypes[] = {{"BOOL", 1}, {"U8", 1},      {"I8", 1},     {"I16", 2},
                                 {"U16", 2},  {"I32", 4},     {"U32", 4},    {"I64", 8},
                                 {"U64", 8},  {"F16", 2},     {"BF16", 2},   {"F32", 4},
                                 {"F64", 8},  {"F8_E4M3", 1}, {"F8_E5M2", 1}};

std::string ShapeText(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Parses one tensor's header entry into *e (name already set).
absl::Status ParseEntry(const JsonValue& v, SafetensorsEntry* e) {
  std::string who = absl::StrCat("tensor ", JsonQuote(e->name));
  if (!v.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(who, " must be an object, not ", v.TypeName()));
  }
  const JsonValue* dtype = nullptr;
  const JsonValue* shape = nullptr;
  const JsonValue* offsets = nullptr;
  for (const auto& [key, field] : v.object) {
    if (key == "dtype") {
      dtype = &field;
    } else if (key == "shape") {
      shape = &field;
    } else if (key == "data_offsets") {
      offsets = &field;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat(who, " has unexpected field ", JsonQuote(key),
                       "; only dtype, shape and data_offsets are allowed"));
    }
  }
  if (dtype == nullptr || shape == nullptr || offsets == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(who, " lacks ",
                                                   dtype == nullptr   ? "dtype"
                                                   : shape == nullptr ? "shape"
                                                                      : "data_offsets"));
  }
  if (!dtype->is_string()) {
    return absl::InvalidArgumentError(absl::StrCat(who, " dtype must be a string"));
  }
  size_t itemsize = SafetensorsDTypeSize(dtype->text);
  if (itemsize == 0) {
    std::vector<const char*> names;
    for (const auto& d : kDTypes) names.push_back(d.name);
    return absl::InvalidArgumentError(absl::StrCat(who, " has unknown dtype ",
                                                   JsonQuote(dtype->text), "; expected one of ",
                                                   absl::StrJoin(names, ", ")));
  }
  e->dtype_name = dtype->text;
  absl::StatusOr<DType> known = ParseDType(dtype->text);
  e->dtype = known.ok() && dtype->text == DTypeName(*known) ? *known : v1::DTYPE_UNSPECIFIED;

  if (!shape->is_array()) {
    return absl::InvalidArgumentError(absl::StrCat(who, " shape must be an array"));
  }
  uint64_t numel = 1;
  bool overflow = false;
  for (size_t i = 0; i < shape->array.size(); ++i) {
    absl::StatusOr<uint64_t> d = shape->array[i].AsUint64();
    if (!d.ok() || *d > static_cast<uint64_t>(INT64_MAX)) {
      const JsonValue& bad = shape->array[i];
      return absl::InvalidArgumentError(absl::StrCat(who, " shape[", i, "] is ",
                                                     bad.is_number() ? bad.text : bad.TypeName(),
                                                     "; dimensions must be non-negative integers"));
    }
    e->shape.push_back(static_cast<int64_t>(*d));
    overflow = overflow || __builtin_mul_overflow(numel, *d, &numel);
  }
  uint64_t nbytes = 0;
  if (overflow || __builtin_mul_overflow(numel, uint64_t{itemsize}, &nbytes)) {
    return absl::InvalidArgumentError(absl::StrCat(who, " shape ", ShapeText(e->shape),
                                                   " overflows: its byte size exceeds 2^64"));
  }

  std::string offsets_error =
      absl::StrCat(who, " data_offsets must be [begin, end] of non-negative integers");
  if (!offsets->is_array() || offsets->array.size() != 2) {
    return absl::InvalidArgumentError(offsets_error);
  }
  absl::StatusOr<uint64_t> begin = offsets->array[0].AsUint64();
  absl::StatusOr<uint64_t> end = offsets->array[1].AsUint64();
  if (!begin.ok() || !end.ok()) return absl::InvalidArgumentError(offsets_error);
  e->begin = *begin;
  e->end = *end;
  if (e->end < e->begin) {
    return absl::InvalidArgumentError(
        absl::StrCat(who, " data_offsets [", e->begin, ", ", e->end, "] end before they begin"));
  }
  if (e->end - e->begin != nbytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        who, " data_offsets [", e->begin, ", ", e->end, "] hold ", e->end - e->begin,
        " bytes but dtype ", e->dtype_name, " and shape ", ShapeText(e->shape), " need ", nbytes));
  }
  return absl::OkStatus();
}

absl::Status ParseMetadata(const JsonValue& v, std::map<std::string, std::string>* out) {
  if (v.is_null()) return absl::OkStatus();  // the reference accepts null as "none"
  if (!v.is_object()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "__metadata__ must be an object mapping strings to strings, not ", v.TypeName()));
  }
  for (const auto& [key, value] : v.object) {
    if (!value.is_string()) {
      return absl::InvalidArgumentError(absl::StrCat("__metadata__ value for key ", JsonQuote(key),
                                                     " is a ", value.TypeName(),
                                                     "; metadata values must be strings"));
    }
    (*out)[key] = value.text;
  }
  return absl::OkStatus();
}

std::string Padded5(size_t n) {
  std::string s = std::to_string(n);
  return std::string(s.size() < 5 ? 5 - s.size() : 0, '0') + s;
}

}  // namespace

size_t SafetensorsDTypeSize(absl::string_view name) {
  for (const auto& d : kDTypes) {
    if (name == d.name) return d.size;
  }
  return 0;
}

// ---------------------------------------------------------------------------------------
// SafetensorsFile

SafetensorsFile::~SafetensorsFile() {
  if (map_ != nullptr) ::munmap(const_cast<char*>(map_), map_size_);
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(const std::string& path) {
  std::unique_ptr<SafetensorsFile> f(new SafetensorsFile());
  f->path_ = path;
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is not a valid safetensors file: ", why));
  };
  // A local file given as input: a bad argument, not corrupted stored data (DATA_LOSS).
  auto truncated = [&](absl::string_view why) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, " is truncated: ", why, "; copy or export the checkpoint again"));
  };

  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError("cannot open", path);
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    absl::Status s = ErrnoError("cannot stat", path);
    ::close(fd);
    return s;
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return invalid("not a regular file");
  }
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return truncated(absl::StrCat("it has ", size, " bytes; the header length alone is 8"));
  }
  void* map = ::mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  int map_errno = errno;
  ::close(fd);
  if (map == MAP_FAILED) {
    errno = map_errno;
    return ErrnoError("cannot mmap", path);
  }
  f->map_ = static_cast<const char*>(map);
  f->map_size_ = size;

  uint64_t n;
  std::memcpy(&n, f->map_, 8);  // little-endian host (see dtype.cc)
  if (n > kMaxSafetensorsHeaderBytes) {
    return invalid(absl::StrCat("header length ", n, " exceeds the limit of ",
                                kMaxSafetensorsHeaderBytes, " bytes"));
  }
  if (n > size - 8) {
    return truncated(
        absl::StrCat("header length ", n, " runs past the end of the file (", size, " bytes)"));
  }
  absl::StatusOr<JsonValue> json = ParseJson(absl::string_view(f->map_ + 8, n));
  if (!json.ok()) return invalid(absl::StrCat("header: ", json.status().message()));
  if (!json->is_object()) {
    return invalid(absl::StrCat("header must be a JSON object, not ", json->TypeName()));
  }

  for (const auto& [key, value] : json->object) {
    if (key == "__metadata__") {
      absl::Status s = ParseMetadata(value, &f->metadata_);
      if (!s.ok()) return invalid(s.message());
      continue;
    }
    SafetensorsEntry e;
    e.name = key;
    absl::Status s = ParseEntry(value, &e);
    if (!s.ok()) return invalid(s.message());
    f->entries_.push_back(std::move(e));
  }

  auto& entries = f->entries_;
  // Stable: zero-size tensors at one offset keep their header order (the writer's).
  std::stable_sort(entries.begin(), entries.end(), [](const auto& a, const auto& b) {
    if (a.begin != b.begin) return a.begin < b.begin;
    return a.end < b.end;
  });
  uint64_t expected = 0;
  for (size_t i = 0; i < entries.size(); ++i) {
    const auto& e = entries[i];
    if (e.begin < expected) {
      return invalid(absl::StrCat("tensor ", JsonQuote(e.name), " data_offsets [", e.begin, ", ",
                                  e.end, "] overlap tensor ", JsonQuote(entries[i - 1].name), " [",
                                  entries[i - 1].begin, ", ", entries[i - 1].end, "]"));
    }
    if (e.begin > expected) {
      return invalid(absl::StrCat("gap of ", e.begin - expected, " bytes before tensor ",
                                  JsonQuote(e.name), " (data_offsets [", e.begin, ", ", e.end,
                                  "]); tensors must be contiguous from offset 0"));
    }
    expected = e.end;
  }
  uint64_t buffer = size - 8 - n;
  if (expected > buffer) {
    return truncated(absl::StrCat("its tensors need ", expected, " data bytes but only ", buffer,
                                  " follow the header"));
  }
  if (expected < buffer) {
    return invalid(absl::StrCat(buffer - expected, " trailing bytes after the last tensor"));
  }
  f->data_ = f->map_ + 8 + n;
  for (size_t i = 0; i < entries.size(); ++i) f->by_name_.emplace(entries[i].name, i);
  return f;
}

absl::string_view SafetensorsFile::Data(const SafetensorsEntry& e) const {
  return absl::string_view(data_ + e.begin, e.end - e.begin);
}

const SafetensorsEntry* SafetensorsFile::Find(absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : &entries_[it->second];
}

// ---------------------------------------------------------------------------------------
// Checkpoint

namespace {

// The sharded checkpoint described by the index at `index_path`.
absl::Status OpenSharded(const std::string& index_path,
                         std::vector<std::unique_ptr<SafetensorsFile>>* files) {
  auto invalid = [&](absl::string_view why) {
    return absl::InvalidArgumentError(absl::StrCat("checkpoint index ", index_path, ": ", why));
  };
  std::error_code ec;
  uint64_t size = fs::file_size(index_path, ec);
  if (!ec && size > kMaxSafetensorsHeaderBytes) {
    return invalid(absl::StrCat("is ", size, " bytes; at most ", kMaxSafetensorsHeaderBytes));
  }
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(index_path));
  absl::StatusOr<JsonValue> json = ParseJson(text);
  if (!json.ok()) return invalid(json.status().message());
  const JsonValue* map = json->Find("weight_map");
  if (map == nullptr || !map->is_object()) {
    return invalid("needs a \"weight_map\" object mapping tensor names to shard files");
  }
  if (map->object.empty()) return invalid("weight_map lists no tensors");

  std::string dir = fs::path(index_path).parent_path().string();
  std::map<std::string, const SafetensorsFile*> shards;
  for (const auto& [name, shard] : map->object) {
    if (!shard.is_string() || shard.text.empty() || shard.text == "." || shard.text == ".." ||
        shard.text.find('/') != std::string::npos || shard.text.find('\0') != std::string::npos) {
      return invalid(absl::StrCat("weight_map entry for tensor ", JsonQuote(name),
                                  " must be a file name in the index's folder"));
    }
    if (shards.count(shard.text)) continue;
    std::string shard_path = (fs::path(dir) / shard.text).string();
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> f = SafetensorsFile::Open(shard_path);
    if (!f.ok()) {
      if (absl::IsNotFound(f.status())) {
        return absl::NotFoundError(absl::StrCat(
            "checkpoint index ", index_path, " names shard ", JsonQuote(shard.text),
            " (for tensor ", JsonQuote(name), "), but ", shard_path, " does not exist"));
      }
      return f.status();
    }
    shards[shard.text] = f->get();
    files->push_back(std::move(*f));
  }
  for (const auto& [name, shard] : map->object) {
    if (shards[shard.text]->Find(name) == nullptr) {
      return invalid(absl::StrCat("maps tensor ", JsonQuote(name), " to shard ",
                                  JsonQuote(shard.text), ", which has no such tensor"));
    }
  }
  for (const auto& [shard_name, file] : shards) {
    for (const auto& e : file->entries()) {
      const JsonValue* listed = map->Find(e.name);
      if (listed == nullptr) {
        return invalid(absl::StrCat("shard ", JsonQuote(shard_name), " holds tensor ",
                                    JsonQuote(e.name), ", which the weight_map does not list"));
      }
      if (listed->text != shard_name) {
        return invalid(absl::StrCat("tensor ", JsonQuote(e.name), " appears in shard ",
                                    JsonQuote(shard_name), " but the weight_map maps it to ",
                                    JsonQuote(listed->text)));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Checkpoint>> Checkpoint::Open(const std::string& path) {
  std::unique_ptr<Checkpoint> c(new Checkpoint());
  std::error_code ec;
  fs::file_status st = fs::status(path, ec);
  if (ec || !fs::exists(st)) {
    return absl::NotFoundError(absl::StrCat("checkpoint path ", path, " does not exist"));
  }
  std::string file = path;
  if (fs::is_directory(st)) {
    std::string single = (fs::path(path) / kSingleFile).string();
    std::string index = (fs::path(path) / kIndexFile).string();
    if (fs::exists(single, ec)) {
      file = single;
    } else if (fs::exists(index, ec)) {
      file = index;
    } else {
      return absl::NotFoundError(
          absl::StrCat("folder ", path, " holds neither ", kSingleFile, " nor ", kIndexFile));
    }
  }
  if (absl::EndsWith(file, ".json")) {
    RETURN_IF_ERROR(OpenSharded(file, &c->files_));
  } else {
    ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(file));
    c->files_.push_back(std::move(f));
  }
  for (const auto& f : c->files_) {
    for (const auto& e : f->entries()) {
      c->by_name_.emplace(e.name, &e);  // names are unique across shards (checked above)
      c->owner_[&e] = f.get();
    }
  }
  return c;
}

std::vector<const SafetensorsEntry*> Checkpoint::Entries() const {
  std::vector<const SafetensorsEntry*> out;
  out.reserve(by_name_.size());
  for (const auto& [name, e] : by_name_) out.push_back(e);
  return out;
}

const SafetensorsEntry* Checkpoint::Find(absl::string_view name) const {
  auto it = by_name_.find(name);
  return it == by_name_.end() ? nullptr : it->second;
}

absl::string_view Checkpoint::Data(const SafetensorsEntry& e) const {
  return owner_.at(&e)->Data(e);
}

// ---------------------------------------------------------------------------------------
// SafetensorsWriter

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, const v1::Manifest& tensors,
    const std::map<std::string, std::string>& metadata) {
  RETURN_IF_ERROR(ValidateManifest(tensors));
  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->path_ = path;

  std::string header = "{";
  if (!metadata.empty()) {
    header.append("\"__metadata__\":{");
    bool first = true;
    for (const auto& [key, value] : metadata) {
      if (!CheckUtf8(key).ok() || !CheckUtf8(value).ok()) {
        return absl::InvalidArgumentError(
            absl::StrCat("metadata entry ", JsonQuote(key.substr(0, 64)),
                         " is not valid UTF-8; safetensors headers must be UTF-8"));
      }
      if (!first) header.push_back(',');
      first = false;
      absl::StrAppend(&header, JsonQuote(key), ":", JsonQuote(value));
    }
    header.push_back('}');
  }
  uint64_t offset = 0;
  for (const auto& t : tensors.tensors()) {
    if (!CheckUtf8(t.name()).ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor name ", JsonQuote(t.name()), " is not valid UTF-8; safetensors needs UTF-8"));
    }
    if (t.name() == "__metadata__") {
      return absl::InvalidArgumentError(
          "a tensor cannot be called \"__metadata__\" in safetensors; rename it");
    }
    ASSIGN_OR_RETURN(uint64_t bytes, ByteLength(t));
    if (header.size() > 1) header.push_back(',');
    absl::StrAppend(&header, JsonQuote(t.name()), ":{\"dtype\":\"", DTypeName(t.dtype()),
                    "\",\"shape\":[", absl::StrJoin(t.shape(), ","), "],\"data_offsets\":[", offset,
                    ",", offset + bytes, "]}");
    offset += bytes;
    w->names_.push_back(t.name());
    w->ends_.push_back(offset);
  }
  header.push_back('}');
  header.append((8 - header.size() % 8) % 8, ' ');  // align the data as the reference does
  if (header.size() > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors header for ", path, " would be ", header.size(), " bytes; the limit is ",
        kMaxSafetensorsHeaderBytes, ": use shorter names or fewer tensors per file"));
  }

  static std::atomic<uint64_t> counter{0};
  w->tmp_path_ = absl::StrCat(path, ".tmp.", ::getpid(), ".", counter++);
  w->fd_ = ::open(w->tmp_path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (w->fd_ < 0) return ErrnoError("cannot create", w->tmp_path_);
  uint64_t n = header.size();
  w->buffer_.reserve(kWriteBuffer);
  w->buffer_.append(reinterpret_cast<const char*>(&n), 8);
  w->buffer_.append(header);
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (fd_ >= 0) {
    ::close(fd_);
    ::unlink(tmp_path_.c_str());
  }
}

absl::Status SafetensorsWriter::Flush() {
  absl::Status st = WriteAll(fd_, buffer_, tmp_path_);
  buffer_.clear();
  if (!st.ok()) done_ = true;
  return st;
}

absl::Status SafetensorsWriter::Append(absl::string_view bytes) {
  if (done_) {
    return absl::FailedPreconditionError(
        absl::StrCat("writer for ", path_, " is finished or failed; create a new one"));
  }
  uint64_t total = ends_.back();
  if (bytes.size() > total - written_) {
    return absl::InvalidArgumentError(
        absl::StrCat("appending ", bytes.size(), " bytes to ", path_, " would pass the ", total,
                     " bytes its tensors hold (", written_, " written)"));
  }
  written_ += bytes.size();
  if (buffer_.size() + bytes.size() > kWriteBuffer) {
    RETURN_IF_ERROR(Flush());
    if (bytes.size() >= kWriteBuffer) {
      absl::Status st = WriteAll(fd_, bytes, tmp_path_);
      if (!st.ok()) done_ = true;
      return st;
    }
  }
  buffer_.append(bytes.data(), bytes.size());
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (done_) {
    return absl::FailedPreconditionError(
        absl::StrCat("writer for ", path_, " is already finished or failed"));
  }
  if (written_ < ends_.back()) {
    size_t i = std::upper_bound(ends_.begin(), ends_.end(), written_) - ends_.begin();
    uint64_t begin = i == 0 ? 0 : ends_[i - 1];
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot finish ", path_, ": tensor ", JsonQuote(names_[i]), " has ", written_ - begin,
        " of its ", ends_[i] - begin, " bytes; append the rest first"));
  }
  RETURN_IF_ERROR(Flush());
  done_ = true;
  if (::fsync(fd_) != 0) return ErrnoError("cannot fsync", tmp_path_);
  int fd = fd_;
  fd_ = -1;
  if (::close(fd) != 0) {
    absl::Status st = ErrnoError("cannot close", tmp_path_);
    ::unlink(tmp_path_.c_str());
    return st;
  }
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    absl::Status st = ErrnoError("cannot rename into", path_);
    ::unlink(tmp_path_.c_str());
    return st;
  }
  SyncParentFolder(path_);
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------
// Whole files

absl::Status WriteSafetensors(const std::string& path, const std::vector<HostTensor>& tensors,
                              const std::map<std::string, std::string>& metadata) {
  RETURN_IF_ERROR(CheckTensorSizes(tensors));
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                   SafetensorsWriter::Create(path, ManifestOf(tensors), metadata));
  for (const HostTensor& t : tensors) RETURN_IF_ERROR(w->Append(t.data));
  return w->Finish();
}

absl::StatusOr<std::vector<HostTensor>> ReadSafetensors(
    const std::string& path, std::map<std::string, std::string>* metadata, bool allow_int8) {
  ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsFile> f, SafetensorsFile::Open(path));
  std::vector<HostTensor> out;
  out.reserve(f->entries().size());
  for (const SafetensorsEntry& e : f->entries()) {
    // Entries of other dtypes are parsed as DTYPE_UNSPECIFIED (a checkpoint never shares
    // them); I8 is read only where an 8-bit delta is expected.
    const DType dtype = allow_int8 && e.dtype_name == "I8" ? v1::I8 : e.dtype;
    if (dtype == v1::DTYPE_UNSPECIFIED) {
      return absl::InvalidArgumentError(absl::StrCat(
          path, ": tensor ", JsonQuote(e.name), " is ", e.dtype_name, "; only F32, F16, BF16",
          allow_int8 ? ", F64 and I8" : " and F64", " tensors can be read here"));
    }
    HostTensor t;
    t.spec.set_name(e.name);
    t.spec.set_dtype(dtype);
    for (int64_t d : e.shape) t.spec.add_shape(d);
    absl::string_view data = f->Data(e);
    t.data.assign(data.data(), data.size());
    out.push_back(std::move(t));
  }
  if (metadata != nullptr) *metadata = f->metadata();
  return out;
}

// ---------------------------------------------------------------------------------------
// WriteCheckpoint

absl::Status WriteCheckpoint(const std::string& out_dir, const v1::Manifest& manifest,
                             uint64_t shard_bytes, const TensorReader& read) {
  RETURN_IF_ERROR(ValidateManifest(manifest));
  if (shard_bytes == 0) {
    return absl::InvalidArgumentError("shard_bytes must be positive");
  }
  std::error_code ec;
  fs::create_directories(out_dir, ec);
  if (ec) {
    errno = ec.value();
    return ErrnoError("cannot create folder", out_dir);
  }
  for (const auto& entry : fs::directory_iterator(out_dir, ec)) {
    std::string name = entry.path().filename().string();
    if (name == kIndexFile ||
        (absl::StartsWith(name, "model") && absl::EndsWith(name, ".safetensors"))) {
      return absl::AlreadyExistsError(absl::StrCat(out_dir, " already holds ", name,
                                                   "; write the checkpoint to an empty folder"));
    }
  }
  if (ec) {
    errno = ec.value();
    return ErrnoError("cannot list", out_dir);
  }

  // Split in manifest order: close a shard before the tensor that would overflow it.
  std::vector<std::vector<int>> shards;
  uint64_t in_shard = 0;
  for (int i = 0; i < manifest.tensors_size(); ++i) {
    ASSIGN_OR_RETURN(uint64_t bytes, ByteLength(manifest.tensors(i)));
    if (shards.empty() || (!shards.back().empty() && in_shard + bytes > shard_bytes)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(i);
    in_shard += bytes;
  }
  if (shards.size() > 99999) {
    return absl::InvalidArgumentError(absl::StrCat("shard_bytes ", shard_bytes, " would make ",
                                                   shards.size(),
                                                   " shards; at most 99999: raise shard_bytes"));
  }

  std::vector<std::string> written;
  auto write_all = [&]() -> absl::Status {
    std::string buf;
    for (size_t s = 0; s < shards.size(); ++s) {
      std::string name = shards.size() == 1 ? std::string(kSingleFile)
                                            : absl::StrCat("model-", Padded5(s + 1), "-of-",
                                                           Padded5(shards.size()), ".safetensors");
      v1::Manifest part;
      for (int i : shards[s]) *part.add_tensors() = manifest.tensors(i);
      std::string path = (fs::path(out_dir) / name).string();
      ASSIGN_OR_RETURN(std::unique_ptr<SafetensorsWriter> w,
                       SafetensorsWriter::Create(path, part, {{"format", "pt"}}));
      for (int i : shards[s]) {
        ASSIGN_OR_RETURN(uint64_t bytes, ByteLength(manifest.tensors(i)));
        for (uint64_t off = 0; off < bytes; off += kChunkBytes) {
          uint64_t len = std::min<uint64_t>(kChunkBytes, bytes - off);
          buf.clear();
          RETURN_IF_ERROR(read(static_cast<uint32_t>(i), off, len, &buf));
          if (buf.size() != len) {
            return absl::DataLossError(absl::StrCat(
                "reading tensor ", JsonQuote(manifest.tensors(i).name()), " at offset ", off,
                " returned ", buf.size(), " bytes instead of ", len));
          }
          RETURN_IF_ERROR(w->Append(buf));
        }
      }
      RETURN_IF_ERROR(w->Finish());
      written.push_back(path);
    }
    if (shards.size() == 1) return absl::OkStatus();
    ASSIGN_OR_RETURN(uint64_t total, TotalBytes(manifest));
    std::map<std::string, std::string> weight_map;
    for (size_t s = 0; s < shards.size(); ++s) {
      for (int i : shards[s]) {
        weight_map[manifest.tensors(i).name()] =
            absl::StrCat("model-", Padded5(s + 1), "-of-", Padded5(shards.size()), ".safetensors");
      }
    }
    // Written last, so a folder with an index always has all of its shards.
    std::string index = absl::StrCat("{\n  \"metadata\": {\n    \"total_size\": ", total,
                                     "\n  },\n  \"weight_map\": {");
    bool first = true;
    for (const auto& [name, shard] : weight_map) {
      absl::StrAppend(&index, first ? "\n" : ",\n", "    ", JsonQuote(name), ": ",
                      JsonQuote(shard));
      first = false;
    }
    index.append("\n  }\n}\n");
    return WriteFileAtomic((fs::path(out_dir) / kIndexFile).string(), index);
  };
  absl::Status st = write_all();
  if (!st.ok()) {
    for (const auto& p : written) ::unlink(p.c_str());  // leave no partial checkpoint
  }
  return st;
}

}  // namespace coldfuse
