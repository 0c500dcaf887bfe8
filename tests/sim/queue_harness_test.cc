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
  EXPECT_GT(q.installs, 0u);
}

TEST(QueueSimulationTest, CatchesAReplicaThatSkipsAnEntry) {
  SweepOptions sweep = QueueSweep(20, 1000);
  sweep.run.queue_fault = QueueTestFault::kSkipOneEntry;
  sweep.stop = SweepStop::kAtFirstFailure;
  SweepResult r = RunSweep(sweep);
  ASSERT_FALSE(r.failing_seeds.empty()) << "a replica skipped an entry unnoticed";
  EXPECT_NE(r.failures.front().find("replica digest differs"), std::string::npos)
      << r.failures.front();
}

}  // namespace
}  // namespace backstop::raft::sim
