#include "client/train/text_trainer.h"

#include <ATen/autocast_mode.h>
#include <torch/torch.h>
#include <torch/version.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <exception>
#include <filesystem>
#include <map>
#include <numeric>
#include <string>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "client/train/adamw.h"
#include "client/train/encoder.h"
#include "client/train/head_mismatch.h"
#include "client/train/metrics.h"
#include "client/train/torch_checkpoint.h"
#include "common/dtype.h"
#include "common/json.h"
#include "common/model_spec.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace coldfuse::train {

struct TextModel::Impl {
  std::string dir;
  EncoderConfig config;
  std::unique_ptr<Tokenizer> tokenizer;
  std::string tokenizer_source;
};

namespace {

constexpr uint64_t kShuffleSeedSalt = 0x74657874ULL;  // "text"

bool Exists(const std::string& path) {
  std::error_code error;  // an unreadable folder reads as "not there"; the open says why
  return std::filesystem::exists(path, error);
}

// tokenizer_config.json's "do_lower_case" (BERT's tokenizers default to true).
absl::StatusOr<bool> LowerCaseSetting(const std::string& dir) {
  const std::string path = dir + "/tokenizer_config.json";
  if (!Exists(path)) return true;
  ASSIGN_OR_RETURN(std::string text, ReadFileToString(path));
  absl::StatusOr<JsonValue> json = ParseJson(text);
  if (!json.ok()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": ", json.status().message()));
  }
  const JsonValue* v = json->Find("do_lower_case");
  if (v == nullptr || v->is_null()) return true;
  if (!v->is_bool()) {
    return absl::InvalidArgumentError(
        absl::StrCat(path, ": \"do_lower_case\" must be true or false, not a ", v->TypeName()));
  }
  return v->boolean;
}

// Sets CUDA autocast to bf16 for its lifetime (forward passes only; backward runs
// outside, as PyTorch recommends).
class CudaBf16Autocast {
 public:
  explicit CudaBf16Autocast(bool on) : on_(on) {
    if (!on_) return;
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    prev_enabled_ = at::autocast::is_autocast_enabled(at::kCUDA);
    prev_dtype_ = at::autocast::get_autocast_dtype(at::kCUDA);
    at::autocast::set_autocast_dtype(at::kCUDA, at::kBFloat16);
    at::autocast::set_autocast_enabled(at::kCUDA, true);
#else
    prev_enabled_ = at::autocast::is_enabled();
    prev_dtype_ = at::autocast::get_autocast_gpu_dtype();
    at::autocast::set_autocast_gpu_dtype(at::kBFloat16);
    at::autocast::set_enabled(true);
#endif
    at::autocast::increment_nesting();
  }
  ~CudaBf16Autocast() {
    if (!on_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 4)
    at::autocast::set_autocast_enabled(at::kCUDA, prev_enabled_);
    at::autocast::set_autocast_dtype(at::kCUDA, prev_dtype_);
#else
    at::autocast::set_enabled(prev_enabled_);
    at::autocast::set_autocast_gpu_dtype(prev_dtype_);
#endif
  }
  CudaBf16Autocast(const CudaBf16Autocast&) = delete;
  CudaBf16Autocast& operator=(const CudaBf16Autocast&) = delete;

 private:
  bool on_;
  bool prev_enabled_ = false;
  at::ScalarType prev_dtype_ = at::kBFloat16;
};

absl::Status CheckOptions(const TextTrainOptions& o, const EncoderConfig& config) {
  auto bad = [](auto... parts) { return absl::InvalidArgumentError(absl::StrCat(parts...)); };
  if (o.steps < 0) return bad("steps must be >= 0 (0: train for `epochs` passes)");
  if (o.steps == 0 && o.epochs <= 0) return bad("epochs must be > 0 when steps is 0");
  if (!(o.learning_rate > 0) || !std::isfinite(o.learning_rate)) {
    return bad("the learning rate must be a positive number, not ", o.learning_rate);
  }
  if (!(o.weight_decay >= 0) || !std::isfinite(o.weight_decay)) {
    return bad("weight decay must be >= 0, not ", o.weight_decay);
  }
  if (!(o.warmup_ratio >= 0 && o.warmup_ratio < 1)) {
    return bad("the warmup ratio must be in [0, 1), not ", o.warmup_ratio);
  }
  if (o.batch_size <= 0) return bad("the batch size must be > 0, not ", o.batch_size);
  if (o.grad_accumulation <= 0) {
    return bad("gradient accumulation must be >= 1, not ", o.grad_accumulation);
  }
  if (!(o.max_grad_norm >= 0) || !std::isfinite(o.max_grad_norm)) {
    return bad("max gradient norm must be >= 0 (0: no clipping), not ", o.max_grad_norm);
  }
  // RoBERTa numbers positions from pad_token_id + 1, so it has pad_token_id + 1 fewer.
  const int64_t positions = config.kind == EncoderKind::kRoberta
                                ? config.max_position_embeddings - config.pad_token_id - 1
                                : config.max_position_embeddings;
  if (o.max_seq_length < 4 || o.max_seq_length > positions) {
    return bad("the maximum sequence length must be in [4, ", positions,
               "] (this model's position table), not ", o.max_seq_length);
  }
  if (o.eval_every < 0) return bad("eval_every must be >= 0, not ", o.eval_every);
  if (o.early_stopping_patience < 0) {
    return bad("early stopping patience must be >= 0, not ", o.early_stopping_patience);
  }
  if (o.max_train_examples < 0) return bad("max_train_examples must be >= 0");
  if (o.device != "auto" && o.device != "cpu" && o.device != "cuda") {
    return bad("device must be auto, cpu or cuda, not '", o.device, "'");
  }
  if (o.device == "cuda" && !torch::cuda::is_available()) {
    return bad(
        "device cuda was asked for but LibTorch sees no CUDA device (is this LibTorch "
        "built with CUDA, and is the driver loaded?); use --device=cpu or auto");
  }
  return absl::OkStatus();
}

// The parameters an encoder of `c` holds, or -1 when that overflows: compared with the
// base before the model is built, so a config.json of another (or an absurd) size is an
// error instead of a huge allocation.
int64_t EncoderParameterCount(const EncoderConfig& c) {
  const double h = static_cast<double>(c.hidden_size), i = static_cast<double>(c.intermediate_size);
  const double embeddings =
      (static_cast<double>(c.vocab_size) + c.max_position_embeddings + c.type_vocab_size + 2) * h;
  const double layer = 4 * (h * h + h) + (h * i + i) + (i * h + h) + 4 * h;
  const double total = embeddings + static_cast<double>(c.num_hidden_layers) * layer;
  return total < 9e18 ? static_cast<int64_t>(total) : -1;
}

absl::Status CheckConfigFitsBase(const TextModel::Impl& m, const std::vector<HostTensor>& base) {
  uint64_t elements = 0;
  for (const HostTensor& t : base) {
    const size_t width = DTypeSize(t.spec.dtype());
    if (width > 0) elements += t.data.size() / width;
  }
  const int64_t needed = EncoderParameterCount(m.config);
  if (needed < 0 || static_cast<uint64_t>(needed) > elements) {
    return absl::InvalidArgumentError(absl::StrCat(
        m.dir, "/config.json describes an encoder of ",
        needed < 0 ? "overflowing" : absl::StrCat(needed), " parameters but the base holds ",
        elements,
        " values: is --model the folder of the checkpoint the server was initialised from?"));
  }
  return absl::OkStatus();
}

// Every token and type id must index the model's tables: a tokenizer of another model
// would otherwise fail deep inside LibTorch (or assert on a GPU).
absl::Status CheckIds(const TextModel::Impl& m, const std::vector<std::vector<int64_t>>& ids,
                      const std::vector<std::vector<int64_t>>& types) {
  for (size_t r = 0; r < ids.size(); ++r) {
    for (int64_t id : ids[r]) {
      if (id < 0 || id >= m.config.vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            m.tokenizer_source, " gives token id ", id, " but config.json's vocab_size is ",
            m.config.vocab_size, ": use the tokenizer saved with this model"));
      }
    }
    for (int64_t t : types[r]) {
      if (t < 0 || t >= m.config.type_vocab_size) {
        return absl::InvalidArgumentError(absl::StrCat(
            m.tokenizer_source, " gives token type ", t,
            " (text pairs) but config.json's "
            "type_vocab_size is ",
            m.config.type_vocab_size,
            ": this model takes single texts; drop --text_pair_column or join the texts"));
      }
    }
  }
  return absl::OkStatus();
}

absl::Status CheckSplit(const TextDataset& data, const TextDataset& train, absl::string_view what,
                        bool allow_empty) {
  if (data.rows() == 0 && !allow_empty) {
    return absl::InvalidArgumentError(absl::StrCat("the ", what, " split has no rows"));
  }
  const bool regression = train.label_ids.empty();
  if (regression != data.label_ids.empty() && data.rows() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", what, " split is ", regression ? "classification" : "regression",
        " data but the train split is not: load both with the same --regression setting"));
  }
  if (data.text_pairs.empty() != train.text_pairs.empty() && data.rows() > 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "the ", what, " split ", train.text_pairs.empty() ? "has" : "lacks",
        " text pairs but the train split ", train.text_pairs.empty() ? "does not" : "does"));
  }
  for (int64_t id : data.label_ids) {
    if (id < 0 || id >= static_cast<int64_t>(train.label_names.size())) {
      return absl::InvalidArgumentError(
          absl::StrCat("the ", what, " split has a label id outside the train split's ",
                       train.label_names.size(), " labels (load it with LoadTextDatasetLike)"));
    }
  }
  return absl::OkStatus();
}

// Token ids of every row, unpadded; batches are padded to their longest row.
struct Encoded {
  std::vector<std::vector<int64_t>> ids;
  std::vector<std::vector<int64_t>> types;
  std::vector<int64_t> labels;  // classification
  std::vector<float> targets;   // regression
  int64_t rows() const { return static_cast<int64_t>(ids.size()); }
};

Encoded Encode(const Tokenizer& tokenizer, const TextDataset& data, int max_length, int64_t limit) {
  Encoded out;
  const int64_t n = limit > 0 ? std::min(limit, data.rows()) : data.rows();
  TokenizeOptions options;
  options.max_length = max_length;
  options.pad_to_max_length = false;
  options.truncation = true;
  out.ids.reserve(n);
  out.types.reserve(n);
  for (int64_t i = 0; i < n; ++i) {
    std::optional<absl::string_view> pair;
    if (!data.text_pairs.empty()) pair = data.text_pairs[i];
    Encoding e = tokenizer.Encode(data.texts[i], pair, options);
    out.ids.push_back(std::move(e.input_ids));
    out.types.push_back(std::move(e.token_type_ids));
  }
  if (!data.label_ids.empty()) {
    out.labels.assign(data.label_ids.begin(), data.label_ids.begin() + n);
  } else {
    out.targets.assign(data.targets.begin(), data.targets.begin() + n);
  }
  return out;
}

struct Batch {
  torch::Tensor ids, types, mask, labels;
};

Batch MakeBatch(const Encoded& data, const std::vector<int64_t>& rows, size_t begin, size_t end,
                int64_t pad_id, const torch::Device& device) {
  size_t width = 1;
  for (size_t i = begin; i < end; ++i) width = std::max(width, data.ids[rows[i]].size());
  const int64_t b = static_cast<int64_t>(end - begin), w = static_cast<int64_t>(width);
  torch::Tensor ids = torch::full({b, w}, pad_id, torch::kLong);
  torch::Tensor types = torch::zeros({b, w}, torch::kLong);
  torch::Tensor mask = torch::zeros({b, w}, torch::kLong);
  int64_t* pi = ids.data_ptr<int64_t>();
  int64_t* pt = types.data_ptr<int64_t>();
  int64_t* pm = mask.data_ptr<int64_t>();
  for (size_t i = begin; i < end; ++i) {
    const auto& row_ids = data.ids[rows[i]];
    const auto& row_types = data.types[rows[i]];
    const int64_t r = static_cast<int64_t>(i - begin);
    std::copy(row_ids.begin(), row_ids.end(), pi + r * w);
    std::copy(row_types.begin(), row_types.end(), pt + r * w);
    std::fill(pm + r * w, pm + r * w + static_cast<int64_t>(row_ids.size()), 1);
  }
  Batch batch;
  torch::Tensor labels;
  if (!data.labels.empty()) {
    labels = torch::empty({b}, torch::kLong);
    int64_t* out = labels.data_ptr<int64_t>();
    for (size_t i = begin; i < end; ++i) out[i - begin] = data.labels[rows[i]];
  } else {
    labels = torch::empty({b}, torch::kFloat);
    float* out = labels.data_ptr<float>();
    for (size_t i = begin; i < end; ++i) out[i - begin] = data.targets[rows[i]];
  }
  const bool cuda = device.is_cuda();
  batch.ids = ids.to(device, /*non_blocking=*/cuda);
  batch.types = types.to(device, cuda);
  batch.mask = mask.to(device, cuda);
  batch.labels = labels.to(device, cuda);
  return batch;
}

struct Model {
  Encoder encoder{nullptr};
  EncoderClassifier head{nullptr};
  bool regression = false;
  bool autocast = false;

  torch::Tensor Forward(const Batch& b) {
    CudaBf16Autocast guard(autocast);
    torch::Tensor hidden = encoder->ForwardPooled(b.ids, b.types, b.mask);
    torch::Tensor out = head->forward(hidden).to(torch::kFloat);
    return regression ? out.squeeze(-1) : out;
  }
  torch::Tensor Loss(const torch::Tensor& out, const torch::Tensor& labels) {
    return regression ? torch::mse_loss(out, labels)
                      : torch::nn::functional::cross_entropy(out, labels);
  }
  std::vector<torch::Tensor> Parameters() {
    std::vector<torch::Tensor> p = encoder->parameters();
    for (const auto& t : head->parameters()) p.push_back(t);
    return p;
  }
};

TextScores Score(Model& model, const Encoded& data, int64_t num_labels, int64_t pad_id,
                 int batch_size, const torch::Device& device) {
  torch::NoGradGuard no_grad;
  model.encoder->eval();
  model.head->eval();
  std::vector<int64_t> rows(data.rows());
  std::iota(rows.begin(), rows.end(), 0);
  // Longest rows first in each batch would pad less; sorted by length it is.
  std::stable_sort(rows.begin(), rows.end(),
                   [&](int64_t a, int64_t b) { return data.ids[a].size() < data.ids[b].size(); });
  std::vector<int64_t> predicted_class(data.rows());
  std::vector<double> predicted_value(data.rows());
  double loss_sum = 0;
  const size_t step = static_cast<size_t>(std::max(batch_size, 1)) * 2;
  for (size_t begin = 0; begin < rows.size(); begin += step) {
    const size_t end = std::min(rows.size(), begin + step);
    Batch b = MakeBatch(data, rows, begin, end, pad_id, device);
    torch::Tensor out = model.Forward(b);
    loss_sum += model.Loss(out, b.labels).item<double>() * static_cast<double>(end - begin);
    torch::Tensor host = model.regression ? out.to(torch::kCPU, torch::kDouble).contiguous()
                                          : out.argmax(-1).to(torch::kCPU).contiguous();
    for (size_t i = begin; i < end; ++i) {
      if (model.regression) {
        predicted_value[rows[i]] = host.data_ptr<double>()[i - begin];
      } else {
        predicted_class[rows[i]] = host.data_ptr<int64_t>()[i - begin];
      }
    }
  }
  TextScores s;
  s.loss = data.rows() > 0 ? loss_sum / static_cast<double>(data.rows()) : 0;
  if (model.regression) {
    std::vector<double> targets(data.targets.begin(), data.targets.end());
    s.pearson = Pearson(predicted_value, targets);
  } else {
    EvalResult r = ComputeMetrics(data.labels, predicted_class, num_labels);
    s.accuracy = r.accuracy;
    s.macro_f1 = r.macro_f1;
  }
  return s;
}

// Loads `head` into model.head; HeadMismatchError when it does not fit.
absl::Status LoadHead(EncoderClassifier& head, const std::vector<HostTensor>& tensors,
                      int64_t hidden, int64_t labels) {
  std::map<std::string, const HostTensor*> by_name;
  for (const auto& t : tensors) by_name[t.spec.name()] = &t;
  auto fits = [&](const char* name, std::vector<int64_t> shape) -> absl::Status {
    auto it = by_name.find(name);
    if (it == by_name.end()) {
      return HeadMismatchError(absl::StrCat("the head has no tensor '", name, "'"));
    }
    const v1::TensorSpec& s = it->second->spec;
    if (s.dtype() != v1::F32 ||
        !std::equal(s.shape().begin(), s.shape().end(), shape.begin(), shape.end())) {
      return HeadMismatchError(
          absl::StrCat("the head's '", name, "' is ", DTypeName(s.dtype()), " ", ShapeString(s),
                       " but this model and data need F32 [", absl::StrJoin(shape, ", "), "]"));
    }
    if (it->second->data.size() != static_cast<size_t>(NumElements(s).value_or(0)) * 4) {
      return HeadMismatchError(absl::StrCat("the head's '", name, "' is truncated"));
    }
    return absl::OkStatus();
  };
  RETURN_IF_ERROR(fits("classifier.weight", {labels, hidden}));
  RETURN_IF_ERROR(fits("classifier.bias", {labels}));
  torch::NoGradGuard no_grad;
  for (auto& item : head->named_parameters(true)) {
    const HostTensor* t = by_name.at(item.key());
    std::memcpy(item.value().data_ptr<float>(), t->data.data(), t->data.size());
  }
  return absl::OkStatus();
}

// The base with the encoder's trained parameters written over their entries, each in the
// base's dtype.
std::vector<HostTensor> MergeBody(const std::vector<HostTensor>& base, Encoder& encoder,
                                  absl::string_view prefix) {
  std::map<std::string, HostTensor> trained;
  for (HostTensor& t : ExportEncoderWeights(encoder, "")) {
    trained.emplace(t.spec.name(), std::move(t));
  }
  std::vector<HostTensor> out;
  out.reserve(base.size());
  for (const HostTensor& b : base) {
    absl::string_view name = b.spec.name();
    if (absl::StartsWith(name, prefix)) name.remove_prefix(prefix.size());
    auto it = trained.find(std::string(name));
    if (it == trained.end()) {
      out.push_back(b);  // not an encoder parameter (e.g. a pooler): passed through
      continue;
    }
    HostTensor t;
    t.spec = b.spec;
    const size_t n = it->second.data.size() / sizeof(float);
    const float* values = reinterpret_cast<const float*>(it->second.data.data());
    t.data.resize(n * DTypeSize(b.spec.dtype()));
    EncodeFromFloat(b.spec.dtype(), values, n, t.data.data());
    out.push_back(std::move(t));
  }
  return out;
}

double MeanOf(const std::vector<double>& v, size_t begin, size_t end) {
  if (end <= begin) return 0;
  return std::accumulate(v.begin() + begin, v.begin() + end, 0.0) /
         static_cast<double>(end - begin);
}

absl::StatusOr<TextFineTuneResult> FineTuneImpl(
    const TextModel::Impl& m, const std::vector<HostTensor>& base,
    const std::vector<HostTensor>& head_tensors, const TextDataset& train_set,
    const TextDataset& dev_set, const TextDataset& test_set, const TextTrainOptions& o) {
  RETURN_IF_ERROR(CheckOptions(o, m.config));
  RETURN_IF_ERROR(CheckSplit(train_set, train_set, "train", false));
  RETURN_IF_ERROR(CheckSplit(dev_set, train_set, "dev", true));
  RETURN_IF_ERROR(CheckSplit(test_set, train_set, "test", false));
  const bool regression = train_set.label_ids.empty();
  const int64_t num_labels = regression ? 1 : static_cast<int64_t>(train_set.label_names.size());
  if (!regression && num_labels < 2) {
    return absl::InvalidArgumentError(
        absl::StrCat("the train split has only one label ('",
                     train_set.label_names.empty() ? "" : train_set.label_names[0],
                     "'): a classifier needs at least two"));
  }
  if (o.threads > 0) torch::set_num_threads(o.threads);

  torch::Device device(torch::kCPU);
  TextFineTuneResult result;
  if (o.device == "cuda" || (o.device == "auto" && torch::cuda::is_available())) {
    device = torch::Device(torch::kCUDA, 0);  // CheckOptions made sure there is one
  }
  const bool autocast = device.is_cuda() && o.bf16;
  result.device = device.is_cuda() ? (autocast ? "cuda:0 (bf16 autocast)" : "cuda:0") : "cpu";

  torch::manual_seed(o.seed);
  if (device.is_cuda()) torch::cuda::manual_seed_all(o.seed);
  Model model;
  model.regression = regression;
  model.autocast = autocast;
  RETURN_IF_ERROR(CheckConfigFitsBase(m, base));
  model.encoder = Encoder(m.config);
  const std::string prefix = EncoderPrefix(m.config.kind);
  RETURN_IF_ERROR(LoadEncoderWeights(model.encoder, base, prefix));
  model.head = EncoderClassifier(m.config.hidden_size, num_labels, m.config.hidden_dropout_prob);
  if (!head_tensors.empty()) {
    RETURN_IF_ERROR(LoadHead(model.head, head_tensors, m.config.hidden_size, num_labels));
  }
  model.encoder->to(device);
  model.head->to(device);

  const int64_t pad = m.tokenizer->pad_id();
  const Encoded train = Encode(*m.tokenizer, train_set, o.max_seq_length, o.max_train_examples);
  const Encoded dev = Encode(*m.tokenizer, dev_set, o.max_seq_length, 0);
  const Encoded test = Encode(*m.tokenizer, test_set, o.max_seq_length, 0);
  for (const Encoded* e : {&train, &dev, &test}) RETURN_IF_ERROR(CheckIds(m, e->ids, e->types));
  result.num_train_examples = train.rows();
  result.has_dev = dev.rows() > 0;

  result.before = Score(model, test, num_labels, pad, o.batch_size, device);

  // AdamW with decoupled decay on every weight matrix; none on biases and LayerNorm.
  ForeachAdamW::Group decay{{}, o.weight_decay}, no_decay{{}, 0.0};
  auto sort_param = [&](const std::string& name, const torch::Tensor& p) {
    const bool exempt = absl::EndsWith(name, "bias") || name.find("LayerNorm") != std::string::npos;
    (exempt ? no_decay : decay).params.push_back(p);
  };
  for (const auto& item : model.encoder->named_parameters(true))
    sort_param(item.key(), item.value());
  for (const auto& item : model.head->named_parameters(true)) sort_param(item.key(), item.value());
  ForeachAdamW optimizer({decay, no_decay});
  std::vector<torch::Tensor> params = model.Parameters();

  const int64_t n = train.rows();
  const int64_t micro_per_epoch = (n + o.batch_size - 1) / o.batch_size;
  const int64_t steps_per_epoch = (micro_per_epoch + o.grad_accumulation - 1) / o.grad_accumulation;
  const int64_t total = o.steps > 0 ? o.steps : steps_per_epoch * o.epochs;
  const int64_t warmup =
      static_cast<int64_t>(std::floor(o.warmup_ratio * static_cast<double>(total)));
  auto lr_at = [&](int64_t step) {  // step: 0-based index of the optimizer step
    double f = step < warmup ? static_cast<double>(step + 1) / static_cast<double>(warmup)
                             : static_cast<double>(total - step) /
                                   static_cast<double>(std::max<int64_t>(1, total - warmup));
    return o.learning_rate * std::clamp(f, 0.0, 1.0);
  };

  std::vector<double> step_losses;
  std::vector<torch::Tensor> best;  // a copy of every parameter at the best dev score
  int evals_without_gain = 0;
  auto evaluate_dev = [&](int64_t step) -> bool {  // true: stop early
    TextScores s = Score(model, dev, num_labels, pad, o.batch_size, device);
    const double score = regression ? s.pearson : s.accuracy;
    if (best.empty() || score > result.best_dev) {
      result.best_dev = score;
      result.best_step = step;
      torch::NoGradGuard no_grad;
      best.clear();
      for (const auto& p : params) best.push_back(p.detach().clone());
      evals_without_gain = 0;
    } else {
      ++evals_without_gain;
    }
    if (o.on_step) {
      o.on_step({.step = step,
                 .total = total,
                 .loss = step_losses.empty() ? 0 : step_losses.back(),
                 .learning_rate = lr_at(std::max<int64_t>(0, step - 1)),
                 .dev_evaluated = true,
                 .dev_score = score});
    }
    return o.early_stopping_patience > 0 && evals_without_gain >= o.early_stopping_patience;
  };

  SplitMix64 rng(o.seed ^ kShuffleSeedSalt);
  std::vector<int64_t> order(n);
  int64_t step = 0;
  bool stop = false;
  double train_seconds = 0;
  uint64_t epoch_rng = rng.state();  // before this epoch's shuffle
  int64_t first_micro = 0;           // where the first epoch starts (a resumed run)
  result.total_steps = total;

  // Everything the loop below carries from one step to the next, at the top of an
  // optimizer step: enough for a later run to take over from here.
  auto checkpoint = [&](int64_t micro) {
    TrainCheckpoint c;
    c.step = step;
    c.total = total;
    for (size_t i = 0; i < params.size(); ++i) {
      c.tensors.push_back(SaveTensor(absl::StrCat("param.", i), params[i]));
    }
    for (size_t i = 0; i < best.size(); ++i) {
      c.tensors.push_back(SaveTensor(absl::StrCat("best.", i), best[i]));
    }
    optimizer.Save("adamw", &c);
    SaveGenerators(device, &c);
    c.values["text.epoch_rng"] = absl::StrCat(epoch_rng);
    c.values["text.micro"] = absl::StrCat(micro);
    c.values["text.losses"] = WriteDoubles(step_losses);
    c.values["text.train_seconds"] = WriteDouble(train_seconds);
    c.values["text.best_dev"] = WriteDouble(result.best_dev);
    c.values["text.best_step"] = absl::StrCat(result.best_step);
    c.values["text.evals_without_gain"] = absl::StrCat(evals_without_gain);
    c.values["text.params"] = absl::StrCat(params.size());
    return c;
  };
  if (o.control.resume != nullptr) {
    const TrainCheckpoint& c = *o.control.resume;
    CheckpointReader r(c);
    if (c.total != total || c.step < 0 || c.step >= total) {
      return CheckpointReader::Unfit(absl::StrCat("it is at step ", c.step, " of ", c.total,
                                                  " but this run plans ", total, " steps"));
    }
    ASSIGN_OR_RETURN(int64_t saved_params, r.Int("text.params"));
    if (saved_params != static_cast<int64_t>(params.size())) {
      return CheckpointReader::Unfit(
          absl::StrCat("it holds ", saved_params, " parameters, the model ", params.size()));
    }
    for (size_t i = 0; i < params.size(); ++i) {
      RETURN_IF_ERROR(RestoreTensor(r, absl::StrCat("param.", i), params[i]));
    }
    if (r.Find("best.0") != nullptr) {
      torch::NoGradGuard no_grad;
      for (size_t i = 0; i < params.size(); ++i) {
        best.push_back(torch::empty_like(params[i]));
        RETURN_IF_ERROR(RestoreTensor(r, absl::StrCat("best.", i), best.back()));
      }
    }
    RETURN_IF_ERROR(optimizer.Restore(r, "adamw"));
    RETURN_IF_ERROR(RestoreGenerators(r, device));
    ASSIGN_OR_RETURN(epoch_rng, r.Uint("text.epoch_rng"));
    ASSIGN_OR_RETURN(first_micro, r.Int("text.micro"));
    ASSIGN_OR_RETURN(step_losses, r.Doubles("text.losses"));
    ASSIGN_OR_RETURN(train_seconds, r.Double("text.train_seconds"));
    ASSIGN_OR_RETURN(result.best_dev, r.Double("text.best_dev"));
    ASSIGN_OR_RETURN(result.best_step, r.Int("text.best_step"));
    ASSIGN_OR_RETURN(int64_t without_gain, r.Int("text.evals_without_gain"));
    evals_without_gain = static_cast<int>(without_gain);
    if (first_micro < 0 || first_micro >= micro_per_epoch ||
        static_cast<int64_t>(step_losses.size()) != c.step) {
      return CheckpointReader::Unfit("its data position or loss history does not match its step");
    }
    step = c.step;
    rng = SplitMix64(epoch_rng);
    result.resumed_at = step;
  }

  const auto run_start = std::chrono::steady_clock::now();
  auto last_checkpoint = run_start;
  const int64_t first_step = step;
  double run_train_seconds = 0;  // this run's steps only (the time budget's estimate)
  while (step < total && !stop) {
    epoch_rng = rng.state();
    std::iota(order.begin(), order.end(), 0);
    for (int64_t i = n - 1; i > 0; --i) {
      std::swap(order[i], order[rng.Next() % static_cast<uint64_t>(i + 1)]);
    }
    model.encoder->train();
    model.head->train();
    for (int64_t micro = std::exchange(first_micro, 0);
         micro < micro_per_epoch && step < total && !stop;) {
      const auto start = std::chrono::steady_clock::now();
      const int64_t group = std::min<int64_t>(o.grad_accumulation, micro_per_epoch - micro);
      if (o.control.should_stop && o.control.should_stop()) {
        if (o.control.on_checkpoint) RETURN_IF_ERROR(o.control.on_checkpoint(checkpoint(micro)));
        return absl::CancelledError(absl::StrCat("training stopped at step ", step, " of ", total));
      }
      if (o.control.checkpoint_seconds > 0 && step > first_step && o.control.on_checkpoint &&
          std::chrono::duration<double>(start - last_checkpoint).count() >=
              o.control.checkpoint_seconds) {
        RETURN_IF_ERROR(o.control.on_checkpoint(checkpoint(micro)));
        last_checkpoint = std::chrono::steady_clock::now();
      }
      if (o.control.time_budget_seconds > 0 && step > first_step) {
        const double per_step = run_train_seconds / static_cast<double>(step - first_step);
        if (std::chrono::duration<double>(start - run_start).count() + per_step >
            o.control.time_budget_seconds) {
          result.out_of_time = true;
          stop = true;
          break;
        }
      }
      optimizer.ZeroGrad();
      torch::Tensor loss_total;  // summed on the device: one read per optimizer step
      for (int64_t g = 0; g < group; ++g, ++micro) {
        const size_t begin = static_cast<size_t>(micro * o.batch_size);
        const size_t end = std::min<size_t>(order.size(), begin + o.batch_size);
        Batch b = MakeBatch(train, order, begin, end, pad, device);
        torch::Tensor loss = model.Loss(model.Forward(b), b.labels) / static_cast<double>(group);
        loss.backward();
        loss_total = loss_total.defined() ? loss_total + loss.detach() : loss.detach();
      }
      if (o.max_grad_norm > 0) ClipGradNorm(params, o.max_grad_norm);
      optimizer.Step(lr_at(step));
      const double loss_sum = loss_total.item<double>();
      if (!std::isfinite(loss_sum)) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "the training loss became %f at step %d: lower the learning rate (now %g)", loss_sum,
            step + 1, o.learning_rate));
      }
      step_losses.push_back(loss_sum);
      ++step;
      const double seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      train_seconds += seconds;
      run_train_seconds += seconds;
      const bool epoch_end = micro >= micro_per_epoch;
      if (o.on_step) {
        o.on_step(
            {.step = step, .total = total, .loss = loss_sum, .learning_rate = lr_at(step - 1)});
      }
      if (result.has_dev && ((o.eval_every > 0 && step % o.eval_every == 0) ||
                             (o.eval_every == 0 && epoch_end) || step == total)) {
        stop = evaluate_dev(step);
        result.stopped_early = stop && step < total;
        model.encoder->train();
        model.head->train();
      }
    }
  }
  if (!best.empty()) {
    torch::NoGradGuard no_grad;
    for (size_t i = 0; i < params.size(); ++i) params[i].copy_(best[i]);
  } else {
    result.best_step = step;
  }
  result.steps = step;
  result.train_seconds = train_seconds;
  result.steps_per_second = train_seconds > 0 ? static_cast<double>(step) / train_seconds : 0;
  const size_t tenth = std::max<size_t>(1, step_losses.size() / 10);
  result.loss_first = MeanOf(step_losses, 0, std::min(tenth, step_losses.size()));
  result.loss_last = MeanOf(step_losses, step_losses.size() - std::min(tenth, step_losses.size()),
                            step_losses.size());

  result.after = Score(model, test, num_labels, pad, o.batch_size, device);
  result.body = MergeBody(base, model.encoder, prefix);
  result.head = ExportParameters(*model.head, "");
  return result;
}

}  // namespace

absl::StatusOr<TextModel> TextModel::Open(const std::string& dir) {
  auto impl = std::make_shared<Impl>();
  impl->dir = dir;
  ASSIGN_OR_RETURN(impl->config, ReadEncoderConfig(dir));
  absl::StatusOr<std::unique_ptr<Tokenizer>> tok;
  if (Exists(dir + "/tokenizer.json")) {
    impl->tokenizer_source = dir + "/tokenizer.json";
    tok = LoadTokenizerJson(impl->tokenizer_source);
  } else if (Exists(dir + "/vocab.txt")) {
    ASSIGN_OR_RETURN(bool lower, LowerCaseSetting(dir));
    impl->tokenizer_source = dir + "/vocab.txt";
    tok = LoadWordPiece(impl->tokenizer_source, lower, lower);
  } else if (Exists(dir + "/vocab.json") && Exists(dir + "/merges.txt")) {
    impl->tokenizer_source = dir + "/vocab.json + merges.txt";
    tok = LoadByteLevelBpe(dir + "/vocab.json", dir + "/merges.txt");
  } else {
    return absl::NotFoundError(absl::StrCat(
        dir,
        " has no tokenizer: it needs tokenizer.json, vocab.txt (WordPiece) or vocab.json "
        "and merges.txt (byte-level BPE), as saved by transformers"));
  }
  if (!tok.ok()) return tok.status();
  impl->tokenizer = std::move(*tok);
  if (impl->tokenizer->pad_id() < 0 || impl->tokenizer->pad_id() >= impl->config.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat(impl->tokenizer_source, ": the padding token's id ", impl->tokenizer->pad_id(),
                     " is outside the model's vocabulary of ", impl->config.vocab_size,
                     " (config.json): is this the model's own tokenizer?"));
  }
  if (impl->config.kind == EncoderKind::kRoberta &&
      impl->tokenizer->pad_id() != impl->config.pad_token_id) {
    return absl::InvalidArgumentError(absl::StrCat(
        impl->tokenizer_source, ": the padding token's id is ", impl->tokenizer->pad_id(),
        " but config.json's pad_token_id is ", impl->config.pad_token_id,
        " (RoBERTa numbers positions from it): is this the model's own tokenizer?"));
  }
  TextModel m;
  m.impl_ = std::move(impl);
  return m;
}

std::string TextModel::Describe() const {
  const EncoderConfig& c = impl_->config;
  return absl::StrFormat("%s: %d layers, hidden %d, %d heads, vocab %d; tokenizer %s",
                         c.kind == EncoderKind::kBert ? "bert" : "roberta", c.num_hidden_layers,
                         c.hidden_size, c.num_attention_heads, c.vocab_size,
                         impl_->tokenizer_source);
}

int64_t TextModel::hidden_size() const { return impl_->config.hidden_size; }

const Tokenizer& TextModel::tokenizer() const { return *impl_->tokenizer; }

absl::Status ValidateTextOptions(const TextModel& model, const TextTrainOptions& options) {
  return CheckOptions(options, model.impl().config);
}

absl::StatusOr<TextFineTuneResult> FineTuneText(const TextModel& model,
                                                const std::vector<HostTensor>& base,
                                                const std::vector<HostTensor>& head,
                                                const TextDataset& train, const TextDataset& dev,
                                                const TextDataset& test,
                                                const TextTrainOptions& options) {
  try {
    return FineTuneImpl(model.impl(), base, head, train, dev, test, options);
  } catch (const c10::Error& e) {
    return absl::InternalError(absl::StrCat("LibTorch: ", e.what_without_backtrace()));
  } catch (const std::exception& e) {
    return absl::InternalError(absl::StrCat("fine-tuning failed: ", e.what()));
  }
}

double Pearson(const std::vector<double>& x, const std::vector<double>& y) {
  const size_t n = std::min(x.size(), y.size());
  if (n < 2) return 0;
  double mx = 0, my = 0;
  for (size_t i = 0; i < n; ++i) {
    mx += x[i];
    my += y[i];
  }
  mx /= static_cast<double>(n);
  my /= static_cast<double>(n);
  double sxy = 0, sxx = 0, syy = 0;
  for (size_t i = 0; i < n; ++i) {
    sxy += (x[i] - mx) * (y[i] - my);
    sxx += (x[i] - mx) * (x[i] - mx);
    syy += (y[i] - my) * (y[i] - my);
  }
  if (sxx <= 0 || syy <= 0) return 0;
  return sxy / std::sqrt(sxx * syy);
}

}  // namespace coldfuse::train
