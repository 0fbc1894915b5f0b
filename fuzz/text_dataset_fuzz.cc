// Fuzzes the labelled text datasets (client/train/text_dataset.h): CSV, TSV and JSONL
// files with texts, optional text pairs and class labels or regression targets. Input:
// one byte choosing the format (by extension or given) and the options, then the file.
//
// Asserts: no crash or UB; a rejection is INVALID_ARGUMENT naming the file; an accepted
// dataset has at least one row, one non-blank UTF-8 text (and pair, when asked for) per
// row, and either one label id per row indexing distinct label names (classification)
// or one finite target per row (regression); for JSONL, one row per non-blank line.
// Loading the same file as a test split with LoadTextDatasetLike(train = itself) succeeds
// with the same rows and label ids.
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "client/train/text_dataset.h"
#include "common/json.h"
#include "fuzz/fuzz_util.h"

namespace coldfuse::fuzz {
namespace {

using train::TextDataset;
using train::TextDatasetOptions;
using train::TextFormat;

void CheckDataset(const TextDataset& ds, const TextDatasetOptions& o) {
  const size_t rows = ds.texts.size();
  FUZZ_CHECK(rows > 0, "accepted a dataset without rows");
  for (const std::string& t : ds.texts) {
    FUZZ_CHECK(!absl::StripAsciiWhitespace(t).empty() && CheckUtf8(t).ok(), "bad text");
  }
  if (o.text_pair_column.empty()) {
    FUZZ_CHECK(ds.text_pairs.empty(), "pairs without a pair column");
  } else {
    FUZZ_CHECK(ds.text_pairs.size() == rows, "one pair per row");
    for (const std::string& t : ds.text_pairs) {
      FUZZ_CHECK(!absl::StripAsciiWhitespace(t).empty() && CheckUtf8(t).ok(), "bad pair text");
    }
  }
  if (o.regression) {
    FUZZ_CHECK(ds.targets.size() == rows && ds.label_ids.empty() && ds.label_names.empty(),
               "regression shapes");
    for (float v : ds.targets) FUZZ_CHECK(std::isfinite(v), "a non-finite target");
  } else {
    FUZZ_CHECK(ds.label_ids.size() == rows && ds.targets.empty(), "classification shapes");
    std::set<std::string> names(ds.label_names.begin(), ds.label_names.end());
    FUZZ_CHECK(names.size() == ds.label_names.size(), "repeated label names");
    for (const std::string& n : ds.label_names) FUZZ_CHECK(!n.empty(), "an empty label name");
    for (int64_t id : ds.label_ids) {
      FUZZ_CHECK(id >= 0 && id < static_cast<int64_t>(ds.label_names.size()),
                 absl::StrCat("label id ", id));
    }
    if (!o.labels.empty()) FUZZ_CHECK(ds.label_names.size() == o.labels.size(), "label list");
  }
}

}  // namespace
}  // namespace coldfuse::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace coldfuse;
  using namespace coldfuse::fuzz;
  FuzzInput in(data, size);
  const uint8_t flags = in.Byte();
  static const TextFormat kFormats[] = {TextFormat::kCsv, TextFormat::kTsv, TextFormat::kJsonl,
                                        TextFormat::kJsonl};
  static const char* const kExtensions[] = {".csv", ".tsv", ".jsonl", ".JSONL"};
  const TextFormat format = kFormats[flags & 3];
  // Half the time the format comes from the extension, half the time it is given.
  std::optional<TextFormat> given;
  if (flags & 4) given = format;
  TextDatasetOptions o;
  o.regression = (flags & 8) != 0;
  if (flags & 16) o.text_pair_column = "pair";
  if (flags & 32) o.labels = {"neg", "pos", "0", "1", "2"};
  if (flags & 64) o.label_column = "text";  // one column as both text and label

  absl::string_view file = in.Rest();
  const std::string path =
      WriteScratchFile(absl::StrCat("data", given ? ".txt" : kExtensions[flags & 3]), file);
  absl::StatusOr<TextDataset> ds = train::LoadTextDataset(path, o, given);
  if (!ds.ok()) {
    FUZZ_CHECK(absl::IsInvalidArgument(ds.status()), ds.status().ToString());
    FUZZ_CHECK(absl::StartsWith(ds.status().message(), path), ds.status().ToString());
    return 0;
  }
  CheckDataset(*ds, o);

  if (format == TextFormat::kJsonl) {
    absl::string_view body = file;
    if (absl::StartsWith(body, "\xEF\xBB\xBF")) body.remove_prefix(3);
    int64_t lines = 0;
    for (absl::string_view l : absl::StrSplit(body, '\n')) {
      lines += absl::StripAsciiWhitespace(l).empty() ? 0 : 1;
    }
    FUZZ_CHECK(lines == ds->rows(), absl::StrCat(lines, " JSON lines but ", ds->rows(), " rows"));
  }

  absl::StatusOr<TextDataset> like = train::LoadTextDatasetLike(path, *ds, o, given);
  FUZZ_CHECK(like.ok(), absl::StrCat("a train split does not load as its own test split: ",
                                     like.status().ToString()));
  FUZZ_CHECK(like->texts == ds->texts && like->text_pairs == ds->text_pairs &&
                 like->label_ids == ds->label_ids && like->label_names == ds->label_names &&
                 like->targets == ds->targets,
             "the split loaded as a test split differs");
  return 0;
}
