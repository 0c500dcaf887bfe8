#include "tests/sim/queue_harness.h"

#include <algorithm>
#include <filesystem>
#include <string_view>
#include <system_error>
#include <utility>

#include "queue/message_id.h"

namespace backstop::raft::sim {
namespace {

constexpr const char* kDomains[] = {"a.example", "b.example", "c.example"};
constexpr const char* kWorkerNames[] = {"w1", "w2", "w3"};
constexpr uint64_t kInvariantPeriod = 10;

uint64_t Fnv(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h = (h ^ c) * 0x100000001b3ULL;
  }
  return h | 1;  // 0 marks "not recorded"
}

std::string Hex(std::string_view id) {
  absl::StatusOr<queue::MessageId> parsed = queue::MessageId::FromBytes(id);
  return parsed.ok() ? parsed->ToString() : "?";
}

void Record(std::vector<uint64_t>& table, uint64_t index, uint64_t value) {
  if (table.size() <= index) {
    table.resize(index + 1, 0);
  }
  table[index] = value;
}

uint64_t Lookup(const std::vector<uint64_t>& table, uint64_t index) {
  return index < table.size() ? table[index] : 0;
}

}  // namespace

QueueHarness::QueueHarness(const QueueHarnessOptions& options)
    : options_(options), rng_(options.seed ^ 0x51554555ULL) {
  for (const char* name : kWorkerNames) {
    Worker worker;
    worker.name = name;
    workers_.push_back(std::move(worker));
  }
}

absl::StatusOr<std::unique_ptr<QueueHarness>> QueueHarness::Create(
    const QueueHarnessOptions& options) {
  std::error_code error;
  std::filesystem::remove_all(options.dir, error);
  std::filesystem::create_directories(options.dir, error);
  if (error) {
    return absl::InternalError("create " + options.dir + ": " + error.message());
  }
  return std::unique_ptr<QueueHarness>(new QueueHarness(options));
}

QueueHarness::~QueueHarness() {
  replicas_.clear();
  std::error_code error;
  std::filesystem::remove_all(options_.dir, error);
}

void QueueHarness::Fail(const std::string& what) {
  if (violation_.empty()) {
    violation_ = what;
  }
}

std::string QueueHarness::DirOf(NodeId id) const {
  return options_.dir + "/n" + std::to_string(id.value());
}

uint64_t QueueHarness::Below(uint64_t n) {
  return static_cast<uint64_t>((static_cast<unsigned __int128>(rng_()) * n) >> 64);
}

std::string QueueHarness::MessageIdOf(uint64_t number) {
  return std::string(
      queue::MessageId::Make(absl::FromUnixSeconds(1'700'000'000), 7, number).bytes());
}

std::string QueueHarness::DomainOf(uint64_t number) const {
  return kDomains[number % std::size(kDomains)];
}

// ---- nodes ----------------------------------------------------------------------------------

absl::StatusOr<LogIndex> QueueHarness::Open(NodeId id) {
  Replica& replica = replicas_[id];
  replica.machine.reset();
  queue::StateMachineOptions sm_options;
  // Cluster time runs 10 ms a step: backoff and leases must play out within a run.
  sm_options.retry_initial = absl::Milliseconds(300);
  sm_options.retry_max = absl::Seconds(2);
  absl::StatusOr<std::unique_ptr<queue::QueueStateMachine>> machine =
      queue::QueueStateMachine::Open(DirOf(id), sm_options);
  if (!machine.ok()) {
    return machine.status();
  }
  replica.machine = *std::move(machine);
  replica.model_checked_at = 0;
  return LogIndex(replica.machine->applied_index());
}

void QueueHarness::Close(NodeId id) {
  auto it = replicas_.find(id);
  if (it == replicas_.end()) {
    return;
  }
  for (auto& [index, pending] : it->second.pending) {
    Abandon(pending);
  }
  it->second.pending.clear();
  it->second.machine.reset();
}

absl::StatusOr<std::string> QueueHarness::Checkpoint(NodeId id) {
  Replica& replica = replicas_.at(id);
  const std::string dir = options_.dir + "/ckpt-n" + std::to_string(id.value()) + "-" +
                          std::to_string(replica.machine->applied_index()) + "-" +
                          std::to_string(stats_.checkpoints++);
  if (absl::Status status = replica.machine->CreateCheckpoint(dir); !status.ok()) {
    return status;
  }
  return dir;
}

absl::Status QueueHarness::Install(NodeId id, const std::string& checkpoint, LogIndex index) {
  Replica& replica = replicas_.at(id);
  if (checkpoint.empty()) {
    // The founding snapshot: the empty state.
    if (replica.machine->applied_index() > 1) {
      return absl::InternalError("founding snapshot offered to a node that applied entries");
    }
    return absl::OkStatus();
  }
  replica.machine.reset();
  const std::string incoming = DirOf(id) + ".incoming";
  std::error_code error;
  std::filesystem::remove_all(incoming, error);
  // Checkpoints are shared by every node that installs them: install a copy.
  std::filesystem::copy(checkpoint, incoming, std::filesystem::copy_options::recursive, error);
  if (error) {
    return absl::InternalError("copy " + checkpoint + ": " + error.message());
  }
  if (absl::Status status = queue::QueueStateMachine::InstallCheckpoint(incoming, DirOf(id));
      !status.ok()) {
    return status;
  }
  absl::StatusOr<LogIndex> applied = Open(id);
  if (!applied.ok()) {
    return applied.status();
  }
  if (*applied != index) {
    return absl::InternalError("installed checkpoint holds index " +
                               std::to_string(applied->value()) + ", not " +
                               std::to_string(index.value()));
  }
  ++stats_.installs;
  return absl::OkStatus();
}

// ---- clients --------------------------------------------------------------------------------

void QueueHarness::Propose(NodeId id, Node& node, absl::Time now) {
  const size_t count = 1 + Below(3);
  std::vector<std::string> payloads;
  std::vector<Pending> pendings;
  for (size_t k = 0; k < count; ++k) {
    Pending pending;
    pending.number = next_proposal_++;
    payloads.push_back(NextCommand(pending).SerializeAsString());
    pendings.push_back(std::move(pending));
  }
  absl::StatusOr<LogIndex> last = node.Propose(payloads, now);
  if (!last.ok()) {
    for (const Pending& pending : pendings) {
      Abandon(pending);
    }
    return;
  }
  Replica& replica = replicas_.at(id);
  const uint64_t first = last->value() - pendings.size() + 1;
  for (size_t k = 0; k < pendings.size(); ++k) {
    pendings[k].term = node.term();
    replica.pending.emplace(first + k, std::move(pendings[k]));
  }
}

queue::Command QueueHarness::NextCommand(Pending& pending) {
  queue::Command command;
  const uint64_t roll = Below(100);
  Worker* worker = nullptr;
  if (roll >= 45 && roll < 92) {
    pending.worker = static_cast<int>(Below(workers_.size()));
    worker = &workers_[pending.worker];
  }
  if (worker != nullptr && !worker->held.empty() && !worker->complete_in_flight) {
    // Complete some of what this worker holds; a worker sometimes forgets its leases (a
    // crash), letting them expire.
    if (Below(20) == 0) {
      worker->held.clear();
    } else {
      pending.kind = Kind::kComplete;
      worker->complete_in_flight = true;
      const size_t n = std::min<size_t>(worker->held.size(), 1 + Below(3));
      for (size_t k = 0; k < n; ++k) {
        const Held& held = worker->held[k];
        queue::CompletionItem& item = *command.mutable_complete()->add_items();
        item.set_id(held.id);
        item.set_lease_token(held.token);
        if (Below(4) == 0) {
          item.mutable_retry()->set_error("451 try later");
          item.mutable_retry()->set_retry_at_ms(Below(2) == 0 ? 0 : 1'700'000'000'000);
        } else {
          item.mutable_delivered();
        }
        pending.items.push_back(held);
      }
      return command;
    }
  }
  if (worker != nullptr && !worker->lease_in_flight) {
    pending.kind = Kind::kLease;
    worker->lease_in_flight = true;
    queue::LeaseEntries& lease = *command.mutable_lease();
    lease.set_worker_id(worker->name);
    lease.set_max_entries(static_cast<uint32_t>(1 + Below(4)));
    lease.set_max_per_domain(static_cast<uint32_t>(Below(3)));
    lease.set_lease_duration_ms(static_cast<int64_t>(200 + Below(2800)));
    return command;
  }
  if (roll >= 92) {
    // The operator.
    pending.kind = Kind::kOperator;
    queue::Selector selector;
    const std::string domain = kDomains[Below(std::size(kDomains))];
    if (next_message_ > 0 && Below(2) == 0) {
      for (int k = 0; k < 2; ++k) {
        selector.add_ids(MessageIdOf(Below(next_message_)));
      }
    } else {
      selector.set_domain(domain);
    }
    switch (Below(3)) {
      case 0:
        *command.mutable_hold()->mutable_selector() = selector;
        break;
      case 1:
        *command.mutable_release()->mutable_selector() = selector;
        break;
      default:
        command.mutable_flush()->set_domain(domain);
        break;
    }
    return command;
  }
  // An appender: retries of unacknowledged messages first, then new ones.
  pending.kind = Kind::kAppend;
  pending.worker = 0;
  const size_t n = 1 + Below(3);
  while (pending.messages.size() < n) {
    uint64_t number = 0;
    if (!to_append_.empty()) {
      number = to_append_.back();
      to_append_.pop_back();
    } else {
      number = next_message_++;
    }
    appending_.insert(number);
    pending.messages.push_back(number);
    queue::QueueEntry& entry = *command.mutable_append()->add_entries();
    entry.set_id(MessageIdOf(number));
    entry.set_domain(DomainOf(number));
    entry.mutable_envelope()->set_reverse_path("sender@origin.example");
    entry.mutable_envelope()->add_recipients()->set_address("user@" + DomainOf(number));
    entry.set_message("Subject: m" + std::to_string(number) + "\r\n\r\n" +
                      std::string(Below(200), 'x'));
  }
  return command;
}

void QueueHarness::Abandon(const Pending& pending) {
  switch (pending.kind) {
    case Kind::kAppend:
      for (uint64_t number : pending.messages) {
        appending_.erase(number);
        to_append_.push_back(number);
      }
      break;
    case Kind::kLease:
      // The worker never learns what it got: those leases expire.
      workers_[pending.worker].lease_in_flight = false;
      break;
    case Kind::kComplete:
      // Held items stay held; the worker completes them again later.
      workers_[pending.worker].complete_in_flight = false;
      break;
    case Kind::kOperator:
      break;
  }
}

void QueueHarness::Acknowledge(const Pending& pending, uint64_t index,
                               const queue::CommandResult& result) {
  switch (pending.kind) {
    case Kind::kAppend: {
      if (result.append().outcomes_size() != static_cast<int>(pending.messages.size())) {
        Fail("append at index " + std::to_string(index) + " answered the wrong number of outcomes");
        return;
      }
      for (size_t k = 0; k < pending.messages.size(); ++k) {
        const queue::AppendOutcome& outcome = result.append().outcomes(static_cast<int>(k));
        const std::string id = MessageIdOf(pending.messages[k]);
        appending_.erase(pending.messages[k]);
        if (outcome.code() != queue::OK && outcome.code() != queue::ALREADY_EXISTS) {
          Fail("append of " + Hex(id) + " refused: code " + std::to_string(outcome.code()));
          return;
        }
        if (!acked_.contains(id)) {
          acked_[id] = index;
          ++stats_.acked_appends;
        }
      }
      break;
    }
    case Kind::kLease: {
      Worker& worker = workers_[pending.worker];
      worker.lease_in_flight = false;
      for (const queue::LeasedDomain& domain : result.lease().domains()) {
        for (const queue::LeasedEntry& leased : domain.entries()) {
          worker.held.push_back(Held{leased.entry().id(), leased.lease().token()});
          ++stats_.acked_leases;
        }
      }
      break;
    }
    case Kind::kComplete: {
      Worker& worker = workers_[pending.worker];
      worker.complete_in_flight = false;
      for (const queue::CompletionOutcome& outcome : result.complete().outcomes()) {
        if (outcome.code() == queue::STALE_LEASE) {
          ++stats_.stale_completions;
        }
        auto it = std::find_if(worker.held.begin(), worker.held.end(),
                               [&outcome](const Held& h) { return h.id == outcome.id(); });
        if (it != worker.held.end()) {
          worker.held.erase(it);
        }
      }
      for (size_t k = 0; k < pending.items.size(); ++k) {
        if (result.complete().outcomes(static_cast<int>(k)).code() == queue::OK &&
            !live_.contains(pending.items[k].id)) {
          ++stats_.delivered;
        }
      }
      break;
    }
    case Kind::kOperator:
      break;
  }
}

// ---- applying and checking ------------------------------------------------------------------

void QueueHarness::Apply(NodeId id, const Entry& e, const Node& node) {
  Replica& replica = replicas_.at(id);
  const uint64_t index = e.index.value();
  std::string_view payload = e.type == EntryType::kNormal ? std::string_view(e.data) : "";
  bool compare_result = true;
  if (options_.fault == QueueTestFault::kSkipOneEntry && !skipped_ && !payload.empty() &&
      fresh_appends_.contains(index)) {
    // A replica (not the first to apply it) loses one command that stored a new message (a
    // command that changed nothing could be lost unnoticed). Its result is not compared,
    // so that only the comparison of states can notice.
    skipped_ = true;
    compare_result = false;
    payload = "";
  }
  absl::StatusOr<queue::CommandResult> result = replica.machine->Apply(index, e.time, payload);
  if (!result.ok()) {
    Fail("n" + std::to_string(id.value()) + " apply " + std::to_string(index) +
         " failed: " + std::string(result.status().message()));
    return;
  }
  if (result->code() == queue::DUPLICATE_INDEX) {
    Fail("n" + std::to_string(id.value()) + " was handed index " + std::to_string(index) +
         " it had applied already");
    return;
  }
  replica.applied_this_step = true;
  const uint64_t result_hash = Fnv(result->SerializeAsString());
  if (Lookup(result_hashes_, index) == 0) {
    Record(result_hashes_, index, result_hash);
    if (index != model_index_ + 1 && model_index_ != 0) {
      Fail("the model is at " + std::to_string(model_index_) + " and n" +
           std::to_string(id.value()) + " first applied " + std::to_string(index));
      return;
    }
    queue::Command command;
    if (!command.ParseFromArray(payload.data(), static_cast<int>(payload.size()))) {
      Fail("unparsable command at index " + std::to_string(index));
      return;
    }
    ModelApply(index, e.time, command, *result);
  } else {
    if (compare_result && Lookup(result_hashes_, index) != result_hash) {
      Fail("n" + std::to_string(id.value()) + " got a different result for index " +
           std::to_string(index));
      return;
    }
  }

  auto it = replica.pending.find(index);
  if (it != replica.pending.end()) {
    Pending pending = std::move(it->second);
    replica.pending.erase(it);
    applied_proposals_ = std::max(applied_proposals_, pending.number + 1);
    // QueueNode's rule: answered only when applied on the proposer while it still leads the
    // entry's term; otherwise the client retries.
    if (pending.term == e.term && node.role() == Role::kLeader && node.term() == e.term) {
      Acknowledge(pending, index, *result);
      if (pending.kind == Kind::kAppend) {
        for (uint64_t number : pending.messages) {
          if (!live_.contains(MessageIdOf(number)) && model_index_ == index) {
            Fail("acknowledged append of " + Hex(MessageIdOf(number)) + " at index " +
                 std::to_string(index) + " is not live in the model");
          }
        }
      }
    } else {
      Abandon(pending);
    }
  }
}

void QueueHarness::ModelApply(uint64_t index, absl::Time time, const queue::Command& command,
                              const queue::CommandResult& result) {
  model_index_ = index;
  model_now_ms_ = std::max(model_now_ms_, absl::ToUnixMillis(time));
  const std::string where = "model at index " + std::to_string(index) + ": ";
  switch (command.command_case()) {
    case queue::Command::kAppend: {
      std::set<std::string> seen;
      for (int k = 0; k < command.append().entries_size(); ++k) {
        const queue::QueueEntry& entry = command.append().entries(k);
        const queue::Code expected = live_.contains(entry.id()) || seen.contains(entry.id())
                                         ? queue::ALREADY_EXISTS
                                         : queue::OK;
        seen.insert(entry.id());
        if (k >= result.append().outcomes_size() ||
            result.append().outcomes(k).code() != expected) {
          Fail(where + "append of " + Hex(entry.id()) + " got the wrong outcome");
          return;
        }
        if (expected == queue::OK) {
          live_[entry.id()].domain = entry.domain();
          fresh_appends_.insert(index);
        }
      }
      break;
    }
    case queue::Command::kLease: {
      for (auto& [id, entry] : live_) {
        if (entry.lease.has_value() && entry.lease->expiry_ms <= model_now_ms_) {
          entry.lease.reset();
        }
      }
      for (const queue::LeasedDomain& domain : result.lease().domains()) {
        for (const queue::LeasedEntry& leased : domain.entries()) {
          auto it = live_.find(leased.entry().id());
          if (it == live_.end()) {
            Fail(where + "leased " + Hex(leased.entry().id()) + ", which is not queued");
            return;
          }
          if (it->second.lease.has_value()) {
            Fail(where + Hex(it->first) + " leased to " + command.lease().worker_id() + " while " +
                 it->second.lease->worker + " holds an unexpired lease (token " +
                 std::to_string(it->second.lease->token) + ", expiry " +
                 std::to_string(it->second.lease->expiry_ms) + " > now " +
                 std::to_string(model_now_ms_) + ")");
            return;
          }
          if (it->second.held) {
            Fail(where + "leased held entry " + Hex(it->first));
            return;
          }
          const Lease lease{index, command.lease().worker_id(),
                            model_now_ms_ + command.lease().lease_duration_ms()};
          if (leased.lease().token() != lease.token ||
              leased.lease().expiry_ms() != lease.expiry_ms ||
              leased.lease().worker_id() != lease.worker) {
            Fail(where + "lease of " + Hex(it->first) + " has the wrong token or expiry");
            return;
          }
          it->second.lease = lease;
        }
      }
      break;
    }
    case queue::Command::kComplete: {
      for (int k = 0; k < command.complete().items_size(); ++k) {
        const queue::CompletionItem& item = command.complete().items(k);
        auto it = live_.find(item.id());
        queue::Code expected = queue::OK;
        if (it == live_.end()) {
          expected = queue::NOT_FOUND;
        } else if (!it->second.lease.has_value() || it->second.lease->token != item.lease_token()) {
          expected = queue::STALE_LEASE;
        }
        if (k >= result.complete().outcomes_size() ||
            result.complete().outcomes(k).code() != expected) {
          Fail(where + "completion of " + Hex(item.id()) + " got the wrong outcome");
          return;
        }
        if (expected != queue::OK) {
          continue;
        }
        if (item.has_delivered()) {
          live_.erase(it);
        } else {
          it->second.lease.reset();
        }
      }
      break;
    }
    case queue::Command::kHold:
    case queue::Command::kRelease: {
      const bool hold = command.has_hold();
      const queue::Selector& selector =
          hold ? command.hold().selector() : command.release().selector();
      for (auto& [id, entry] : live_) {
        const bool selected = selector.ids().empty()
                                  ? entry.domain == selector.domain()
                                  : std::find(selector.ids().begin(), selector.ids().end(), id) !=
                                        selector.ids().end();
        if (selected) {
          entry.held = hold;
        }
      }
      break;
    }
    default:
      break;
  }
}

void QueueHarness::CheckAgainstModel(NodeId id, Replica& replica) {
  ++stats_.model_checks;
  std::map<std::string, const queue::StoredEntry*> stored;
  std::vector<queue::ListEntriesResponse> pages;
  for (const char* domain : kDomains) {
    queue::ListEntriesRequest request;
    request.set_domain(domain);
    request.set_page_size(100'000);
    absl::StatusOr<queue::ListEntriesResponse> page = replica.machine->ListEntries(request);
    if (!page.ok()) {
      Fail("list entries: " + std::string(page.status().message()));
      return;
    }
    pages.push_back(*std::move(page));
  }
  for (const queue::ListEntriesResponse& page : pages) {
    for (const queue::StoredEntry& entry : page.entries()) {
      stored[entry.id()] = &entry;
    }
  }
  const std::string who =
      "n" + std::to_string(id.value()) + " at index " + std::to_string(model_index_) + ": ";
  for (const auto& [message, entry] : live_) {
    auto it = stored.find(message);
    if (it == stored.end()) {
      Fail(who + Hex(message) + (acked_.contains(message) ? " (acknowledged)" : "") +
           " is missing");
      return;
    }
    const queue::StoredEntry& s = *it->second;
    const bool same_lease = entry.lease.has_value()
                                ? s.has_lease() && s.lease().token() == entry.lease->token &&
                                      s.lease().worker_id() == entry.lease->worker &&
                                      s.lease().expiry_ms() == entry.lease->expiry_ms
                                : !s.has_lease();
    if (s.held() != entry.held || !same_lease) {
      Fail(who + Hex(message) + " differs from the model (held or lease)");
      return;
    }
  }
  if (stored.size() != live_.size()) {
    Fail(who + "holds " + std::to_string(stored.size()) + " entries, the model " +
         std::to_string(live_.size()));
  }
}

void QueueHarness::CheckDigest(NodeId id, Replica& replica) {
  const uint64_t index = replica.machine->applied_index();
  absl::StatusOr<uint64_t> digest = replica.machine->ContentDigest();
  if (!digest.ok()) {
    Fail("digest failed: " + std::string(digest.status().message()));
    return;
  }
  const uint64_t recorded = Lookup(digests_, index);
  if (recorded == 0) {
    Record(digests_, index, *digest | 1);
    return;
  }
  ++stats_.digest_checks;
  if (recorded != (*digest | 1)) {
    Fail("replica digest differs: n" + std::to_string(id.value()) + " at applied index " +
         std::to_string(index) + " holds a different queue state from another replica there");
  }
}

void QueueHarness::EndStep(const std::map<NodeId, const Node*>& nodes) {
  ++steps_;
  for (const auto& [id, node] : nodes) {
    auto it = replicas_.find(id);
    if (it == replicas_.end() || !violation_.empty()) {
      continue;
    }
    Replica& replica = it->second;
    if (node == nullptr) {
      continue;
    }
    if (node->role() != Role::kLeader) {
      for (auto& [index, pending] : replica.pending) {
        Abandon(pending);
      }
      replica.pending.clear();
    }
    const uint64_t applied = replica.machine->applied_index();
    if (replica.applied_this_step) {
      replica.applied_this_step = false;
      replica.invariants_unchecked = true;
      CheckDigest(id, replica);
    }
    // CheckInvariants reads every message body: every few steps only.
    if (replica.invariants_unchecked && steps_ % kInvariantPeriod == 0) {
      replica.invariants_unchecked = false;
      if (absl::Status status = replica.machine->CheckInvariants(); !status.ok()) {
        Fail("n" + std::to_string(id.value()) +
             " state machine invariants: " + std::string(status.message()));
        continue;
      }
    }
    if (applied == model_index_ && replica.model_checked_at != applied) {
      replica.model_checked_at = applied;
      CheckAgainstModel(id, replica);
    }
  }
}

}  // namespace backstop::raft::sim
