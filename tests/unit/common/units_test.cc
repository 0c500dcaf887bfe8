#include "common/units.h"

#include <cstdint>
#include <limits>
#include <string>

#include <gtest/gtest.h>

#include "absl/status/status.h"
#include "absl/time/time.h"

namespace backstop {
namespace {

TEST(ParseDurationTest, ReadsEachUnit) {
  EXPECT_EQ(*ParseDuration("500ms"), absl::Milliseconds(500));
  EXPECT_EQ(*ParseDuration("30s"), absl::Seconds(30));
  EXPECT_EQ(*ParseDuration("1m"), absl::Minutes(1));
  EXPECT_EQ(*ParseDuration("15m"), absl::Minutes(15));
  EXPECT_EQ(*ParseDuration("2h"), absl::Hours(2));
  EXPECT_EQ(*ParseDuration("5d"), absl::Hours(5 * 24));
}

TEST(ParseDurationTest, AcceptsZero) {
  EXPECT_EQ(*ParseDuration("0s"), absl::ZeroDuration());
  EXPECT_EQ(*ParseDuration("0ms"), absl::ZeroDuration());
}

TEST(ParseDurationTest, HonoursOneMillisecondExactly) {
  EXPECT_EQ(*ParseDuration("1ms"), absl::Milliseconds(1));
}

TEST(ParseDurationTest, ReadsCompoundLargestFirst) {
  EXPECT_EQ(*ParseDuration("1h30m"), absl::Minutes(90));
  EXPECT_EQ(*ParseDuration("1d2h3m4s5ms"),
            absl::Hours(26) + absl::Minutes(3) + absl::Seconds(4) + absl::Milliseconds(5));
  EXPECT_EQ(*ParseDuration("1m500ms"), absl::Milliseconds(60'500));
}

TEST(ParseDurationTest, AcceptsLeadingZerosAndLargeCounts) {
  EXPECT_EQ(*ParseDuration("007s"), absl::Seconds(7));
  EXPECT_EQ(*ParseDuration("90m"), absl::Minutes(90));
}

TEST(ParseDurationTest, RejectsMalformedText) {
  for (const char* text : {"",    "-1s", "-0s", "30",   "1h30", "s",     "1.5s",   "1 s",
                           " 1s", "1s ", "+1s", "1x",   "1sec", "1S",    "1H",     "1w",
                           "1y",  "1us", "ms",  "1m1h", "1s1s", "1ms1s", "1h-30m", "1hm"}) {
    absl::StatusOr<absl::Duration> duration = ParseDuration(text);
    EXPECT_FALSE(duration.ok()) << text;
    EXPECT_EQ(duration.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
}

TEST(ParseDurationTest, ExplainsMissingAndUnknownUnits) {
  EXPECT_NE(std::string(ParseDuration("30").status().message()).find("missing unit"),
            std::string::npos);
  EXPECT_NE(std::string(ParseDuration("30x").status().message()).find("unknown unit"),
            std::string::npos);
  EXPECT_NE(std::string(ParseDuration("-5s").status().message()).find("negative"),
            std::string::npos);
}

TEST(ParseDurationTest, AcceptsTheLargestMillisecondCount) {
  EXPECT_EQ(*ParseDuration("9223372036854775807ms"),
            absl::Milliseconds(std::numeric_limits<int64_t>::max()));
}

TEST(ParseDurationTest, RejectsOverflowAsOutOfRange) {
  for (const char* text : {"9223372036854775808ms", "9223372036854776s", "106751991167301d",
                           "99999999999999999999999s", "106751991167300d1000000000000000h"}) {
    EXPECT_EQ(ParseDuration(text).status().code(), absl::StatusCode::kOutOfRange) << text;
  }
}

TEST(FormatDurationTest, PrintsCanonicalCompoundForm) {
  EXPECT_EQ(backstop::FormatDuration(absl::ZeroDuration()), "0s");
  EXPECT_EQ(backstop::FormatDuration(absl::Milliseconds(500)), "500ms");
  EXPECT_EQ(backstop::FormatDuration(absl::Seconds(30)), "30s");
  EXPECT_EQ(backstop::FormatDuration(absl::Minutes(90)), "1h30m");
  EXPECT_EQ(backstop::FormatDuration(absl::Hours(5 * 24)), "5d");
  EXPECT_EQ(backstop::FormatDuration(absl::Milliseconds(1500)), "1s500ms");
  EXPECT_EQ(backstop::FormatDuration(-absl::Seconds(3)), "-3s");
  EXPECT_EQ(backstop::FormatDuration(absl::InfiniteDuration()), "inf");
}

TEST(FormatDurationTest, DropsSubMillisecondParts) {
  EXPECT_EQ(backstop::FormatDuration(absl::Microseconds(1500)), "1ms");
  EXPECT_EQ(backstop::FormatDuration(absl::Nanoseconds(1)), "0s");
}

TEST(FormatDurationTest, RoundTripsThroughParseDuration) {
  for (absl::Duration d : {absl::ZeroDuration(), absl::Milliseconds(1), absl::Seconds(59),
                           absl::Minutes(61), absl::Hours(49) + absl::Milliseconds(7),
                           absl::Milliseconds(std::numeric_limits<int64_t>::max())}) {
    EXPECT_EQ(*ParseDuration(backstop::FormatDuration(d)), d) << backstop::FormatDuration(d);
  }
}

TEST(ParseSizeTest, ReadsPlainBytes) {
  EXPECT_EQ(*ParseSize("0"), 0u);
  EXPECT_EQ(*ParseSize("1024"), 1024u);
  EXPECT_EQ(*ParseSize("100B"), 100u);
}

TEST(ParseSizeTest, ReadsBinaryUnits) {
  EXPECT_EQ(*ParseSize("512KiB"), 512u * 1024);
  EXPECT_EQ(*ParseSize("50MiB"), 50u * 1024 * 1024);
  EXPECT_EQ(*ParseSize("1GiB"), uint64_t{1} << 30);
  EXPECT_EQ(*ParseSize("10GiB"), uint64_t{10} << 30);
  EXPECT_EQ(*ParseSize("2TiB"), uint64_t{2} << 40);
}

TEST(ParseSizeTest, ReadsDecimalUnits) {
  EXPECT_EQ(*ParseSize("1kB"), 1000u);
  EXPECT_EQ(*ParseSize("3MB"), 3'000'000u);
  EXPECT_EQ(*ParseSize("2GB"), 2'000'000'000u);
  EXPECT_EQ(*ParseSize("1TB"), 1'000'000'000'000u);
}

TEST(ParseSizeTest, RejectsMalformedText) {
  for (const char* text : {"", "-1", "-1MiB", "lots", "MiB", "1.5MiB", "50 MiB", " 1", "1 ",
                           "50mib", "50KB", "50Mb", "50M", "50MiBs", "0x10", "1e6", "+1"}) {
    absl::StatusOr<uint64_t> size = ParseSize(text);
    EXPECT_FALSE(size.ok()) << text;
    EXPECT_EQ(size.status().code(), absl::StatusCode::kInvalidArgument) << text;
  }
}

TEST(ParseSizeTest, AcceptsTheLargestValue) {
  EXPECT_EQ(*ParseSize("18446744073709551615"), std::numeric_limits<uint64_t>::max());
  EXPECT_EQ(*ParseSize("16777215TiB"), uint64_t{16777215} << 40);
}

TEST(ParseSizeTest, RejectsOverflowAsOutOfRange) {
  for (const char* text :
       {"18446744073709551616", "16777216TiB", "17179869184GiB", "99999999999999999999999B"}) {
    EXPECT_EQ(ParseSize(text).status().code(), absl::StatusCode::kOutOfRange) << text;
  }
}

TEST(FormatSizeTest, PicksTheLargestExactBinaryUnit) {
  EXPECT_EQ(FormatSize(0), "0B");
  EXPECT_EQ(FormatSize(1000), "1000B");
  EXPECT_EQ(FormatSize(1024), "1KiB");
  EXPECT_EQ(FormatSize(1536), "1536B");
  EXPECT_EQ(FormatSize(uint64_t{50} << 20), "50MiB");
  EXPECT_EQ(FormatSize(uint64_t{1} << 30), "1GiB");
  EXPECT_EQ(FormatSize(uint64_t{1536} << 20), "1536MiB");
  EXPECT_EQ(FormatSize(uint64_t{3} << 40), "3TiB");
}

TEST(FormatSizeTest, RoundTripsThroughParseSize) {
  for (uint64_t bytes : {uint64_t{0}, uint64_t{1}, uint64_t{4096}, uint64_t{1'000'000},
                         std::numeric_limits<uint64_t>::max()}) {
    EXPECT_EQ(*ParseSize(FormatSize(bytes)), bytes) << FormatSize(bytes);
  }
}

}  // namespace
}  // namespace backstop
