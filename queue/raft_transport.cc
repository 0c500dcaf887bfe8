#include "queue/raft_transport.h"

#include <algorithm>
#include <utility>

#include "queue/queue_client.h"
#include "queue/raft/codec.h"

namespace backstop::queue {

// Owns the outbox and the stream to one peer, and the thread that writes the one to the other.
// Enqueue() and the destructor may be called from any thread; everything else runs on the
// sender's own thread.
class RaftTransport::PeerSender {
 public:
  PeerSender(const RaftTransportOptions& options, Counters& counters, std::string address)
      : options_(options), counters_(counters), address_(std::move(address)) {
    thread_ = std::thread([this] { Run(); });
  }

  ~PeerSender() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      if (active_context_ != nullptr) {
        active_context_->TryCancel();  // unblocks a Write() stuck on a slow or dead peer
      }
    }
    wake_.notify_all();
    thread_.join();
  }

  PeerSender(const PeerSender&) = delete;
  PeerSender& operator=(const PeerSender&) = delete;

  const std::string& address() const { return address_; }

  bool Enqueue(raft::Message message) {
    {
      std::lock_guard lock(mutex_);
      if (outbox_.size() >= options_.max_outbox_messages) {
        return false;
      }
      outbox_.push_back(std::move(message));
    }
    wake_.notify_one();
    return true;
  }

 private:
  // Waits for messages; false when the sender is stopping.
  bool TakeBatch(std::vector<raft::Message>* batch) {
    std::unique_lock lock(mutex_);
    wake_.wait(lock, [this] { return stopping_ || !outbox_.empty(); });
    if (stopping_) {
      return false;
    }
    const size_t count = std::min(outbox_.size(), options_.max_batch_messages);
    batch->assign(std::make_move_iterator(outbox_.begin()),
                  std::make_move_iterator(outbox_.begin() + static_cast<ptrdiff_t>(count)));
    outbox_.erase(outbox_.begin(), outbox_.begin() + static_cast<ptrdiff_t>(count));
    return true;
  }

  // Sleeps unless stopping; false when the sender is stopping.
  bool Backoff(absl::Duration duration) {
    std::unique_lock lock(mutex_);
    return !wake_.wait_for(lock, absl::ToChronoNanoseconds(duration), [this] { return stopping_; });
  }

  // Messages queued while the stream was broken are stale by the time it is back; Raft
  // resends what still matters.
  void DropOutbox() {
    std::lock_guard lock(mutex_);
    counters_.dropped_send_failed += outbox_.size();
    outbox_.clear();
  }

  void Run() {
    const auto credentials =
        options_.credentials ? options_.credentials : grpc::InsecureChannelCredentials();
    const std::shared_ptr<grpc::Channel> channel =
        grpc::CreateCustomChannel(address_, credentials, QueueChannelArguments());
    const std::unique_ptr<raft::wire::RaftPeer::Stub> stub = raft::wire::RaftPeer::NewStub(channel);
    std::unique_ptr<grpc::ClientContext> context;
    std::unique_ptr<grpc::ClientWriter<raft::wire::MessageBatch>> writer;
    raft::wire::SendAck ack;
    absl::Duration backoff = options_.reconnect_backoff_min;

    const auto close_stream = [&] {
      if (writer != nullptr) {
        writer->Finish();
        writer.reset();
      }
      std::lock_guard lock(mutex_);
      active_context_ = nullptr;
      context.reset();
    };

    std::vector<raft::Message> batch;
    while (TakeBatch(&batch)) {
      if (writer == nullptr) {
        std::lock_guard lock(mutex_);
        if (stopping_) {
          break;
        }
        context = std::make_unique<grpc::ClientContext>();
        active_context_ = context.get();
        writer = stub->Send(context.get(), &ack);
      }
      raft::wire::MessageBatch wire_batch;
      for (const raft::Message& message : batch) {
        *wire_batch.add_messages() = raft::ToWire(message);
      }
      if (writer->Write(wire_batch)) {
        counters_.sent += batch.size();
        backoff = options_.reconnect_backoff_min;
        continue;
      }
      counters_.dropped_send_failed += batch.size();
      close_stream();
      DropOutbox();
      if (!Backoff(backoff)) {
        break;
      }
      backoff = std::min(backoff * 2, options_.reconnect_backoff_max);
    }
    {
      std::lock_guard lock(mutex_);
      if (context != nullptr) {
        context->TryCancel();  // Finish() must not wait for a peer that may never answer
      }
    }
    close_stream();
  }

  const RaftTransportOptions& options_;
  Counters& counters_;
  const std::string address_;

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<raft::Message> outbox_;               // guarded by mutex_
  bool stopping_ = false;                          // guarded by mutex_
  grpc::ClientContext* active_context_ = nullptr;  // guarded by mutex_
  std::thread thread_;
};

// The receiving side: decodes every message of every incoming stream into the inbox.
class RaftTransport::PeerService final : public raft::wire::RaftPeer::Service {
 public:
  PeerService(raft::NodeId self, Counters& counters, Inbox inbox)
      : self_(self), counters_(counters), inbox_(std::move(inbox)) {}

  grpc::Status Send(grpc::ServerContext* /*context*/,
                    grpc::ServerReader<raft::wire::MessageBatch>* reader,
                    raft::wire::SendAck* /*ack*/) override {
    raft::wire::MessageBatch batch;
    while (reader->Read(&batch)) {
      for (const raft::wire::Message& wire_message : batch.messages()) {
        absl::StatusOr<raft::Message> message = raft::FromWire(wire_message);
        if (!message.ok()) {
          ++counters_.dropped_undecodable;
        } else if (message->to != self_) {
          ++counters_.dropped_misaddressed;
        } else {
          ++counters_.received;
          inbox_(*std::move(message));
        }
      }
    }
    return grpc::Status::OK;
  }

 private:
  const raft::NodeId self_;
  Counters& counters_;
  const Inbox inbox_;
};

RaftTransport::RaftTransport(const RaftTransportOptions& options, Inbox inbox)
    : options_(options),
      service_(std::make_unique<PeerService>(options.self, counters_, std::move(inbox))) {}

RaftTransport::~RaftTransport() {
  std::map<raft::NodeId, std::unique_ptr<PeerSender>> peers;
  {
    std::lock_guard lock(peers_mutex_);
    peers.swap(peers_);
  }
  peers.clear();  // joins the sender threads outside the lock
}

grpc::Service* RaftTransport::service() {
  return service_.get();
}

void RaftTransport::SetPeer(raft::NodeId id, const std::string& address) {
  std::unique_ptr<PeerSender> replaced;
  {
    std::lock_guard lock(peers_mutex_);
    std::unique_ptr<PeerSender>& sender = peers_[id];
    if (sender != nullptr && sender->address() == address) {
      return;
    }
    replaced = std::move(sender);
    sender = std::make_unique<PeerSender>(options_, counters_, address);
  }
}

void RaftTransport::RemovePeer(raft::NodeId id) {
  std::unique_ptr<PeerSender> removed;
  std::lock_guard lock(peers_mutex_);
  if (auto it = peers_.find(id); it != peers_.end()) {
    removed = std::move(it->second);
    peers_.erase(it);
  }
}

void RaftTransport::Send(std::vector<raft::Message> messages) {
  std::lock_guard lock(peers_mutex_);
  for (raft::Message& message : messages) {
    auto it = peers_.find(message.to);
    if (it == peers_.end()) {
      ++counters_.dropped_unknown_peer;
    } else if (!it->second->Enqueue(std::move(message))) {
      ++counters_.dropped_outbox_full;
    }
  }
}

RaftTransportStats RaftTransport::stats() const {
  return RaftTransportStats{
      .sent = counters_.sent.load(),
      .dropped_outbox_full = counters_.dropped_outbox_full.load(),
      .dropped_send_failed = counters_.dropped_send_failed.load(),
      .dropped_unknown_peer = counters_.dropped_unknown_peer.load(),
      .received = counters_.received.load(),
      .dropped_misaddressed = counters_.dropped_misaddressed.load(),
      .dropped_undecodable = counters_.dropped_undecodable.load(),
  };
}

}  // namespace backstop::queue
