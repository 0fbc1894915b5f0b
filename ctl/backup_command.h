// coldfusectl backup: receives Admin.Backup's stream into a new folder, verifying each
// file's size and SHA-256, and makes the folder appear only when it is complete.
#ifndef COLDFUSE_CTL_BACKUP_COMMAND_H_
#define COLDFUSE_CTL_BACKUP_COMMAND_H_

#include <grpcpp/grpcpp.h>

#include <chrono>
#include <memory>
#include <string>

#include "absl/status/status.h"

namespace coldfuse::ctl {

// Writes the backup to `out`, which must not exist (or be an empty folder). The stream
// is cancelled if nothing arrives for `idle_timeout`.
absl::Status Backup(const std::shared_ptr<grpc::Channel>& channel, const std::string& out,
                    std::chrono::milliseconds idle_timeout);

}  // namespace coldfuse::ctl

#endif  // COLDFUSE_CTL_BACKUP_COMMAND_H_
