#include "client/train/torch_checkpoint.h"

#include <ATen/Context.h>

#include <algorithm>
#include <cstring>
#include <mutex>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"

namespace coldfuse::train {
namespace {

std::string GeneratorKey(const torch::Device& device) {
  return device.is_cuda() ? "torch.generator.cuda" : "torch.generator.cpu";
}

std::string SaveGenerator(const torch::Device& device) {
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  torch::Tensor state = gen.get_state().contiguous();
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(state.data_ptr<uint8_t>()),
                        static_cast<size_t>(state.numel())));
}

absl::Status RestoreGenerator(const CheckpointReader& r, const torch::Device& device) {
  absl::StatusOr<std::string> hex = r.Text(GeneratorKey(device));
  if (!hex.ok()) return hex.status();
  if (hex->empty() || hex->size() % 2 != 0 ||
      !std::all_of(hex->begin(), hex->end(), [](char ch) { return absl::ascii_isxdigit(ch); })) {
    return CheckpointReader::Unfit(absl::StrCat("'", GeneratorKey(device), "' is not hex"));
  }
  const std::string bytes = absl::HexStringToBytes(*hex);
  torch::Tensor state = torch::empty({static_cast<int64_t>(bytes.size())}, torch::kUInt8);
  std::memcpy(state.data_ptr<uint8_t>(), bytes.data(), bytes.size());
  at::Generator gen = at::globalContext().defaultGenerator(device);
  std::lock_guard<std::mutex> lock(gen.mutex());
  try {
    gen.set_state(state);
  } catch (const c10::Error& e) {
    return CheckpointReader::Unfit(
        absl::StrCat("its random generator state: ", e.what_without_backtrace()));
  }
  return absl::OkStatus();
}

}  // namespace

HostTensor SaveTensor(const std::string& name, const torch::Tensor& t) {
  torch::Tensor host = t.detach().to(torch::kCPU, torch::kFloat32).contiguous();
  HostTensor out;
  out.spec.set_name(name);
  out.spec.set_dtype(v1::F32);
  for (int64_t d : host.sizes()) out.spec.add_shape(d);
  out.data.assign(reinterpret_cast<const char*>(host.data_ptr<float>()),
                  static_cast<size_t>(host.numel()) * sizeof(float));
  return out;
}

absl::Status RestoreTensor(const CheckpointReader& r, const std::string& name,
                           const torch::Tensor& into) {
  absl::StatusOr<const HostTensor*> found = r.Tensor(name);
  if (!found.ok()) return found.status();
  const HostTensor& t = **found;
  const std::vector<int64_t> shape(t.spec.shape().begin(), t.spec.shape().end());
  if (t.spec.dtype() != v1::F32 || shape != into.sizes().vec() ||
      t.data.size() != static_cast<size_t>(into.numel()) * sizeof(float)) {
    return CheckpointReader::Unfit(absl::StrCat("its tensor '", name, "' is ", ShapeString(t.spec),
                                                ", the run needs F32 ", c10::str(into.sizes())));
  }
  torch::Tensor host = torch::empty(shape, torch::kFloat32);
  std::memcpy(host.data_ptr<float>(), t.data.data(), t.data.size());
  torch::NoGradGuard no_grad;
  into.copy_(host);
  return absl::OkStatus();
}

void SaveGenerators(const torch::Device& device, TrainCheckpoint* c) {
  c->values[GeneratorKey(torch::kCPU)] = SaveGenerator(torch::kCPU);
  if (device.is_cuda()) c->values[GeneratorKey(device)] = SaveGenerator(device);
}

absl::Status RestoreGenerators(const CheckpointReader& r, const torch::Device& device) {
  absl::Status st = RestoreGenerator(r, torch::kCPU);
  if (st.ok() && device.is_cuda()) st = RestoreGenerator(r, device);
  return st;
}

}  // namespace coldfuse::train
