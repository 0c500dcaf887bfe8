#include "common/status.h"

#include <cerrno>
#include <string>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

namespace backstop {
namespace {

using ::testing::HasSubstr;

absl::Status FailWhenNegative(int value) {
  if (value < 0) {
    return absl::InvalidArgumentError("negative");
  }
  return absl::OkStatus();
}

absl::StatusOr<int> Double(int value) {
  RETURN_IF_ERROR(FailWhenNegative(value));
  return value * 2;
}

absl::StatusOr<int> DoubleTwice(int value) {
  ASSIGN_OR_RETURN(int once, Double(value));
  ASSIGN_OR_RETURN(once, Double(once));
  return once;
}

TEST(StatusTest, ReturnIfErrorPassesOkThrough) {
  EXPECT_EQ(*Double(3), 6);
}

TEST(StatusTest, ReturnIfErrorReturnsTheError) {
  absl::StatusOr<int> result = Double(-1);
  ASSERT_FALSE(result.ok());
  EXPECT_EQ(result.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(result.status().message(), "negative");
}

TEST(StatusTest, AssignOrReturnDeclaresAndReassigns) {
  EXPECT_EQ(*DoubleTwice(5), 20);
}

TEST(StatusTest, AssignOrReturnPropagatesTheError) {
  EXPECT_EQ(DoubleTwice(-5).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(StatusTest, ErrnoToStatusMapsCodeAndNamesContext) {
  absl::Status status = ErrnoToStatus(ENOENT, "open /nope");
  EXPECT_EQ(status.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(status.message()), HasSubstr("open /nope: "));
  EXPECT_THAT(std::string(status.message()), HasSubstr("No such file or directory"));
  EXPECT_THAT(std::string(status.message()), HasSubstr("errno 2"));
}

TEST(StatusTest, ErrnoToStatusMapsEagainToUnavailable) {
  EXPECT_EQ(ErrnoToStatus(EAGAIN, "recv").code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace backstop
