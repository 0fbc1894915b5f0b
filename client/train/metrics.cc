#include "client/train/metrics.h"

#include <cstddef>

namespace coldfuse::train {

EvalResult ComputeMetrics(const std::vector<int64_t>& labels,
                          const std::vector<int64_t>& predictions, int64_t num_classes) {
  EvalResult r;
  if (labels.empty()) return r;
  std::vector<int64_t> tp(num_classes, 0), fp(num_classes, 0), fn(num_classes, 0);
  int64_t correct = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    int64_t y = labels[i], p = predictions[i];
    if (y == p) {
      ++correct;
      ++tp[y];
    } else {
      ++fp[p];
      ++fn[y];
    }
  }
  r.accuracy = static_cast<double>(correct) / static_cast<double>(labels.size());
  double f1_sum = 0;
  int64_t present = 0;
  for (int64_t c = 0; c < num_classes; ++c) {
    int64_t denom = 2 * tp[c] + fp[c] + fn[c];
    if (denom == 0) continue;  // neither a label nor a prediction: not averaged
    f1_sum += 2.0 * static_cast<double>(tp[c]) / static_cast<double>(denom);
    ++present;
  }
  r.macro_f1 = f1_sum / static_cast<double>(present);
  return r;
}

}  // namespace coldfuse::train
