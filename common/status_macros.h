// RETURN_IF_ERROR / ASSIGN_OR_RETURN for absl::Status code: Debian 12's Abseil
// (20220623) ships neither.
#ifndef COLDFUSE_COMMON_STATUS_MACROS_H_
#define COLDFUSE_COMMON_STATUS_MACROS_H_

#include "absl/status/status.h"
#include "absl/status/statusor.h"

#define CF_CONCAT_INNER_(a, b) a##b
#define CF_CONCAT_(a, b) CF_CONCAT_INNER_(a, b)

// Returns the status from the enclosing function if `expr` is not OK.
#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    ::absl::Status cf_status_ = (expr);      \
    if (!cf_status_.ok()) return cf_status_; \
  } while (0)

// `lhs` = value of the StatusOr `rexpr`, or return its status.
#define ASSIGN_OR_RETURN(lhs, rexpr) \
  ASSIGN_OR_RETURN_IMPL_(CF_CONCAT_(cf_statusor_, __LINE__), lhs, rexpr)
#define ASSIGN_OR_RETURN_IMPL_(tmp, lhs, rexpr) \
  auto tmp = (rexpr);                           \
  if (!tmp.ok()) return tmp.status();           \
  lhs = std::move(*tmp)

#endif  // COLDFUSE_COMMON_STATUS_MACROS_H_
