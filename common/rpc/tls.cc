#include "common/rpc/tls.h"

#include <memory>
#include <string>
#include <utility>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "common/pem_files.h"
#include "common/status_macros.h"

namespace coldfuse::rpc {

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> MakeClientCredentials(
    const ClientTlsOptions& options) {
  grpc::SslCredentialsOptions ssl;
  ASSIGN_OR_RETURN(ssl.pem_root_certs, LoadCaPem(options.ca_file, "TLS CA file"));
  if (options.cert_file.empty() != options.key_file.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("TLS client certificate and key go together; only ",
                     options.cert_file.empty() ? "the key " + options.key_file
                                               : "the certificate " + options.cert_file,
                     " is set"));
  }
  if (!options.cert_file.empty()) {
    ASSIGN_OR_RETURN(CertAndKeyPem pair,
                     LoadCertAndKeyPem(options.cert_file, "TLS client certificate",
                                       options.key_file, "TLS client key", TlsRole::kClient));
    ssl.pem_cert_chain = std::move(pair.cert_chain);
    ssl.pem_private_key = std::move(pair.private_key);
  }
  std::shared_ptr<grpc::ChannelCredentials> creds = grpc::SslCredentials(ssl);
  if (creds == nullptr) return absl::InternalError("gRPC refused the TLS channel credentials");
  return creds;
}

}  // namespace coldfuse::rpc
