// coldfuse-client: the contributor daemon (default), or a one-off probe that scores how
// good a starting point the current base is for a task (--probe).
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <iostream>

#include "absl/flags/flag.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "client/daemon/daemon.h"
#include "client/daemon/task.h"
#include "client/train/dataset.h"
#include "client/train/text_dataset.h"
#include "client/train/text_trainer.h"
#include "client/train/trainer.h"
#include "common/logging.h"
#include "common/program.h"
#include "common/rpc/client.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, server, "127.0.0.1:7878", "coldfused address (host:port)");
ABSL_FLAG(std::string, name, "", "Contributor name shown in status (required for the daemon)");
ABSL_FLAG(std::string, task, "", "Task name reported with each contribution");
ABSL_FLAG(std::string, state_dir, "", "State folder: base cache, head, pending upload (required)");
ABSL_FLAG(std::string, train, "",
          "Training data: a numeric CSV (MLP models), or with --model a CSV, TSV or JSONL "
          "file of labelled texts");
ABSL_FLAG(std::string, test, "", "Held-out data, scored before and after fine-tuning");
ABSL_FLAG(std::string, dev, "",
          "--model: optional dev split, evaluated during training; the best weights are kept "
          "(and --early_stopping_patience can stop early)");
ABSL_FLAG(std::string, label_column, "label", "Name of the label column (JSONL: key)");
ABSL_FLAG(std::string, model, "",
          "Hugging Face model folder (config.json and tokenizer.json, vocab.txt or "
          "vocab.json+merges.txt) of the server's checkpoint base: fine-tune that encoder on "
          "texts; its weights come from the server");
ABSL_FLAG(std::string, text_column, "text", "--model: column (JSONL: key) of the text");
ABSL_FLAG(std::string, text_pair_column, "",
          "--model: column of a second text (NLI, paraphrase pairs); empty: single texts");
ABSL_FLAG(bool, regression, false,
          "--model: labels are numbers (STS-B-like); report Pearson instead of accuracy");
ABSL_FLAG(std::string, labels, "",
          "--model: comma-separated label set in id order (default: the train file's "
          "labels, sorted); keep it the same across rounds and contributors of a task");
ABSL_FLAG(int, max_seq_length, 128, "--model: tokens per text (pair), truncating longer ones");
ABSL_FLAG(double, warmup_ratio, 0, "--model: fraction of steps warming the learning rate up");
ABSL_FLAG(int, grad_accumulation, 1, "--model: batches summed per optimizer step");
ABSL_FLAG(double, max_grad_norm, 1.0, "--model: clip the gradient norm (0: off)");
ABSL_FLAG(int64_t, eval_every, 0,
          "--model with --dev: steps between dev evaluations (0: per epoch)");
ABSL_FLAG(int, early_stopping_patience, 0,
          "--model with --dev: stop after this many dev evaluations without gain (0: never)");
ABSL_FLAG(std::string, device, "auto", "--model: auto (CUDA when present), cpu or cuda");
ABSL_FLAG(bool, bf16, true, "--model on CUDA: bf16 autocast for forward passes");
ABSL_FLAG(int, epochs, 0, "Training epochs per round when --steps is 0 (0: 5, or 3 with --model)");
ABSL_FLAG(int64_t, steps, 0, "If > 0: optimizer steps per round instead of epochs");
ABSL_FLAG(double, lr, 0, "Peak AdamW learning rate (0: 1e-3, or 5e-5 with --model)");
ABSL_FLAG(double, weight_decay, 0.01, "AdamW weight decay");
ABSL_FLAG(int, batch_size, 32, "Batch size");
ABSL_FLAG(uint64_t, seed, 1, "Seed for shuffling and head initialisation");
ABSL_FLAG(int, threads, 0, "LibTorch threads (0: LibTorch's default)");
ABSL_FLAG(int, max_rounds, 0, "Stop after this many contributions (0: run until stopped)");
ABSL_FLAG(std::string, encoding, "full",
          "How each contribution is sent: full (the trained values), delta (minus the base) "
          "or delta_int8 (minus the base, in 8 bits with one scale per --int8_block_size "
          "values: about a quarter of F32's bytes)");
ABSL_FLAG(uint32_t, int8_block_size, 64, "--encoding=delta_int8: values per scale (8..65536)");
ABSL_FLAG(std::string, send_dtype, "",
          "--encoding=full or delta: send as f32, f16, bf16 or f64 (default: as trained; a "
          "delta in bf16 or f16 is half of F32's bytes)");
ABSL_FLAG(int, keep_contributions, 0,
          "Keep copies of the newest N acknowledged contributions in --state_dir "
          "(contrib-rN.*; 0: none, the server has them)");
ABSL_FLAG(double, poll_s, 1.0, "Seconds between checks for a new round");
ABSL_FLAG(int64_t, save_training_s, 600,
          "Save a training run in progress every this many seconds (training.safetensors in "
          "--state_dir), so a crash loses at most that much; it is always saved on SIGINT or "
          "SIGTERM, and a restart continues it. 0: only then");
ABSL_FLAG(int64_t, stop_before_deadline_s, 0,
          "If > 0 and the round has a deadline: end training this many seconds before it "
          "(time for the final evaluation and the upload) and contribute what was trained. 0: "
          "train the planned steps; a late contribution is fused as a stale one");
ABSL_FLAG(bool, probe, false,
          "Instead of the daemon: fine-tune a fresh head (and the body) from the current "
          "base on the first --probe_examples rows of --train, print test accuracy as JSON "
          "and record it on the server as an evaluation of --task; upload nothing");
ABSL_FLAG(bool, record_evaluation, true,
          "--probe: record the scores on the server (needs --task; a contributor or "
          "evaluator token)");
ABSL_FLAG(int64_t, probe_examples, 100, "--probe: training rows to use");
ABSL_FLAG(int64_t, base_version, -1, "--probe: base version to start from (-1: current)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA that signed the server certificate (empty: plaintext, only for a server "
          "run --insecure)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate, for a server with mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "The name the server's certificate carries, when --server uses another one (an "
          "IP address, a tunnel)");
ABSL_FLAG(std::string, token_file, "",
          "File holding this contributor's token (default: the COLDFUSE_TOKEN variable)");

namespace coldfuse {
namespace {

constexpr char kUsage[] =
    R"(coldfuse-client --name=NAME --state_dir=DIR --train=FILE --test=FILE [--server=HOST:PORT]
    runs the contributor daemon: pull base, fine-tune locally, push, repeat.
    MLP bases: numeric CSV files. Checkpoint bases (transformer encoders): add
    --model=HF_MODEL_DIR and give CSV/TSV/JSONL files of labelled texts
    (--text_column, --text_pair_column, --label_column, --dev for early stopping).
coldfuse-client --probe --task=NAME --train=FILE --test=FILE [--model=DIR] [--probe_examples=100]
    scores the current base as a starting point for a task and records the score on
    the server (coldfusectl evals); uploads nothing.)";

train::TrainOptions TrainOptionsFromFlags() {
  train::TrainOptions t;
  if (absl::GetFlag(FLAGS_epochs) > 0) t.epochs = absl::GetFlag(FLAGS_epochs);
  t.steps = absl::GetFlag(FLAGS_steps);
  if (absl::GetFlag(FLAGS_lr) > 0) t.learning_rate = absl::GetFlag(FLAGS_lr);
  t.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  t.batch_size = absl::GetFlag(FLAGS_batch_size);
  t.seed = absl::GetFlag(FLAGS_seed);
  t.threads = absl::GetFlag(FLAGS_threads);
  return t;
}

train::TextTrainOptions TextTrainOptionsFromFlags() {
  train::TextTrainOptions t;
  if (absl::GetFlag(FLAGS_epochs) > 0) t.epochs = absl::GetFlag(FLAGS_epochs);
  t.steps = absl::GetFlag(FLAGS_steps);
  if (absl::GetFlag(FLAGS_lr) > 0) t.learning_rate = absl::GetFlag(FLAGS_lr);
  t.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  t.warmup_ratio = absl::GetFlag(FLAGS_warmup_ratio);
  t.batch_size = absl::GetFlag(FLAGS_batch_size);
  t.grad_accumulation = absl::GetFlag(FLAGS_grad_accumulation);
  t.max_grad_norm = absl::GetFlag(FLAGS_max_grad_norm);
  t.max_seq_length = absl::GetFlag(FLAGS_max_seq_length);
  t.eval_every = absl::GetFlag(FLAGS_eval_every);
  t.early_stopping_patience = absl::GetFlag(FLAGS_early_stopping_patience);
  t.seed = absl::GetFlag(FLAGS_seed);
  t.threads = absl::GetFlag(FLAGS_threads);
  t.device = absl::GetFlag(FLAGS_device);
  t.bf16 = absl::GetFlag(FLAGS_bf16);
  return t;
}

absl::StatusOr<std::unique_ptr<daemon::LocalTask>> LoadMlpTask() {
  std::string train_path = absl::GetFlag(FLAGS_train), test_path = absl::GetFlag(FLAGS_test);
  train::Dataset train, test;
  ASSIGN_OR_RETURN(train, train::LoadCsvDataset(train_path, absl::GetFlag(FLAGS_label_column)));
  ASSIGN_OR_RETURN(test, train::LoadCsvDataset(test_path, absl::GetFlag(FLAGS_label_column)));
  RETURN_IF_ERROR(train::CheckCompatible(train, test, test_path));
  return daemon::NewMlpTask(std::move(train), std::move(test), TrainOptionsFromFlags());
}

// Everything is read and checked here, before any connection: a contributor learns about
// a bad row or a wrong model folder at once, and nothing is uploaded from a failed run.
absl::StatusOr<std::unique_ptr<daemon::LocalTask>> LoadTextTask() {
  ASSIGN_OR_RETURN(train::TextModel model, train::TextModel::Open(absl::GetFlag(FLAGS_model)));
  train::TextDatasetOptions o;
  o.text_column = absl::GetFlag(FLAGS_text_column);
  o.text_pair_column = absl::GetFlag(FLAGS_text_pair_column);
  o.label_column = absl::GetFlag(FLAGS_label_column);
  o.regression = absl::GetFlag(FLAGS_regression);
  if (!absl::GetFlag(FLAGS_labels).empty()) {
    o.labels = absl::StrSplit(absl::GetFlag(FLAGS_labels), ',');
  }
  train::TextDataset train, dev, test;
  ASSIGN_OR_RETURN(train, train::LoadTextDataset(absl::GetFlag(FLAGS_train), o));
  ASSIGN_OR_RETURN(test, train::LoadTextDatasetLike(absl::GetFlag(FLAGS_test), train, o));
  if (!absl::GetFlag(FLAGS_dev).empty()) {
    ASSIGN_OR_RETURN(dev, train::LoadTextDatasetLike(absl::GetFlag(FLAGS_dev), train, o));
  }
  return daemon::NewTextTask(std::move(model), std::move(train), std::move(dev), std::move(test),
                             TextTrainOptionsFromFlags());
}

absl::StatusOr<std::unique_ptr<daemon::LocalTask>> LoadTask() {
  if (absl::GetFlag(FLAGS_train).empty() || absl::GetFlag(FLAGS_test).empty()) {
    return absl::InvalidArgumentError("both --train and --test files are required");
  }
  // 0 means "the model's default"; a negative value is a typo, not a default.
  if (absl::GetFlag(FLAGS_epochs) < 0) {
    return absl::InvalidArgumentError("--epochs must be > 0 (or 0 for the default)");
  }
  if (absl::GetFlag(FLAGS_lr) < 0) {
    return absl::InvalidArgumentError("--lr must be > 0 (or 0 for the default)");
  }
  if (absl::GetFlag(FLAGS_model).empty()) {
    if (!absl::GetFlag(FLAGS_dev).empty()) {
      return absl::InvalidArgumentError("--dev is for text tasks: give --model as well");
    }
    return LoadMlpTask();
  }
  return LoadTextTask();
}

rpc::ClientTlsOptions TlsOptions() {
  return {.ca_file = absl::GetFlag(FLAGS_tls_ca),
          .cert_file = absl::GetFlag(FLAGS_tls_cert),
          .key_file = absl::GetFlag(FLAGS_tls_key),
          .server_name = absl::GetFlag(FLAGS_tls_server_name)};
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Channel() {
  return rpc::ConnectWithFiles(absl::GetFlag(FLAGS_server), TlsOptions(),
                               absl::GetFlag(FLAGS_token_file));
}

absl::Status Probe() {
  ASSIGN_OR_RETURN(std::unique_ptr<daemon::LocalTask> task, LoadTask());
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, Channel());
  // A task that cannot train this server's model is said before a base is pulled.
  ASSIGN_OR_RETURN(v1::GetRoundResponse round, rpc::GetRound(channel, std::chrono::seconds(30)));
  RETURN_IF_ERROR(task->CheckModel(round.model_spec()));
  std::optional<uint64_t> version;
  if (absl::GetFlag(FLAGS_base_version) >= 0) version = absl::GetFlag(FLAGS_base_version);
  ASSIGN_OR_RETURN(rpc::PulledBase base, rpc::PullBase(channel, version));
  ASSIGN_OR_RETURN(daemon::TaskResult r, task->Train(base.model_spec, base.tensors, {},
                                                     absl::GetFlag(FLAGS_probe_examples)));
  std::string json = absl::StrFormat("{\"base_version\": %d, \"train_examples\": %d", base.version,
                                     r.num_examples);
  const std::string task_name = absl::GetFlag(FLAGS_task);
  const bool record = absl::GetFlag(FLAGS_record_evaluation) && !task_name.empty();
  for (const auto& [name, value] : r.metrics) {
    if (!absl::EndsWith(name, "_after")) continue;
    const std::string metric = name.substr(0, name.size() - 6);
    absl::StrAppendFormat(&json, ", \"%s\": %.6f", metric, value);
    if (!record) continue;
    // The score after fine-tuning on num_examples rows: the few-shot k of this probe.
    v1::Evaluation e;
    e.set_base_version(base.version);
    e.set_task(task_name);
    e.set_metric(metric);
    e.set_value(value);
    e.set_num_train_examples(r.num_examples);
    ASSIGN_OR_RETURN(v1::Evaluation stored,
                     rpc::RecordEvaluation(channel, e, std::chrono::seconds(30)));
    CF_LOG(INFO) << "recorded " << metric << " " << value << " of base v" << base.version << " on "
                 << task_name << (stored.task_seen() ? " (a seen task)" : " (unseen task)");
  }
  if (absl::GetFlag(FLAGS_record_evaluation) && task_name.empty()) {
    CF_LOG(INFO) << "not recorded on the server: give --task=NAME to record this score";
  }
  std::cout << json << "}\n";
  return absl::OkStatus();
}

std::atomic<daemon::Daemon*> g_daemon{nullptr};
volatile std::sig_atomic_t g_signal = 0;

// Async-signal-safe: an atomic store (Daemon::Stop) or _exit.
void OnStopSignal(int sig) {
  g_signal = sig;
  if (daemon::Daemon* d = g_daemon.load()) {
    d->Stop();
  } else {
    _exit(0);  // still loading data: nothing to save
  }
}

absl::Status RunDaemon() {
  daemon::DaemonOptions options;
  options.contributor = absl::GetFlag(FLAGS_name);
  options.task = absl::GetFlag(FLAGS_task);
  options.server = absl::GetFlag(FLAGS_server);
  options.tls = TlsOptions();
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.max_rounds = absl::GetFlag(FLAGS_max_rounds);
  options.keep_contributions = std::max(0, absl::GetFlag(FLAGS_keep_contributions));
  options.poll_interval =
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_poll_s) * 1000));
  options.save_training_every =
      std::chrono::seconds(std::max<int64_t>(0, absl::GetFlag(FLAGS_save_training_s)));
  options.stop_before_deadline =
      std::chrono::seconds(std::max<int64_t>(0, absl::GetFlag(FLAGS_stop_before_deadline_s)));
  ASSIGN_OR_RETURN(options.send, daemon::ParseSendEncoding(absl::GetFlag(FLAGS_encoding),
                                                           absl::GetFlag(FLAGS_send_dtype),
                                                           absl::GetFlag(FLAGS_int8_block_size)));
  if (options.contributor.empty()) {
    return absl::InvalidArgumentError("--name is required: say who is contributing");
  }
  if (options.state_dir.empty()) {
    return absl::InvalidArgumentError(
        "--state_dir is required: a folder for the head and the resumable state");
  }
  if (options.state_dir == "~" || absl::StartsWith(options.state_dir, "~/")) {
    // The shell expands ~ only at the start of a word, not after --state_dir=.
    return absl::InvalidArgumentError(absl::StrCat(
        "--state_dir=", options.state_dir,
        " would make a folder named '~' here: the shell does not expand ~ after '='. Write "
        "--state_dir=\"$HOME/",
        options.state_dir.size() > 2 ? options.state_dir.substr(2) : std::string(), "\""));
  }
  ASSIGN_OR_RETURN(std::unique_ptr<daemon::LocalTask> task, LoadTask());
  ASSIGN_OR_RETURN(daemon::StateDir state, daemon::StateDir::Open(options.state_dir));
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, Channel());
  CF_LOG(INFO) << "contributor " << options.contributor << ": " << task->Describe() << "; server "
               << absl::GetFlag(FLAGS_server)
               << (absl::GetFlag(FLAGS_tls_ca).empty() ? " (plaintext)" : " (TLS)");
  daemon::Daemon d(std::move(options), std::move(channel), std::move(state), std::move(task));
  g_daemon = &d;
  absl::Status st = d.Run();
  g_daemon = nullptr;
  if (g_signal != 0)
    CF_LOG(INFO) << "signal " << g_signal << ": stopped; the state folder is resumable";
  return st;
}

}  // namespace
}  // namespace coldfuse

int main(int argc, char** argv) {
  coldfuse::InitProgram(argc, argv, coldfuse::kUsage, __FILE__);
  if (!absl::GetFlag(FLAGS_probe)) {
    // SIGINT/SIGTERM: stop at the next training step, then exit cleanly (the state folder
    // stays resumable). A handler rather than sigwait: libraries start threads before main
    // (OpenBLAS's pool), and a signal delivered to one of those would kill the process.
    struct sigaction action = {};
    action.sa_handler = coldfuse::OnStopSignal;
    sigemptyset(&action.sa_mask);
    sigaction(SIGINT, &action, nullptr);
    sigaction(SIGTERM, &action, nullptr);
  }
  absl::Status st = absl::GetFlag(FLAGS_probe) ? coldfuse::Probe() : coldfuse::RunDaemon();
  if (!st.ok()) {
    CF_LOG(ERROR) << "coldfuse-client: " << st;
    return 1;
  }
  return 0;
}
