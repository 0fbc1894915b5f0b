#include "server/fusion/round_fusion.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <memory>

#include "absl/strings/str_cat.h"
#include "common/dtype.h"
#include "common/status_macros.h"
#include "common/tensor.h"
#include "common/tensor_stream.h"
#include "server/fusion/coordinatewise.h"
#include "server/fusion/element_reader.h"
#include "server/fusion/merge.h"
#include "server/fusion/outer_optimizer.h"
#include "server/fusion/robust.h"
#include "server/fusion/update_fusion.h"
#include "server/fusion/update_reader.h"

namespace coldfuse::fusion {

ChunkReader ReadInBaseGrid(const v1::Manifest& base_manifest, const ContributionSource& c,
                           const ChunkReader& read_base) {
  const bool stale = static_cast<bool>(c.read_trained_from);
  bool same = !c.delta && !stale;
  for (int t = 0; same && t < c.manifest.tensors_size(); ++t) {
    same = c.manifest.tensors(t).dtype() == base_manifest.tensors(t).dtype();
  }
  if (same) return c.read;  // stored exactly as the base is: read the chunks as they are
  // Decode the stored dtype over the base chunk's element range, add the base for a
  // delta, encode in the base's dtype. Fusion's threads read one contribution's chunks at
  // once (SentReader).
  auto sent = std::make_shared<const SentReader>(base_manifest, c);
  return [sent, c, base_manifest, read_base, stale](size_t, uint32_t t,
                                                    uint64_t chunk) -> absl::StatusOr<std::string> {
    if (t >= static_cast<uint32_t>(base_manifest.tensors_size())) {
      return absl::OutOfRangeError(absl::StrCat("no tensor #", t, " in the base"));
    }
    const v1::TensorSpec& bspec = base_manifest.tensors(t);
    const size_t bsize = DTypeSize(bspec.dtype());
    ASSIGN_OR_RETURN(uint64_t total, NumElements(bspec));
    const uint64_t per_chunk = kChunkBytes / bsize;
    const uint64_t begin = chunk * per_chunk;
    if (begin >= total && total > 0) {
      return absl::OutOfRangeError(
          absl::StrCat("chunk ", chunk, " is past the end of '", bspec.name(), "'"));
    }
    const uint64_t n = std::min<uint64_t>(per_chunk, total - begin);
    std::vector<double> values(n);
    RETURN_IF_ERROR(sent->Read(t, begin, n, values.data()));
    auto add = [&](const ChunkReader& reader, double factor, const char* which) -> absl::Status {
      ASSIGN_OR_RETURN(std::string base, reader(0, t, chunk));
      if (base.size() != n * bsize) {
        return absl::DataLossError(absl::StrCat(which, " chunk ", chunk, " of '", bspec.name(),
                                                "' holds ", base.size(), " bytes; expected ",
                                                n * bsize));
      }
      std::vector<double> b(n);
      DecodeToDouble(bspec.dtype(), base.data(), n, b.data());
      for (uint64_t i = 0; i < n; ++i) values[i] += factor * b[i];
      return absl::OkStatus();
    };
    if (stale) {
      // The update: stored as such (DELTA), or the values minus the base they came from.
      if (!c.delta) RETURN_IF_ERROR(add(c.read_trained_from, -1.0, "trained-from base"));
      if (c.weight != 1.0) {
        for (uint64_t i = 0; i < n; ++i) values[i] *= c.weight;
      }
    }
    if (c.delta || stale) RETURN_IF_ERROR(add(read_base, 1.0, "base"));
    std::string out(n * bsize, '\0');
    EncodeFromDouble(bspec.dtype(), values.data(), n, out.data());
    return out;
  };
}

absl::StatusOr<std::string> FuseRound(const v1::ModelInfo& model,
                                      const std::vector<ContributionSource>& contributions,
                                      const ChunkReader& read_base, const ChunkWriter& write) {
  if (contributions.empty()) {
    return absl::InvalidArgumentError("cannot fuse a round with no contributions");
  }
  const v1::Manifest& manifest = model.manifest();
  std::vector<ChunkReader> readers;
  std::vector<uint64_t> examples;
  std::vector<double> norms;
  for (const auto& c : contributions) {
    readers.push_back(ReadInBaseGrid(manifest, c, read_base));
    examples.push_back(c.num_examples);
    // What this contribution moves the round's base by: its own update, weighted.
    norms.push_back(c.read_trained_from ? c.weight * c.delta_norm : c.delta_norm);
  }
  const ChunkReader read = [&readers](size_t k, uint32_t t, uint64_t chunk) {
    return readers[k](k, t, chunk);
  };
  const v1::FusionOptions& options = model.fusion_options();
  switch (model.fusion_method()) {
    case v1::COORDINATE_MEDIAN:
      return FuseMedian(manifest, readers.size(), read, write);
    case v1::TRIMMED_MEAN:
      return FuseTrimmedMean(manifest, readers.size(), options.trim_fraction(), read, write);
    case v1::NORM_CLIPPED_MEAN: {
      ASSIGN_OR_RETURN(std::vector<double> w, FusionWeights(v1::EXAMPLE_WEIGHTED_MEAN, examples));
      // A zero median update clips every update to (almost) nothing: the base stays.
      const double clip =
          std::max(options.clip_factor() * Median(norms), std::numeric_limits<double>::min());
      return FuseNormClippedMean(manifest, w, norms, clip, read_base, read, write);
    }
    case v1::FUSION_METHOD_UNSPECIFIED:
    case v1::MEAN:
    case v1::EXAMPLE_WEIGHTED_MEAN: {
      ASSIGN_OR_RETURN(std::vector<double> w, FusionWeights(model.fusion_method(), examples));
      return FuseWeighted(manifest, w, read, write, options.accumulate_f64());
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown fusion method ", static_cast<int>(model.fusion_method())));
  }
}

bool IsMergeMethod(v1::FusionMethod method) {
  return method == v1::TASK_ARITHMETIC || method == v1::TIES || method == v1::DARE;
}

namespace {

// How the round's K updates become Δ for `model`'s fusion method. TIES's reducer refers
// to `thresholds`, which it fills (a pass over the updates).
absl::StatusOr<DeltaReducer> MakeReducer(uint64_t round, const v1::ModelInfo& model,
                                         const std::vector<ContributionSource>& contributions,
                                         const std::vector<UpdateReader*>& updates,
                                         const ChunkReader& read_base,
                                         std::vector<double>* thresholds) {
  const size_t k = contributions.size();
  const v1::FusionOptions& options = model.fusion_options();
  DeltaReducer reducer;
  std::vector<uint64_t> examples;
  std::vector<double> norms;
  for (const auto& c : contributions) {
    examples.push_back(c.num_examples);
    norms.push_back(c.read_trained_from ? c.weight * c.delta_norm : c.delta_norm);
  }
  const double scale = options.merge_scale() == 0 ? 1.0 : options.merge_scale();
  switch (model.fusion_method()) {
    case v1::TASK_ARITHMETIC:
      reducer.coefficients.assign(k, scale);
      break;
    case v1::DARE: {
      const double p = options.dare_drop_rate();
      if (!(p >= 0 && p < 1)) {
        return absl::InvalidArgumentError(absl::StrCat("DARE drop rate ", p, " is not in [0, 1)"));
      }
      reducer.coefficients.assign(k, scale);
      const double keep = 1 - p;
      const uint64_t below = DareDropBelow(p);
      std::vector<uint64_t> ids;
      for (const auto& c : contributions) ids.push_back(c.id);
      reducer.transform = [ids, keep, below, round, seed = options.dare_seed()](
                              size_t j, uint32_t t, uint64_t begin, double* u, size_t n) {
        const uint64_t key = DareTensorKey(seed, round, ids[j], t);
        for (size_t i = 0; i < n; ++i) u[i] = DareDrops(key, begin + i, below) ? 0.0 : u[i] / keep;
      };
      break;
    }
    case v1::TIES: {
      ASSIGN_OR_RETURN(*thresholds, TrimThresholds(model.manifest(), updates, read_base,
                                                   options.ties_density()));
      reducer.ties = true;
      reducer.ties_scale = scale;
      reducer.transform = [thresholds](size_t j, uint32_t, uint64_t, double* u, size_t n) {
        const double tau = (*thresholds)[j];
        for (size_t i = 0; i < n; ++i) {
          if (!(std::fabs(u[i]) >= tau)) u[i] = 0.0;
        }
      };
      break;
    }
    case v1::COORDINATE_MEDIAN:
      reducer.coordinatewise = MedianInPlace;
      break;
    case v1::TRIMMED_MEAN: {
      const double fraction = options.trim_fraction();
      if (!(fraction >= 0 && fraction < 0.5)) {
        return absl::InvalidArgumentError(
            absl::StrCat("trim fraction ", fraction, " is not in [0, 0.5)"));
      }
      const size_t trim = static_cast<size_t>(std::floor(fraction * static_cast<double>(k)));
      if (2 * trim >= k) {
        return absl::InvalidArgumentError(absl::StrCat(
            "trimming ", trim, " values from each end of ", k, " contributions leaves none"));
      }
      reducer.coordinatewise = [trim](double* v, size_t n) {
        return TrimmedMeanInPlace(v, n, trim);
      };
      break;
    }
    case v1::NORM_CLIPPED_MEAN: {
      // The coefficients of FuseNormClippedMean: example weights, each update clipped to
      // clip_factor x the median update norm.
      ASSIGN_OR_RETURN(std::vector<double> w, FusionWeights(v1::EXAMPLE_WEIGHTED_MEAN, examples));
      const double clip =
          std::max(options.clip_factor() * Median(norms), std::numeric_limits<double>::min());
      for (size_t j = 0; j < k; ++j) {
        const double clip_scale = norms[j] <= clip ? 1.0 : clip / norms[j];
        reducer.coefficients.push_back(w[j] * clip_scale);
      }
      break;
    }
    case v1::FUSION_METHOD_UNSPECIFIED:
    case v1::MEAN:
    case v1::EXAMPLE_WEIGHTED_MEAN: {
      ASSIGN_OR_RETURN(reducer.coefficients, FusionWeights(model.fusion_method(), examples));
      break;
    }
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("unknown fusion method ", static_cast<int>(model.fusion_method())));
  }
  return reducer;
}

}  // namespace

absl::StatusOr<RoundFusionResult> FuseRoundStep(
    uint64_t round, const v1::ModelInfo& model,
    const std::vector<ContributionSource>& contributions, const ChunkReader& read_base,
    const ChunkWriter& write, const OptimizerIo& io) {
  RoundFusionResult result;
  result.step = io.round_base_step + 1;
  if (IsPlain(model) && !IsMergeMethod(model.fusion_method())) {
    ASSIGN_OR_RETURN(result.base_sha256, FuseRound(model, contributions, read_base, write));
    return result;
  }
  if (contributions.empty()) {
    return absl::InvalidArgumentError("cannot fuse a round with no contributions");
  }
  const v1::Manifest& manifest = model.manifest();
  const OuterStep step = StepFor(model, result.step);
  std::vector<std::unique_ptr<UpdateReader>> readers;
  std::vector<UpdateReader*> updates;
  for (const auto& c : contributions) {
    readers.push_back(std::make_unique<UpdateReader>(manifest, c));
    updates.push_back(readers.back().get());
  }
  std::vector<double> thresholds;
  ASSIGN_OR_RETURN(const DeltaReducer reducer,
                   MakeReducer(round, model, contributions, updates, read_base, &thresholds));
  const int slots = StateSlots(step);
  StateIo state;
  if (slots > 0 && !io.round_base_slots.empty()) {
    if (io.round_base_slots.size() != static_cast<size_t>(slots)) {
      return absl::DataLossError(absl::StrCat("the round's base has ", io.round_base_slots.size(),
                                              " optimizer state tensors per tensor; ",
                                              v1::OuterOptimizer_Name(model.outer_optimizer()),
                                              " keeps ", slots));
    }
    state.read = io.read_state;
  }
  state.write = io.write_state;
  ASSIGN_OR_RETURN(UpdateFusionResult fused,
                   FuseUpdates(manifest, updates, reducer, step, read_base, write, state));
  if (state.read && fused.state_read != io.round_base_state_sha256) {
    return absl::DataLossError(
        "the optimizer state stored with the round's base does not match the SHA-256 recorded "
        "with it: restore the data folder from a backup, or roll back to an earlier base");
  }
  result.base_sha256 = std::move(fused.base_sha256);
  for (int s = 0; s < slots; ++s) result.slots.push_back(static_cast<uint32_t>(s));
  if (slots > 0) result.state_sha256 = std::move(fused.state_written);
  return result;
}

}  // namespace coldfuse::fusion
