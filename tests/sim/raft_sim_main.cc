// raft_sim: runs the deterministic Raft simulator over a range of seeds and prints the failing
// ones. `make sim` calls it; a printed seed replays exactly with --first-seed S --seeds 1.

#include <cstdio>
#include <string>
#include <thread>

#include "CLI/CLI.hpp"
#include "tests/sim/simulator.h"

int main(int argc, char** argv) {
  using backstop::raft::RaftTestFault;
  namespace sim = backstop::raft::sim;

  CLI::App app{"Deterministic Raft cluster simulator"};
  sim::SweepOptions sweep;
  sweep.run.nodes = 0;
  sweep.threads = static_cast<int>(std::max(1u, std::thread::hardware_concurrency()));
  std::string fault = "none";
  app.add_option("--seeds", sweep.seeds, "number of seeds to run")->capture_default_str();
  app.add_option("--steps", sweep.run.steps, "steps per seed")->capture_default_str();
  app.add_option("--first-seed", sweep.first_seed, "first seed")->capture_default_str();
  app.add_option(
         "--nodes", sweep.run.nodes,
         "founding voters (3 or 5; 0: chosen by the seed, with election options varied too)")
      ->capture_default_str();
  app.add_option("--threads", sweep.threads, "worker threads")->capture_default_str();
  app.add_option("--fault", fault,
                 "test-only bug to build in: none, grant-vote-without-log-check, "
                 "commit-previous-term-by-count, send-vote-before-persist, "
                 "ack-append-before-persist")
      ->capture_default_str();
  bool queue = false;
  app.add_flag("--queue", queue,
               "queue mode: every node applies to a QueueStateMachine checked against a model");
  std::string queue_fault = "none";
  app.add_option("--queue-fault", queue_fault, "test-only harness bug: none, skip-one-entry")
      ->capture_default_str();
  app.add_option("--scratch-dir", sweep.run.scratch_dir,
                 "queue mode: parent of the per-seed RocksDB directories (default: $TMPDIR)");
  app.add_flag("--verbose", sweep.run.verbose, "trace every event (use with one seed)");
  CLI11_PARSE(app, argc, argv);

  if (fault == "grant-vote-without-log-check") {
    sweep.run.faults = RaftTestFault::kGrantVoteWithoutLogCheck;
  } else if (fault == "commit-previous-term-by-count") {
    sweep.run.faults = RaftTestFault::kCommitPreviousTermByCount;
  } else if (fault == "send-vote-before-persist") {
    sweep.run.faults = RaftTestFault::kSendVoteBeforePersist;
  } else if (fault == "ack-append-before-persist") {
    sweep.run.faults = RaftTestFault::kAckAppendBeforePersist;
  } else if (fault != "none") {
    std::fprintf(stderr, "unknown --fault %s\n", fault.c_str());
    return 2;
  }
  if (queue) {
    sweep.run.mode = sim::SimMode::kQueue;
  }
  if (queue_fault == "skip-one-entry") {
    sweep.run.queue_fault = sim::QueueTestFault::kSkipOneEntry;
  } else if (queue_fault != "none") {
    std::fprintf(stderr, "unknown --queue-fault %s\n", queue_fault.c_str());
    return 2;
  }
  if (sweep.run.verbose) {
    sweep.threads = 1;
  }

  const sim::SweepResult result = sim::RunSweep(sweep);
  for (const std::string& failure : result.failures) {
    std::printf("FAIL %s\n", failure.c_str());
  }
  for (uint64_t seed : result.failing_seeds) {
    std::printf(
        "failing seed: %lu (replay: raft_sim%s --first-seed %lu --seeds 1 --steps %d%s "
        "--verbose)\n",
        seed, queue ? " --queue" : "", seed, sweep.run.steps,
        sweep.run.nodes > 0 ? (" --nodes " + std::to_string(sweep.run.nodes)).c_str() : "");
  }
  const backstop::raft::sim::SimStats& t = result.totals;
  std::printf(
      "%lu seeds x %d steps: %zu failed; highest commit index %lu; %lu elections, %lu crashes "
      "(%lu lost an unsynced commit index, %lu restarted applied past it), %lu snapshots "
      "installed, %lu membership changes, %lu reads, %lu messages\n",
      result.runs, sweep.run.steps, result.failing_seeds.size(), t.committed, t.elections,
      t.crashes, t.commit_losses, t.applied_past_commit, t.snapshots_installed, t.conf_changes,
      t.reads, t.messages);
  if (queue) {
    const sim::QueueStats& q = t.queue;
    std::printf(
        "queue: %lu acknowledged appends, %lu entries leased, %lu delivered, %lu stale "
        "completions, %lu digest comparisons, %lu model comparisons, %lu checkpoints, %lu "
        "installed\n",
        q.acked_appends, q.acked_leases, q.delivered, q.stale_completions, q.digest_checks,
        q.model_checks, q.checkpoints, q.installs);
  }
  return result.failing_seeds.empty() ? 0 : 1;
}
