#pragma once

// Carries Raft messages between queue voters over gRPC (DESIGN §2: peers talk gRPC).
//
// Sending: one sender thread per peer owns a long-lived client stream (RaftPeer.Send) and a
// bounded outbox. Send() only enqueues, so the Raft thread never blocks on the network. When a
// peer is unreachable or slow the outbox fills and further messages to it are dropped and
// counted: Raft retransmits what matters (appends, heartbeats, votes), so bounded loss is the
// right back-pressure for a consensus transport — a growing queue would only deliver stale
// messages late.
//
// Receiving: the RaftPeer service (register it on the node's gRPC server) decodes each message
// and hands it to the inbox callback on a gRPC thread; messages addressed to another node id are
// dropped and counted.
//
// Snapshots do not travel in a message: SendSnapshot() streams the checkpoint's files in chunks
// over RaftPeer.InstallSnapshot from a thread of its own (one transfer per peer at a time), and
// the receiving side stages them through its SnapshotReceiver, which installs them and steps the
// snapshot message (metadata only) before the call is answered.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include <grpcpp/grpcpp.h>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "proto/raft.grpc.pb.h"
#include "queue/raft/types.h"
#include "queue/snapshot_store.h"

namespace backstop::queue {

struct RaftTransportOptions {
  raft::NodeId self;
  // Credentials for the channels to peers; null = plaintext (loopback and tests only). Shared
  // by every peer channel.
  std::shared_ptr<grpc::ChannelCredentials> credentials;
  // Messages waiting for one peer beyond which new ones to it are dropped.
  size_t max_outbox_messages = 4096;
  // At most this many messages travel in one stream write.
  size_t max_batch_messages = 256;
  absl::Duration reconnect_backoff_min = absl::Milliseconds(20);
  absl::Duration reconnect_backoff_max = absl::Seconds(1);
  // Bytes of snapshot file data per InstallSnapshot chunk.
  size_t snapshot_chunk_bytes = 1 << 20;
};

struct RaftTransportStats {
  uint64_t sent = 0;                  // written to a peer's stream
  uint64_t dropped_outbox_full = 0;   // refused by Send() because the peer's outbox was full
  uint64_t dropped_send_failed = 0;   // lost with a broken stream
  uint64_t dropped_unknown_peer = 0;  // addressed to a node with no address
  uint64_t received = 0;
  uint64_t dropped_misaddressed = 0;  // received, but for another node id
  uint64_t dropped_undecodable = 0;
  uint64_t snapshots_sent = 0;          // streamed and installed (or found unneeded) by the peer
  uint64_t snapshots_failed = 0;        // a transfer that broke or that the peer refused
  uint64_t snapshots_dropped_busy = 0;  // a transfer to that peer was still running
  uint64_t snapshots_received = 0;      // streams accepted and handed to the receiver
  uint64_t snapshots_refused = 0;       // incoming streams refused (bad, truncated, busy)
};

// Where a node's incoming snapshots go (the QueueNode). Called on gRPC threads.
class SnapshotReceiver {
 public:
  virtual ~SnapshotReceiver() = default;
  // A stream announcing the snapshot `message` with these files begins: where to stage it.
  virtual absl::StatusOr<std::unique_ptr<SnapshotStaging>> BeginSnapshot(
      const raft::Message& message, const std::vector<SnapshotFile>& files) = 0;
  // The staged files are complete and durable: install them and step `message`. Returns once
  // that is done (OK too when Raft found the snapshot unneeded); an error = refused.
  virtual absl::Status InstallSnapshot(raft::Message message,
                                       std::unique_ptr<SnapshotStaging> staged) = 0;
};

// Opens the checkpoint to stream; called on the transfer's own thread.
using SnapshotOpener = std::function<absl::StatusOr<std::unique_ptr<SnapshotReader>>()>;

// Thread-safe: Send(), SetPeer(), RemovePeer() and stats() may be called from any thread; the
// inbox runs on gRPC server threads, possibly several at once.
class RaftTransport {
 public:
  using Inbox = std::function<void(raft::Message)>;

  RaftTransport(const RaftTransportOptions& options, Inbox inbox);
  // Stops every sender thread (cancelling streams blocked in a write) and joins them.
  ~RaftTransport();
  RaftTransport(const RaftTransport&) = delete;
  RaftTransport& operator=(const RaftTransport&) = delete;

  // The receiving side, to register on the node's grpc::ServerBuilder. Lives as long as the
  // transport; the server must be shut down before the transport is destroyed.
  grpc::Service* service();

  // Adds a peer or changes its address ("host:port"); a changed address reconnects.
  void SetPeer(raft::NodeId id, const std::string& address);
  void RemovePeer(raft::NodeId id);

  // Queues each message for its destination (message.to). Never blocks on the network.
  void Send(std::vector<raft::Message> messages);
  // Streams the snapshot that `message` (a kSnapshot, metadata only) announces, with the files
  // `open` gives, to message.to. Never blocks: the transfer runs on its own thread, and while
  // one runs to that peer, another is dropped and counted (Raft asks again).
  void SendSnapshot(raft::Message message, SnapshotOpener open);
  // Where incoming snapshots go; null (the default) refuses them. Setting waits for calls into
  // the previous receiver to return.
  void SetSnapshotReceiver(SnapshotReceiver* receiver);

  RaftTransportStats stats() const;

 private:
  class PeerSender;
  class PeerService;

  struct Counters {
    std::atomic<uint64_t> sent{0};
    std::atomic<uint64_t> dropped_outbox_full{0};
    std::atomic<uint64_t> dropped_send_failed{0};
    std::atomic<uint64_t> dropped_unknown_peer{0};
    std::atomic<uint64_t> received{0};
    std::atomic<uint64_t> dropped_misaddressed{0};
    std::atomic<uint64_t> dropped_undecodable{0};
    std::atomic<uint64_t> snapshots_sent{0};
    std::atomic<uint64_t> snapshots_failed{0};
    std::atomic<uint64_t> snapshots_dropped_busy{0};
    std::atomic<uint64_t> snapshots_received{0};
    std::atomic<uint64_t> snapshots_refused{0};
  };

  const RaftTransportOptions options_;
  Counters counters_;
  std::unique_ptr<PeerService> service_;
  mutable std::mutex peers_mutex_;
  std::map<raft::NodeId, std::unique_ptr<PeerSender>> peers_;  // guarded by peers_mutex_
};

}  // namespace backstop::queue
