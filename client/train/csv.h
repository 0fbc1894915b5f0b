// The one reader of delimited text files with a header row: CSV as RFC 4180 and, with
// quoting off, TSV. Both kinds of dataset read their files through it (dataset.h: numeric
// features; text_dataset.h: labelled texts), so they accept the same files and name
// problems the same way: "<file>: line L, column C ('name'): what to fix". Torch-free.
// Stateless functions; a CsvTable is a plain value (thread-compatible).
#ifndef COLDFUSE_CLIENT_TRAIN_CSV_H_
#define COLDFUSE_CLIENT_TRAIN_CSV_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace coldfuse::train {

struct CsvOptions {
  // Field separator. Default: ','.
  char delimiter = ',';
  // RFC 4180 quoting: a field that starts with '"' ends at the next lone '"' and may hold
  // delimiters, line breaks and doubled quotes (""). false: '"' is an ordinary character
  // and a field cannot hold the delimiter or a line break (TSV). Default: true.
  bool quoting = true;
  // true: blank (whitespace-only) lines between records are skipped. false: blank lines
  // may only end the file; one inside the data is read as a record of one field, which
  // then fails the field count (for files whose row i must be on line i + 2). Default: true.
  bool skip_blank_lines = true;
};

struct CsvRow {
  int64_t line = 0;                 // the line the record starts on (1-based)
  std::vector<std::string> fields;  // as many as the header has; "\r\n" and "\n" removed
};

struct CsvTable {
  std::string path;  // as given, for messages
  // Column names, surrounding whitespace removed.
  std::vector<std::string> header;
  int64_t header_line = 1;
  // At least one.
  std::vector<CsvRow> rows;

  // The index of the one column called `name`. INVALID_ARGUMENT naming the header line
  // and saying what to fix when there is none (listing the columns) or more than one
  // (naming the second); `role` ("label", "text") names the column in the message.
  absl::StatusOr<int> Column(absl::string_view name, absl::string_view role) const;
  // "column 2 ('text')", for messages.
  std::string Place(int column) const;
};

// Parses `text`, the contents of `path` (used only in messages). A leading UTF-8
// byte-order mark is ignored. INVALID_ARGUMENT "<path>: line L[, column C]: ..." for an
// empty file, a header without rows, a row with another number of fields than the header,
// and, with quoting, a quoted field never closed, text after a closing quote or a '"'
// inside an unquoted field.
absl::StatusOr<CsvTable> ParseCsv(const std::string& path, absl::string_view text,
                                  const CsvOptions& options = {});

// Reads `path` and parses it as ParseCsv does; NOT_FOUND naming the path if missing.
absl::StatusOr<CsvTable> ReadCsv(const std::string& path, const CsvOptions& options = {});

// INVALID_ARGUMENT "<path>: line L, <where>: <what>" (", <where>" left out when empty):
// the shape of every data-file error.
absl::Status CsvError(absl::string_view path, int64_t line, absl::string_view where,
                      absl::string_view what);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_CSV_H_
