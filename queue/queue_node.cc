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

namespace backstop::queue {
namespace {

const log::Logger& Logger() {
  static const log::Logger logger("queue");
  return logger;
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
  ASSIGN_OR_RETURN(node->database_, Database::Open(options.data_dir + "/raft", DatabaseOptions{}));
  ASSIGN_OR_RETURN(node->storage_, RocksDbLogStorage::Open(node->database_.get()));
  ASSIGN_OR_RETURN(node->state_machine_,
                   QueueStateMachine::Open(options.data_dir + "/state", options.state_machine));

  const bool fresh = node->storage_->LastIndex() == raft::LogIndex() &&
                     node->storage_->GetHardState() == raft::HardState{};
  if (fresh) {
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

  raft::NodeOptions raft_options;
  raft_options.id = options.id;
  raft_options.election_ticks = options.election_ticks;
  raft_options.heartbeat_ticks = options.heartbeat_ticks;
  raft_options.applied = raft::LogIndex(node->state_machine_->applied_index());
  raft_options.random_seed = options.id.value() * 0x9E3779B97F4A7C15ULL ^
                             static_cast<uint64_t>(absl::ToUnixNanos(options.clock->Now()));
  ASSIGN_OR_RETURN(node->node_, raft::Node::Create(raft_options, node->storage_.get()));

  for (const VoterAddress& peer : options.voters) {
    if (peer.id != options.id) {
      transport->SetPeer(peer.id, peer.address);
    }
  }
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
}

void QueueNode::Propose(Command command, Done done) {
  Proposal proposal{command.SerializeAsString(), std::move(done)};
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
  {
    std::lock_guard lock(mutex_);
    inbox_.push_back(std::move(message));
  }
  wake_.notify_one();
}

QueueNodeStatus QueueNode::status() const {
  std::lock_guard lock(mutex_);
  return status_;
}

void QueueNode::Run() {
  using SteadyClock = std::chrono::steady_clock;
  const auto tick_interval = absl::ToChronoNanoseconds(options_.tick_interval);
  auto next_tick = SteadyClock::now() + tick_interval;
  std::vector<raft::Message> messages;
  std::vector<Proposal> proposals;
  while (true) {
    {
      std::unique_lock lock(mutex_);
      wake_.wait_until(lock, next_tick,
                       [this] { return stopping_ || !inbox_.empty() || !proposals_.empty(); });
      if (stopping_) {
        break;
      }
      messages.swap(inbox_);
      proposals.swap(proposals_);
    }
    if (failed_) {
      for (Proposal& proposal : proposals) {
        proposal.done(absl::UnavailableError("queue node has failed and stopped serving"));
      }
      proposals.clear();
      messages.clear();
      continue;
    }
    const absl::Time now = options_.clock->Now();
    for (raft::Message& message : messages) {
      node_->Step(message);
    }
    messages.clear();
    if (SteadyClock::now() >= next_tick) {
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
    ProcessReady();
    if (node_->role() != raft::Role::kLeader && !pending_.empty()) {
      FailPending(
          absl::UnavailableError("queue leadership changed before the command was "
                                 "applied; retry"));
    }
    std::lock_guard lock(mutex_);
    status_ = QueueNodeStatus{
        .id = options_.id,
        .leader = node_->leader(),
        .term = node_->term(),
        .commit = node_->commit(),
        .applied = node_->applied(),
        .is_leader = node_->role() == raft::Role::kLeader,
        .synced_writes = storage_->synced_writes(),
        .entries_persisted = entries_persisted_,
    };
  }
  FailPending(absl::UnavailableError("queue node is shutting down"));
}

void QueueNode::ProcessReady() {
  while (!failed_ && node_->HasReady()) {
    raft::Ready ready = node_->GetReady();
    transport_->Send(std::move(ready.messages));
    if (ready.snapshot.has_value() && !ready.snapshot->data.empty()) {
      // The log is never compacted past the founding snapshot yet, so a state-machine image
      // can only come from a peer running a newer version.
      Fatal(absl::UnimplementedError("installing a queue snapshot is not supported yet"));
      return;
    }
    if (absl::Status persisted = storage_->Persist(ready); !persisted.ok()) {
      Fatal(persisted);
      return;
    }
    entries_persisted_ += ready.entries.size();
    transport_->Send(std::move(ready.messages_after_persist));
    for (const raft::Entry& entry : ready.committed_entries) {
      // Configuration changes and the leader's empty entries carry no queue command; applying
      // them empty still moves the state machine's applied index.
      const std::string_view payload =
          entry.type == raft::EntryType::kNormal ? std::string_view(entry.data) : "";
      absl::StatusOr<CommandResult> result =
          state_machine_->Apply(entry.index.value(), entry.time, payload);
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
