#include "client/train/dataset.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "client/train/csv.h"
#include "common/status_macros.h"

namespace coldfuse::train {
namespace {

// Labels index the head's rows, so they bound its size.
constexpr int64_t kMaxClasses = int64_t{1} << 20;

// Parses a class index: an integer, or a float with an integral value ("3.0").
bool ParseLabel(absl::string_view field, int64_t* out) {
  if (absl::SimpleAtoi(field, out)) return true;
  double d;
  if (!absl::SimpleAtod(field, &d) || !std::isfinite(d) || d != std::floor(d) ||
      std::fabs(d) > 9.0e15) {
    return false;
  }
  *out = static_cast<int64_t>(d);
  return true;
}

}  // namespace

absl::StatusOr<Dataset> LoadCsvDataset(const std::string& path, const std::string& label_column) {
  // Blank lines only at the end, and no field across lines: row i stays on line i + 2,
  // which CheckCompatible's messages rely on.
  CsvOptions options;
  options.skip_blank_lines = false;
  ASSIGN_OR_RETURN(CsvTable table, ReadCsv(path, options));
  ASSIGN_OR_RETURN(const int label_index, table.Column(label_column, "label"));
  const std::vector<std::string>& header = table.header;
  if (header.size() < 2) {
    return CsvError(path, table.header_line, "header",
                    "no feature columns besides the label column");
  }

  Dataset ds;
  ds.num_features = static_cast<int64_t>(header.size()) - 1;
  for (int c = 0; c < static_cast<int>(header.size()); ++c) {
    if (c != label_index) ds.feature_names.push_back(header[c]);
  }
  const size_t rows = table.rows.size();
  ds.features.reserve(rows * static_cast<size_t>(ds.num_features));
  ds.labels.reserve(rows);
  for (const CsvRow& row : table.rows) {
    for (int c = 0; c < static_cast<int>(row.fields.size()); ++c) {
      if (absl::StrContains(row.fields[c], '\n')) {
        return CsvError(path, row.line, table.Place(c),
                        "a quoted value spans lines; write each number on its row's line");
      }
      absl::string_view f = absl::StripAsciiWhitespace(row.fields[c]);
      if (c == label_index) {
        int64_t label;
        if (!ParseLabel(f, &label) || label < 0 || label >= kMaxClasses) {
          return CsvError(path, row.line, table.Place(c),
                          absl::StrCat("label '", f, "' is not a class index (an integer in 0..",
                                       kMaxClasses - 1, ")"));
        }
        ds.labels.push_back(label);
        ds.num_classes = std::max(ds.num_classes, label + 1);
        continue;
      }
      float v;
      if (!absl::SimpleAtof(f, &v) || !std::isfinite(v)) {
        return CsvError(path, row.line, table.Place(c),
                        absl::StrCat("'", f, "' is not a finite number"));
      }
      ds.features.push_back(v);
    }
  }
  return ds;
}

absl::Status CheckCompatible(const Dataset& train, const Dataset& test,
                             const std::string& test_path) {
  if (train.num_features != test.num_features) {
    return absl::InvalidArgumentError(absl::StrCat(
        test_path, ": has ", test.num_features, " feature columns but the train split has ",
        train.num_features, "; both splits need the same columns"));
  }
  for (int64_t r = 0; r < test.rows(); ++r) {
    int64_t label = test.labels[static_cast<size_t>(r)];
    if (label >= train.num_classes) {
      // Rows start on line 2, after the header (LoadCsvDataset allows no blank lines and
      // no multi-line fields inside).
      return absl::InvalidArgumentError(
          absl::StrCat(test_path, ": line ", r + 2, ": label ", label,
                       " does not occur in the train split, whose labels are 0..",
                       train.num_classes - 1, "; the model cannot learn a class it never sees"));
    }
  }
  return absl::OkStatus();
}

}  // namespace coldfuse::train
