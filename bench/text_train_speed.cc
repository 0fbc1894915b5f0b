// Fine-tuning speed of the contributor's text trainer (FineTuneText, what coldfuse-client
// runs), for comparison with bench/train_speed.py (the same model and batch in PyTorch).
//
//   build/bench/text_train_speed --model=models/all-MiniLM-L6-v2 --threads=2
//   build/bench/text_train_speed --device=cuda [--bf16=0]   (bf16 autocast by default)
//   ... --train=models/data/movie-sentiment/train.csv --test=.../test.csv   (a real task)
//
// Rows are texts of random vocabulary words long enough to fill --seq tokens after
// truncation, so every batch is [batch, seq] like the Python side's. Steps after --warmup
// are timed (each optimizer step: batch building, forward, backward, clipping, AdamW).
// Prints one JSON object.
#include <torch/version.h>

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "client/train/encoder.h"
#include "client/train/text_dataset.h"
#include "client/train/text_trainer.h"
#include "common/model_spec.h"

namespace {

std::string Arg(int argc, char** argv, const std::string& name, const std::string& fallback) {
  const std::string prefix = "--" + name + "=";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a.rfind(prefix, 0) == 0) return a.substr(prefix.size());
  }
  return fallback;
}

int64_t IntArg(int argc, char** argv, const std::string& name, int64_t fallback) {
  int64_t v = fallback;
  std::string s = Arg(argc, argv, name, "");
  if (!s.empty() && !absl::SimpleAtoi(s, &v)) {
    std::cerr << "--" << name << " must be an integer\n";
    std::exit(2);
  }
  return v;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace coldfuse;
  const std::string dir = Arg(argc, argv, "model", "models/all-MiniLM-L6-v2");
  const int threads = static_cast<int>(IntArg(argc, argv, "threads", 2));
  const int batch = static_cast<int>(IntArg(argc, argv, "batch", 32));
  const int seq = static_cast<int>(IntArg(argc, argv, "seq", 128));
  const int64_t warmup = IntArg(argc, argv, "warmup", 3);
  const int64_t steps = IntArg(argc, argv, "steps", 20);
  if (warmup < 1 || steps < 1) {
    std::cerr << "--warmup and --steps must be >= 1\n";
    return 2;
  }
  const std::string device = Arg(argc, argv, "device", "cpu");
  const bool bf16 = Arg(argc, argv, "bf16", "1") != "0";

  auto model = train::TextModel::Open(dir);
  if (!model.ok()) {
    std::cerr << "cannot open " << dir << ": " << model.status()
              << "\n(run scripts/prepare_minilm.sh first)\n";
    return 1;
  }
  // The checkpoint's weights, or (a folder with config.json and the tokenizer only, e.g.
  // on a machine the weights were not copied to) a random encoder of that shape: speed
  // does not depend on the values.
  std::vector<HostTensor> base;
  bool random_weights = false;
  if (std::ifstream(dir + "/model.safetensors")) {
    auto ckpt = train::ReadEncoderCheckpoint(dir);
    if (!ckpt.ok()) {
      std::cerr << ckpt.status() << "\n";
      return 1;
    }
    base = std::move(ckpt->tensors);
  } else {
    auto config = train::ReadEncoderConfig(dir);
    if (!config.ok()) {
      std::cerr << config.status() << "\n";
      return 1;
    }
    torch::manual_seed(1);
    train::Encoder fresh(*config);
    base = train::ExportEncoderWeights(fresh, "");
    random_weights = true;
  }
  // Vocabulary words ("##" pieces and specials left out) as the texts' material.
  std::vector<std::string> words;
  {
    std::ifstream vocab(dir + "/vocab.txt");
    std::string w;
    while (std::getline(vocab, w)) {
      if (w.size() >= 3 && w[0] != '[' && w[0] != '#' &&
          std::isalpha(static_cast<unsigned char>(w[0]))) {
        words.push_back(w);
      }
    }
  }
  if (words.empty()) {
    std::cerr << dir << "/vocab.txt has no words\n";
    return 1;
  }
  train::TextDataset data, test;
  const std::string train_file = Arg(argc, argv, "train", "");
  if (!train_file.empty()) {
    // A real labelled task (--train/--test, text,label): the loss and test accuracy show
    // the model learning; rows are as long as their texts (batches padded to the longest).
    auto d = train::LoadTextDataset(train_file, {});
    if (!d.ok()) {
      std::cerr << d.status() << "\n";
      return 1;
    }
    auto t = train::LoadTextDatasetLike(Arg(argc, argv, "test", ""), *d, {});
    if (!t.ok()) {
      std::cerr << t.status() << "\n";
      return 1;
    }
    data = std::move(*d);
    test = std::move(*t);
  } else {
    data.label_names = {"0", "1"};
    SplitMix64 rng(1);
    const int64_t rows = static_cast<int64_t>(batch) * (warmup + steps);
    for (int64_t r = 0; r < rows; ++r) {
      std::string text;
      for (int i = 0; i < seq * 2; ++i) {
        absl::StrAppend(&text, i ? " " : "", words[rng.Next() % words.size()]);
      }
      data.texts.push_back(std::move(text));
      data.label_ids.push_back(static_cast<int64_t>(rng.Next() % 2));
    }
    test.label_names = data.label_names;
    for (int i = 0; i < 2; ++i) {
      test.texts.push_back(data.texts[i]);
      test.label_ids.push_back(data.label_ids[i]);
    }
  }

  train::TextTrainOptions o;
  o.steps = warmup + steps;
  o.batch_size = batch;
  o.max_seq_length = seq;
  o.threads = threads;
  o.device = device;
  o.bf16 = bf16;
  std::vector<std::chrono::steady_clock::time_point> at;
  std::vector<double> losses;
  o.on_step = [&](const train::TextProgress& p) {
    if (p.dev_evaluated) return;
    at.push_back(std::chrono::steady_clock::now());
    losses.push_back(p.loss);
  };
  auto r = train::FineTuneText(*model, base, {}, data, {}, test, o);
  if (!r.ok()) {
    std::cerr << r.status() << "\n";
    return 1;
  }
  const double timed = std::chrono::duration<double>(at.back() - at[warmup - 1]).count();
  std::vector<double> per_step;
  for (size_t i = warmup; i < at.size(); ++i) {
    per_step.push_back(std::chrono::duration<double>(at[i] - at[i - 1]).count());
  }
  std::sort(per_step.begin(), per_step.end());
  double load[3] = {0, 0, 0};
  if (std::FILE* f = std::fopen("/proc/loadavg", "r")) {
    if (std::fscanf(f, "%lf %lf %lf", &load[0], &load[1], &load[2]) != 3) load[0] = -1;
    std::fclose(f);
  }
  std::cout << absl::StrFormat(
      "{\"impl\": \"coldfuse C++ (FineTuneText)\", \"torch\": \"%s\", \"device\": \"%s\", "
      "\"weights\": \"%s\", "
      "\"threads\": %d, \"batch\": %d, \"seq\": %d, \"warmup\": %d, \"steps\": %d, "
      "\"steps_per_s\": %.4f, \"s_per_step\": %.4f, \"s_per_step_median\": %.4f, "
      "\"s_per_step_min\": %.4f, \"examples_per_s\": %.2f, \"loss_first\": %.4f, "
      "\"loss_last\": %.4f, \"data\": \"%s\", \"test_accuracy_before\": %.4f, "
      "\"test_accuracy_after\": %.4f, \"loss_first_10pct\": %.4f, \"loss_last_10pct\": %.4f, "
      "\"loadavg_after\": [%.2f, %.2f, %.2f]}\n",
      TORCH_VERSION, r->device, random_weights ? "random" : "checkpoint", threads, batch, seq,
      warmup, steps, steps / timed, timed / steps, per_step[per_step.size() / 2], per_step.front(),
      batch * steps / timed, losses.front(), losses.back(),
      train_file.empty() ? "random" : train_file, r->before.accuracy, r->after.accuracy,
      r->loss_first, r->loss_last, load[0], load[1], load[2]);
  return 0;
}
