// A fixed set of threads for fusion's chunk work, sized from the machine, instead of a
// thread per chunk. Thread-safe.
#ifndef COLDFUSE_SERVER_FUSION_WORKER_POOL_H_
#define COLDFUSE_SERVER_FUSION_WORKER_POOL_H_

#include <deque>
#include <functional>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

namespace coldfuse::fusion {

class WorkerPool {
 public:
  // REQUIRES: threads >= 1.
  explicit WorkerPool(int threads);
  // Runs the tasks still queued, then joins.
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // The process's pool: one thread per hardware thread (at least 2).
  static WorkerPool* Default();

  int size() const { return static_cast<int>(threads_.size()); }
  void Run(std::function<void()> task) ABSL_LOCKS_EXCLUDED(mu_);
  // Runs fn(0) .. fn(n - 1) on the pool and waits for all of them.
  void ParallelFor(size_t n, const std::function<void(size_t)>& fn) ABSL_LOCKS_EXCLUDED(mu_);

 private:
  void Loop() ABSL_LOCKS_EXCLUDED(mu_);

  absl::Mutex mu_;
  std::deque<std::function<void()>> queue_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::thread> threads_;
};

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_WORKER_POOL_H_
