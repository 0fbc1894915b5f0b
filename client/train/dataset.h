// Tabular datasets for fine-tuning: a CSV file of numeric feature columns and one integer
// class-label column, loaded into memory. Torch-free, so the daemon can load and check its
// data before any training. Stateless functions; a Dataset is a plain value (thread-compatible).
#ifndef COLDFUSE_CLIENT_TRAIN_DATASET_H_
#define COLDFUSE_CLIENT_TRAIN_DATASET_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace coldfuse::train {

struct Dataset {
  int64_t num_features = 0;
  // max label + 1 over the file(s) it was checked against.
  int64_t num_classes = 0;
  // Row-major, rows() * num_features.
  std::vector<float> features;
  std::vector<int64_t> labels;
  // Header names of the feature columns, in order.
  std::vector<std::string> feature_names;

  int64_t rows() const { return static_cast<int64_t>(labels.size()); }
};

// Loads a CSV (RFC 4180, read by csv.h as the text datasets are) with a header row:
// feature columns (any names) and one integer column named `label_column` holding class
// indices 0..N-1. Fields may be quoted; surrounding whitespace is ignored. Blank lines may
// only end the file and no field may span lines, so row i is on line i + 2. Every
// malformed thing gets INVALID_ARGUMENT naming the file, line and column: a non-numeric or
// non-finite value, a wrong number of fields, a negative or non-integer label, a missing
// or repeated label column, a quoting error, an empty file or a file with a header but no
// rows. A missing file gets NOT_FOUND naming the path.
absl::StatusOr<Dataset> LoadCsvDataset(const std::string& path,
                                       const std::string& label_column = "label");

// Checks a test split against its train split: the same num_features, and every test label
// < train.num_classes (else INVALID_ARGUMENT naming `test_path`, the line and the label).
absl::Status CheckCompatible(const Dataset& train, const Dataset& test,
                             const std::string& test_path);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_DATASET_H_
