#include "queue/queue_node.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <filesystem>
#include <system_error>
#include <utility>

#include <fmt/format.h>

#include "common/log.h"
#include "common/status.h"
#include "queue/fault_injection.h"
#include "queue/raft/codec.h"

namespace backstop::queue {
namespace {

const log::Logger& Logger() {
  static const log::Logger logger("queue");
  return logger;
}

// The founding snapshot (raft::Bootstrap) has no state machine image: the empty state.
constexpr raft::LogIndex kFoundingIndex(1);

bool CarriesCheckpoint(const raft::Message& message) {
  return message.type == raft::MessageType::kSnapshot && message.snapshot.has_value() &&
         message.snapshot->meta.index > kFoundingIndex;
}

}  // namespace

QueueNode::QueueNode(const QueueNodeOptions& options, RaftTransport* transport)
    : options_(options), transport_(transport) {}

absl::StatusOr<std::unique_ptr<QueueNode>> QueueNode::Start(const QueueNodeOptions& options,
                                                            RaftTransport* transport) {
  std::error_code error;
  std::filesystem::create_directories(options.data_dir, error);
  if (error) {
    return absl::FailedPreconditionError(
        fmt::format("cannot create data directory {}: {}", options.data_dir, error.message()));
  }
  auto node = std::unique_ptr<QueueNode>(new QueueNode(options, transport));
  // FileSystemFromEnvironment: null (RocksDB's own) unless a test names a fault file.
  ASSIGN_OR_RETURN(node->database_,
                   Database::Open(options.data_dir + "/raft",
                                  DatabaseOptions{.extra_families = {},
                                                  .file_system = FileSystemFromEnvironment()}));
  ASSIGN_OR_RETURN(node->storage_, RocksDbLogStorage::Open(node->database_.get()));
  ASSIGN_OR_RETURN(node->state_machine_,
                   QueueStateMachine::Open(options.data_dir + "/state", options.state_machine));
  ASSIGN_OR_RETURN(node->snapshots_, SnapshotStore::Open(options.data_dir));

  const bool fresh = node->storage_->LastIndex() == raft::LogIndex() &&
                     node->storage_->GetHardState() == raft::HardState{};
  if (fresh && options.start_mode == StartMode::kJoinExisting) {
    Logger().Info("new queue node waiting to be added to the cluster",
                  {{"node_id", options.id.value()}});
  } else if (fresh) {
    // A founding member: every voter of the first configuration writes the same snapshot.
    raft::ConfState conf_state;
    for (const VoterAddress& peer : options.voters) {
      conf_state.voters.push_back(peer.id);
    }
    std::sort(conf_state.voters.begin(), conf_state.voters.end());
    // raft::Bootstrap's state in one synced batch, so a crash cannot leave half of it behind.
    const raft::FoundingState founding = raft::MakeFoundingState(conf_state);
    RETURN_IF_ERROR(node->storage_->Persist(founding.snapshot, {}, founding.hard_state));
    Logger().Info("bootstrapped a new queue voter",
                  {{"node_id", options.id.value()}, {"voters", conf_state.voters.size()}});
  }

  RETURN_IF_ERROR(node->ReconcileAppliedIndex());

  raft::NodeOptions raft_options;
  raft_options.id = options.id;
  raft_options.election_ticks = options.election_ticks;
  raft_options.heartbeat_ticks = options.heartbeat_ticks;
  // An empty node joining may be a wiped voter that still has its id in the configuration.
  raft_options.past_votes = fresh && options.start_mode == StartMode::kJoinExisting
                                ? raft::PastVotes::kForgotten
                                : raft::PastVotes::kRemembered;
  raft_options.applied = raft::LogIndex(node->state_machine_->applied_index());
  raft_options.random_seed = options.id.value() * 0x9E3779B97F4A7C15ULL ^
                             static_cast<uint64_t>(absl::ToUnixNanos(options.clock->Now()));
  ASSIGN_OR_RETURN(node->node_, raft::Node::Create(raft_options, node->storage_.get()));

  // The latest snapshot must have its checkpoint, to be sent to followers; a crash may have
  // come between the two.
  ASSIGN_OR_RETURN(const raft::Snapshot snapshot, node->storage_->GetSnapshot());
  node->snapshot_index_ = snapshot.meta.index;
  if (snapshot.meta.index > kFoundingIndex &&
      node->snapshots_->published() != snapshot.meta.index) {
    RETURN_IF_ERROR(node->TakeSnapshot(raft::LogIndex(node->state_machine_->applied_index())));
  }

  for (const VoterAddress& peer : options.voters) {
    node->addresses_[peer.id] = peer.address;
    if (peer.id != options.id) {
      transport->SetPeer(peer.id, peer.address);
    }
  }
  // Learned from membership changes: newer than the configuration's list.
  RETURN_IF_ERROR(node->LoadAddressBook());
  transport->SetSnapshotReceiver(node.get());
  node->thread_ = std::thread([raw = node.get()] { raw->Run(); });
  return node;
}

QueueNode::~QueueNode() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  if (thread_.joinable()) {
    thread_.join();
  }
  // After the Raft thread answered every staged snapshot, so that no call into us is waiting.
  transport_->SetSnapshotReceiver(nullptr);
}

absl::Status QueueNode::ReconcileAppliedIndex() {
  const raft::LogIndex applied(state_machine_->applied_index());
  const raft::HardState hard_state = storage_->GetHardState();
  ASSIGN_OR_RETURN(const raft::Snapshot held, storage_->GetSnapshot());
  if (applied <= std::max(hard_state.commit, held.meta.index)) {
    return absl::OkStatus();
  }
  raft::HardState reconciled = hard_state;
  absl::StatusOr<raft::SnapshotMeta> meta = ReadSnapshotMeta(options_.data_dir + "/state");
  if (meta.ok() && meta->index == applied) {
    // A crash between the swap of an installed snapshot and its record in the log: record it,
    // as the install would have.
    if (reconciled.term < meta->term) {
      reconciled.term = meta->term;
      reconciled.vote = raft::kNoNode;
    }
    reconciled.commit = meta->index;
    Logger().Info("completing a snapshot install interrupted by a restart",
                  {{"index", meta->index.value()}});
    return storage_->Persist(raft::Snapshot{*meta, {}}, {}, reconciled);
  }
  if (applied <= storage_->LastIndex()) {
    // The commit index is written without an fsync of its own (RocksDbLogStorage::Persist), so
    // a crash can lose its latest values while the state machine kept what it applied. Entries
    // are applied only once committed and durable in this log, which never rewrites committed
    // entries: they are still here, and committed. (This write is itself a commit-only one,
    // buffered: a crash before the next synced write only brings us here again.)
    reconciled.commit = applied;
    Logger().Info("commit index restored to the applied index after a crash",
                  {{"commit", hard_state.commit.value()}, {"applied", applied.value()}});
    return storage_->Persist(std::nullopt, {}, reconciled);
  }
  return absl::DataLossError(fmt::format(
      "queue state machine applied index {} is beyond the Raft log's last index {} and holds no "
      "snapshot metadata for it",
      applied.value(), storage_->LastIndex().value()));
}

absl::StatusOr<std::unique_ptr<SnapshotStaging>> QueueNode::BeginSnapshot(
    const raft::Message& message, const std::vector<SnapshotFile>& files) {
  if (!CarriesCheckpoint(message)) {
    return absl::InvalidArgumentError("a streamed snapshot must be past the founding one");
  }
  return snapshots_->BeginStaging(message.snapshot->meta, files);
}

absl::Status QueueNode::InstallSnapshot(raft::Message message,
                                        std::unique_ptr<SnapshotStaging> staged) {
  // Vetted here, on the gRPC thread: a checkpoint that does not open at its index is refused
  // before the Raft thread would swap it in.
  ASSIGN_OR_RETURN(const uint64_t applied, QueueStateMachine::AppliedIndexOf(staged->dir()));
  if (applied != message.snapshot->meta.index.value()) {
    return absl::InvalidArgumentError(
        fmt::format("snapshot for index {} holds a state machine at index {}",
                    message.snapshot->meta.index.value(), applied));
  }
  auto done = std::make_shared<std::promise<absl::Status>>();
  std::future<absl::Status> result = done->get_future();
  {
    std::lock_guard lock(mutex_);
    if (stopping_) {
      return absl::UnavailableError("queue node is shutting down");
    }
    incoming_.push_back(IncomingSnapshot{std::move(message), std::move(staged), done});
  }
  wake_.notify_one();
  return result.get();
}

void QueueNode::Propose(Command command, Done done) {
  ProposeEncoded(command.SerializeAsString(), std::move(done));
}

void QueueNode::ProposeEncoded(std::string encoded_command, Done done) {
  const absl::Time proposed = absl::Now();
  proposals_in_flight_.fetch_add(1, std::memory_order_relaxed);
  Proposal proposal{std::move(encoded_command),
                    [this, proposed, done = std::move(done)](absl::StatusOr<CommandResult> result) {
                      proposals_in_flight_.fetch_sub(1, std::memory_order_relaxed);
                      if (result.ok()) {
                        commit_seconds_.Observe(absl::ToDoubleSeconds(absl::Now() - proposed));
                      } else {
                        proposals_failed_.fetch_add(1, std::memory_order_relaxed);
                      }
                      done(std::move(result));
                    }};
  {
    std::lock_guard lock(mutex_);
    if (!stopping_) {
      proposals_.push_back(std::move(proposal));
      proposal.done = nullptr;
    }
  }
  if (proposal.done) {
    proposal.done(absl::UnavailableError("queue node is shutting down"));
    return;
  }
  wake_.notify_one();
}

void QueueNode::Receive(raft::Message message) {
  if (CarriesCheckpoint(message)) {
    return;  // its state machine comes only by InstallSnapshot
  }
  {
    std::lock_guard lock(mutex_);
    inbox_.push_back(std::move(message));
  }
  wake_.notify_one();
}

void QueueNode::Post(Task task) {
  {
    std::lock_guard lock(mutex_);
    if (!stopping_) {
      tasks_.push_back(std::move(task));
      task.done = nullptr;
    }
  }
  if (task.done) {
    task.done(absl::UnavailableError("queue node is shutting down"));
    return;
  }
  wake_.notify_one();
}

void QueueNode::ProposeConfChange(raft::ConfChange change, std::string address, StatusDone done) {
  Post(Task{[this, change, address = std::move(address)](StatusDone answer) {
              StartConfChange(change, address, std::move(answer));
            },
            std::move(done)});
}

void QueueNode::AddVoter(VoterAddress voter, StatusDone done) {
  Post(Task{[this, voter = std::move(voter)](StatusDone answer) {
              const raft::ConfChange learner{raft::ConfChangeType::kAddLearner, voter.id};
              StartConfChange(
                  learner, voter.address,
                  [this, id = voter.id, term = node_->term(), answer](absl::Status added) {
                    if (!added.ok()) {
                      answer(added);
                      return;
                    }
                    catching_up_.push_back(CatchUp{id, term, options_.catch_up_ticks, answer});
                  });
            },
            std::move(done)});
}

void QueueNode::TransferLeadership(raft::NodeId to, StatusDone done) {
  Post(Task{[this, to](StatusDone answer) mutable {
              if (to.IsNone()) {
                to = MostCaughtUpFollower();
                if (to.IsNone()) {
                  answer(absl::FailedPreconditionError(
                      "no follower to hand leadership to (not the leader, or the only voter)"));
                  return;
                }
              }
              if (absl::Status started = node_->TransferLeadership(to); !started.ok()) {
                answer(started);
              } else if (to == options_.id) {
                answer(absl::OkStatus());
              } else {
                // Within one election timeout the target leads or the leader abandons the
                // transfer; the slack covers the new leader's first message reaching us.
                transfers_.push_back(Transfer{to, 3 * options_.election_ticks, std::move(answer)});
              }
            },
            std::move(done)});
}

raft::NodeId QueueNode::MostCaughtUpFollower() const {
  raft::NodeId best;
  raft::LogIndex best_match;
  for (const raft::NodeId voter : node_->conf_state().voters) {
    if (voter == options_.id) {
      continue;
    }
    const raft::Progress* progress = node_->ProgressOf(voter);
    if (progress != nullptr && (best.IsNone() || progress->match > best_match)) {
      best = voter;
      best_match = progress->match;
    }
  }
  return best;
}

void QueueNode::StartConfChange(const raft::ConfChange& change, const std::string& address,
                                StatusDone done) {
  const bool adding = change.type == raft::ConfChangeType::kAddLearner;
  if (adding && address.empty()) {
    done(absl::InvalidArgumentError("a new member needs its gRPC address"));
    return;
  }
  if (change.type == raft::ConfChangeType::kRemove && change.node == options_.id &&
      node_->role() == raft::Role::kLeader) {
    // Raft refuses this too, but as FailedPrecondition, which callers read as "not the leader".
    done(absl::InvalidArgumentError("the leader cannot remove itself; transfer leadership first"));
    return;
  }
  absl::StatusOr<raft::LogIndex> index = node_->ProposeConfChange(
      raft::ConfChange(change.type, change.node, adding ? address : ""), options_.clock->Now());
  if (!index.ok()) {
    done(index.status());
    return;
  }
  if (adding) {
    // Before the Ready that carries the entry: the leader replicates to the learner at once.
    // Other members learn the address when they apply the entry (ApplyEntry).
    transport_->SetPeer(change.node, address);
    std::lock_guard lock(mutex_);
    addresses_[change.node] = address;
  }
  pending_.emplace(
      index->value(),
      Pending{node_->term(), [done = std::move(done)](absl::StatusOr<CommandResult> result) {
                done(result.status());
              }});
}

void QueueNode::CheckMembershipWork(bool ticked) {
  const bool leader = node_->role() == raft::Role::kLeader;
  for (auto it = catching_up_.begin(); it != catching_up_.end();) {
    const raft::Progress* progress = node_->ProgressOf(it->id);
    if (!leader || node_->term() != it->term || progress == nullptr) {
      it->done(absl::UnavailableError(
          "queue leadership or membership changed before the learner was promoted; retry"));
    } else if (progress->match >= node_->commit()) {
      StartConfChange(raft::ConfChange{raft::ConfChangeType::kPromoteVoter, it->id}, "",
                      std::move(it->done));
    } else if (ticked && --it->ticks_left <= 0) {
      it->done(absl::DeadlineExceededError("the new member did not catch up; it stays a learner"));
    } else {
      ++it;
      continue;
    }
    it = catching_up_.erase(it);
  }
  for (auto it = transfers_.begin(); it != transfers_.end();) {
    const raft::NodeId lead = node_->leader();
    if (!leader && lead == it->to) {
      it->done(absl::OkStatus());
    } else if (!lead.IsNone() && lead != it->to && (!leader || node_->lead_transferee().IsNone())) {
      it->done(absl::UnavailableError("leadership transfer abandoned; node " +
                                      std::to_string(lead.value()) + " leads"));
    } else if (ticked && --it->ticks_left <= 0) {
      it->done(absl::DeadlineExceededError("leadership transfer did not finish"));
    } else {
      ++it;
      continue;
    }
    it = transfers_.erase(it);
  }
}

QueueNodeStatus QueueNode::status() const {
  std::lock_guard lock(mutex_);
  return status_;
}

absl::StatusOr<QueueDepth> QueueNode::Depth() const {
  ASSIGN_OR_RETURN(const std::vector<DomainSummary> summaries, state_machine_->Summaries());
  QueueDepth depth;
  for (const DomainSummary& summary : summaries) {
    depth.messages += summary.queued_messages();
    depth.bytes += summary.queued_bytes();
    depth.held += summary.held_messages();
    depth.leased += summary.leased_messages();
    depth.domains += 1;
    depth.domains_down += summary.down() ? 1 : 0;
    if (summary.oldest_enqueue_ms() > 0) {
      const absl::Time enqueued = absl::FromUnixMillis(summary.oldest_enqueue_ms());
      depth.oldest =
          depth.oldest == absl::InfinitePast() ? enqueued : std::min(depth.oldest, enqueued);
    }
  }
  return depth;
}

void QueueNode::NoteContact(const raft::Message& message, absl::Time now) {
  last_contact_[message.from] = now;
  if (message.from == node_->leader()) {
    heard_commit_ = std::max(heard_commit_, message.commit);
  }
}

QueueNodeStatus QueueNode::CurrentStatus(absl::Time now) const {
  const bool leads = node_->role() == raft::Role::kLeader;
  QueueNodeStatus status;
  status.id = options_.id;
  status.leader = node_->leader();
  status.term = node_->term();
  status.commit = node_->commit();
  status.applied = node_->applied();
  status.last_index = node_->last_index();
  status.role = node_->role();
  status.is_leader = leads;
  status.synced_writes = storage_->synced_writes();
  status.entries_persisted = entries_persisted_;
  status.members = node_->effective_conf_state();
  status.leader_commit = std::max(heard_commit_, node_->commit());
  const auto contact = [this](raft::NodeId id) {
    auto it = last_contact_.find(id);
    return it == last_contact_.end() ? absl::InfinitePast() : it->second;
  };
  const auto address_of = [this](raft::NodeId id) {
    auto it = addresses_.find(id);
    return it == addresses_.end() ? std::string() : it->second;
  };
  if (!status.leader.IsNone()) {
    status.leader_address = address_of(status.leader);
    status.leader_contact = leads ? now : contact(status.leader);
  }
  if (!leads) {
    return status;
  }
  const auto add_peers = [&](const std::vector<raft::NodeId>& ids, bool learners) {
    for (raft::NodeId id : ids) {
      const raft::Progress* progress = node_->ProgressOf(id);
      if (id == options_.id || progress == nullptr) {
        continue;
      }
      status.peers.push_back(PeerProgress{
          .id = id,
          .address = address_of(id),
          .is_learner = learners,
          .match = progress->match,
          .last_contact = contact(id),
      });
    }
  };
  add_peers(status.members.voters, false);
  add_peers(status.members.learners, true);
  return status;
}

std::string QueueNode::PeerAddress(raft::NodeId id) const {
  std::lock_guard lock(mutex_);
  auto it = addresses_.find(id);
  return it == addresses_.end() ? std::string() : it->second;
}

void QueueNode::Run() {
  using SteadyClock = std::chrono::steady_clock;
  const auto tick_interval = absl::ToChronoNanoseconds(options_.tick_interval);
  auto next_tick = SteadyClock::now() + tick_interval;
  std::vector<raft::Message> messages;
  std::vector<Proposal> proposals;
  std::vector<Task> tasks;
  std::vector<IncomingSnapshot> incoming;
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait_until(lock, next_tick, [this] {
        return stopping_ || !inbox_.empty() || !proposals_.empty() || !tasks_.empty() ||
               !incoming_.empty();
      });
      if (stopping_) {
        break;
      }
      messages.swap(inbox_);
      proposals.swap(proposals_);
      tasks.swap(tasks_);
      incoming.swap(incoming_);
    }
    if (failed_) {
      const absl::Status failed =
          absl::UnavailableError("queue node has failed and stopped serving");
      for (Proposal& proposal : proposals) {
        proposal.done(failed);
      }
      for (Task& task : tasks) {
        task.done(failed);
      }
      for (IncomingSnapshot& snapshot : incoming) {
        snapshot.done->set_value(failed);
      }
      proposals.clear();
      tasks.clear();
      messages.clear();
      incoming.clear();
      continue;
    }
    const absl::Time now = options_.clock->Now();
    for (raft::Message& message : messages) {
      node_->Step(message);
      NoteContact(message, now);
    }
    messages.clear();
    for (IncomingSnapshot& snapshot : incoming) {
      node_->Step(snapshot.message);
      NoteContact(snapshot.message, now);
      installing_.push_back(std::move(snapshot));
    }
    incoming.clear();
    bool ticked = false;
    if (SteadyClock::now() >= next_tick) {
      ticked = true;
      node_->Tick(now);
      next_tick += tick_interval;
      // After a long stall, do not replay the missed ticks in a burst.
      next_tick = std::max(next_tick, SteadyClock::now());
    }
    if (!proposals.empty()) {
      std::vector<std::string> payloads;
      payloads.reserve(proposals.size());
      for (Proposal& proposal : proposals) {
        payloads.push_back(std::move(proposal.payload));
      }
      absl::StatusOr<raft::LogIndex> last = node_->Propose(payloads, now);
      if (!last.ok()) {
        for (Proposal& proposal : proposals) {
          proposal.done(last.status());
        }
      } else {
        const uint64_t first = last->value() - proposals.size() + 1;
        for (size_t i = 0; i < proposals.size(); ++i) {
          pending_.emplace(first + i, Pending{node_->term(), std::move(proposals[i].done)});
        }
      }
      proposals.clear();
    }
    for (Task& task : tasks) {
      task.run(std::move(task.done));
    }
    tasks.clear();
    ProcessReady();
    MaybeTakeSnapshot();
    AnswerInstalls();
    CheckMembershipWork(ticked);
    if (node_->role() != raft::Role::kLeader && !pending_.empty()) {
      FailPending(
          absl::UnavailableError("queue leadership changed before the command was "
                                 "applied; retry"));
    }
    std::lock_guard lock(mutex_);
    status_ = CurrentStatus(now);
  }
  const absl::Status stopping = absl::UnavailableError("queue node is shutting down");
  {
    std::lock_guard lock(mutex_);
    tasks.swap(tasks_);
    incoming.swap(incoming_);
  }
  for (Task& task : tasks) {
    task.done(stopping);
  }
  for (IncomingSnapshot& snapshot : incoming) {
    snapshot.done->set_value(stopping);
  }
  for (IncomingSnapshot& snapshot : installing_) {
    snapshot.done->set_value(stopping);
  }
  FailPending(stopping);
  for (CatchUp& catch_up : catching_up_) {
    catch_up.done(stopping);
  }
  for (Transfer& transfer : transfers_) {
    transfer.done(stopping);
  }
}

void QueueNode::ProcessReady() {
  while (!failed_ && node_->HasReady()) {
    raft::Ready ready = node_->GetReady();
    SendMessages(std::move(ready.messages));
    if (ready.snapshot.has_value()) {
      if (absl::Status installed = InstallReadySnapshot(ready.snapshot->meta); !installed.ok()) {
        Fatal(installed);
        return;
      }
    }
    if (absl::Status persisted = storage_->Persist(ready); !persisted.ok()) {
      Fatal(persisted);
      return;
    }
    entries_persisted_ += ready.entries.size();
    SendMessages(std::move(ready.messages_after_persist));
    for (const raft::Entry& entry : ready.committed_entries) {
      absl::StatusOr<CommandResult> result = ApplyEntry(entry);
      if (!result.ok()) {
        Fatal(result.status());
        return;
      }
      auto it = pending_.find(entry.index.value());
      if (it != pending_.end()) {
        if (it->second.term == entry.term) {
          it->second.done(*std::move(result));
        } else {
          it->second.done(absl::UnavailableError(
              "queue leadership changed and the command was replaced; retry"));
        }
        pending_.erase(it);
      }
    }
    node_->Advance();
  }
}

void QueueNode::SendMessages(std::vector<raft::Message> messages) {
  std::vector<raft::Message> plain;
  plain.reserve(messages.size());
  for (raft::Message& message : messages) {
    if (!CarriesCheckpoint(message)) {
      plain.push_back(std::move(message));
      continue;
    }
    const raft::LogIndex index = message.snapshot->meta.index;
    transport_->SendSnapshot(std::move(message),
                             [store = snapshots_, index] { return store->OpenForSending(index); });
  }
  transport_->Send(std::move(plain));
}

absl::Status QueueNode::InstallReadySnapshot(const raft::SnapshotMeta& meta) {
  if (meta.index <= kFoundingIndex) {
    if (state_machine_->applied_index() > meta.index.value()) {
      return absl::InternalError("the founding snapshot was restored over applied entries");
    }
    return absl::OkStatus();  // the empty state, which this node holds
  }
  auto staged = std::find_if(installing_.begin(), installing_.end(), [&](const auto& incoming) {
    return incoming.message.snapshot->meta.index == meta.index;
  });
  if (staged == installing_.end()) {
    return absl::InternalError("raft restored a snapshot whose files were not received");
  }
  const auto started = std::chrono::steady_clock::now();
  RETURN_IF_ERROR(state_machine_->ReplaceWith(staged->staged->dir()));
  staged->staged->Release();
  if (options_.test_crash == TestCrash::kAfterSnapshotSwap) {
    return absl::AbortedError("test crash after the snapshot swap");
  }
  if (state_machine_->applied_index() != meta.index.value()) {
    return absl::DataLossError("the installed snapshot holds another applied index");
  }
  RETURN_IF_ERROR(LoadAddressBook());
  // Our own checkpoint of it: if we lead one day, this is what we send.
  RETURN_IF_ERROR(PublishCheckpoint(meta.index));
  snapshot_index_ = meta.index;
  Logger().Info("installed a snapshot from the leader",
                {{"index", meta.index.value()},
                 {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - started)
                            .count()}});
  return absl::OkStatus();
}

void QueueNode::AnswerInstalls() {
  for (IncomingSnapshot& snapshot : installing_) {
    const raft::LogIndex index = snapshot.message.snapshot->meta.index;
    if (failed_) {
      snapshot.done->set_value(absl::UnavailableError("queue node has failed"));
    } else if (node_->commit() >= index) {
      snapshot.done->set_value(absl::OkStatus());  // installed, or held already
    } else {
      snapshot.done->set_value(
          absl::FailedPreconditionError("raft did not take the snapshot (stale term?)"));
    }
  }
  installing_.clear();  // destroys the staging directories that were not installed
}

absl::Status QueueNode::PublishCheckpoint(raft::LogIndex index) {
  ASSIGN_OR_RETURN(const std::string dir, snapshots_->PrepareDir(index));
  RETURN_IF_ERROR(state_machine_->CreateCheckpoint(dir));
  return snapshots_->Publish(index);
}

absl::Status QueueNode::TakeSnapshot(raft::LogIndex index) {
  if (index < snapshot_index_ || index.value() != state_machine_->applied_index()) {
    return absl::InternalError("queue snapshot requested away from the applied index");
  }
  const auto started = std::chrono::steady_clock::now();
  // The checkpoint flushes the state machine's memtables: everything up to `index` is durable
  // in its database before the log below it goes.
  RETURN_IF_ERROR(PublishCheckpoint(index));
  if (index > snapshot_index_) {
    RETURN_IF_ERROR(storage_->CreateSnapshot(index, node_->conf_state(), ""));
    snapshot_index_ = index;
  }
  const raft::LogIndex compact_to = index - options_.snapshot_keep_entries;
  if (compact_to >= storage_->FirstIndex()) {
    RETURN_IF_ERROR(storage_->Compact(compact_to));
  }
  Logger().Info("queue snapshot taken",
                {{"index", index.value()},
                 {"log_first_index", storage_->FirstIndex().value()},
                 {"ms", std::chrono::duration_cast<std::chrono::milliseconds>(
                            std::chrono::steady_clock::now() - started)
                            .count()}});
  return absl::OkStatus();
}

// A checkpoint flushes the state machine's memtables on this thread, and every commit waits
// for it: about 100 ms for 10,000 entries. So the flush starts first in RocksDB's background
// threads, and the snapshot follows in a later round, once it is done; its checkpoint then
// flushes only what was applied in between.
void QueueNode::MaybeTakeSnapshot() {
  const raft::LogIndex applied = node_->applied();
  if (failed_ || applied.Since(snapshot_index_) < options_.snapshot_entries) {
    return;
  }
  if (!snapshot_flush_started_) {
    if (absl::Status started = state_machine_->StartFlush(); !started.ok()) {
      Fatal(started);
      return;
    }
    snapshot_flush_started_ = true;
  }
  absl::StatusOr<bool> pending = state_machine_->FlushPending();
  if (!pending.ok()) {
    Fatal(pending.status());
    return;
  }
  if (*pending) {
    return;
  }
  snapshot_flush_started_ = false;
  if (absl::Status taken = TakeSnapshot(applied); !taken.ok()) {
    Fatal(taken);
  }
}

absl::StatusOr<CommandResult> QueueNode::ApplyEntry(const raft::Entry& entry) {
  if (entry.type == raft::EntryType::kNormal) {
    // The leader's empty entries apply as no-ops that still move the applied index.
    return state_machine_->Apply(entry.index.value(), entry.time, std::string_view(entry.data));
  }
  Command command;
  absl::StatusOr<raft::ConfChange> change = raft::DecodeConfChange(entry.data);
  if (change.ok() && change->type == raft::ConfChangeType::kAddLearner &&
      !change->context.empty()) {
    command.mutable_member()->set_id(change->node.value());
    command.mutable_member()->set_address(change->context);
    if (change->node != options_.id) {
      SetAddress(change->node, change->context);
    }
  } else if (change.ok() && change->type == raft::ConfChangeType::kRemove) {
    command.mutable_member()->set_id(change->node.value());
    command.mutable_member()->set_removed(true);
    if (change->node != options_.id) {
      transport_->RemovePeer(change->node);
      std::lock_guard lock(mutex_);
      addresses_.erase(change->node);
    }
  }
  return state_machine_->Apply(entry.index.value(), entry.time, command);
}

absl::Status QueueNode::LoadAddressBook() {
  ASSIGN_OR_RETURN(const auto members, state_machine_->Members());
  for (const auto& [id, address] : members) {
    if (raft::NodeId(id) != options_.id) {
      SetAddress(raft::NodeId(id), address);
    }
  }
  return absl::OkStatus();
}

void QueueNode::SetAddress(raft::NodeId id, const std::string& address) {
  transport_->SetPeer(id, address);
  std::lock_guard lock(mutex_);
  addresses_[id] = address;
}

void QueueNode::FailPending(const absl::Status& status) {
  std::map<uint64_t, Pending> pending;
  pending.swap(pending_);
  for (auto& [index, entry] : pending) {
    entry.done(status);
  }
}

void QueueNode::Fatal(const absl::Status& status) {
  failed_ = true;
  Logger().Error("queue storage failed; this node stops serving and must be restarted",
                 {{"error", std::string(status.message())}});
  FailPending(absl::UnavailableError("queue node has failed and stopped serving"));
  if (options_.on_fatal_error) {
    options_.on_fatal_error(status);
  } else {
    std::abort();
  }
}

}  // namespace backstop::queue
