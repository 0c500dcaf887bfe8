#include "tests/sim/queue_harness.h"

#include <string>

#include "gtest/gtest.h"
#include "tests/sim/simulator.h"

namespace backstop::raft::sim {
namespace {

SweepOptions QueueSweep(uint64_t seeds, int steps) {
  SweepOptions sweep;
  sweep.run.mode = SimMode::kQueue;
  sweep.run.steps = steps;
  sweep.run.nodes = 0;
  sweep.first_seed = 1;
  sweep.seeds = seeds;
  sweep.threads = 2;
  return sweep;
}

// Every replica's queue state matches the model and every other replica's, with crashes,
// partitions, snapshots and membership changes going on.
TEST(QueueSimulationTest, ReplicasMatchTheModelUnderFaults) {
  SweepResult r = RunSweep(QueueSweep(6, 1000));
  EXPECT_EQ(r.runs, 6u);
  EXPECT_TRUE(r.failing_seeds.empty()) << DescribeFailures(r);
  // Not vacuous: the clients got work done and every check ran many times.
  const QueueStats& q = r.totals.queue;
  EXPECT_GT(q.acked_appends, 1'000u);
  EXPECT_GT(q.acked_leases, 300u);
  EXPECT_GT(q.delivered, 150u);
  EXPECT_GT(q.digest_checks, 1'000u);
  EXPECT_GT(q.model_checks, 1'000u);
  EXPECT_GT(r.totals.crashes, 100u);
  EXPECT_GT(r.totals.applied_past_commit, 0u);
  EXPECT_GT(q.installs, 0u);
}

// One replica applies one committed command as an empty entry (a harness fault; its result is
// not compared). Every run must notice: by the digest comparison when another replica stops at
// the same index, else by the comparison with the model or by that replica's results for
// later entries; the digest comparison must be among the checks that notice.
TEST(QueueSimulationTest, CatchesAReplicaThatSkipsAnEntry) {
  int by_digest = 0;
  for (uint64_t seed = 1; seed <= 5; ++seed) {
    SimOptions options = OptionsForSeed(QueueSweep(1, 1000).run, seed);
    options.queue_fault = QueueTestFault::kSkipOneEntry;
    const SimResult r = RunSimulation(options);
    ASSERT_FALSE(r.ok) << "seed " << seed << ": a replica skipped an entry unnoticed";
    const bool digest = r.violation.find("replica digest differs") != std::string::npos;
    EXPECT_TRUE(digest || r.violation.find("is missing") != std::string::npos ||
                r.violation.find("differs from the model") != std::string::npos ||
                r.violation.find("entries, the model") != std::string::npos ||
                r.violation.find("got a different result") != std::string::npos ||
                r.violation.find("wrong number of outcomes") != std::string::npos)
        << r.violation;
    by_digest += digest ? 1 : 0;
  }
  EXPECT_GT(by_digest, 0);
}

}  // namespace
}  // namespace backstop::raft::sim
