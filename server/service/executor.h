// A fixed pool of threads that runs blocking work (synced commits, fusion) off the gRPC
// callback threads, which must never block. Thread-safe. The destructor runs what is
// queued, then joins.
#ifndef COLDFUSE_SERVER_SERVICE_EXECUTOR_H_
#define COLDFUSE_SERVER_SERVICE_EXECUTOR_H_

#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace coldfuse::service {

class Executor {
 public:
  explicit Executor(int threads);
  ~Executor();
  Executor(const Executor&) = delete;
  Executor& operator=(const Executor&) = delete;

  void Run(std::function<void()> fn);

 private:
  void Loop();

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::function<void()>> queue_;
  bool stop_ = false;
  std::vector<std::thread> threads_;
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_EXECUTOR_H_
