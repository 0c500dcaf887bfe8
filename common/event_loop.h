#pragma once

// The io_uring event loop: one ring per thread, completions owned by the object that issued
// them (DESIGN §3.3, STYLE "A connection lives on one thread").
//
// An Operation is embedded in the object that issues I/O (a connection embeds one for its
// receive, one for its send, one for its deadline, ...). The SQE's user_data points at the
// Operation, so a completion finds its owner without a lookup and without allocating. The
// owner must keep the Operation alive while it is in flight; destroying an in-flight
// Operation aborts the process (that would be a use-after-free waiting to happen).
//
// Every operation ends with exactly one final completion (Completion::more == false), after
// which it is no longer in flight and may be re-armed, even from inside its own handler.

#include <liburing.h>
#include <sys/socket.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <span>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace backstop {

// What the kernel (or the loop, during shutdown) reported for one completion of an Operation.
struct Completion {
  // >= 0 on success: accepted fd (Accept), bytes received, 0 meaning EOF (Recv), every byte
  // of the request (Send/SendMsg), revents (PollAdd), 0 (timer expired).
  // < 0: -errno. -ECANCELED after Cancel() or when the loop is stopping.
  int result = 0;
  // True when the operation stays armed and more completions will follow (multishot accept).
  bool more = false;
  // Recv only: the received bytes, in a provided buffer that the loop hands back to the
  // kernel when the handler returns. Copy what must outlive the handler.
  std::span<const char> data;
};

// One in-flight io_uring request, embedded in the object that issues it. Not copyable or
// movable (the kernel holds its address). Owned by that object; used on the loop thread only.
class Operation {
 public:
  // Called on the loop thread for every completion. May re-arm this Operation, issue others,
  // or destroy the owner (and so this Operation) when `more` is false. Must not re-arm on
  // -ECANCELED while the loop is stopping (EventLoop::stopping()), or shutdown never ends.
  using Handler = std::function<void(const Completion&)>;

  // The handler is stored once here, so completions do not allocate.
  explicit Operation(Handler handler);
  ~Operation();
  Operation(const Operation&) = delete;
  Operation& operator=(const Operation&) = delete;

  bool in_flight() const { return in_flight_; }

 private:
  friend class EventLoop;
  enum class Kind : uint8_t { kAccept, kRecv, kSend, kSendMsg, kTimer, kPoll };

  Handler handler_;
  Kind kind_ = Kind::kAccept;
  bool in_flight_ = false;
  int fd_ = -1;
  // Send: the caller's bytes and how many the kernel took so far (resends the rest).
  const char* send_data_ = nullptr;
  size_t send_size_ = 0;
  size_t sent_ = 0;
  // SendMsg: the caller's header; its iovecs are advanced in place after a partial send.
  msghdr* msg_ = nullptr;
  uint32_t poll_events_ = 0;
  // The kernel reads the timespec when it consumes the SQE, so it lives with the request.
  __kernel_timespec timeout_{};
  // Loop-local completion queue (re-arm after ENOBUFS, cancellation while stopping).
  Operation* next_local_ = nullptr;
  bool queued_locally_ = false;
  // What the loop delivers when it dequeues the op, or kRetry to submit it again.
  int local_result_ = 0;
};

// An opcode the loop needs and the kernel version that introduced it, for the error message.
struct OpcodeRequirement {
  int opcode;
  const char* name;
  const char* min_kernel;
};

struct EventLoopOptions {
  // Submission queue entries; the completion queue gets four times as many.
  unsigned queue_depth = 1024;
  // Provided receive buffers shared by every Recv on this loop: count (a power of two,
  // <= 32768) and size of each. A Recv that finds none left is retried by the loop.
  unsigned buffer_count = 1024;
  unsigned buffer_size = 16 * 1024;
  // Opcodes to require in addition to the loop's own (for callers that issue more, and tests).
  std::vector<OpcodeRequirement> extra_required_opcodes;
};

// Owns one io_uring, its provided-buffer ring and the eventfd that wakes it for Post()/Stop().
//
// Threading: the loop belongs to the thread that calls Run() (before Run(), to the thread
// that created it, so that one can arm the first operations). Every method except Post(),
// Stop() and stopping() must be called on that thread; a call from another thread aborts.
//
// Sends: Send()/SendMsg() resend the unsent rest after a partial send and complete once with
// the full length (or an error). The caller's bytes/msghdr must stay valid until then.
// Descriptors given to the loop should be blocking (Accept() returns them so): io_uring then
// waits for readiness itself. On an O_NONBLOCK descriptor it completes with -EAGAIN instead,
// which the loop delivers like any other error.
class EventLoop {
 public:
  static absl::StatusOr<std::unique_ptr<EventLoop>> Create(const EventLoopOptions& options = {});
  // Cancels and reaps whatever is still in flight (handlers run with -ECANCELED) and drops
  // tasks that were posted but never run.
  ~EventLoop();
  EventLoop(const EventLoop&) = delete;
  EventLoop& operator=(const EventLoop&) = delete;

  // Dispatches completions and posted tasks until Stop(). Then cancels everything in flight,
  // waits until every operation has delivered its final completion and runs remaining posted
  // tasks, then returns: no handler runs after Run() returns.
  void Run();
  // The creating thread, which sets the loop up, calls it just before starting the thread that
  // calls Run(): until Run() starts, no thread is the loop thread, so a LoopExecutor task from
  // the creator is posted instead of running inline beside the starting loop.
  void HandOff();
  // Any thread. Makes Run() shut down and return; sticky (a later Run() returns at once).
  void Stop();
  // Any thread. Runs `task` on the loop thread, exactly once, if Run() is or will be running.
  void Post(std::function<void()> task);
  // Any thread.
  bool stopping() const { return stop_requested_.load(std::memory_order_acquire); }
  bool IsLoopThread() const;

  // Multishot accept: one completion per accepted connection (result = the new fd, blocking
  // and close-on-exec; the peer address comes from getpeername()).
  void Accept(Operation& op, int listen_fd);
  // Receives into a provided buffer; Completion::data holds the bytes. One shot: re-arm for
  // more, which gives natural back-pressure per connection.
  void Recv(Operation& op, int fd);
  void Send(Operation& op, int fd, std::span<const char> data);
  void SendMsg(Operation& op, int fd, msghdr* msg);
  // One-shot timer (also a per-connection deadline: Cancel() it when the activity happens).
  void StartTimer(Operation& op, absl::Duration after);
  // One-shot readiness poll; result is the revents mask.
  void PollAdd(Operation& op, int fd, uint32_t poll_events);
  // Asks the kernel to cancel `op`. Best effort: the final completion is -ECANCELED, or the
  // operation's own result if it finished first. No-op if `op` is not in flight.
  void Cancel(Operation& op);

 private:
  EventLoop() = default;
  absl::Status Init(const EventLoopOptions& options);
  void CheckLoopThread() const;
  io_uring_sqe* GetSqe();
  void Arm(Operation& op);
  void PrepareSqe(Operation& op, io_uring_sqe* sqe);
  void ArmWakeup();
  void RunPostedTasks();
  void QueueLocally(Operation& op, int result);
  void DispatchLocalCompletions();
  void PublishBuffers();
  void SubmitAndWait(bool may_block);
  void ReapCompletions();
  void Dispatch(Operation& op, int result, uint32_t flags);
  void RecycleBuffer(uint16_t buffer_id);
  void Shutdown();

  io_uring ring_{};
  bool ring_initialized_ = false;
  std::atomic<std::thread::id> loop_thread_;
  std::atomic<bool> stop_requested_{false};
  // Set once Shutdown() has issued its cancel-everything; later requests are cancelled by
  // the loop itself instead of reaching the kernel.
  bool draining_ = false;
  bool shut_down_ = false;
  size_t in_flight_ = 0;

  // Provided buffers: the ring the kernel picks from (mmapped) and the memory behind it.
  io_uring_buf_ring* buffer_ring_ = nullptr;
  bool buffer_ring_registered_ = false;
  size_t buffer_ring_bytes_ = 0;
  std::unique_ptr<char[]> buffers_;
  unsigned buffer_count_ = 0;
  unsigned buffer_size_ = 0;
  unsigned buffers_to_publish_ = 0;

  // Wakeup for Post()/Stop(): an eventfd read kept armed on the ring.
  int wakeup_fd_ = -1;
  uint64_t wakeup_value_ = 0;
  bool wakeup_armed_ = false;

  std::mutex posted_mutex_;
  std::vector<std::function<void()>> posted_;  // guarded by posted_mutex_
  std::vector<std::function<void()>> running_tasks_;

  Operation* local_head_ = nullptr;
  Operation* local_tail_ = nullptr;
};

// A handle through which any thread runs tasks on a loop that may stop, and be destroyed, while
// the handle is still shared (by answer callbacks, DNS lookups, timers of filters). Until
// Close(), a task runs on the loop thread: at once when Run() is called there, else posted.
// After Close() tasks are dropped. The loop's owner calls Close() once Run() has returned.
// Thread-safe.
class LoopExecutor {
 public:
  explicit LoopExecutor(EventLoop* loop) : loop_(loop) {}

  void Run(std::function<void()> task);
  // Runs `task` on the loop thread once `delay` has passed; dropped if the loop stops first.
  void RunAfter(absl::Duration delay, std::function<void()> task);
  bool OnLoopThread() const;
  void Close();

 private:
  mutable std::mutex mutex_;
  EventLoop* loop_;  // guarded by mutex_; null once closed
};

}  // namespace backstop
