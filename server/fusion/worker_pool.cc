#include "server/fusion/worker_pool.h"

#include <algorithm>

namespace coldfuse::fusion {

WorkerPool::WorkerPool(int threads) {
  for (int i = 0; i < std::max(1, threads); ++i) threads_.emplace_back([this] { Loop(); });
}

WorkerPool::~WorkerPool() {
  {
    absl::MutexLock l(&mu_);
    stop_ = true;
  }
  for (auto& t : threads_) t.join();
}

WorkerPool* WorkerPool::Default() {
  static WorkerPool* pool =
      new WorkerPool(std::max(2, static_cast<int>(std::thread::hardware_concurrency())));
  return pool;
}

void WorkerPool::Run(std::function<void()> task) {
  absl::MutexLock l(&mu_);
  queue_.push_back(std::move(task));
}

void WorkerPool::ParallelFor(size_t n, const std::function<void(size_t)>& fn) {
  // A count under a mutex rather than absl::BlockingCounter, whose lock-free decrements a
  // ThreadSanitizer build cannot see order the tasks' writes before the wait's return.
  struct Pending {
    absl::Mutex mu;
    size_t left ABSL_GUARDED_BY(mu);
  } pending;
  {
    absl::MutexLock l(&pending.mu);
    pending.left = n;
  }
  for (size_t i = 0; i < n; ++i) {
    Run([&fn, &pending, i] {
      fn(i);
      absl::MutexLock l(&pending.mu);
      --pending.left;
    });
  }
  absl::MutexLock l(&pending.mu);
  auto all_done = [&pending]() ABSL_SHARED_LOCKS_REQUIRED(pending.mu) { return pending.left == 0; };
  pending.mu.Await(absl::Condition(&all_done));
}

void WorkerPool::Loop() {
  for (;;) {
    std::function<void()> task;
    {
      absl::MutexLock l(&mu_);
      auto ready = [this]() ABSL_SHARED_LOCKS_REQUIRED(mu_) { return stop_ || !queue_.empty(); };
      mu_.Await(absl::Condition(&ready));
      if (queue_.empty()) return;  // stopping, nothing left
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
  }
}

}  // namespace coldfuse::fusion
