#include "server/service/tls.h"

#include <grpc/grpc_security_constants.h>
#include <grpcpp/security/auth_context.h>
#include <grpcpp/security/server_credentials.h>
#include <grpcpp/security/tls_certificate_provider.h>
#include <grpcpp/security/tls_credentials_options.h>
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
  const bool mutual = !options.client_ca_file.empty();
  const grpc_ssl_client_certificate_request_type request =
      mutual ? GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY
             : GRPC_SSL_DONT_REQUEST_CLIENT_CERTIFICATE;
  std::string ca;
  if (mutual) {
    ASSIGN_OR_RETURN(ca, LoadCaPem(options.client_ca_file, "TLS client CA file"));
  }
  std::shared_ptr<grpc::ServerCredentials> creds;
  if (options.reload_interval_s > 0) {
    // gRPC's file watcher re-reads the files (and checks that key and certificate match)
    // on its own thread; handshakes use the newest valid pair.
    auto provider = std::make_shared<grpc::experimental::FileWatcherCertificateProvider>(
        options.key_file, options.cert_file, mutual ? options.client_ca_file : std::string(),
        options.reload_interval_s);
    grpc::experimental::TlsServerCredentialsOptions tls(provider);
    tls.watch_identity_key_cert_pairs();
    if (mutual) tls.watch_root_certs();
    tls.set_cert_request_type(request);
    creds = grpc::experimental::TlsServerCredentials(tls);
  } else {
    grpc::SslServerCredentialsOptions ssl(request);
    ssl.pem_root_certs = std::move(ca);
    ssl.pem_key_cert_pairs.push_back({std::move(pair.private_key), std::move(pair.cert_chain)});
    creds = grpc::SslServerCredentials(ssl);
  }
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
