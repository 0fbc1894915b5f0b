// bench_limits: this machine's ceilings for the coldfuse benchmark, printed as one JSON
// object on stdout. GB/s means 1e9 bytes per second, counting each byte moved once.
//
//   memcpy      copy of a --mem_mib buffer into another (pages touched first), best of --reps
//   tcp         one 127.0.0.1 connection, --tcp_mib sent in 1 MiB writes, a receiver thread
//               reading 1 MiB at a time; time = first write until the receiver saw EOF;
//               best of --reps
//   disk write  --disk_mib file in --dir written in 1 MiB writes; time includes the fsync
//   disk read   the same file after posix_fadvise(DONTNEED) (pages are clean after the
//               fsync, so the kernel drops them), 1 MiB reads; also an O_DIRECT read when
//               the file system allows it. The file is removed at the end.
//
// Usage: bench_limits [--dir=/tmp] [--mem_mib=1024] [--tcp_mib=2048] [--disk_mib=2048]
//                     [--reps=3] [--skip=mem,tcp,disk]
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/statfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr size_t kMiB = size_t{1} << 20;

struct Options {
  std::string dir = "/tmp";
  size_t mem_mib = 1024;
  size_t tcp_mib = 2048;
  size_t disk_mib = 2048;
  int reps = 3;
  std::string skip;
};

[[noreturn]] void Die(const std::string& what) {
  std::fprintf(stderr, "bench_limits: %s: %s\n", what.c_str(), std::strerror(errno));
  std::exit(1);
}

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// An anonymous mapping with every page touched (so page faults are not timed).
char* Alloc(size_t bytes, char fill) {
  void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) Die("mmap");
  std::memset(p, fill, bytes);
  return static_cast<char*>(p);
}

void FillPseudoRandom(char* p, size_t bytes, uint64_t seed) {
  uint64_t x = seed | 1;
  for (size_t i = 0; i + 8 <= bytes; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(p + i, &x, 8);
  }
}

std::string JsonList(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) {
    char buf[64];
    std::snprintf(buf, sizeof buf, "%s%.4f", i ? ", " : "", v[i]);
    s += buf;
  }
  return s + "]";
}

std::vector<std::string> fields;

void Field(const std::string& key, double v) {
  char buf[96];
  std::snprintf(buf, sizeof buf, "\"%s\": %.6g", key.c_str(), v);
  fields.push_back(buf);
}
void FieldInt(const std::string& key, uint64_t v) {
  fields.push_back("\"" + key + "\": " + std::to_string(v));
}
void FieldRaw(const std::string& key, const std::string& raw) {
  fields.push_back("\"" + key + "\": " + raw);
}

void Memcpy(const Options& o) {
  const size_t bytes = o.mem_mib * kMiB;
  char* src = Alloc(bytes, 1);
  char* dst = Alloc(bytes, 2);
  std::vector<double> runs;
  for (int r = 0; r < std::max(o.reps, 1); ++r) {
    double t0 = Now();
    std::memcpy(dst, src, bytes);
    double t = Now() - t0;
    runs.push_back(bytes / t / 1e9);
  }
  if (dst[bytes / 2] != 1) std::fprintf(stderr, "memcpy check failed\n");
  munmap(src, bytes);
  munmap(dst, bytes);
  FieldInt("memcpy_bytes", bytes);
  Field("memcpy_gbps", *std::max_element(runs.begin(), runs.end()));
  FieldRaw("memcpy_runs_gbps", JsonList(runs));
}

// One transfer of `bytes` over a fresh loopback connection; returns GB/s.
double TcpOnce(size_t bytes) {
  int lfd = socket(AF_INET, SOCK_STREAM, 0);
  if (lfd < 0) Die("socket");
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  if (bind(lfd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) Die("bind");
  if (listen(lfd, 1) != 0) Die("listen");
  socklen_t len = sizeof addr;
  if (getsockname(lfd, reinterpret_cast<sockaddr*>(&addr), &len) != 0) Die("getsockname");

  std::atomic<uint64_t> received{0};
  std::thread receiver([&] {
    int fd = accept(lfd, nullptr, nullptr);
    if (fd < 0) Die("accept");
    std::vector<char> buf(kMiB);
    uint64_t n = 0;
    while (true) {
      ssize_t r = read(fd, buf.data(), buf.size());
      if (r < 0 && errno == EINTR) continue;
      if (r < 0) Die("read");
      if (r == 0) break;
      n += static_cast<uint64_t>(r);
    }
    close(fd);
    received = n;
  });

  int fd = socket(AF_INET, SOCK_STREAM, 0);
  if (fd < 0) Die("socket");
  if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0) Die("connect");
  std::vector<char> buf(kMiB);
  FillPseudoRandom(buf.data(), buf.size(), 7);
  double t0 = Now();
  for (size_t sent = 0; sent < bytes; sent += kMiB) {
    size_t off = 0;
    while (off < kMiB) {
      ssize_t w = write(fd, buf.data() + off, kMiB - off);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) Die("write");
      off += static_cast<size_t>(w);
    }
  }
  close(fd);
  receiver.join();
  double t = Now() - t0;
  close(lfd);
  if (received != bytes) {
    std::fprintf(stderr, "bench_limits: tcp received %llu of %zu bytes\n",
                 static_cast<unsigned long long>(received.load()), bytes);
    std::exit(1);
  }
  return bytes / t / 1e9;
}

void Tcp(const Options& o) {
  const size_t bytes = o.tcp_mib * kMiB;
  std::vector<double> runs;
  for (int r = 0; r < std::max(o.reps, 1); ++r) runs.push_back(TcpOnce(bytes));
  FieldInt("tcp_bytes", bytes);
  Field("tcp_loopback_gbps", *std::max_element(runs.begin(), runs.end()));
  FieldRaw("tcp_runs_gbps", JsonList(runs));
}

// Fraction of the file's pages in the page cache.
double ResidentFraction(int fd, size_t bytes) {
  void* p = mmap(nullptr, bytes, PROT_READ, MAP_SHARED, fd, 0);
  if (p == MAP_FAILED) return -1;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  std::vector<unsigned char> vec((bytes + page - 1) / page);
  double f = -1;
  if (mincore(p, bytes, vec.data()) == 0) {
    size_t n = 0;
    for (unsigned char c : vec) n += c & 1;
    f = static_cast<double>(n) / vec.size();
  }
  munmap(p, bytes);
  return f;
}

// Reads the whole file with `flags`; returns GB/s, or -1 if open fails with EINVAL.
double ReadFile(const std::string& path, size_t bytes, int flags) {
  int fd = open(path.c_str(), O_RDONLY | flags);
  if (fd < 0 && errno == EINVAL) return -1;
  if (fd < 0) Die("open " + path);
  void* mem = nullptr;
  if (posix_memalign(&mem, 4096, kMiB) != 0) Die("posix_memalign");
  char* buf = static_cast<char*>(mem);
  double t0 = Now();
  size_t total = 0;
  while (true) {
    ssize_t r = read(fd, buf, kMiB);
    if (r < 0 && errno == EINTR) continue;
    if (r < 0 && errno == EINVAL && (flags & O_DIRECT)) {
      close(fd);
      free(buf);
      return -1;
    }
    if (r < 0) Die("read " + path);
    if (r == 0) break;
    total += static_cast<size_t>(r);
  }
  double t = Now() - t0;
  close(fd);
  free(buf);
  if (total != bytes) {
    std::fprintf(stderr, "bench_limits: read %zu of %zu bytes\n", total, bytes);
    std::exit(1);
  }
  return bytes / t / 1e9;
}

void Disk(const Options& o) {
  const size_t bytes = o.disk_mib * kMiB;
  const std::string path = o.dir + "/bench_limits." + std::to_string(getpid()) + ".tmp";
  struct statfs sfs {};
  if (statfs(o.dir.c_str(), &sfs) == 0) {
    char buf[32];
    std::snprintf(buf, sizeof buf, "\"0x%lx\"", static_cast<unsigned long>(sfs.f_type));
    FieldRaw("disk_fs_magic", buf);
  }
  std::vector<char> buf(kMiB);
  FillPseudoRandom(buf.data(), buf.size(), 12345);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  if (fd < 0) Die("open " + path);
  double t0 = Now();
  for (size_t off = 0; off < bytes; off += kMiB) {
    // Different bytes in every MiB: nothing for a compressing or deduplicating store.
    FillPseudoRandom(buf.data(), 64, off + 1);
    size_t done = 0;
    while (done < kMiB) {
      ssize_t w = write(fd, buf.data() + done, kMiB - done);
      if (w < 0 && errno == EINTR) continue;
      if (w < 0) {
        unlink(path.c_str());
        Die("write " + path);
      }
      done += static_cast<size_t>(w);
    }
  }
  if (fsync(fd) != 0) {
    unlink(path.c_str());
    Die("fsync");
  }
  double write_s = Now() - t0;
  // Clean pages now: DONTNEED drops them from the page cache.
  posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
  close(fd);
  fd = open(path.c_str(), O_RDONLY);
  if (fd >= 0) {
    posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
    Field("disk_resident_fraction_before_read", ResidentFraction(fd, bytes));
    close(fd);
  }
  double read_gbps = ReadFile(path, bytes, 0);
  double direct_gbps = ReadFile(path, bytes, O_DIRECT);
  unlink(path.c_str());
  FieldInt("disk_bytes", bytes);
  Field("disk_write_fsync_gbps", bytes / write_s / 1e9);
  Field("disk_read_gbps", read_gbps);
  if (direct_gbps > 0) Field("disk_read_direct_gbps", direct_gbps);
}

bool Skipped(const Options& o, const char* what) {
  std::string s = "," + o.skip + ",";
  return s.find(std::string(",") + what + ",") != std::string::npos;
}

}  // namespace

int main(int argc, char** argv) {
  Options o;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    auto value = [&](const char* name) -> const char* {
      std::string prefix = std::string("--") + name + "=";
      return a.rfind(prefix, 0) == 0 ? argv[i] + prefix.size() : nullptr;
    };
    if (const char* v = value("dir")) {
      o.dir = v;
    } else if (const char* v = value("mem_mib")) {
      o.mem_mib = std::strtoull(v, nullptr, 10);
    } else if (const char* v = value("tcp_mib")) {
      o.tcp_mib = std::strtoull(v, nullptr, 10);
    } else if (const char* v = value("disk_mib")) {
      o.disk_mib = std::strtoull(v, nullptr, 10);
    } else if (const char* v = value("reps")) {
      o.reps = std::atoi(v);
    } else if (const char* v = value("skip")) {
      o.skip = v;
    } else {
      std::fprintf(stderr,
                   "usage: bench_limits [--dir=/tmp] [--mem_mib=1024] [--tcp_mib=2048] "
                   "[--disk_mib=2048] [--reps=3] [--skip=mem,tcp,disk]\n");
      return 2;
    }
  }
  if (o.mem_mib == 0 || o.tcp_mib == 0 || o.disk_mib == 0) {
    std::fprintf(stderr, "bench_limits: sizes must be > 0\n");
    return 2;
  }
  if (!Skipped(o, "mem")) Memcpy(o);
  if (!Skipped(o, "tcp")) Tcp(o);
  if (!Skipped(o, "disk")) Disk(o);
  std::printf("{");
  for (size_t i = 0; i < fields.size(); ++i)
    std::printf("%s\n  %s", i ? "," : "", fields[i].c_str());
  std::printf("\n}\n");
  return 0;
}
