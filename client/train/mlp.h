// The LibTorch module for "mlp:D0,...,Dn" specs: a body of Linear+ReLU layers (the shared
// tensors "body.{i}.weight"/"body.{i}.bias") and a task head "head.weight"/"head.bias",
// plus byte copies between HostTensors and its parameters.
// PRIVATE to client/train: only its .cc files include this header, since it pulls in
// LibTorch. A module is not thread-safe; use one per thread.
#ifndef COLDFUSE_CLIENT_TRAIN_MLP_H_
#define COLDFUSE_CLIENT_TRAIN_MLP_H_

#include <torch/torch.h>

#include <cstdint>
#include <vector>

#include "absl/status/status.h"
#include "coldfuse/v1/tensor.pb.h"
#include "common/model_spec.h"
#include "common/tensor.h"

namespace coldfuse::train {

struct MlpImpl : torch::nn::Module {
  MlpImpl(const MlpSpec& spec, int64_t num_classes);

  // x: [batch, D0] -> logits [batch, num_classes].
  torch::Tensor forward(torch::Tensor x);

  torch::nn::ModuleList body;  // Linear layers; ReLU after each is applied in forward().
  torch::nn::Linear head{nullptr};
};
TORCH_MODULE(Mlp);

// Copies each tensor into the parameter of `module` with the same name.
// INVALID_ARGUMENT if a name is unknown, the dtype is not F32 or the shape or byte length
// differs. REQUIRES: the host is little-endian (checked at compile time).
absl::Status LoadParameters(torch::nn::Module& module, const std::vector<HostTensor>& tensors);

// The parameters of `module` listed in `which` (by name, in its order) as F32 HostTensors.
// REQUIRES: every name in `which` is a parameter of `module` with that shape.
std::vector<HostTensor> ExportParameters(torch::nn::Module& module, const v1::Manifest& which);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_MLP_H_
