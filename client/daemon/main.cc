// coldfuse-client: the contributor daemon (default), or a one-off probe that scores how
// good a starting point the current base is for a task (--probe).
#include <signal.h>

#include <cstdio>
#include <iostream>
#include <thread>

#include "absl/flags/flag.h"
#include "absl/flags/parse.h"
#include "absl/flags/usage.h"
#include "absl/strings/str_format.h"
#include "client/daemon/daemon.h"
#include "client/train/dataset.h"
#include "client/train/trainer.h"
#include "common/logging.h"
#include "common/rpc/client.h"
#include "common/status_macros.h"

ABSL_FLAG(std::string, server, "127.0.0.1:7878", "coldfused address (host:port)");
ABSL_FLAG(std::string, name, "", "Contributor name shown in status (required for the daemon)");
ABSL_FLAG(std::string, task, "", "Task name reported with each contribution");
ABSL_FLAG(std::string, state_dir, "", "State folder: base cache, head, pending upload (required)");
ABSL_FLAG(std::string, train, "", "Training CSV (header row; integer class column)");
ABSL_FLAG(std::string, test, "", "Held-out CSV, scored before and after fine-tuning");
ABSL_FLAG(std::string, label_column, "label", "Name of the class column");
ABSL_FLAG(int, epochs, 5, "Training epochs per round (when --steps is 0)");
ABSL_FLAG(int64_t, steps, 0, "If > 0: optimizer steps per round instead of epochs");
ABSL_FLAG(double, lr, 1e-3, "AdamW learning rate");
ABSL_FLAG(double, weight_decay, 0.01, "AdamW weight decay");
ABSL_FLAG(int, batch_size, 32, "Batch size");
ABSL_FLAG(uint64_t, seed, 1, "Seed for shuffling and head initialisation");
ABSL_FLAG(int, threads, 0, "LibTorch threads (0: LibTorch's default)");
ABSL_FLAG(int, max_rounds, 0, "Stop after this many contributions (0: run until stopped)");
ABSL_FLAG(double, poll_s, 1.0, "Seconds between checks for a new round");
ABSL_FLAG(bool, probe, false,
          "Instead of the daemon: fine-tune a fresh head (and the body) from the current "
          "base on the first --probe_examples rows of --train, print test accuracy as JSON, "
          "upload nothing");
ABSL_FLAG(int64_t, probe_examples, 100, "--probe: training rows to use");
ABSL_FLAG(int64_t, base_version, -1, "--probe: base version to start from (-1: current)");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA that signed the server certificate (empty: plaintext, only for a server "
          "run --insecure)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate, for a server with mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert");
ABSL_FLAG(std::string, token_file, "",
          "File holding this contributor's token (default: the COLDFUSE_TOKEN variable)");

namespace coldfuse {
namespace {

constexpr char kUsage[] = R"(coldfuse-client --name=NAME --state_dir=DIR --train=train.csv --test=test.csv [--server=HOST:PORT]
    runs the contributor daemon: pull base, fine-tune locally, push, repeat.
coldfuse-client --probe --train=train.csv --test=test.csv [--probe_examples=100]
    scores the current base as a starting point for a task; uploads nothing.)";

train::TrainOptions TrainOptionsFromFlags() {
  train::TrainOptions t;
  t.epochs = absl::GetFlag(FLAGS_epochs);
  t.steps = absl::GetFlag(FLAGS_steps);
  t.learning_rate = absl::GetFlag(FLAGS_lr);
  t.weight_decay = absl::GetFlag(FLAGS_weight_decay);
  t.batch_size = absl::GetFlag(FLAGS_batch_size);
  t.seed = absl::GetFlag(FLAGS_seed);
  t.threads = absl::GetFlag(FLAGS_threads);
  return t;
}

struct Data {
  train::Dataset train;
  train::Dataset test;
};

absl::StatusOr<Data> LoadData() {
  std::string train_path = absl::GetFlag(FLAGS_train), test_path = absl::GetFlag(FLAGS_test);
  if (train_path.empty() || test_path.empty()) {
    return absl::InvalidArgumentError("both --train and --test CSV files are required");
  }
  Data d;
  ASSIGN_OR_RETURN(d.train, train::LoadCsvDataset(train_path, absl::GetFlag(FLAGS_label_column)));
  ASSIGN_OR_RETURN(d.test, train::LoadCsvDataset(test_path, absl::GetFlag(FLAGS_label_column)));
  RETURN_IF_ERROR(train::CheckCompatible(d.train, d.test, test_path));
  return d;
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Channel() {
  return rpc::ConnectWithFiles(absl::GetFlag(FLAGS_server),
                               {.ca_file = absl::GetFlag(FLAGS_tls_ca),
                                .cert_file = absl::GetFlag(FLAGS_tls_cert),
                                .key_file = absl::GetFlag(FLAGS_tls_key)},
                               absl::GetFlag(FLAGS_token_file));
}

absl::Status Probe() {
  ASSIGN_OR_RETURN(Data data, LoadData());
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, Channel());
  std::optional<uint64_t> version;
  if (absl::GetFlag(FLAGS_base_version) >= 0) version = absl::GetFlag(FLAGS_base_version);
  ASSIGN_OR_RETURN(rpc::PulledBase base, rpc::PullBase(channel, version));
  train::TrainOptions options = TrainOptionsFromFlags();
  options.max_train_examples = absl::GetFlag(FLAGS_probe_examples);
  ASSIGN_OR_RETURN(train::FineTuneResult r,
                   train::FineTune(base.model_spec, base.tensors, {}, data.train, data.test,
                                   options));
  std::cout << absl::StrFormat(
      "{\"base_version\": %d, \"train_examples\": %d, \"accuracy\": %.6f, \"macro_f1\": "
      "%.6f}\n",
      base.version, r.num_train_examples, r.accuracy_after, r.macro_f1_after);
  return absl::OkStatus();
}

daemon::Daemon* g_daemon = nullptr;

absl::Status RunDaemon() {
  daemon::DaemonOptions options;
  options.contributor = absl::GetFlag(FLAGS_name);
  options.task = absl::GetFlag(FLAGS_task);
  options.state_dir = absl::GetFlag(FLAGS_state_dir);
  options.train = TrainOptionsFromFlags();
  options.max_rounds = absl::GetFlag(FLAGS_max_rounds);
  options.poll_interval =
      std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_poll_s) * 1000));
  if (options.contributor.empty()) {
    return absl::InvalidArgumentError("--name is required: say who is contributing");
  }
  if (options.state_dir.empty()) {
    return absl::InvalidArgumentError(
        "--state_dir is required: a folder for the head and the resumable state");
  }
  ASSIGN_OR_RETURN(Data data, LoadData());
  ASSIGN_OR_RETURN(daemon::StateDir state, daemon::StateDir::Open(options.state_dir));
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, Channel());
  CF_LOG(INFO) << "contributor " << options.contributor << ": " << data.train.rows()
               << " training and " << data.test.rows() << " test examples, "
               << data.train.num_classes << " classes; server " << absl::GetFlag(FLAGS_server)
               << (absl::GetFlag(FLAGS_tls_ca).empty() ? " (plaintext)" : " (TLS)");
  daemon::Daemon d(std::move(options), std::move(channel), std::move(state),
                   std::move(data.train), std::move(data.test));
  g_daemon = &d;
  return d.Run();
}

}  // namespace
}  // namespace coldfuse

int main(int argc, char** argv) {
  absl::SetProgramUsageMessage(coldfuse::kUsage);
  absl::ParseCommandLine(argc, argv);
  if (!absl::GetFlag(FLAGS_probe)) {
    // SIGINT/SIGTERM: finish the current step, then exit cleanly (state stays resumable).
    sigset_t signals;
    sigemptyset(&signals);
    sigaddset(&signals, SIGINT);
    sigaddset(&signals, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &signals, nullptr);
    std::thread([signals] {
      int sig = 0;
      sigwait(&signals, &sig);
      CF_LOG(INFO) << "signal " << sig << ": stopping after the current step";
      if (coldfuse::g_daemon != nullptr) coldfuse::g_daemon->Stop();
      else std::_Exit(0);
    }).detach();
  }
  absl::Status st = absl::GetFlag(FLAGS_probe) ? coldfuse::Probe() : coldfuse::RunDaemon();
  if (!st.ok()) {
    CF_LOG(ERROR) << "coldfuse-client: " << st;
    return 1;
  }
  return 0;
}
