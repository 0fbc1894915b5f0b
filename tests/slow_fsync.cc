// LD_PRELOAD shim for tests: makes fsync, fdatasync and sync_file_range take
// SLOW_FSYNC_MS milliseconds longer (a slow or overloaded disk), then does the real call.
#include <dlfcn.h>
#include <fcntl.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <ctime>

namespace {

void Delay() {
  const char* ms = std::getenv("SLOW_FSYNC_MS");
  const long delay = ms == nullptr ? 0 : std::atol(ms);
  if (delay <= 0) return;
  timespec ts{delay / 1000, (delay % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0) {
  }
}

template <typename Fn>
Fn Real(const char* name) {
  return reinterpret_cast<Fn>(dlsym(RTLD_NEXT, name));
}

}  // namespace

extern "C" {

int fsync(int fd) {
  static auto real = Real<int (*)(int)>("fsync");
  Delay();
  return real(fd);
}

int fdatasync(int fd) {
  static auto real = Real<int (*)(int)>("fdatasync");
  Delay();
  return real(fd);
}

int sync_file_range(int fd, off64_t offset, off64_t nbytes, unsigned int flags) {
  static auto real = Real<int (*)(int, off64_t, off64_t, unsigned int)>("sync_file_range");
  if ((flags & SYNC_FILE_RANGE_WAIT_AFTER) != 0) Delay();
  return real(fd, offset, nbytes, flags);
}

}  // extern "C"
