#include "client/train/csv.h"

#include <stdlib.h>

#include <fstream>
#include <initializer_list>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse::train {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

// Expects INVALID_ARGUMENT "<path>: line ..." holding every fragment of `where`.
void ExpectInvalid(const absl::Status& st, const std::string& path,
                   std::initializer_list<std::string> where) {
  ASSERT_FALSE(st.ok()) << path;
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument) << st;
  std::string msg(st.message());
  EXPECT_THAT(msg, HasSubstr(path + ": line "));
  for (const std::string& w : where) EXPECT_THAT(msg, HasSubstr(w));
}

void ExpectInvalid(const std::string& path, const std::string& text,
                   std::initializer_list<std::string> where, const CsvOptions& o = {}) {
  ExpectInvalid(ParseCsv(path, text, o).status(), path, where);
}

std::vector<int64_t> Lines(const CsvTable& t) {
  std::vector<int64_t> out;
  for (const CsvRow& r : t.rows) out.push_back(r.line);
  return out;
}

TEST(CsvTest, Rfc4180QuotedFieldsHoldCommasQuotesAndLineBreaks) {
  absl::StatusOr<CsvTable> t = ParseCsv("q.csv",
                                        "\xEF\xBB\xBF id ,\"text\",label\r\n"
                                        "1,\"a, b\",pos\r\n"
                                        "2,\"she said \"\"hi\"\"\",neg\n"
                                        "3,\"two\r\nlines\",\"\"\n"
                                        "4,plain,x");
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->header, ElementsAre("id", "text", "label"));  // trimmed, unquoted, no BOM
  EXPECT_EQ(t->header_line, 1);
  ASSERT_EQ(t->rows.size(), 4u);
  EXPECT_THAT(t->rows[0].fields, ElementsAre("1", "a, b", "pos"));
  EXPECT_THAT(t->rows[1].fields, ElementsAre("2", "she said \"hi\"", "neg"));
  EXPECT_THAT(t->rows[2].fields, ElementsAre("3", "two\r\nlines", ""));
  EXPECT_THAT(t->rows[3].fields, ElementsAre("4", "plain", "x"));
  // A record is numbered by its first line; the one after a two-line field by its own.
  EXPECT_THAT(Lines(*t), ElementsAre(2, 3, 4, 6));
}

TEST(CsvTest, BlankLinesAreSkippedOrMayOnlyEndTheFile) {
  const std::string text = "\na,b\n1,2\n  \n3,4\n\n \n";
  absl::StatusOr<CsvTable> t = ParseCsv("blank.csv", text);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->header_line, 2);
  EXPECT_THAT(Lines(*t), ElementsAre(3, 5));

  CsvOptions strict;
  strict.skip_blank_lines = false;
  t = ParseCsv("end.csv", "a,b\n1,2\n3,4\n\n \n", strict);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(Lines(*t), ElementsAre(2, 3));
  // Inside the data, a blank line is a row of one field.
  ExpectInvalid("inside.csv", "a,b\n1,2\n\n3,4\n", {"line 3, column 2", "found 1 fields"}, strict);
}

TEST(CsvTest, TsvHasNoQuoting) {
  CsvOptions tsv;
  tsv.delimiter = '\t';
  tsv.quoting = false;
  absl::StatusOr<CsvTable> t = ParseCsv("t.tsv", "text\tlabel\n\"quoted\" \"twice\"\t1,2\r\n", tsv);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_THAT(t->rows[0].fields, ElementsAre("\"quoted\" \"twice\"", "1,2"));
  ExpectInvalid("t.tsv", "text\tlabel\na\n",
                {"line 2", "found 1 fields but the header has 2", "a field cannot hold tabs"}, tsv);
}

TEST(CsvTest, QuotingMistakesNameLineAndColumn) {
  ExpectInvalid("open.csv", "a,b\n1,2\n3,\"open\n4,5\n", {"line 3, column 2", "never closed"});
  ExpectInvalid("after.csv", "a,b\n\"x\"y,1\n", {"line 2, column 1", "after a closing quote"});
  ExpectInvalid("stray.csv", "a,b\n1,x\"y\n", {"line 2, column 2", "inside an unquoted field"});
}

TEST(CsvTest, FieldCountEmptyFileAndHeaderOnly) {
  ExpectInvalid(
      "short.csv", "a,b,c\n1,2,3\n1,2\n",
      {"line 3, column 3", "found 2 fields but the header has 3", "quote fields that hold commas"});
  ExpectInvalid("long.csv", "a,b\n1,\"2,3\",4\n", {"line 2, column 3", "found 3 fields"});
  ExpectInvalid("empty.csv", "", {"line 1", "the file is empty"});
  ExpectInvalid("blank.csv", " \n\n", {"line 1", "the file is empty"});
  ExpectInvalid("header.csv", "\na,b\n\n", {"line 3", "a header but no rows"});
}

TEST(CsvTest, ColumnsAreFoundOnceByName) {
  absl::StatusOr<CsvTable> t = ParseCsv("c.csv", "text,label,text\nx,1,y\n");
  ASSERT_TRUE(t.ok()) << t.status();
  absl::StatusOr<int> label = t->Column("label", "label");
  ASSERT_TRUE(label.ok()) << label.status();
  EXPECT_EQ(*label, 1);
  EXPECT_EQ(t->Place(1), "column 2 ('label')");
  ExpectInvalid(t->Column("text", "text").status(), "c.csv",
                {"line 1, column 3", "a second column named 'text'", "one text column"});
  ExpectInvalid(t->Column("score", "target").status(), "c.csv",
                {"line 1, header", "no target column 'score'", "'text', 'label', 'text'"});
}

TEST(CsvTest, ReadCsvReadsTheFileOrSaysItIsMissing) {
  std::string dir = ::testing::TempDir() + "/csv_test.XXXXXX";
  ASSERT_NE(mkdtemp(dir.data()), nullptr);
  const std::string path = dir + "/data.csv";
  std::ofstream(path, std::ios::binary) << "a,label\n\"1.5\",0\n";
  absl::StatusOr<CsvTable> t = ReadCsv(path);
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->path, path);
  EXPECT_THAT(t->rows[0].fields, ElementsAre("1.5", "0"));
  absl::StatusOr<CsvTable> missing = ReadCsv(dir + "/nope.csv");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(missing.status().message()), HasSubstr("nope.csv"));
}

}  // namespace
}  // namespace coldfuse::train
