// Copies between LibTorch state and a TrainCheckpoint (checkpoint.h): tensors on any
// device, and the default random generators (dropout, head init). PRIVATE to
// client/train: it pulls in LibTorch.
#ifndef COLDFUSE_CLIENT_TRAIN_TORCH_CHECKPOINT_H_
#define COLDFUSE_CLIENT_TRAIN_TORCH_CHECKPOINT_H_

#include <torch/torch.h>

#include <string>

#include "absl/status/status.h"
#include "client/train/checkpoint.h"
#include "common/tensor.h"

namespace coldfuse::train {

// `t` (F32, on any device) as an F32 HostTensor named `name`.
HostTensor SaveTensor(const std::string& name, const torch::Tensor& t);

// Copies the checkpoint's F32 tensor `name` into `into` (same shape, F32, on any device).
absl::Status RestoreTensor(const CheckpointReader& r, const std::string& name,
                           const torch::Tensor& into);

// The state of the default generator of the CPU and, for a CUDA `device`, of CUDA too.
void SaveGenerators(const torch::Device& device, TrainCheckpoint* c);
absl::Status RestoreGenerators(const CheckpointReader& r, const torch::Device& device);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_TORCH_CHECKPOINT_H_
