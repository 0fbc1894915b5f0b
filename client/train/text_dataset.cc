#include "client/train/text_dataset.h"

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <map>
#include <utility>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/string_view.h"
#include "client/train/csv.h"
#include "common/json.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace coldfuse::train {
namespace {

absl::Status Bad(const std::string &path, int64_t line, absl::string_view where,
                 absl::string_view what) {
  return CsvError(path, line, where, what);
}

bool IsBlank(absl::string_view line) { return absl::StripAsciiWhitespace(line).empty(); }

// One example as read from the file, before its label is interpreted.
struct RawRow {
  int64_t line = 0;
  std::string text, pair, label;
};

// Where each used column sits, for error messages ("column 2 ('text')" / "key
// 'text'").
struct Places {
  std::string text, pair, label;
};

// Names for a message: the first few of `names`, quoted, and how many more.
std::string ListNames(const std::vector<std::string> &names) {
  constexpr size_t kShown = 20;
  std::vector<std::string> shown(names.begin(), names.begin() + std::min(names.size(), kShown));
  std::string out = absl::StrCat("'", absl::StrJoin(shown, "', '"), "'");
  if (names.size() > kShown) absl::StrAppend(&out, " and ", names.size() - kShown, " more");
  return out;
}

// The rows of a CSV/TSV table, with the used columns picked out.
absl::StatusOr<std::vector<RawRow>> RowsFromTable(CsvTable table, const TextDatasetOptions &o,
                                                  Places *places) {
  ASSIGN_OR_RETURN(int text_c, table.Column(o.text_column, "text"));
  int pair_c = -1;
  if (!o.text_pair_column.empty()) {
    ASSIGN_OR_RETURN(pair_c, table.Column(o.text_pair_column, "text pair"));
  }
  ASSIGN_OR_RETURN(int label_c, table.Column(o.label_column, "label"));
  places->text = table.Place(text_c);
  if (pair_c >= 0) places->pair = table.Place(pair_c);
  places->label = table.Place(label_c);
  std::vector<RawRow> rows;
  rows.reserve(table.rows.size());
  for (CsvRow &rec : table.rows) {
    RawRow row;
    row.line = rec.line;
    row.text = std::move(rec.fields[text_c]);
    if (pair_c >= 0) row.pair = std::move(rec.fields[pair_c]);
    row.label = std::move(rec.fields[label_c]);
    rows.push_back(std::move(row));
  }
  return rows;
}

// A text member of a JSONL object: present and a string.
absl::Status JsonText(const std::string &path, int64_t line, const JsonValue &obj,
                      const std::string &key, std::string *out) {
  const JsonValue *v = obj.Find(key);
  if (v == nullptr) {
    return Bad(path, line, "", absl::StrCat("no key '", key, "'; every object needs it"));
  }
  if (!v->is_string()) {
    return Bad(path, line, absl::StrCat("key '", key, "'"),
               absl::StrCat("a ", v->TypeName(), ", not a string; write the text as a string"));
  }
  *out = v->text;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<RawRow>> ParseJsonl(const std::string &path, absl::string_view text,
                                               const TextDatasetOptions &o, Places *places) {
  places->text = absl::StrCat("key '", o.text_column, "'");
  places->pair = absl::StrCat("key '", o.text_pair_column, "'");
  places->label = absl::StrCat("key '", o.label_column, "'");
  std::vector<RawRow> rows;
  int64_t line = 0;
  for (absl::string_view l : absl::StrSplit(text, '\n')) {
    ++line;
    if (!l.empty() && l.back() == '\r') l.remove_suffix(1);
    if (IsBlank(l)) continue;
    absl::StatusOr<JsonValue> v = ParseJson(l);
    if (!v.ok()) {
      return Bad(path, line, "",
                 absl::StrCat("not valid JSON (", v.status().message(),
                              "); write one JSON object per line"));
    }
    if (!v->is_object()) {
      return Bad(path, line, "",
                 absl::StrCat("a JSON ", v->TypeName(),
                              ", not an object; write one JSON object per line"));
    }
    RawRow row;
    row.line = line;
    RETURN_IF_ERROR(JsonText(path, line, *v, o.text_column, &row.text));
    if (!o.text_pair_column.empty()) {
      RETURN_IF_ERROR(JsonText(path, line, *v, o.text_pair_column, &row.pair));
    }
    const JsonValue *label = v->Find(o.label_column);
    if (label == nullptr) {
      return Bad(path, line, "",
                 absl::StrCat("no key '", o.label_column, "'; every object needs a label"));
    }
    if (label->is_string() || label->is_number()) {
      row.label = label->text;  // a number's literal; interpreted with the CSV/TSV labels
    } else {
      return Bad(
          path, line, places->label,
          absl::StrCat("a ", label->TypeName(), " label; write the label as a string or a number"));
    }
    rows.push_back(std::move(row));
  }
  if (rows.empty()) {
    return Bad(path, 1, "", "the file is empty; expected one JSON object per line");
  }
  return rows;
}

// The canonical form of a class label: trimmed, and integers without sign or
// leading zeros.
std::string CanonicalLabel(absl::string_view label) {
  label = absl::StripAsciiWhitespace(label);
  int64_t v;
  if (absl::SimpleAtoi(label, &v)) return absl::StrCat(v);
  return std::string(label);
}

// The train label set: sorted numerically when all are integers, else bytewise.
std::vector<std::string> SortedLabels(const std::vector<RawRow> &rows) {
  std::vector<std::string> labels;
  for (const RawRow &r : rows) labels.push_back(CanonicalLabel(r.label));
  std::sort(labels.begin(), labels.end());
  labels.erase(std::unique(labels.begin(), labels.end()), labels.end());
  bool all_int = true;
  for (const std::string &l : labels) {
    int64_t v;
    all_int = all_int && absl::SimpleAtoi(l, &v);
  }
  if (all_int) {
    std::sort(labels.begin(), labels.end(), [](const std::string &a, const std::string &b) {
      int64_t x = 0, y = 0;
      (void)absl::SimpleAtoi(a, &x);
      (void)absl::SimpleAtoi(b, &y);
      return x < y;
    });
  }
  return labels;
}

absl::Status CheckText(const std::string &path, int64_t line, const std::string &place,
                       const std::string &text) {
  if (!IsBlank(text)) return absl::OkStatus();
  return Bad(path, line, place,
             "the text is empty; every row needs a non-empty text (fill it in "
             "or drop the row)");
}

absl::Status CheckUtf8Lines(const std::string &path, absl::string_view text) {
  int64_t line = 0;
  for (absl::string_view l : absl::StrSplit(text, '\n')) {
    ++line;
    absl::Status st = CheckUtf8(l);
    if (!st.ok()) {
      return Bad(path, line, "",
                 absl::StrCat("not valid UTF-8 (in the line: ", st.message(),
                              "); save the file as UTF-8"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<TextFormat> FormatOf(const std::string &path) {
  std::string lower = absl::AsciiStrToLower(path);
  if (absl::EndsWith(lower, ".csv")) return TextFormat::kCsv;
  if (absl::EndsWith(lower, ".tsv")) return TextFormat::kTsv;
  if (absl::EndsWith(lower, ".jsonl")) return TextFormat::kJsonl;
  return absl::InvalidArgumentError(
      absl::StrCat(path,
                   ": cannot tell the format from the extension; name the file .csv, "
                   ".tsv or .jsonl, or pass the format"));
}

// Loads `path`; `fixed_labels` (a test split's train label names) if not null,
// else `o.labels`, else the file's own labels fix the classification label set.
absl::StatusOr<TextDataset> Load(const std::string &path, const TextDatasetOptions &o,
                                 std::optional<TextFormat> format,
                                 const std::vector<std::string> *fixed_labels) {
  if (o.text_column.empty() || o.label_column.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": the text and label column options must name columns"));
  }
  if (!format.has_value()) {
    ASSIGN_OR_RETURN(format, FormatOf(path));
  }
  ASSIGN_OR_RETURN(std::string contents, ReadFileToString(path));
  absl::string_view text = contents;
  if (absl::StartsWith(text, "\xEF\xBB\xBF")) text.remove_prefix(3);  // UTF-8 BOM
  RETURN_IF_ERROR(CheckUtf8Lines(path, text));

  Places places;
  std::vector<RawRow> rows;
  if (*format == TextFormat::kJsonl) {
    ASSIGN_OR_RETURN(rows, ParseJsonl(path, text, o, &places));
  } else {
    CsvOptions csv;  // RFC 4180
    if (*format == TextFormat::kTsv) {
      csv.delimiter = '\t';
      csv.quoting = false;
    }
    ASSIGN_OR_RETURN(CsvTable table, ParseCsv(path, text, csv));
    ASSIGN_OR_RETURN(rows, RowsFromTable(std::move(table), o, &places));
  }

  TextDataset ds;
  const bool pairs = !o.text_pair_column.empty();
  std::map<std::string, int64_t> ids;
  if (!o.regression) {
    const std::vector<std::string> *given = fixed_labels;
    if (given == nullptr && !o.labels.empty()) given = &o.labels;
    if (given != nullptr) {
      if (given->empty()) {
        return absl::InvalidArgumentError(
            absl::StrCat(path,
                         ": the train split has no label names (was it "
                         "loaded for regression?); "
                         "load both splits with the same options"));
      }
      for (const std::string &name : *given) {
        std::string c = CanonicalLabel(name);
        if (c.empty() || !ids.emplace(c, static_cast<int64_t>(ds.label_names.size())).second) {
          return absl::InvalidArgumentError(
              absl::StrCat(path, ": the label list has an empty or repeated label '", name,
                           "'; list each label once"));
        }
        ds.label_names.push_back(std::move(c));
      }
    } else {
      ds.label_names = SortedLabels(rows);
      for (size_t i = 0; i < ds.label_names.size(); ++i) {
        ids.emplace(ds.label_names[i], static_cast<int64_t>(i));
      }
    }
  }

  for (RawRow &row : rows) {
    RETURN_IF_ERROR(CheckText(path, row.line, places.text, row.text));
    if (pairs) RETURN_IF_ERROR(CheckText(path, row.line, places.pair, row.pair));
    absl::string_view label = absl::StripAsciiWhitespace(row.label);
    if (label.empty()) {
      return Bad(path, row.line, places.label,
                 "the label is empty; every row needs a label (fill it in or "
                 "drop the row)");
    }
    if (o.regression) {
      double v;
      if (!absl::SimpleAtod(label, &v) || !std::isfinite(v) || std::fabs(v) > 3.0e38) {
        return Bad(path, row.line, places.label,
                   absl::StrCat("regression target '", label,
                                "' is not a finite number; write it as e.g. 3.5"));
      }
      ds.targets.push_back(static_cast<float>(v));
    } else {
      auto it = ids.find(CanonicalLabel(label));
      if (it == ids.end()) {
        return Bad(path, row.line, places.label,
                   fixed_labels != nullptr
                       ? absl::StrCat("label '", label, "' is not among the train split's labels ",
                                      ListNames(ds.label_names),
                                      "; fix it, or add rows with it to the train split")
                       : absl::StrCat("label '", label, "' is not among the given labels ",
                                      ListNames(ds.label_names),
                                      "; fix it, or add it to the labels option"));
      }
      ds.label_ids.push_back(it->second);
    }
    ds.texts.push_back(std::move(row.text));
    if (pairs) ds.text_pairs.push_back(std::move(row.pair));
  }
  return ds;
}

}  // namespace

absl::StatusOr<TextDataset> LoadTextDataset(const std::string &path,
                                            const TextDatasetOptions &options,
                                            std::optional<TextFormat> format) {
  return Load(path, options, format, nullptr);
}

absl::StatusOr<TextDataset> LoadTextDatasetLike(const std::string &path, const TextDataset &train,
                                                const TextDatasetOptions &options,
                                                std::optional<TextFormat> format) {
  return Load(path, options, format, options.regression ? nullptr : &train.label_names);
}

}  // namespace coldfuse::train
