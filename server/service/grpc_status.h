// The one conversion from absl::Status to grpc::Status (the codes share numbering).
#ifndef COLDFUSE_SERVER_SERVICE_GRPC_STATUS_H_
#define COLDFUSE_SERVER_SERVICE_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"
#include "common/printable.h"

namespace coldfuse::service {

// The message travels in a trailer, which clients refuse past 8 KiB by default; a
// message quoting a huge client-sent name is cut (and escaped) to stay well under that.
inline constexpr size_t kMaxStatusMessageBytes = 4096;

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  std::string message(s.message());
  if (message.size() > kMaxStatusMessageBytes) {
    message = PrintableTruncated(message, kMaxStatusMessageBytes);
  }
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::move(message));
}

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_GRPC_STATUS_H_
