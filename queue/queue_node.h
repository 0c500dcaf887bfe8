#pragma once

// One queue voter: the Raft node, its RocksDB log, the queue state machine and the transport,
// driven by one thread (the Raft thread). Proposals and incoming messages arrive from gRPC
// threads through a mutex-guarded inbox; the Raft thread ticks, steps, proposes, persists each
// Ready as one write (so concurrent proposals share one fsync: group commit; a Ready that only
// moves the commit index needs none), sends, applies committed entries and answers the
// proposers.
//
// A proposal is answered only after its entry is applied on this node while it is still the
// leader of the term that created the entry (DESIGN §3.1); if leadership changes first, the
// proposer gets Unavailable and retries (commands are idempotent where it matters: Append by
// message id). A storage or state-machine write error is fatal: the node stops serving and the
// process must restart from what is durable (fail-stop; never retry an fsync).
//
// Snapshots and log compaction: every snapshot_entries applied entries, the node checkpoints its
// state machine (SnapshotStore, <data_dir>/snapshots/<index>), records the snapshot in the Raft
// log and compacts the log below it, keeping the last snapshot_keep_entries. A follower the
// leader can no longer reach with entries is sent the checkpoint by the transport
// (InstallSnapshot, off the Raft thread); the receiving node stages it on the gRPC thread, then
// the Raft thread swaps it in for its state machine (SwapInDirectory) before the Raft log records
// the snapshot. A crash between the two is completed on the next start from the metadata staged
// with the files. Membership changes carry the member's address, recorded in the state machine
// (SetMember): every member learns it and keeps it across restarts and snapshots.

#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <functional>
#include <future>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "common/metrics.h"
#include "proto/queue.pb.h"
#include "queue/raft/node.h"
#include "queue/raft_storage.h"
#include "queue/raft_transport.h"
#include "queue/snapshot_store.h"
#include "queue/state_machine.h"

namespace backstop::queue {

struct VoterAddress {
  raft::NodeId id;
  std::string address;  // host:port of its gRPC server
};

// How a node with empty storage starts.
enum class StartMode : uint8_t {
  // A founding voter: bootstraps the configuration from QueueNodeOptions::voters.
  kFoundingMember,
  // A node joining a running cluster: starts with no configuration, never campaigns, and waits
  // for the leader to add it (AddVoter), which sends it the log. `voters` then only gives the
  // addresses of the members it must answer.
  kJoinExisting,
};

// TEST-ONLY: where a node stops as if its process died, to test recovery between two steps.
enum class TestCrash : uint8_t {
  kNone,
  // After swapping a received snapshot in for the state machine, before the Raft log records it.
  kAfterSnapshotSwap,
};

struct QueueNodeOptions {
  raft::NodeId id;
  // The founding configuration, this node included; for kJoinExisting, the members it knows.
  // Either way the addresses the transport starts with.
  std::vector<VoterAddress> voters;
  StartMode start_mode = StartMode::kFoundingMember;  // only matters on a first start
  std::string data_dir;
  absl::Duration tick_interval = absl::Milliseconds(100);
  int election_ticks = 10;  // election timeout: [10, 20) ticks = 1–2 s by default
  int heartbeat_ticks = 1;
  int catch_up_ticks = 600;  // how long AddVoter waits for a learner to catch up: 60 s
  // Applied entries after the last snapshot that trigger the next one (and a log compaction).
  uint64_t snapshot_entries = 10'000;
  // Entries kept below a new snapshot, so that a follower slightly behind gets entries rather
  // than the whole snapshot.
  uint64_t snapshot_keep_entries = 1'000;
  StateMachineOptions state_machine;
  const Clock* clock = &RealClock::Get();
  TestCrash test_crash = TestCrash::kNone;
  // Called once, on the Raft thread, when storage fails; the default logs and aborts, since
  // nothing may be written after a failed fsync.
  std::function<void(const absl::Status&)> on_fatal_error;
};

// The leader's view of another member's log (from its Raft progress tracker).
struct PeerProgress {
  raft::NodeId id;
  std::string address;  // gRPC host:port, "" if unknown
  bool is_learner = false;
  raft::LogIndex match;  // the highest entry known to be in its log
  // When a message from it last arrived here (node clock); InfinitePast = not since start.
  absl::Time last_contact = absl::InfinitePast();
};

struct QueueNodeStatus {
  raft::NodeId id;
  raft::NodeId leader;
  std::string leader_address;  // "" if unknown
  raft::Term term;
  raft::LogIndex commit;
  raft::LogIndex applied;
  raft::LogIndex last_index;  // the last entry of this node's log
  raft::Role role = raft::Role::kFollower;
  bool is_leader = false;
  uint64_t synced_writes = 0;  // fsyncs of the Raft log
  uint64_t entries_persisted = 0;
  raft::ConfState members;  // the configuration in force (latest in the log)
  // Leader only: every other member, voters then learners, by id; empty elsewhere.
  std::vector<PeerProgress> peers;
  // The leader's commit index as far as this node has heard it (a follower learns it from the
  // leader's appends and heartbeats; on the leader, its own).
  raft::LogIndex leader_commit;
  // When a message from the leader last arrived here; on the leader, the time of this status.
  // InfinitePast = none from the current leader.
  absl::Time leader_contact = absl::InfinitePast();

  // Leader: entries of its log that `peer` does not have yet.
  uint64_t LagOf(const PeerProgress& peer) const {
    return last_index > peer.match ? last_index.value() - peer.match.value() : 0;
  }
  // Entries the leader has committed (as far as known) that this node has not applied yet.
  uint64_t Lag() const {
    return leader_commit > applied ? leader_commit.value() - applied.value() : 0;
  }
};

// What is queued, summed over every destination domain (the state machine's summaries).
struct QueueDepth {
  uint64_t messages = 0;
  uint64_t bytes = 0;
  uint64_t held = 0;
  uint64_t leased = 0;
  uint64_t domains = 0;
  uint64_t domains_down = 0;
  absl::Time oldest = absl::InfinitePast();  // the oldest entry's enqueue time; none: past
};

class QueueNode final : public SnapshotReceiver {
 public:
  using Done = std::function<void(absl::StatusOr<CommandResult>)>;
  using StatusDone = std::function<void(absl::Status)>;

  // Opens (or creates) the storage under options.data_dir, on first start bootstraps a founding
  // member (or, for StartMode::kJoinExisting, waits empty to be added), and starts the Raft
  // thread. `transport` must outlive the node.
  static absl::StatusOr<std::unique_ptr<QueueNode>> Start(const QueueNodeOptions& options,
                                                          RaftTransport* transport);
  // Stops the Raft thread; pending proposals get Unavailable.
  ~QueueNode() override;
  QueueNode(const QueueNode&) = delete;
  QueueNode& operator=(const QueueNode&) = delete;

  // Any thread. `done` runs on the Raft thread (keep it short) exactly once.
  void Propose(Command command, Done done);
  // The same for a command already in its wire form (saves re-encoding large appends).
  void ProposeEncoded(std::string encoded_command, Done done);
  // Any thread: a message from a peer (the transport's inbox). A snapshot message that did not
  // come with its files (InstallSnapshot) is dropped.
  void Receive(raft::Message message);

  // SnapshotReceiver, called by the transport on gRPC threads.
  absl::StatusOr<std::unique_ptr<SnapshotStaging>> BeginSnapshot(
      const raft::Message& message, const std::vector<SnapshotFile>& files) override;
  absl::Status InstallSnapshot(raft::Message message,
                               std::unique_ptr<SnapshotStaging> staged) override;

  // Membership and leadership; any thread, `done` runs on the Raft thread exactly once.
  //
  // One membership step; `done` fires once its entry is applied here in the term that proposed
  // it. Adding a learner points this node's transport at `address`; a removal drops the peer
  // from the transport on every node that applies it. The leader cannot remove itself
  // (InvalidArgument): transfer leadership first.
  void ProposeConfChange(raft::ConfChange change, std::string address, StatusDone done);
  // Adds `voter` as a learner, waits until its log has caught up with the commit index, then
  // promotes it (one step at a time, Raft thesis §4.2.1). Fails with DeadlineExceeded when the
  // learner does not catch up within catch_up_ticks (it stays a learner: remove it or retry).
  void AddVoter(VoterAddress voter, StatusDone done);
  // Hands leadership to the voter `to` (none: the voter whose log is furthest along); `done`
  // fires once this node sees `to` lead, or with Unavailable when another node leads or the
  // transfer was abandoned, or FailedPrecondition when this node does not lead or has no one
  // to hand over to.
  void TransferLeadership(raft::NodeId to, StatusDone done);

  // Any thread.
  QueueNodeStatus status() const;
  // Any thread; reads the state machine's domain records (one per destination domain).
  absl::StatusOr<QueueDepth> Depth() const;
  // For /metrics; thread-safe.
  const metrics::Histogram& commit_seconds() const { return commit_seconds_; }
  const metrics::Histogram& fsync_seconds() const { return storage_->fsync_seconds(); }
  RocksDbHealth log_health() const { return storage_->health(); }
  uint64_t proposals_failed() const { return proposals_failed_.load(std::memory_order_relaxed); }
  // Proposed through this node and not answered yet (queued, or waiting for their commit).
  int64_t proposals_in_flight() const {
    return proposals_in_flight_.load(std::memory_order_relaxed);
  }
  // The gRPC address of a member, from the options or an AddVoter on this node; "" if unknown.
  std::string PeerAddress(raft::NodeId id) const;
  // Read-only queries; any thread.
  const QueueStateMachine& state_machine() const { return *state_machine_; }
  // The clock of the node's timestamps (QueueNodeStatus contacts); any thread.
  const Clock& clock() const { return *options_.clock; }

 private:
  struct Proposal {
    std::string payload;
    Done done;
  };
  struct Pending {
    raft::Term term;
    Done done;
  };
  // Work for the Raft thread: `run` is called there and must answer `done` eventually; if the
  // node is stopping or failed, `done` gets the reason instead and `run` never runs.
  struct Task {
    std::function<void(StatusDone done)> run;
    StatusDone done;
  };
  struct CatchUp {
    raft::NodeId id;
    raft::Term term;
    int ticks_left;
    StatusDone done;
  };
  struct Transfer {
    raft::NodeId to;
    int ticks_left;
    StatusDone done;
  };
  // A snapshot received and staged, waiting for the Raft thread.
  struct IncomingSnapshot {
    raft::Message message;
    std::unique_ptr<SnapshotStaging> staged;
    std::shared_ptr<std::promise<absl::Status>> done;
  };

  explicit QueueNode(const QueueNodeOptions& options, RaftTransport* transport);
  void Run();
  void Post(Task task);
  // Raft thread: proposes one membership step and registers `done` for its application.
  // Raft thread, leader only: the voter (not this one) with the highest match index, or none.
  raft::NodeId MostCaughtUpFollower() const;
  void StartConfChange(const raft::ConfChange& change, const std::string& address, StatusDone done);
  // Raft thread: advances the waiting AddVoter promotions and leadership transfers.
  void CheckMembershipWork(bool ticked);
  void ProcessReady();
  // Raft thread: sends messages, snapshots by their own transfers.
  void SendMessages(std::vector<raft::Message> messages);
  // Raft thread: swaps in the staged state machine for a snapshot Raft restored (before the
  // Raft log records it).
  absl::Status InstallReadySnapshot(const raft::SnapshotMeta& meta);
  // Raft thread: answers the staged snapshots stepped in this round.
  void AnswerInstalls();
  // Raft thread: checkpoints the state machine at the applied index `index` into the store.
  absl::Status PublishCheckpoint(raft::LogIndex index);
  // Raft thread: a snapshot at the applied index `index`, then the log compaction below it.
  absl::Status TakeSnapshot(raft::LogIndex index);
  void MaybeTakeSnapshot();
  // Start: the state machine may be ahead of the Raft log's durable commit index, after a crash
  // during a snapshot install (the log does not know the snapshot yet) or after a crash lost the
  // latest unsynced commit index. Records the snapshot, or raises the commit index (buffered,
  // like every commit index) to the applied one.
  absl::Status ReconcileAppliedIndex();
  // Raft thread: applies a committed entry to the state machine. A membership change records
  // the member's address there (SetMember) and updates the transport and PeerAddress.
  absl::StatusOr<CommandResult> ApplyEntry(const raft::Entry& entry);
  // The addresses recorded in the state machine (learned from membership changes, perhaps
  // before a restart or inside a snapshot) into the transport and PeerAddress.
  absl::Status LoadAddressBook();
  void SetAddress(raft::NodeId id, const std::string& address);
  // Raft thread, after stepping `message`: when its sender was last heard, and the commit
  // index the leader sent.
  void NoteContact(const raft::Message& message, absl::Time now);
  // Raft thread, mutex_ held: the status of this round, published for status().
  QueueNodeStatus CurrentStatus(absl::Time now) const;
  void FailPending(const absl::Status& status);
  void Fatal(const absl::Status& status);

  const QueueNodeOptions options_;
  RaftTransport* const transport_;
  std::unique_ptr<Database> database_;
  std::unique_ptr<RocksDbLogStorage> storage_;
  // Proposal → applied on this leader (successful ones), and proposals that failed.
  metrics::Histogram commit_seconds_{metrics::LatencyBounds()};
  std::atomic<uint64_t> proposals_failed_{0};
  std::atomic<int64_t> proposals_in_flight_{0};
  std::unique_ptr<QueueStateMachine> state_machine_;
  std::shared_ptr<SnapshotStore> snapshots_;  // shared with the transport's transfers
  std::unique_ptr<raft::Node> node_;          // Raft thread only
  raft::LogIndex snapshot_index_;             // Raft thread only: the latest snapshot's
  bool snapshot_flush_started_ = false;       // Raft thread only: see MaybeTakeSnapshot
  std::vector<IncomingSnapshot> installing_;  // Raft thread only: stepped, not yet answered

  std::map<uint64_t, Pending> pending_;  // by log index; Raft thread only
  bool failed_ = false;                  // Raft thread only
  uint64_t entries_persisted_ = 0;       // Raft thread only
  std::vector<CatchUp> catching_up_;     // Raft thread only
  std::vector<Transfer> transfers_;      // Raft thread only
  // When the last message from each peer arrived, and the highest commit index the leader
  // sent (QueueNodeStatus::leader_contact, leader_commit); Raft thread only.
  std::map<raft::NodeId, absl::Time> last_contact_;
  raft::LogIndex heard_commit_;

  mutable std::mutex mutex_;
  std::condition_variable wake_;
  std::vector<raft::Message> inbox_;               // guarded by mutex_
  std::vector<Proposal> proposals_;                // guarded by mutex_
  std::vector<Task> tasks_;                        // guarded by mutex_
  std::vector<IncomingSnapshot> incoming_;         // guarded by mutex_
  std::map<raft::NodeId, std::string> addresses_;  // guarded by mutex_
  bool stopping_ = false;                          // guarded by mutex_
  QueueNodeStatus status_;  // guarded by mutex_, published by the Raft thread
  std::thread thread_;
};

}  // namespace backstop::queue
