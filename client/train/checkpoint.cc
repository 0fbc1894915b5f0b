#include "client/train/checkpoint.h"

#include <cmath>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace coldfuse::train {

absl::Status CheckpointReader::Unfit(const std::string& why) {
  return absl::InvalidArgumentError(absl::StrCat("the saved training state does not fit: ", why));
}

absl::StatusOr<std::string> CheckpointReader::Text(const std::string& key) const {
  auto it = c_.values.find(key);
  if (it == c_.values.end()) return Unfit(absl::StrCat("it has no '", key, "'"));
  return it->second;
}

absl::StatusOr<int64_t> CheckpointReader::Int(const std::string& key) const {
  absl::StatusOr<std::string> text = Text(key);
  if (!text.ok()) return text.status();
  int64_t v;
  if (!absl::SimpleAtoi(*text, &v)) return Unfit(absl::StrCat("'", key, "' is not a number"));
  return v;
}

absl::StatusOr<uint64_t> CheckpointReader::Uint(const std::string& key) const {
  absl::StatusOr<std::string> text = Text(key);
  if (!text.ok()) return text.status();
  uint64_t v;
  if (!absl::SimpleAtoi(*text, &v)) return Unfit(absl::StrCat("'", key, "' is not a number"));
  return v;
}

absl::StatusOr<double> CheckpointReader::Double(const std::string& key) const {
  absl::StatusOr<std::string> text = Text(key);
  if (!text.ok()) return text.status();
  double v;
  if (!absl::SimpleAtod(*text, &v)) return Unfit(absl::StrCat("'", key, "' is not a number"));
  return v;
}

absl::StatusOr<std::vector<double>> CheckpointReader::Doubles(const std::string& key) const {
  absl::StatusOr<std::string> text = Text(key);
  if (!text.ok()) return text.status();
  std::vector<double> out;
  for (absl::string_view part : absl::StrSplit(*text, ',', absl::SkipEmpty())) {
    double v;
    if (!absl::SimpleAtod(part, &v)) return Unfit(absl::StrCat("'", key, "' holds a non-number"));
    out.push_back(v);
  }
  return out;
}

const HostTensor* CheckpointReader::Find(const std::string& name) const {
  for (const HostTensor& t : c_.tensors) {
    if (t.spec.name() == name) return &t;
  }
  return nullptr;
}

absl::StatusOr<const HostTensor*> CheckpointReader::Tensor(const std::string& name) const {
  const HostTensor* t = Find(name);
  if (t == nullptr) return Unfit(absl::StrCat("it has no tensor '", name, "'"));
  return t;
}

std::string WriteDouble(double v) { return absl::StrFormat("%.17g", v); }

std::string WriteDoubles(const std::vector<double>& v) {
  return absl::StrJoin(v, ",", [](std::string* out, double x) { out->append(WriteDouble(x)); });
}

}  // namespace coldfuse::train
