#include "common/worker_pool.h"

#include <utility>

namespace backstop {

WorkerPool::WorkerPool(size_t threads) {
  threads_.reserve(threads);
  for (size_t i = 0; i < threads; ++i) {
    threads_.emplace_back([this] { Work(); });
  }
}

WorkerPool::~WorkerPool() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& thread : threads_) {
    thread.join();
  }
  // Submitted after the threads left (or with no threads at all).
  for (Task& task : tasks_) {
    task(/*cancelled=*/true);
  }
}

void WorkerPool::Submit(Task task) {
  {
    std::lock_guard lock(mutex_);
    if (!stopping_) {
      tasks_.push_back(std::move(task));
      wake_.notify_one();
      return;
    }
  }
  task(/*cancelled=*/true);
}

void WorkerPool::Work() {
  std::unique_lock lock(mutex_);
  while (true) {
    wake_.wait(lock, [this] { return stopping_ || !tasks_.empty(); });
    if (tasks_.empty()) {
      return;
    }
    Task task = std::move(tasks_.front());
    tasks_.pop_front();
    const bool cancelled = stopping_;
    lock.unlock();
    task(cancelled);
    lock.lock();
  }
}

}  // namespace backstop
