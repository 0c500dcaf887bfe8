#pragma once

// A Raft node in the style of etcd's RawNode: a pure state machine with no I/O, no threads and
// no clock of its own. The owner feeds it ticks, received messages and proposals, and drains
// the resulting work with GetReady()/Advance().
//
// Processing a Ready, in this order:
//   1. send rd.messages (they are safe to send before anything is persisted);
//   2. persist rd.snapshot (LogStorage::ApplySnapshot, and install it in the state machine),
//      then rd.entries (LogStorage::Append), then rd.hard_state — as one durable write;
//   3. send rd.messages_after_persist;
//   4. apply rd.committed_entries (in order; they carry the cluster time) and serve
//      rd.read_states once applied up to their index;
//   5. call Advance().
// Only one Ready is outstanding at a time: HasReady() is false until Advance().
//
// Which messages wait for persistence (the rule the simulator checks):
//   - before: requests — appends, heartbeats, snapshots, TimeoutNow, vote and pre-vote
//     requests — and heartbeat responses. A leader's appends may race its own write because the
//     leader counts itself towards a quorum only for entries it has persisted (its own match
//     index moves in Advance()); a candidate likewise counts its own vote only once the vote is
//     persisted. A heartbeat response only acknowledges a term.
//   - after: append responses (they claim entries are durable), vote and pre-vote responses (a
//     vote granted and then forgotten in a crash lets the node vote twice in one term).
//
// Thread-compatibility: not thread-safe. One thread (the queue's Raft thread) owns the node and
// its LogStorage and calls everything.

#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "queue/raft/log_storage.h"
#include "queue/raft/progress.h"
#include "queue/raft/raft_log.h"
#include "queue/raft/types.h"

namespace backstop::raft {

enum class Role : uint8_t { kFollower, kPreCandidate, kCandidate, kLeader };

enum class PreVote : uint8_t { kEnabled, kDisabled };
enum class CheckQuorum : uint8_t { kEnabled, kDisabled };
// Whether this node's storage remembers every vote it ever cast under its id. A voter whose
// data directory was wiped and that starts again empty (to rejoin) does not: it may have voted
// in the term the cluster is in, and voting again there could elect a second leader.
enum class PastVotes : uint8_t { kRemembered, kForgotten };

// TEST-ONLY deliberate bugs, so the simulator can prove it catches real consensus bugs. Never
// set outside tests/sim; each flag breaks exactly one rule.
enum class RaftTestFault : uint32_t {
  kNone = 0,
  kGrantVoteWithoutLogCheck = 1 << 0,   // skip §5.4.1's "candidate's log is up to date" check
  kCommitPreviousTermByCount = 1 << 1,  // commit by replica count, ignoring §5.4.2's term check
  kSendVoteBeforePersist = 1 << 2,      // send vote responses before the vote is durable
  kAckAppendBeforePersist = 1 << 3,     // acknowledge appends before the entries are durable
};
constexpr RaftTestFault operator|(RaftTestFault a, RaftTestFault b) {
  return static_cast<RaftTestFault>(static_cast<uint32_t>(a) | static_cast<uint32_t>(b));
}
constexpr bool HasFault(RaftTestFault set, RaftTestFault fault) {
  return (static_cast<uint32_t>(set) & static_cast<uint32_t>(fault)) != 0;
}

struct NodeOptions {
  NodeId id;
  // Election timeout is randomised in [election_ticks, 2 * election_ticks).
  int election_ticks = 10;
  int heartbeat_ticks = 1;
  PreVote pre_vote = PreVote::kEnabled;
  CheckQuorum check_quorum = CheckQuorum::kEnabled;
  // kForgotten: no vote is granted until this node has heard from a leader, nor in any term it
  // heard of until then; from then on its storage remembers its votes again.
  PastVotes past_votes = PastVotes::kRemembered;
  uint64_t max_bytes_per_append = 1 << 20;
  size_t max_inflight_appends = 256;
  uint64_t max_inflight_bytes = 64 << 20;
  uint64_t max_committed_bytes_per_ready = 64 << 20;
  // What the application's state machine already holds on restart (0: rebuilt from the
  // snapshot, so committed entries after it are handed out again).
  LogIndex applied;
  // Seeds the election-timeout randomisation; give every node a different one.
  uint64_t random_seed = 0;
  RaftTestFault test_faults = RaftTestFault::kNone;
};

// Work for the owner; see the processing order at the top of this file.
struct Ready {
  std::optional<HardState> hard_state;  // set when it changed
  std::optional<Snapshot> snapshot;
  std::vector<Entry> entries;
  std::vector<Entry> committed_entries;
  std::vector<Message> messages;
  std::vector<Message> messages_after_persist;
  std::vector<ReadState> read_states;
};

class Node {
 public:
  // Starts (or restarts) a node from what `storage` holds. `storage` must outlive the node.
  static absl::StatusOr<std::unique_ptr<Node>> Create(const NodeOptions& options,
                                                      const LogStorage* storage);

  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Advances logical time by one tick. `now` is the caller's wall clock (never read by the node
  // except to stamp entries it creates as leader).
  void Tick(absl::Time now);
  // Handles a message from a peer. Messages addressed to another node, or from ourselves, or
  // appends whose entries no correct leader sends (not contiguous after `index`, terms out of
  // order) are ignored; stale ones are answered or dropped as Raft prescribes.
  void Step(const Message& message);
  // Leader only: appends entries holding `payloads`, stamped with the cluster time. Returns the
  // index of the last one. FailedPrecondition when not the leader (the message names the known
  // leader), Unavailable during a leadership transfer.
  absl::StatusOr<LogIndex> Propose(const std::vector<std::string>& payloads, absl::Time now);
  // Leader only: one membership step, in force as soon as it is in a log (Raft thesis §4.1);
  // FailedPrecondition while another is pending, before the leader has committed an entry of
  // its own term, or for removing the leader itself (transfer leadership first).
  absl::StatusOr<LogIndex> ProposeConfChange(const ConfChange& change, absl::Time now);
  // Leader only: asks for a linearizable read point; the answer arrives as a ReadState once a
  // quorum confirmed our leadership (and, for a new leader, once an entry of its term is
  // committed). Lost if leadership is lost meanwhile: the caller times out and retries.
  absl::Status ReadIndex(std::string context);
  // Leader only: hands leadership to `to` (a voter) once it is caught up.
  absl::Status TransferLeadership(NodeId to);
  // Starts an election now (as if the election timeout had fired).
  void Campaign();

  bool HasReady() const;
  Ready GetReady();
  // Acknowledges the Ready from the last GetReady(): everything in it is persisted, sent and
  // applied as described at the top of this file.
  void Advance();

  NodeId id() const { return options_.id; }
  Role role() const { return role_; }
  Term term() const { return term_; }
  NodeId leader() const { return leader_; }
  NodeId vote() const { return vote_; }
  LogIndex commit() const { return log_.committed(); }
  LogIndex applied() const { return log_.applied(); }
  LogIndex last_index() const { return log_.LastIndex(); }
  LogIndex first_index() const { return log_.FirstIndex(); }
  std::optional<Term> TermAt(LogIndex index) const { return log_.TermAt(index); }
  // Membership as of the applied index (what a snapshot taken now must record).
  const ConfState& conf_state() const { return applied_conf_; }
  // Membership this node acts on: the latest change in its log, committed or not (Raft thesis
  // §4.1). Elections and commit counting use it.
  ConfState effective_conf_state() const;
  NodeId lead_transferee() const { return lead_transferee_; }
  // Leader only: the follower's progress, for tests and status pages.
  const Progress* ProgressOf(NodeId peer) const;
  // Non-empty after the node saw a state only a safety bug can produce; see RaftLog.
  const std::string& corruption() const { return log_.corruption(); }

 private:
  struct PendingRead {
    std::string context;
    // Names the heartbeat round sent for this read. Ours, not the caller's context: an answer
    // to an earlier round (perhaps for a read with the same context) proves leadership only
    // before this read was asked for.
    std::string round;
    LogIndex index;
    std::set<NodeId> acks;
  };

  Node(const NodeOptions& options, const LogStorage* storage);

  bool Promotable() const;
  // The membership the log's changes apply to: a restored snapshot's, else the applied one.
  const ConfState& BaseConf() const;
  size_t Quorum() const { return voters_.size() / 2 + 1; }
  bool InLease() const;
  void ResetRandomizedTimeout();
  void Reset(Term term);
  void BecomeFollower(Term term, NodeId leader);
  void BecomePreCandidate();
  void BecomeCandidate();
  void BecomeLeader();
  enum class CampaignKind : uint8_t { kPreElection, kElection, kTransfer };
  void StartCampaign(CampaignKind kind);
  // Records a (pre-)vote and acts on the result.
  void Poll(NodeId from, bool granted);
  void TickElection();
  void TickHeartbeat();

  void Send(Message message);
  void HandleVoteRequest(const Message& m);
  void StepLeader(const Message& m);
  void StepCandidate(const Message& m);
  void StepFollower(const Message& m);
  void HandleAppend(const Message& m);
  void HandleHeartbeat(const Message& m);
  void HandleSnapshot(const Message& m);
  void HandleAppendResponse(const Message& m);
  void HandleHeartbeatResponse(const Message& m);

  void AppendAsLeader(std::vector<Entry> entries);
  bool MaybeCommit();
  bool SendAppend(NodeId to, bool send_if_empty);
  bool SendSnapshot(NodeId to, Progress& progress);
  void BroadcastAppend();
  void BroadcastHeartbeat(const std::string& context);
  void SendTimeoutNow(NodeId to);
  bool CommittedInCurrentTerm() const;
  void ReleasePendingReads();
  static void ApplyChangeTo(const ConfChange& change, ConfState& conf);
  // Records the membership changes among `entries` just written after index `after` (and
  // forgets those a conflicting suffix removed), then recomputes the effective configuration.
  void TrackLogConfChanges(LogIndex after, const std::vector<Entry>& entries);
  void RecomputeConfig();
  void ResetProgress();
  Progress NewProgress() const;

  uint64_t NextRandom();

  NodeOptions options_;
  const LogStorage* storage_;
  RaftLog log_;

  Term term_;
  NodeId vote_;
  // PastVotes::kForgotten only: the highest term heard of before the first leader contact.
  Term votes_forgotten_through_;
  bool heard_from_leader_ = false;
  NodeId leader_;
  Role role_ = Role::kFollower;

  // Membership: as of the applied index, the unapplied changes in the log, and the effective
  // result of both (see effective_conf_state()). A snapshot received from the leader replaces
  // the applied membership only once the owner installed it; until then the effective
  // configuration starts from the snapshot's (restored_conf_).
  ConfState applied_conf_;
  std::optional<std::pair<LogIndex, ConfState>> restored_conf_;
  std::map<LogIndex, std::pair<Term, ConfChange>> log_conf_changes_;
  std::set<NodeId> voters_;
  std::set<NodeId> learners_;
  std::map<NodeId, Progress> progress_;  // leader only; includes itself while a member
  std::map<NodeId, bool> votes_;
  bool self_vote_pending_ = false;  // candidate: own vote counts once persisted

  int election_elapsed_ = 0;
  int heartbeat_elapsed_ = 0;
  int randomized_election_timeout_ = 0;
  NodeId lead_transferee_;
  LogIndex pending_conf_index_;

  std::vector<std::string> reads_waiting_for_commit_;  // before the leader's first commit
  std::deque<PendingRead> pending_reads_;
  uint64_t read_rounds_ = 0;  // rounds named so far; answers from earlier terms are dropped

  std::vector<Message> messages_;
  std::vector<Message> messages_after_persist_;
  std::vector<ReadState> read_states_;

  absl::Time now_ = absl::UnixEpoch();
  absl::Time leader_time_ = absl::UnixEpoch();  // last stamp handed out as leader
  uint64_t rng_state_;

  // The outstanding Ready, between GetReady() and Advance().
  bool ready_outstanding_ = false;
  HardState persisted_hard_state_;  // last hard state handed out
  std::optional<SnapshotMeta> ready_snapshot_;
  std::optional<std::pair<LogIndex, Term>> ready_last_entry_;
  std::vector<Entry> ready_conf_changes_;
  LogIndex ready_applied_to_;
};

}  // namespace backstop::raft
