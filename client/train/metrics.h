// Classification metrics over predicted and true class indices. Torch-free and
// stateless; thread-safe.
#ifndef COLDFUSE_CLIENT_TRAIN_METRICS_H_
#define COLDFUSE_CLIENT_TRAIN_METRICS_H_

#include <cstdint>
#include <vector>

namespace coldfuse::train {

struct EvalResult {
  // Fraction of rows predicted right; 0 for no rows.
  double accuracy = 0;
  // Unweighted mean of per-class F1 over the classes that occur in the labels or the
  // predictions (scikit-learn's f1_score(average="macro")); 0 for no rows.
  double macro_f1 = 0;
};

// REQUIRES: labels.size() == predictions.size(); every value in 0..num_classes-1.
EvalResult ComputeMetrics(const std::vector<int64_t>& labels,
                          const std::vector<int64_t>& predictions, int64_t num_classes);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_METRICS_H_
