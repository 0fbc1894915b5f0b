// Linked into every executable of the ThreadSanitizer build (cmake/sanitizers.cmake), and
// into no other build.
//
// Debian's Abseil is not built with TSan, so absl::Mutex locks and unlocks through futexes
// and atomics that TSan cannot see: to TSan, gRPC's internal locking (gpr_mu and
// grpc_core::Mutex are absl::Mutex) and any absl::Mutex in coldfuse order nothing, and every
// object handed from one thread to another under one is reported as a race. The definitions
// below take the place of the exported absl::Mutex / absl::CondVar entry points (an
// executable's definitions win over libabsl's, for calls from libgrpc too), tell TSan about
// each lock and unlock with the annotations Abseil's own TSan build makes, and call the real
// function in libabsl_synchronization.
//
// The ...WithTimeout functions are not here: in this Abseil they call their ...WithDeadline
// twin through the PLT, which lands here. A Condition that LockWhen/Await evaluate runs
// inside Abseil's lock code, with the mutex held, but on whichever thread is locking or
// unlocking and outside the span where TSan sees that thread hold it: its reads are reads
// under the lock, so they are hidden from TSan (IgnoredWhileEvaluated). Not modelled: a
// CondVar wait is taken to hold the mutex exclusively.
#include <dlfcn.h>
#include <sanitizer/tsan_interface.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>

#include "absl/base/config.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

#define CF_STRINGIFY_(x) #x
#define CF_STRINGIFY(x) CF_STRINGIFY_(x)

namespace {

// The next definition of `name` (a mangled name without the "_ZN4absl" and inline
// namespace prefix) after this executable's: libabsl_synchronization's.
template <typename Fn>
Fn Real(const char* name) {
  std::string mangled = "_ZN4absl";
#if ABSL_OPTION_USE_INLINE_NAMESPACE
  const char* ns = CF_STRINGIFY(ABSL_OPTION_INLINE_NAMESPACE_NAME);
  mangled += std::to_string(std::strlen(ns)) + ns;
#endif
  mangled += name;
  void* f = ::dlsym(RTLD_NEXT, mangled.c_str());
  if (f == nullptr) {
    std::fprintf(stderr, "tsan_absl_mutex: no %s after the executable\n", mangled.c_str());
    std::abort();
  }
  return reinterpret_cast<Fn>(f);
}

extern "C" void AnnotateIgnoreReadsBegin(const char* file, int line);
extern "C" void AnnotateIgnoreReadsEnd(const char* file, int line);

bool EvalIgnoringReads(void* cond) {
  AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
  const bool met = static_cast<const absl::Condition*>(cond)->Eval();
  AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
  return met;
}

// `cond`, evaluated with its reads hidden from TSan. `cond` must outlive the result.
absl::Condition IgnoredWhileEvaluated(const absl::Condition& cond) {
  return absl::Condition(&EvalIgnoringReads, const_cast<absl::Condition*>(&cond));
}

constexpr unsigned kRead = __tsan_mutex_read_lock;
constexpr unsigned kTry = __tsan_mutex_try_lock;
constexpr unsigned kTryFailed = __tsan_mutex_try_lock | __tsan_mutex_try_lock_failed;

}  // namespace

namespace absl {
ABSL_NAMESPACE_BEGIN

// Plain locks and unlocks.

ABSL_NO_THREAD_SAFETY_ANALYSIS void Mutex::Lock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex4LockEv");
  __tsan_mutex_pre_lock(this, 0);
  real(this);
  __tsan_mutex_post_lock(this, 0, 0);
}

ABSL_NO_THREAD_SAFETY_ANALYSIS void Mutex::Unlock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex6UnlockEv");
  __tsan_mutex_pre_unlock(this, 0);
  real(this);
  __tsan_mutex_post_unlock(this, 0);
}

ABSL_NO_THREAD_SAFETY_ANALYSIS bool Mutex::TryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("5Mutex7TryLockEv");
  __tsan_mutex_pre_lock(this, kTry);
  bool locked = real(this);
  __tsan_mutex_post_lock(this, locked ? kTry : kTryFailed, 0);
  return locked;
}

ABSL_NO_THREAD_SAFETY_ANALYSIS void Mutex::ReaderLock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex10ReaderLockEv");
  __tsan_mutex_pre_lock(this, kRead);
  real(this);
  __tsan_mutex_post_lock(this, kRead, 0);
}

ABSL_NO_THREAD_SAFETY_ANALYSIS void Mutex::ReaderUnlock() {
  static const auto real = Real<void (*)(Mutex*)>("5Mutex12ReaderUnlockEv");
  __tsan_mutex_pre_unlock(this, kRead);
  real(this);
  __tsan_mutex_post_unlock(this, kRead);
}

ABSL_NO_THREAD_SAFETY_ANALYSIS bool Mutex::ReaderTryLock() {
  static const auto real = Real<bool (*)(Mutex*)>("5Mutex13ReaderTryLockEv");
  __tsan_mutex_pre_lock(this, kRead | kTry);
  bool locked = real(this);
  __tsan_mutex_post_lock(this, kRead | (locked ? kTry : kTryFailed), 0);
  return locked;
}

Mutex::~Mutex() {
  static const auto real = Real<void (*)(Mutex*)>("5MutexD1Ev");
  __tsan_mutex_destroy(this, __tsan_mutex_not_static);
  real(this);
}

// Locks that wait for a Condition: TSan sees the lock once it is taken.

ABSL_NO_THREAD_SAFETY_ANALYSIS void Mutex::LockWhen(const Condition& cond) {
  static const auto real =
      Real<void (*)(Mutex*, const Condition&)>("5Mutex8LockWhenERKNS0_9ConditionE");
  __tsan_mutex_pre_lock(this, 0);
  real(this, IgnoredWhileEvaluated(cond));
  __tsan_mutex_post_lock(this, 0, 0);
}

ABSL_NO_THREAD_SAFETY_ANALYSIS void Mutex::ReaderLockWhen(const Condition& cond) {
  static const auto real =
      Real<void (*)(Mutex*, const Condition&)>("5Mutex14ReaderLockWhenERKNS0_9ConditionE");
  __tsan_mutex_pre_lock(this, kRead);
  real(this, IgnoredWhileEvaluated(cond));
  __tsan_mutex_post_lock(this, kRead, 0);
}

ABSL_NO_THREAD_SAFETY_ANALYSIS bool Mutex::LockWhenWithDeadline(const Condition& cond,
                                                                absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "5Mutex20LockWhenWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_mutex_pre_lock(this, 0);
  bool met = real(this, IgnoredWhileEvaluated(cond), deadline);
  __tsan_mutex_post_lock(this, 0, 0);
  return met;
}

// Waits that release the mutex and take it back: an unlock, then a lock.

ABSL_NO_THREAD_SAFETY_ANALYSIS void Mutex::Await(const Condition& cond) {
  static const auto real =
      Real<void (*)(Mutex*, const Condition&)>("5Mutex5AwaitERKNS0_9ConditionE");
  __tsan_mutex_pre_unlock(this, 0);
  __tsan_mutex_post_unlock(this, 0);
  real(this, IgnoredWhileEvaluated(cond));
  __tsan_mutex_pre_lock(this, 0);
  __tsan_mutex_post_lock(this, 0, 0);
}

ABSL_NO_THREAD_SAFETY_ANALYSIS bool Mutex::AwaitWithDeadline(const Condition& cond,
                                                             absl::Time deadline) {
  static const auto real = Real<bool (*)(Mutex*, const Condition&, absl::Time)>(
      "5Mutex17AwaitWithDeadlineERKNS0_9ConditionENS0_4TimeE");
  __tsan_mutex_pre_unlock(this, 0);
  __tsan_mutex_post_unlock(this, 0);
  bool met = real(this, IgnoredWhileEvaluated(cond), deadline);
  __tsan_mutex_pre_lock(this, 0);
  __tsan_mutex_post_lock(this, 0, 0);
  return met;
}

void CondVar::Wait(Mutex* mu) {
  static const auto real = Real<void (*)(CondVar*, Mutex*)>("7CondVar4WaitEPNS0_5MutexE");
  __tsan_mutex_pre_unlock(mu, 0);
  __tsan_mutex_post_unlock(mu, 0);
  real(this, mu);
  __tsan_mutex_pre_lock(mu, 0);
  __tsan_mutex_post_lock(mu, 0, 0);
}

bool CondVar::WaitWithDeadline(Mutex* mu, absl::Time deadline) {
  static const auto real = Real<bool (*)(CondVar*, Mutex*, absl::Time)>(
      "7CondVar16WaitWithDeadlineEPNS0_5MutexENS0_4TimeE");
  __tsan_mutex_pre_unlock(mu, 0);
  __tsan_mutex_post_unlock(mu, 0);
  bool timed_out = real(this, mu, deadline);
  __tsan_mutex_pre_lock(mu, 0);
  __tsan_mutex_post_lock(mu, 0, 0);
  return timed_out;
}

ABSL_NAMESPACE_END
}  // namespace absl
