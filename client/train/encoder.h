// BERT and RoBERTa encoders in LibTorch whose parameters carry Hugging Face's
// names
// ("embeddings.word_embeddings.weight",
// "encoder.layer.0.attention.self.query.weight", ...), so transformers
// checkpoints load as-is and the shared encoder tensors round-trip; plus a
// separate classification head that is never shared.
// PRIVATE to client/train (it pulls in LibTorch), like mlp.h. A module is not
// thread-safe; use one per thread. The free functions are stateless and
// thread-safe.
#ifndef COLDFUSE_CLIENT_TRAIN_ENCODER_H_
#define COLDFUSE_CLIENT_TRAIN_ENCODER_H_

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/tensor.h"

namespace coldfuse::train {

enum class EncoderKind { kBert, kRoberta };
// hidden_act: "gelu" (exact, erf), "gelu_new"/"gelu_pytorch_tanh" (tanh
// approximation), "relu".
enum class Activation { kGelu, kGeluTanh, kRelu };

// The fields of a transformers BertConfig/RobertaConfig that shape the encoder.
struct EncoderConfig {
  EncoderKind kind = EncoderKind::kBert;  // config "model_type": "bert" or "roberta"
  int64_t vocab_size = 0;
  int64_t hidden_size = 0;
  int64_t num_hidden_layers = 0;
  int64_t num_attention_heads = 0;  // must divide hidden_size
  int64_t intermediate_size = 0;
  Activation hidden_act = Activation::kGelu;
  int64_t max_position_embeddings = 0;
  int64_t type_vocab_size = 0;
  double layer_norm_eps = 1e-12;
  int64_t pad_token_id = 0;
  // Optional in config.json; used only in training mode. Default: 0.1 each
  // (transformers').
  double hidden_dropout_prob = 0.1;
  double attention_probs_dropout_prob = 0.1;
};

// Parses the text of a config.json. Every field above is required except the
// two dropout probabilities; "position_embedding_type", if present, must be
// "absolute". INVALID_ARGUMENT naming the field for a missing, mistyped or
// out-of-range value or malformed JSON.
absl::StatusOr<EncoderConfig> ParseEncoderConfig(absl::string_view json_text);

// Reads and parses `dir`/config.json: NOT_FOUND when it cannot be read, else
// ParseEncoderConfig's errors prefixed with the file's path.
absl::StatusOr<EncoderConfig> ReadEncoderConfig(const std::string &dir);

// "bert." or "roberta.": the prefix transformers'
// *For{SequenceClassification,...} models put before the encoder's tensors.
std::string EncoderPrefix(EncoderKind kind);

// A transformers checkpoint folder: config.json plus model.safetensors (or a
// sharded index). `tensors` holds every F32/F16/BF16 tensor as stored (names
// and dtypes untouched); integer buffers such as "embeddings.position_ids" are
// skipped.
struct EncoderCheckpoint {
  EncoderConfig config;
  std::vector<HostTensor> tensors;
};
// Errors from ParseEncoderConfig (prefixed with the config path) and
// Checkpoint::Open.
absl::StatusOr<EncoderCheckpoint> ReadEncoderCheckpoint(const std::string &dir);

// --- Modules. Submodule names spell out Hugging Face's parameter names. ---

struct EncoderEmbeddingsImpl : torch::nn::Module {
  explicit EncoderEmbeddingsImpl(const EncoderConfig &config);
  // input_ids, token_type_ids: [batch, seq] int64 -> [batch, seq, hidden].
  torch::Tensor forward(const torch::Tensor &input_ids, const torch::Tensor &token_type_ids);

  EncoderConfig config;
  torch::nn::Embedding word_embeddings{nullptr};
  torch::nn::Embedding position_embeddings{nullptr};
  torch::nn::Embedding token_type_embeddings{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};  // NOLINT: HF's name
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(EncoderEmbeddings);

// "attention.self": query/key/value projections and scaled dot-product
// attention.
struct SelfAttentionImpl : torch::nn::Module {
  explicit SelfAttentionImpl(const EncoderConfig &config);
  // x: [batch, seq, hidden]; mask_bias: [batch, 1, 1, seq] added to the scores.
  // `queries` (default: x) are the positions that attend: [batch, q, hidden] -> output
  // [batch, q, hidden]; keys and values always come from x.
  torch::Tensor forward(const torch::Tensor &x, const torch::Tensor &mask_bias,
                        const torch::Tensor &queries = {});

  int64_t num_heads;
  torch::nn::Linear query{nullptr}, key{nullptr}, value{nullptr};
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(SelfAttention);

// "attention.output" and "output": dense, dropout, then post-LN with the
// residual.
struct DenseResidualNormImpl : torch::nn::Module {
  DenseResidualNormImpl(int64_t in, int64_t out, const EncoderConfig &config);
  torch::Tensor forward(const torch::Tensor &x, const torch::Tensor &residual);

  torch::nn::Linear dense{nullptr};
  torch::nn::LayerNorm LayerNorm{nullptr};  // NOLINT: HF's name
  torch::nn::Dropout dropout{nullptr};
};
TORCH_MODULE(DenseResidualNorm);

struct AttentionImpl : torch::nn::Module {
  explicit AttentionImpl(const EncoderConfig &config);
  torch::Tensor forward(const torch::Tensor &x, const torch::Tensor &mask_bias,
                        const torch::Tensor &queries = {});

  SelfAttention self{nullptr};
  DenseResidualNorm output{nullptr};
};
TORCH_MODULE(Attention);

struct EncoderLayerImpl : torch::nn::Module {
  explicit EncoderLayerImpl(const EncoderConfig &config);
  // `queries` as SelfAttentionImpl's: the output covers only those positions.
  torch::Tensor forward(const torch::Tensor &x, const torch::Tensor &mask_bias,
                        const torch::Tensor &queries = {});

  Activation act;
  Attention attention{nullptr};
  std::shared_ptr<torch::nn::Module> intermediate;  // holds "intermediate.dense"
  torch::nn::Linear intermediate_dense{nullptr};
  DenseResidualNorm output{nullptr};
};
TORCH_MODULE(EncoderLayer);

// The whole encoder. Parameter names have no prefix; Load/Export add or strip
// it.
struct EncoderImpl : torch::nn::Module {
  explicit EncoderImpl(const EncoderConfig &config);

  // input_ids: [batch, seq] int64. token_type_ids: same shape, or undefined for
  // zeros. attention_mask: same shape, 1 = attend, 0 = padding, or undefined
  // for all ones. Returns the last hidden state [batch, seq, hidden] (as
  // transformers' last_hidden_state). Throws c10::Error for ids out of range or
  // a sequence longer than the position table.
  torch::Tensor forward(const torch::Tensor &input_ids, const torch::Tensor &token_type_ids = {},
                        const torch::Tensor &attention_mask = {});

  // The first token's ([CLS] / <s>) hidden state: [batch, hidden]. No pooler
  // dense layer.
  static torch::Tensor Pooled(const torch::Tensor &last_hidden_state);

  // Pooled(forward(...)), computing the last layer for the first position only: its
  // other positions' outputs feed nothing, so their query, attention output and
  // feed-forward work (about 5/6 of a layer) is skipped, in the forward and the backward
  // pass. Equal to Pooled(forward(...)) up to float rounding (tested).
  torch::Tensor ForwardPooled(const torch::Tensor &input_ids,
                              const torch::Tensor &token_type_ids = {},
                              const torch::Tensor &attention_mask = {});

  EncoderConfig config;
  EncoderEmbeddings embeddings{nullptr};
  std::shared_ptr<torch::nn::Module> encoder;  // holds "encoder.layer"
  torch::nn::ModuleList layer{nullptr};

 private:
  torch::Tensor Run(const torch::Tensor &input_ids, const torch::Tensor &token_type_ids,
                    const torch::Tensor &attention_mask, bool pooled_only);
};
TORCH_MODULE(Encoder);

// The task head, kept apart from the shared encoder: dropout then "classifier"
// Linear (hidden -> num_labels), as transformers' BertForTokenClassification.
// Applied to every token for token classification, or to
// EncoderImpl::Pooled(...) for sequence classification (like RoBERTa's head
// minus its extra dense layer; no BERT pooler). Parameters: "classifier.weight"
// [num_labels, hidden], "classifier.bias" [num_labels].
struct EncoderClassifierImpl : torch::nn::Module {
  EncoderClassifierImpl(int64_t hidden_size, int64_t num_labels, double dropout_prob);
  // [..., hidden] -> [..., num_labels].
  torch::Tensor forward(const torch::Tensor &hidden);

  torch::nn::Dropout dropout{nullptr};
  torch::nn::Linear classifier{nullptr};
};
TORCH_MODULE(EncoderClassifier);

// Loads the encoder's parameters from `tensors` (e.g. ReadEncoderCheckpoint's).
// A name starting with `prefix` (e.g. "bert.") has it stripped; names without
// it are taken as-is. Tensors outside "embeddings." and "encoder." (pooler,
// classifier, lm_head, ...) and the
// "embeddings.position_ids"/"embeddings.token_type_ids" buffers are ignored.
// F32, F16 and BF16 are converted to F32. Every parameter must be given exactly
// once. INVALID_ARGUMENT naming the tensor for an unknown name, a duplicate,
// another dtype, a shape or byte-length mismatch, or naming the missing
// parameters; on error `encoder` is unchanged.
absl::Status LoadEncoderWeights(Encoder &encoder, const std::vector<HostTensor> &tensors,
                                absl::string_view prefix);

// Every parameter of `module` as an F32 host tensor named `prefix` + its name, in
// registration order (copied off the device if need be).
std::vector<HostTensor> ExportParameters(torch::nn::Module &module, absl::string_view prefix);

// Every encoder parameter as an F32 HostTensor named `prefix` + its HF name, in
// the module's registration order.
std::vector<HostTensor> ExportEncoderWeights(Encoder &encoder, absl::string_view prefix);

}  // namespace coldfuse::train

#endif  // COLDFUSE_CLIENT_TRAIN_ENCODER_H_
