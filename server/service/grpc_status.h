// The one conversion from absl::Status to grpc::Status (the codes share numbering).
#ifndef COLDFUSE_SERVER_SERVICE_GRPC_STATUS_H_
#define COLDFUSE_SERVER_SERVICE_GRPC_STATUS_H_

#include <grpcpp/support/status.h>

#include <string>

#include "absl/status/status.h"

namespace coldfuse::service {

inline grpc::Status ToGrpcStatus(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_GRPC_STATUS_H_
