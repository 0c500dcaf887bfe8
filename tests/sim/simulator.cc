#include "tests/sim/simulator.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <random>
#include <set>
#include <string>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

#include "queue/raft/log_storage.h"

namespace backstop::raft::sim {
namespace {

constexpr int kElectionTicks = 10;
// Every kCalmPeriod steps the last kCalmLength are calm: everyone up, no partitions, no loss.
constexpr int kCalmPeriod = 500;
constexpr int kCalmLength = 120;
// Within this many steps of a calm window opening, a new proposal must commit.
constexpr int kProgressBound = 110;
constexpr int kMaxAddedNodes = 3;
const absl::Time kEpoch = absl::FromUnixSeconds(1'700'000'000);
// State-machine digest of the bootstrap snapshot (index 1); real digests are never 0.
constexpr uint64_t kBootChain = 1;

uint64_t Mix(uint64_t h, uint64_t v) {
  uint64_t z = h ^ (v + 0x9e3779b97f4a7c15ULL + (h << 6) + (h >> 2));
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

uint64_t HashString(std::string_view s) {
  uint64_t h = 0xcbf29ce484222325ULL;
  for (unsigned char c : s) {
    h = (h ^ c) * 0x100000001b3ULL;
  }
  return h;
}

// Bounded draws written out by hand: std::uniform_int_distribution differs between standard
// libraries, and a seed must replay the same run everywhere.
class Rng {
 public:
  explicit Rng(uint64_t seed) : engine_(seed) {}
  uint64_t Next() { return engine_(); }
  uint64_t Below(uint64_t n) {
    return static_cast<uint64_t>((static_cast<unsigned __int128>(engine_()) * n) >> 64);
  }
  bool OneIn(uint64_t n) { return Below(n) == 0; }
  bool Percent(uint64_t p) { return Below(100) < p; }

 private:
  std::mt19937_64 engine_;
};

// The simulated application state: a digest chain over every applied entry.
struct Image {
  LogIndex index;
  uint64_t chain = 0;
  absl::Time time = absl::UnixEpoch();
};

std::string EncodeImage(const Image& image) {
  return std::to_string(image.index.value()) + " " + std::to_string(image.chain) + " " +
         std::to_string(absl::ToUnixMicros(image.time));
}

// Queue mode: the snapshot's data names a state-machine checkpoint after the image.
std::string CheckpointOf(const Snapshot& snapshot) {
  size_t at = 0;
  for (int field = 0; field < 3; ++field) {
    at = snapshot.data.find(' ', at);
    if (at == std::string::npos) {
      return "";
    }
    ++at;
  }
  return snapshot.data.substr(at);
}

Image DecodeImage(const Snapshot& snapshot) {
  Image image;
  image.index = snapshot.meta.index;
  image.time = snapshot.meta.time;
  if (snapshot.data.empty()) {
    image.chain = snapshot.meta.index == LogIndex(0) ? 0 : kBootChain;
    return image;
  }
  uint64_t index = 0;
  uint64_t chain = 0;
  long long micros = 0;
  if (std::sscanf(snapshot.data.c_str(), "%lu %lu %lld", &index, &chain, &micros) == 3) {
    image.index = LogIndex(index);
    image.chain = chain;
    image.time = absl::FromUnixMicros(micros);
  }
  return image;
}

struct SimNode {
  NodeId id;
  std::unique_ptr<MemoryLogStorage> storage;  // survives crashes: only persisted data
  std::unique_ptr<Node> node;                 // null while crashed
  std::optional<Ready> pending;               // handed out, not yet persisted
  Image sm;                                   // volatile: rebuilt from the snapshot
  int64_t clock_offset_ms = 0;
  int tick_percent = 100;  // chance of a tick per step; above 100, of a second tick
  bool slow_disk = false;
  int down_until = 0;
  LogIndex checked_commit;
  // The commit index as of the last synced write. A Ready that changes nothing durable but the
  // commit index is written without an fsync (RocksDbLogStorage::Persist), so a crash may take
  // the storage back to this value.
  LogIndex synced_commit;

  bool alive() const { return node != nullptr; }
};

struct InFlight {
  int deliver_at;
  uint64_t seq;
  Message message;
};

struct CommittedEntry {
  Term term;
  Term observed_in;  // smallest term of a node seen holding it committed
  bool known = false;
};

class Simulation {
 public:
  explicit Simulation(const SimOptions& options) : options_(options), rng_(options.seed) {}

  SimResult Run() {
    if (options_.mode == SimMode::kQueue) {
      const std::string parent = options_.scratch_dir.empty()
                                     ? std::filesystem::temp_directory_path().string()
                                     : options_.scratch_dir;
      absl::StatusOr<std::unique_ptr<QueueHarness>> harness =
          QueueHarness::Create({.seed = options_.seed,
                                .dir = parent + "/backstop-qsim-" + std::to_string(getpid()) + "-" +
                                       std::to_string(options_.seed),
                                .fault = options_.queue_fault});
      if (!harness.ok()) {
        Fail("queue harness: " + std::string(harness.status().message()));
        return result_;
      }
      queue_ = *std::move(harness);
    }
    ConfState founders;
    for (int i = 1; i <= options_.nodes; ++i) {
      founders.voters.emplace_back(i);
    }
    for (int i = 1; i <= options_.nodes; ++i) {
      SimNode& n = AddNode(NodeId(i));
      if (!Bootstrap(*n.storage, founders).ok()) {
        Fail("bootstrap failed");
      }
      n.clock_offset_ms = static_cast<int64_t>(rng_.Below(10'000)) - 5'000;
      Start(n);
    }
    next_id_ = static_cast<uint64_t>(options_.nodes) + 1;
    bool was_calm = false;
    for (step_ = 0; step_ < options_.steps && result_.ok; ++step_) {
      const bool calm = step_ % kCalmPeriod >= kCalmPeriod - kCalmLength;
      calm_ = calm;
      if (calm && !was_calm) {
        EnterCalm();
      }
      was_calm = calm;
      if (!calm) {
        ChaosEvents();
      }
      ClientEvents();
      TickNodes();
      DeliverMessages();
      for (auto& [id, n] : nodes_) {
        ProcessReady(n);
      }
      CheckStep();
      CheckCommittedDurable();
      if (queue_ != nullptr) {
        QueueEndStep();
      }
      if (calm && step_ == calm_start_ + kProgressBound && !progress_seen_ && result_.ok &&
          options_.pre_vote == PreVote::kEnabled &&
          options_.check_quorum == CheckQuorum::kEnabled) {
        Fail("no commit within " + std::to_string(kProgressBound) +
             " steps of a calm, connected cluster; " + Status());
      }
    }
    result_.trace_hash = trace_;
    result_.stats.committed = max_committed_.value();
    if (queue_ != nullptr) {
      result_.stats.queue = queue_->stats();
      queue_.reset();
    }
    return result_;
  }

 private:
  // ---- helpers ---------------------------------------------------------------------------

  void Fail(const std::string& what) {
    if (!result_.ok) {
      return;
    }
    result_.ok = false;
    result_.violation =
        "seed " + std::to_string(options_.seed) + " step " + std::to_string(step_) + ": " + what;
  }

  template <typename... Args>
  void Log(const char* format, Args... args) {
    if (options_.verbose) {
      std::fprintf(stderr, "[%d] ", step_);
      std::fprintf(stderr, format, args...);
      std::fputc('\n', stderr);
    }
  }

  std::string Status() const {
    std::string out;
    for (const auto& [id, n] : nodes_) {
      out += "n" + std::to_string(id.value());
      if (!n.alive()) {
        out += "(down) ";
        continue;
      }
      static constexpr const char* kRoles[] = {"F", "P", "C", "L"};
      out += "(" + std::string(kRoles[static_cast<int>(n.node->role())]) +
             " t=" + std::to_string(n.node->term().value()) +
             " c=" + std::to_string(n.node->commit().value()) +
             " last=" + std::to_string(n.node->last_index().value()) +
             " voters=" + std::to_string(n.node->conf_state().voters.size()) + ") ";
    }
    return out;
  }

  SimNode& AddNode(NodeId id) {
    SimNode& n = nodes_[id];
    n.id = id;
    n.storage = std::make_unique<MemoryLogStorage>();
    return n;
  }

  absl::Time NowOf(const SimNode& n) const {
    return kEpoch + absl::Milliseconds(int64_t{step_} * 10 + n.clock_offset_ms);
  }

  void Start(SimNode& n) {
    NodeOptions options;
    options.id = n.id;
    options.election_ticks = kElectionTicks;
    options.heartbeat_ticks = 1;
    options.max_inflight_appends = 8;
    static constexpr uint64_t kAppendBytes[] = {1, 256, 4096};  // 1: one entry per append
    options.max_bytes_per_append = kAppendBytes[rng_.Below(3)];
    options.random_seed = rng_.Next();
    options.test_faults = options_.faults;
    options.pre_vote = options_.pre_vote;
    options.check_quorum = options_.check_quorum;
    std::optional<Image> image;
    if (queue_ != nullptr) {
      image = OpenQueueReplica(n);
      if (!result_.ok) {
        return;
      }
      if (image.has_value()) {
        options.applied = image->index;
        // QueueNode::ReconcileAppliedIndex: the replica kept entries applied past a commit
        // index the crash lost; they are in the log, and committed.
        if (HardState hard_state = n.storage->GetHardState();
            image->index > std::max(hard_state.commit, n.storage->GetSnapshot()->meta.index) &&
            image->index <= n.storage->LastIndex()) {
          Log("n%lu takes its applied index %lu as committed (commit index %lu)", n.id.value(),
              image->index.value(), hard_state.commit.value());
          hard_state.commit = image->index;
          (void)n.storage->SetHardState(hard_state);
          ++result_.stats.applied_past_commit;
        }
      }
    }
    n.synced_commit = n.storage->GetHardState().commit;
    absl::StatusOr<std::unique_ptr<Node>> node = Node::Create(options, n.storage.get());
    if (!node.ok()) {
      Fail("restart of n" + std::to_string(n.id.value()) +
           " failed: " + std::string(node.status().message()));
      return;
    }
    n.node = *std::move(node);
    n.pending.reset();
    n.sm = image.value_or(DecodeImage(*n.storage->GetSnapshot()));
    n.checked_commit = LogIndex(0);
    trace_ = Mix(trace_, 0x5747 + n.id.value());
    Log("n%lu starts: term %lu last %lu", n.id.value(), n.node->term().value(),
        n.node->last_index().value());
  }

  void Crash(SimNode& n) {
    if (!n.alive()) {
      return;
    }
    Log("n%lu crashes%s", n.id.value(), n.pending ? " with an unpersisted Ready" : "");
    n.node.reset();
    n.pending.reset();
    if (HardState durable = n.storage->GetHardState();
        durable.commit > n.synced_commit && rng_.OneIn(2)) {
      Log("n%lu loses its unsynced commit index %lu (back to %lu)", n.id.value(),
          durable.commit.value(), n.synced_commit.value());
      durable.commit = n.synced_commit;
      (void)n.storage->SetHardState(durable);
      ++result_.stats.commit_losses;
    }
    if (queue_ != nullptr) {
      queue_->Close(n.id);
    }
    n.down_until = step_ + 1 + static_cast<int>(rng_.Below(rng_.OneIn(4) ? 60 : 10));
    ++result_.stats.crashes;
    trace_ = Mix(trace_, 0xC4A5 + n.id.value());
  }

  SimNode* Leader() {
    SimNode* best = nullptr;
    for (auto& [id, n] : nodes_) {
      if (n.alive() && n.node->role() == Role::kLeader &&
          (best == nullptr || n.node->term() > best->node->term())) {
        best = &n;
      }
    }
    return best;
  }

  SimNode* RandomLeader() {
    std::vector<SimNode*> leaders;
    for (auto& [id, n] : nodes_) {
      if (n.alive() && n.node->role() == Role::kLeader) {
        leaders.push_back(&n);
      }
    }
    return leaders.empty() ? nullptr : leaders[rng_.Below(leaders.size())];
  }

  SimNode* RandomAlive() {
    std::vector<SimNode*> alive;
    for (auto& [id, n] : nodes_) {
      if (n.alive()) {
        alive.push_back(&n);
      }
    }
    return alive.empty() ? nullptr : alive[rng_.Below(alive.size())];
  }

  bool Blocked(NodeId from, NodeId to) const {
    return blocked_.contains({from.value(), to.value()});
  }

  // ---- events ----------------------------------------------------------------------------

  // Opens a calm window: no loss, no partitions, everyone up — except, half of the time, one
  // node that stays crashed or cut off, when the rest still holds a quorum. Progress is then
  // required all the same: a quorum that can talk must make progress.
  void EnterCalm() {
    calm_start_ = step_;
    calm_first_payload_ = queue_ != nullptr ? queue_->proposals() : next_payload_;
    progress_seen_ = false;
    blocked_.clear();
    drop_percent_ = 0;
    dup_percent_ = 0;
    max_delay_ = 1;
    for (auto& [id, n] : nodes_) {
      n.slow_disk = false;
      if (!n.alive()) {
        Start(n);
      }
    }
    const NodeId excluded = rng_.OneIn(2) ? PickExcludable() : kNoNode;
    Log("calm window opens (excluding n%lu)", excluded.value());
    if (excluded.IsNone()) {
      return;
    }
    if (rng_.OneIn(2)) {
      Crash(nodes_.at(excluded));
      return;
    }
    for (const auto& [other, unused] : nodes_) {
      blocked_.insert({excluded.value(), other.value()});
      blocked_.insert({other.value(), excluded.value()});
    }
  }

  // A node without which some other node could still win an election: it may campaign, and
  // a quorum of its log's configuration, all up, would find its log up to date. (A quorum of
  // some configuration is not enough: the only up-to-date log may sit on a node that is not a
  // voter in its own log.) Every node is up when this is called.
  NodeId PickExcludable() {
    auto it = nodes_.begin();
    std::advance(it, static_cast<std::ptrdiff_t>(rng_.Below(nodes_.size())));
    const NodeId excluded = it->first;
    for (const auto& [cid, c] : nodes_) {
      if (cid == excluded || !c.alive()) {
        continue;
      }
      const ConfState cs = c.node->effective_conf_state();
      const ConfState applied = c.node->conf_state();
      auto has = [](const std::vector<NodeId>& ids, NodeId id) {
        return std::find(ids.begin(), ids.end(), id) != ids.end();
      };
      if (!has(cs.voters, cid) && !has(applied.voters, cid)) {
        continue;
      }
      const LogIndex c_last = c.node->last_index();
      const Term c_term = c.node->TermAt(c_last).value_or(Term(0));
      size_t grants = 0;
      for (NodeId v : cs.voters) {
        auto vit = nodes_.find(v);
        if (v == excluded || vit == nodes_.end() || !vit->second.alive()) {
          continue;
        }
        const Node& vn = *vit->second.node;
        const Term v_term = vn.TermAt(vn.last_index()).value_or(Term(0));
        if (c_term > v_term || (c_term == v_term && c_last >= vn.last_index())) {
          ++grants;
        }
      }
      if (!cs.voters.empty() && grants >= cs.voters.size() / 2 + 1) {
        return excluded;
      }
    }
    return kNoNode;
  }

  void ChaosEvents() {
    if (step_ % 100 == 0) {
      static constexpr int kDrops[] = {0, 0, 2, 10, 25};
      static constexpr int kDups[] = {0, 2, 5};
      static constexpr int kDelays[] = {0, 1, 3, 6};
      drop_percent_ = kDrops[rng_.Below(5)];
      dup_percent_ = kDups[rng_.Below(3)];
      max_delay_ = kDelays[rng_.Below(4)];
    }
    if (rng_.OneIn(50)) {
      Partition();
    }
    if (rng_.OneIn(40)) {
      blocked_.clear();
      Log("partitions heal");
    }
    for (auto& [id, n] : nodes_) {
      // Crashes favour nodes with a write in flight: that is where forgotten state hides.
      // (Less often in queue mode, where each restart reopens a RocksDB database.)
      if (n.alive() &&
          (rng_.OneIn(300) || (n.pending && rng_.OneIn(queue_ != nullptr ? 120 : 30)))) {
        Crash(n);
      } else if (!n.alive() && step_ >= n.down_until) {
        Start(n);
      }
      if (rng_.OneIn(150)) {
        n.slow_disk = !n.slow_disk;
      }
      if (rng_.OneIn(300)) {
        static constexpr int kRates[] = {50, 100, 100, 150};
        n.tick_percent = kRates[rng_.Below(4)];
      }
    }
    if (rng_.OneIn(60)) {
      ChangeMembership();
    }
    if (rng_.OneIn(250)) {
      if (SimNode* leader = Leader()) {
        const ConfState cs = leader->node->conf_state();
        const NodeId to = cs.voters[rng_.Below(cs.voters.size())];
        Log("n%lu transfers leadership to n%lu", leader->id.value(), to.value());
        (void)leader->node->TransferLeadership(to);
        ProcessReady(*leader);
      }
    }
  }

  void Partition() {
    std::vector<uint64_t> ids;
    for (const auto& [id, n] : nodes_) {
      ids.push_back(id.value());
    }
    std::vector<bool> side(ids.size());
    for (size_t i = 0; i < ids.size(); ++i) {
      side[i] = rng_.OneIn(2);
    }
    const bool one_way = rng_.OneIn(3);
    blocked_.clear();
    for (size_t i = 0; i < ids.size(); ++i) {
      for (size_t j = 0; j < ids.size(); ++j) {
        if (side[i] && !side[j]) {
          blocked_.insert({ids[i], ids[j]});
          if (!one_way) {
            blocked_.insert({ids[j], ids[i]});
          }
        }
      }
    }
    Log("partition (%s), %zu links cut", one_way ? "one-way" : "symmetric", blocked_.size());
  }

  void ChangeMembership() {
    SimNode* leader = Leader();
    if (leader == nullptr) {
      return;
    }
    const ConfState cs = leader->node->conf_state();
    ConfChange change;
    const size_t target = static_cast<size_t>(options_.nodes);
    if (!cs.learners.empty()) {
      change = {ConfChangeType::kPromoteVoter, cs.learners[rng_.Below(cs.learners.size())]};
    } else if (cs.voters.size() > target || (cs.voters.size() == target && rng_.OneIn(2))) {
      change = {ConfChangeType::kRemove, cs.voters[rng_.Below(cs.voters.size())]};
      if (change.node == leader->id) {
        // A leader cannot remove itself: hand over first, remove it later.
        const NodeId to = cs.voters[(rng_.Below(cs.voters.size() - 1) + 1 +
                                     static_cast<size_t>(
                                         std::find(cs.voters.begin(), cs.voters.end(), leader->id) -
                                         cs.voters.begin())) %
                                    cs.voters.size()];
        (void)leader->node->TransferLeadership(to);
        ProcessReady(*leader);
        return;
      }
    } else if (added_ < kMaxAddedNodes) {
      change = {ConfChangeType::kAddLearner, NodeId(next_id_)};
    } else {
      return;
    }
    absl::StatusOr<LogIndex> index = leader->node->ProposeConfChange(change, NowOf(*leader));
    if (!index.ok()) {
      return;
    }
    ++result_.stats.conf_changes;
    Log("n%lu proposes conf change %d for n%lu at %lu", leader->id.value(),
        static_cast<int>(change.type), change.node.value(), index->value());
    if (change.type == ConfChangeType::kAddLearner) {
      ++added_;
      ++next_id_;
      SimNode& fresh = AddNode(change.node);
      fresh.clock_offset_ms = static_cast<int64_t>(rng_.Below(10'000)) - 5'000;
      Start(fresh);
    }
    ProcessReady(*leader);
  }

  void ClientEvents() {
    if (rng_.Percent(50)) {
      // Stale leaders get proposals too: their uncommitted tails are what a new leader must
      // overwrite or commit correctly.
      const uint64_t pick = rng_.Below(10);
      SimNode* target = pick < 5 ? Leader() : pick < 8 ? RandomLeader() : RandomAlive();
      if (target != nullptr && queue_ != nullptr) {
        queue_->Propose(target->id, *target->node, NowOf(*target));
        ProcessReady(*target);
      } else if (target != nullptr) {
        std::vector<std::string> payloads(1 + rng_.Below(3));
        for (std::string& p : payloads) {
          p = "p" + std::to_string(next_payload_++);
        }
        (void)target->node->Propose(payloads, NowOf(*target));
        ProcessReady(*target);
      }
    }
    if (rng_.Percent(5)) {
      // Reads go to deposed leaders too: they must not answer from a stale commit index.
      if (SimNode* leader = rng_.OneIn(2) ? Leader() : RandomLeader()) {
        std::string context = "r" + std::to_string(next_read_++);
        if (leader->node->ReadIndex(context).ok()) {
          reads_[context] = max_committed_;
        }
        ProcessReady(*leader);
      }
    }
    for (auto& [id, n] : nodes_) {
      if (n.alive() && rng_.OneIn(30)) {
        MaybeCompact(n);
      }
    }
  }

  void MaybeCompact(SimNode& n) {
    if (n.pending) {
      return;
    }
    const LogIndex applied = n.node->applied();
    if (applied != n.sm.index) {
      Fail("n" + std::to_string(n.id.value()) + " applied index disagrees with its state machine");
      return;
    }
    // Queue mode snapshots less often: each one is a RocksDB checkpoint (a memtable flush).
    if (applied <= n.storage->GetSnapshot()->meta.index + (queue_ != nullptr ? 40 : 10)) {
      return;
    }
    std::string data = EncodeImage(n.sm);
    if (queue_ != nullptr) {
      absl::StatusOr<std::string> checkpoint = queue_->Checkpoint(n.id);
      if (!checkpoint.ok()) {
        Fail("queue checkpoint: " + std::string(checkpoint.status().message()));
        return;
      }
      data += " " + *checkpoint;
    }
    if (!n.storage->CreateSnapshot(applied, n.node->conf_state(), data).ok() ||
        !n.storage->Compact(applied - rng_.Below(5)).ok()) {
      Fail("snapshot/compaction refused at " + std::to_string(applied.value()));
    }
    n.synced_commit = n.storage->GetHardState().commit;  // both are synced writes
  }

  void TickNodes() {
    for (auto& [id, n] : nodes_) {
      if (!n.alive()) {
        continue;
      }
      int ticks = 0;
      if (n.tick_percent >= 100) {
        ticks = 1 + (rng_.Percent(static_cast<uint64_t>(n.tick_percent - 100)) ? 1 : 0);
      } else {
        ticks = rng_.Percent(static_cast<uint64_t>(n.tick_percent)) ? 1 : 0;
      }
      for (int t = 0; t < ticks && n.alive(); ++t) {
        n.node->Tick(NowOf(n));
        ProcessReady(n);
      }
    }
  }

  // ---- network ---------------------------------------------------------------------------

  void Send(const Message& m) {
    ++result_.stats.messages;
    const int max_delay = calm_ ? 1 : max_delay_;
    network_.push_back(
        {step_ + static_cast<int>(rng_.Below(static_cast<uint64_t>(max_delay) + 1)), seq_++, m});
    if (!calm_ && rng_.Percent(static_cast<uint64_t>(dup_percent_))) {
      network_.push_back(
          {step_ + static_cast<int>(rng_.Below(static_cast<uint64_t>(max_delay) + 2)), seq_++, m});
    }
  }

  void DeliverMessages() {
    for (int round = 0; round < 6; ++round) {
      std::vector<InFlight> due;
      std::vector<InFlight> later;
      for (InFlight& f : network_) {
        (f.deliver_at <= step_ ? due : later).push_back(std::move(f));
      }
      network_ = std::move(later);
      if (due.empty()) {
        return;
      }
      for (size_t i = due.size(); i > 1; --i) {  // reorder
        std::swap(due[i - 1], due[rng_.Below(i)]);
      }
      for (InFlight& f : due) {
        Deliver(f.message);
        if (!result_.ok) {
          return;
        }
      }
    }
  }

  void Deliver(const Message& m) {
    auto it = nodes_.find(m.to);
    if (it == nodes_.end() || !it->second.alive() || Blocked(m.from, m.to) ||
        (!calm_ && rng_.Percent(static_cast<uint64_t>(drop_percent_)))) {
      return;
    }
    trace_ = Mix(trace_, (static_cast<uint64_t>(m.type) << 56) ^ (m.from.value() << 48) ^
                             (m.to.value() << 40) ^ (m.term.value() << 20) ^ m.index.value());
    Log("deliver %d n%lu->n%lu t%lu i%lu lt%lu c%lu%s n=%zu", static_cast<int>(m.type),
        m.from.value(), m.to.value(), m.term.value(), m.index.value(), m.log_term.value(),
        m.commit.value(), m.reject ? " reject" : "", m.entries.size());
    it->second.node->Step(m);
    ProcessReady(it->second);
  }

  // ---- the Ready loop, as node.h prescribes ----------------------------------------------

  void ProcessReady(SimNode& n) {
    while (n.alive() && result_.ok) {
      ObserveLeader(n);
      if (!n.pending) {
        if (!n.node->HasReady()) {
          return;
        }
        n.pending = n.node->GetReady();
        CheckNewEntries(n, n.pending->entries);
        for (const Message& m : n.pending->messages) {
          Send(m);
        }
        // Queue mode crashes less often here: each restart reopens a RocksDB database.
        if (!calm_ && rng_.OneIn(queue_ != nullptr ? 100 : 25)) {
          Crash(n);  // power loss during the write: only messages_ got out
          return;
        }
      }
      if (n.slow_disk && !rng_.Percent(20)) {
        return;
      }
      Persist(n);
    }
  }

  void Persist(SimNode& n) {
    Ready rd = std::move(*n.pending);
    n.pending.reset();
    if (rd.snapshot.has_value()) {
      if (!n.storage->ApplySnapshot(*rd.snapshot).ok()) {
        Fail("storage refused a snapshot");
        return;
      }
      if (queue_ != nullptr) {
        if (absl::Status installed =
                queue_->Install(n.id, CheckpointOf(*rd.snapshot), rd.snapshot->meta.index);
            !installed.ok()) {
          Fail("n" + std::to_string(n.id.value()) +
               " queue snapshot install: " + std::string(installed.message()));
          return;
        }
      }
      InstallImage(n, DecodeImage(*rd.snapshot));
      ++result_.stats.snapshots_installed;
    }
    if (!n.storage->Append(rd.entries).ok()) {
      Fail("storage refused entries");
      return;
    }
    const bool synced = MustSync(n.storage->GetHardState(), rd.snapshot.has_value(),
                                 !rd.entries.empty(), rd.hard_state);
    if (rd.hard_state.has_value()) {
      (void)n.storage->SetHardState(*rd.hard_state);
    }
    if (synced) {
      n.synced_commit = n.storage->GetHardState().commit;
    }
    for (const Message& m : rd.messages_after_persist) {
      Send(m);
    }
    for (const Entry& e : rd.committed_entries) {
      Apply(n, e);
    }
    for (const ReadState& r : rd.read_states) {
      CheckRead(n, r);
    }
    n.node->Advance();
    CheckMembership(n);
  }

  // ---- invariants ------------------------------------------------------------------------

  void ObserveLeader(SimNode& n) {
    if (n.node->role() != Role::kLeader) {
      return;
    }
    const Term term = n.node->term();
    auto [it, inserted] = leaders_.emplace(term.value(), n.id);
    if (!inserted) {
      if (it->second != n.id) {
        Fail("election safety: n" + std::to_string(it->second.value()) + " and n" +
             std::to_string(n.id.value()) + " both lead term " + std::to_string(term.value()));
      }
      return;
    }
    ++result_.stats.elections;
    trace_ = Mix(trace_, 0x1EAD ^ (term.value() << 8) ^ n.id.value());
    Log("n%lu leads term %lu (last %lu)", n.id.value(), term.value(), n.node->last_index().value());
    // Leader completeness: everything committed in an earlier term is in the new leader's log.
    const LogIndex first = n.node->first_index();
    for (uint64_t i = first.value(); i < committed_.size(); ++i) {
      const CommittedEntry& c = committed_[i];
      if (!c.known || c.observed_in >= term) {
        continue;
      }
      if (n.node->TermAt(LogIndex(i)) != c.term) {
        Fail("leader completeness: n" + std::to_string(n.id.value()) + " leads term " +
             std::to_string(term.value()) + " without committed entry " + std::to_string(i) +
             " of term " + std::to_string(c.term.value()));
        return;
      }
    }
  }

  // Log matching, checked on every entry a node is about to persist: an (index, term) pair
  // names one entry content and one predecessor term, cluster-wide.
  void CheckNewEntries(SimNode& n, const std::vector<Entry>& entries) {
    for (size_t k = 0; k < entries.size(); ++k) {
      const Entry& e = entries[k];
      std::optional<Term> prev =
          k > 0 ? std::optional<Term>(entries[k - 1].term) : n.node->TermAt(e.index - 1);
      const uint64_t content = Mix(HashString(e.data), static_cast<uint64_t>(e.type));
      auto [it, inserted] =
          entries_.try_emplace({e.index.value(), e.term.value()}, std::pair(content, prev));
      if (inserted) {
        continue;
      }
      if (it->second.first != content) {
        Fail("log matching: two different entries at index " + std::to_string(e.index.value()) +
             " term " + std::to_string(e.term.value()));
        return;
      }
      if (prev.has_value() && it->second.second.has_value() && *prev != *it->second.second) {
        Fail("log matching: entry " + std::to_string(e.index.value()) +
             " has different predecessors on two nodes");
        return;
      }
    }
  }

  void Apply(SimNode& n, const Entry& e) {
    if (e.index != n.sm.index + 1) {
      Fail("n" + std::to_string(n.id.value()) + " applied " + std::to_string(e.index.value()) +
           " after " + std::to_string(n.sm.index.value()));
      return;
    }
    if (e.time < n.sm.time) {
      Fail("cluster time went backwards at index " + std::to_string(e.index.value()));
      return;
    }
    const uint64_t chain =
        Mix(Mix(n.sm.chain, e.term.value()), Mix(e.index.value(), HashString(e.data))) | 2;
    n.sm = Image{e.index, chain, e.time};
    CheckChain(n, e.index, chain);
    RecordTime(e.index, e.time);
    if (queue_ != nullptr) {
      queue_->Apply(n.id, e, *n.node);
      if (!queue_->violation().empty()) {
        Fail(queue_->violation());
        return;
      }
    }
    trace_ = Mix(trace_, chain ^ n.id.value());
    if (e.type == EntryType::kNormal && !e.data.empty() && e.data[0] == 'p' && calm_ &&
        std::stoull(e.data.substr(1)) >= calm_first_payload_) {
      progress_seen_ = true;
    }
  }

  void InstallImage(SimNode& n, const Image& image) {
    n.sm = image;
    CheckChain(n, image.index, image.chain);
    RecordTime(image.index, image.time);
    Log("n%lu installs snapshot at %lu", n.id.value(), image.index.value());
  }

  // State machine safety: every node's state after applying index i is the same.
  void CheckChain(SimNode& n, LogIndex index, uint64_t chain) {
    const size_t i = index.value();
    if (applied_chain_.size() <= i) {
      applied_chain_.resize(i + 1, 0);
    }
    if (applied_chain_[i] == 0) {
      applied_chain_[i] = chain;
    } else if (applied_chain_[i] != chain) {
      Fail("state machine safety: n" + std::to_string(n.id.value()) +
           " applied a different history up to index " + std::to_string(i));
    }
  }

  void RecordTime(LogIndex index, absl::Time time) {
    if (applied_time_.size() <= index.value()) {
      applied_time_.resize(index.value() + 1);
    }
    applied_time_[index.value()] = time;
  }

  // ---- queue mode --------------------------------------------------------------------------

  // Reopens the node's state machine. Returns the image it holds when that is ahead of the
  // Raft snapshot (Raft then resumes applying after it), nothing when Raft should rebuild from
  // the snapshot.
  std::optional<Image> OpenQueueReplica(SimNode& n) {
    absl::StatusOr<LogIndex> applied = queue_->Open(n.id);
    if (!applied.ok()) {
      Fail("n" + std::to_string(n.id.value()) +
           " queue reopen: " + std::string(applied.status().message()));
      return std::nullopt;
    }
    const Snapshot snapshot = *n.storage->GetSnapshot();
    if (*applied <= snapshot.meta.index) {
      const std::string checkpoint = CheckpointOf(snapshot);
      if (*applied < snapshot.meta.index && !checkpoint.empty()) {
        if (absl::Status installed = queue_->Install(n.id, checkpoint, snapshot.meta.index);
            !installed.ok()) {
          Fail("n" + std::to_string(n.id.value()) +
               " queue reinstall: " + std::string(installed.message()));
        }
      }
      return std::nullopt;
    }
    const size_t i = applied->value();
    if (i >= applied_chain_.size() || applied_chain_[i] == 0) {
      Fail("n" + std::to_string(n.id.value()) + " reopened at index " + std::to_string(i) +
           " that no node applied");
      return std::nullopt;
    }
    return Image{*applied, applied_chain_[i], applied_time_[i]};
  }

  void QueueEndStep() {
    std::map<NodeId, const Node*> nodes;
    for (const auto& [id, n] : nodes_) {
      nodes[id] = n.node.get();
    }
    queue_->EndStep(nodes);
    if (!queue_->violation().empty()) {
      Fail(queue_->violation());
    }
    if (calm_ && queue_->applied_proposals() > calm_first_payload_) {
      progress_seen_ = true;
    }
  }

  // Membership agreement: every node reports the same membership at a given applied index
  // (what it records in its snapshots there).
  void CheckMembership(SimNode& n) {
    if (!n.alive()) {
      return;
    }
    auto [it, inserted] =
        applied_conf_.try_emplace(n.node->applied().value(), n.node->conf_state());
    if (!inserted && it->second != n.node->conf_state()) {
      Fail("membership: n" + std::to_string(n.id.value()) + " has a different membership at " +
           "applied index " + std::to_string(it->first));
    }
  }

  void CheckRead(SimNode& n, const ReadState& r) {
    ++result_.stats.reads;
    auto it = reads_.find(r.context);
    if (it == reads_.end()) {
      return;
    }
    if (r.index < it->second) {
      Fail("read " + r.context + " on n" + std::to_string(n.id.value()) + " at index " +
           std::to_string(r.index.value()) + " misses commit " +
           std::to_string(it->second.value()) + " that preceded it");
    }
    reads_.erase(it);
  }

  void CheckStep() {
    for (auto& [id, n] : nodes_) {
      if (!n.alive() || !result_.ok) {
        continue;
      }
      if (!n.node->corruption().empty()) {
        Fail("n" + std::to_string(id.value()) + " corrupt: " + n.node->corruption());
        return;
      }
      // No committed entry is ever lost or changed.
      const LogIndex commit = n.node->commit();
      for (LogIndex i = std::max(n.checked_commit, n.node->first_index() - 1) + 1; i <= commit;
           i = i + 1) {
        std::optional<Term> term = n.node->TermAt(i);
        if (!term.has_value()) {
          continue;
        }
        if (committed_.size() <= i.value()) {
          committed_.resize(i.value() + 1);
        }
        CommittedEntry& c = committed_[i.value()];
        if (!c.known) {
          c = {*term, n.node->term(), true};
        } else if (c.term != *term) {
          Fail("committed entry " + std::to_string(i.value()) + " changed from term " +
               std::to_string(c.term.value()) + " to " + std::to_string(term->value()) + " on n" +
               std::to_string(id.value()));
          return;
        } else {
          c.observed_in = std::min(c.observed_in, n.node->term());
        }
        max_committed_ = std::max(max_committed_, i);
      }
      n.checked_commit = std::max(n.checked_commit, commit);
    }
    CheckLeaderMatches();
  }

  // A leader counts a follower for every index up to its match: the follower's log must hold
  // the leader's entry there for as long as it stays in the leader's term (by log matching,
  // checking the entry at the match index covers the prefix). Catches an overstated
  // acknowledgement when it is made, before it turns into a bad commit.
  void CheckLeaderMatches() {
    for (auto& [lid, l] : nodes_) {
      if (!result_.ok || !l.alive() || l.node->role() != Role::kLeader) {
        continue;
      }
      for (auto& [pid, p] : nodes_) {
        const Progress* pr = l.node->ProgressOf(pid);
        if (pid == lid || pr == nullptr || !p.alive() || p.node->term() != l.node->term() ||
            pr->match < p.node->first_index()) {
          continue;
        }
        const std::optional<Term> leader_term = l.node->TermAt(pr->match);
        if (leader_term.has_value() && p.node->TermAt(pr->match) != leader_term) {
          Fail("n" + std::to_string(lid.value()) + " counts n" + std::to_string(pid.value()) +
               " as matching up to " + std::to_string(pr->match.value()) +
               " but it does not hold the leader's entry there");
          return;
        }
      }
    }
  }

  // Durability of the newest committed entry: no node lacking it in its persisted log may be
  // able to win an election, judging every voter by its persisted log alone (what a crash would
  // leave). This catches an unsafe commit as soon as it happens rather than only when a
  // conflicting leader actually gets elected.
  void CheckCommittedDurable() {
    const uint64_t i = max_committed_.value();
    if (i == 0 || i >= committed_.size() || !committed_[i].known) {
      return;
    }
    const Term t = committed_[i].term;
    for (auto& [xid, x] : nodes_) {
      if (!x.alive()) {
        continue;
      }
      absl::StatusOr<Term> held = x.storage->TermAt(LogIndex(i));
      if (IsCompacted(held.status()) || (held.ok() && *held == t)) {
        continue;
      }
      const ConfState cs = x.node->effective_conf_state();
      if (std::find(cs.voters.begin(), cs.voters.end(), xid) == cs.voters.end()) {
        continue;
      }
      const LogIndex x_last = x.storage->LastIndex();
      const Term x_term = *x.storage->TermAt(x_last);
      size_t grants = 0;
      std::string detail = "n" + std::to_string(xid.value()) + " last " +
                           std::to_string(x_last.value()) + "/t" + std::to_string(x_term.value()) +
                           "; voters:";
      for (NodeId v : cs.voters) {
        auto it = nodes_.find(v);
        if (it == nodes_.end()) {
          continue;
        }
        const MemoryLogStorage& vs = *it->second.storage;
        const LogIndex v_last = vs.LastIndex();
        const Term v_term = *vs.TermAt(v_last);
        if (x_term > v_term || (x_term == v_term && x_last >= v_last)) {
          ++grants;
        }
        detail += " n" + std::to_string(v.value()) + " " + std::to_string(v_last.value()) + "/t" +
                  std::to_string(v_term.value());
      }
      if (grants >= cs.voters.size() / 2 + 1) {
        Fail("committed entry " + std::to_string(i) + " (term " + std::to_string(t.value()) +
             ") is not durable: n" + std::to_string(xid.value()) +
             " lacks it yet a quorum of persisted logs would elect it (" + detail + ")");
        return;
      }
    }
  }

  SimOptions options_;
  Rng rng_;
  SimResult result_;
  uint64_t trace_ = 0;
  int step_ = 0;
  bool calm_ = false;
  int calm_start_ = 0;
  uint64_t calm_first_payload_ = 0;
  bool progress_seen_ = false;

  std::map<NodeId, SimNode> nodes_;
  uint64_t next_id_ = 0;
  int added_ = 0;

  std::vector<InFlight> network_;
  uint64_t seq_ = 0;
  std::set<std::pair<uint64_t, uint64_t>> blocked_;
  int drop_percent_ = 0;
  int dup_percent_ = 0;
  int max_delay_ = 1;

  uint64_t next_payload_ = 0;
  uint64_t next_read_ = 0;
  std::map<std::string, LogIndex> reads_;  // context -> highest commit known when issued

  std::map<uint64_t, NodeId> leaders_;  // term -> leader
  std::map<std::pair<uint64_t, uint64_t>, std::pair<uint64_t, std::optional<Term>>> entries_;
  std::vector<CommittedEntry> committed_;
  LogIndex max_committed_;
  std::vector<uint64_t> applied_chain_;
  std::vector<absl::Time> applied_time_;
  std::unique_ptr<QueueHarness> queue_;         // kQueue only
  std::map<uint64_t, ConfState> applied_conf_;  // applied index -> membership there
};

}  // namespace

SimResult RunSimulation(const SimOptions& options) {
  return Simulation(options).Run();
}

SimOptions OptionsForSeed(const SimOptions& run, uint64_t seed) {
  SimOptions options = run;
  options.seed = seed;
  if (run.nodes == 0) {
    options.nodes = seed % 2 == 1 ? 3 : 5;
    switch ((seed / 2) % 4) {
      case 2:
        options.pre_vote = PreVote::kDisabled;
        break;
      case 3:
        options.check_quorum = CheckQuorum::kDisabled;
        break;
      default:
        break;
    }
  }
  return options;
}

SweepResult RunSweep(const SweepOptions& sweep) {
  SweepResult out;
  std::mutex mu;
  std::atomic<uint64_t> next{0};
  std::atomic<bool> stop{false};
  auto worker = [&] {
    while (!stop.load()) {
      const uint64_t k = next.fetch_add(1);
      if (k >= sweep.seeds) {
        return;
      }
      const SimOptions options = OptionsForSeed(sweep.run, sweep.first_seed + k);
      SimResult r = RunSimulation(options);
      std::lock_guard<std::mutex> lock(mu);
      ++out.runs;
      out.totals.committed = std::max(out.totals.committed, r.stats.committed);
      out.totals.elections += r.stats.elections;
      out.totals.crashes += r.stats.crashes;
      out.totals.commit_losses += r.stats.commit_losses;
      out.totals.applied_past_commit += r.stats.applied_past_commit;
      out.totals.snapshots_installed += r.stats.snapshots_installed;
      out.totals.conf_changes += r.stats.conf_changes;
      out.totals.reads += r.stats.reads;
      out.totals.messages += r.stats.messages;
      QueueStats& q = out.totals.queue;
      q.acked_appends += r.stats.queue.acked_appends;
      q.acked_leases += r.stats.queue.acked_leases;
      q.delivered += r.stats.queue.delivered;
      q.stale_completions += r.stats.queue.stale_completions;
      q.digest_checks += r.stats.queue.digest_checks;
      q.model_checks += r.stats.queue.model_checks;
      q.checkpoints += r.stats.queue.checkpoints;
      q.installs += r.stats.queue.installs;
      if (!r.ok) {
        out.failures.push_back(r.violation);
        out.failing_seeds.push_back(options.seed);
        if (sweep.stop == SweepStop::kAtFirstFailure) {
          stop.store(true);
        }
      }
    }
  };
  std::vector<std::thread> threads;
  for (int t = 0; t < std::max(1, sweep.threads); ++t) {
    threads.emplace_back(worker);
  }
  for (std::thread& t : threads) {
    t.join();
  }
  std::sort(out.failing_seeds.begin(), out.failing_seeds.end());
  return out;
}

std::string DescribeFailures(const SweepResult& result) {
  std::string out;
  for (const std::string& failure : result.failures) {
    out += failure + "\n";
  }
  return out;
}

}  // namespace backstop::raft::sim
