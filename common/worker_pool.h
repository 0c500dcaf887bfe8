#pragma once

// A few threads for work that must block (synchronous gRPC calls to the queue, SMTP callouts to
// a primary) on behalf of event-loop threads that must not.

#include <condition_variable>
#include <cstddef>
#include <deque>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace backstop {

// Owns its threads and the tasks not yet started. Submit() from any thread; tasks run on the
// pool's threads in submission order (several at once). Destruction waits for running tasks
// and runs the ones still queued with `cancelled` = true, so that every task's owner hears
// back exactly once.
class WorkerPool {
 public:
  using Task = std::function<void(bool cancelled)>;

  explicit WorkerPool(size_t threads);
  ~WorkerPool();
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  void Submit(Task task);

 private:
  void Work();

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<Task> tasks_;  // guarded by mutex_
  bool stopping_ = false;   // guarded by mutex_
  std::vector<std::thread> threads_;
};

}  // namespace backstop
