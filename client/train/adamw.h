// AdamW and gradient-norm clipping over lists of tensors with LibTorch's fused AdamW
// kernel (LibTorch >= 2.4, CPU and CUDA) or its multi-tensor ("foreach") kernels: the same
// arithmetic as torch::optim::AdamW and torch::nn::utils::clip_grad_norm_, but a few kernel
// launches per parameter group instead of several per parameter, and no device-to-host copy (what
// PyTorch's Python optimizers do by default on CUDA). PRIVATE to client/train (it pulls in
// LibTorch). Not thread-safe.
#ifndef COLDFUSE_CLIENT_TRAIN_ADAMW_H_
#define COLDFUSE_CLIENT_TRAIN_ADAMW_H_

#include <torch/torch.h>

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "client/train/checkpoint.h"

namespace coldfuse::train {

class ForeachAdamW {
 public:
  struct Group {
    std::vector<torch::Tensor> params;
    double weight_decay = 0;  // decoupled: p -= lr * weight_decay * p
  };
  // `fused`: use the fused kernel where this LibTorch has it (else the foreach kernels).
  explicit ForeachAdamW(std::vector<Group> groups, double beta1 = 0.9, double beta2 = 0.999,
                        double eps = 1e-8, bool fused = true);
  // Whether this LibTorch has the fused kernel (>= 2.4).
  static bool FusedAvailable();

  // Drops every gradient (PyTorch's zero_grad(set_to_none=True)).
  void ZeroGrad();
  // One update with learning rate `lr` of every parameter that has a gradient.
  void Step(double lr);

  // The moments and step counts of every parameter stepped so far, as checkpoint tensors
  // "<prefix>.<group>.<index>.exp_avg" / ".exp_avg_sq" and values "....step".
  void Save(const std::string& prefix, TrainCheckpoint* c) const;
  // Puts back what Save saved (for the same groups of the same shapes).
  absl::Status Restore(const CheckpointReader& r, const std::string& prefix);

 private:
  struct State {
    torch::Tensor exp_avg, exp_avg_sq;
    torch::Tensor step_tensor;  // the fused kernel's step count (LibTorch >= 2.4)
    int64_t step = 0;
  };
  std::vector<Group> groups_;
  std::vector<std::vector<State>> state_;  // per group, per parameter
  double beta1_, beta2_, eps_;
  bool fused_;
};

// Scales the gradients of `params` so their global L2 norm is at most `max_norm` (as
// clip_grad_norm_, with its 1e-6 guard), on the device, without waiting for it.
void ClipGradNorm(const std::vector<torch::Tensor>& params, double max_norm);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_ADAMW_H_
