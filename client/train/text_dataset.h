// Labelled text datasets for fine-tuning text classifiers (the ColD Fusion
// tasks): single texts or text pairs, with class labels or regression targets,
// from CSV, TSV or JSONL files, loaded into memory. Torch-free, so data can be
// checked before any training. Stateless functions; a TextDataset is a plain
// value (thread-compatible).
#ifndef COLDFUSE_CLIENT_TRAIN_TEXT_DATASET_H_
#define COLDFUSE_CLIENT_TRAIN_TEXT_DATASET_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace coldfuse::train {

// kCsv: RFC 4180 (comma-separated, a header row; fields may be quoted with '"',
// holding
//   commas, newlines and doubled quotes "").
// kTsv: tab-separated, a header row, no quoting (a field cannot hold a tab or
// newline). kJsonl: one JSON object per line, keyed by column name; no header.
enum class TextFormat { kCsv, kTsv, kJsonl };

struct TextDatasetOptions {
  // Column (CSV/TSV header name, JSONL key) of the text; required and non-empty
  // per row. Default: "text".
  std::string text_column = "text";
  // Column of an optional second text (NLI premise/hypothesis, paraphrase
  // pairs); when set, required and non-empty per row. Default: "" (single
  // texts).
  std::string text_pair_column;
  // Column of the label (class name/integer) or regression target. Default:
  // "label".
  std::string label_column = "label";
  // Labels are finite floats (STS-B-like) instead of classes. Default: false.
  bool regression = false;
  // Classification only: the label set, in id order. Empty: the distinct labels
  // of the train file, sorted (numerically when all are integers, else
  // bytewise). Non-empty: a train label outside it is an error. Ignored by
  // LoadTextDatasetLike. Default: empty.
  std::vector<std::string> labels;
};

struct TextDataset {
  std::vector<std::string> texts;
  // Empty when there is no pair column; else one per row.
  std::vector<std::string> text_pairs;
  // Classification: one per row, indexing label_names. Empty for regression.
  std::vector<int64_t> label_ids;
  // Regression: one per row. Empty for classification.
  std::vector<float> targets;
  // Classification: id -> name (integers in canonical form, e.g. "+1" -> "1").
  // Empty for regression.
  std::vector<std::string> label_names;

  int64_t rows() const { return static_cast<int64_t>(texts.size()); }
};

// Loads a train split. `format` defaults to the one named by the extension
// (.csv, .tsv, .jsonl, any case). Blank lines are skipped; a UTF-8 byte-order
// mark is ignored; texts are kept as written. A missing file gets NOT_FOUND;
// every other problem gets INVALID_ARGUMENT naming the file, the line (the
// first line of a multi-line CSV record) and, where there is one, the column,
// and saying what to fix: an unknown extension, an empty or header-only file,
// invalid UTF-8, an unterminated quote or stray quote, a wrong number of
// fields, a missing or repeated column, an empty text or label, a non-numeric
// or non-finite regression target, a label outside `labels`, invalid JSON, a
// line that is not an object, a text that is not a string or a label that is
// not a string or integer.
absl::StatusOr<TextDataset> LoadTextDataset(const std::string &path,
                                            const TextDatasetOptions &options,
                                            std::optional<TextFormat> format = {});

// Loads a test split like LoadTextDataset, but with `train`'s label names (the
// same ids); a label not among them gets INVALID_ARGUMENT naming `path`, the
// line and the label.
absl::StatusOr<TextDataset> LoadTextDatasetLike(const std::string &path, const TextDataset &train,
                                                const TextDatasetOptions &options,
                                                std::optional<TextFormat> format = {});

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_TEXT_DATASET_H_
