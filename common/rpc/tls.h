// TLS for coldfusectl and coldfuse-client: channel credentials built from PEM files that
// are checked up front, so a bad path, a swapped file or an expired certificate is
// reported by name instead of as an UNAVAILABLE handshake failure. Thread-safe.
#ifndef COLDFUSE_COMMON_RPC_TLS_H_
#define COLDFUSE_COMMON_RPC_TLS_H_

#include <grpcpp/security/credentials.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace coldfuse::rpc {

struct ClientTlsOptions {
  // PEM CA certificate(s) that signed the server certificate. Required.
  std::string ca_file;
  // PEM client certificate (chain) for mutual TLS. Default: empty (no client certificate).
  std::string cert_file;
  // PEM private key of cert_file, unencrypted; set exactly when cert_file is.
  std::string key_file;
  // The name the server's certificate must carry, when it is not the host the client
  // connects to (an IP address, a tunnel, a load balancer). Default: that host.
  std::string server_name = "";
};

// Reads and checks every file, then returns SSL channel credentials. Errors name the
// file: NOT_FOUND / PERMISSION_DENIED (cannot read it); INVALID_ARGUMENT (not PEM, no
// certificate or no key in it, encrypted key, key does not match the certificate (names
// both files), certificate expired or not yet valid, certificate not meant for TLS
// clients, ca_file empty, only one of cert_file/key_file set).
absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeClientCredentials(
    const ClientTlsOptions& options);

}  // namespace coldfuse::rpc

#endif  // COLDFUSE_COMMON_RPC_TLS_H_
