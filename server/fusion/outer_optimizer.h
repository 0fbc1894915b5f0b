// The outer optimizer's step (issue 13, docs/protocol.md "Outer optimizers" once wired):
// how a round's fused update Δ moves the base, per element, in double, with its state
// (momentum m, second moment v) kept in F32 (F64 for F64 tensors):
//   PLAIN      base' = enc(b + Δ)
//   SGD, μ=0   base' = enc(b + η·Δ)
//   SGD        m' = S(μ·m + Δ);                   base' = enc(b + η·m')       (FedAvgM)
//   NESTEROV   m' = S(μ·m + Δ);                   base' = enc(b + η·(Δ + μ·m')) (DiLoCo)
//   ADAM       m' = S(β1·m + c1·Δ); v' = S(β2·v + c2·(Δ·Δ))
//              base' = enc(b + (α·m') / (sqrt(v') + τ))                       (FedAdam)
//   YOGI       m' as ADAM; g2 = Δ·Δ; v' = S(v − (c2·g2)·sgn(v − g2)); base' as ADAM (FedYogi)
// with c1 = 1 − β1, c2 = 1 − β2, S() rounding to the state dtype, enc() encoding in the
// base's dtype (rule 1), and α = η, or with bias correction
// α = (η·sqrt(1 − β2^t)) / (1 − β1^t) for step t (1 at the first fusion). The step uses
// the stored (rounded) new state. Parenthesised as a numpy reference must evaluate it;
// compiled without contraction (server/CMakeLists.txt). Stateless; thread-safe.
#ifndef COLDFUSE_SERVER_FUSION_OUTER_OPTIMIZER_H_
#define COLDFUSE_SERVER_FUSION_OUTER_OPTIMIZER_H_

#include <cstddef>
#include <cstdint>

#include "absl/status/status.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/dtype.h"

namespace coldfuse::fusion {

enum class OuterKind { kPlain, kSgd, kNesterov, kAdam, kYogi };

struct OuterStep {
  OuterKind kind = OuterKind::kPlain;
  double lr = 1.0;        // η
  double momentum = 0.0;  // μ (SGD, NESTEROV)
  double beta1 = 0.9;     // ADAM, YOGI
  double beta2 = 0.99;
  double tau = 1e-3;
  bool bias_correction = false;
  uint64_t t = 1;  // the step count of the base this step makes (1 at the first fusion)
};

// State tensors the step keeps per base tensor: 0 (PLAIN, SGD with μ = 0), 1 (m) or 2
// (m, v).
int StateSlots(const OuterStep& step);

// The dtype the state of a tensor of `base_dtype` is kept in: F64 for F64, else F32.
DType StateDType(DType base_dtype);

// α for ADAM/YOGI (η, or bias-corrected for step t).
double AdamAlpha(const OuterStep& step);

// One step over n elements: `b` the round base, `delta` the fused update, `m_in`/`v_in`
// the round base's state (ignored for slots the step does not keep; zeros at the first
// step). Writes the new base in `base_dtype` to `base_out` and the new state in
// StateDType(base_dtype) to `m_out`/`v_out` (only the slots kept).
void StepElements(const OuterStep& step, DType base_dtype, size_t n, const double* b,
                  const double* delta, const double* m_in, const double* v_in, char* base_out,
                  char* m_out, char* v_out);

// Init: checks `kind` and its options, and sets every option the optimizer uses to its
// value (an unset one to its default), so the model records what it runs with.
// UNSPECIFIED becomes OUTER_PLAIN. INVALID_ARGUMENT, naming the option and its range, for
// an unknown optimizer, an option out of range (NaN included), or an option that the
// optimizer does not use (it would be silently ignored).
absl::Status ResolveOuterOptimizer(v1::OuterOptimizer* kind, v1::OuterOptimizerOptions* options);

// The step of `model`'s (resolved) outer optimizer that makes the base with step count t.
OuterStep StepFor(const v1::ModelInfo& model, uint64_t t);

// True when the model's bases are made by today's fusion without a step (PLAIN or unset).
bool IsPlain(const v1::ModelInfo& model);

}  // namespace coldfuse::fusion

#endif  // COLDFUSE_SERVER_FUSION_OUTER_OPTIMIZER_H_
