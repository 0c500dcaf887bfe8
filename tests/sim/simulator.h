#pragma once

// Deterministic Raft cluster simulator. One seed fixes everything: the network (drops,
// duplicates, delays, reordering, symmetric and one-way partitions), crashes that lose whatever
// was not persisted, slow disks, clock skew in ticks and in stamped time, client proposals,
// reads, leadership transfers, membership changes and compaction. After every step it checks
// Raft's safety invariants, and in periodic calm windows that progress resumes. Single-threaded
// per run; runs for different seeds share nothing and may go on different threads.

#include <cstdint>
#include <string>
#include <vector>

#include "queue/raft/node.h"
#include "tests/sim/queue_harness.h"

namespace backstop::raft::sim {

// kRaft: the application is a digest chain over the entries. kQueue: every node also applies
// its entries to a QueueStateMachine driven by simulated queue clients (tests/sim/queue_harness.h).
enum class SimMode : uint8_t { kRaft, kQueue };

struct SimOptions {
  uint64_t seed = 1;
  SimMode mode = SimMode::kRaft;
  int nodes = 3;  // founding voters: 3 or 5 (0 in a sweep: chosen by the seed)
  int steps = 2000;
  // Election options of every node. Liveness is only checked with both enabled (Backstop's
  // configuration): without PreVote, stale and removed nodes may legitimately delay elections
  // past the bound.
  PreVote pre_vote = PreVote::kEnabled;
  CheckQuorum check_quorum = CheckQuorum::kEnabled;
  // Deliberate bugs to build into every node (tests of the simulator itself).
  RaftTestFault faults = RaftTestFault::kNone;
  // Deliberate bugs in the queue harness (kQueue only).
  QueueTestFault queue_fault = QueueTestFault::kNone;
  // kQueue: parent of the per-run scratch directories (empty: the system's temp directory).
  std::string scratch_dir;
  // Print every event to stderr (to study a failing seed).
  bool verbose = false;
};

struct SimStats {
  uint64_t committed = 0;  // highest committed index seen
  uint64_t elections = 0;  // distinct (term, leader) pairs
  uint64_t crashes = 0;
  uint64_t commit_losses = 0;  // crashes that took a node back to its last synced commit index
  uint64_t applied_past_commit = 0;  // queue restarts ahead of the durable commit index
  uint64_t snapshots_installed = 0;
  uint64_t conf_changes = 0;
  uint64_t reads = 0;
  uint64_t messages = 0;
  QueueStats queue;  // kQueue only
};

struct SimResult {
  bool ok = true;
  std::string violation;    // "seed S step K: what broke"
  uint64_t trace_hash = 0;  // digest of every event; equal for equal seeds
  SimStats stats;
};

SimResult RunSimulation(const SimOptions& options);

enum class SweepStop : uint8_t { kNever, kAtFirstFailure };

// Runs seeds first_seed .. first_seed+seeds-1 on `threads` threads.
struct SweepOptions {
  // Template for every run. With nodes == 0 the seed picks the cluster: odd seeds 3 nodes, even
  // ones 5; and one seed pair in four runs without PreVote, one without CheckQuorum. The
  // choice depends on the seed alone, so `--first-seed S --seeds 1` replays seed S.
  SimOptions run;
  uint64_t first_seed = 1;
  uint64_t seeds = 100;
  int threads = 2;
  SweepStop stop = SweepStop::kNever;
};

struct SweepResult {
  uint64_t runs = 0;
  SimStats totals;                      // summed over runs (committed: the highest)
  std::vector<uint64_t> failing_seeds;  // sorted
  std::vector<std::string> failures;    // violation texts, in completion order
};

// The options RunSweep uses for `seed`.
SimOptions OptionsForSeed(const SimOptions& run, uint64_t seed);

SweepResult RunSweep(const SweepOptions& sweep);

// The sweep's violations, one a line (for test failure messages).
std::string DescribeFailures(const SweepResult& result);

}  // namespace backstop::raft::sim
