#include "server/rounds/staleness.h"

#include <cmath>

namespace coldfuse::rounds {

std::vector<uint64_t> Lineage(const std::vector<v1::RoundInfo>& rounds, uint64_t current,
                              size_t limit, const std::function<bool(uint64_t)>& gone) {
  std::vector<uint64_t> out;
  if (limit == 0 || gone(current)) return out;
  out.push_back(current);
  // A base is made by exactly one round, and always by a later round than the one that
  // made its parent: one pass from the newest round back finds the whole line.
  uint64_t v = current;
  for (auto it = rounds.rbegin(); it != rounds.rend() && out.size() < limit; ++it) {
    // v0 is made by init; a round closed by a rollback made no base (result 0).
    if (v == 0) break;
    if (it->state() != v1::CLOSED || it->result_base_version() != v) continue;
    v = it->base_version();
    if (gone(v)) break;
    out.push_back(v);
  }
  return out;
}

double StalenessWeight(uint32_t staleness, double exponent) {
  if (staleness == 0 || exponent == 0) return 1.0;
  return std::pow(1.0 + staleness, -exponent);
}

}  // namespace coldfuse::rounds
