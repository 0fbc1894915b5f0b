#include "client/train/encoder.h"

#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <map>
#include <sstream>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/dtype.h"
#include "common/json.h"
#include "common/safetensors.h"
#include "common/status_macros.h"

namespace coldfuse::train {
namespace {

// The compiler's macro, not C++20's std::endian: this file is C++17 under clang (see
// coldfuse_libtorch_cxx17 in CMakeLists.txt).
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "HostTensor bytes are little-endian and copied as-is");

absl::Status FieldError(absl::string_view key, absl::string_view why) {
  return absl::InvalidArgumentError(absl::StrCat("encoder config field '", key, "' ", why));
}

absl::StatusOr<const JsonValue *> Required(const JsonValue &root, absl::string_view key) {
  const JsonValue *v = root.Find(key);
  if (v == nullptr) return FieldError(key, "is missing");
  return v;
}

// An integer field >= `min`.
absl::StatusOr<int64_t> IntField(const JsonValue &root, absl::string_view key, int64_t min) {
  ASSIGN_OR_RETURN(const JsonValue *v, Required(root, key));
  absl::StatusOr<int64_t> n = v->AsInt64();
  if (!n.ok()) {
    return FieldError(key, absl::StrCat("must be an integer, got ", v->TypeName(), " ",
                                        v->is_number() ? v->text : ""));
  }
  if (*n < min) return FieldError(key, absl::StrCat("must be >= ", min, ", got ", *n));
  return *n;
}

// A number in [lo, hi); `fallback` if absent and `optional`.
absl::StatusOr<double> DoubleField(const JsonValue &root, absl::string_view key, double lo,
                                   double hi, bool optional, double fallback) {
  const JsonValue *v = root.Find(key);
  if (v == nullptr) {
    if (optional) return fallback;
    return FieldError(key, "is missing");
  }
  absl::StatusOr<double> d = v->AsDouble();
  if (!d.ok()) return FieldError(key, absl::StrCat("must be a number, got ", v->TypeName()));
  if (!(*d >= lo && *d < hi)) {
    return FieldError(key, absl::StrCat("must be in [", lo, ", ", hi, "), got ", v->text));
  }
  return *d;
}

absl::StatusOr<std::string> StringField(const JsonValue &root, absl::string_view key) {
  ASSIGN_OR_RETURN(const JsonValue *v, Required(root, key));
  if (!v->is_string())
    return FieldError(key, absl::StrCat("must be a string, got ", v->TypeName()));
  return v->text;
}

torch::nn::LayerNorm MakeLayerNorm(const EncoderConfig &c) {
  return torch::nn::LayerNorm(torch::nn::LayerNormOptions({c.hidden_size}).eps(c.layer_norm_eps));
}

torch::Tensor Activate(Activation act, const torch::Tensor &x) {
  switch (act) {
    case Activation::kGelu:
      return torch::gelu(x);
    case Activation::kGeluTanh:
      return torch::gelu(x, "tanh");
    case Activation::kRelu:
      return torch::relu(x);
  }
  return x;
}

bool IsEncoderName(absl::string_view name) {
  return absl::StartsWith(name, "embeddings.") || absl::StartsWith(name, "encoder.");
}

}  // namespace

absl::StatusOr<EncoderConfig> ParseEncoderConfig(absl::string_view json_text) {
  absl::StatusOr<JsonValue> parsed = ParseJson(json_text);
  if (!parsed.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("encoder config is not valid JSON: ", parsed.status().message()));
  }
  const JsonValue &root = *parsed;
  if (!root.is_object()) {
    return absl::InvalidArgumentError(
        absl::StrCat("encoder config must be a JSON object, got ", root.TypeName()));
  }
  EncoderConfig c;
  ASSIGN_OR_RETURN(std::string model_type, StringField(root, "model_type"));
  if (model_type == "bert") {
    c.kind = EncoderKind::kBert;
  } else if (model_type == "roberta") {
    c.kind = EncoderKind::kRoberta;
  } else {
    return FieldError("model_type",
                      absl::StrCat("must be \"bert\" or \"roberta\", got \"", model_type, "\""));
  }
  ASSIGN_OR_RETURN(c.vocab_size, IntField(root, "vocab_size", 1));
  ASSIGN_OR_RETURN(c.hidden_size, IntField(root, "hidden_size", 1));
  ASSIGN_OR_RETURN(c.num_hidden_layers, IntField(root, "num_hidden_layers", 1));
  ASSIGN_OR_RETURN(c.num_attention_heads, IntField(root, "num_attention_heads", 1));
  if (c.hidden_size % c.num_attention_heads != 0) {
    return FieldError("num_attention_heads",
                      absl::StrCat("(", c.num_attention_heads, ") must divide hidden_size (",
                                   c.hidden_size, ")"));
  }
  ASSIGN_OR_RETURN(c.intermediate_size, IntField(root, "intermediate_size", 1));
  ASSIGN_OR_RETURN(std::string act, StringField(root, "hidden_act"));
  if (act == "gelu") {
    c.hidden_act = Activation::kGelu;
  } else if (act == "gelu_new" || act == "gelu_pytorch_tanh") {
    c.hidden_act = Activation::kGeluTanh;
  } else if (act == "relu") {
    c.hidden_act = Activation::kRelu;
  } else {
    return FieldError("hidden_act",
                      absl::StrCat("must be \"gelu\", \"gelu_new\", \"gelu_pytorch_tanh\" or "
                                   "\"relu\", got \"",
                                   act, "\""));
  }
  ASSIGN_OR_RETURN(c.max_position_embeddings, IntField(root, "max_position_embeddings", 1));
  ASSIGN_OR_RETURN(c.type_vocab_size, IntField(root, "type_vocab_size", 1));
  ASSIGN_OR_RETURN(c.layer_norm_eps, DoubleField(root, "layer_norm_eps", 0, 1, false, 0));
  if (c.layer_norm_eps <= 0) return FieldError("layer_norm_eps", "must be > 0");
  ASSIGN_OR_RETURN(c.pad_token_id, IntField(root, "pad_token_id", 0));
  if (c.pad_token_id >= c.vocab_size) {
    return FieldError(
        "pad_token_id",
        absl::StrCat("(", c.pad_token_id, ") must be below vocab_size (", c.vocab_size, ")"));
  }
  if (c.kind == EncoderKind::kRoberta && c.max_position_embeddings <= c.pad_token_id + 1) {
    return FieldError("max_position_embeddings",
                      "must exceed pad_token_id + 1 (RoBERTa positions start there)");
  }
  ASSIGN_OR_RETURN(c.hidden_dropout_prob,
                   DoubleField(root, "hidden_dropout_prob", 0, 1, true, 0.1));
  ASSIGN_OR_RETURN(c.attention_probs_dropout_prob,
                   DoubleField(root, "attention_probs_dropout_prob", 0, 1, true, 0.1));
  if (const JsonValue *p = root.Find("position_embedding_type");
      p != nullptr && !(p->is_string() && p->text == "absolute")) {
    return FieldError("position_embedding_type", "must be \"absolute\" (the only one supported)");
  }
  return c;
}

std::string EncoderPrefix(EncoderKind kind) {
  return kind == EncoderKind::kBert ? "bert." : "roberta.";
}

absl::StatusOr<EncoderConfig> ReadEncoderConfig(const std::string &dir) {
  const std::string config_path = dir + "/config.json";
  std::ifstream in(config_path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", config_path));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<EncoderConfig> config = ParseEncoderConfig(text.str());
  if (!config.ok()) {
    return absl::Status(config.status().code(),
                        absl::StrCat(config_path, ": ", config.status().message()));
  }
  return config;
}

absl::StatusOr<EncoderCheckpoint> ReadEncoderCheckpoint(const std::string &dir) {
  EncoderCheckpoint out;
  ASSIGN_OR_RETURN(out.config, ReadEncoderConfig(dir));
  ASSIGN_OR_RETURN(std::unique_ptr<Checkpoint> ckpt, Checkpoint::Open(dir));
  for (const SafetensorsEntry *e : ckpt->Entries()) {
    if (e->dtype != v1::F32 && e->dtype != v1::F16 && e->dtype != v1::BF16) continue;
    HostTensor t;
    t.spec.set_name(e->name);
    t.spec.set_dtype(e->dtype);
    for (int64_t d : e->shape) t.spec.add_shape(d);
    t.data = std::string(ckpt->Data(*e));
    out.tensors.push_back(std::move(t));
  }
  return out;
}

// --- Modules ---

EncoderEmbeddingsImpl::EncoderEmbeddingsImpl(const EncoderConfig &c) : config(c) {
  word_embeddings = register_module(
      "word_embeddings",
      torch::nn::Embedding(
          torch::nn::EmbeddingOptions(c.vocab_size, c.hidden_size).padding_idx(c.pad_token_id)));
  auto pos = torch::nn::EmbeddingOptions(c.max_position_embeddings, c.hidden_size);
  if (c.kind == EncoderKind::kRoberta) pos.padding_idx(c.pad_token_id);
  position_embeddings = register_module("position_embeddings", torch::nn::Embedding(pos));
  token_type_embeddings = register_module("token_type_embeddings",
                                          torch::nn::Embedding(c.type_vocab_size, c.hidden_size));
  LayerNorm = register_module("LayerNorm", MakeLayerNorm(c));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor EncoderEmbeddingsImpl::forward(const torch::Tensor &input_ids,
                                             const torch::Tensor &token_type_ids) {
  const int64_t seq = input_ids.size(1);
  torch::Tensor positions;
  if (config.kind == EncoderKind::kRoberta) {
    // transformers' create_position_ids_from_input_ids: padding keeps
    // pad_token_id, real tokens count up from pad_token_id + 1.
    torch::Tensor real = input_ids.ne(config.pad_token_id).to(torch::kLong);
    positions = torch::cumsum(real, 1) * real + config.pad_token_id;
  } else {
    positions = torch::arange(seq, input_ids.options().dtype(torch::kLong))
                    .unsqueeze(0)
                    .expand_as(input_ids);
  }
  // Positions never exceed seq - 1 (BERT) or pad_token_id + seq (RoBERTa): check the shape
  // when that settles it, so a forward pass on a GPU does not wait for the device.
  const int64_t bound = config.kind == EncoderKind::kRoberta ? config.pad_token_id + seq : seq - 1;
  TORCH_CHECK(seq == 0 || bound < config.max_position_embeddings ||
                  positions.max().item<int64_t>() < config.max_position_embeddings,
              "sequence of length ", seq, " is longer than the position table (",
              config.max_position_embeddings, " entries) allows");
  torch::Tensor x = word_embeddings->forward(input_ids) +
                    token_type_embeddings->forward(token_type_ids) +
                    position_embeddings->forward(positions);
  return dropout->forward(LayerNorm->forward(x));
}

SelfAttentionImpl::SelfAttentionImpl(const EncoderConfig &c) : num_heads(c.num_attention_heads) {
  query = register_module("query", torch::nn::Linear(c.hidden_size, c.hidden_size));
  key = register_module("key", torch::nn::Linear(c.hidden_size, c.hidden_size));
  value = register_module("value", torch::nn::Linear(c.hidden_size, c.hidden_size));
  dropout = register_module("dropout", torch::nn::Dropout(c.attention_probs_dropout_prob));
}

torch::Tensor SelfAttentionImpl::forward(const torch::Tensor &x, const torch::Tensor &mask_bias,
                                         const torch::Tensor &queries) {
  const torch::Tensor &xq = queries.defined() ? queries : x;
  const int64_t batch = x.size(0), hidden = x.size(2);
  const int64_t head_dim = hidden / num_heads;
  auto heads = [&](const torch::Tensor &t) {
    return t.view({batch, t.size(1), num_heads, head_dim}).permute({0, 2, 1, 3});
  };
  torch::Tensor q = heads(query->forward(xq));
  torch::Tensor k = heads(key->forward(x));
  torch::Tensor v = heads(value->forward(x));
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(double(head_dim));
  torch::Tensor probs = dropout->forward(torch::softmax(scores + mask_bias, -1));
  return torch::matmul(probs, v).permute({0, 2, 1, 3}).reshape({batch, xq.size(1), hidden});
}

DenseResidualNormImpl::DenseResidualNormImpl(int64_t in, int64_t out, const EncoderConfig &c) {
  dense = register_module("dense", torch::nn::Linear(in, out));
  LayerNorm = register_module("LayerNorm", MakeLayerNorm(c));
  dropout = register_module("dropout", torch::nn::Dropout(c.hidden_dropout_prob));
}

torch::Tensor DenseResidualNormImpl::forward(const torch::Tensor &x,
                                             const torch::Tensor &residual) {
  return LayerNorm->forward(dropout->forward(dense->forward(x)) + residual);
}

AttentionImpl::AttentionImpl(const EncoderConfig &c) {
  self = register_module("self", SelfAttention(c));
  output = register_module("output", DenseResidualNorm(c.hidden_size, c.hidden_size, c));
}

torch::Tensor AttentionImpl::forward(const torch::Tensor &x, const torch::Tensor &mask_bias,
                                     const torch::Tensor &queries) {
  return output->forward(self->forward(x, mask_bias, queries), queries.defined() ? queries : x);
}

EncoderLayerImpl::EncoderLayerImpl(const EncoderConfig &c) : act(c.hidden_act) {
  attention = register_module("attention", Attention(c));
  intermediate = register_module("intermediate", std::make_shared<torch::nn::Module>());
  intermediate_dense =
      intermediate->register_module("dense", torch::nn::Linear(c.hidden_size, c.intermediate_size));
  output = register_module("output", DenseResidualNorm(c.intermediate_size, c.hidden_size, c));
}

torch::Tensor EncoderLayerImpl::forward(const torch::Tensor &x, const torch::Tensor &mask_bias,
                                        const torch::Tensor &queries) {
  torch::Tensor a = attention->forward(x, mask_bias, queries);
  return output->forward(Activate(act, intermediate_dense->forward(a)), a);
}

EncoderImpl::EncoderImpl(const EncoderConfig &c) : config(c) {
  embeddings = register_module("embeddings", EncoderEmbeddings(c));
  encoder = register_module("encoder", std::make_shared<torch::nn::Module>());
  layer = encoder->register_module("layer", torch::nn::ModuleList());
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layer->push_back(EncoderLayer(c));
}

namespace {

// As transformers' get_extended_attention_mask: 0 where attended, the dtype's lowest
// value where masked, broadcast over heads and query positions.
torch::Tensor MaskBias(const torch::Tensor &mask, torch::ScalarType dtype) {
  return (1.0 - mask.to(dtype)).view({mask.size(0), 1, 1, mask.size(1)}) *
         std::numeric_limits<float>::lowest();
}

}  // namespace

torch::Tensor EncoderImpl::forward(const torch::Tensor &input_ids,
                                   const torch::Tensor &token_type_ids,
                                   const torch::Tensor &attention_mask) {
  return Run(input_ids, token_type_ids, attention_mask, /*pooled_only=*/false);
}

torch::Tensor EncoderImpl::ForwardPooled(const torch::Tensor &input_ids,
                                         const torch::Tensor &token_type_ids,
                                         const torch::Tensor &attention_mask) {
  return Run(input_ids, token_type_ids, attention_mask, /*pooled_only=*/true).select(1, 0);
}

torch::Tensor EncoderImpl::Run(const torch::Tensor &input_ids, const torch::Tensor &token_type_ids,
                               const torch::Tensor &attention_mask, bool pooled_only) {
  TORCH_CHECK(input_ids.dim() == 2, "input_ids must be [batch, seq], got ", input_ids.sizes());
  torch::Tensor types =
      token_type_ids.defined() ? token_type_ids : torch::zeros_like(input_ids, torch::kLong);
  torch::Tensor mask = attention_mask.defined() ? attention_mask : torch::ones_like(input_ids);
  TORCH_CHECK(types.sizes() == input_ids.sizes() && mask.sizes() == input_ids.sizes(),
              "token_type_ids and attention_mask must have input_ids' shape ", input_ids.sizes());
  torch::Tensor x = embeddings->forward(input_ids, types);
  torch::Tensor mask_bias = MaskBias(mask, x.scalar_type());
  const size_t last = layer->size() - 1;
  for (size_t i = 0; i < layer->size(); ++i) {
    auto *l = (*layer)[i]->as<EncoderLayerImpl>();
    if (pooled_only && i == last) {
      x = l->forward(x, mask_bias, x.narrow(1, 0, 1));  // [batch, 1, hidden]
    } else {
      x = l->forward(x, mask_bias);
    }
  }
  return x;
}

torch::Tensor EncoderImpl::Pooled(const torch::Tensor &last_hidden_state) {
  return last_hidden_state.select(1, 0);
}

EncoderClassifierImpl::EncoderClassifierImpl(int64_t hidden_size, int64_t num_labels,
                                             double dropout_prob) {
  dropout = register_module("dropout", torch::nn::Dropout(dropout_prob));
  classifier = register_module("classifier", torch::nn::Linear(hidden_size, num_labels));
}

torch::Tensor EncoderClassifierImpl::forward(const torch::Tensor &hidden) {
  return classifier->forward(dropout->forward(hidden));
}

// --- Weights ---

absl::Status LoadEncoderWeights(Encoder &encoder, const std::vector<HostTensor> &tensors,
                                absl::string_view prefix) {
  auto params = encoder->named_parameters(/*recurse=*/true);
  std::map<std::string, torch::Tensor> staged;
  for (const HostTensor &t : tensors) {
    absl::string_view name = t.spec.name();
    if (!prefix.empty() && absl::StartsWith(name, prefix)) name.remove_prefix(prefix.size());
    if (!IsEncoderName(name) || name == "embeddings.position_ids" ||
        name == "embeddings.token_type_ids") {
      continue;
    }
    const std::string key(name);
    torch::Tensor *p = params.find(key);
    if (p == nullptr) {
      return absl::InvalidArgumentError(
          absl::StrCat("tensor '", t.spec.name(), "' is not a parameter of this ",
                       encoder->config.kind == EncoderKind::kBert ? "BERT" : "RoBERTa",
                       " encoder (", encoder->config.num_hidden_layers, " layers)"));
    }
    if (staged.count(key) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(
          "tensor '", t.spec.name(), "' is given twice (with and without prefix '", prefix, "')"));
    }
    const DType dtype = t.spec.dtype();
    if (dtype != v1::F32 && dtype != v1::F16 && dtype != v1::BF16) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.spec.name(), "' has dtype ",
                                                     DTypeName(dtype),
                                                     "; the encoder takes F32, F16 or BF16"));
    }
    std::vector<int64_t> shape(t.spec.shape().begin(), t.spec.shape().end());
    if (p->sizes().vec() != shape) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.spec.name(), "' has shape ",
                                                     ShapeString(t.spec), " but the model's is ",
                                                     c10::str(p->sizes())));
    }
    const size_t n = static_cast<size_t>(p->numel());
    if (t.data.size() != n * DTypeSize(dtype)) {
      return absl::InvalidArgumentError(absl::StrCat("tensor '", t.spec.name(), "' has ",
                                                     t.data.size(), " bytes but its shape needs ",
                                                     n * DTypeSize(dtype)));
    }
    torch::Tensor host = torch::empty(shape, torch::kFloat32);
    DecodeToFloat(dtype, t.data.data(), n, host.data_ptr<float>());
    staged.emplace(key, std::move(host));
  }
  std::vector<std::string> missing;
  for (const auto &item : params) {
    if (staged.count(item.key()) == 0) missing.push_back(absl::StrCat(prefix, item.key()));
  }
  if (!missing.empty()) {
    const size_t shown = std::min<size_t>(missing.size(), 5);
    return absl::InvalidArgumentError(
        absl::StrCat(missing.size(), " encoder parameter(s) missing from the checkpoint, e.g. ",
                     absl::StrJoin(missing.begin(), missing.begin() + shown, ", "),
                     "; is the prefix right and num_hidden_layers as in the checkpoint?"));
  }
  torch::NoGradGuard no_grad;
  for (auto &item : params) item.value().copy_(staged[item.key()]);
  return absl::OkStatus();
}

std::vector<HostTensor> ExportEncoderWeights(Encoder &encoder, absl::string_view prefix) {
  return ExportParameters(*encoder, prefix);
}

std::vector<HostTensor> ExportParameters(torch::nn::Module &module, absl::string_view prefix) {
  std::vector<HostTensor> out;
  for (const auto &item : module.named_parameters(/*recurse=*/true)) {
    torch::Tensor host = item.value().detach().to(torch::kCPU, torch::kFloat32).contiguous();
    HostTensor t;
    t.spec.set_name(absl::StrCat(prefix, item.key()));
    t.spec.set_dtype(v1::F32);
    for (int64_t d : host.sizes()) t.spec.add_shape(d);
    t.data.resize(static_cast<size_t>(host.numel()) * sizeof(float));
    std::memcpy(t.data.data(), host.data_ptr<float>(), t.data.size());
    out.push_back(std::move(t));
  }
  return out;
}

}  // namespace coldfuse::train
