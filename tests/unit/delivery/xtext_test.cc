#include "delivery/xtext.h"

#include <string>

#include <gtest/gtest.h>

namespace backstop::delivery {
namespace {

TEST(XtextTest, EncodesPlusEqualsSpaceControlAndEightBit) {
  EXPECT_EQ(XtextEncode("a+b=c d"), "a+2Bb+3Dc+20d");
  EXPECT_EQ(XtextEncode(std::string("\x01\x7f\xc3\xa9", 4)), "+01+7F+C3+A9");
  EXPECT_EQ(XtextEncode("rfc822;user@example.com"), "rfc822;user@example.com");
}

TEST(XtextTest, DecodesWhatItEncodes) {
  std::string all;
  for (int c = 0; c < 256; ++c) {
    all.push_back(static_cast<char>(c));
  }
  EXPECT_EQ(XtextDecode(XtextEncode(all)), all);
}

TEST(XtextTest, RejectsInvalidXtext) {
  for (const char* bad : {"a b", "a=b", "+", "+4", "+4g", "+4a", "\x80", "x+"}) {
    EXPECT_EQ(XtextDecode(bad), std::nullopt) << bad;
  }
  EXPECT_EQ(XtextDecode(""), "");
}

}  // namespace
}  // namespace backstop::delivery
