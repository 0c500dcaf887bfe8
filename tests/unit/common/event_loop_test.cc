#include "common/event_loop.h"

#include <fcntl.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <future>
#include <memory>
#include <random>
#include <string>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "common/socket.h"
#include "gtest/gtest.h"

namespace backstop {
namespace {

constexpr auto kWaitLimit = std::chrono::seconds(20);

std::unique_ptr<EventLoop> NewLoop(const EventLoopOptions& options = {}) {
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create(options);
  EXPECT_TRUE(loop.ok()) << loop.status();
  return loop.ok() ? std::move(*loop) : nullptr;
}

std::string RandomBytes(size_t size, uint32_t seed) {
  std::mt19937 random(seed);
  std::string bytes(size, '\0');
  for (char& c : bytes) {
    c = static_cast<char>(random());
  }
  return bytes;
}

bool WriteAll(int fd, const std::string& bytes) {
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = write(fd, bytes.data() + done, bytes.size() - done);
    if (n <= 0) {
      return false;
    }
    done += static_cast<size_t>(n);
  }
  return true;
}

// Reads until `size` bytes arrived or EOF, `piece` bytes per read() at most.
std::string ReadUpTo(int fd, size_t size, size_t piece) {
  std::string bytes;
  std::vector<char> buffer(piece);
  while (bytes.size() < size) {
    const ssize_t n = read(fd, buffer.data(), std::min(piece, size - bytes.size()));
    if (n <= 0) {
      break;
    }
    bytes.append(buffer.data(), static_cast<size_t>(n));
  }
  return bytes;
}

struct Listener {
  UniqueFd fd;
  SocketAddress address;
};

Listener ListenOnLoopback() {
  absl::StatusOr<UniqueFd> fd = Listen(*SocketAddress::Parse("127.0.0.1:0"));
  EXPECT_TRUE(fd.ok()) << fd.status();
  absl::StatusOr<SocketAddress> address = SocketAddress::LocalOf(fd->get());
  EXPECT_TRUE(address.ok()) << address.status();
  return Listener{std::move(*fd), *address};
}

UniqueFd ConnectBlocking(const SocketAddress& address) {
  absl::StatusOr<UniqueFd> fd = Connect(address, Blocking::kYes);
  EXPECT_TRUE(fd.ok()) << fd.status();
  return fd.ok() ? std::move(*fd) : UniqueFd();
}

enum class FdPairKind { kSocketPair, kPipe };

// Two connected (blocking) descriptors: ours first, the peer's (or the pipe's write end)
// second.
std::pair<UniqueFd, UniqueFd> NewFdPair(FdPairKind kind) {
  int fds[2] = {-1, -1};
  const int rc = kind == FdPairKind::kSocketPair
                     ? socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds)
                     : pipe2(fds, O_CLOEXEC);
  EXPECT_EQ(rc, 0) << std::strerror(errno);
  return {UniqueFd(fds[0]), UniqueFd(fds[1])};
}

enum class SendMode { kSend, kSendMsg };

struct EchoOptions {
  SendMode send_mode = SendMode::kSend;
  // SO_SNDBUF of accepted sockets; small values force partial sends.
  int send_buffer = 0;
};

// Echoes every byte back on each accepted connection, closing after the peer's EOF once
// everything is sent. Lives on the loop thread; the callbacks report to the test thread.
class EchoServer {
 public:
  EchoServer(EventLoop& loop, int listen_fd, EchoOptions options)
      : loop_(loop),
        listen_fd_(listen_fd),
        options_(options),
        accept_op_([this](const Completion& c) { OnAccept(c); }) {}

  // Loop thread (or the creating thread before Run()).
  void Start() { loop_.Accept(accept_op_, listen_fd_); }

  // Called on the loop thread with the result that ended a connection (0 = clean EOF).
  std::function<void(int)> on_close;
  std::atomic<int> accepted{0};
  int accept_final_result = 1;  // loop thread; 1 = no final completion yet

 private:
  class Connection {
   public:
    Connection(EchoServer& server, int fd)
        : server_(server),
          fd_(fd),
          recv_op_([this](const Completion& c) { OnRecv(c); }),
          send_op_([this](const Completion& c) { OnSent(c); }) {}
    ~Connection() { close(fd_); }

    void Start() { server_.loop_.Recv(recv_op_, fd_); }

   private:
    void OnRecv(const Completion& c) {
      if (c.result <= 0) {
        end_result_ = c.result;
        peer_done_ = true;
        if (c.result < 0) {
          server_.loop_.Cancel(send_op_);
        }
        MaybeFinish();
        return;
      }
      pending_.append(c.data.data(), c.data.size());
      MaybeSend();
      if (!server_.loop_.stopping()) {
        server_.loop_.Recv(recv_op_, fd_);
      }
    }

    void OnSent(const Completion& c) {
      if (c.result < 0) {
        end_result_ = c.result;
        peer_done_ = true;
        server_.loop_.Cancel(recv_op_);
        MaybeFinish();
        return;
      }
      if (static_cast<size_t>(c.result) != sending_.size()) {
        ADD_FAILURE() << "send completed with " << c.result << " of " << sending_.size();
      }
      sending_.clear();
      MaybeSend();
      MaybeFinish();
    }

    void MaybeSend() {
      if (send_op_.in_flight() || pending_.empty() || server_.loop_.stopping()) {
        return;
      }
      sending_.swap(pending_);
      if (server_.options_.send_mode == SendMode::kSend) {
        server_.loop_.Send(send_op_, fd_, sending_);
        return;
      }
      // Split into uneven pieces so that partial sends land inside and between iovecs.
      const size_t cut1 = sending_.size() / 3;
      const size_t cut2 = sending_.size() / 2;
      iov_[0] = {sending_.data(), cut1};
      iov_[1] = {sending_.data() + cut1, 0};
      iov_[2] = {sending_.data() + cut1, cut2 - cut1};
      iov_[3] = {sending_.data() + cut2, sending_.size() - cut2};
      msg_ = msghdr{};
      msg_.msg_iov = iov_;
      msg_.msg_iovlen = 4;
      server_.loop_.SendMsg(send_op_, fd_, &msg_);
    }

    // Destroys the connection (and so the operation whose handler is running) once the peer
    // is done and nothing is in flight.
    void MaybeFinish() {
      if (!peer_done_ || recv_op_.in_flight() || send_op_.in_flight()) {
        return;
      }
      if (!pending_.empty() && end_result_ == 0 && !server_.loop_.stopping()) {
        MaybeSend();
        return;
      }
      EchoServer& server = server_;
      const int result = end_result_;
      server.connections_.erase(this);
      if (server.on_close) {
        server.on_close(result);
      }
    }

    EchoServer& server_;
    const int fd_;
    Operation recv_op_;
    Operation send_op_;
    std::string pending_;  // received, not yet handed to the kernel
    std::string sending_;  // owned by the kernel until send_op_ completes
    iovec iov_[4];
    msghdr msg_{};
    bool peer_done_ = false;
    int end_result_ = 0;
  };

  void OnAccept(const Completion& c) {
    if (c.result >= 0) {
      accepted.fetch_add(1);
      if (options_.send_buffer > 0) {
        setsockopt(c.result, SOL_SOCKET, SO_SNDBUF, &options_.send_buffer,
                   sizeof(options_.send_buffer));
        const int one = 1;
        setsockopt(c.result, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
      }
      auto connection = std::make_unique<Connection>(*this, c.result);
      Connection* raw = connection.get();
      connections_.emplace(raw, std::move(connection));
      raw->Start();
    }
    if (!c.more) {
      accept_final_result = c.result;
      if (!loop_.stopping()) {
        loop_.Accept(accept_op_, listen_fd_);
      }
    }
  }

  EventLoop& loop_;
  const int listen_fd_;
  const EchoOptions options_;
  Operation accept_op_;
  std::unordered_map<Connection*, std::unique_ptr<Connection>> connections_;
};

// Runs a loop on its own thread for the duration of a test.
class LoopThread {
 public:
  explicit LoopThread(EventLoop& loop) : loop_(loop), thread_([this] { loop_.Run(); }) {}
  ~LoopThread() { StopAndJoin(); }
  void StopAndJoin() {
    if (thread_.joinable()) {
      loop_.Stop();
      thread_.join();
    }
  }

 private:
  EventLoop& loop_;
  std::thread thread_;
};

TEST(EventLoopTest, EchoesFiveHundredConcurrentConnections) {
  // Fewer provided buffers than connections: receives that find none must be retried.
  EventLoopOptions options;
  options.buffer_count = 64;
  options.buffer_size = 4096;
  std::unique_ptr<EventLoop> loop = NewLoop(options);
  ASSERT_NE(loop, nullptr);
  Listener listener = ListenOnLoopback();
  EchoServer server(*loop, listener.fd.get(), {});
  server.Start();
  LoopThread loop_thread(*loop);

  constexpr int kThreads = 4;
  constexpr int kConnectionsPerThread = 125;
  std::atomic<int> intact{0};
  std::vector<std::thread> clients;
  for (int t = 0; t < kThreads; ++t) {
    clients.emplace_back([&, t] {
      std::vector<UniqueFd> sockets;
      std::vector<std::string> payloads;
      for (int i = 0; i < kConnectionsPerThread; ++i) {
        sockets.push_back(ConnectBlocking(listener.address));
        payloads.push_back(RandomBytes(3000 + 7 * i, t * 1000 + i));
      }
      // Every connection is open and has data in flight before any echo is read.
      for (int i = 0; i < kConnectionsPerThread; ++i) {
        EXPECT_TRUE(WriteAll(sockets[i].get(), payloads[i]));
      }
      for (int i = 0; i < kConnectionsPerThread; ++i) {
        if (ReadUpTo(sockets[i].get(), payloads[i].size(), 1 << 16) == payloads[i]) {
          intact.fetch_add(1);
        }
      }
    });
  }
  for (std::thread& client : clients) {
    client.join();
  }
  EXPECT_EQ(intact.load(), kThreads * kConnectionsPerThread);
  EXPECT_EQ(server.accepted.load(), kThreads * kConnectionsPerThread);
}

void ExpectLargePayloadEchoedExactly(SendMode send_mode) {
  EventLoopOptions options;
  options.buffer_count = 16;
  options.buffer_size = 64 * 1024;
  std::unique_ptr<EventLoop> loop = NewLoop(options);
  ASSERT_NE(loop, nullptr);
  Listener listener = ListenOnLoopback();
  EchoServer server(*loop, listener.fd.get(), {.send_mode = send_mode, .send_buffer = 256 * 1024});
  server.Start();
  LoopThread loop_thread(*loop);

  absl::StatusOr<UniqueFd> client = Connect(listener.address, Blocking::kYes);
  ASSERT_TRUE(client.ok()) << client.status();
  const std::string payload = RandomBytes(6 << 20, 42);
  std::thread writer([&] {
    EXPECT_TRUE(WriteAll(client->get(), payload));
    shutdown(client->get(), SHUT_WR);
  });
  // Small reads keep the server's socket full, so its sends complete only partly.
  const std::string echoed = ReadUpTo(client->get(), payload.size() + 1, 1000);
  writer.join();
  ASSERT_EQ(echoed.size(), payload.size());
  EXPECT_TRUE(echoed == payload) << "echoed bytes differ";
}

TEST(EventLoopTest, SendResendsTheRestAfterPartialSends) {
  ExpectLargePayloadEchoedExactly(SendMode::kSend);
}

TEST(EventLoopTest, SendMsgResendsTheRestAfterPartialSends) {
  ExpectLargePayloadEchoedExactly(SendMode::kSendMsg);
}

TEST(EventLoopTest, PeerResetEndsOnlyThatConnection) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  Listener listener = ListenOnLoopback();
  EchoServer server(*loop, listener.fd.get(), {});
  // The first connection to end is the reset one; the others end when the loop stops.
  std::promise<int> closed;
  bool first_close = true;
  server.on_close = [&](int result) {
    if (std::exchange(first_close, false)) {
      closed.set_value(result);
    }
  };
  server.Start();
  LoopThread loop_thread(*loop);

  UniqueFd survivor = ConnectBlocking(listener.address);
  UniqueFd resetter = ConnectBlocking(listener.address);
  ASSERT_TRUE(WriteAll(resetter.get(), "ping"));
  ASSERT_EQ(ReadUpTo(resetter.get(), 4, 4), "ping");
  const linger abort_on_close{.l_onoff = 1, .l_linger = 0};
  ASSERT_EQ(
      setsockopt(resetter.get(), SOL_SOCKET, SO_LINGER, &abort_on_close, sizeof(abort_on_close)),
      0);
  resetter.Reset();  // sends RST

  std::future<int> closed_result = closed.get_future();
  ASSERT_EQ(closed_result.wait_for(kWaitLimit), std::future_status::ready);
  const int result = closed_result.get();
  EXPECT_TRUE(result == -ECONNRESET || result == 0) << result;

  const std::string payload = RandomBytes(10000, 7);
  ASSERT_TRUE(WriteAll(survivor.get(), payload));
  EXPECT_TRUE(ReadUpTo(survivor.get(), payload.size(), 4096) == payload);
  UniqueFd newcomer = ConnectBlocking(listener.address);
  ASSERT_TRUE(WriteAll(newcomer.get(), "still serving"));
  EXPECT_EQ(ReadUpTo(newcomer.get(), 13, 13), "still serving");
}

TEST(EventLoopTest, AfterHandOffTheCreatorsTasksRunOnTheLoopThread) {
  std::unique_ptr<EventLoop> loop = *EventLoop::Create();
  LoopExecutor executor(loop.get());
  loop->HandOff();
  EXPECT_FALSE(loop->IsLoopThread());
  std::atomic<bool> ran{false};
  std::thread::id ran_on;
  executor.Run([&] {
    ran_on = std::this_thread::get_id();
    ran = true;
    loop->Stop();
  });
  EXPECT_FALSE(ran) << "ran inline on the creating thread";
  std::thread runner([&] { loop->Run(); });
  const std::thread::id runner_id = runner.get_id();
  runner.join();
  EXPECT_TRUE(ran);
  EXPECT_EQ(ran_on, runner_id);
}

TEST(EventLoopTest, TimersFireInDeadlineOrder) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  std::vector<int> fired;
  std::vector<int> results;
  auto record = [&](int id) {
    return [&, id](const Completion& c) {
      fired.push_back(id);
      results.push_back(c.result);
      if (id == 30) {
        loop->Stop();
      }
    };
  };
  Operation t30(record(30));
  Operation t10(record(10));
  Operation t20(record(20));
  Operation t0(record(0));
  loop->StartTimer(t30, absl::Milliseconds(30));
  loop->StartTimer(t10, absl::Milliseconds(10));
  loop->StartTimer(t20, absl::Milliseconds(20));
  loop->StartTimer(t0, absl::ZeroDuration());
  loop->Run();
  EXPECT_EQ(fired, (std::vector<int>{0, 10, 20, 30}));
  EXPECT_EQ(results, (std::vector<int>{0, 0, 0, 0}));
}

TEST(EventLoopTest, CancelledTimerDeliversCancelledInsteadOfFiring) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  std::vector<int> cancelled_results;
  Operation cancelled([&](const Completion& c) { cancelled_results.push_back(c.result); });
  Operation later([&](const Completion&) { loop->Stop(); });
  loop->StartTimer(cancelled, absl::Milliseconds(5));
  loop->StartTimer(later, absl::Milliseconds(40));
  loop->Cancel(cancelled);
  loop->Run();
  EXPECT_EQ(cancelled_results, (std::vector<int>{-ECANCELED}));
}

TEST(EventLoopTest, TimerWorksAsADeadlineThatActivityCancels) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  auto [ours, theirs] = NewFdPair(FdPairKind::kSocketPair);
  int deadline_result = 1;
  std::string received;
  Operation deadline([&](const Completion& c) {
    deadline_result = c.result;
    loop->Stop();
  });
  Operation recv([&](const Completion& c) {
    received.assign(c.data.data(), c.data.size());
    loop->Cancel(deadline);
  });
  loop->StartTimer(deadline, absl::Hours(1));
  loop->Recv(recv, ours.get());
  ASSERT_TRUE(WriteAll(theirs.get(), "HELO"));
  loop->Run();
  EXPECT_EQ(received, "HELO");
  EXPECT_EQ(deadline_result, -ECANCELED);
}

TEST(EventLoopTest, CancelledRecvCompletesWithCancelledAndCanBeRearmed) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  auto [ours, theirs] = NewFdPair(FdPairKind::kSocketPair);
  std::vector<int> results;
  std::string received;
  Operation recv([&](const Completion& c) {
    results.push_back(c.result);
    if (c.result == -ECANCELED) {
      EXPECT_TRUE(WriteAll(theirs.get(), "again"));
      loop->Recv(recv, ours.get());
      return;
    }
    received.assign(c.data.data(), c.data.size());
    loop->Stop();
  });
  loop->Recv(recv, ours.get());
  loop->Cancel(recv);
  loop->Run();
  EXPECT_EQ(results, (std::vector<int>{-ECANCELED, 5}));
  EXPECT_EQ(received, "again");
}

TEST(EventLoopTest, PollReportsReadiness) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  auto [read_end, write_end] = NewFdPair(FdPairKind::kPipe);
  int revents = 0;
  Operation poll_op([&](const Completion& c) {
    revents = c.result;
    loop->Stop();
  });
  loop->PollAdd(poll_op, read_end.get(), POLLIN);
  std::thread writer([&] { EXPECT_EQ(write(write_end.get(), "x", 1), 1); });
  loop->Run();
  writer.join();
  EXPECT_TRUE(revents & POLLIN) << revents;
}

TEST(EventLoopTest, PostedTasksRunExactlyOnceOnTheLoopThread) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  constexpr int kPosters = 8;
  constexpr int kTasksEach = 4000;
  constexpr int kTotal = kPosters * kTasksEach;
  std::vector<int> runs(kTotal, 0);  // touched on the loop thread only
  int run_count = 0;
  int off_thread = 0;
  LoopThread loop_thread(*loop);
  std::vector<std::thread> posters;
  for (int p = 0; p < kPosters; ++p) {
    posters.emplace_back([&, p] {
      for (int i = 0; i < kTasksEach; ++i) {
        const int id = p * kTasksEach + i;
        loop->Post([&, id] {
          off_thread += loop->IsLoopThread() ? 0 : 1;
          ++runs[id];
          if (++run_count == kTotal) {
            loop->Stop();
          }
        });
      }
    });
  }
  for (std::thread& poster : posters) {
    poster.join();
  }
  loop_thread.StopAndJoin();
  EXPECT_EQ(run_count, kTotal);
  EXPECT_EQ(off_thread, 0);
  EXPECT_EQ(std::count(runs.begin(), runs.end(), 1), kTotal);
}

TEST(EventLoopTest, StopCancelsEverythingInFlightAndReapsItBeforeRunReturns) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  Listener listener = ListenOnLoopback();
  constexpr int kConnections = 20;
  constexpr int kTimers = 10;

  // Final completions, counted by kind; written on the loop thread, read after Run().
  std::vector<int> recv_results;
  std::vector<int> timer_results;
  std::vector<int> accept_final;
  std::vector<int> poll_results;
  int handler_calls = 0;

  std::vector<UniqueFd> accepted;
  std::vector<std::unique_ptr<Operation>> recvs;
  std::promise<void> all_accepted;
  Operation accept_op([&](const Completion& c) {
    ++handler_calls;
    if (c.result >= 0) {
      accepted.emplace_back(c.result);
      recvs.push_back(std::make_unique<Operation>([&](const Completion& rc) {
        ++handler_calls;
        recv_results.push_back(rc.result);
      }));
      loop->Recv(*recvs.back(), c.result);
      if (accepted.size() == kConnections) {
        all_accepted.set_value();
      }
    }
    if (!c.more) {
      accept_final.push_back(c.result);
    }
  });
  std::vector<std::unique_ptr<Operation>> timers;
  for (int i = 0; i < kTimers; ++i) {
    timers.push_back(std::make_unique<Operation>([&, i](const Completion& c) {
      ++handler_calls;
      timer_results.push_back(c.result);
      // Arming during shutdown is answered by the loop itself, without reaching the kernel.
      if (timer_results.size() == 1) {
        loop->StartTimer(*timers[i], absl::Hours(1));
      }
    }));
    loop->StartTimer(*timers.back(), absl::Hours(1));
  }
  auto [read_end, write_end] = NewFdPair(FdPairKind::kPipe);
  Operation poll_op([&](const Completion& c) {
    ++handler_calls;
    poll_results.push_back(c.result);
  });
  loop->PollAdd(poll_op, read_end.get(), POLLIN);
  loop->Accept(accept_op, listener.fd.get());

  std::thread runner([&] { loop->Run(); });
  std::vector<UniqueFd> clients;
  for (int i = 0; i < kConnections; ++i) {
    clients.push_back(ConnectBlocking(listener.address));
  }
  ASSERT_EQ(all_accepted.get_future().wait_for(kWaitLimit), std::future_status::ready);
  loop->Stop();
  runner.join();

  const int calls_at_return = handler_calls;
  EXPECT_EQ(recv_results, std::vector<int>(kConnections, -ECANCELED));
  // Ten armed timers plus the one re-armed while stopping.
  EXPECT_EQ(timer_results, std::vector<int>(kTimers + 1, -ECANCELED));
  EXPECT_EQ(accept_final, std::vector<int>{-ECANCELED});
  EXPECT_EQ(poll_results, std::vector<int>{-ECANCELED});
  EXPECT_FALSE(accept_op.in_flight());
  EXPECT_FALSE(poll_op.in_flight());
  for (const auto& op : recvs) {
    EXPECT_FALSE(op->in_flight());
  }
  for (const auto& op : timers) {
    EXPECT_FALSE(op->in_flight());
  }
  // Nothing stays queued that could fire later, not even when the loop is destroyed.
  loop.reset();
  EXPECT_EQ(handler_calls, calls_at_return);
}

TEST(EventLoopTest, StopBeforeRunMakesRunReturnAtOnce) {
  std::unique_ptr<EventLoop> loop = NewLoop();
  ASSERT_NE(loop, nullptr);
  bool ran = false;
  loop->Post([&] { ran = true; });
  loop->Stop();
  loop->Run();
  EXPECT_TRUE(ran) << "a task posted before Stop() still runs";
  EXPECT_TRUE(loop->stopping());
}

TEST(EventLoopTest, ReportsAMissingOpcodeByName) {
  EventLoopOptions options;
  options.extra_required_opcodes.push_back({255, "IORING_OP_FROM_THE_FUTURE", "99.1"});
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create(options);
  ASSERT_FALSE(loop.ok());
  EXPECT_EQ(loop.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_EQ(std::string(loop.status().message()),
            "io_uring: kernel does not support IORING_OP_FROM_THE_FUTURE (needs Linux >= 99.1)");
}

TEST(EventLoopTest, ReportsRingCreationFailureWithCause) {
  EventLoopOptions options;
  options.queue_depth = 0;
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create(options);
  ASSERT_FALSE(loop.ok());
  EXPECT_EQ(loop.status().code(), absl::StatusCode::kInvalidArgument);
  const std::string message(loop.status().message());
  EXPECT_NE(message.find("io_uring: cannot create ring: Invalid argument"), std::string::npos)
      << message;
}

TEST(EventLoopTest, RejectsBufferCountThatIsNotAPowerOfTwo) {
  EventLoopOptions options;
  options.buffer_count = 100;
  absl::StatusOr<std::unique_ptr<EventLoop>> loop = EventLoop::Create(options);
  EXPECT_EQ(loop.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(EventLoopDeathTest, AbortsWhenUsedFromAnotherThread) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::unique_ptr<EventLoop> loop = NewLoop();
        Operation timer([](const Completion&) {});
        std::thread([&] { loop->StartTimer(timer, absl::Seconds(1)); }).join();
      },
      "called from a thread other than the loop thread");
}

TEST(EventLoopDeathTest, AbortsWhenAnInFlightOperationIsDestroyed) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        std::unique_ptr<EventLoop> loop = NewLoop();
        auto timer = std::make_unique<Operation>([](const Completion&) {});
        loop->StartTimer(*timer, absl::Seconds(1));
        timer.reset();
      },
      "Operation destroyed while in flight");
}

}  // namespace
}  // namespace backstop
