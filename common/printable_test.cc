#include "common/printable.h"

#include <gtest/gtest.h>

#include <string>

namespace coldfuse {
namespace {

bool HasControlBytes(const std::string& s) {
  for (unsigned char c : s) {
    if (c < 0x20 || c == 0x7F) return true;
  }
  return s.find("\xC2\x9B") != std::string::npos;  // C1 CSI
}

TEST(PrintableTest, TerminalEscapesAndLineBreaksBecomeVisible) {
  EXPECT_EQ(Printable("ok \x1b[2J\x07 clear"), "ok \\x1b[2J\\x07 clear");
  EXPECT_EQ(Printable("a\nfake audit line\r\tb"), "a\\nfake audit line\\r\\tb");
  EXPECT_EQ(Printable("\x1b]0;title\x07"), "\\x1b]0;title\\x07");
  // C1 controls (8-bit CSI as UTF-8) and DEL.
  EXPECT_EQ(Printable("x\xC2\x9B"
                      "2Jy\x7F"),
            "x\\xc2\\x9b2Jy\\x7f");
}

TEST(PrintableTest, PrintableUtf8AndBackslashesAreKeptSoEscapingTwiceChangesNothing) {
  const std::string text = "Zoë 日本 \\x41 path\\to";
  EXPECT_EQ(Printable(text), text);
  const std::string once = Printable("evil\x1b[31m\xff\xfe\xC0\xAF");
  EXPECT_EQ(Printable(once), once);
  EXPECT_FALSE(HasControlBytes(once));
}

TEST(PrintableTest, InvalidUtf8IsEscapedBytewise) {
  EXPECT_EQ(Printable("\xff"), "\\xff");
  EXPECT_EQ(Printable("\xC0\xAF"), "\\xc0\\xaf");           // overlong '/'
  EXPECT_EQ(Printable("\xED\xA0\x80"), "\\xed\\xa0\\x80");  // a surrogate
  EXPECT_EQ(Printable("\xE6\x97"), "\\xe6\\x97");           // cut short
}

TEST(PrintableTest, TruncatedKeepsTheBoundAndSaysTheOriginalSize) {
  const std::string huge(1 << 20, 'n');
  const std::string cut = PrintableTruncated(huge, 256);
  EXPECT_LE(cut.size(), 256u);
  EXPECT_NE(cut.find("(1048576 bytes)"), std::string::npos) << cut;
  // Never ends inside a multi-byte character.
  std::string wide;
  for (int i = 0; i < 200; ++i) wide += "日";
  const std::string w = PrintableTruncated(wide, 100);
  EXPECT_LE(w.size(), 100u);
  EXPECT_EQ(Printable(w), w) << "a cut character would show as \\x escapes";
  EXPECT_EQ(PrintableTruncated("short", 100), "short");
}

}  // namespace
}  // namespace coldfuse
