#include "delivery/canonicalize.h"

#include <string>

#include <gtest/gtest.h>

namespace backstop::delivery {
namespace {

std::string DataForm(std::string_view message) {
  std::string out;
  AppendDataForm(message, &out);
  return out;
}

TEST(CanonicalizeTest, KeepsCrlfMessageAndAddsTerminator) {
  EXPECT_EQ(DataForm("Subject: x\r\n\r\nbody\r\n"), "Subject: x\r\n\r\nbody\r\n.\r\n");
}

TEST(CanonicalizeTest, TurnsBareLfIntoCrlf) {
  EXPECT_EQ(DataForm("a\nb\n\nc\n"), "a\r\nb\r\n\r\nc\r\n.\r\n");
}

TEST(CanonicalizeTest, TurnsBareCrIntoCrlf) {
  EXPECT_EQ(DataForm("a\rb\r\rc\r"), "a\r\nb\r\n\r\nc\r\n.\r\n");
}

TEST(CanonicalizeTest, TurnsLfCrIntoTwoLineEnds) {
  // "\n\r" is a bare LF then a bare CR, not one line ending.
  EXPECT_EQ(DataForm("a\n\rb"), "a\r\n\r\nb\r\n.\r\n");
}

TEST(CanonicalizeTest, StuffsLeadingDotsOnEveryKindOfLine) {
  EXPECT_EQ(DataForm(".first\r\n..two\n.\r.x\r\nmid.dle\r\n"),
            "..first\r\n...two\r\n..\r\n..x\r\nmid.dle\r\n.\r\n");
}

TEST(CanonicalizeTest, StuffsALoneDotLineSoItCannotEndTheData) {
  EXPECT_EQ(DataForm("a\r\n.\r\nb\r\n"), "a\r\n..\r\nb\r\n.\r\n");
}

TEST(CanonicalizeTest, EndsAnUnterminatedLastLine) {
  EXPECT_EQ(DataForm("no newline"), "no newline\r\n.\r\n");
  EXPECT_EQ(DataForm("."), "..\r\n.\r\n");
}

TEST(CanonicalizeTest, EmptyMessageIsJustTheTerminator) {
  EXPECT_EQ(DataForm(""), ".\r\n");
}

TEST(CanonicalizeTest, KeepsEightBitAndNulBytes) {
  std::string message("caf\xc3\xa9\0x\n", 8);
  std::string expected("caf\xc3\xa9\0x\r\n.\r\n", 12);
  EXPECT_EQ(DataForm(message), expected);
}

TEST(CanonicalizeTest, JoinsCrlfSplitAcrossChunks) {
  DataCanonicalizer canonicalizer;
  std::string out;
  canonicalizer.Append("a\r", &out);
  canonicalizer.Append("\n.b\r", &out);
  canonicalizer.Append("\r", &out);
  canonicalizer.Append("", &out);
  canonicalizer.Append("c", &out);
  canonicalizer.Finish(&out);
  EXPECT_EQ(out, "a\r\n..b\r\n\r\nc\r\n.\r\n");
}

TEST(CanonicalizeTest, ChunkingNeverChangesTheResult) {
  const std::string message = "x\r\n.y\n\r.\r\r\n..z\rend.\r\n.";
  const std::string whole = DataForm(message);
  for (size_t split = 0; split <= message.size(); ++split) {
    for (size_t split2 = split; split2 <= message.size(); ++split2) {
      DataCanonicalizer canonicalizer;
      std::string out;
      canonicalizer.Append(std::string_view(message).substr(0, split), &out);
      canonicalizer.Append(std::string_view(message).substr(split, split2 - split), &out);
      canonicalizer.Append(std::string_view(message).substr(split2), &out);
      canonicalizer.Finish(&out);
      EXPECT_EQ(out, whole) << split << "," << split2;
    }
  }
}

TEST(CanonicalizeTest, AppendsAfterExistingOutput) {
  std::string out = "DATA\r\n";
  AppendDataForm("x", &out);
  EXPECT_EQ(out, "DATA\r\nx\r\n.\r\n");
}

TEST(HasEightBitBytesTest, DetectsHighBytesOnly) {
  EXPECT_FALSE(HasEightBitBytes(""));
  EXPECT_FALSE(HasEightBitBytes("plain ascii\r\n\x7f"));
  EXPECT_TRUE(HasEightBitBytes("caf\xc3\xa9"));
  EXPECT_TRUE(HasEightBitBytes("\x80"));
  EXPECT_TRUE(HasEightBitBytes("\xff"));
}

}  // namespace
}  // namespace backstop::delivery
