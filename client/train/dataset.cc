#include "client/train/dataset.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace coldfuse::train {
namespace {

// Labels index the head's rows, so they bound its size.
constexpr int64_t kMaxClasses = int64_t{1} << 20;

absl::Status BadCsv(const std::string& path, int64_t line, absl::string_view where,
                    absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": line ", line, where.empty() ? "" : ", ", where, ": ", what));
}

std::string ColumnName(int column, const std::vector<std::string>& header) {
  return absl::StrCat("column ", column + 1, " ('", header[column], "')");
}

// Splits `text` into lines without their "\n" / "\r\n"; drops trailing blank lines.
std::vector<absl::string_view> SplitLines(absl::string_view text) {
  std::vector<absl::string_view> lines = absl::StrSplit(text, '\n');
  for (auto& l : lines) {
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
  }
  while (!lines.empty() && absl::StripAsciiWhitespace(lines.back()).empty()) lines.pop_back();
  return lines;
}

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
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  std::vector<absl::string_view> lines = SplitLines(text);
  if (lines.empty()) {
    return BadCsv(path, 1, "",
                  "the file is empty; expected a header row, then one row per example");
  }

  std::vector<std::string> header;
  for (absl::string_view name : absl::StrSplit(lines[0], ',')) {
    name = absl::StripAsciiWhitespace(name);
    if (name.size() >= 2 && name.front() == '"' && name.back() == '"') {
      name = name.substr(1, name.size() - 2);
    }
    header.emplace_back(name.data(), name.size());
  }
  int label_index = -1;
  for (int c = 0; c < static_cast<int>(header.size()); ++c) {
    if (header[c] != label_column) continue;
    if (label_index >= 0) {
      return BadCsv(path, 1, absl::StrCat("column ", c + 1),
                    absl::StrCat("a second column named '", label_column,
                                 "'; keep exactly one label column"));
    }
    label_index = c;
  }
  if (label_index < 0) {
    return BadCsv(path, 1, "header",
                  absl::StrCat("no column named '", label_column, "' among its ", header.size(),
                               " columns; add the class-label column or name "
                               "the one to use (label column option)"));
  }
  if (header.size() < 2) {
    return BadCsv(path, 1, "header", "no feature columns besides the label column");
  }
  if (lines.size() < 2) {
    return BadCsv(path, 2, "", "the file has a header but no rows; add at least one example");
  }

  Dataset ds;
  ds.num_features = static_cast<int64_t>(header.size()) - 1;
  for (int c = 0; c < static_cast<int>(header.size()); ++c) {
    if (c != label_index) ds.feature_names.push_back(header[c]);
  }
  const size_t rows = lines.size() - 1;
  ds.features.reserve(rows * static_cast<size_t>(ds.num_features));
  ds.labels.reserve(rows);
  std::vector<absl::string_view> fields;
  for (size_t i = 1; i < lines.size(); ++i) {
    const int64_t line = static_cast<int64_t>(i) + 1;
    fields = absl::StrSplit(lines[i], ',');
    if (fields.size() != header.size()) {
      size_t column = std::min(fields.size(), header.size()) + 1;
      return BadCsv(path, line, absl::StrCat("column ", column),
                    absl::StrCat("found ", fields.size(), " fields but the header has ",
                                 header.size(), "; every row needs one value per column"));
    }
    for (int c = 0; c < static_cast<int>(fields.size()); ++c) {
      absl::string_view f = absl::StripAsciiWhitespace(fields[c]);
      if (c == label_index) {
        int64_t label;
        if (!ParseLabel(f, &label) || label < 0 || label >= kMaxClasses) {
          return BadCsv(path, line, ColumnName(c, header),
                        absl::StrCat("label '", f, "' is not a class index (an integer in 0..",
                                     kMaxClasses - 1, ")"));
        }
        ds.labels.push_back(label);
        ds.num_classes = std::max(ds.num_classes, label + 1);
        continue;
      }
      float v;
      if (!absl::SimpleAtof(f, &v) || !std::isfinite(v)) {
        return BadCsv(path, line, ColumnName(c, header),
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
      // Rows start on line 2, after the header (LoadCsvDataset keeps no blank lines inside).
      return absl::InvalidArgumentError(
          absl::StrCat(test_path, ": line ", r + 2, ": label ", label,
                       " does not occur in the train split, whose labels are 0..",
                       train.num_classes - 1, "; the model cannot learn a class it never sees"));
    }
  }
  return absl::OkStatus();
}

}  // namespace coldfuse::train
