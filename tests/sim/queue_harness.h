#pragma once

// The queue mode of the Raft simulator: every simulated node applies its committed entries to
// its own QueueStateMachine (RocksDB in a per-run scratch directory), simulated clients drive
// the queue through whichever node the simulator picks (appenders, two or three delivery
// workers, an operator), and a reference model of the queue, fed with the committed command
// sequence, checks every replica.
//
// Checks:
//  - every replica's CommandResult for index i equals that of the first replica that applied i,
//    and at the end of every step in which a replica applied entries, its ContentDigest equals
//    the digest recorded for its applied index by any replica there before (digests are taken
//    per step, not per entry, to keep runs fast; replicas mostly stop at the same indexes);
//  - the model's prediction of each committed command's outcome (appends by id, completions by
//    lease token) matches the first replica's result; no entry is leased while another worker
//    holds an unexpired lease on it, and held entries are never leased;
//  - a proposal is acknowledged only as QueueNode does it (applied on the proposing node while
//    it still leads the term of the entry); an acknowledged append is live in the model, and the
//    model's live entries (ids, hold flags, leases) equal the entries of every replica that has
//    applied as far as the model, so no acknowledged append is ever missing from one;
//  - QueueStateMachine::CheckInvariants every tenth step on every replica that applied anything
//    since its last check (it reads every message body, which dominates the run time).
//
// Crash model: a simulated crash closes the database and restart reopens it. The state
// machine's writes go to the WAL unsynced, which survives a process crash (the OS has the
// bytes) but not a power loss; power loss, where RocksDB recovers a prefix of the batches and
// Raft replays the rest, is not modelled here.
//
// Snapshots are RocksDB checkpoints in the scratch directory, named by the snapshot's data and
// copied into the receiving node's directory on install.
//
// Thread-compatibility: one harness per simulation run, used from the run's thread only.

#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "proto/queue.pb.h"
#include "queue/raft/node.h"
#include "queue/state_machine.h"

namespace backstop::raft::sim {

// TEST-ONLY deliberate bugs in the harness (never in the state machine), to prove the checks
// catch a replica that diverges.
enum class QueueTestFault : uint8_t {
  kNone,
  kSkipOneEntry,  // one replica applies one committed command as an empty entry
};

struct QueueHarnessOptions {
  uint64_t seed = 1;
  std::string dir;  // scratch directory, created on Create and removed by the destructor
  QueueTestFault fault = QueueTestFault::kNone;
};

struct QueueStats {
  uint64_t acked_appends = 0;  // messages whose Append the proposing leader acknowledged
  uint64_t acked_leases = 0;   // entries handed to workers in acknowledged leases
  uint64_t delivered = 0;      // acknowledged Delivered completions
  uint64_t stale_completions = 0;
  uint64_t digest_checks = 0;  // replica digests compared with another replica's
  uint64_t model_checks = 0;   // replicas compared entry by entry with the model
  uint64_t checkpoints = 0;
  uint64_t installs = 0;
};

class QueueHarness {
 public:
  static absl::StatusOr<std::unique_ptr<QueueHarness>> Create(const QueueHarnessOptions& options);
  ~QueueHarness();
  QueueHarness(const QueueHarness&) = delete;
  QueueHarness& operator=(const QueueHarness&) = delete;

  // (Re)opens the node's database and returns its applied index (0 for a new one).
  absl::StatusOr<LogIndex> Open(NodeId id);
  // A crash: closes the database (the WAL keeps what was written) and forgets the node's
  // outstanding proposals, whose clients time out.
  void Close(NodeId id);

  // The clients propose one to three commands through `node` (which may not be the leader).
  void Propose(NodeId id, Node& node, absl::Time now);
  // Commands proposed so far (each gets the next proposal number).
  uint64_t proposals() const { return next_proposal_; }
  // The highest proposal number (see proposals()) seen applied, +1; 0 when none.
  uint64_t applied_proposals() const { return applied_proposals_; }

  // Applies committed entry `e` on node `id`, whose Raft node is `node`.
  void Apply(NodeId id, const Entry& e, const Node& node);

  // Snapshots: a checkpoint of the node's state at its applied index, and its installation.
  absl::StatusOr<std::string> Checkpoint(NodeId id);
  absl::Status Install(NodeId id, const std::string& checkpoint, LogIndex index);

  // End of a simulation step: proposals of nodes that no longer lead fail; replicas are checked.
  // `nodes` holds every node, null while it is down.
  void EndStep(const std::map<NodeId, const Node*>& nodes);

  // Empty while every check holds.
  const std::string& violation() const { return violation_; }
  const QueueStats& stats() const { return stats_; }

 private:
  struct Lease {
    uint64_t token = 0;
    std::string worker;
    int64_t expiry_ms = 0;
  };
  struct ModelEntry {
    std::string domain;
    bool held = false;
    std::optional<Lease> lease;
  };
  struct Held {
    std::string id;
    uint64_t token = 0;
  };
  enum class Kind : uint8_t { kAppend, kLease, kComplete, kOperator };
  struct Pending {
    Term term;
    uint64_t number = 0;  // proposal number
    Kind kind = Kind::kOperator;
    std::vector<uint64_t> messages;  // kAppend
    int worker = 0;                  // kLease, kComplete
    std::vector<Held> items;         // kComplete
  };
  struct Worker {
    std::string name;
    bool lease_in_flight = false;
    bool complete_in_flight = false;
    std::vector<Held> held;
  };
  struct Replica {
    std::unique_ptr<queue::QueueStateMachine> machine;
    std::map<uint64_t, Pending> pending;  // by log index
    bool applied_this_step = false;
    bool invariants_unchecked = false;
    uint64_t model_checked_at = 0;
  };

  explicit QueueHarness(const QueueHarnessOptions& options);

  void Fail(const std::string& what);
  std::string DirOf(NodeId id) const;
  uint64_t Below(uint64_t n);
  static std::string MessageIdOf(uint64_t number);
  std::string DomainOf(uint64_t number) const;

  queue::Command NextCommand(Pending& pending);
  void Acknowledge(const Pending& pending, uint64_t index, const queue::CommandResult& result);
  void Abandon(const Pending& pending);

  // The model: applies committed entry `index` as first seen on a replica, predicting and
  // checking `result`.
  void ModelApply(uint64_t index, absl::Time time, const queue::Command& command,
                  const queue::CommandResult& result);
  void CheckAgainstModel(NodeId id, Replica& replica);
  // Compares the replica's digest with the one recorded for its applied index, or records it.
  void CheckDigest(NodeId id, Replica& replica);

  QueueHarnessOptions options_;
  std::mt19937_64 rng_;
  std::string violation_;
  QueueStats stats_;
  std::map<NodeId, Replica> replicas_;

  // Clients.
  uint64_t next_proposal_ = 0;
  uint64_t applied_proposals_ = 0;
  uint64_t next_message_ = 0;
  std::vector<uint64_t> to_append_;  // unacknowledged messages to (re)propose
  std::set<uint64_t> appending_;     // in a proposal not yet answered
  std::vector<Worker> workers_;
  bool skipped_ = false;              // QueueTestFault::kSkipOneEntry done
  std::set<uint64_t> fresh_appends_;  // indexes of appends that stored a new message
  uint64_t steps_ = 0;

  // The model, as of model_index_.
  uint64_t model_index_ = 0;
  int64_t model_now_ms_ = 0;
  std::map<std::string, ModelEntry> live_;
  std::map<std::string, uint64_t> acked_;  // message id -> index of its acknowledged append
  // Per applied index: the first digest taken there, and the first replica's result hash.
  std::vector<uint64_t> digests_;
  std::vector<uint64_t> result_hashes_;
};

}  // namespace backstop::raft::sim
