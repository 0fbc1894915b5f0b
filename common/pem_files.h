// Reads and checks the PEM certificate, key and CA files that TLS is configured with,
// turning every problem into an absl::Status that names the file; stateless and thread-safe.
#ifndef COLDFUSE_COMMON_PEM_FILES_H_
#define COLDFUSE_COMMON_PEM_FILES_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace coldfuse {

// The side of a TLS connection that a certificate must be allowed to act as
// (its extendedKeyUsage must hold serverAuth or clientAuth respectively).
enum class TlsRole { kServer, kClient };

// The PEM text of a checked certificate (chain) and of its private key.
struct CertAndKeyPem {
  std::string cert_chain;
  std::string private_key;
};

// Reads `cert_file` (described as `cert_what` in messages) and `key_file` (`key_what`), and
// checks that both are PEM, that every certificate is valid now, that the key is unencrypted
// and belongs to the first certificate, and that this certificate may act as `role`.
// Errors name the file: NOT_FOUND / PERMISSION_DENIED (cannot read it); INVALID_ARGUMENT (path
// empty or a directory, not PEM, no certificate or no key in it, malformed PEM, encrypted key,
// key does not match the certificate (names both files), certificate expired or not yet valid,
// certificate not meant for `role`); RESOURCE_EXHAUSTED (out of memory).
absl::StatusOr<CertAndKeyPem> LoadCertAndKeyPem(const std::string& cert_file,
                                                absl::string_view cert_what,
                                                const std::string& key_file,
                                                absl::string_view key_what, TlsRole role);

// Reads `path` (described as `what` in messages), a PEM file of trusted CA certificates,
// checks that it holds at least one certificate and that all of them are valid now, and
// returns its text. Errors as for LoadCertAndKeyPem.
absl::StatusOr<std::string> LoadCaPem(const std::string& path, absl::string_view what);

}  // namespace coldfuse

#endif  // COLDFUSE_COMMON_PEM_FILES_H_
