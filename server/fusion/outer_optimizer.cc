#include "server/fusion/outer_optimizer.h"

#include <cmath>
#include <cstring>
#include <vector>

namespace coldfuse::fusion {
namespace {

// S(x): x rounded to the state dtype, as a double again.
double RoundToState(DType state, double x) {
  return state == v1::F64 ? x : static_cast<double>(static_cast<float>(x));
}

void PutState(DType state, size_t i, double x, char* out) {
  if (state == v1::F64) {
    std::memcpy(out + 8 * i, &x, 8);
  } else {
    const float f = static_cast<float>(x);
    std::memcpy(out + 4 * i, &f, 4);
  }
}

double Sign(double x) { return x > 0 ? 1.0 : (x < 0 ? -1.0 : 0.0); }

}  // namespace

int StateSlots(const OuterStep& step) {
  switch (step.kind) {
    case OuterKind::kPlain:
      return 0;
    case OuterKind::kSgd:
      return step.momentum == 0.0 ? 0 : 1;
    case OuterKind::kNesterov:
      return 1;
    case OuterKind::kAdam:
    case OuterKind::kYogi:
      return 2;
  }
  return 0;
}

DType StateDType(DType base_dtype) { return base_dtype == v1::F64 ? v1::F64 : v1::F32; }

double AdamAlpha(const OuterStep& step) {
  if (!step.bias_correction) return step.lr;
  const double t = static_cast<double>(step.t);
  return (step.lr * std::sqrt(1.0 - std::pow(step.beta2, t))) / (1.0 - std::pow(step.beta1, t));
}

void StepElements(const OuterStep& step, DType base_dtype, size_t n, const double* b,
                  const double* delta, const double* m_in, const double* v_in, char* base_out,
                  char* m_out, char* v_out) {
  const DType state = StateDType(base_dtype);
  std::vector<double> out(n);
  switch (step.kind) {
    case OuterKind::kPlain:
      for (size_t i = 0; i < n; ++i) out[i] = b[i] + delta[i];
      break;
    case OuterKind::kSgd:
      if (step.momentum == 0.0) {
        for (size_t i = 0; i < n; ++i) out[i] = b[i] + step.lr * delta[i];
        break;
      }
      for (size_t i = 0; i < n; ++i) {
        const double m = RoundToState(state, step.momentum * m_in[i] + delta[i]);
        PutState(state, i, m, m_out);
        out[i] = b[i] + step.lr * m;
      }
      break;
    case OuterKind::kNesterov:
      for (size_t i = 0; i < n; ++i) {
        const double m = RoundToState(state, step.momentum * m_in[i] + delta[i]);
        PutState(state, i, m, m_out);
        out[i] = b[i] + step.lr * (delta[i] + step.momentum * m);
      }
      break;
    case OuterKind::kAdam:
    case OuterKind::kYogi: {
      const double c1 = 1.0 - step.beta1, c2 = 1.0 - step.beta2;
      const double alpha = AdamAlpha(step);
      for (size_t i = 0; i < n; ++i) {
        const double d = delta[i];
        const double m = RoundToState(state, step.beta1 * m_in[i] + c1 * d);
        const double g2 = d * d;
        const double v = step.kind == OuterKind::kAdam
                             ? RoundToState(state, step.beta2 * v_in[i] + c2 * g2)
                             : RoundToState(state, v_in[i] - (c2 * g2) * Sign(v_in[i] - g2));
        PutState(state, i, m, m_out);
        PutState(state, i, v, v_out);
        out[i] = b[i] + (alpha * m) / (std::sqrt(v) + step.tau);
      }
      break;
    }
  }
  EncodeFromDouble(base_dtype, out.data(), n, base_out);
}

}  // namespace coldfuse::fusion
