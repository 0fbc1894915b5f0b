// Fuzzes the CSV/TSV reader (client/train/csv.h) and the numeric CSV datasets read through
// it (client/train/dataset.h). Input: one byte of options (delimiter, quoting, blank-line
// handling), then the file's text.
//
// Asserts: no crash or UB; a rejection is INVALID_ARGUMENT "<path>: line L..."; an accepted
// table has a header and at least one row, every row with as many fields as the header,
// rows on increasing lines after the header's and within the text; without quoting no field
// holds the delimiter or a line break. Round trip: the table written back as RFC 4180 with
// every field quoted parses to the same header and fields. Column() finds exactly the
// columns the header names once. When the options are LoadCsvDataset's, loading the same
// text as a dataset succeeds or fails consistently with the table, and a loaded dataset is
// self-consistent (shapes, finite features, labels in 0..num_classes-1, compatible with
// itself).
#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "client/train/csv.h"
#include "client/train/dataset.h"
#include "fuzz/fuzz_util.h"

namespace coldfuse::fuzz {
namespace {

using train::CsvOptions;
using train::CsvTable;

std::string Quoted(const std::string& field) {
  std::string out = "\"";
  for (char c : field) {
    if (c == '"') out.push_back('"');
    out.push_back(c);
  }
  out.push_back('"');
  return out;
}

std::string WriteQuoted(const CsvTable& t) {
  std::string out;
  auto row = [&out](const std::vector<std::string>& fields) {
    for (size_t i = 0; i < fields.size(); ++i) {
      if (i > 0) out.push_back(',');
      out.append(Quoted(fields[i]));
    }
    out.push_back('\n');
  };
  row(t.header);
  for (const train::CsvRow& r : t.rows) row(r.fields);
  return out;
}

void CheckRejection(const absl::Status& s, const std::string& path) {
  FUZZ_CHECK(absl::IsInvalidArgument(s), s.ToString());
  FUZZ_CHECK(absl::StartsWith(s.message(), path + ": line "), s.ToString());
}

void CheckTable(const CsvTable& t, absl::string_view text, const CsvOptions& o) {
  FUZZ_CHECK(!t.header.empty() && !t.rows.empty(), "accepted a table without header or rows");
  const int64_t lines = 1 + std::count(text.begin(), text.end(), '\n');
  FUZZ_CHECK(t.header_line >= 1 && t.header_line <= lines, absl::StrCat(t.header_line));
  int64_t last = t.header_line;
  for (const std::string& h : t.header) {
    FUZZ_CHECK(absl::StripAsciiWhitespace(h) == h, "header name keeps surrounding whitespace");
  }
  for (const train::CsvRow& r : t.rows) {
    FUZZ_CHECK(r.fields.size() == t.header.size(),
               absl::StrCat("line ", r.line, ": ", r.fields.size(), " fields"));
    FUZZ_CHECK(r.line > last && r.line <= lines,
               absl::StrCat("row on line ", r.line, " after line ", last, " of ", lines));
    last = r.line;
    if (!o.quoting) {
      for (const std::string& f : r.fields) {
        FUZZ_CHECK(f.find(o.delimiter) == std::string::npos && f.find('\n') == std::string::npos,
                   absl::StrCat("line ", r.line, ": unquoted field holds a separator"));
      }
    }
  }
}

void CheckRoundTrip(const CsvTable& t) {
  const std::string text = WriteQuoted(t);
  absl::StatusOr<CsvTable> again = train::ParseCsv("again.csv", text);
  FUZZ_CHECK(again.ok(), absl::StrCat("quoted rewrite refused: ", again.status().ToString()));
  FUZZ_CHECK(again->header == t.header, "quoted rewrite changed the header");
  FUZZ_CHECK(again->rows.size() == t.rows.size(), "quoted rewrite changed the row count");
  for (size_t i = 0; i < t.rows.size(); ++i) {
    FUZZ_CHECK(again->rows[i].fields == t.rows[i].fields,
               absl::StrCat("quoted rewrite changed the row on line ", t.rows[i].line));
  }
}

void CheckColumn(const CsvTable& t, const std::string& name) {
  const int64_t count = std::count(t.header.begin(), t.header.end(), name);
  absl::StatusOr<int> found = t.Column(name, "label");
  if (count == 1) {
    FUZZ_CHECK(found.ok() && t.header[*found] == name, found.status().ToString());
    (void)t.Place(*found);
  } else {
    CheckRejection(found.status(), t.path);
  }
}

void CheckColumns(const CsvTable& t) {
  for (size_t c = 0; c < t.header.size() && c < 8; ++c) CheckColumn(t, t.header[c]);
  for (const char* name : {"label", "text", ""}) CheckColumn(t, name);
}

void CheckDataset(const CsvTable& t, absl::string_view text) {
  const std::string path = WriteScratchFile("data.csv", text);
  absl::StatusOr<train::Dataset> ds = train::LoadCsvDataset(path, "label");
  absl::StatusOr<int> label = t.Column("label", "label");
  if (!ds.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(ds.status()), ds.status().ToString());
    FUZZ_CHECK(absl::StartsWith(ds.status().message(), path + ": line "), ds.status().ToString());
    return;
  }
  FUZZ_CHECK(label.ok() && t.header.size() >= 2, "loaded a dataset without its columns");
  FUZZ_CHECK(ds->rows() == static_cast<int64_t>(t.rows.size()), "dataset row count");
  FUZZ_CHECK(ds->num_features == static_cast<int64_t>(t.header.size()) - 1, "num_features");
  FUZZ_CHECK(ds->feature_names.size() == static_cast<size_t>(ds->num_features), "feature names");
  FUZZ_CHECK(ds->features.size() == static_cast<size_t>(ds->rows() * ds->num_features),
             "features size");
  for (float v : ds->features) FUZZ_CHECK(std::isfinite(v), "a non-finite feature");
  int64_t max_label = -1;
  for (int64_t l : ds->labels) {
    FUZZ_CHECK(l >= 0 && l < ds->num_classes, absl::StrCat("label ", l));
    max_label = std::max(max_label, l);
  }
  FUZZ_CHECK(ds->num_classes == max_label + 1, "num_classes is not max label + 1");
  absl::Status self = train::CheckCompatible(*ds, *ds, path);
  FUZZ_CHECK(self.ok(), self.ToString());
}

}  // namespace
}  // namespace coldfuse::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace coldfuse;
  using namespace coldfuse::fuzz;
  FuzzInput in(data, size);
  const uint8_t flags = in.Byte();
  static const char kDelimiters[] = {',', '\t', ';', '|'};
  CsvOptions o;
  o.delimiter = kDelimiters[flags & 3];
  o.quoting = (flags & 4) == 0;
  o.skip_blank_lines = (flags & 8) == 0;
  absl::string_view text = in.Rest();

  const std::string path = "fuzz.csv";
  absl::StatusOr<CsvTable> t = train::ParseCsv(path, text, o);
  if (!t.ok()) {
    CheckRejection(t.status(), path);
    return 0;
  }
  FUZZ_CHECK(t->path == path, t->path);
  absl::string_view body = text;
  if (absl::StartsWith(body, "\xEF\xBB\xBF")) body.remove_prefix(3);
  CheckTable(*t, body, o);
  CheckRoundTrip(*t);
  CheckColumns(*t);
  // LoadCsvDataset's options: RFC 4180 with commas, blank lines only at the end.
  if (o.delimiter == ',' && o.quoting && !o.skip_blank_lines) CheckDataset(*t, text);
  return 0;
}
