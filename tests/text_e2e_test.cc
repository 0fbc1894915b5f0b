// End to end with transformer encoders: coldfusectl seeds base v0 from a Hugging Face
// checkpoint folder (the tiny random BERT fixture), real coldfuse-client processes
// fine-tune it on labelled text files with LibTorch, keep their heads, and push only the
// encoder; the server fuses, and the next round starts from the fused encoder.
#include <signal.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <regex>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "client/train/testing/tiny_text.h"
#include "common/posix_file.h"
#include "common/safetensors.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/cluster.h"

namespace coldfuse::testing {
namespace {

using std::chrono::seconds;
using ::testing::HasSubstr;

const std::string kFixture = std::string(COLDFUSE_ENCODER_FIXTURES) + "/bert";

class TextEndToEndTest : public ::testing::Test {
 protected:
  void SetUp() override {
    model_dir_ = dir_.path() + "/model";
    train::testing::WriteTinyTextModel(kFixture, model_dir_, 0.1, /*with_weights=*/true);
  }

  CommandResult Ctl(const ServerProcess& server, std::vector<std::string> args) {
    args.insert(args.begin(), {CtlBinary(), "--server=" + server.address()});
    return RunCommand(args);
  }

  // Writes train/dev/test files for a contributor and returns its client's arguments.
  std::vector<std::string> ClientArgs(const ServerProcess& server, const std::string& name,
                                      bool regression, uint64_t seed) {
    const std::string data = absl::StrCat(dir_.path(), "/data-", name);
    std::filesystem::create_directories(data);
    train::testing::WriteTinyTextCsv(data + "/train.csv", 160, seed, regression);
    train::testing::WriteTinyTextCsv(data + "/dev.csv", 48, seed + 100, regression);
    train::testing::WriteTinyTextCsv(data + "/test.csv", 64, seed + 200, regression);
    std::vector<std::string> args = {ClientBinary(),
                                     "--server=" + server.address(),
                                     "--name=" + name,
                                     "--task=" + std::string(regression ? "mood-share" : "mood"),
                                     "--state_dir=" + dir_.path() + "/state-" + name,
                                     "--keep_contributions=2",
                                     "--model=" + model_dir_,
                                     "--train=" + data + "/train.csv",
                                     "--test=" + data + "/test.csv",
                                     "--dev=" + data + "/dev.csv",
                                     "--epochs=6",
                                     "--lr=3e-3",
                                     "--batch_size=16",
                                     "--max_seq_length=32",
                                     "--warmup_ratio=0.1",
                                     "--threads=1",
                                     "--poll_s=0.1"};
    if (regression) args.push_back("--regression");
    return args;
  }

  // Whether the client logging to `log` reports training progress within a minute.
  static bool WaitForTrainingProgress(const std::string& log) {
    const std::regex progress("training +[0-9]+% ([0-9]+)/[0-9]+ steps");
    for (int i = 0; i < 1200; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
      auto text = ReadFileToString(log);
      if (text.ok() && std::regex_search(*text, progress)) return true;
    }
    return false;
  }

  TempDir dir_;
  std::string model_dir_;
};

TEST_F(TextEndToEndTest, EncodersAreFusedAndTheNextRoundStartsFromTheFusedEncoder) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=2", "--round_timeout_s=0"});
  ASSERT_NE(server, nullptr);
  // Share the encoder only: the checkpoint's pooler stays out of the base.
  auto init =
      Ctl(*server, {"init", "--from=" + model_dir_, "--shared_prefix=embeddings.,encoder."});
  ASSERT_EQ(init.exit_code, 0) << init.output;
  auto v0 = rpc::PullBase(server->channel(), 0);
  ASSERT_TRUE(v0.ok()) << v0.status();
  EXPECT_EQ(v0->model_spec, "checkpoint:model");

  // A contributor started without --model is told what to do, and uploads nothing.
  {
    const std::string data = dir_.path() + "/data-mlp";
    std::filesystem::create_directories(data);
    WriteBlobsCsv(data + "/train.csv", 4, 2, 20, 1);
    auto wrong =
        RunCommand({ClientBinary(), "--server=" + server->address(), "--name=mlp",
                    "--state_dir=" + dir_.path() + "/state-mlp", "--train=" + data + "/train.csv",
                    "--test=" + data + "/train.csv", "--max_rounds=1"});
    EXPECT_EQ(wrong.exit_code, 1);
    EXPECT_THAT(wrong.output, HasSubstr("--model=DIR"));
    EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/state-mlp/base.safetensors"))
        << "nothing should be pulled for a model the client cannot train";
    auto probe = RunCommand({ClientBinary(), "--probe", "--server=" + server->address(),
                             "--train=" + data + "/train.csv", "--test=" + data + "/train.csv"});
    EXPECT_EQ(probe.exit_code, 1);
    EXPECT_THAT(probe.output, HasSubstr("--model=DIR"));
  }

  // Two contributors on different tasks: a classifier (two labels) and a regressor.
  auto alice_args = ClientArgs(*server, "alice", false, 1);
  auto bob_args = ClientArgs(*server, "bob", true, 2);
  alice_args.push_back("--early_stopping_patience=3");
  alice_args.push_back("--max_rounds=2");
  bob_args.push_back("--max_rounds=2");
  auto alice = Process::Start(alice_args, dir_.path() + "/client-alice.log");
  auto bob = Process::Start(bob_args, dir_.path() + "/client-bob.log");
  for (auto* p : {alice.get(), bob.get()}) {
    auto code = p->Wait(seconds(240));
    ASSERT_TRUE(code.has_value()) << "a contributor did not finish; logs in " << dir_.path();
    EXPECT_EQ(*code, 0) << "a contributor failed; logs in " << dir_.path();
  }

  EXPECT_EQ(server->Status().base_version(), 2u);
  auto rounds = server->Rounds();
  ASSERT_GE(rounds.size(), 2u);
  for (int r = 0; r < 2; ++r) {
    ASSERT_EQ(rounds[r].contributions_size(), 2);
    for (const auto& c : rounds[r].contributions()) {
      const auto& m = c.metrics();
      if (c.contributor() == "alice") {
        for (const char* k : {"accuracy_before", "accuracy_after", "macro_f1_before",
                              "macro_f1_after", "dev_best"}) {
          EXPECT_TRUE(m.contains(k)) << k;
        }
      } else {
        EXPECT_TRUE(m.contains("pearson_after"));
        EXPECT_FALSE(m.contains("accuracy_after"));
      }
      EXPECT_GT(m.at("steps"), 0);
      EXPECT_GT(m.at("steps_per_second"), 0);
      EXPECT_LT(m.at("train_loss_last"), m.at("train_loss_first")) << c.contributor();
    }
  }
  // The classifier learned its task in round 1 (chance is 0.5).
  for (const auto& c : rounds[0].contributions()) {
    if (c.contributor() == "alice") {
      EXPECT_GE(c.metrics().at("accuracy_after"), 0.75);
    }
  }

  // Each base is the mean of what the two uploaded, tensor by tensor; uploads carry the
  // base's manifest exactly (no head, no pooler), and round 2 trained on base v1.
  for (uint64_t round : {1u, 2u}) {
    auto a = ReadSavedContribution(dir_.path() + "/state-alice", round);
    auto b = ReadSavedContribution(dir_.path() + "/state-bob", round);
    EXPECT_EQ(a.header.base_version(), round - 1);
    EXPECT_EQ(b.header.base_version(), round - 1);
    auto fused = rpc::PullBase(server->channel(), round);
    ASSERT_TRUE(fused.ok()) << fused.status();
    ASSERT_EQ(a.tensors.size(), v0->tensors.size());
    ASSERT_EQ(fused->tensors.size(), v0->tensors.size());
    for (size_t t = 0; t < fused->tensors.size(); ++t) {
      const std::string& name = fused->tensors[t].spec.name();
      EXPECT_TRUE(name.rfind("embeddings.", 0) == 0 || name.rfind("encoder.", 0) == 0) << name;
      EXPECT_EQ(a.tensors[t].spec.name(), name);
      std::vector<float> f = Floats(fused->tensors[t]), x = Floats(a.tensors[t]),
                         y = Floats(b.tensors[t]);
      for (size_t i = 0; i < f.size(); ++i) {
        const double mean = 0.5 * (static_cast<double>(x[i]) + y[i]);
        ASSERT_NEAR(f[i], mean, 1e-6 * std::max(1.0, std::fabs(mean))) << name << "[" << i << "]";
      }
    }
    if (round == 2) {
      // Round 2 started from v1: v1 and v2 differ, and v2 is not a mean of v0-based work.
      auto v1 = rpc::PullBase(server->channel(), 1);
      ASSERT_TRUE(v1.ok());
      EXPECT_NE(v1->sha256, fused->sha256);
    }
  }

  // Heads stay local, sized for each task.
  auto alice_head = ReadSafetensors(dir_.path() + "/state-alice/head.safetensors");
  auto bob_head = ReadSafetensors(dir_.path() + "/state-bob/head.safetensors");
  ASSERT_TRUE(alice_head.ok() && bob_head.ok());
  EXPECT_EQ((*alice_head)[0].spec.name(), "classifier.weight");
  EXPECT_EQ((*alice_head)[0].spec.shape(0), 2);
  EXPECT_EQ((*bob_head)[0].spec.shape(0), 1);

  // `coldfusectl round 1` shows the metrics.
  auto shown = Ctl(*server, {"round", "1"});
  ASSERT_EQ(shown.exit_code, 0) << shown.output;
  EXPECT_THAT(shown.output, HasSubstr("macro_f1_after"));
  EXPECT_THAT(shown.output, HasSubstr("pearson_after"));

  // A probe scores the fused encoder on a few examples, uploading nothing.
  auto probe_args = ClientArgs(*server, "probe", false, 3);
  probe_args.push_back("--probe");
  probe_args.push_back("--probe_examples=32");
  auto probe = RunCommand(probe_args, seconds(120));
  ASSERT_EQ(probe.exit_code, 0) << probe.output;
  EXPECT_THAT(probe.output, HasSubstr("\"base_version\": 2, \"train_examples\": 32"));
  EXPECT_THAT(probe.output, HasSubstr("\"macro_f1\": "));
  EXPECT_EQ(server->Rounds().at(2).contributions_size(), 0);

  // The kept head remembers its labels: alice restarted on data labelled differently (same
  // count) is stopped instead of reusing the head with the wrong meaning.
  {
    std::ifstream labels(dir_.path() + "/state-alice/head.labels");
    std::stringstream text;
    text << labels.rdbuf();
    EXPECT_EQ(text.str(), "neg\npos\n");
  }
  const std::string relabelled = dir_.path() + "/data-alice/relabelled.csv";
  std::ofstream(relabelled) << "text,label\ngood day,good\nbad day,bad\n";
  auto again_args = ClientArgs(*server, "alice", false, 1);
  for (auto& a : again_args) {
    if (a.rfind("--train=", 0) == 0 || a.rfind("--test=", 0) == 0 || a.rfind("--dev=", 0) == 0) {
      a = a.substr(0, a.find('=') + 1) + relabelled;
    }
  }
  again_args.push_back("--max_rounds=1");
  auto again = RunCommand(again_args, seconds(120));
  EXPECT_EQ(again.exit_code, 1);
  EXPECT_THAT(again.output,
              HasSubstr("was trained for the labels [neg, pos] but this data has [bad, good]"));
  EXPECT_EQ(server->Rounds().at(2).contributions_size(), 0);
}

TEST_F(TextEndToEndTest, BadTextDataIsNamedBeforeAnythingIsSent) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=1"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(Ctl(*server, {"init", "--from=" + model_dir_}).exit_code, 0);
  auto args = ClientArgs(*server, "carol", false, 4);
  args.push_back("--max_rounds=1");
  // A test file with a label the train file does not have, on its third line.
  std::ofstream(dir_.path() + "/data-carol/test.csv") << "text,label\ngood day,pos\nthe film,meh\n";
  auto run = RunCommand(args, seconds(60));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.output, HasSubstr("data-carol/test.csv"));
  EXPECT_THAT(run.output, HasSubstr("line 3"));
  EXPECT_THAT(run.output, HasSubstr("meh"));
  // A model folder without a tokenizer.
  std::filesystem::remove(model_dir_ + "/vocab.txt");
  args = ClientArgs(*server, "dave", false, 5);
  run = RunCommand(args, seconds(60));
  EXPECT_EQ(run.exit_code, 1);
  EXPECT_THAT(run.output, HasSubstr("has no tokenizer"));
  EXPECT_EQ(server->Rounds().at(0).contributions_size(), 0);
}

// A daemon asked to stop in the middle of a long round stops at the next step (not after
// the round), cleanly, and sends nothing; started again, it trains the round anew.
// SIGTERM in the middle of a round's training stops the daemon at once, saving the run;
// the next start continues it from the saved step instead of starting over, and the
// contribution it sends is byte for byte the one of a contributor with the same data and
// seed that was never stopped.
TEST_F(TextEndToEndTest, SigtermMidTrainingIsContinuedByTheNextStartToTheSameWeights) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=2", "--round_timeout_s=0"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(Ctl(*server, {"init", "--from=" + model_dir_}).exit_code, 0);
  auto with = [](std::vector<std::string> args, std::vector<std::string> more) {
    args.insert(args.end(), more.begin(), more.end());
    return args;
  };
  const std::vector<std::string> plan = {"--steps=400", "--max_rounds=1", "--save_training_s=0"};
  const auto erin = with(ClientArgs(*server, "erin", false, 6), plan);
  const auto frank = with(ClientArgs(*server, "frank", false, 6), plan);  // the same data

  const std::string log = dir_.path() + "/client-erin.log";
  auto client = Process::Start(erin, log);
  ASSERT_TRUE(WaitForTrainingProgress(log)) << "no training progress in " << log;
  client->Signal(SIGTERM);
  auto code = client->Wait(seconds(30));
  ASSERT_TRUE(code.has_value()) << "SIGTERM did not stop training";
  EXPECT_EQ(*code, 0);
  auto text = ReadFileToString(log);
  ASSERT_TRUE(text.ok());
  std::smatch m;
  const std::regex stopped("training stopped at step ([0-9]+) of 400; saved in (\\S+)");
  ASSERT_TRUE(std::regex_search(*text, m, stopped)) << *text;
  const std::string at = m[1];
  std::cout << "stopped at step " << at << " of 400\n";
  EXPECT_GT(std::stoi(at), 0);
  EXPECT_EQ(m[2].str(), dir_.path() + "/state-erin/training.safetensors");
  EXPECT_TRUE(std::filesystem::exists(dir_.path() + "/state-erin/training.safetensors"));
  EXPECT_EQ(server->Rounds().at(0).contributions_size(), 0);
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/state-erin/pending.header"));

  // Frank trains the same 400 steps without a stop; erin's next start continues hers.
  auto uninterrupted = Process::Start(frank, dir_.path() + "/client-frank.log");
  CommandResult again = RunCommand(erin, seconds(300));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output,
              HasSubstr("continuing the training of base v0 saved at step " + at + " of 400"));
  EXPECT_THAT(again.output, HasSubstr("400 steps on cpu"));
  EXPECT_THAT(again.output, HasSubstr("(resumed at step " + at + ")"));
  auto frank_code = uninterrupted->Wait(seconds(300));
  ASSERT_TRUE(frank_code.has_value());
  ASSERT_EQ(*frank_code, 0);
  EXPECT_FALSE(std::filesystem::exists(dir_.path() + "/state-erin/training.safetensors"))
      << "a finished run's saved state is removed";

  ASSERT_TRUE(server->WaitForBase(1, seconds(60)));
  auto stored_erin = ReadSafetensors(dir_.path() + "/state-erin/contrib-r1.safetensors");
  auto stored_frank = ReadSafetensors(dir_.path() + "/state-frank/contrib-r1.safetensors");
  ASSERT_TRUE(stored_erin.ok()) << stored_erin.status();
  ASSERT_TRUE(stored_frank.ok()) << stored_frank.status();
  ASSERT_EQ(stored_erin->size(), stored_frank->size());
  for (size_t i = 0; i < stored_erin->size(); ++i) {
    EXPECT_EQ((*stored_erin)[i].data, (*stored_frank)[i].data) << (*stored_erin)[i].spec.name();
  }
  auto head_erin = ReadSafetensors(dir_.path() + "/state-erin/head.safetensors");
  auto head_frank = ReadSafetensors(dir_.path() + "/state-frank/head.safetensors");
  ASSERT_TRUE(head_erin.ok() && head_frank.ok());
  EXPECT_EQ((*head_erin)[0].data, (*head_frank)[0].data);
}

// A run stopped while others kept contributing continues on its own (now older) base
// after a restart, as long as the server still takes contributions trained from it, and
// is fused as a stale contribution instead of being thrown away.
TEST_F(TextEndToEndTest, AStoppedRunContinuesOnItsOwnBaseAfterTheServerMovedOn) {
  auto server = ServerProcess::Start(dir_.path() + "/db", dir_.path() + "/server.log",
                                     {"--min_contributions=1", "--round_timeout_s=0"});
  ASSERT_NE(server, nullptr);
  ASSERT_EQ(Ctl(*server, {"init", "--from=" + model_dir_}).exit_code, 0);
  auto erin = ClientArgs(*server, "erin", false, 6);
  for (const char* a : {"--steps=400", "--max_rounds=1", "--save_training_s=0"}) erin.push_back(a);
  const std::string log = dir_.path() + "/client-erin.log";
  auto client = Process::Start(erin, log);
  ASSERT_TRUE(WaitForTrainingProgress(log)) << "no training progress in " << log;
  client->Signal(SIGTERM);
  ASSERT_EQ(client->Wait(seconds(30)).value_or(-1), 0);
  ASSERT_TRUE(std::filesystem::exists(dir_.path() + "/state-erin/training.safetensors"));

  // Meanwhile round 1 closes with frank's contribution: the server's base is v1.
  auto frank = ClientArgs(*server, "frank", false, 7);
  for (const char* a : {"--steps=2", "--max_rounds=1"}) frank.push_back(a);
  ASSERT_EQ(RunCommand(frank, seconds(120)).exit_code, 0);
  ASSERT_TRUE(server->WaitForBase(1, seconds(60)));

  CommandResult again = RunCommand(erin, seconds(300));
  ASSERT_EQ(again.exit_code, 0) << again.output;
  EXPECT_THAT(again.output, HasSubstr("continuing the training of base v0 saved at step"));
  EXPECT_THAT(again.output, HasSubstr("the server now has v1"));
  ASSERT_TRUE(server->WaitForBase(2, seconds(60)));
  const v1::RoundInfo second = server->Rounds().at(1);
  ASSERT_EQ(second.contributions_size(), 1);
  EXPECT_EQ(second.contributions(0).contributor(), "erin");
  EXPECT_EQ(second.contributions(0).trained_from_base(), 0u);
  EXPECT_EQ(second.contributions(0).staleness(), 1u);
}

}  // namespace
}  // namespace coldfuse::testing
