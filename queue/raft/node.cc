#include "queue/raft/node.h"

#include <algorithm>
#include <string>
#include <utility>

#include "common/status.h"
#include "queue/raft/codec.h"

namespace backstop::raft {

namespace {

bool IsResponseAfterPersist(MessageType type) {
  return type == MessageType::kAppendResponse || type == MessageType::kVoteResponse ||
         type == MessageType::kPreVoteResponse;
}

std::string Describe(NodeId id) {
  return std::to_string(id.value());
}

// Entry stamps are whole microseconds, the resolution of their wire form: every node must apply
// an entry with the very `now` the leader's own state machine sees.
absl::Time ClusterTimeOf(absl::Time t) {
  return absl::FromUnixMicros(absl::ToUnixMicros(t));
}

// Whether an append's entries follow its `index` one by one, with terms that never fall below
// `log_term` (nor below the entry before) nor rise above the sender's term: every correct
// leader's do. Anything else (a corrupt or forged message) would write a log with holes or with
// terms out of order, so it is dropped unanswered, like a message for someone else.
bool WellFormedEntries(const Message& m) {
  Term previous = m.log_term;
  for (size_t i = 0; i < m.entries.size(); ++i) {
    const Entry& entry = m.entries[i];
    if (entry.index != m.index + (i + 1) || entry.term < previous || entry.term > m.term) {
      return false;
    }
    previous = entry.term;
  }
  return true;
}

}  // namespace

absl::StatusOr<std::unique_ptr<Node>> Node::Create(const NodeOptions& options,
                                                   const LogStorage* storage) {
  if (options.id.IsNone()) {
    return absl::InvalidArgumentError("raft node id must not be 0");
  }
  if (options.election_ticks <= options.heartbeat_ticks || options.heartbeat_ticks <= 0) {
    return absl::InvalidArgumentError("raft election_ticks must exceed heartbeat_ticks > 0");
  }
  const HardState hs = storage->GetHardState();
  if (hs.commit > storage->LastIndex() ||
      options.applied > std::max(hs.commit, storage->FirstIndex() - 1)) {
    return absl::FailedPreconditionError("raft storage: commit index beyond the log");
  }
  ASSIGN_OR_RETURN(Snapshot snapshot, storage->GetSnapshot());
  // The state machine holds at least the snapshot (entries up to the compaction point may
  // still be in storage below it).
  NodeOptions effective = options;
  effective.applied = std::max(options.applied, snapshot.meta.index);
  auto node = std::unique_ptr<Node>(new Node(effective, storage));
  node->applied_conf_ = snapshot.meta.conf_state;
  // Membership changes in the log after the snapshot: those up to `applied` are part of the
  // applied configuration; later ones are only in the log (and already in force for voting).
  const LogIndex last = node->log_.LastIndex();
  if (last > snapshot.meta.index) {
    std::optional<std::vector<Entry>> entries =
        node->log_.Slice(snapshot.meta.index + 1, last + 1, UINT64_MAX);
    if (!entries.has_value()) {
      return absl::FailedPreconditionError("raft storage: entries after the snapshot are missing");
    }
    for (const Entry& e : *entries) {
      if (e.type != EntryType::kConfChange) {
        continue;
      }
      ASSIGN_OR_RETURN(ConfChange change, DecodeConfChange(e.data));
      if (e.index <= node->log_.applied()) {
        ApplyChangeTo(change, node->applied_conf_);
      } else {
        node->log_conf_changes_[e.index] = {e.term, change};
      }
    }
  }
  node->RecomputeConfig();
  return node;
}

Node::Node(const NodeOptions& options, const LogStorage* storage)
    : options_(options),
      storage_(storage),
      log_(storage, options.applied),
      term_(storage->GetHardState().term),
      vote_(storage->GetHardState().vote),
      rng_state_(options.random_seed ^ (options.id.value() * 0x9e3779b97f4a7c15ULL)) {
  persisted_hard_state_ = storage->GetHardState();
  ResetRandomizedTimeout();
  role_ = Role::kFollower;
}

uint64_t Node::NextRandom() {
  // splitmix64: deterministic on every platform, unlike <random> distributions.
  uint64_t z = (rng_state_ += 0x9e3779b97f4a7c15ULL);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

void Node::ResetRandomizedTimeout() {
  randomized_election_timeout_ =
      options_.election_ticks +
      static_cast<int>(NextRandom() % static_cast<uint64_t>(options_.election_ticks));
}

ConfState Node::effective_conf_state() const {
  return ConfState{std::vector<NodeId>(voters_.begin(), voters_.end()),
                   std::vector<NodeId>(learners_.begin(), learners_.end())};
}

const Progress* Node::ProgressOf(NodeId peer) const {
  auto it = progress_.find(peer);
  return it == progress_.end() ? nullptr : &it->second;
}

bool Node::InLease() const {
  return options_.check_quorum == CheckQuorum::kEnabled && !leader_.IsNone() &&
         election_elapsed_ < options_.election_ticks;
}

// ---------------------------------------------------------------------------------------------
// Role transitions

void Node::Reset(Term term) {
  if (term_ != term) {
    term_ = term;
    vote_ = kNoNode;
  }
  leader_ = kNoNode;
  election_elapsed_ = 0;
  heartbeat_elapsed_ = 0;
  ResetRandomizedTimeout();
  lead_transferee_ = kNoNode;
  votes_.clear();
  self_vote_pending_ = false;
  progress_.clear();
  pending_conf_index_ = LogIndex(0);
  reads_waiting_for_commit_.clear();
  pending_reads_.clear();
}

void Node::BecomeFollower(Term term, NodeId leader) {
  Reset(term);
  leader_ = leader;
  role_ = Role::kFollower;
}

void Node::BecomePreCandidate() {
  // Pre-candidates change neither term nor vote: a lost pre-election leaves no trace.
  votes_.clear();
  self_vote_pending_ = false;
  progress_.clear();
  leader_ = kNoNode;
  role_ = Role::kPreCandidate;
}

void Node::BecomeCandidate() {
  Reset(term_ + 1);
  vote_ = options_.id;
  role_ = Role::kCandidate;
  self_vote_pending_ = true;
}

Progress Node::NewProgress() const {
  return Progress(log_.LastIndex() + 1, options_.max_inflight_appends, options_.max_inflight_bytes);
}

void Node::ResetProgress() {
  progress_.clear();
  for (NodeId peer : voters_) {
    progress_.emplace(peer, NewProgress());
  }
  for (NodeId peer : learners_) {
    progress_.emplace(peer, NewProgress());
  }
  auto self = progress_.find(options_.id);
  if (self != progress_.end()) {
    self->second.MaybeUpdate(log_.persisted());
    self->second.BecomeReplicate();
  }
}

void Node::BecomeLeader() {
  Reset(term_);
  leader_ = options_.id;
  role_ = Role::kLeader;
  ResetProgress();
  for (auto& [peer, progress] : progress_) {
    progress.recent_active = true;  // give every follower a full CheckQuorum round
  }
  // Cluster time never goes back: continue from the newest stamp in our log.
  leader_time_ = std::max({leader_time_, now_, log_.TimeAt(log_.LastIndex()).value_or(now_)});
  AppendAsLeader({Entry{}});
  // No membership change until this empty entry of our own term is applied: it proves all
  // earlier changes are committed and applied here.
  pending_conf_index_ = log_.LastIndex();
}

// ---------------------------------------------------------------------------------------------
// Elections

void Node::Campaign() {
  if (role_ == Role::kLeader || !Promotable()) {
    return;
  }
  StartCampaign(options_.pre_vote == PreVote::kEnabled ? CampaignKind::kPreElection
                                                       : CampaignKind::kElection);
}

void Node::StartCampaign(CampaignKind kind) {
  if (kind == CampaignKind::kPreElection) {
    BecomePreCandidate();
  } else {
    BecomeCandidate();
  }
  const Term term = kind == CampaignKind::kPreElection ? term_ + 1 : term_;
  for (NodeId peer : voters_) {
    if (peer == options_.id) {
      continue;
    }
    Message m;
    m.type = kind == CampaignKind::kPreElection ? MessageType::kPreVote : MessageType::kVote;
    m.to = peer;
    m.term = term;
    m.index = log_.LastIndex();
    m.log_term = log_.LastTerm();
    if (kind == CampaignKind::kTransfer) {
      m.context = kTransferContext;
    }
    Send(std::move(m));
  }
  if (kind == CampaignKind::kPreElection) {
    Poll(options_.id, true);  // a pre-vote changes nothing durable: it counts at once
  }
}

bool Node::Promotable() const {
  // A node whose removal is in its log but not applied may still campaign (counting only the
  // votes of its log's configuration): it may hold the only up-to-date log, and the removal
  // must be committed by someone.
  const ConfState& base = BaseConf();
  return voters_.contains(options_.id) ||
         std::binary_search(base.voters.begin(), base.voters.end(), options_.id);
}

const ConfState& Node::BaseConf() const {
  return restored_conf_.has_value() ? restored_conf_->second : applied_conf_;
}

void Node::Poll(NodeId from, bool granted) {
  votes_.emplace(from, granted);
  size_t yes = 0;
  size_t no = 0;
  for (const auto& [voter, vote] : votes_) {
    if (!voters_.contains(voter)) {
      continue;
    }
    (vote ? yes : no)++;
  }
  if (yes >= Quorum()) {
    if (role_ == Role::kPreCandidate) {
      StartCampaign(CampaignKind::kElection);
    } else {
      BecomeLeader();
      BroadcastAppend();
    }
  } else if (voters_.size() - no < Quorum()) {
    BecomeFollower(term_, kNoNode);
  }
}

void Node::HandleVoteRequest(const Message& m) {
  const bool pre = m.type == MessageType::kPreVote;
  // A vote this node's earlier life may have cast in that term is forgotten (PastVotes).
  const bool votes_forgotten = options_.past_votes == PastVotes::kForgotten &&
                               (!heard_from_leader_ || m.term <= votes_forgotten_through_);
  const bool can_vote =
      !votes_forgotten &&
      (vote_ == m.from || (vote_.IsNone() && leader_.IsNone()) || (pre && m.term > term_));
  const bool log_ok = HasFault(options_.test_faults, RaftTestFault::kGrantVoteWithoutLogCheck) ||
                      log_.IsUpToDate(m.index, m.log_term);
  Message resp;
  resp.type = pre ? MessageType::kPreVoteResponse : MessageType::kVoteResponse;
  resp.to = m.from;
  if (can_vote && log_ok) {
    resp.term = m.term;  // a granted pre-vote answers in the term the candidate will use
    if (!pre) {
      election_elapsed_ = 0;
      vote_ = m.from;
    }
  } else {
    resp.term = term_;
    resp.reject = true;
  }
  Send(std::move(resp));
}

// ---------------------------------------------------------------------------------------------
// Ticks

void Node::Tick(absl::Time now) {
  now_ = std::max(now_, now);
  if (role_ == Role::kLeader) {
    TickHeartbeat();
  } else {
    TickElection();
  }
}

void Node::TickElection() {
  ++election_elapsed_;
  if (Promotable() && election_elapsed_ >= randomized_election_timeout_) {
    election_elapsed_ = 0;
    Campaign();
  }
}

void Node::TickHeartbeat() {
  ++heartbeat_elapsed_;
  ++election_elapsed_;
  if (election_elapsed_ >= options_.election_ticks) {
    election_elapsed_ = 0;
    if (options_.check_quorum == CheckQuorum::kEnabled) {
      size_t active = 0;
      for (auto& [peer, progress] : progress_) {
        if (voters_.contains(peer) && (peer == options_.id || progress.recent_active)) {
          ++active;
        }
        if (peer != options_.id) {
          progress.recent_active = false;
        }
      }
      if (active < Quorum()) {
        BecomeFollower(term_, kNoNode);
        return;
      }
    }
    lead_transferee_ = kNoNode;  // a transfer that did not finish in time is abandoned
  }
  for (auto& [peer, progress] : progress_) {
    if (progress.state == ProgressState::kSnapshot &&
        ++progress.ticks_in_snapshot >= options_.election_ticks) {
      progress.BecomeProbe();  // the snapshot was probably lost: probe again
    }
  }
  if (heartbeat_elapsed_ >= options_.heartbeat_ticks) {
    heartbeat_elapsed_ = 0;
    BroadcastHeartbeat(pending_reads_.empty() ? std::string() : pending_reads_.back().round);
  }
}

// ---------------------------------------------------------------------------------------------
// Messages in

void Node::Send(Message message) {
  message.from = options_.id;
  if (message.term == Term(0)) {
    message.term = term_;
  }
  const bool early = (HasFault(options_.test_faults, RaftTestFault::kSendVoteBeforePersist) &&
                      message.type == MessageType::kVoteResponse) ||
                     (HasFault(options_.test_faults, RaftTestFault::kAckAppendBeforePersist) &&
                      message.type == MessageType::kAppendResponse);
  const bool after = IsResponseAfterPersist(message.type) && !early;
  (after ? messages_after_persist_ : messages_).push_back(std::move(message));
}

void Node::Step(const Message& m) {
  if (m.to != options_.id || m.from.IsNone() || m.from == options_.id || !WellFormedEntries(m)) {
    return;
  }
  const bool vote_request = m.type == MessageType::kVote || m.type == MessageType::kPreVote;
  if (options_.past_votes == PastVotes::kForgotten && !heard_from_leader_) {
    votes_forgotten_through_ = std::max(votes_forgotten_through_, m.term);
    heard_from_leader_ = (m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat ||
                          m.type == MessageType::kSnapshot) &&
                         m.term >= term_;
  }
  if (m.term > term_) {
    if (vote_request && m.context != kTransferContext && InLease()) {
      // We heard from a leader within the election timeout: a node that cannot hear it (or was
      // removed) must not depose it.
      return;
    }
    if (m.type == MessageType::kPreVote || (m.type == MessageType::kPreVoteResponse && !m.reject)) {
      // Pre-votes never move terms.
    } else if (m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat ||
               m.type == MessageType::kSnapshot) {
      BecomeFollower(m.term, m.from);
    } else if (m.type == MessageType::kVote) {
      // Figure 2: only a vote we grant resets the election timer. A candidate whose log we
      // refuse must not keep us (perhaps the one up-to-date node) from ever timing out.
      const int elapsed = election_elapsed_;
      BecomeFollower(m.term, kNoNode);
      election_elapsed_ = elapsed;
    } else {
      BecomeFollower(m.term, kNoNode);
    }
  } else if (m.term < term_) {
    if (m.type == MessageType::kAppend || m.type == MessageType::kHeartbeat) {
      // A stale leader: tell it our term so it steps down. Without this, a node whose term ran
      // ahead could never be reached again (its own votes are ignored under the lease).
      Message resp;
      resp.type = MessageType::kAppendResponse;
      resp.to = m.from;
      Send(std::move(resp));
    } else if (m.type == MessageType::kPreVote) {
      Message resp;
      resp.type = MessageType::kPreVoteResponse;
      resp.to = m.from;
      resp.reject = true;
      Send(std::move(resp));
    }
    return;
  }

  if (vote_request) {
    HandleVoteRequest(m);
    return;
  }
  switch (role_) {
    case Role::kLeader:
      StepLeader(m);
      break;
    case Role::kPreCandidate:
    case Role::kCandidate:
      StepCandidate(m);
      break;
    case Role::kFollower:
      StepFollower(m);
      break;
  }
}

void Node::StepFollower(const Message& m) {
  switch (m.type) {
    case MessageType::kAppend:
      election_elapsed_ = 0;
      leader_ = m.from;
      HandleAppend(m);
      break;
    case MessageType::kHeartbeat:
      election_elapsed_ = 0;
      leader_ = m.from;
      HandleHeartbeat(m);
      break;
    case MessageType::kSnapshot:
      election_elapsed_ = 0;
      leader_ = m.from;
      HandleSnapshot(m);
      break;
    case MessageType::kTimeoutNow:
      if (Promotable()) {
        // Transfers skip the pre-election: the leader asked for it.
        StartCampaign(CampaignKind::kTransfer);
      }
      break;
    default:
      break;
  }
}

void Node::StepCandidate(const Message& m) {
  const MessageType my_response =
      role_ == Role::kPreCandidate ? MessageType::kPreVoteResponse : MessageType::kVoteResponse;
  switch (m.type) {
    case MessageType::kAppend:
    case MessageType::kHeartbeat:
    case MessageType::kSnapshot:
      BecomeFollower(m.term, m.from);  // someone won this term
      StepFollower(m);
      break;
    default:
      if (m.type == my_response) {
        Poll(m.from, !m.reject);
      }
      break;
  }
}

void Node::StepLeader(const Message& m) {
  switch (m.type) {
    case MessageType::kAppendResponse:
      HandleAppendResponse(m);
      break;
    case MessageType::kHeartbeatResponse:
      HandleHeartbeatResponse(m);
      break;
    default:
      break;
  }
}

void Node::HandleAppend(const Message& m) {
  Message resp;
  resp.type = MessageType::kAppendResponse;
  resp.to = m.from;
  if (m.index < log_.committed()) {
    resp.index = log_.committed();
    Send(std::move(resp));
    return;
  }
  if (std::optional<LogIndex> last_new =
          log_.MaybeAppend(m.index, m.log_term, m.commit, m.entries)) {
    TrackLogConfChanges(m.index, m.entries);
    resp.index = *last_new;
    Send(std::move(resp));
    return;
  }
  if (!corruption().empty()) {
    return;
  }
  // Fast backtracking: point the leader at the last entry that could match, skipping whole
  // terms that cannot.
  auto [hint_index, hint_term] =
      log_.FindConflictByTerm(std::min(m.index, log_.LastIndex()), m.log_term);
  resp.index = m.index;
  resp.reject = true;
  resp.reject_hint = hint_index;
  resp.log_term = hint_term;
  Send(std::move(resp));
}

void Node::HandleHeartbeat(const Message& m) {
  // The leader sends min(our match, its commit), so this never commits an unverified entry.
  log_.CommitTo(std::min(m.commit, log_.LastIndex()));
  Message resp;
  resp.type = MessageType::kHeartbeatResponse;
  resp.to = m.from;
  resp.context = m.context;
  Send(std::move(resp));
}

void Node::HandleSnapshot(const Message& m) {
  Message resp;
  resp.type = MessageType::kAppendResponse;
  resp.to = m.from;
  if (!m.snapshot.has_value()) {
    return;
  }
  const SnapshotMeta& meta = m.snapshot->meta;
  if (meta.index <= log_.committed()) {
    resp.index = log_.committed();
  } else if (log_.MatchTerm(meta.index, meta.term)) {
    // We already hold the entries: just learn that they are committed. Only the snapshot's index
    // is known to match: our entries after it may come from a deposed leader, and claiming them
    // would let the leader count us for its own entries there.
    log_.CommitTo(meta.index);
    resp.index = meta.index;
  } else {
    log_.Restore(*m.snapshot);
    // In force at once, but the applied membership changes only when the owner installs the
    // snapshot: it may still be applying (and snapshotting) entries below it.
    restored_conf_ = {meta.index, meta.conf_state};
    log_conf_changes_.clear();
    RecomputeConfig();
    resp.index = log_.LastIndex();
  }
  Send(std::move(resp));
}

void Node::HandleAppendResponse(const Message& m) {
  auto it = progress_.find(m.from);
  if (it == progress_.end()) {
    return;
  }
  Progress& pr = it->second;
  pr.recent_active = true;
  if (m.reject) {
    LogIndex next_probe = m.reject_hint;
    if (m.log_term > Term(0)) {
      next_probe = log_.FindConflictByTerm(m.reject_hint, m.log_term).first;
    }
    if (pr.MaybeDecrTo(m.index, next_probe)) {
      if (pr.state == ProgressState::kReplicate) {
        pr.BecomeProbe();
      }
      SendAppend(m.from, true);
    }
    return;
  }
  const bool was_paused = pr.IsPaused();
  if (!pr.MaybeUpdate(m.index)) {
    return;
  }
  switch (pr.state) {
    case ProgressState::kProbe:
      pr.BecomeReplicate();
      break;
    case ProgressState::kSnapshot:
      if (pr.match + 1 >= log_.FirstIndex()) {
        pr.BecomeProbe();
        pr.BecomeReplicate();
      }
      break;
    case ProgressState::kReplicate:
      pr.inflights.FreeLE(m.index);
      break;
  }
  if (MaybeCommit()) {
    BroadcastAppend();
  } else if (was_paused) {
    SendAppend(m.from, true);
  }
  while (SendAppend(m.from, false)) {
  }
  if (m.from == lead_transferee_ && pr.match == log_.LastIndex()) {
    SendTimeoutNow(m.from);
  }
}

void Node::HandleHeartbeatResponse(const Message& m) {
  auto it = progress_.find(m.from);
  if (it == progress_.end()) {
    return;
  }
  Progress& pr = it->second;
  pr.recent_active = true;
  pr.probe_sent = false;
  if (pr.state == ProgressState::kReplicate && pr.inflights.Full()) {
    pr.inflights.FreeFirst();
  }
  if (pr.match < log_.LastIndex()) {
    SendAppend(m.from, true);
  }
  if (m.context.empty() || !voters_.contains(m.from)) {
    return;
  }
  // A heartbeat answer for a read also confirms every read queued before it.
  auto read = std::find_if(pending_reads_.begin(), pending_reads_.end(),
                           [&](const PendingRead& r) { return r.round == m.context; });
  if (read == pending_reads_.end()) {
    return;
  }
  read->acks.insert(m.from);
  if (read->acks.size() < Quorum()) {
    return;
  }
  auto end = std::next(read);
  for (auto r = pending_reads_.begin(); r != end; ++r) {
    read_states_.push_back(ReadState{r->index, r->context});
  }
  pending_reads_.erase(pending_reads_.begin(), end);
}

// ---------------------------------------------------------------------------------------------
// Leader: replication and commit

void Node::AppendAsLeader(std::vector<Entry> entries) {
  LogIndex index = log_.LastIndex();
  for (Entry& e : entries) {
    index = index + 1;
    e.index = index;
    e.term = term_;
    e.time = ClusterTimeOf(leader_time_);
  }
  const LogIndex after = entries.empty() ? log_.LastIndex() : entries.front().index - 1;
  log_.Append(entries);
  TrackLogConfChanges(after, entries);
  // Our own match moves only once these are persisted (Advance); see the header.
}

bool Node::CommittedInCurrentTerm() const {
  return log_.TermAt(log_.committed()) == term_;
}

bool Node::MaybeCommit() {
  std::vector<LogIndex> matches;
  for (const auto& [peer, progress] : progress_) {
    if (voters_.contains(peer)) {
      matches.push_back(progress.match);
    }
  }
  if (matches.size() < Quorum()) {
    return false;
  }
  std::sort(matches.begin(), matches.end(), std::greater<>());
  const LogIndex candidate = matches[Quorum() - 1];
  if (candidate <= log_.committed()) {
    return false;
  }
  // §5.4.2: only an entry of the current term is committed by counting replicas; earlier ones
  // are committed indirectly by it.
  if (!HasFault(options_.test_faults, RaftTestFault::kCommitPreviousTermByCount) &&
      log_.TermAt(candidate) != term_) {
    return false;
  }
  const bool first_commit_in_term = !CommittedInCurrentTerm();
  log_.CommitTo(candidate);
  if (first_commit_in_term && CommittedInCurrentTerm()) {
    ReleasePendingReads();
  }
  return true;
}

void Node::ReleasePendingReads() {
  std::vector<std::string> waiting = std::move(reads_waiting_for_commit_);
  reads_waiting_for_commit_.clear();
  for (std::string& context : waiting) {
    (void)ReadIndex(std::move(context));
  }
}

bool Node::SendAppend(NodeId to, bool send_if_empty) {
  auto it = progress_.find(to);
  if (it == progress_.end() || to == options_.id) {
    return false;
  }
  Progress& pr = it->second;
  if (pr.IsPaused()) {
    return false;
  }
  const LogIndex prev = pr.next - 1;
  std::optional<Term> prev_term = log_.TermAt(prev);
  std::optional<std::vector<Entry>> entries =
      log_.Slice(pr.next, log_.LastIndex() + 1, options_.max_bytes_per_append);
  if (!prev_term.has_value() || !entries.has_value()) {
    return SendSnapshot(to, pr);
  }
  if (entries->empty() && !send_if_empty) {
    return false;
  }
  Message m;
  m.type = MessageType::kAppend;
  m.to = to;
  m.index = prev;
  m.log_term = *prev_term;
  m.commit = log_.committed();
  if (!entries->empty()) {
    const LogIndex last = entries->back().index;
    uint64_t bytes = 0;
    for (const Entry& e : *entries) {
      bytes += e.ByteSize();
    }
    if (pr.state == ProgressState::kReplicate) {
      pr.next = last + 1;
      pr.inflights.Add(last, bytes);
    }
  }
  if (pr.state == ProgressState::kProbe) {
    pr.probe_sent = true;
  }
  m.entries = *std::move(entries);
  Send(std::move(m));
  return true;
}

bool Node::SendSnapshot(NodeId to, Progress& pr) {
  if (!pr.recent_active) {
    return false;  // do not ship a snapshot to a node that may be gone
  }
  absl::StatusOr<Snapshot> snapshot = storage_->GetSnapshot();
  if (!snapshot.ok()) {
    return false;
  }
  pr.BecomeSnapshot(snapshot->meta.index);
  Message m;
  m.type = MessageType::kSnapshot;
  m.to = to;
  m.snapshot = *std::move(snapshot);
  Send(std::move(m));
  return true;
}

void Node::BroadcastAppend() {
  for (const auto& [peer, progress] : progress_) {
    if (peer != options_.id) {
      SendAppend(peer, true);
    }
  }
}

void Node::BroadcastHeartbeat(const std::string& context) {
  for (const auto& [peer, progress] : progress_) {
    if (peer == options_.id) {
      continue;
    }
    Message m;
    m.type = MessageType::kHeartbeat;
    m.to = peer;
    m.commit = std::min(progress.match, log_.committed());
    m.context = context;
    Send(std::move(m));
  }
}

void Node::SendTimeoutNow(NodeId to) {
  Message m;
  m.type = MessageType::kTimeoutNow;
  m.to = to;
  Send(std::move(m));
}

// ---------------------------------------------------------------------------------------------
// Client requests

absl::StatusOr<LogIndex> Node::Propose(const std::vector<std::string>& payloads, absl::Time now) {
  now_ = std::max(now_, now);
  if (role_ != Role::kLeader) {
    return absl::FailedPreconditionError("raft: not the leader; leader is " + Describe(leader_));
  }
  if (!lead_transferee_.IsNone()) {
    return absl::UnavailableError("raft: leadership transfer in progress");
  }
  leader_time_ = std::max(leader_time_, now_);
  std::vector<Entry> entries(payloads.size());
  for (size_t i = 0; i < payloads.size(); ++i) {
    entries[i].data = payloads[i];
  }
  AppendAsLeader(std::move(entries));
  BroadcastAppend();
  return log_.LastIndex();
}

absl::StatusOr<LogIndex> Node::ProposeConfChange(const ConfChange& change, absl::Time now) {
  now_ = std::max(now_, now);
  if (role_ != Role::kLeader) {
    return absl::FailedPreconditionError("raft: not the leader; leader is " + Describe(leader_));
  }
  if (!lead_transferee_.IsNone()) {
    return absl::UnavailableError("raft: leadership transfer in progress");
  }
  if (pending_conf_index_ > log_.applied()) {
    return absl::FailedPreconditionError(
        "raft: a membership change (or this leader's first entry) is not applied yet");
  }
  const bool voter = voters_.contains(change.node);
  const bool learner = learners_.contains(change.node);
  switch (change.type) {
    case ConfChangeType::kAddLearner:
      if (voter || learner) {
        return absl::AlreadyExistsError("raft: node " + Describe(change.node) + " is a member");
      }
      break;
    case ConfChangeType::kPromoteVoter:
      if (!learner) {
        return absl::FailedPreconditionError("raft: node " + Describe(change.node) +
                                             " is not a learner");
      }
      break;
    case ConfChangeType::kRemove:
      if (!voter && !learner) {
        return absl::NotFoundError("raft: node " + Describe(change.node) + " is not a member");
      }
      if (change.node == options_.id) {
        return absl::FailedPreconditionError(
            "raft: a leader cannot remove itself; transfer leadership first");
      }
      break;
  }
  if (change.node.IsNone()) {
    return absl::InvalidArgumentError("raft: node id 0");
  }
  leader_time_ = std::max(leader_time_, now_);
  Entry entry;
  entry.type = EntryType::kConfChange;
  entry.data = EncodeConfChange(change);
  AppendAsLeader({std::move(entry)});
  pending_conf_index_ = log_.LastIndex();
  MaybeCommit();  // a removal may shrink the quorum
  BroadcastAppend();
  return log_.LastIndex();
}

absl::Status Node::ReadIndex(std::string context) {
  if (role_ != Role::kLeader) {
    return absl::FailedPreconditionError("raft: not the leader; leader is " + Describe(leader_));
  }
  if (context.empty()) {
    return absl::InvalidArgumentError("raft: read context must not be empty");
  }
  if (!CommittedInCurrentTerm()) {
    // Our commit index is only known to be current once an entry of our term is committed.
    reads_waiting_for_commit_.push_back(std::move(context));
    return absl::OkStatus();
  }
  const bool self_votes = voters_.contains(options_.id);
  if (self_votes && voters_.size() == 1) {
    read_states_.push_back(ReadState{log_.committed(), std::move(context)});
    return absl::OkStatus();
  }
  for (const PendingRead& r : pending_reads_) {
    if (r.context == context) {
      return absl::AlreadyExistsError("raft: read context already pending");
    }
  }
  PendingRead read{context, std::to_string(++read_rounds_), log_.committed(), {}};
  if (self_votes) {
    read.acks.insert(options_.id);
  }
  const std::string round = read.round;
  pending_reads_.push_back(std::move(read));
  BroadcastHeartbeat(round);
  return absl::OkStatus();
}

absl::Status Node::TransferLeadership(NodeId to) {
  if (role_ != Role::kLeader) {
    return absl::FailedPreconditionError("raft: not the leader; leader is " + Describe(leader_));
  }
  if (to == options_.id) {
    return absl::OkStatus();
  }
  if (!voters_.contains(to)) {
    return absl::InvalidArgumentError("raft: transfer target " + Describe(to) + " is not a voter");
  }
  if (lead_transferee_ == to) {
    return absl::OkStatus();
  }
  lead_transferee_ = to;
  election_elapsed_ = 0;  // the transfer must finish within one election timeout
  if (progress_.at(to).match == log_.LastIndex()) {
    SendTimeoutNow(to);
  } else {
    SendAppend(to, true);
  }
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// Membership

void Node::ApplyChangeTo(const ConfChange& change, ConfState& conf) {
  auto erase = [](std::vector<NodeId>& ids, NodeId id) { std::erase(ids, id); };
  auto insert = [](std::vector<NodeId>& ids, NodeId id) {
    if (std::find(ids.begin(), ids.end(), id) == ids.end()) {
      ids.insert(std::upper_bound(ids.begin(), ids.end(), id), id);
    }
  };
  switch (change.type) {
    case ConfChangeType::kAddLearner:
      if (std::find(conf.voters.begin(), conf.voters.end(), change.node) == conf.voters.end()) {
        insert(conf.learners, change.node);
      }
      break;
    case ConfChangeType::kPromoteVoter:
      erase(conf.learners, change.node);
      insert(conf.voters, change.node);
      break;
    case ConfChangeType::kRemove:
      erase(conf.learners, change.node);
      erase(conf.voters, change.node);
      break;
  }
}

void Node::TrackLogConfChanges(LogIndex after, const std::vector<Entry>& entries) {
  // Entries after `after` may have replaced a conflicting suffix: forget changes no longer in
  // the log, then record the new ones.
  for (auto it = log_conf_changes_.upper_bound(after); it != log_conf_changes_.end();) {
    if (log_.TermAt(it->first) != it->second.first) {
      it = log_conf_changes_.erase(it);
    } else {
      ++it;
    }
  }
  for (const Entry& e : entries) {
    if (e.type != EntryType::kConfChange || e.index <= log_.applied() ||
        log_.TermAt(e.index) != e.term) {
      continue;
    }
    absl::StatusOr<ConfChange> change = DecodeConfChange(e.data);
    if (change.ok()) {
      log_conf_changes_[e.index] = {e.term, *change};
    }
  }
  RecomputeConfig();
}

void Node::RecomputeConfig() {
  ConfState conf = BaseConf();
  for (const auto& [index, change] : log_conf_changes_) {
    ApplyChangeTo(change.second, conf);
  }
  voters_ = std::set<NodeId>(conf.voters.begin(), conf.voters.end());
  learners_ = std::set<NodeId>(conf.learners.begin(), conf.learners.end());
  if (role_ != Role::kLeader) {
    return;
  }
  for (auto it = progress_.begin(); it != progress_.end();) {
    if (!voters_.contains(it->first) && !learners_.contains(it->first)) {
      if (lead_transferee_ == it->first) {
        lead_transferee_ = kNoNode;
      }
      it = progress_.erase(it);
    } else {
      ++it;
    }
  }
  for (const std::set<NodeId>* members : {&voters_, &learners_}) {
    for (NodeId peer : *members) {
      if (!progress_.contains(peer)) {
        progress_.emplace(peer, NewProgress()).first->second.recent_active = true;
      }
    }
  }
}

// ---------------------------------------------------------------------------------------------
// Ready

bool Node::HasReady() const {
  if (ready_outstanding_) {
    return false;
  }
  return HardState{term_, vote_, log_.committed()} != persisted_hard_state_ ||
         log_.HasUnstableToHand() || log_.HasCommittedToHand() || !messages_.empty() ||
         !messages_after_persist_.empty() || !read_states_.empty();
}

Ready Node::GetReady() {
  Ready rd;
  const HardState hs{term_, vote_, log_.committed()};
  if (hs != persisted_hard_state_) {
    rd.hard_state = hs;
    persisted_hard_state_ = hs;
  }
  rd.snapshot = log_.TakeUnstableSnapshot();
  rd.entries = log_.TakeUnstableEntries();
  rd.committed_entries = log_.TakeCommittedEntries(options_.max_committed_bytes_per_ready);
  rd.messages = std::move(messages_);
  messages_.clear();
  rd.messages_after_persist = std::move(messages_after_persist_);
  messages_after_persist_.clear();
  rd.read_states = std::move(read_states_);
  read_states_.clear();

  ready_outstanding_ = true;
  ready_snapshot_.reset();
  if (rd.snapshot.has_value()) {
    ready_snapshot_ = rd.snapshot->meta;
  }
  ready_last_entry_.reset();
  if (!rd.entries.empty()) {
    ready_last_entry_ = {rd.entries.back().index, rd.entries.back().term};
  }
  ready_conf_changes_.clear();
  ready_applied_to_ = LogIndex(0);
  for (const Entry& e : rd.committed_entries) {
    if (e.type == EntryType::kConfChange) {
      ready_conf_changes_.push_back(e);
    }
  }
  if (!rd.committed_entries.empty()) {
    ready_applied_to_ = rd.committed_entries.back().index;
  }
  return rd;
}

void Node::Advance() {
  if (!ready_outstanding_) {
    return;
  }
  ready_outstanding_ = false;
  if (ready_snapshot_.has_value()) {
    log_.StableSnapTo(ready_snapshot_->index);
    // The owner installed this snapshot (a newer one may have been restored meanwhile).
    applied_conf_ = ready_snapshot_->conf_state;
    if (restored_conf_.has_value() && restored_conf_->first == ready_snapshot_->index) {
      restored_conf_.reset();
    }
  }
  if (ready_last_entry_.has_value()) {
    log_.StableTo(ready_last_entry_->first, ready_last_entry_->second);
  }
  for (const Entry& e : ready_conf_changes_) {
    absl::StatusOr<ConfChange> change = DecodeConfChange(e.data);
    if (change.ok()) {
      ApplyChangeTo(*change, applied_conf_);
    }
  }
  ready_conf_changes_.clear();
  log_.AppliedTo(ready_applied_to_);
  if (ready_snapshot_.has_value() || !log_conf_changes_.empty()) {
    log_conf_changes_.erase(log_conf_changes_.begin(),
                            log_conf_changes_.upper_bound(log_.applied()));
    RecomputeConfig();
  }
  if (role_ == Role::kLeader && !Promotable()) {
    BecomeFollower(term_, kNoNode);  // our own removal is committed: hand over
    return;
  }

  if (role_ == Role::kLeader) {
    auto self = progress_.find(options_.id);
    if (self != progress_.end() && self->second.MaybeUpdate(log_.persisted()) && MaybeCommit()) {
      BroadcastAppend();
    }
  } else if (role_ == Role::kCandidate && self_vote_pending_ &&
             persisted_hard_state_.term == term_ && persisted_hard_state_.vote == options_.id) {
    self_vote_pending_ = false;
    Poll(options_.id, true);
  }
}

}  // namespace backstop::raft
