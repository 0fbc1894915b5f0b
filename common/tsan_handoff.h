// Telling ThreadSanitizer about hand-offs it cannot see.
//
// gRPC runs a callback reactor's reactions one after another, often on different threads,
// and orders them through lock-free queues inside libgrpc, which the TSan build cannot
// instrument (Debian's gRPC is not built with it). Without help TSan reports the reactor's
// own members, touched in one reaction and then in the next, as races. A reactor calls
// TsanHandOff(this) right before it gives control back to gRPC (StartRead, StartWrite,
// Finish) and TsanTakeOver(this) first in each reaction (OnReadDone, OnWriteDone, OnDone).
// Both compile to nothing outside TSan builds.
#ifndef COLDFUSE_COMMON_TSAN_HANDOFF_H_
#define COLDFUSE_COMMON_TSAN_HANDOFF_H_

#if defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define COLDFUSE_TSAN 1
#endif
#endif
#if defined(__SANITIZE_THREAD__) && !defined(COLDFUSE_TSAN)
#define COLDFUSE_TSAN 1
#endif

#ifdef COLDFUSE_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace coldfuse {

#ifdef COLDFUSE_TSAN
inline void TsanHandOff(const void* owner) { __tsan_release(const_cast<void*>(owner)); }
inline void TsanTakeOver(const void* owner) { __tsan_acquire(const_cast<void*>(owner)); }
#else
inline void TsanHandOff(const void*) {}
inline void TsanTakeOver(const void*) {}
#endif

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_TSAN_HANDOFF_H_
