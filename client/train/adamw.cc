#include "client/train/adamw.h"

#include <torch/version.h>

#include <cmath>

#include "absl/strings/str_cat.h"
#include "client/train/torch_checkpoint.h"

// One kernel for the whole update (PyTorch's AdamW(fused=True)) where LibTorch has it on
// both CPU and CUDA.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
#define COLDFUSE_FUSED_ADAMW 1
#else
#define COLDFUSE_FUSED_ADAMW 0
#endif

namespace coldfuse::train {

bool ForeachAdamW::FusedAvailable() { return COLDFUSE_FUSED_ADAMW != 0; }

ForeachAdamW::ForeachAdamW(std::vector<Group> groups, double beta1, double beta2, double eps,
                           bool fused)
    : groups_(std::move(groups)),
      beta1_(beta1),
      beta2_(beta2),
      eps_(eps),
      fused_(fused && FusedAvailable()) {
  for (const Group& g : groups_) state_.emplace_back(g.params.size());
}

void ForeachAdamW::ZeroGrad() {
  for (Group& g : groups_) {
    for (torch::Tensor& p : g.params) p.mutable_grad() = torch::Tensor();
  }
}

void ForeachAdamW::Step(double lr) {
  torch::NoGradGuard no_grad;
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    Group& group = groups_[gi];
    std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, step_tensors;
    std::vector<at::Scalar> denom_scale, step_size;
    for (size_t i = 0; i < group.params.size(); ++i) {
      torch::Tensor& p = group.params[i];
      if (!p.grad().defined()) continue;
      State& s = state_[gi][i];
      if (!s.exp_avg.defined()) {
        s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Preserve);
        s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Preserve);
        s.step_tensor = torch::zeros({}, p.options().dtype(torch::kFloat32));
      }
      ++s.step;
      const double bias1 = 1 - std::pow(beta1_, static_cast<double>(s.step));
      const double bias2 = 1 - std::pow(beta2_, static_cast<double>(s.step));
      params.push_back(p);
      grads.push_back(p.grad());
      exp_avgs.push_back(s.exp_avg);
      exp_avg_sqs.push_back(s.exp_avg_sq);
      step_tensors.push_back(s.step_tensor);
      denom_scale.emplace_back(1.0 / std::sqrt(bias2));
      step_size.emplace_back(-lr / bias1);
    }
    if (params.empty()) continue;
#if COLDFUSE_FUSED_ADAMW
    if (fused_) {
      at::_foreach_add_(step_tensors, 1);  // the kernel reads the step count, as Python's
      at::_fused_adamw_(params, grads, exp_avgs, exp_avg_sqs, /*max_exp_avg_sqs=*/{}, step_tensors,
                        lr, beta1_, beta2_, group.weight_decay, eps_,
                        /*amsgrad=*/false, /*maximize=*/false);
      continue;
    }
#endif
    if (group.weight_decay != 0) at::_foreach_mul_(params, 1 - lr * group.weight_decay);
    at::_foreach_mul_(exp_avgs, beta1_);
    at::_foreach_add_(exp_avgs, grads, 1 - beta1_);
    at::_foreach_mul_(exp_avg_sqs, beta2_);
    at::_foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2_);
    std::vector<torch::Tensor> denom = at::_foreach_sqrt(exp_avg_sqs);
    at::_foreach_mul_(denom, denom_scale);
    at::_foreach_add_(denom, eps_);
    at::_foreach_addcdiv_(params, exp_avgs, denom, step_size);
  }
}

void ForeachAdamW::Save(const std::string& prefix, TrainCheckpoint* c) const {
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < state_[gi].size(); ++i) {
      const State& s = state_[gi][i];
      if (!s.exp_avg.defined()) continue;  // never stepped (no gradient yet)
      const std::string key = absl::StrCat(prefix, ".", gi, ".", i);
      c->tensors.push_back(SaveTensor(key + ".exp_avg", s.exp_avg));
      c->tensors.push_back(SaveTensor(key + ".exp_avg_sq", s.exp_avg_sq));
      c->values[key + ".step"] = absl::StrCat(s.step);
    }
  }
}

absl::Status ForeachAdamW::Restore(const CheckpointReader& r, const std::string& prefix) {
  for (size_t gi = 0; gi < groups_.size(); ++gi) {
    for (size_t i = 0; i < state_[gi].size(); ++i) {
      const std::string key = absl::StrCat(prefix, ".", gi, ".", i);
      State& s = state_[gi][i];
      if (r.Find(key + ".exp_avg") == nullptr) {
        s = State();
        continue;
      }
      const torch::Tensor& p = groups_[gi].params[i];
      absl::StatusOr<int64_t> step = r.Int(key + ".step");
      if (!step.ok()) return step.status();
      if (*step < 1) return CheckpointReader::Unfit(absl::StrCat("'", key, ".step' is < 1"));
      s.exp_avg = torch::zeros_like(p, torch::MemoryFormat::Preserve);
      s.exp_avg_sq = torch::zeros_like(p, torch::MemoryFormat::Preserve);
      absl::Status st = RestoreTensor(r, key + ".exp_avg", s.exp_avg);
      if (st.ok()) st = RestoreTensor(r, key + ".exp_avg_sq", s.exp_avg_sq);
      if (!st.ok()) return st;
      s.step = *step;
      s.step_tensor =
          torch::full({}, static_cast<double>(*step), p.options().dtype(torch::kFloat32));
    }
  }
  return absl::OkStatus();
}

void ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm) {
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> grads;
  for (const torch::Tensor& p : params) {
    if (p.grad().defined()) grads.push_back(p.grad());
  }
  if (grads.empty()) return;
  std::vector<torch::Tensor> norms = at::_foreach_norm(grads, 2);
  torch::Tensor total = torch::stack(norms).norm();
  torch::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 1)
  at::_foreach_mul_(grads, coef);
#else
  for (torch::Tensor& g : grads) g.mul_(coef);
#endif
}

}  // namespace coldfuse::train
