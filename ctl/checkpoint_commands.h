// coldfusectl's checkpoint commands: seed a base from a safetensors checkpoint, push a
// checkpoint fine-tuned elsewhere as a contribution, pull a base, export a base as
// safetensors. All stream: memory stays at a few MiB whatever the model size.
#ifndef COLDFUSE_CTL_CHECKPOINT_COMMANDS_H_
#define COLDFUSE_CTL_CHECKPOINT_COMMANDS_H_

#include <grpcpp/grpcpp.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "coldfuse/v1/coldfuse.pb.h"
#include "common/rpc/client.h"

namespace coldfuse::ctl {

struct InitFromOptions {
  std::string path;  // model.safetensors, a folder, or a model.safetensors.index.json
  // Share only tensors whose names start with one of these; empty: every float tensor.
  std::vector<std::string> shared_prefixes;
  v1::FusionMethod fusion_method = v1::MEAN;
  v1::FusionOptions fusion_options;
  v1::OuterOptimizer outer_optimizer = v1::OUTER_OPTIMIZER_UNSPECIFIED;
  v1::OuterOptimizerOptions outer_optimizer_options;
};
absl::Status InitFrom(const std::shared_ptr<grpc::Channel>& channel, const InitFromOptions& o,
                      std::chrono::milliseconds deadline);

struct PushOptions {
  std::string checkpoint;
  std::string contributor;  // with tokens, the server uses the token's name instead
  std::string task;
  uint64_t num_examples = 0;
  bool delta = false;       // send checkpoint minus the base
  uint32_t int8_block = 0;  // with delta: as DELTA_INT8 with this many values per scale
  std::string send_dtype;   // "", f32, f16, bf16, f64 ("": the checkpoint's own dtype)
  // The base version the checkpoint was fine-tuned from; -1: the current base. An older
  // one is fused as a stale contribution (its change from that base), if the server's
  // --max_staleness allows it.
  int64_t from_base = -1;
  std::map<std::string, double> metrics;  // reported with the contribution
  rpc::RetryOptions retry;                // for the round lookup, the base pull and the upload
};
absl::Status PushCheckpoint(const std::shared_ptr<grpc::Channel>& channel, const PushOptions& o,
                            std::chrono::milliseconds deadline);

// Downloads base `version` (-1: current), verifies it and discards it; prints throughput.
absl::Status Pull(const std::shared_ptr<grpc::Channel>& channel, int64_t version,
                  std::chrono::milliseconds deadline);

// Writes base `version` (-1: current) into `out_dir` as safetensors (sharded above
// shard_bytes), streaming it from the server.
absl::Status Export(const std::shared_ptr<grpc::Channel>& channel, int64_t version,
                    const std::string& out_dir, uint64_t shard_bytes,
                    std::chrono::milliseconds deadline);

}  // namespace coldfuse::ctl

#endif  // COLDFUSE_CTL_CHECKPOINT_COMMANDS_H_
