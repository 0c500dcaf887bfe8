#include "common/worker_pool.h"

#include <atomic>
#include <future>
#include <thread>

#include <gtest/gtest.h>

namespace backstop {
namespace {

TEST(WorkerPoolTest, RunsTasksOffTheCallingThread) {
  WorkerPool pool(2);
  std::promise<std::thread::id> ran;
  pool.Submit([&](bool cancelled) {
    EXPECT_FALSE(cancelled);
    ran.set_value(std::this_thread::get_id());
  });
  EXPECT_NE(ran.get_future().get(), std::this_thread::get_id());
}

TEST(WorkerPoolTest, RunsTasksConcurrently) {
  WorkerPool pool(2);
  // Each task waits for the other: with one thread this would never finish.
  std::promise<void> first_started;
  std::promise<void> second_started;
  std::promise<void> both_done;
  std::atomic<int> done{0};
  auto finish = [&] {
    if (++done == 2) {
      both_done.set_value();
    }
  };
  pool.Submit([&](bool) {
    first_started.set_value();
    second_started.get_future().wait();
    finish();
  });
  pool.Submit([&](bool) {
    second_started.set_value();
    first_started.get_future().wait();
    finish();
  });
  both_done.get_future().wait();
  EXPECT_EQ(done.load(), 2);
}

TEST(WorkerPoolTest, DestructionCancelsQueuedTasksExactlyOnce) {
  std::atomic<int> ran{0};
  std::atomic<int> cancelled{0};
  std::promise<void> started;
  std::promise<void> release;
  std::shared_future<void> released = release.get_future().share();
  std::thread releaser;
  {
    WorkerPool pool(1);
    pool.Submit([&, released](bool was_cancelled) {
      started.set_value();
      released.wait();
      (was_cancelled ? cancelled : ran)++;
    });
    // The only thread is busy with the first task: these wait in the queue.
    started.get_future().wait();
    for (int i = 0; i < 5; ++i) {
      pool.Submit([&](bool was_cancelled) { (was_cancelled ? cancelled : ran)++; });
    }
    // Released around the time the destructor starts: the queued tasks run or are cancelled
    // depending on the race, but each exactly once.
    releaser = std::thread([&] { release.set_value(); });
  }
  releaser.join();
  EXPECT_EQ(ran.load() + cancelled.load(), 6);
  EXPECT_GE(ran.load(), 1);  // the task that had started runs to completion
}

TEST(WorkerPoolTest, PoolWithoutThreadsCancelsOnDestruction) {
  int cancelled = 0;
  {
    WorkerPool pool(0);
    pool.Submit([&](bool was_cancelled) { cancelled += was_cancelled ? 1 : 0; });
    EXPECT_EQ(cancelled, 0);
  }
  EXPECT_EQ(cancelled, 1);
}

}  // namespace
}  // namespace backstop
