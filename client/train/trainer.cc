#include "client/train/trainer.h"

#include <torch/torch.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <numeric>
#include <string>
#include <utility>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "client/train/adamw.h"
#include "client/train/head_mismatch.h"
#include "client/train/mlp.h"
#include "client/train/torch_checkpoint.h"
#include "common/model_spec.h"
#include "common/status_macros.h"

namespace coldfuse::train {
namespace {

// Stream offsets so the head init and the shuffle order never share random numbers.
constexpr uint64_t kHeadSeedSalt = 0x68656164ULL;     // "head"
constexpr uint64_t kShuffleSeedSalt = 0x73687566ULL;  // "shuf"

absl::StatusOr<MlpSpec> ParseSpec(absl::string_view model_spec) {
  // Only "mlp:..." exists so far; ParseModelSpec rejects anything else.
  return ParseModelSpec(model_spec);
}

absl::Status CheckDataset(const Dataset& data, const MlpSpec& spec, absl::string_view what) {
  if (data.rows() == 0) {
    return absl::InvalidArgumentError(absl::StrCat("the ", what, " split has no rows"));
  }
  if (data.num_features != spec.dims[0]) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", what, " split has ", data.num_features, " feature columns but the model spec '",
        FormatModelSpec(spec), "' takes an input width of ", spec.dims[0],
        "; use data with that many feature columns or a spec that starts with ",
        data.num_features));
  }
  if (data.features.size() != static_cast<size_t>(data.rows() * data.num_features)) {
    return absl::InvalidArgumentError(absl::StrCat("the ", what, " split holds ",
                                                   data.features.size(), " feature values for ",
                                                   data.rows(), " rows of ", data.num_features));
  }
  for (int64_t label : data.labels) {
    if (label < 0 || label >= data.num_classes) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ", what, " split has label ", label, " outside 0..",
                       data.num_classes - 1, " (num_classes must be the largest label + 1)"));
    }
  }
  return absl::OkStatus();
}

absl::Status CheckBase(const MlpSpec& spec, const std::vector<HostTensor>& base) {
  absl::Status st = CheckManifestMatches(MlpManifest(spec), ManifestOf(base));
  if (st.ok()) st = CheckTensorSizes(base);
  if (!st.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("base does not fit model spec '", FormatModelSpec(spec), "': ", st.message()));
  }
  return absl::OkStatus();
}

absl::Status CheckHead(const std::vector<HostTensor>& head, int64_t width, int64_t num_classes) {
  v1::Manifest want = HeadManifest(width, num_classes);
  auto unfit = [&](absl::string_view why) {
    return HeadMismatchError(absl::StrCat("head does not fit: ", why, " (body width ", width, ", ",
                                          num_classes,
                                          " classes); start a fresh head for this task"));
  };
  if (head.size() != static_cast<size_t>(want.tensors_size())) {
    return unfit(
        absl::StrCat("it has ", head.size(), " tensors, expected head.weight and head.bias"));
  }
  for (const v1::TensorSpec& w : want.tensors()) {
    auto it = std::find_if(head.begin(), head.end(),
                           [&](const HostTensor& t) { return t.spec.name() == w.name(); });
    if (it == head.end()) return unfit(absl::StrCat("tensor '", w.name(), "' is missing"));
    if (it->spec.dtype() != v1::F32) {
      return unfit(absl::StrCat("tensor '", w.name(), "' is not F32"));
    }
    if (!std::equal(w.shape().begin(), w.shape().end(), it->spec.shape().begin(),
                    it->spec.shape().end())) {
      return unfit(absl::StrCat("tensor '", w.name(), "' has shape ", ShapeString(it->spec),
                                ", expected ", ShapeString(w)));
    }
  }
  absl::Status sizes = CheckTensorSizes(head);
  if (!sizes.ok()) return unfit(sizes.message());
  return absl::OkStatus();
}

torch::Device ChooseDevice() {
  return torch::cuda::is_available() ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
}

// Rows [0, rows) of `data` as device tensors: features [rows, F] float, labels [rows] int64.
std::pair<torch::Tensor, torch::Tensor> ToTensors(const Dataset& data, int64_t rows,
                                                  const torch::Device& device) {
  torch::Tensor x = torch::from_blob(const_cast<float*>(data.features.data()),
                                     {rows, data.num_features}, torch::kFloat32);
  torch::Tensor y =
      torch::from_blob(const_cast<int64_t*>(data.labels.data()), {rows}, torch::kInt64);
  return {x.clone().to(device), y.clone().to(device)};
}

EvalResult EvaluateModel(Mlp& model, const torch::Tensor& x, const Dataset& data,
                         int64_t num_classes) {
  torch::NoGradGuard no_grad;
  model->eval();
  torch::Tensor pred = model->forward(x).argmax(1).to(torch::kCPU).contiguous();
  std::vector<int64_t> predictions(pred.data_ptr<int64_t>(),
                                   pred.data_ptr<int64_t>() + pred.numel());
  return ComputeMetrics(data.labels, predictions, num_classes);
}

// Fisher-Yates with a portable generator, so the order repeats across platforms.
void Shuffle(std::vector<int64_t>& v, SplitMix64& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    size_t j = static_cast<size_t>(rng.Next() % i);
    std::swap(v[i - 1], v[j]);
  }
}

double Mean(const std::vector<double>& v, size_t begin, size_t end) {
  if (begin >= end) return 0;
  return std::accumulate(v.begin() + begin, v.begin() + end, 0.0) /
         static_cast<double>(end - begin);
}

absl::StatusOr<FineTuneResult> RunFineTune(const MlpSpec& spec, const std::vector<HostTensor>& base,
                                           const std::vector<HostTensor>& head,
                                           const Dataset& train, const Dataset& test,
                                           int64_t num_train, const TrainOptions& options) {
  const int64_t num_classes = train.num_classes;
  if (options.threads > 0) torch::set_num_threads(options.threads);
  torch::manual_seed(options.seed);
  const torch::Device device = ChooseDevice();

  Mlp model(spec, num_classes);
  RETURN_IF_ERROR(LoadParameters(*model, base));
  RETURN_IF_ERROR(LoadParameters(
      *model, head.empty() ? InitHead(spec.dims.back(), num_classes, options.seed) : head));
  model->to(device);

  auto [x_train, y_train] = ToTensors(train, num_train, device);
  auto [x_test, y_test] = ToTensors(test, test.rows(), device);

  FineTuneResult result;
  result.num_train_examples = num_train;
  EvalResult before = EvaluateModel(model, x_test, test, num_classes);
  result.accuracy_before = before.accuracy;
  result.macro_f1_before = before.macro_f1;

  const int64_t batch = std::min<int64_t>(options.batch_size, num_train);
  const int64_t steps_per_pass = (num_train + batch - 1) / batch;
  const int64_t total_steps =
      options.steps > 0 ? options.steps : int64_t{options.epochs} * steps_per_pass;
  const int64_t window =
      options.steps > 0 ? std::max<int64_t>(1, options.steps / 10) : steps_per_pass;

  // The same update as torch::optim::AdamW, with a state a checkpoint can hold.
  ForeachAdamW optimizer({{model->parameters(), options.weight_decay}}, 0.9, 0.999, 1e-8);
  const std::vector<torch::Tensor> params = model->parameters();
  SplitMix64 rng(options.seed ^ kShuffleSeedSalt);
  std::vector<int64_t> order(static_cast<size_t>(num_train));
  std::iota(order.begin(), order.end(), 0);
  torch::Tensor order_t;
  int64_t pos = num_train;  // start with a shuffle
  std::vector<double> losses;
  losses.reserve(static_cast<size_t>(total_steps));
  int64_t step = 0;
  result.total_steps = total_steps;

  // The loop's state at the top of a step: enough for a later run to take over.
  auto checkpoint = [&] {
    TrainCheckpoint c;
    c.step = step;
    c.total = total_steps;
    for (size_t i = 0; i < params.size(); ++i) {
      c.tensors.push_back(SaveTensor(absl::StrCat("param.", i), params[i]));
    }
    optimizer.Save("adamw", &c);
    SaveGenerators(device, &c);
    c.values["mlp.rng"] = absl::StrCat(rng.state());
    c.values["mlp.order"] = absl::StrJoin(order, ",");
    c.values["mlp.pos"] = absl::StrCat(pos);
    c.values["mlp.losses"] = WriteDoubles(losses);
    return c;
  };
  if (options.control.resume != nullptr) {
    const TrainCheckpoint& c = *options.control.resume;
    CheckpointReader r(c);
    if (c.total != total_steps || c.step < 0 || c.step >= total_steps) {
      return CheckpointReader::Unfit(absl::StrCat("it is at step ", c.step, " of ", c.total,
                                                  " but this run plans ", total_steps, " steps"));
    }
    for (size_t i = 0; i < params.size(); ++i) {
      RETURN_IF_ERROR(RestoreTensor(r, absl::StrCat("param.", i), params[i]));
    }
    RETURN_IF_ERROR(optimizer.Restore(r, "adamw"));
    RETURN_IF_ERROR(RestoreGenerators(r, device));
    ASSIGN_OR_RETURN(uint64_t rng_state, r.Uint("mlp.rng"));
    rng = SplitMix64(rng_state);
    ASSIGN_OR_RETURN(pos, r.Int("mlp.pos"));
    ASSIGN_OR_RETURN(losses, r.Doubles("mlp.losses"));
    ASSIGN_OR_RETURN(std::string saved_order, r.Text("mlp.order"));
    std::vector<int64_t> got;
    for (absl::string_view part : absl::StrSplit(saved_order, ',')) {
      int64_t row;
      if (!absl::SimpleAtoi(part, &row) || row < 0 || row >= num_train) break;
      got.push_back(row);
    }
    if (got.size() != order.size() || pos < 0 || pos > num_train ||
        static_cast<int64_t>(losses.size()) != c.step) {
      return CheckpointReader::Unfit("its data order, position or losses do not match this run");
    }
    order = std::move(got);
    if (pos < num_train) {
      order_t = torch::from_blob(order.data(), {num_train}, torch::kInt64).clone().to(device);
    }
    step = c.step;
    result.resumed_at = step;
  }
  const auto run_start = std::chrono::steady_clock::now();
  auto last_checkpoint = run_start;
  const int64_t first_step = step;
  const TrainControl& control = options.control;
  model->train();
  for (; step < total_steps; ++step) {
    const auto now = std::chrono::steady_clock::now();
    if (control.should_stop && control.should_stop()) {
      if (control.on_checkpoint) RETURN_IF_ERROR(control.on_checkpoint(checkpoint()));
      return absl::CancelledError(
          absl::StrCat("training stopped at step ", step, " of ", total_steps));
    }
    if (control.checkpoint_seconds > 0 && step > first_step && control.on_checkpoint &&
        std::chrono::duration<double>(now - last_checkpoint).count() >=
            control.checkpoint_seconds) {
      RETURN_IF_ERROR(control.on_checkpoint(checkpoint()));
      last_checkpoint = std::chrono::steady_clock::now();
    }
    if (control.time_budget_seconds > 0 && step > first_step) {
      const double elapsed = std::chrono::duration<double>(now - run_start).count();
      if (elapsed + elapsed / static_cast<double>(step - first_step) >
          control.time_budget_seconds) {
        result.out_of_time = true;
        break;
      }
    }
    if (pos >= num_train) {
      Shuffle(order, rng);
      order_t = torch::from_blob(order.data(), {num_train}, torch::kInt64).clone().to(device);
      pos = 0;
    }
    const int64_t end = std::min(pos + batch, num_train);
    torch::Tensor idx = order_t.slice(0, pos, end);
    pos = end;
    optimizer.ZeroGrad();
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        model->forward(x_train.index_select(0, idx)), y_train.index_select(0, idx));
    loss.backward();
    optimizer.Step(options.learning_rate);
    losses.push_back(loss.item<double>());
    if (options.on_step) options.on_step(step + 1, total_steps, losses.back());
  }
  const size_t n = losses.size(), w = std::min(static_cast<size_t>(window), n);
  result.loss_first = Mean(losses, 0, w);
  result.loss_last = Mean(losses, n - w, n);
  result.steps = step;

  EvalResult after = EvaluateModel(model, x_test, test, num_classes);
  result.accuracy_after = after.accuracy;
  result.macro_f1_after = after.macro_f1;
  result.body = ExportParameters(*model, MlpManifest(spec));
  result.head = ExportParameters(*model, HeadManifest(spec.dims.back(), num_classes));
  return result;
}

template <typename Fn>
auto CatchTorch(Fn fn) -> decltype(fn()) {
  try {
    return fn();
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what()));
  }
}

}  // namespace

v1::Manifest HeadManifest(int64_t width, int64_t num_classes) {
  v1::Manifest m;
  auto* w = m.add_tensors();
  w->set_name("head.weight");
  w->set_dtype(v1::F32);
  w->add_shape(num_classes);
  w->add_shape(width);
  auto* b = m.add_tensors();
  b->set_name("head.bias");
  b->set_dtype(v1::F32);
  b->add_shape(num_classes);
  return m;
}

std::vector<HostTensor> InitHead(int64_t width, int64_t num_classes, uint64_t seed) {
  SplitMix64 rng(seed ^ kHeadSeedSalt);
  const double bound = 1.0 / std::sqrt(static_cast<double>(width));
  std::vector<HostTensor> out;
  const v1::Manifest manifest = HeadManifest(width, num_classes);
  for (const v1::TensorSpec& spec : manifest.tensors()) {
    int64_t n = 1;
    for (int64_t d : spec.shape()) n *= d;
    HostTensor t;
    t.spec = spec;
    t.data.resize(static_cast<size_t>(n) * sizeof(float));
    for (int64_t k = 0; k < n; ++k) {
      float v = static_cast<float>((2.0 * rng.Uniform() - 1.0) * bound);
      std::memcpy(t.data.data() + k * sizeof(float), &v, sizeof(float));
    }
    out.push_back(std::move(t));
  }
  return out;
}

absl::StatusOr<FineTuneResult> FineTune(absl::string_view model_spec,
                                        const std::vector<HostTensor>& base,
                                        const std::vector<HostTensor>& head, const Dataset& train,
                                        const Dataset& test, const TrainOptions& options) {
  ASSIGN_OR_RETURN(MlpSpec spec, ParseSpec(model_spec));
  if (options.steps < 0 || (options.steps == 0 && options.epochs < 1)) {
    return absl::InvalidArgumentError("set epochs >= 1, or steps > 0");
  }
  if (options.batch_size < 1) return absl::InvalidArgumentError("batch_size must be >= 1");
  if (!(options.learning_rate > 0) || !std::isfinite(options.learning_rate)) {
    return absl::InvalidArgumentError("learning_rate must be a positive number");
  }
  if (!(options.weight_decay >= 0) || !std::isfinite(options.weight_decay)) {
    return absl::InvalidArgumentError("weight_decay must be >= 0");
  }
  if (options.max_train_examples < 0 || options.threads < 0) {
    return absl::InvalidArgumentError("max_train_examples and threads must be >= 0");
  }
  RETURN_IF_ERROR(CheckDataset(train, spec, "train"));
  RETURN_IF_ERROR(CheckDataset(test, spec, "test"));
  RETURN_IF_ERROR(CheckCompatible(train, test, "the test split"));
  RETURN_IF_ERROR(CheckBase(spec, base));
  if (!head.empty()) RETURN_IF_ERROR(CheckHead(head, spec.dims.back(), train.num_classes));
  const int64_t num_train = options.max_train_examples > 0
                                ? std::min(options.max_train_examples, train.rows())
                                : train.rows();
  return CatchTorch([&] { return RunFineTune(spec, base, head, train, test, num_train, options); });
}

absl::StatusOr<EvalResult> Evaluate(absl::string_view model_spec,
                                    const std::vector<HostTensor>& base,
                                    const std::vector<HostTensor>& head, const Dataset& data) {
  ASSIGN_OR_RETURN(MlpSpec spec, ParseSpec(model_spec));
  RETURN_IF_ERROR(CheckDataset(data, spec, "evaluation"));
  RETURN_IF_ERROR(CheckBase(spec, base));
  auto bias = std::find_if(head.begin(), head.end(),
                           [](const HostTensor& t) { return t.spec.name() == "head.bias"; });
  if (bias == head.end() || bias->spec.shape_size() != 1) {
    return HeadMismatchError("head needs a 1-D tensor 'head.bias'");
  }
  const int64_t num_classes = bias->spec.shape(0);
  RETURN_IF_ERROR(CheckHead(head, spec.dims.back(), num_classes));
  if (data.num_classes > num_classes) {
    return HeadMismatchError(absl::StrCat("the data has labels up to ", data.num_classes - 1,
                                          " but the head has only ", num_classes, " classes"));
  }
  return CatchTorch([&]() -> absl::StatusOr<EvalResult> {
    const torch::Device device = ChooseDevice();
    Mlp model(spec, num_classes);
    RETURN_IF_ERROR(LoadParameters(*model, base));
    RETURN_IF_ERROR(LoadParameters(*model, head));
    model->to(device);
    auto [x, y] = ToTensors(data, data.rows(), device);
    return EvaluateModel(model, x, data, num_classes);
  });
}

}  // namespace coldfuse::train
