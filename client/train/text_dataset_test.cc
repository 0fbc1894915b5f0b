#include "client/train/text_dataset.h"

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
using ::testing::IsEmpty;

class TextDatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/text_dataset_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }

  std::string Write(const std::string &name, const std::string &contents) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  // Expects INVALID_ARGUMENT whose message names the file and every fragment in
  // `where`.
  static void ExpectInvalid(const absl::StatusOr<TextDataset> &ds, const std::string &name,
                            std::initializer_list<std::string> where) {
    ASSERT_FALSE(ds.ok()) << name;
    EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument) << ds.status();
    std::string msg(ds.status().message());
    EXPECT_THAT(msg, HasSubstr(name));
    for (const std::string &w : where) EXPECT_THAT(msg, HasSubstr(w));
  }

  // Loads `contents` as "<name>" with `o` and expects INVALID_ARGUMENT naming
  // `where`.
  void ExpectInvalid(const std::string &name, const std::string &contents,
                     std::initializer_list<std::string> where, const TextDatasetOptions &o = {}) {
    ExpectInvalid(LoadTextDataset(Write(name, contents), o), name, where);
  }

  std::string dir_;
};

TEST_F(TextDatasetTest, CsvQuotedFieldsWithCommasQuotesAndNewlines) {
  std::string path = Write("ok.csv",
                           "\xEF\xBB\xBFid,text,label\r\n"
                           "1,\"a, b\",pos\r\n"
                           "2,\"she said \"\"hi\"\"\",neg\n"
                           "\n"
                           "3,\"two\nlines\",pos\n"
                           "4,plain,\"neg\"");
  absl::StatusOr<TextDataset> ds = LoadTextDataset(path, {});
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->rows(), 4);
  EXPECT_THAT(ds->texts, ElementsAre("a, b", "she said \"hi\"", "two\nlines", "plain"));
  EXPECT_THAT(ds->text_pairs, IsEmpty());
  EXPECT_THAT(ds->label_names, ElementsAre("neg", "pos"));
  EXPECT_THAT(ds->label_ids, ElementsAre(1, 0, 1, 0));
  EXPECT_THAT(ds->targets, IsEmpty());
}

TEST_F(TextDatasetTest, TsvPairsWithIntegerLabelsSortedNumerically) {
  TextDatasetOptions o;
  o.text_column = "premise";
  o.text_pair_column = "hypothesis";
  std::string path = Write("nli.tsv",
                           "premise\thypothesis\tlabel\n"
                           "A man \"sleeps\".\tA person rests.\t10\n"
                           "p2\th2\t2\r\n"
                           "p3\th3\t+2\n\n");
  absl::StatusOr<TextDataset> ds = LoadTextDataset(path, o);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT(ds->texts, ElementsAre("A man \"sleeps\".", "p2", "p3"));
  EXPECT_THAT(ds->text_pairs, ElementsAre("A person rests.", "h2", "h3"));
  EXPECT_THAT(ds->label_names, ElementsAre("2", "10"));
  EXPECT_THAT(ds->label_ids, ElementsAre(1, 0, 0));
}

TEST_F(TextDatasetTest, JsonlStringAndNumberLabels) {
  std::string path = Write("ok.jsonl",
                           "{\"text\": \"caf\\u00e9\", \"label\": 1, \"extra\": [1]}\n"
                           "\n"
                           "{\"label\": 0, \"text\": \"b\"}\r\n");
  absl::StatusOr<TextDataset> ds = LoadTextDataset(path, {});
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT(ds->texts, ElementsAre("caf\xC3\xA9", "b"));
  EXPECT_THAT(ds->label_names, ElementsAre("0", "1"));
  EXPECT_THAT(ds->label_ids, ElementsAre(1, 0));

  std::string named = Write("named.jsonl",
                            "{\"text\": \"x\", \"label\": \"entailment\"}\n"
                            "{\"text\": \"y\", \"label\": \"contradiction\"}\n");
  ds = LoadTextDataset(named, {});
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT(ds->label_names, ElementsAre("contradiction", "entailment"));
  EXPECT_THAT(ds->label_ids, ElementsAre(1, 0));
}

TEST_F(TextDatasetTest, RegressionTargets) {
  TextDatasetOptions o;
  o.text_pair_column = "text_b";
  o.label_column = "score";
  o.regression = true;
  absl::StatusOr<TextDataset> ds =
      LoadTextDataset(Write("stsb.csv", "text,text_b,score\na,b,4.5\nc,d, 0 \n"), o);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT(ds->targets, ElementsAre(4.5f, 0.f));
  EXPECT_THAT(ds->label_ids, IsEmpty());
  EXPECT_THAT(ds->label_names, IsEmpty());
  EXPECT_THAT(ds->text_pairs, ElementsAre("b", "d"));

  ds = LoadTextDataset(Write("stsb.jsonl", "{\"text\":\"a\",\"text_b\":\"b\",\"score\":-1.5e0}\n"),
                       o);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT(ds->targets, ElementsAre(-1.5f));

  // A test split of a regression task needs no label names.
  ds = LoadTextDatasetLike(Write("stsb_test.tsv", "text\ttext_b\tscore\nx\ty\t2\n"), *ds, o);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT(ds->targets, ElementsAre(2.f));
}

TEST_F(TextDatasetTest, GivenLabelsFixTheOrder) {
  TextDatasetOptions o;
  o.labels = {"pos", "neg", "neutral"};
  absl::StatusOr<TextDataset> ds = LoadTextDataset(Write("l.csv", "text,label\na,neg\n"), o);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT(ds->label_names, ElementsAre("pos", "neg", "neutral"));
  EXPECT_THAT(ds->label_ids, ElementsAre(1));

  ExpectInvalid("outside.csv", "text,label\na,neg\nb,other\n", {"line 3", "'other'", "label"}, o);
  o.labels = {"a", "a"};
  ExpectInvalid("repeated.csv", "text,label\na,a\n", {"repeated"}, o);
}

TEST_F(TextDatasetTest, TestSplitUsesTrainLabels) {
  absl::StatusOr<TextDataset> train =
      LoadTextDataset(Write("train.csv", "text,label\na,pos\nb,neg\n"), {});
  ASSERT_TRUE(train.ok()) << train.status();
  absl::StatusOr<TextDataset> test =
      LoadTextDatasetLike(Write("test.jsonl", "{\"text\":\"c\",\"label\":\"pos\"}\n"), *train, {});
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_THAT(test->label_names, ElementsAre("neg", "pos"));
  EXPECT_THAT(test->label_ids, ElementsAre(1));

  // A test split with only some of the labels keeps the train ids.
  test = LoadTextDatasetLike(Write("test2.csv", "text,label\nc,neg\n"), *train, {});
  ASSERT_TRUE(test.ok()) << test.status();
  EXPECT_THAT(test->label_names, ElementsAre("neg", "pos"));
  EXPECT_THAT(test->label_ids, ElementsAre(0));

  ExpectInvalid(LoadTextDatasetLike(Write("unknown.csv", "text,label\nc,neg\nd,meh\n"), *train, {}),
                "unknown.csv", {"line 3", "'meh'", "train split"});
}

TEST_F(TextDatasetTest, FormatFromExtensionOrGiven) {
  std::string path = Write("data.txt", "text\tlabel\na\t1\n");
  absl::StatusOr<TextDataset> ds = LoadTextDataset(path, {});
  ExpectInvalid(ds, "data.txt", {".csv", ".tsv", ".jsonl"});
  ds = LoadTextDataset(path, {}, TextFormat::kTsv);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_THAT(ds->texts, ElementsAre("a"));
  ds = LoadTextDataset(Write("UPPER.CSV", "text,label\na,1\n"), {});
  EXPECT_TRUE(ds.ok()) << ds.status();
}

TEST_F(TextDatasetTest, MissingFileIsNotFound) {
  absl::StatusOr<TextDataset> ds = LoadTextDataset(dir_ + "/nope.csv", {});
  ASSERT_FALSE(ds.ok());
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kNotFound) << ds.status();
  EXPECT_THAT(std::string(ds.status().message()), HasSubstr("nope.csv"));
}

TEST_F(TextDatasetTest, EmptyAndHeaderOnlyFiles) {
  ExpectInvalid("empty.csv", "", {"line 1", "empty"});
  ExpectInvalid("blank.tsv", "\n \n", {"line 1", "empty"});
  ExpectInvalid("empty.jsonl", "\n", {"line 1", "empty"});
  ExpectInvalid("header.csv", "text,label\n", {"line 2", "no rows"});
  ExpectInvalid("header.tsv", "text\tlabel\n\n", {"line 2", "no rows"});
}

TEST_F(TextDatasetTest, MalformedCsvRows) {
  ExpectInvalid("unterminated.csv", "text,label\na,1\n\"open,1\nb,2\n",
                {"line 3", "column 1", "never closed"});
  ExpectInvalid("after_quote.csv", "text,label\n\"a\"b,1\n", {"line 2", "column 1", "closing"});
  ExpectInvalid("stray_quote.csv", "text,label\na\"b,1\n", {"line 2", "column 1", "unquoted"});
  // The record after a multi-line field is numbered by its first line.
  ExpectInvalid("fields.csv", "text,label\n\"x\ny\",1\nb,2,3\n",
                {"line 4", "3 fields", "header has 2"});
  ExpectInvalid("fields.tsv", "text\tlabel\na\n", {"line 2", "1 fields", "header has 2"});
}

TEST_F(TextDatasetTest, MissingOrRepeatedColumn) {
  ExpectInvalid("nolabel.csv", "text,y\na,1\n", {"line 1", "'label'", "'text', 'y'"});
  ExpectInvalid("notext.tsv", "sentence\tlabel\na\t1\n", {"line 1", "'text'"});
  TextDatasetOptions o;
  o.text_pair_column = "text_b";
  ExpectInvalid("nopair.csv", "text,label\na,1\n", {"line 1", "'text_b'"}, o);
  ExpectInvalid("twice.csv", "text,label,text\na,1,b\n", {"line 1", "column 3", "second"});
  ExpectInvalid("nokey.jsonl", "{\"text\":\"a\",\"label\":1}\n{\"label\":1}\n",
                {"line 2", "'text'"});
  ExpectInvalid("nolabel.jsonl", "{\"text\":\"a\"}\n", {"line 1", "'label'"});
  ExpectInvalid("nopair.jsonl", "{\"text\":\"a\",\"label\":1}\n", {"line 1", "'text_b'"}, o);
}

TEST_F(TextDatasetTest, EmptyTextOrLabel) {
  ExpectInvalid("empty_text.csv", "text,label\na,1\n\"  \",0\n",
                {"line 3", "column 1 ('text')", "empty"});
  TextDatasetOptions o;
  o.text_pair_column = "b";
  ExpectInvalid("empty_pair.tsv", "text\tb\tlabel\nx\t\t1\n", {"line 2", "('b')", "empty"}, o);
  ExpectInvalid("empty_text.jsonl", "{\"text\":\"\",\"label\":1}\n",
                {"line 1", "key 'text'", "empty"});
  ExpectInvalid("empty_label.csv", "text,label\na,\n", {"line 2", "('label')", "empty"});
}

TEST_F(TextDatasetTest, InvalidUtf8) {
  ExpectInvalid("bad_utf8.csv", "text,label\na,1\nb\xC3,0\n", {"line 3", "UTF-8"});
  ExpectInvalid("bad_utf8.jsonl", "{\"text\":\"\xFF\",\"label\":1}\n", {"line 1", "UTF-8"});
}

TEST_F(TextDatasetTest, BadRegressionTarget) {
  TextDatasetOptions o;
  o.regression = true;
  ExpectInvalid("nan.csv", "text,label\na,1.5\nb,high\n", {"line 3", "'high'", "number"}, o);
  ExpectInvalid("inf.tsv", "text\tlabel\na\tinf\n", {"line 2", "'inf'"}, o);
  ExpectInvalid("bool.jsonl", "{\"text\":\"a\",\"label\":true}\n", {"line 1", "boolean"}, o);
}

TEST_F(TextDatasetTest, BadJsonLines) {
  ExpectInvalid("syntax.jsonl", "{\"text\":\"a\",\"label\":1}\n{\"text\": \"b\",}\n",
                {"line 2", "not valid JSON"});
  ExpectInvalid("array.jsonl", "[\"a\", 1]\n", {"line 1", "array", "not an object"});
  ExpectInvalid("number_text.jsonl", "{\"text\":5,\"label\":1}\n",
                {"line 1", "key 'text'", "not a string"});
  ExpectInvalid("null_label.jsonl", "{\"text\":\"a\",\"label\":null}\n", {"line 1", "null"});
}

}  // namespace
}  // namespace coldfuse::train
