#include "queue/raft_transport.h"

#include <algorithm>
#include <shared_mutex>
#include <utility>

#include "common/log.h"
#include "common/status.h"
#include "queue/queue_client.h"
#include "queue/raft/codec.h"

namespace backstop::queue {
namespace {

const log::Logger& Logger() {
  static const log::Logger logger("queue");
  return logger;
}

grpc::Status ToGrpc(const absl::Status& status) {
  const auto code = absl::IsResourceExhausted(status) ? grpc::StatusCode::RESOURCE_EXHAUSTED
                    : absl::IsUnavailable(status)     ? grpc::StatusCode::UNAVAILABLE
                    : absl::IsDataLoss(status)        ? grpc::StatusCode::DATA_LOSS
                    : absl::IsInvalidArgument(status) ? grpc::StatusCode::INVALID_ARGUMENT
                                                      : grpc::StatusCode::FAILED_PRECONDITION;
  return grpc::Status(code, std::string(status.message()));
}

}  // namespace

// Owns the outbox and the stream to one peer, and the thread that writes the one to the other.
// Enqueue() and the destructor may be called from any thread; everything else runs on the
// sender's own thread.
class RaftTransport::PeerSender {
 public:
  PeerSender(const RaftTransportOptions& options, Counters& counters, std::string address)
      : options_(options),
        counters_(counters),
        address_(std::move(address)),
        stub_(raft::wire::RaftPeer::NewStub(grpc::CreateCustomChannel(
            address_,
            options.credentials ? options.credentials : grpc::InsecureChannelCredentials(),
            QueueChannelArguments()))) {
    thread_ = std::thread([this] { Run(); });
  }

  ~PeerSender() {
    {
      std::lock_guard lock(mutex_);
      stopping_ = true;
      if (active_context_ != nullptr) {
        active_context_->TryCancel();  // unblocks a Write() stuck on a slow or dead peer
      }
      if (snapshot_context_ != nullptr) {
        snapshot_context_->TryCancel();
      }
    }
    wake_.notify_all();
    thread_.join();
    if (snapshot_thread_.joinable()) {
      snapshot_thread_.join();
    }
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

  // False when a transfer to this peer is still running (or the sender is stopping).
  bool StartSnapshot(raft::Message message, SnapshotOpener open) {
    std::lock_guard lock(mutex_);
    if (stopping_ || snapshot_running_) {
      return false;
    }
    if (snapshot_thread_.joinable()) {
      snapshot_thread_.join();  // finished: it cleared snapshot_running_ as its last step
    }
    snapshot_running_ = true;
    snapshot_thread_ =
        std::thread([this, message = std::move(message), open = std::move(open)]() mutable {
          const raft::LogIndex index = message.snapshot->meta.index;
          const absl::Status sent = StreamSnapshot(std::move(message), open);
          if (sent.ok()) {
            ++counters_.snapshots_sent;
            Logger().Info("snapshot sent", {{"peer", address_}, {"index", index.value()}});
          } else {
            ++counters_.snapshots_failed;
            Logger().Warn("snapshot transfer failed", {{"peer", address_},
                                                       {"index", index.value()},
                                                       {"error", std::string(sent.message())}});
          }
          std::lock_guard done_lock(mutex_);
          snapshot_running_ = false;
        });
    return true;
  }

 private:
  // The transfer thread: header, file chunks, trailer; then waits for the peer's verdict.
  absl::Status StreamSnapshot(raft::Message message, const SnapshotOpener& open) {
    ASSIGN_OR_RETURN(std::unique_ptr<SnapshotReader> reader, open());
    grpc::ClientContext context;
    {
      std::lock_guard lock(mutex_);
      if (stopping_) {
        return absl::CancelledError("transport stopping");
      }
      snapshot_context_ = &context;
    }
    raft::wire::InstallSnapshotResponse response;
    std::unique_ptr<grpc::ClientWriter<raft::wire::SnapshotChunk>> writer =
        stub_->InstallSnapshot(&context, &response);
    const absl::Status streamed = [&]() -> absl::Status {
      raft::wire::SnapshotChunk chunk;
      *chunk.mutable_message() = raft::ToWire(message);
      for (const SnapshotFile& file : reader->files()) {
        raft::wire::SnapshotFile* wire_file = chunk.add_files();
        wire_file->set_name(file.name);
        wire_file->set_size(file.size);
      }
      if (!writer->Write(chunk)) {
        return absl::UnavailableError("snapshot stream broke");
      }
      StreamDigest digest;
      for (size_t i = 0; i < reader->files().size(); ++i) {
        for (uint64_t offset = 0; offset < reader->files()[i].size;) {
          chunk.Clear();
          ASSIGN_OR_RETURN(std::string data,
                           reader->Read(i, offset, options_.snapshot_chunk_bytes));
          digest.Add(data);
          chunk.set_file(static_cast<uint32_t>(i));
          chunk.set_offset(offset);
          offset += data.size();
          chunk.set_data(std::move(data));
          if (!writer->Write(chunk)) {
            return absl::UnavailableError("snapshot stream broke");
          }
        }
      }
      chunk.Clear();
      chunk.set_last(true);
      chunk.set_digest(digest.value());
      if (!writer->Write(chunk)) {
        return absl::UnavailableError("snapshot stream broke");
      }
      return absl::OkStatus();
    }();
    if (streamed.ok()) {
      writer->WritesDone();
    } else {
      context.TryCancel();
    }
    const grpc::Status finished = writer->Finish();
    {
      std::lock_guard lock(mutex_);
      snapshot_context_ = nullptr;
    }
    RETURN_IF_ERROR(streamed);
    if (!finished.ok()) {
      return absl::UnavailableError("peer refused the snapshot: " + finished.error_message());
    }
    return absl::OkStatus();
  }

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
        writer = stub_->Send(context.get(), &ack);
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
  const std::unique_ptr<raft::wire::RaftPeer::Stub> stub_;  // thread-safe

  std::mutex mutex_;
  std::condition_variable wake_;
  std::deque<raft::Message> outbox_;                 // guarded by mutex_
  bool stopping_ = false;                            // guarded by mutex_
  grpc::ClientContext* active_context_ = nullptr;    // guarded by mutex_
  bool snapshot_running_ = false;                    // guarded by mutex_
  grpc::ClientContext* snapshot_context_ = nullptr;  // guarded by mutex_
  std::thread snapshot_thread_;                      // started and joined under mutex_
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

  grpc::Status InstallSnapshot(grpc::ServerContext* /*context*/,
                               grpc::ServerReader<raft::wire::SnapshotChunk>* reader,
                               raft::wire::InstallSnapshotResponse* /*response*/) override {
    const absl::Status installed = Receive(reader);
    if (!installed.ok()) {
      ++counters_.snapshots_refused;
      Logger().Warn("incoming snapshot refused", {{"error", std::string(installed.message())}});
      return ToGrpc(installed);
    }
    ++counters_.snapshots_received;
    return grpc::Status::OK;
  }

  void SetReceiver(SnapshotReceiver* receiver) {
    std::unique_lock lock(receiver_mutex_);
    receiver_ = receiver;
  }

 private:
  absl::Status Receive(grpc::ServerReader<raft::wire::SnapshotChunk>* reader) {
    raft::wire::SnapshotChunk chunk;
    if (!reader->Read(&chunk) || !chunk.has_message()) {
      return absl::InvalidArgumentError("snapshot stream without its header");
    }
    ASSIGN_OR_RETURN(raft::Message message, raft::FromWire(chunk.message()));
    if (message.type != raft::MessageType::kSnapshot || !message.snapshot.has_value()) {
      return absl::InvalidArgumentError("snapshot stream announces no snapshot");
    }
    if (message.to != self_) {
      ++counters_.dropped_misaddressed;
      return absl::InvalidArgumentError("snapshot addressed to another node");
    }
    std::vector<SnapshotFile> files;
    for (const raft::wire::SnapshotFile& file : chunk.files()) {
      files.push_back(SnapshotFile{file.name(), file.size()});
    }
    std::unique_ptr<SnapshotStaging> staging;
    {
      std::shared_lock lock(receiver_mutex_);
      if (receiver_ == nullptr) {
        return absl::UnavailableError("this node takes no snapshots now");
      }
      ASSIGN_OR_RETURN(staging, receiver_->BeginSnapshot(message, files));
    }
    bool complete = false;
    while (!complete && reader->Read(&chunk)) {
      if (chunk.has_message() || chunk.files_size() > 0) {
        return absl::InvalidArgumentError("snapshot header repeated mid-stream");
      }
      if (!chunk.data().empty()) {
        RETURN_IF_ERROR(staging->Write(chunk.file(), chunk.offset(), chunk.data()));
      }
      if (chunk.last()) {
        RETURN_IF_ERROR(staging->Finish(chunk.digest()));
        complete = true;
      }
    }
    if (!complete) {
      return absl::DataLossError("snapshot stream ended before its last chunk");
    }
    std::shared_lock lock(receiver_mutex_);
    if (receiver_ == nullptr) {
      return absl::UnavailableError("this node takes no snapshots now");
    }
    return receiver_->InstallSnapshot(std::move(message), std::move(staging));
  }

  const raft::NodeId self_;
  Counters& counters_;
  const Inbox inbox_;
  std::shared_mutex receiver_mutex_;
  SnapshotReceiver* receiver_ = nullptr;  // guarded by receiver_mutex_
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

void RaftTransport::SendSnapshot(raft::Message message, SnapshotOpener open) {
  std::lock_guard lock(peers_mutex_);
  auto it = peers_.find(message.to);
  if (it == peers_.end() || !message.snapshot.has_value()) {
    ++counters_.dropped_unknown_peer;
  } else if (!it->second->StartSnapshot(std::move(message), std::move(open))) {
    ++counters_.snapshots_dropped_busy;
  }
}

void RaftTransport::SetSnapshotReceiver(SnapshotReceiver* receiver) {
  service_->SetReceiver(receiver);
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
      .snapshots_sent = counters_.snapshots_sent.load(),
      .snapshots_failed = counters_.snapshots_failed.load(),
      .snapshots_dropped_busy = counters_.snapshots_dropped_busy.load(),
      .snapshots_received = counters_.snapshots_received.load(),
      .snapshots_refused = counters_.snapshots_refused.load(),
  };
}

}  // namespace backstop::queue
