#include "client/train/csv.h"

#include <algorithm>
#include <cstddef>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace coldfuse::train {
namespace {

bool IsBlank(absl::string_view s) { return absl::StripAsciiWhitespace(s).empty(); }

// "commas", "tabs" or "'x'", for hints.
std::string DelimiterName(char d) {
  if (d == ',') return "commas";
  if (d == '\t') return "tabs";
  return absl::StrCat("'", std::string(1, d), "'");
}

// Names for a message: the first few of `names`, quoted, and how many more.
std::string ListNames(const std::vector<std::string>& names) {
  constexpr size_t kShown = 20;
  std::vector<std::string> shown(names.begin(), names.begin() + std::min(names.size(), kShown));
  std::string out = absl::StrCat("'", absl::StrJoin(shown, "', '"), "'");
  if (names.size() > kShown) absl::StrAppend(&out, " and ", names.size() - kShown, " more");
  return out;
}

// Reads the record starting at text[*pos] (line *line) into `row`; leaves *pos after its
// line break and *line on the next record's line.
absl::Status ReadRecord(const std::string& path, absl::string_view text, const CsvOptions& o,
                        size_t* pos_io, int64_t* line_io, CsvRow* row) {
  const size_t n = text.size();
  size_t pos = *pos_io;
  int64_t line = *line_io;
  const char delim = o.delimiter;
  row->line = line;
  while (true) {
    const int column = static_cast<int>(row->fields.size()) + 1;
    std::string field;
    if (o.quoting && pos < n && text[pos] == '"') {
      const int64_t open_line = line;
      ++pos;
      while (true) {
        if (pos >= n) {
          return CsvError(path, open_line, absl::StrCat("column ", column),
                          "a quoted field is never closed; end it with '\"' and write a '\"' "
                          "inside a field as '\"\"'");
        }
        const char c = text[pos];
        if (c == '"') {
          if (pos + 1 < n && text[pos + 1] == '"') {
            field.push_back('"');
            pos += 2;
            continue;
          }
          ++pos;
          break;
        }
        if (c == '\n') ++line;
        field.push_back(c);
        ++pos;
      }
      if (pos < n && text[pos] == '\r' && (pos + 1 == n || text[pos + 1] == '\n')) ++pos;
      if (pos < n && text[pos] != delim && text[pos] != '\n') {
        return CsvError(path, line, absl::StrCat("column ", column),
                        "text after a closing quote; quote the whole field and write a '\"' "
                        "inside it as '\"\"'");
      }
    } else {
      size_t end = pos;
      while (end < n && text[end] != delim && text[end] != '\n') {
        if (o.quoting && text[end] == '"') {
          return CsvError(path, line, absl::StrCat("column ", column),
                          "a '\"' inside an unquoted field; quote the whole field and write "
                          "the '\"' as '\"\"'");
        }
        ++end;
      }
      absl::string_view f = text.substr(pos, end - pos);
      if (!f.empty() && f.back() == '\r') f.remove_suffix(1);
      field.assign(f.data(), f.size());
      pos = end;
    }
    row->fields.push_back(std::move(field));
    if (pos < n && text[pos] == delim) {
      ++pos;
      continue;
    }
    if (pos < n) ++pos;  // the '\n'
    ++line;
    break;
  }
  *pos_io = pos;
  *line_io = line;
  return absl::OkStatus();
}

}  // namespace

absl::Status CsvError(absl::string_view path, int64_t line, absl::string_view where,
                      absl::string_view what) {
  return absl::InvalidArgumentError(
      absl::StrCat(path, ": line ", line, where.empty() ? "" : ", ", where, ": ", what));
}

absl::StatusOr<CsvTable> ParseCsv(const std::string& path, absl::string_view text,
                                  const CsvOptions& o) {
  if (absl::StartsWith(text, "\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 BOM
  std::vector<CsvRow> records;
  const size_t n = text.size();
  size_t pos = 0;
  int64_t line = 1;
  while (pos < n) {
    size_t eol = text.find('\n', pos);
    if (eol == absl::string_view::npos) eol = n;
    if (IsBlank(text.substr(pos, eol - pos))) {
      if (o.skip_blank_lines) {
        pos = eol + 1;
        ++line;
        continue;
      }
      if (IsBlank(text.substr(pos))) break;  // only blank lines are left
      // Else a blank line inside the data: read as a record, so the field count names it.
    }
    CsvRow row;
    RETURN_IF_ERROR(ReadRecord(path, text, o, &pos, &line, &row));
    records.push_back(std::move(row));
  }
  if (records.empty()) {
    return CsvError(path, 1, "",
                    "the file is empty; expected a header row, then one row per example");
  }

  CsvTable table;
  table.path = path;
  table.header_line = records[0].line;
  for (const std::string& name : records[0].fields) {
    table.header.emplace_back(absl::StripAsciiWhitespace(name));
  }
  if (records.size() < 2) {
    return CsvError(path, table.header_line + 1, "",
                    "the file has a header but no rows; add at least one example");
  }
  const size_t columns = table.header.size();
  for (size_t i = 1; i < records.size(); ++i) {
    const CsvRow& row = records[i];
    if (row.fields.size() == columns) continue;
    return CsvError(
        path, row.line, absl::StrCat("column ", std::min(row.fields.size(), columns) + 1),
        absl::StrCat(
            "found ", row.fields.size(), " fields but the header has ", columns,
            "; every row needs one value per column",
            o.quoting ? absl::StrCat(" (quote fields that hold ", DelimiterName(o.delimiter), ")")
                      : absl::StrCat(" (a field cannot hold ", DelimiterName(o.delimiter), ")")));
  }
  records.erase(records.begin());
  table.rows = std::move(records);
  return table;
}

absl::StatusOr<CsvTable> ReadCsv(const std::string& path, const CsvOptions& options) {
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  return ParseCsv(path, text, options);
}

absl::StatusOr<int> CsvTable::Column(absl::string_view name, absl::string_view role) const {
  int found = -1;
  for (int c = 0; c < static_cast<int>(header.size()); ++c) {
    if (header[c] != name) continue;
    if (found >= 0) {
      return CsvError(
          path, header_line, absl::StrCat("column ", c + 1),
          absl::StrCat("a second column named '", name, "'; keep exactly one ", role, " column"));
    }
    found = c;
  }
  if (found < 0) {
    return CsvError(
        path, header_line, "header",
        absl::StrCat("no ", role, " column '", name, "' among the columns ", ListNames(header),
                     "; add it or set the option naming the ", role, " column"));
  }
  return found;
}

std::string CsvTable::Place(int column) const {
  return absl::StrCat("column ", column + 1, " ('", header[column], "')");
}

}  // namespace coldfuse::train
