#include "client/train/dataset.h"

#include <stdlib.h>

#include <fstream>
#include <string>

#include "absl/status/status.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace coldfuse::train {
namespace {

using ::testing::HasSubstr;

class DatasetTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = ::testing::TempDir() + "/dataset_test.XXXXXX";
    ASSERT_NE(mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }

  std::string Write(const std::string& name, const std::string& contents) {
    std::string path = dir_ + "/" + name;
    std::ofstream(path, std::ios::binary) << contents;
    return path;
  }

  // Loads `contents` as "<name>" and expects INVALID_ARGUMENT whose message names the
  // file and every fragment in `where`.
  void ExpectInvalid(const std::string& name, const std::string& contents,
                     std::initializer_list<std::string> where) {
    absl::StatusOr<Dataset> ds = LoadCsvDataset(Write(name, contents));
    ASSERT_FALSE(ds.ok()) << name;
    EXPECT_EQ(ds.status().code(), absl::StatusCode::kInvalidArgument) << ds.status();
    std::string msg(ds.status().message());
    EXPECT_THAT(msg, HasSubstr(name));
    for (const std::string& w : where) EXPECT_THAT(msg, HasSubstr(w));
  }

  std::string dir_;
};

TEST_F(DatasetTest, LoadsFeaturesAndLabelsInAnyColumnOrder) {
  std::string path = Write("ok.csv", "a,label,b\r\n0.5,1,2\n-1e-3,0,4\n\n");
  absl::StatusOr<Dataset> ds = LoadCsvDataset(path);
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->num_features, 2);
  EXPECT_EQ(ds->num_classes, 2);
  EXPECT_EQ(ds->rows(), 2);
  EXPECT_EQ(ds->features, (std::vector<float>{0.5f, 2.f, -1e-3f, 4.f}));
  EXPECT_EQ(ds->labels, (std::vector<int64_t>{1, 0}));
  EXPECT_EQ(ds->feature_names, (std::vector<std::string>{"a", "b"}));
}

TEST_F(DatasetTest, CustomLabelColumn) {
  absl::StatusOr<Dataset> ds = LoadCsvDataset(Write("y.csv", "x,y\n1,3\n"), "y");
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->num_classes, 4);
}

TEST_F(DatasetTest, MissingFileIsNotFoundNamingPath) {
  std::string path = dir_ + "/absent.csv";
  absl::StatusOr<Dataset> ds = LoadCsvDataset(path);
  EXPECT_EQ(ds.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(std::string(ds.status().message()), HasSubstr(path));
}

TEST_F(DatasetTest, NonNumericValueNamesLineAndColumn) {
  ExpectInvalid("text.csv", "a,b,label\n1,2,0\n1,x,1\n", {"line 3", "column 2", "'b'"});
}

TEST_F(DatasetTest, NonFiniteValueNamesLineAndColumn) {
  ExpectInvalid("nan.csv", "a,b,label\n1,nan,0\n", {"line 2", "column 2"});
  ExpectInvalid("inf.csv", "a,b,label\n1,2,0\ninf,2,0\n", {"line 3", "column 1"});
  ExpectInvalid("huge.csv", "a,b,label\n1e60,2,0\n", {"line 2", "column 1"});
}

TEST_F(DatasetTest, WrongFieldCountNamesLineAndColumn) {
  ExpectInvalid("short.csv", "a,b,label\n1,2,0\n1,2\n", {"line 3", "column 3", "2 fields"});
  ExpectInvalid("long.csv", "a,b,label\n1,2,0,7\n", {"line 2", "column 4", "4 fields"});
  ExpectInvalid("blank.csv", "a,b,label\n1,2,0\n\n1,2,0\n", {"line 3", "column 2"});
}

TEST_F(DatasetTest, BadLabelsNameLineAndColumn) {
  ExpectInvalid("neg.csv", "a,label\n1,0\n1,-1\n", {"line 3", "column 2", "'label'", "-1"});
  ExpectInvalid("frac.csv", "a,label\n1,0.5\n", {"line 2", "column 2", "0.5"});
  ExpectInvalid("word.csv", "a,label\n1,cat\n", {"line 2", "column 2", "cat"});
}

TEST_F(DatasetTest, IntegralFloatLabelIsAccepted) {
  absl::StatusOr<Dataset> ds = LoadCsvDataset(Write("f.csv", "a,label\n1,2.0\n"));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->labels[0], 2);
}

// The plain comma split before csv.h misread these: quoted numbers were "not a number"
// and a quoted header name holding a comma was two columns.
TEST_F(DatasetTest, QuotedFieldsAreReadAsRfc4180) {
  absl::StatusOr<Dataset> ds =
      LoadCsvDataset(Write("quoted.csv", "\"a\",\"label\",\"b, c\"\n\"0.5\", 1 ,\"2\"\n"));
  ASSERT_TRUE(ds.ok()) << ds.status();
  EXPECT_EQ(ds->feature_names, (std::vector<std::string>{"a", "b, c"}));
  EXPECT_EQ(ds->features, (std::vector<float>{0.5f, 2.f}));
  EXPECT_EQ(ds->labels, (std::vector<int64_t>{1}));
  // Row i stays on line i + 2: a value may not span lines.
  ExpectInvalid("split.csv", "a,label\n\"1\n\",0\n", {"line 2", "column 1", "spans lines"});
  ExpectInvalid("stray.csv", "a,label\n1\"5,0\n", {"line 2", "column 1", "unquoted"});
  ExpectInvalid("open.csv", "a,label\n1,0\n\"2,1\n", {"line 3", "column 1", "never closed"});
}

TEST_F(DatasetTest, MissingLabelColumnNamesHeaderLine) {
  ExpectInvalid("nolabel.csv", "a,b,target\n1,2,0\n", {"line 1", "'label'"});
}

TEST_F(DatasetTest, EmptyFileAndHeaderOnlyAreInvalid) {
  ExpectInvalid("empty.csv", "", {"line 1", "empty"});
  ExpectInvalid("header.csv", "a,b,label\n", {"line 2", "no rows"});
}

TEST_F(DatasetTest, CheckCompatibleRejectsUnknownTestLabel) {
  absl::StatusOr<Dataset> train = LoadCsvDataset(Write("train.csv", "a,label\n1,0\n2,1\n"));
  std::string test_path = Write("test.csv", "a,label\n1,1\n2,0\n3,5\n");
  absl::StatusOr<Dataset> test = LoadCsvDataset(test_path);
  ASSERT_TRUE(train.ok() && test.ok());
  absl::Status st = CheckCompatible(*train, *test, test_path);
  EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
  std::string msg(st.message());
  EXPECT_THAT(msg, HasSubstr("test.csv"));
  EXPECT_THAT(msg, HasSubstr("line 4"));
  EXPECT_THAT(msg, HasSubstr("label 5"));
}

TEST_F(DatasetTest, CheckCompatibleRejectsOtherFeatureCountAndAcceptsMatch) {
  absl::StatusOr<Dataset> train = LoadCsvDataset(Write("tr.csv", "a,b,label\n1,2,0\n2,3,1\n"));
  absl::StatusOr<Dataset> narrow = LoadCsvDataset(Write("te1.csv", "a,label\n1,0\n"));
  absl::StatusOr<Dataset> fine = LoadCsvDataset(Write("te2.csv", "a,b,label\n1,1,1\n"));
  ASSERT_TRUE(train.ok() && narrow.ok() && fine.ok());
  EXPECT_EQ(CheckCompatible(*train, *narrow, "te1.csv").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(CheckCompatible(*train, *fine, "te2.csv").ok());
}

}  // namespace
}  // namespace coldfuse::train
