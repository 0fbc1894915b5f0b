// coldfusectl: the operator's and dashboards' CLI over the coldfuse gRPC API.
#include <google/protobuf/util/json_util.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/flags/flag.h"
#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/time/time.h"
#include "coldfuse/v1/coldfuse.grpc.pb.h"
#include "common/model_spec.h"
#include "common/posix_file.h"
#include "common/printable.h"
#include "common/program.h"
#include "common/rpc/client.h"
#include "common/send_encoding.h"
#include "common/sha256.h"
#include "common/status_macros.h"
#include "ctl/backup_command.h"
#include "ctl/checkpoint_commands.h"

ABSL_FLAG(std::string, server, "127.0.0.1:7878", "coldfused address (host:port)");
ABSL_FLAG(std::string, format, "table", "Output of status/rounds/round: table, json or tsv");
ABSL_FLAG(bool, json, false, "Same as --format=json");
ABSL_FLAG(std::string, spec, "mlp:64,128,64", "init: model spec of base v0");
ABSL_FLAG(uint64_t, seed, 1, "init: seed of base v0's weights");
ABSL_FLAG(std::string, fusion, "mean",
          "init: fusion method: mean (plain average), weighted (average weighted by "
          "training examples), median (coordinate-wise median), trimmed (coordinate-wise "
          "mean without the extremes, --trim_fraction), clipped (mean of deltas clipped "
          "to --clip_factor x their median norm), or a merging method on the updates: "
          "task_arithmetic (--merge_scale x their sum), ties (trim to --ties_density, elect "
          "signs, mean of the agreeing values) or dare (drop --dare_drop_rate of each "
          "update's values at random, rescale, sum)");
ABSL_FLAG(int64_t, round, -1, "close-round: close only if this round is the open one");
ABSL_FLAG(int64_t, base, -1,
          "wait: wait until the current base version is at least this; rollback, pin, "
          "unpin: the base version");
ABSL_FLAG(double, retry_for_s, 120,
          "Keep retrying while the server is unreachable or restarting for this long "
          "(push, pull, export and every read-only command)");
ABSL_FLAG(double, timeout_s, 30,
          "Deadline of each call (wait: of the whole wait; backup: the longest silence), "
          "seconds");
ABSL_FLAG(std::string, tls_ca, "",
          "PEM CA that signed the server certificate (empty: plaintext, "
          "for a server run --insecure)");
ABSL_FLAG(std::string, tls_cert, "", "PEM client certificate, for a server with mutual TLS");
ABSL_FLAG(std::string, tls_key, "", "PEM key of --tls_cert");
ABSL_FLAG(std::string, tls_server_name, "",
          "The name the server's certificate carries, when --server uses another one (an "
          "IP address, a tunnel)");
ABSL_FLAG(std::string, token_file, "",
          "File holding this caller's token (default: the COLDFUSE_TOKEN variable)");
ABSL_FLAG(double, merge_scale, 0,
          "init --fusion=task_arithmetic|ties|dare: scale of the merged update (0: 1.0)");
ABSL_FLAG(double, ties_density, 0,
          "init --fusion=ties: fraction of each update's values kept (0: 0.2)");
ABSL_FLAG(double, dare_drop_rate, 0, "init --fusion=dare: probability a value is dropped (0: 0.5)");
ABSL_FLAG(uint64_t, dare_seed, 0, "init --fusion=dare: seed of the drop masks");
ABSL_FLAG(double, trim_fraction, 0, "init --fusion=trimmed: fraction trimmed at each end (0: 0.2)");
ABSL_FLAG(double, clip_factor, 0, "init --fusion=clipped: clip at this x median norm (0: 1.0)");
ABSL_FLAG(bool, accumulate_f64, false, "init: fuse means in F64 instead of F32");
ABSL_FLAG(std::string, outer_optimizer, "",
          "init: how the round's fused update moves the base: plain (the fused result, "
          "the default), sgd (momentum, FedAvgM), nesterov (DiLoCo), adam (FedAdam) or yogi "
          "(FedYogi); see docs/protocol.md, Outer optimizers");
ABSL_FLAG(std::string, outer_lr, "",
          "init --outer_optimizer: learning rate (empty: sgd 1, nesterov 0.7, adam/yogi 0.1)");
ABSL_FLAG(std::string, outer_momentum, "",
          "init --outer_optimizer=sgd|nesterov: momentum in [0, 1) (empty: 0.9)");
ABSL_FLAG(std::string, outer_beta1, "", "init --outer_optimizer=adam|yogi: beta1 (empty: 0.9)");
ABSL_FLAG(std::string, outer_beta2, "", "init --outer_optimizer=adam|yogi: beta2 (empty: 0.99)");
ABSL_FLAG(std::string, outer_tau, "",
          "init --outer_optimizer=adam|yogi: tau, added to the root of the second moment "
          "(empty: 0.001)");
ABSL_FLAG(bool, outer_bias_correction, false,
          "init --outer_optimizer=adam|yogi: Adam's bias correction of the step size");
ABSL_FLAG(std::string, name, "",
          "token create/revoke: the token's name; push: the contributor (servers with tokens "
          "use the token's name)");
ABSL_FLAG(std::string, role, "contributor",
          "token create: contributor, viewer, evaluator (pulls bases, records scores) or "
          "operator");
ABSL_FLAG(int64_t, ttl_s, 0, "token create: expire after this many seconds (0: never)");
ABSL_FLAG(std::string, out, "",
          "token create: write the secret to this file (mode 0600) "
          "instead of printing it; export: the output folder; backup: the new folder");
ABSL_FLAG(std::string, reason, "", "rollback, pin: why, for the audit log");
ABSL_FLAG(bool, dry_run, false, "prune: only say what would be removed");
ABSL_FLAG(uint64_t, after, 0, "audit: records after this sequence number");
ABSL_FLAG(uint32_t, limit, 100, "audit: at most this many records");
ABSL_FLAG(std::string, from, "",
          "init: seed base v0 from a safetensors checkpoint (file, folder or index.json)");
ABSL_FLAG(std::string, shared_prefix, "",
          "init --from: share only tensors whose names start with one of these "
          "(comma-separated); default: every float tensor");
ABSL_FLAG(std::string, checkpoint, "", "push: the fine-tuned safetensors checkpoint");
ABSL_FLAG(uint64_t, num_examples, 0, "push: training examples behind the checkpoint");
ABSL_FLAG(std::string, task, "",
          "push: task name reported with the contribution; evals: only this task's scores");
ABSL_FLAG(std::string, encoding, "full",
          "push: full (the values), delta (minus the base) or delta_int8 (minus the base, in "
          "8 bits with one scale per --int8_block_size values: about a quarter of F32)");
ABSL_FLAG(uint32_t, int8_block_size, 64, "push --encoding=delta_int8: values per scale (8..65536)");
ABSL_FLAG(std::string, metrics, "",
          "push: scores reported with the contribution, NAME=VALUE,... (e.g. "
          "accuracy_before=0.61,accuracy_after=0.83; shown by `round N` and the dashboard)");
ABSL_FLAG(std::string, send_dtype, "",
          "push: send as f32, f16, bf16 or f64 (default: the checkpoint's dtype)");
ABSL_FLAG(int64_t, version, -1,
          "pull/export: base version (-1: current); push: the base version the checkpoint "
          "was fine-tuned from (-1: the current base; an older one is fused as a stale "
          "contribution)");
ABSL_FLAG(uint64_t, shard_bytes, uint64_t{5} << 30,
          "export: split into shards above this many bytes (transformers' layout)");

namespace coldfuse::ctl {
namespace {

// "accuracy_after=0.83,loss=0.4" -> {accuracy_after: 0.83, loss: 0.4}.
absl::StatusOr<std::map<std::string, double>> ParseMetrics(absl::string_view text) {
  std::map<std::string, double> out;
  for (absl::string_view item : absl::StrSplit(text, ',', absl::SkipWhitespace())) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(item, absl::MaxSplits('=', 1));
    const std::string name(absl::StripAsciiWhitespace(kv.first));
    double value;
    if (name.empty() || !absl::SimpleAtod(absl::StripAsciiWhitespace(kv.second), &value) ||
        !std::isfinite(value)) {
      return absl::InvalidArgumentError(absl::StrCat(
          "--metrics: '", item, "' is not NAME=NUMBER (e.g. --metrics=accuracy_after=0.83)"));
    }
    out[name] = value;
  }
  return out;
}

}  // namespace
namespace {

constexpr char kUsage[] = R"(coldfusectl [--server=HOST:PORT] COMMAND [flags]

Commands:
  init [--spec=mlp:64,128,64] [--seed=1]
       [--fusion=mean|weighted|median|trimmed|clipped|task_arithmetic|ties|dare]
       [--trim_fraction=F] [--clip_factor=C] [--merge_scale=L] [--ties_density=D]
       [--dare_drop_rate=P] [--dare_seed=S]
       [--outer_optimizer=plain|sgd|nesterov|adam|yogi] [--outer_lr=L] [--outer_momentum=M]
       [--outer_beta1=B1] [--outer_beta2=B2] [--outer_tau=T] [--outer_bias_correction]
                      store base v0 and open round 1
  init --from=CHECKPOINT [--shared_prefix=P1,P2] [--fusion=...] [--outer_optimizer=...]
                      base v0 from a safetensors checkpoint (a file, a folder, or a
                      sharded model.safetensors.index.json); only shared tensors are sent
  push --checkpoint=PATH --num_examples=N [--name=ME] [--task=T]
       [--encoding=full|delta|delta_int8] [--int8_block_size=64]
       [--send_dtype=bf16|f16|f32|f64] [--version=FROM]
       [--metrics=NAME=VALUE,...]
                      contribute a checkpoint fine-tuned elsewhere (resumable), from
                      base FROM (default: the current base)
  pull [--version=N]  download a base, verify its checksum, print throughput
  export [--version=N] --out=DIR [--shard_bytes=5368709120]
                      write a base as safetensors (loads with safetensors/transformers)
  status [--json]     the server's state: model, base, open round, policy
  rounds [--json]     every round: base, state, contributions, result
  round N [--json|--format=tsv]
                      one round's contributions and their metrics
  evals [--task=T] [--json|--format=tsv]
                      stored evaluation scores of each base (coldfuse-client --probe
                      records them; k: the examples the probe trained on)
  close-round [--round=N]
                      fuse the open round now (needs one contribution)
  wait --base=N [--timeout_s=S]
                      block until base vN exists (uses WatchStatus)
  token create --name=NAME [--role=contributor|viewer|evaluator|operator] [--ttl_s=S]
               [--out=FILE]
  token revoke --name=NAME
  token list          tokens (names, roles, expiry, revoked); never their secrets
  rollback --base=N [--reason=TEXT]
                      mark every base after vN bad and reopen a round from vN
  audit [--after=SEQ] [--limit=100] [--json]
                      the append-only log of state changes
  prune [--dry_run] [--json]
                      apply the server's retention now (--keep_bases,
                      --keep_contribution_rounds) and give the space back on disk
  pin --base=N [--reason=TEXT]
                      keep base vN whatever retention says
  unpin --base=N      let retention remove base vN again
  backup --out=DIR    a consistent copy of the server's data folder, taken while it
                      serves, into the new folder DIR (a data folder coldfused opens)
Connection: --tls_ca=ca.crt [--tls_cert=me.crt --tls_key=me.key] --token_file=FILE
(or COLDFUSE_TOKEN); no --tls_ca means plaintext, for a server run --insecure.
Exit status: 0 on success; 1 with the server's error on stderr otherwise.
coldfusectl --help lists every flag; coldfusectl --version (alone) says which build this is.)";

enum class Format { kTable, kJson, kTsv };

std::chrono::milliseconds Deadline() {
  return std::chrono::milliseconds(static_cast<int64_t>(absl::GetFlag(FLAGS_timeout_s) * 1000));
}

void SetDeadline(grpc::ClientContext* ctx) {
  ctx->set_deadline(std::chrono::system_clock::now() + Deadline());
}

rpc::RetryOptions Retry() {
  rpc::RetryOptions r;
  const double s = absl::GetFlag(FLAGS_retry_for_s);
  r.ride_out =
      std::chrono::milliseconds(static_cast<int64_t>(std::isfinite(s) && s > 0 ? s * 1000 : 0));
  return r;
}

// A read-only call, retried while the server is unreachable (rpc::RetryIdempotent).
absl::Status Read(const std::shared_ptr<grpc::Channel>& channel,
                  const std::function<grpc::Status(grpc::ClientContext*)>& call,
                  absl::string_view name) {
  return rpc::RetryIdempotent(channel, {Deadline()}, Retry(), [&](grpc::ClientContext* ctx) {
    return rpc::FromGrpc(call(ctx), name);
  });
}

absl::StatusOr<Format> GetFormat() {
  if (absl::GetFlag(FLAGS_json)) return Format::kJson;
  std::string f = absl::GetFlag(FLAGS_format);
  if (f == "table") return Format::kTable;
  if (f == "json") return Format::kJson;
  if (f == "tsv") return Format::kTsv;
  return absl::InvalidArgumentError(
      absl::StrCat("--format=", f, " is not one of table, json, tsv"));
}

absl::Status PrintJson(const google::protobuf::Message& m) {
  google::protobuf::util::JsonPrintOptions options;
  options.add_whitespace = true;
  options.always_print_primitive_fields = true;
  options.preserve_proto_field_names = true;
  std::string out;
  auto st = google::protobuf::util::MessageToJsonString(m, &out, options);
  if (!st.ok()) return absl::InternalError(std::string(st.message()));
  std::cout << out;
  return absl::OkStatus();
}

std::string Ago(int64_t now_ms, int64_t then_ms) {
  return absl::StrFormat("%.0fs ago", (now_ms - then_ms) / 1000.0);
}

std::string StateName(v1::RoundState s) { return s == v1::OPEN ? "open" : "closed"; }

// Columns a person reads: printed in UTF-8 characters, not bytes (a name may be "Zoë").
size_t DisplayWidth(absl::string_view text) {
  return std::count_if(text.begin(), text.end(),
                       [](char c) { return (static_cast<unsigned char>(c) & 0xC0) != 0x80; });
}

// Rows padded into aligned columns `gap` spaces apart, each at least `min_width[i]` wide
// (a layout scripts may have copied stays as it was while the cells fit); an empty cell
// shows as "-", so every column keeps its place. A row may have more cells than the
// others (a trailing note).
void PrintTable(std::vector<std::vector<std::string>> rows, std::vector<size_t> min_width = {},
                size_t gap = 2) {
  std::vector<size_t> width = std::move(min_width);
  for (auto& cells : rows) {
    for (size_t i = 0; i < cells.size(); ++i) {
      if (cells[i].empty()) cells[i].push_back('-');  // not = "-": GCC 12 -Wrestrict bug
      if (i == width.size()) width.push_back(0);
      width[i] = std::max(width[i], DisplayWidth(cells[i]));
    }
  }
  for (const auto& cells : rows) {
    std::string line;
    for (size_t i = 0; i < cells.size(); ++i) {
      line += cells[i];
      if (i + 1 < cells.size()) line.append(width[i] - DisplayWidth(cells[i]) + gap, ' ');
    }
    std::cout << line << "\n";
  }
}

// "2026-12-01T10:00:00Z" (UTC), or "never" for 0.
std::string UtcTime(int64_t unix_ms) {
  if (unix_ms == 0) return "never";
  return absl::FormatTime("%Y-%m-%dT%H:%M:%SZ", absl::FromUnixMillis(unix_ms), absl::UTCTimeZone());
}

// The --outer_* flags into the header; an empty option flag leaves the server's default.
absl::Status SetOuterOptimizer(v1::InitHeader* header) {
  const std::string name = absl::GetFlag(FLAGS_outer_optimizer);
  const std::map<std::string, v1::OuterOptimizer> kinds = {
      {"", v1::OUTER_OPTIMIZER_UNSPECIFIED}, {"plain", v1::OUTER_PLAIN}, {"sgd", v1::OUTER_SGD},
      {"nesterov", v1::OUTER_NESTEROV},      {"adam", v1::OUTER_ADAM},   {"yogi", v1::OUTER_YOGI}};
  auto kind = kinds.find(name);
  if (kind == kinds.end()) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--outer_optimizer=", name, " is not one of plain, sgd, nesterov, adam, yogi"));
  }
  header->set_outer_optimizer(kind->second);
  v1::OuterOptimizerOptions* o = header->mutable_outer_optimizer_options();
  const std::pair<const char*, std::pair<std::string, void (v1::OuterOptimizerOptions::*)(double)>>
      options[] = {
          {"outer_lr",
           {absl::GetFlag(FLAGS_outer_lr), &v1::OuterOptimizerOptions::set_learning_rate}},
          {"outer_momentum",
           {absl::GetFlag(FLAGS_outer_momentum), &v1::OuterOptimizerOptions::set_momentum}},
          {"outer_beta1",
           {absl::GetFlag(FLAGS_outer_beta1), &v1::OuterOptimizerOptions::set_beta1}},
          {"outer_beta2",
           {absl::GetFlag(FLAGS_outer_beta2), &v1::OuterOptimizerOptions::set_beta2}},
          {"outer_tau", {absl::GetFlag(FLAGS_outer_tau), &v1::OuterOptimizerOptions::set_tau}},
      };
  for (const auto& [flag, value_and_setter] : options) {
    const auto& [text, setter] = value_and_setter;
    if (text.empty()) continue;
    double value = 0;
    if (!absl::SimpleAtod(text, &value)) {
      return absl::InvalidArgumentError(absl::StrCat("--", flag, "=", text, " is not a number"));
    }
    (o->*setter)(value);
  }
  if (absl::GetFlag(FLAGS_outer_bias_correction)) o->set_bias_correction(true);
  if (o->ByteSizeLong() == 0) header->clear_outer_optimizer_options();
  return absl::OkStatus();
}

// "" for a plain model; otherwise ", outer NESTEROV (lr 0.7, momentum 0.9)".
std::string OuterOptimizerSummary(const v1::ModelInfo& m) {
  if (m.outer_optimizer() == v1::OUTER_OPTIMIZER_UNSPECIFIED ||
      m.outer_optimizer() == v1::OUTER_PLAIN) {
    return "";
  }
  const v1::OuterOptimizerOptions& o = m.outer_optimizer_options();
  std::vector<std::string> parts;
  if (o.has_learning_rate()) parts.push_back(absl::StrCat("lr ", o.learning_rate()));
  if (o.has_momentum()) parts.push_back(absl::StrCat("momentum ", o.momentum()));
  if (o.has_beta1()) parts.push_back(absl::StrCat("beta1 ", o.beta1()));
  if (o.has_beta2()) parts.push_back(absl::StrCat("beta2 ", o.beta2()));
  if (o.has_tau()) parts.push_back(absl::StrCat("tau ", o.tau()));
  if (o.bias_correction()) parts.push_back("bias-corrected");
  const std::string& name = v1::OuterOptimizer_Name(m.outer_optimizer());
  return absl::StrCat(", outer ", absl::StripPrefix(name, "OUTER_"), " (",
                      absl::StrJoin(parts, ", "), ")");
}

absl::Status Init(const std::shared_ptr<grpc::Channel>& channel) {
  v1::InitHeader header;
  std::string fusion = absl::GetFlag(FLAGS_fusion);
  const std::map<std::string, v1::FusionMethod> methods = {{"mean", v1::MEAN},
                                                           {"weighted", v1::EXAMPLE_WEIGHTED_MEAN},
                                                           {"median", v1::COORDINATE_MEDIAN},
                                                           {"trimmed", v1::TRIMMED_MEAN},
                                                           {"clipped", v1::NORM_CLIPPED_MEAN},
                                                           {"task_arithmetic", v1::TASK_ARITHMETIC},
                                                           {"ties", v1::TIES},
                                                           {"dare", v1::DARE}};
  auto method = methods.find(fusion);
  if (method == methods.end()) {
    return absl::InvalidArgumentError(
        absl::StrCat("--fusion=", fusion,
                     " is not one of mean, weighted, median, trimmed, clipped, task_arithmetic, "
                     "ties, dare"));
  }
  header.set_fusion_method(method->second);
  header.mutable_fusion_options()->set_trim_fraction(absl::GetFlag(FLAGS_trim_fraction));
  header.mutable_fusion_options()->set_clip_factor(absl::GetFlag(FLAGS_clip_factor));
  header.mutable_fusion_options()->set_accumulate_f64(absl::GetFlag(FLAGS_accumulate_f64));
  header.mutable_fusion_options()->set_merge_scale(absl::GetFlag(FLAGS_merge_scale));
  header.mutable_fusion_options()->set_ties_density(absl::GetFlag(FLAGS_ties_density));
  header.mutable_fusion_options()->set_dare_drop_rate(absl::GetFlag(FLAGS_dare_drop_rate));
  header.mutable_fusion_options()->set_dare_seed(absl::GetFlag(FLAGS_dare_seed));
  RETURN_IF_ERROR(SetOuterOptimizer(&header));
  if (!absl::GetFlag(FLAGS_from).empty()) {
    InitFromOptions o;
    o.path = absl::GetFlag(FLAGS_from);
    for (absl::string_view p :
         absl::StrSplit(absl::GetFlag(FLAGS_shared_prefix), ',', absl::SkipEmpty())) {
      o.shared_prefixes.emplace_back(p);
    }
    o.fusion_method = header.fusion_method();
    o.fusion_options = header.fusion_options();
    o.outer_optimizer = header.outer_optimizer();
    o.outer_optimizer_options = header.outer_optimizer_options();
    return InitFrom(channel, o, Deadline());
  }
  ASSIGN_OR_RETURN(MlpSpec spec, ParseModelSpec(absl::GetFlag(FLAGS_spec)));
  header.set_model_spec(FormatModelSpec(spec));
  *header.mutable_manifest() = MlpManifest(spec);
  std::vector<HostTensor> tensors = InitMlpBody(spec, absl::GetFlag(FLAGS_seed));
  ASSIGN_OR_RETURN(v1::InitModelResponse r,
                   rpc::InitModel(channel, header, tensors, {.deadline = Deadline()}));
  std::cout << "initialised " << header.model_spec() << ": base v" << r.base_version()
            << " (sha256 " << ToHex(r.sha256()) << "), round " << r.round() << " open\n";
  return absl::OkStatus();
}

std::string HumanBytes(uint64_t b) {
  if (b >= (uint64_t{1} << 30)) return absl::StrFormat("%.2f GiB", b / 1073741824.0);
  if (b >= (uint64_t{1} << 20)) return absl::StrFormat("%.1f MiB", b / 1048576.0);
  return absl::StrFormat("%d KiB", (b + 1023) / 1024);
}

// "v1-v4, v7": a compact list of versions.
std::string VersionRanges(const google::protobuf::RepeatedField<uint64_t>& v) {
  std::vector<std::string> parts;
  for (int i = 0; i < v.size();) {
    int j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat("v", v[i]) : absl::StrCat("v", v[i], "-v", v[j]));
    i = j + 1;
  }
  return parts.empty() ? "none" : absl::StrJoin(parts, ", ");
}

std::string StorageSummary(const v1::StorageStatus& st) {
  std::string keep =
      st.keep_bases() == 0 ? std::string("all bases") : absl::StrCat(st.keep_bases(), " bases");
  std::string rounds =
      st.keep_contribution_rounds() < 0
          ? std::string("all rounds' contributions")
          : absl::StrCat("contributions of ", st.keep_contribution_rounds(), " closed rounds");
  return absl::StrCat("bases stored ", VersionRanges(st.stored_base_versions()), "; pinned ",
                      VersionRanges(st.pinned_base_versions()), "; retention keeps ", keep, ", ",
                      rounds);
}

absl::Status Status(const std::shared_ptr<grpc::Channel>& channel, Format format) {
  auto stub = v1::Status::NewStub(channel);
  v1::ServerStatus s;
  RETURN_IF_ERROR(Read(
      channel, [&](grpc::ClientContext* ctx) { return stub->GetStatus(ctx, {}, &s); },
      "GetStatus"));
  if (format == Format::kJson) return PrintJson(s);
  if (!s.initialized()) {
    std::cout << "not initialised: run `coldfusectl init`\n";
    return absl::OkStatus();
  }
  const auto& round = s.open_round();
  std::vector<std::string> names;
  for (const auto& c : round.contributions()) names.push_back(Printable(c.contributor()));
  // The server closes a round on time only if it has a timeout (--round_timeout_s=0: never).
  const std::string deadline =
      s.round_timeout_ms() > 0
          ? absl::StrFormat(", or %.0f s after opening", s.round_timeout_ms() / 1000.0)
          : std::string("; no deadline (--round_timeout_s=0)");
  std::string closes;
  if (s.round_closes_by_unix_ms() > 0) {
    const int64_t left =
        std::max<int64_t>(0, s.round_closes_by_unix_ms() - s.server_time_unix_ms());
    closes = absl::StrFormat(", closes in <= %d s", (left + 999) / 1000);
  }
  const v1::StalenessPolicy& sp = s.staleness();
  const std::string stale =
      sp.max_staleness() == 0
          ? std::string("; contributions from the current base only")
          : absl::StrFormat("; contributions up to %d fusions stale (from %s), weight (1+s)^-%g",
                            sp.max_staleness(),
                            absl::StrCat("v", absl::StrJoin(sp.accepted_base_versions(), ", v")),
                            sp.staleness_exponent());
  const std::string bad =
      s.bad_base_versions_size() == 0
          ? std::string()
          : absl::StrCat("bad bases   ", VersionRanges(s.bad_base_versions()), " (rolled back)\n");
  std::cout << absl::StrFormat(
      "model       %s (%d shared tensors, %d bytes, fusion %s%s)\n"
      "base        v%d (sha256 %s)\n"
      "%s"
      "open round  %d, opened %s, %d/%d contributions%s%s\n"
      "policy      close at %d contributions%s%s\n"
      "storage     %s on disk; %s\n",
      Printable(s.model().model_spec()), s.model().manifest().tensors_size(),
      s.model().total_bytes(), v1::FusionMethod_Name(s.model().fusion_method()),
      OuterOptimizerSummary(s.model()), s.base_version(), ToHex(s.base_sha256()).substr(0, 16), bad,
      round.number(), Ago(s.server_time_unix_ms(), round.opened_unix_ms()),
      round.contributions_size(), s.min_contributions(),
      names.empty() ? "" : absl::StrCat(": ", absl::StrJoin(names, ", ")), closes,
      s.min_contributions(), deadline, stale, HumanBytes(s.storage().disk_bytes()),
      StorageSummary(s.storage()));
  return absl::OkStatus();
}

absl::Status Rounds(const std::shared_ptr<grpc::Channel>& channel, Format format) {
  auto stub = v1::Status::NewStub(channel);
  v1::ListRoundsResponse r;
  RETURN_IF_ERROR(Read(
      channel, [&](grpc::ClientContext* ctx) { return stub->ListRounds(ctx, {}, &r); },
      "ListRounds"));
  if (format == Format::kJson) return PrintJson(r);
  // ParsedFormat, not a const char*: clang checks StrFormat's format strings at compile time.
  using RowFormat = absl::ParsedFormat<'d', 'd', 's', 'd', 's', 's'>;
  static const RowFormat kTsvRow("%d\t%d\t%s\t%d\t%s\t%s\n");
  static const RowFormat kTableRow("%-6d v%-5d %-7s %-14d %-7s %s\n");
  const RowFormat& row = format == Format::kTsv ? kTsvRow : kTableRow;
  if (format == Format::kTsv) {
    std::cout << "round\tbase\tstate\tcontributions\tresult\treason\n";
  } else {
    std::cout << "ROUND  BASE   STATE   CONTRIBUTIONS  RESULT  REASON\n";
  }
  for (const auto& round : r.rounds()) {
    std::string result =
        round.state() == v1::CLOSED ? absl::StrCat("v", round.result_base_version()) : "-";
    std::cout << absl::StrFormat(
        row, round.number(), round.base_version(), StateName(round.state()),
        round.contributions_size(), result,
        round.close_reason().empty() ? "-" : Printable(round.close_reason()));
  }
  return absl::OkStatus();
}

// Stored evaluation scores (Status.ListEvaluations), oldest base first.
absl::Status Evals(const std::shared_ptr<grpc::Channel>& channel, Format format) {
  auto stub = v1::Status::NewStub(channel);
  v1::ListEvaluationsRequest request;
  request.set_task(absl::GetFlag(FLAGS_task));
  v1::ListEvaluationsResponse r;
  RETURN_IF_ERROR(Read(
      channel, [&](grpc::ClientContext* ctx) { return stub->ListEvaluations(ctx, request, &r); },
      "ListEvaluations"));
  if (format == Format::kJson) return PrintJson(r);
  std::vector<std::vector<std::string>> rows;
  rows.push_back({"base", "task", "metric", "k", "value", "seen", "evaluator", "recorded"});
  for (const auto& e : r.evaluations()) {
    rows.push_back({absl::StrCat(e.base_version()), Printable(e.task()), Printable(e.metric()),
                    absl::StrCat(e.num_train_examples()), absl::StrFormat("%.6g", e.value()),
                    e.task_seen() ? "seen" : "unseen", Printable(e.evaluator()),
                    UtcTime(e.recorded_unix_ms())});
  }
  if (format == Format::kTsv) {
    for (const auto& row : rows) std::cout << absl::StrJoin(row, "\t") << "\n";
  } else {
    for (auto& h : rows[0]) h = absl::AsciiStrToUpper(h);
    PrintTable(std::move(rows));
  }
  return absl::OkStatus();
}

absl::Status Round(const std::shared_ptr<grpc::Channel>& channel, Format format,
                   const std::string& arg) {
  uint64_t number;
  if (!absl::SimpleAtoi(arg, &number)) {
    return absl::InvalidArgumentError(absl::StrCat("round number '", arg, "' is not a number"));
  }
  auto stub = v1::Status::NewStub(channel);
  v1::GetRoundInfoRequest request;
  request.set_number(number);
  v1::RoundInfo round;
  RETURN_IF_ERROR(Read(
      channel, [&](grpc::ClientContext* ctx) { return stub->GetRound(ctx, request, &round); },
      "GetRound"));
  if (format == Format::kJson) return PrintJson(round);
  std::set<std::string> metric_set;
  for (const auto& c : round.contributions()) {
    for (const auto& [k, v] : c.metrics()) metric_set.insert(k);  // printed escaped
  }
  std::vector<std::string> metrics(metric_set.begin(), metric_set.end());
  const bool tsv = format == Format::kTsv;
  if (!tsv) {
    std::cout << "round " << round.number() << ": base v" << round.base_version() << ", "
              << StateName(round.state());
    if (round.state() == v1::CLOSED) {
      std::cout << " -> base v" << round.result_base_version() << " ("
                << Printable(round.close_reason()) << ")";
    }
    std::cout << "\n";
  }
  // "from": the base it was fine-tuned from; "stale": fusions since then (and its weight),
  // 0 for a contribution trained from the round's base.
  std::vector<std::vector<std::string>> rows = {
      {"id", "contributor", "task", "examples", "from", "stale"}};
  for (const auto& m : metrics) rows[0].push_back(Printable(m));
  for (const auto& c : round.contributions()) {
    std::vector<std::string> cells = {
        absl::StrCat(c.id()),
        Printable(c.contributor()),
        Printable(c.task()),
        absl::StrCat(c.num_examples()),
        absl::StrCat("v", c.trained_from_base()),
        c.staleness() == 0 ? std::string("0")
                           : absl::StrFormat("%d (x%.3f)", c.staleness(), c.staleness_weight())};
    for (const auto& m : metrics) {
      auto it = c.metrics().find(m);
      cells.push_back(it == c.metrics().end() ? "-" : absl::StrFormat("%.4f", it->second));
    }
    if (!tsv && c.state() == v1::QUARANTINED)
      cells.push_back("QUARANTINED: " + Printable(c.quarantine_reason()));
    rows.push_back(std::move(cells));
  }
  if (tsv) {
    for (const auto& cells : rows) std::cout << absl::StrJoin(cells, "\t") << "\n";
  } else {
    PrintTable(std::move(rows));
  }
  return absl::OkStatus();
}

absl::Status CloseRound(const std::shared_ptr<grpc::Channel>& channel) {
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::CloseRoundRequest request;
  if (absl::GetFlag(FLAGS_round) >= 0) request.set_round(absl::GetFlag(FLAGS_round));
  v1::CloseRoundResponse r;
  RETURN_IF_ERROR(rpc::FromGrpc(stub->CloseRound(&ctx, request, &r), "CloseRound"));
  std::cout << "round " << r.closed_round().number() << " closed: fused "
            << r.closed_round().contributions_size() << " contributions into base v"
            << r.new_base_version() << "\n";
  return absl::OkStatus();
}

absl::Status Wait(const std::shared_ptr<grpc::Channel>& channel) {
  int64_t want = absl::GetFlag(FLAGS_base);
  if (want < 0) return absl::InvalidArgumentError("wait needs --base=N");
  auto stub = v1::Status::NewStub(channel);
  // One deadline for the whole wait: a server that is not up yet, or restarts meanwhile,
  // is waited for (the watch is opened again) until then.
  const auto deadline = std::chrono::system_clock::now() + Deadline();
  bool said = false;
  for (;;) {
    grpc::ClientContext ctx;
    ctx.set_deadline(deadline);
    ctx.set_wait_for_ready(true);  // a server not listening yet: wait, do not fail
    auto reader = stub->WatchStatus(&ctx, {});
    v1::ServerStatus s;
    while (reader->Read(&s)) {
      said = false;
      if (s.initialized() && s.base_version() >= static_cast<uint64_t>(want)) {
        std::cout << "base v" << s.base_version() << "\n";
        ctx.TryCancel();
        reader->Finish();
        return absl::OkStatus();
      }
    }
    grpc::Status st = reader->Finish();
    const bool gone = st.error_code() == grpc::StatusCode::UNAVAILABLE ||
                      st.error_code() == grpc::StatusCode::CANCELLED ||
                      st.error_code() == grpc::StatusCode::OK;  // the server ended the watch
    if (st.error_code() == grpc::StatusCode::DEADLINE_EXCEEDED ||
        (gone && std::chrono::system_clock::now() >= deadline)) {
      return absl::DeadlineExceededError(absl::StrCat("base v", want, " did not appear within ",
                                                      absl::GetFlag(FLAGS_timeout_s), " s"));
    }
    if (!gone) return rpc::FromGrpc(st, "WatchStatus");
    if (!said) {
      std::cerr << "the server went away (" << st.error_message()
                << "); waiting for it to come back\n";
      said = true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
}

absl::Status Token(const std::shared_ptr<grpc::Channel>& channel, Format format,
                   const std::string& verb) {
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  if (verb == "create") {
    v1::CreateTokenRequest request;
    request.set_name(absl::GetFlag(FLAGS_name));
    std::string role = absl::GetFlag(FLAGS_role);
    v1::Role r;
    if (!v1::Role_Parse(absl::AsciiStrToUpper(role), &r) || r == v1::ROLE_UNSPECIFIED) {
      return absl::InvalidArgumentError(
          absl::StrCat("--role=", role, " is not one of contributor, viewer, evaluator, operator"));
    }
    request.set_role(r);
    request.set_ttl_seconds(absl::GetFlag(FLAGS_ttl_s));
    v1::CreateTokenResponse response;
    RETURN_IF_ERROR(rpc::FromGrpc(stub->CreateToken(&ctx, request, &response), "CreateToken"));
    std::string out = absl::GetFlag(FLAGS_out);
    if (!out.empty()) {
      RETURN_IF_ERROR(WriteFileAtomic(out, response.token() + "\n", 0600));
      std::cerr << "token '" << Printable(response.info().name()) << "' ("
                << v1::Role_Name(response.info().role()) << ") written to " << out << "\n";
    } else {
      std::cout << response.token() << "\n";
    }
    return absl::OkStatus();
  }
  if (verb == "revoke") {
    v1::RevokeTokenRequest request;
    request.set_name(absl::GetFlag(FLAGS_name));
    v1::TokenInfo info;
    RETURN_IF_ERROR(rpc::FromGrpc(stub->RevokeToken(&ctx, request, &info), "RevokeToken"));
    std::cout << "revoked token '" << Printable(info.name()) << "'\n";
    return absl::OkStatus();
  }
  if (verb == "list") {
    v1::ListTokensResponse r;
    RETURN_IF_ERROR(Read(
        channel, [&](grpc::ClientContext* c) { return stub->ListTokens(c, {}, &r); },
        "ListTokens"));
    if (format == Format::kJson) return PrintJson(r);
    // Expired as the server judges it (now >= expiry), by this machine's clock.
    const int64_t now_ms = absl::ToUnixMillis(absl::Now());
    std::vector<std::vector<std::string>> rows = {{"NAME", "ROLE", "EXPIRES", "STATE"}};
    for (const auto& t : r.tokens()) {
      const bool expired = t.expires_unix_ms() != 0 && now_ms >= t.expires_unix_ms();
      rows.push_back({Printable(t.name()), v1::Role_Name(t.role()), UtcTime(t.expires_unix_ms()),
                      t.revoked() ? "revoked" : (expired ? "expired" : "active")});
    }
    PrintTable(std::move(rows), {20, 12, 18}, 1);  // the columns of earlier releases
    return absl::OkStatus();
  }
  return absl::InvalidArgumentError("usage: coldfusectl token create|revoke|list");
}

absl::Status Rollback(const std::shared_ptr<grpc::Channel>& channel) {
  int64_t base = absl::GetFlag(FLAGS_base);
  if (base < 0) return absl::InvalidArgumentError("rollback needs --base=N (a good base)");
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::RollbackBaseRequest request;
  request.set_base_version(base);
  request.set_reason(absl::GetFlag(FLAGS_reason));
  v1::RollbackBaseResponse r;
  RETURN_IF_ERROR(rpc::FromGrpc(stub->RollbackBase(&ctx, request, &r), "RollbackBase"));
  std::cout << "rolled back to base v" << base << "; round " << r.opened_round().number()
            << " open; bad bases: v" << absl::StrJoin(r.bad_base_versions(), ", v") << "\n";
  return absl::OkStatus();
}

absl::Status Prune(const std::shared_ptr<grpc::Channel>& channel, Format format) {
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::PruneRequest request;
  request.set_dry_run(absl::GetFlag(FLAGS_dry_run));
  v1::PruneResponse r;
  RETURN_IF_ERROR(rpc::FromGrpc(stub->Prune(&ctx, request, &r), "Prune"));
  if (format == Format::kJson) return PrintJson(r);
  const char* verb = r.dry_run() ? "would remove" : "removed";
  if (r.pruned_base_versions_size() == 0 && r.pruned_contribution_rounds_size() == 0) {
    std::cout << "nothing to remove: retention keeps everything stored\n";
  } else {
    std::cout << verb << ": bases " << VersionRanges(r.pruned_base_versions())
              << "; contributions of rounds "
              << (r.pruned_contribution_rounds_size() == 0
                      ? std::string("none")
                      : absl::StrJoin(r.pruned_contribution_rounds(), ", "))
              << "\n";
  }
  for (const auto& why : r.kept_reasons()) std::cout << "kept " << Printable(why) << "\n";
  if (r.dry_run()) {
    std::cout << "disk: " << HumanBytes(r.disk_bytes_before()) << " (dry run: nothing removed)\n";
  } else {
    std::cout << "disk: " << HumanBytes(r.disk_bytes_before()) << " -> "
              << HumanBytes(r.disk_bytes_after()) << "\n";
  }
  return absl::OkStatus();
}

absl::Status Pin(const std::shared_ptr<grpc::Channel>& channel, bool pin) {
  int64_t base = absl::GetFlag(FLAGS_base);
  if (base < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat(pin ? "pin" : "unpin", " needs --base=N (a stored base version)"));
  }
  auto stub = v1::Admin::NewStub(channel);
  grpc::ClientContext ctx;
  SetDeadline(&ctx);
  v1::PinBaseRequest request;
  request.set_base_version(static_cast<uint64_t>(base));
  request.set_pin(pin);
  request.set_reason(absl::GetFlag(FLAGS_reason));
  v1::PinBaseResponse r;
  RETURN_IF_ERROR(rpc::FromGrpc(stub->PinBase(&ctx, request, &r), "PinBase"));
  std::cout << (pin ? "pinned" : "unpinned") << " base v" << base
            << "; pinned bases: " << VersionRanges(r.pinned_base_versions()) << "\n";
  return absl::OkStatus();
}

absl::Status Audit(const std::shared_ptr<grpc::Channel>& channel, Format format) {
  auto stub = v1::Admin::NewStub(channel);
  // The server caps each reply (1000 records, 1 MiB): ask page after page.
  const uint32_t want = absl::GetFlag(FLAGS_limit) == 0 ? 1000 : absl::GetFlag(FLAGS_limit);
  v1::ListAuditResponse all;
  uint64_t after = absl::GetFlag(FLAGS_after);
  while (static_cast<uint32_t>(all.records_size()) < want) {
    v1::ListAuditRequest request;
    request.set_after_seq(after);
    request.set_limit(want - static_cast<uint32_t>(all.records_size()));
    v1::ListAuditResponse page;
    RETURN_IF_ERROR(Read(
        channel, [&](grpc::ClientContext* ctx) { return stub->ListAudit(ctx, request, &page); },
        "ListAudit"));
    for (auto& rec : *page.mutable_records()) *all.add_records() = std::move(rec);
    all.set_more(page.more());
    if (!page.more() || page.records_size() == 0) break;
    after = all.records(all.records_size() - 1).seq();
  }
  if (format == Format::kJson) return PrintJson(all);
  for (const auto& rec : all.records()) {
    const std::string when = absl::FormatTime(
        "%Y-%m-%dT%H:%M:%E3SZ", absl::FromUnixMillis(rec.unix_ms()), absl::UTCTimeZone());
    // Records quote what clients sent: printed escaped (no terminal control sequences,
    // no line that looks like another record).
    std::cout << absl::StrFormat("%6d %s %-10s %-24s %s\n", rec.seq(), when, Printable(rec.actor()),
                                 Printable(rec.action()), Printable(rec.detail()));
  }
  if (all.more()) {
    std::cerr << "(more records: coldfusectl audit --after="
              << all.records(all.records_size() - 1).seq() << ")\n";
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> Channel() {
  return rpc::ConnectWithFiles(absl::GetFlag(FLAGS_server),
                               {.ca_file = absl::GetFlag(FLAGS_tls_ca),
                                .cert_file = absl::GetFlag(FLAGS_tls_cert),
                                .key_file = absl::GetFlag(FLAGS_tls_key),
                                .server_name = absl::GetFlag(FLAGS_tls_server_name)},
                               absl::GetFlag(FLAGS_token_file));
}

absl::Status Run(const std::vector<char*>& args) {
  if (args.size() < 2) return absl::InvalidArgumentError(kUsage);
  std::string command = args[1];
  ASSIGN_OR_RETURN(Format format, GetFormat());
  ASSIGN_OR_RETURN(std::shared_ptr<grpc::Channel> channel, Channel());
  if (command == "init") return Init(channel);
  if (command == "status") return Status(channel, format);
  if (command == "rounds") return Rounds(channel, format);
  if (command == "evals") return Evals(channel, format);
  if (command == "round") {
    if (args.size() < 3) return absl::InvalidArgumentError("usage: coldfusectl round N");
    return Round(channel, format, args[2]);
  }
  if (command == "close-round") return CloseRound(channel);
  if (command == "wait") return Wait(channel);
  if (command == "token") return Token(channel, format, args.size() > 2 ? args[2] : "");
  if (command == "rollback") return Rollback(channel);
  if (command == "audit") return Audit(channel, format);
  if (command == "prune") return Prune(channel, format);
  if (command == "backup") return Backup(channel, absl::GetFlag(FLAGS_out), Deadline());
  if (command == "pin") return Pin(channel, true);
  if (command == "unpin") return Pin(channel, false);
  if (command == "push") {
    PushOptions o;
    o.checkpoint = absl::GetFlag(FLAGS_checkpoint);
    o.contributor = absl::GetFlag(FLAGS_name);
    o.task = absl::GetFlag(FLAGS_task);
    o.num_examples = absl::GetFlag(FLAGS_num_examples);
    ASSIGN_OR_RETURN(SendEncoding how, ParseSendEncoding(absl::GetFlag(FLAGS_encoding),
                                                         absl::GetFlag(FLAGS_send_dtype),
                                                         absl::GetFlag(FLAGS_int8_block_size)));
    o.delta = how.encoding != v1::FULL;
    if (how.encoding == v1::DELTA_INT8) o.int8_block = how.int8_block_size;
    o.send_dtype = absl::GetFlag(FLAGS_send_dtype);
    o.from_base = absl::GetFlag(FLAGS_version);
    ASSIGN_OR_RETURN(o.metrics, ParseMetrics(absl::GetFlag(FLAGS_metrics)));
    o.retry = Retry();
    if (o.checkpoint.empty()) return absl::InvalidArgumentError("push needs --checkpoint=PATH");
    return PushCheckpoint(channel, o, Deadline());
  }
  if (command == "pull") return Pull(channel, absl::GetFlag(FLAGS_version), Deadline());
  if (command == "export") {
    return Export(channel, absl::GetFlag(FLAGS_version), absl::GetFlag(FLAGS_out),
                  absl::GetFlag(FLAGS_shard_bytes), Deadline());
  }
  return absl::InvalidArgumentError(absl::StrCat("unknown command '", command, "'\n", kUsage));
}

}  // namespace
}  // namespace coldfuse::ctl

int main(int argc, char** argv) {
  std::vector<char*> args = coldfuse::InitProgram(argc, argv, coldfuse::ctl::kUsage, __FILE__);
  absl::Status st = coldfuse::ctl::Run(args);
  if (!st.ok()) {
    std::cerr << "coldfusectl: " << absl::StatusCodeToString(st.code()) << ": " << st.message()
              << "\n";
    return 1;
  }
  return 0;
}
