// TLS for coldfused: server credentials built from PEM files that are checked up front
// (so a bad path, a swapped file or an expired certificate is reported by name at
// startup rather than as a failed handshake later), and the verified client identity
// of a call under mutual TLS. Thread-safe: no shared state.
#ifndef COLDFUSE_SERVER_SERVICE_TLS_H_
#define COLDFUSE_SERVER_SERVICE_TLS_H_

#include <grpcpp/security/server_credentials.h>
#include <grpcpp/server_context.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace coldfuse::service {

struct ServerTlsOptions {
  // PEM server certificate, optionally followed by its intermediate CAs. Required.
  std::string cert_file;
  // PEM private key of the first certificate in cert_file, unencrypted. Required.
  std::string key_file;
  // PEM CA certificate(s). Non-empty: mutual TLS, every client must present a
  // certificate signed by one of them. Default: empty (server-only TLS).
  std::string client_ca_file;
  // Accept a key file that every local user can read (mode o+r). Default: false (such a
  // key is refused: anyone on the machine could impersonate the server).
  bool allow_readable_key = false;
  // Re-read the three files this often, so a renewed certificate or key (or CA) serves
  // new connections without a restart; gRPC keeps the previous pair when the files do
  // not form a valid one (e.g. half-way through a renewal). 0: read once at start.
  // Default: 60.
  unsigned reload_interval_s = 60;
};

// Reads and checks every file before gRPC sees it, then returns TLS server credentials
// (with client_ca_file: GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY) that
// reload the files every reload_interval_s.
// Errors name the file: NOT_FOUND / PERMISSION_DENIED (cannot read it);
// INVALID_ARGUMENT (not PEM, no certificate or no key in it, encrypted key, key does
// not match the certificate (names both files), certificate expired or not yet valid,
// certificate not meant for TLS servers, a required option empty).
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsOptions& options);

// The common name (CN) of the client certificate of the call `ctx`, or "" when the call
// came without one (insecure port, server-only TLS). The certificate was verified
// against client_ca_file when the server uses MakeServerCredentials with mutual TLS;
// REQUIRES: that, before the name is trusted for authorization.
std::string PeerCommonName(const grpc::ServerContextBase& ctx);

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_TLS_H_
