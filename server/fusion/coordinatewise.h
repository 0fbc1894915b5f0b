// The coordinate-wise reducers shared by the robust methods on stored values (robust.cc)
// and on updates (update_fusion.cc), so both paths compute the same median and trimmed
// mean. Stateless; thread-safe.
//
// Ordering: NaN sorts above +Inf (NaNs equivalent to each other), so sorting never sees
// the inconsistent comparisons that plain `<` gives for NaN.
#ifndef COLDFUSE_SERVER_FUSION_COORDINATEWISE_H_
#define COLDFUSE_SERVER_FUSION_COORDINATEWISE_H_

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <numeric>

namespace coldfuse::fusion {

inline bool CoordinateLess(double a, double b) {
  return a < b || (std::isnan(b) && !std::isnan(a));
}

// Median of v[0..n) (for even n, std::midpoint of the two middle values); reorders v.
// 0 for n == 0.
inline double MedianInPlace(double* v, size_t n) {
  if (n == 0) return 0;
  const size_t mid = n / 2;
  std::nth_element(v, v + mid, v + n, CoordinateLess);
  const double hi = v[mid];
  if (n % 2 == 1) return hi;
  const double lo = *std::max_element(v, v + mid, CoordinateLess);
  return std::midpoint(lo, hi);
}

// Mean of v[0..n) without its `trim` lowest and `trim` highest values, summed in
// ascending order; reorders v. REQUIRES: n > 2 * trim.
inline double TrimmedMeanInPlace(double* v, size_t n, size_t trim) {
  // A full sort also fixes the summation order, so the result does not depend on the
  // order of the contributions.
  std::sort(v, v + n, CoordinateLess);
  double sum = 0;
  for (size_t i = trim; i < n - trim; ++i) sum += v[i];
  return sum / static_cast<double>(n - 2 * trim);
}

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_COORDINATEWISE_H_
