#include "queue/storage_reserve.h"

#include <stdlib.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <string>

#include <gtest/gtest.h>

#include "queue/fault_injection.h"

namespace backstop::queue {
namespace {

class StorageReserveTest : public ::testing::Test {
 protected:
  StorageReserve Make(uint64_t min_free_bytes) {
    StorageReserveOptions options;
    options.min_free_bytes = min_free_bytes;
    options.clock = &clock_;
    options.probe = [this]() -> absl::StatusOr<uint64_t> {
      ++probes_;
      if (!probe_ok_) {
        return absl::InternalError("statvfs failed");
      }
      return free_;
    };
    return StorageReserve(std::move(options));
  }

  FakeClock clock_{absl::FromUnixSeconds(1'767'225'600)};
  uint64_t free_ = 10'000;
  bool probe_ok_ = true;
  int probes_ = 0;
};

TEST_F(StorageReserveTest, LowWhileFreeSpaceIsBelowTheReserve) {
  StorageReserve reserve = Make(5'000);
  EXPECT_FALSE(reserve.Low());
  free_ = 4'999;
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(reserve.Low());
  free_ = 5'000;
  clock_.Advance(absl::Seconds(1));
  EXPECT_FALSE(reserve.Low());
}

TEST_F(StorageReserveTest, MeasuresAtMostOncePerInterval) {
  StorageReserve reserve = Make(5'000);
  EXPECT_FALSE(reserve.Low());
  free_ = 0;
  clock_.Advance(absl::Milliseconds(999));
  EXPECT_FALSE(reserve.Low());  // the measurement of a moment ago
  EXPECT_EQ(probes_, 1);
  clock_.Advance(absl::Milliseconds(1));
  EXPECT_TRUE(reserve.Low());
  EXPECT_EQ(probes_, 2);
}

TEST_F(StorageReserveTest, ZeroReserveNeverProbes) {
  StorageReserve reserve = Make(0);
  free_ = 0;
  EXPECT_FALSE(reserve.Low());
  EXPECT_EQ(probes_, 0);
}

TEST_F(StorageReserveTest, FailedProbeKeepsThePreviousAnswer) {
  StorageReserve reserve = Make(5'000);
  free_ = 0;
  EXPECT_TRUE(reserve.Low());
  probe_ok_ = false;
  clock_.Advance(absl::Seconds(1));
  EXPECT_TRUE(reserve.Low());
}

TEST(StatvfsProbeTest, MeasuresTheFilesystemOfAPath) {
  const absl::StatusOr<uint64_t> free_bytes = StatvfsProbe(::testing::TempDir())();
  ASSERT_TRUE(free_bytes.ok()) << free_bytes.status();
  EXPECT_GT(*free_bytes, 0u);
  EXPECT_FALSE(StatvfsProbe("/nonexistent/backstop")().ok());
}

TEST(FreeSpaceProbeFromEnvironmentTest, FaultFileSayingFullReportsNothingFree) {
  const std::string fault =
      ::testing::TempDir() + "/backstop_reserve_fault_" + std::to_string(::getpid());
  std::ofstream(fault) << "full\n";
  setenv(kFaultFileEnvironment, fault.c_str(), 1);
  const FreeSpaceProbe probe = FreeSpaceProbeFromEnvironment(::testing::TempDir());
  unsetenv(kFaultFileEnvironment);
  absl::StatusOr<uint64_t> free_bytes = probe();
  ASSERT_TRUE(free_bytes.ok());
  EXPECT_EQ(*free_bytes, 0u);
  std::ofstream(fault) << "none\n";
  setenv(kFaultFileEnvironment, fault.c_str(), 1);
  free_bytes = FreeSpaceProbeFromEnvironment(::testing::TempDir())();
  unsetenv(kFaultFileEnvironment);
  ASSERT_TRUE(free_bytes.ok());
  EXPECT_GT(*free_bytes, 0u);
  std::filesystem::remove(fault);
}

}  // namespace
}  // namespace backstop::queue
