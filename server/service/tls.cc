#include "server/service/tls.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>
#include <sys/stat.h>

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/logging.h"
#include "common/pem_files.h"
#include "common/status_macros.h"

namespace coldfuse::service {

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> MakeServerCredentials(
    const ServerTlsOptions& options) {
  ASSIGN_OR_RETURN(CertAndKeyPem pair,
                   LoadCertAndKeyPem(options.cert_file, "TLS server certificate", options.key_file,
                                     "TLS server key", TlsRole::kServer));
  // After the contents: a wrong file is worth knowing about before its mode.
  struct stat st {};
  if (::stat(options.key_file.c_str(), &st) == 0 && (st.st_mode & S_IROTH) != 0) {
    std::string mode = absl::StrFormat("%03o", st.st_mode & 0777);
    if (!options.allow_readable_key) {
      return absl::PermissionDeniedError(absl::StrCat(
          "TLS server key ", options.key_file, " is readable by every user on this machine (mode ",
          mode, "), who could then impersonate the server: chmod 600 ", options.key_file,
          " (or 640 with the service's group); --allow_readable_key accepts it anyway"));
    }
    CF_LOG(WARNING) << "TLS server key " << options.key_file << " is readable by every user (mode "
                    << mode << "); accepted because of --allow_readable_key";
  }
  bool mutual = !options.client_ca_file.empty();
  grpc::SslServerCredentialsOptions ssl(
      mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE);
  if (mutual) {
    ASSIGN_OR_RETURN(ssl.pem_root_certs, LoadCaPem(options.client_ca_file, "TLS client CA file"));
  }
  ssl.pem_key_cert_pairs.push_back({std::move(pair.private_key), std::move(pair.cert_chain)});
  std::shared_ptr<grpc::ServerCredentials> creds = grpc::SslServerCredentials(ssl);
  if (creds == nullptr) return absl::InternalError("gRPC refused the TLS server credentials");
  return creds;
}

std::string PeerCommonName(const grpc::ServerContextBase& ctx) {
  std::shared_ptr<const grpc::AuthContext> auth = ctx.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return "";
  std::vector<grpc::string_ref> names = auth->FindPropertyValues(GRPC_X509_CN_PROPERTY_NAME);
  if (names.empty()) return "";
  return std::string(names.front().data(), names.front().size());
}

}  // namespace coldfuse::service
