// Asynchronous ("stale") contributions: which bases a contribution may be trained from,
// and how much a stale one weighs at fusion. Pure functions over the rounds; no locks.
#ifndef COLDFUSE_SERVER_ROUNDS_STALENESS_H_
#define COLDFUSE_SERVER_ROUNDS_STALENESS_H_

#include <cstdint>
#include <functional>
#include <vector>

#include "coldfuse/v1/coldfuse.pb.h"

namespace coldfuse::rounds {

// Largest --max_staleness accepted: each step keeps one more base on disk.
constexpr uint32_t kMaxStalenessBound = 64;

// `current` and its ancestors, newest first: the base each was fused from, found through
// the closed round that made it (rounds closed by a rollback made none, so the bases a
// rollback marked bad are never ancestors of a later base). At most `limit` bases;
// stops before the first base for which `gone` is true (its tensors were pruned).
std::vector<uint64_t> Lineage(const std::vector<v1::RoundInfo>& rounds, uint64_t current,
                              size_t limit, const std::function<bool(uint64_t)>& gone);

// What the delta of a contribution `staleness` fusions old is multiplied by at fusion:
// (1 + staleness)^-exponent. 1 for staleness 0 whatever the exponent. The polynomial
// family is FedAsync's (Xie et al., arXiv 1903.03934); exponent 0.5 is FedBuff's
// 1/sqrt(1 + staleness) (Nguyen et al., arXiv 2106.06639).
double StalenessWeight(uint32_t staleness, double exponent);

}  // namespace coldfuse::rounds

#endif  // COLDFUSE_SERVER_ROUNDS_STALENESS_H_
