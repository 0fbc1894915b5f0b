// Parity of the LibTorch BERT/RoBERTa encoders with transformers on the
// fixtures made by scripts/make_encoder_fixtures.py, weight round-trips,
// errors, and a short fine-tune.
#include "client/train/encoder.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <vector>

#include "common/dtype.h"
#include "common/json.h"

namespace coldfuse::train {
namespace {

const std::string kFixtures = COLDFUSE_ENCODER_FIXTURES;

std::string ReadText(const std::string &path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << "cannot read " << path;
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

JsonValue ReadJson(const std::string &path) {
  absl::StatusOr<JsonValue> v = ParseJson(ReadText(path));
  EXPECT_TRUE(v.ok()) << path << ": " << v.status();
  return v.ok() ? *v : JsonValue();
}

// Flattens nested JSON arrays of numbers into `values`, recording the shape.
void Flatten(const JsonValue &v, size_t depth, std::vector<int64_t> *shape,
             std::vector<double> *values) {
  if (!v.is_array()) {
    values->push_back(*v.AsDouble());
    return;
  }
  if (shape->size() <= depth) shape->push_back(static_cast<int64_t>(v.array.size()));
  for (const JsonValue &e : v.array) Flatten(e, depth + 1, shape, values);
}

torch::Tensor ToTensor(const JsonValue &v, torch::ScalarType type) {
  std::vector<int64_t> shape;
  std::vector<double> values;
  Flatten(v, 0, &shape, &values);
  return torch::tensor(values, torch::kFloat64).view(shape).to(type);
}

struct Loaded {
  EncoderCheckpoint ckpt;
  Encoder encoder{nullptr};
};

Loaded Load(const std::string &model) {
  Loaded l;
  absl::StatusOr<EncoderCheckpoint> ckpt = ReadEncoderCheckpoint(kFixtures + "/" + model);
  EXPECT_TRUE(ckpt.ok()) << ckpt.status();
  if (!ckpt.ok()) return l;
  l.ckpt = *std::move(ckpt);
  l.encoder = Encoder(l.ckpt.config);
  absl::Status st =
      LoadEncoderWeights(l.encoder, l.ckpt.tensors, EncoderPrefix(l.ckpt.config.kind));
  EXPECT_TRUE(st.ok()) << st;
  l.encoder->eval();
  return l;
}

// Largest |C++ - transformers| over every batch's last hidden state (padding
// included).
double MaxDiff(Encoder &encoder, const std::string &model) {
  JsonValue inputs = ReadJson(kFixtures + "/" + model + "/inputs.json");
  JsonValue expected = ReadJson(kFixtures + "/" + model + "/expected.json");
  const JsonValue *in_batches = inputs.Find("batches");
  const JsonValue *out_batches = expected.Find("batches");
  EXPECT_TRUE(in_batches != nullptr && out_batches != nullptr);
  if (in_batches == nullptr || out_batches == nullptr) return 1e9;
  EXPECT_EQ(in_batches->array.size(), out_batches->array.size());
  torch::NoGradGuard no_grad;
  double worst = 0;
  for (size_t i = 0; i < in_batches->array.size(); ++i) {
    const JsonValue &b = in_batches->array[i];
    torch::Tensor got = encoder->forward(ToTensor(*b.Find("input_ids"), torch::kLong),
                                         ToTensor(*b.Find("token_type_ids"), torch::kLong),
                                         ToTensor(*b.Find("attention_mask"), torch::kLong));
    torch::Tensor want =
        ToTensor(*out_batches->array[i].Find("last_hidden_state"), torch::kFloat32);
    EXPECT_EQ(got.sizes(), want.sizes()) << model << " batch " << i;
    if (got.sizes() != want.sizes()) return 1e9;
    worst = std::max(worst, (got - want).abs().max().item<double>());
  }
  return worst;
}

TEST(EncoderTest, BertMatchesTransformers) {
  Loaded l = Load("bert");
  ASSERT_FALSE(l.encoder.is_empty());
  EXPECT_EQ(l.ckpt.config.kind, EncoderKind::kBert);
  const double diff = MaxDiff(l.encoder, "bert");
  std::cout << "bert max abs diff vs transformers: " << diff << "\n";
  EXPECT_LT(diff, 1e-4);
}

TEST(EncoderTest, RobertaMatchesTransformers) {
  Loaded l = Load("roberta");
  ASSERT_FALSE(l.encoder.is_empty());
  EXPECT_EQ(l.ckpt.config.kind, EncoderKind::kRoberta);
  EXPECT_EQ(l.ckpt.config.hidden_act, Activation::kGeluTanh);
  const double diff = MaxDiff(l.encoder, "roberta");
  std::cout << "roberta max abs diff vs transformers: " << diff << "\n";
  EXPECT_LT(diff, 1e-4);
}

// ForwardPooled skips the last layer's work for every position but the first: the
// first token's state must be the one the full pass gives (transformers' too), with
// padding, for both architectures; and its gradients must match as well.
TEST(EncoderTest, ForwardPooledEqualsThePooledFullPass) {
  for (const std::string model : {"bert", "roberta"}) {
    Loaded l = Load(model);
    ASSERT_FALSE(l.encoder.is_empty());
    JsonValue inputs = ReadJson(kFixtures + "/" + model + "/inputs.json");
    JsonValue expected = ReadJson(kFixtures + "/" + model + "/expected.json");
    for (size_t i = 0; i < inputs.Find("batches")->array.size(); ++i) {
      const JsonValue &b = inputs.Find("batches")->array[i];
      torch::Tensor ids = ToTensor(*b.Find("input_ids"), torch::kLong);
      torch::Tensor types = ToTensor(*b.Find("token_type_ids"), torch::kLong);
      torch::Tensor mask = ToTensor(*b.Find("attention_mask"), torch::kLong);
      torch::Tensor full = EncoderImpl::Pooled(l.encoder->forward(ids, types, mask));
      torch::Tensor pooled = l.encoder->ForwardPooled(ids, types, mask);
      torch::Tensor want = EncoderImpl::Pooled(
          ToTensor(*expected.Find("batches")->array[i].Find("last_hidden_state"), torch::kFloat32));
      ASSERT_EQ(pooled.sizes(), full.sizes());
      EXPECT_LT((pooled - full).abs().max().item<double>(), 1e-5) << model << " batch " << i;
      EXPECT_LT((pooled - want).abs().max().item<double>(), 1e-4) << model << " batch " << i;
      // Same gradients for every parameter (eval mode: no dropout).
      auto grads = [&](bool pooled_only) {
        for (auto &p : l.encoder->parameters()) p.mutable_grad() = torch::Tensor();
        torch::Tensor out = pooled_only ? l.encoder->ForwardPooled(ids, types, mask)
                                        : EncoderImpl::Pooled(l.encoder->forward(ids, types, mask));
        (out * out).sum().backward();
        std::vector<torch::Tensor> g;
        for (auto &p : l.encoder->parameters()) {
          g.push_back(p.grad().defined() ? p.grad().clone() : torch::zeros_like(p));
        }
        return g;
      };
      std::vector<torch::Tensor> a = grads(false), c = grads(true);
      double worst = 0;
      for (size_t k = 0; k < a.size(); ++k) {
        worst = std::max(worst, (a[k] - c[k]).abs().max().item<double>());
      }
      EXPECT_LT(worst, 1e-4) << model << " batch " << i;
    }
  }
}

// The exported tensors are exactly the checkpoint's encoder tensors (the
// fixtures are F32): bert/ has no prefix (plus a pooler), roberta/ has
// "roberta." (plus a classifier).
TEST(EncoderTest, ExportEqualsLoadedTensors) {
  for (const auto &[model, prefix] :
       std::vector<std::pair<std::string, std::string>>{{"bert", ""}, {"roberta", "roberta."}}) {
    Loaded l = Load(model);
    ASSERT_FALSE(l.encoder.is_empty());
    std::vector<HostTensor> out = ExportEncoderWeights(l.encoder, prefix);
    EXPECT_EQ(out.size(), 5u + 16u * 2);
    for (const HostTensor &t : out) {
      auto it = std::find_if(l.ckpt.tensors.begin(), l.ckpt.tensors.end(),
                             [&](const HostTensor &c) { return c.spec.name() == t.spec.name(); });
      ASSERT_NE(it, l.ckpt.tensors.end()) << model << ": exported " << t.spec.name();
      EXPECT_EQ(it->spec.SerializeAsString(), t.spec.SerializeAsString()) << t.spec.name();
      EXPECT_TRUE(it->data == t.data) << t.spec.name();
    }
    // And they load back under the model's usual prefix.
    Encoder again(l.ckpt.config);
    EXPECT_TRUE(LoadEncoderWeights(again, out, EncoderPrefix(l.ckpt.config.kind)).ok());
  }
}

TEST(EncoderTest, LoadsHalfPrecision) {
  Loaded l = Load("bert");
  ASSERT_FALSE(l.encoder.is_empty());
  std::vector<HostTensor> bf16 = l.ckpt.tensors;
  for (HostTensor &t : bf16) {
    const size_t n = t.data.size() / sizeof(float);
    std::string out(n * 2, '\0');
    EncodeFromFloat(v1::BF16, reinterpret_cast<const float *>(t.data.data()), n, out.data());
    t.spec.set_dtype(v1::BF16);
    t.data = std::move(out);
  }
  Encoder enc(l.ckpt.config);
  ASSERT_TRUE(LoadEncoderWeights(enc, bf16, "bert.").ok());
  torch::Tensor w = enc->embeddings->word_embeddings->weight;
  torch::Tensor ref = l.encoder->embeddings->word_embeddings->weight;
  EXPECT_TRUE(torch::equal(w, ref.to(torch::kBFloat16).to(torch::kFloat32)));
}

constexpr const char *kGoodConfig = R"({"model_type": "bert", "vocab_size": 100,
  "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
  "intermediate_size": 64, "hidden_act": "gelu", "max_position_embeddings": 64,
  "type_vocab_size": 2, "layer_norm_eps": 1e-12, "pad_token_id": 0})";

std::string Replace(std::string s, const std::string &from, const std::string &to) {
  s.replace(s.find(from), from.size(), to);
  return s;
}

TEST(EncoderTest, BadConfigNamesTheField) {
  ASSERT_TRUE(ParseEncoderConfig(kGoodConfig).ok());
  struct Case {
    std::string from, to, field;
  };
  for (const Case &c : std::vector<Case>{
           {"\"hidden_size\": 32,", "", "hidden_size"},
           {"\"hidden_size\": 32", "\"hidden_size\": \"32\"", "hidden_size"},
           {"\"num_attention_heads\": 4", "\"num_attention_heads\": 5", "num_attention_heads"},
           {"\"gelu\"", "\"swish\"", "hidden_act"},
           {"\"bert\"", "\"gpt2\"", "model_type"},
           {"\"pad_token_id\": 0", "\"pad_token_id\": -1", "pad_token_id"},
           {"1e-12", "0", "layer_norm_eps"},
           {"\"vocab_size\": 100", "\"vocab_size\": 1.5", "vocab_size"},
       }) {
    absl::StatusOr<EncoderConfig> got = ParseEncoderConfig(Replace(kGoodConfig, c.from, c.to));
    ASSERT_FALSE(got.ok()) << c.to;
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(got.status().message().find("'" + c.field + "'"), absl::string_view::npos)
        << got.status();
  }
  EXPECT_FALSE(ParseEncoderConfig("{").ok());
}

TEST(EncoderTest, BadTensorsAreNamed) {
  Loaded l = Load("roberta");
  ASSERT_FALSE(l.encoder.is_empty());
  const std::string name = "roberta.encoder.layer.1.attention.self.key.weight";
  auto find_key = [&](std::vector<HostTensor> &ts) {
    return std::find_if(ts.begin(), ts.end(),
                        [&](const HostTensor &t) { return t.spec.name() == name; });
  };
  {  // Wrong shape.
    std::vector<HostTensor> ts = l.ckpt.tensors;
    auto it = find_key(ts);
    ASSERT_NE(it, ts.end());
    it->spec.set_shape(0, 16);
    it->spec.set_shape(1, 64);
    absl::Status st = LoadEncoderWeights(l.encoder, ts, "roberta.");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find(name), absl::string_view::npos) << st;
    EXPECT_NE(st.message().find("shape [16, 64]"), absl::string_view::npos) << st;
  }
  {  // Missing.
    std::vector<HostTensor> ts = l.ckpt.tensors;
    ts.erase(find_key(ts));
    absl::Status st = LoadEncoderWeights(l.encoder, ts, "roberta.");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("missing"), absl::string_view::npos) << st;
    EXPECT_NE(st.message().find(name), absl::string_view::npos) << st;
  }
  {  // Unknown layer (a 3-layer checkpoint into a 2-layer model).
    std::vector<HostTensor> ts = l.ckpt.tensors;
    HostTensor extra = *find_key(ts);
    extra.spec.set_name("roberta.encoder.layer.2.attention.self.key.weight");
    ts.push_back(extra);
    absl::Status st = LoadEncoderWeights(l.encoder, ts, "roberta.");
    EXPECT_EQ(st.code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(st.message().find("layer.2"), absl::string_view::npos) << st;
  }
  {  // Wrong dtype.
    std::vector<HostTensor> ts = l.ckpt.tensors;
    find_key(ts)->spec.set_dtype(v1::F64);
    absl::Status st = LoadEncoderWeights(l.encoder, ts, "roberta.");
    EXPECT_NE(st.message().find("dtype"), absl::string_view::npos) << st;
  }
  // A failed load left the weights alone.
  EXPECT_LT(MaxDiff(l.encoder, "roberta"), 1e-4);
}

// Token classification: label = token id parity. Encoder + head must learn it.
TEST(EncoderTest, FineTuningLowersTheLoss) {
  torch::manual_seed(7);
  absl::StatusOr<EncoderConfig> config =
      ParseEncoderConfig(Replace(kGoodConfig, "\"bert\"", "\"roberta\""));
  ASSERT_TRUE(config.ok()) << config.status();
  config->pad_token_id = 1;
  config->max_position_embeddings = 32;
  Encoder encoder(*config);
  EncoderClassifier head(config->hidden_size, 2, 0.1);
  std::vector<torch::Tensor> params = encoder->parameters();
  for (const torch::Tensor &p : head->parameters()) params.push_back(p);
  torch::optim::AdamW opt(params, torch::optim::AdamWOptions(3e-3));
  encoder->train();
  head->train();
  std::vector<double> losses;
  for (int step = 0; step < 80; ++step) {
    torch::Tensor ids = torch::randint(2, config->vocab_size, {16, 12}, torch::kLong);
    torch::Tensor mask = torch::ones({16, 12}, torch::kLong);
    mask.index_put_({torch::indexing::Slice(0, 8), torch::indexing::Slice(8)},
                    0);  // padding
    ids = ids * mask + (1 - mask) * config->pad_token_id;
    torch::Tensor labels = ids.remainder(2).masked_fill(mask.eq(0), -100);
    torch::Tensor logits = head->forward(encoder->forward(ids, {}, mask));
    torch::Tensor loss = torch::nn::functional::cross_entropy(
        logits.view({-1, 2}), labels.view({-1}),
        torch::nn::functional::CrossEntropyFuncOptions().ignore_index(-100));
    opt.zero_grad();
    loss.backward();
    opt.step();
    losses.push_back(loss.item<double>());
  }
  auto mean = [](auto b, auto e) {
    double s = 0;
    for (auto i = b; i != e; ++i) s += *i;
    return s / static_cast<double>(e - b);
  };
  const double first = mean(losses.begin(), losses.begin() + 5);
  const double last = mean(losses.end() - 5, losses.end());
  std::cout << "fine-tune loss: first 5 steps " << first << ", last 5 steps " << last << "\n";
  EXPECT_LT(last, 0.6 * first);
}

}  // namespace
}  // namespace coldfuse::train
