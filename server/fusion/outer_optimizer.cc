#include "server/fusion/outer_optimizer.h"

#include <cmath>
#include <cstring>
#include <vector>

#include "absl/strings/str_cat.h"

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

absl::Status ResolveOuterOptimizer(v1::OuterOptimizer* kind, v1::OuterOptimizerOptions* options) {
  if (!v1::OuterOptimizer_IsValid(*kind)) {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown outer optimizer ", static_cast<int>(*kind),
                     ": use OUTER_PLAIN (1), OUTER_SGD (2), OUTER_NESTEROV (3), OUTER_ADAM (4) or "
                     "OUTER_YOGI (5)"));
  }
  if (*kind == v1::OUTER_OPTIMIZER_UNSPECIFIED) *kind = v1::OUTER_PLAIN;
  v1::OuterOptimizerOptions& o = *options;
  const std::string name = v1::OuterOptimizer_Name(*kind);
  const bool momentum = *kind == v1::OUTER_SGD || *kind == v1::OUTER_NESTEROV;
  const bool adam = *kind == v1::OUTER_ADAM || *kind == v1::OUTER_YOGI;
  auto unused = [&](const char* option) {
    return absl::InvalidArgumentError(
        absl::StrCat("outer optimizer option ", option, " is set, but ", name,
                     " does not use it: leave it unset (",
                     name == "OUTER_PLAIN" ? "OUTER_PLAIN takes no options"
                                           : "see docs/protocol.md, Outer optimizers",
                     ")"));
  };
  if (*kind == v1::OUTER_PLAIN && o.has_learning_rate()) return unused("learning_rate");
  if (!momentum && o.has_momentum()) return unused("momentum");
  if (!adam && o.has_beta1()) return unused("beta1");
  if (!adam && o.has_beta2()) return unused("beta2");
  if (!adam && o.has_tau()) return unused("tau");
  if (!adam && o.has_bias_correction()) return unused("bias_correction");
  if (*kind == v1::OUTER_PLAIN) return absl::OkStatus();
  // Written so that NaN fails too: a NaN option would make every fusion fail.
  auto check = [&](const char* option, double value, bool ok, const char* range) {
    if (ok) return absl::OkStatus();
    return absl::InvalidArgumentError(
        absl::StrCat("outer optimizer option ", option, " is ", value, "; it must be ", range));
  };
  if (!o.has_learning_rate()) {
    o.set_learning_rate(*kind == v1::OUTER_SGD ? 1.0 : (*kind == v1::OUTER_NESTEROV ? 0.7 : 0.1));
  }
  const double lr = o.learning_rate();
  if (auto st = check("learning_rate", lr, lr > 0 && std::isfinite(lr), "a finite number > 0");
      !st.ok()) {
    return st;
  }
  if (momentum) {
    if (!o.has_momentum()) o.set_momentum(0.9);
    const double mu = o.momentum();
    if (auto st = check("momentum", mu, mu >= 0 && mu < 1, "in [0, 1)"); !st.ok()) return st;
  }
  if (adam) {
    if (!o.has_beta1()) o.set_beta1(0.9);
    if (!o.has_beta2()) o.set_beta2(0.99);
    if (!o.has_tau()) o.set_tau(1e-3);
    if (!o.has_bias_correction()) o.set_bias_correction(false);
    const double b1 = o.beta1(), b2 = o.beta2(), tau = o.tau();
    if (auto st = check("beta1", b1, b1 >= 0 && b1 < 1, "in [0, 1)"); !st.ok()) return st;
    if (auto st = check("beta2", b2, b2 >= 0 && b2 < 1, "in [0, 1)"); !st.ok()) return st;
    if (auto st = check("tau", tau, tau > 0 && std::isfinite(tau), "a finite number > 0");
        !st.ok()) {
      return st;
    }
  }
  return absl::OkStatus();
}

bool IsPlain(const v1::ModelInfo& model) {
  return model.outer_optimizer() == v1::OUTER_OPTIMIZER_UNSPECIFIED ||
         model.outer_optimizer() == v1::OUTER_PLAIN;
}

OuterStep StepFor(const v1::ModelInfo& model, uint64_t t) {
  const v1::OuterOptimizerOptions& o = model.outer_optimizer_options();
  OuterStep step;
  switch (model.outer_optimizer()) {
    case v1::OUTER_SGD:
      step.kind = OuterKind::kSgd;
      break;
    case v1::OUTER_NESTEROV:
      step.kind = OuterKind::kNesterov;
      break;
    case v1::OUTER_ADAM:
      step.kind = OuterKind::kAdam;
      break;
    case v1::OUTER_YOGI:
      step.kind = OuterKind::kYogi;
      break;
    default:
      step.kind = OuterKind::kPlain;
      break;
  }
  step.lr = o.has_learning_rate() ? o.learning_rate() : 1.0;
  step.momentum = o.momentum();
  if (o.has_beta1()) step.beta1 = o.beta1();
  if (o.has_beta2()) step.beta2 = o.beta2();
  if (o.has_tau()) step.tau = o.tau();
  step.bias_correction = o.bias_correction();
  step.t = t;
  return step;
}

}  // namespace coldfuse::fusion
