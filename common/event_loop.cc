#include "common/event_loop.h"

#include <sys/eventfd.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <limits>
#include <string>
#include <utility>

#include "common/status.h"

namespace backstop {
namespace {

// user_data values that are not Operation pointers (those are at least 8-aligned).
constexpr uint64_t kIgnoredTag = 0;  // cancel requests: their own result is not interesting
constexpr uint64_t kWakeupTag = 1;

constexpr uint16_t kBufferGroup = 0;
constexpr int kRetry = std::numeric_limits<int>::min();
constexpr unsigned kMaxBufferCount = 32768;  // buffer ids are 16 bits; the kernel caps at 2^15
constexpr unsigned kReapBatch = 64;

// The opcodes every loop issues. Multishot accept, buffer rings and IORING_ASYNC_CANCEL_ANY
// are not opcodes and need Linux 5.19; the buffer ring registration checks that.
constexpr OpcodeRequirement kRequiredOpcodes[] = {
    {IORING_OP_ACCEPT, "IORING_OP_ACCEPT", "5.5"},
    {IORING_OP_RECV, "IORING_OP_RECV", "5.6"},
    {IORING_OP_SEND, "IORING_OP_SEND", "5.6"},
    {IORING_OP_SENDMSG, "IORING_OP_SENDMSG", "5.3"},
    {IORING_OP_TIMEOUT, "IORING_OP_TIMEOUT", "5.4"},
    {IORING_OP_ASYNC_CANCEL, "IORING_OP_ASYNC_CANCEL", "5.5"},
    {IORING_OP_POLL_ADD, "IORING_OP_POLL_ADD", "5.1"},
    {IORING_OP_READ, "IORING_OP_READ", "5.6"},
};

[[noreturn]] void Die(const char* what) {
  std::fprintf(stderr, "FATAL: backstop::EventLoop: %s\n", what);
  std::abort();
}

absl::Status WithHint(const absl::Status& status, const char* hint) {
  return absl::Status(status.code(), std::string(status.message()) + "; " + hint);
}

absl::Status RingCreationError(int error_number) {
  absl::Status status = ErrnoToStatus(error_number, "io_uring: cannot create ring");
  switch (error_number) {
    case EPERM:
      return WithHint(status,
                      "io_uring is disabled for this process (sysctl kernel.io_uring_disabled, "
                      "seccomp or container policy)");
    case ENOMEM:
      return WithHint(status,
                      "not enough lockable memory for the ring (raise RLIMIT_MEMLOCK, see "
                      "`ulimit -l`, or lower the queue depth)");
    case ENOSYS:
      return WithHint(status, "the kernel has no io_uring (needs Linux >= 5.19)");
    case EINVAL:
      return WithHint(status, "the queue depth must be between 1 and 32768");
    default:
      return status;
  }
}

absl::Status CheckOpcodes(io_uring& ring, std::span<const OpcodeRequirement> required) {
  io_uring_probe* probe = io_uring_get_probe_ring(&ring);
  if (probe == nullptr) {
    return absl::UnimplementedError(
        "io_uring: kernel does not support IORING_REGISTER_PROBE (needs Linux >= 5.6)");
  }
  absl::Status status;
  for (const OpcodeRequirement& requirement : required) {
    if (io_uring_opcode_supported(probe, requirement.opcode) == 0) {
      status = absl::UnimplementedError(std::string("io_uring: kernel does not support ") +
                                        requirement.name +
                                        " (needs Linux >= " + requirement.min_kernel + ")");
      break;
    }
  }
  io_uring_free_probe(probe);
  return status;
}

}  // namespace

Operation::Operation(Handler handler) : handler_(std::move(handler)) {}

Operation::~Operation() {
  if (in_flight_) {
    Die("Operation destroyed while in flight (the kernel still holds its address)");
  }
}

absl::StatusOr<std::unique_ptr<EventLoop>> EventLoop::Create(const EventLoopOptions& options) {
  std::unique_ptr<EventLoop> loop(new EventLoop());
  RETURN_IF_ERROR(loop->Init(options));
  return loop;
}

absl::Status EventLoop::Init(const EventLoopOptions& options) {
  loop_thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  if (options.buffer_count == 0 || options.buffer_count > kMaxBufferCount ||
      (options.buffer_count & (options.buffer_count - 1)) != 0) {
    return absl::InvalidArgumentError(
        "event loop: buffer_count must be a power of two between 1 and 32768");
  }
  if (options.buffer_size == 0) {
    return absl::InvalidArgumentError("event loop: buffer_size must not be 0");
  }

  io_uring_params params{};
  params.flags = IORING_SETUP_CQSIZE | IORING_SETUP_SUBMIT_ALL | IORING_SETUP_COOP_TASKRUN;
  params.cq_entries = options.queue_depth * 4;
  int rc = io_uring_queue_init_params(options.queue_depth, &ring_, &params);
  if (rc == -EINVAL && options.queue_depth != 0) {
    // Kernels before 5.19 reject the optional flags; they are optimisations only.
    params = io_uring_params{};
    params.flags = IORING_SETUP_CQSIZE;
    params.cq_entries = options.queue_depth * 4;
    rc = io_uring_queue_init_params(options.queue_depth, &ring_, &params);
  }
  if (rc < 0) {
    return RingCreationError(-rc);
  }
  ring_initialized_ = true;

  RETURN_IF_ERROR(CheckOpcodes(ring_, kRequiredOpcodes));
  RETURN_IF_ERROR(CheckOpcodes(ring_, options.extra_required_opcodes));

  // liburing 2.3 has no io_uring_setup_buf_ring: map the ring memory ourselves.
  buffer_count_ = options.buffer_count;
  buffer_size_ = options.buffer_size;
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  buffer_ring_bytes_ = (buffer_count_ * sizeof(io_uring_buf) + page - 1) / page * page;
  void* ring_memory =
      mmap(nullptr, buffer_ring_bytes_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (ring_memory == MAP_FAILED) {
    return ErrnoToStatus(errno, "event loop: mmap of the provided-buffer ring");
  }
  buffer_ring_ = static_cast<io_uring_buf_ring*>(ring_memory);
  io_uring_buf_reg registration{};
  registration.ring_addr = reinterpret_cast<uintptr_t>(ring_memory);
  registration.ring_entries = buffer_count_;
  registration.bgid = kBufferGroup;
  rc = io_uring_register_buf_ring(&ring_, &registration, 0);
  if (rc == -EINVAL) {
    return absl::UnimplementedError(
        "io_uring: kernel does not support provided buffer rings (IORING_REGISTER_PBUF_RING, "
        "needs Linux >= 5.19)");
  }
  if (rc < 0) {
    return ErrnoToStatus(-rc, "io_uring: io_uring_register_buf_ring");
  }
  buffer_ring_registered_ = true;
  io_uring_buf_ring_init(buffer_ring_);
  buffers_ = std::make_unique<char[]>(static_cast<size_t>(buffer_count_) * buffer_size_);
  for (unsigned id = 0; id < buffer_count_; ++id) {
    RecycleBuffer(static_cast<uint16_t>(id));
  }
  PublishBuffers();

  // Non-blocking, so that io_uring polls it instead of parking an io-wq worker in read().
  wakeup_fd_ = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (wakeup_fd_ < 0) {
    return ErrnoToStatus(errno, "event loop: eventfd");
  }
  return absl::OkStatus();
}

EventLoop::~EventLoop() {
  if (ring_initialized_) {
    if (!shut_down_) {
      loop_thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
      Shutdown();
    }
    if (buffer_ring_registered_) {
      io_uring_unregister_buf_ring(&ring_, kBufferGroup);
    }
    io_uring_queue_exit(&ring_);
  }
  if (buffer_ring_ != nullptr) {
    munmap(buffer_ring_, buffer_ring_bytes_);
  }
  if (wakeup_fd_ >= 0) {
    close(wakeup_fd_);
  }
}

void EventLoop::HandOff() {
  CheckLoopThread();
  loop_thread_.store(std::thread::id(), std::memory_order_relaxed);
}

bool EventLoop::IsLoopThread() const {
  return loop_thread_.load(std::memory_order_relaxed) == std::this_thread::get_id();
}

void EventLoop::CheckLoopThread() const {
  if (!IsLoopThread()) {
    Die("called from a thread other than the loop thread");
  }
}

void EventLoop::Run() {
  loop_thread_.store(std::this_thread::get_id(), std::memory_order_relaxed);
  if (shut_down_) {
    return;
  }
  if (!wakeup_armed_) {
    ArmWakeup();
  }
  while (!stopping()) {
    DispatchLocalCompletions();
    SubmitAndWait(/*may_block=*/local_head_ == nullptr);
    ReapCompletions();
  }
  Shutdown();
}

void EventLoop::Stop() {
  stop_requested_.store(true, std::memory_order_release);
  const uint64_t one = 1;
  // A full counter (2^64 - 2 pending wakeups) would also wake the loop, so EAGAIN is fine.
  [[maybe_unused]] ssize_t written = write(wakeup_fd_, &one, sizeof(one));
}

void EventLoop::Post(std::function<void()> task) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    was_empty = posted_.empty();
    posted_.push_back(std::move(task));
  }
  // Only the first task of a batch needs a wakeup: the loop takes the whole queue at once.
  if (was_empty) {
    const uint64_t one = 1;
    [[maybe_unused]] ssize_t written = write(wakeup_fd_, &one, sizeof(one));
  }
}

void EventLoop::Shutdown() {
  CheckLoopThread();
  draining_ = true;
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
  io_uring_sqe_set_data64(sqe, kIgnoredTag);
  for (;;) {
    RunPostedTasks();
    DispatchLocalCompletions();
    bool tasks_pending;
    {
      std::lock_guard<std::mutex> lock(posted_mutex_);
      tasks_pending = !posted_.empty();
    }
    if (in_flight_ == 0 && !wakeup_armed_ && local_head_ == nullptr && !tasks_pending) {
      break;
    }
    if (local_head_ != nullptr || tasks_pending) {
      SubmitAndWait(/*may_block=*/false);
    } else {
      io_uring_submit(&ring_);
      // A request the kernel was already executing (io-wq) reports -EALREADY to the first
      // cancel and finishes later; asking again now and then covers anything that slipped by.
      __kernel_timespec wait{.tv_sec = 0, .tv_nsec = 50'000'000};
      io_uring_cqe* cqe = nullptr;
      if (io_uring_wait_cqe_timeout(&ring_, &cqe, &wait) == -ETIME) {
        sqe = GetSqe();
        io_uring_prep_cancel64(sqe, 0, IORING_ASYNC_CANCEL_ANY);
        io_uring_sqe_set_data64(sqe, kIgnoredTag);
      }
    }
    ReapCompletions();
  }
  shut_down_ = true;
}

io_uring_sqe* EventLoop::GetSqe() {
  for (;;) {
    io_uring_sqe* sqe = io_uring_get_sqe(&ring_);
    if (sqe != nullptr) {
      return sqe;
    }
    // The submission queue is full: hand it to the kernel to make room.
    PublishBuffers();
    const int rc = io_uring_submit(&ring_);
    if (rc < 0 && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
      Die("io_uring_submit failed while the submission queue was full");
    }
  }
}

void EventLoop::Arm(Operation& op) {
  CheckLoopThread();
  if (op.in_flight_) {
    Die("Operation armed while already in flight");
  }
  op.in_flight_ = true;
  ++in_flight_;
  if (draining_) {
    QueueLocally(op, -ECANCELED);
    return;
  }
  PrepareSqe(op, GetSqe());
}

void EventLoop::PrepareSqe(Operation& op, io_uring_sqe* sqe) {
  switch (op.kind_) {
    case Operation::Kind::kAccept:
      io_uring_prep_multishot_accept(sqe, op.fd_, nullptr, nullptr, SOCK_CLOEXEC);
      break;
    case Operation::Kind::kRecv:
      io_uring_prep_recv(sqe, op.fd_, nullptr, buffer_size_, 0);
      sqe->flags |= IOSQE_BUFFER_SELECT;
      sqe->buf_group = kBufferGroup;
      break;
    case Operation::Kind::kSend:
      io_uring_prep_send(sqe, op.fd_, op.send_data_ + op.sent_, op.send_size_ - op.sent_,
                         MSG_NOSIGNAL);
      break;
    case Operation::Kind::kSendMsg:
      io_uring_prep_sendmsg(sqe, op.fd_, op.msg_, MSG_NOSIGNAL);
      break;
    case Operation::Kind::kTimer:
      io_uring_prep_timeout(sqe, &op.timeout_, 0, 0);
      break;
    case Operation::Kind::kPoll:
      io_uring_prep_poll_add(sqe, op.fd_, op.poll_events_);
      break;
  }
  io_uring_sqe_set_data(sqe, &op);
}

void EventLoop::Accept(Operation& op, int listen_fd) {
  op.kind_ = Operation::Kind::kAccept;
  op.fd_ = listen_fd;
  Arm(op);
}

void EventLoop::Recv(Operation& op, int fd) {
  op.kind_ = Operation::Kind::kRecv;
  op.fd_ = fd;
  Arm(op);
}

void EventLoop::Send(Operation& op, int fd, std::span<const char> data) {
  op.kind_ = Operation::Kind::kSend;
  op.fd_ = fd;
  op.send_data_ = data.data();
  op.send_size_ = data.size();
  op.sent_ = 0;
  Arm(op);
}

void EventLoop::SendMsg(Operation& op, int fd, msghdr* msg) {
  op.kind_ = Operation::Kind::kSendMsg;
  op.fd_ = fd;
  op.msg_ = msg;
  op.send_size_ = 0;
  for (size_t i = 0; i < msg->msg_iovlen; ++i) {
    op.send_size_ += msg->msg_iov[i].iov_len;
  }
  op.sent_ = 0;
  Arm(op);
}

void EventLoop::StartTimer(Operation& op, absl::Duration after) {
  op.kind_ = Operation::Kind::kTimer;
  if (after < absl::ZeroDuration()) {
    after = absl::ZeroDuration();
  }
  const int64_t seconds = absl::IDivDuration(after, absl::Seconds(1), &after);
  op.timeout_.tv_sec = seconds;
  op.timeout_.tv_nsec = absl::ToInt64Nanoseconds(after);
  Arm(op);
}

void EventLoop::PollAdd(Operation& op, int fd, uint32_t poll_events) {
  op.kind_ = Operation::Kind::kPoll;
  op.fd_ = fd;
  op.poll_events_ = poll_events;
  Arm(op);
}

void EventLoop::Cancel(Operation& op) {
  CheckLoopThread();
  if (!op.in_flight_) {
    return;
  }
  if (op.queued_locally_) {
    // Waiting for a retry, not in the kernel: cancel it right here.
    if (op.local_result_ == kRetry) {
      op.local_result_ = -ECANCELED;
    }
    return;
  }
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_cancel(sqe, &op, 0);
  io_uring_sqe_set_data64(sqe, kIgnoredTag);
}

void EventLoop::QueueLocally(Operation& op, int result) {
  op.queued_locally_ = true;
  op.local_result_ = result;
  op.next_local_ = nullptr;
  if (local_tail_ == nullptr) {
    local_head_ = &op;
  } else {
    local_tail_->next_local_ = &op;
  }
  local_tail_ = &op;
}

void EventLoop::DispatchLocalCompletions() {
  // Detach the list first: handlers may queue more, which wait for the next round.
  Operation* op = local_head_;
  local_head_ = nullptr;
  local_tail_ = nullptr;
  while (op != nullptr) {
    Operation* next = op->next_local_;
    op->queued_locally_ = false;
    op->next_local_ = nullptr;
    if (op->local_result_ == kRetry && !draining_) {
      PrepareSqe(*op, GetSqe());
    } else {
      const int result = op->local_result_ == kRetry ? -ECANCELED : op->local_result_;
      op->in_flight_ = false;
      --in_flight_;
      op->handler_(Completion{.result = result, .more = false, .data = {}});
    }
    op = next;
  }
}

void EventLoop::ArmWakeup() {
  io_uring_sqe* sqe = GetSqe();
  io_uring_prep_read(sqe, wakeup_fd_, &wakeup_value_, sizeof(wakeup_value_), 0);
  io_uring_sqe_set_data64(sqe, kWakeupTag);
  wakeup_armed_ = true;
}

void EventLoop::RunPostedTasks() {
  {
    std::lock_guard<std::mutex> lock(posted_mutex_);
    running_tasks_.swap(posted_);
  }
  for (std::function<void()>& task : running_tasks_) {
    task();
  }
  running_tasks_.clear();
}

void EventLoop::SubmitAndWait(bool may_block) {
  PublishBuffers();
  const int rc = may_block ? io_uring_submit_and_wait(&ring_, 1) : io_uring_submit(&ring_);
  // EINTR: a signal; EBUSY/EAGAIN: the completion queue must be drained first.
  if (rc < 0 && rc != -EINTR && rc != -EBUSY && rc != -EAGAIN) {
    Die("io_uring_submit failed");
  }
}

void EventLoop::ReapCompletions() {
  struct Entry {
    uint64_t user_data;
    int result;
    uint32_t flags;
  };
  io_uring_cqe* cqes[kReapBatch];
  Entry batch[kReapBatch];
  for (;;) {
    const unsigned count = io_uring_peek_batch_cqe(&ring_, cqes, kReapBatch);
    if (count == 0) {
      break;
    }
    // Copy and release the CQEs before running handlers, which may submit and reap.
    for (unsigned i = 0; i < count; ++i) {
      batch[i] = Entry{cqes[i]->user_data, cqes[i]->res, cqes[i]->flags};
    }
    io_uring_cq_advance(&ring_, count);
    for (unsigned i = 0; i < count; ++i) {
      const Entry& entry = batch[i];
      if (entry.user_data == kIgnoredTag) {
        continue;
      }
      if (entry.user_data == kWakeupTag) {
        wakeup_armed_ = false;
        RunPostedTasks();
        if (!draining_) {
          ArmWakeup();
        }
        continue;
      }
      Dispatch(*reinterpret_cast<Operation*>(entry.user_data), entry.result, entry.flags);
    }
    PublishBuffers();
  }
}

void EventLoop::Dispatch(Operation& op, int result, uint32_t flags) {
  Completion completion{.result = result, .more = (flags & IORING_CQE_F_MORE) != 0, .data = {}};
  int buffer_id = -1;
  switch (op.kind_) {
    case Operation::Kind::kRecv:
      if ((flags & IORING_CQE_F_BUFFER) != 0) {
        buffer_id = static_cast<int>(flags >> IORING_CQE_BUFFER_SHIFT);
        if (result > 0) {
          completion.data =
              std::span<const char>(buffers_.get() + static_cast<size_t>(buffer_id) * buffer_size_,
                                    static_cast<size_t>(result));
        }
      }
      if (result == -ENOBUFS && !draining_) {
        // Every buffer is handed back once its handler returns, so by the next round some
        // are free again.
        QueueLocally(op, kRetry);
        return;
      }
      break;
    case Operation::Kind::kSend:
    case Operation::Kind::kSendMsg:
      if (result >= 0) {
        op.sent_ += static_cast<size_t>(result);
        if (op.sent_ < op.send_size_) {
          if (result > 0 && !draining_) {
            if (op.kind_ == Operation::Kind::kSendMsg) {
              size_t consumed = static_cast<size_t>(result);
              while (op.msg_->msg_iovlen > 0 && consumed >= op.msg_->msg_iov[0].iov_len) {
                consumed -= op.msg_->msg_iov[0].iov_len;
                ++op.msg_->msg_iov;
                --op.msg_->msg_iovlen;
              }
              if (consumed > 0) {
                op.msg_->msg_iov[0].iov_base =
                    static_cast<char*>(op.msg_->msg_iov[0].iov_base) + consumed;
                op.msg_->msg_iov[0].iov_len -= consumed;
              }
              // Ancillary data went out with the first bytes.
              op.msg_->msg_control = nullptr;
              op.msg_->msg_controllen = 0;
            }
            PrepareSqe(op, GetSqe());
            return;
          }
          completion.result = draining_ ? -ECANCELED : -EPIPE;
        } else {
          completion.result = static_cast<int>(
              std::min<size_t>(op.sent_, static_cast<size_t>(std::numeric_limits<int>::max())));
        }
      }
      break;
    case Operation::Kind::kTimer:
      if (result == -ETIME) {
        completion.result = 0;
      }
      break;
    case Operation::Kind::kAccept:
    case Operation::Kind::kPoll:
      break;
  }
  if (!completion.more) {
    op.in_flight_ = false;
    --in_flight_;
  }
  // The handler may destroy `op` (and its owner): do not touch either afterwards.
  op.handler_(completion);
  if (buffer_id >= 0) {
    RecycleBuffer(static_cast<uint16_t>(buffer_id));
  }
}

void EventLoop::RecycleBuffer(uint16_t buffer_id) {
  io_uring_buf_ring_add(
      buffer_ring_, buffers_.get() + static_cast<size_t>(buffer_id) * buffer_size_, buffer_size_,
      buffer_id, io_uring_buf_ring_mask(buffer_count_), static_cast<int>(buffers_to_publish_));
  ++buffers_to_publish_;
}

void EventLoop::PublishBuffers() {
  if (buffers_to_publish_ > 0) {
    io_uring_buf_ring_advance(buffer_ring_, static_cast<int>(buffers_to_publish_));
    buffers_to_publish_ = 0;
  }
}

// ---------------------------------------------------------------------------------------------
// LoopExecutor

void LoopExecutor::Run(std::function<void()> task) {
  std::unique_lock lock(mutex_);
  if (loop_ == nullptr) {
    return;
  }
  if (loop_->IsLoopThread()) {
    // The loop thread runs only while the loop lives; unlocked because the task may run
    // further tasks through this executor.
    lock.unlock();
    task();
    return;
  }
  // A posted task runs on the loop thread or never, so the loop is alive when it does.
  loop_->Post(std::move(task));
}

void LoopExecutor::RunAfter(absl::Duration delay, std::function<void()> task) {
  EventLoop* loop;
  {
    std::lock_guard lock(mutex_);
    loop = loop_;
  }
  if (loop == nullptr) {
    return;
  }
  Run([loop, delay, task = std::move(task)]() mutable {
    // The timer owns itself: its final completion deletes it, and a stopping loop delivers
    // that as -ECANCELED (the task is then dropped).
    struct Timer {
      explicit Timer(std::function<void()> t)
          : task(std::move(t)), op([this](const Completion& completion) {
              std::unique_ptr<Timer> owned(this);
              if (completion.result != -ECANCELED) {
                owned->task();
              }
            }) {}
      std::function<void()> task;
      Operation op;
    };
    auto* timer = new Timer(std::move(task));
    loop->StartTimer(timer->op, delay);
  });
}

bool LoopExecutor::OnLoopThread() const {
  std::lock_guard lock(mutex_);
  return loop_ != nullptr && loop_->IsLoopThread();
}

void LoopExecutor::Close() {
  std::lock_guard lock(mutex_);
  loop_ = nullptr;
}

}  // namespace backstop
