#include "client/train/mlp.h"

#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"

namespace coldfuse::train {

// The compiler's macro, not C++20's std::endian: this file is C++17 under clang (see
// coldfuse_libtorch_cxx17 in CMakeLists.txt).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "HostTensor bytes are little-endian and copied as-is");

MlpImpl::MlpImpl(const MlpSpec& spec, int64_t num_classes) {
  for (size_t i = 0; i + 1 < spec.dims.size(); ++i) {
    body->push_back(torch::nn::Linear(spec.dims[i], spec.dims[i + 1]));
  }
  register_module("body", body);
  head = register_module("head", torch::nn::Linear(spec.dims.back(), num_classes));
}

torch::Tensor MlpImpl::forward(torch::Tensor x) {
  for (const auto& layer : *body) {
    x = torch::relu(layer->as<torch::nn::Linear>()->forward(x));
  }
  return head->forward(x);
}

absl::Status LoadParameters(torch::nn::Module& module, const std::vector<HostTensor>& tensors) {
  torch::NoGradGuard no_grad;
  auto params = module.named_parameters(/*recurse=*/true);
  for (const HostTensor& t : tensors) {
    const std::string& name = t.spec.name();
    torch::Tensor* p = params.find(name);
    if (p == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' is not a parameter of the model"));
    }
    if (t.spec.dtype() != v1::F32) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", name, "' must be F32 for training"));
    }
    std::vector<int64_t> shape(t.spec.shape().begin(), t.spec.shape().end());
    if (p->sizes().vec() != shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has shape ",
                                                     ShapeString(t.spec), " but the model's is ",
                                                     c10::str(p->sizes())));
    }
    if (t.data.size() != static_cast<size_t>(p->numel()) * sizeof(float)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", name, "' has ", t.data.size(),
                                                     " bytes but its shape needs ",
                                                     p->numel() * sizeof(float)));
    }
    torch::Tensor host = torch::empty(shape, torch::kFloat32);
    std::memcpy(host.data_ptr<float>(), t.data.data(), t.data.size());
    p->copy_(host);
  }
  return absl::OkStatus();
}

std::vector<HostTensor> ExportParameters(torch::nn::Module& module, const v1::Manifest& which) {
  auto params = module.named_parameters(/*recurse=*/true);
  std::vector<HostTensor> out;
  out.reserve(static_cast<size_t>(which.tensors_size()));
  for (const v1::TensorSpec& spec : which.tensors()) {
    torch::Tensor host = params[spec.name()].detach().to(torch::kCPU, torch::kFloat32).contiguous();
    HostTensor t;
    t.spec = spec;
    t.data.resize(static_cast<size_t>(host.numel()) * sizeof(float));
    std::memcpy(t.data.data(), host.data_ptr<float>(), t.data.size());
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace coldfuse::train
