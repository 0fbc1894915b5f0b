#include "common/pem_files.h"

#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <filesystem>
#include <memory>
#include <string>
#include <system_error>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "common/posix_file.h"
#include "common/status_macros.h"

namespace coldfuse {
namespace {

// OpenSSL reports through a thread-local error queue; every helper clears it first and
// turns what it finds into an absl::Status that names the file.

struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using BioPtr = std::unique_ptr<BIO, BioFree>;
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

// Never prompt on a terminal for a passphrase: a daemon has nobody to ask.
int NoPassphrase(char*, int, int, void*) { return -1; }

std::string DrainOpenSslErrors() {
  std::string out;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&out, out.empty() ? "" : "; ", buf);
  }
  return out.empty() ? "no detail from OpenSSL" : out;
}

// True when the last OpenSSL error only says "no more PEM blocks of that type".
bool EndOfPem() {
  unsigned long e = ERR_peek_last_error();
  return ERR_GET_LIB(e) == ERR_LIB_PEM && ERR_GET_REASON(e) == PEM_R_NO_START_LINE;
}

// The label of the first PEM block ("PRIVATE KEY", "CERTIFICATE", ...), for messages.
std::string FirstPemLabel(const std::string& pem) {
  constexpr absl::string_view kBegin = "-----BEGIN ";
  size_t start = pem.find(kBegin.data(), 0, kBegin.size());
  if (start == std::string::npos) return "";
  start += kBegin.size();
  size_t end = pem.find("-----", start);
  if (end == std::string::npos || end - start > 64) return "";
  return pem.substr(start, end - start);
}

BioPtr MemBio(const std::string& data) {
  return BioPtr(BIO_new_mem_buf(data.data(), static_cast<int>(data.size())));
}

std::string Asn1TimeString(const ASN1_TIME* t) {
  BioPtr bio(BIO_new(BIO_s_mem()));
  if (bio == nullptr || ASN1_TIME_print(bio.get(), t) != 1) return "(unreadable time)";
  char* data = nullptr;
  long n = BIO_get_mem_data(bio.get(), &data);
  return std::string(data, static_cast<size_t>(n));
}

// Reads `path` (option `what`), which must look like PEM.
absl::StatusOr<std::string> ReadPemFile(const std::string& path, absl::string_view what) {
  if (path.empty()) return absl::InvalidArgumentError(absl::StrCat(what, " is not set"));
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, " is a directory; give a PEM file"));
  }
  absl::StatusOr<std::string> pem = ReadFileToString(path);
  if (!pem.ok()) {
    return absl::Status(pem.status().code(), absl::StrCat(what, ": ", pem.status().message()));
  }
  if (FirstPemLabel(*pem).empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, " is not a PEM file (no '-----BEGIN ...-----' line)"));
  }
  return pem;
}

// Every certificate in `pem` (at least one), each valid now.
absl::StatusOr<std::vector<X509Ptr>> ParseCertificates(const std::string& pem,
                                                       const std::string& path,
                                                       absl::string_view what) {
  ERR_clear_error();
  BioPtr bio = MemBio(pem);
  if (bio == nullptr) return absl::ResourceExhaustedError("out of memory reading " + path);
  std::vector<X509Ptr> certs;
  while (X509* x = PEM_read_bio_X509(bio.get(), nullptr, NoPassphrase, nullptr)) {
    certs.emplace_back(x);
  }
  if (!EndOfPem()) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", path, " holds a malformed PEM certificate (", DrainOpenSslErrors(), ")"));
  }
  ERR_clear_error();
  if (certs.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat(what, " ", path, " holds no certificate (its PEM block is '",
                     FirstPemLabel(pem), "'); give a PEM certificate file"));
  }
  for (const X509Ptr& x : certs) {
    const ASN1_TIME* not_after = X509_get0_notAfter(x.get());
    const ASN1_TIME* not_before = X509_get0_notBefore(x.get());
    if (X509_cmp_current_time(not_after) <= 0) {  // 0: unparsable time
      return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": certificate expired on ",
                                                     Asn1TimeString(not_after),
                                                     "; issue a new one"));
    }
    if (X509_cmp_current_time(not_before) >= 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(what, " ", path, ": certificate is not valid until ",
                       Asn1TimeString(not_before), "; check the clock"));
    }
  }
  return certs;
}

absl::StatusOr<PkeyPtr> ParsePrivateKey(const std::string& pem, const std::string& path,
                                        absl::string_view what) {
  if (pem.find("ENCRYPTED") != std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", path,
        " is encrypted; store it unencrypted with mode 0600 (openssl pkey -in KEY -out NEW)"));
  }
  ERR_clear_error();
  BioPtr bio = MemBio(pem);
  if (bio == nullptr) return absl::ResourceExhaustedError("out of memory reading " + path);
  PkeyPtr key(PEM_read_bio_PrivateKey(bio.get(), nullptr, NoPassphrase, nullptr));
  if (key == nullptr) {
    if (EndOfPem()) {
      ERR_clear_error();
      return absl::InvalidArgumentError(
          absl::StrCat(what, " ", path, " holds no private key (its PEM block is '",
                       FirstPemLabel(pem), "'); give the PEM key file"));
    }
    return absl::InvalidArgumentError(absl::StrCat(
        what, " ", path, " holds a malformed PEM private key (", DrainOpenSslErrors(), ")"));
  }
  return key;
}

}  // namespace

absl::StatusOr<CertAndKeyPem> LoadCertAndKeyPem(const std::string& cert_file,
                                                absl::string_view cert_what,
                                                const std::string& key_file,
                                                absl::string_view key_what, TlsRole role) {
  CertAndKeyPem out;
  ASSIGN_OR_RETURN(out.cert_chain, ReadPemFile(cert_file, cert_what));
  ASSIGN_OR_RETURN(out.private_key, ReadPemFile(key_file, key_what));
  ASSIGN_OR_RETURN(std::vector<X509Ptr> certs,
                   ParseCertificates(out.cert_chain, cert_file, cert_what));
  ASSIGN_OR_RETURN(PkeyPtr key, ParsePrivateKey(out.private_key, key_file, key_what));
  ERR_clear_error();
  if (X509_check_private_key(certs.front().get(), key.get()) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(key_what, " ", key_file, " does not match ",
                                                   cert_what, " ", cert_file,
                                                   "; give the key made with that certificate"));
  }
  bool server = role == TlsRole::kServer;
  int purpose = server ? X509_PURPOSE_SSL_SERVER : X509_PURPOSE_SSL_CLIENT;
  if (X509_check_purpose(certs.front().get(), purpose, 0) != 1) {
    ERR_clear_error();
    return absl::InvalidArgumentError(absl::StrCat(
        cert_what, " ", cert_file, " cannot serve as a TLS ", server ? "server" : "client",
        " certificate (its extendedKeyUsage lacks ", server ? "serverAuth" : "clientAuth",
        "); make one with deploy/make-certs.sh"));
  }
  return out;
}

absl::StatusOr<std::string> LoadCaPem(const std::string& path, absl::string_view what) {
  ASSIGN_OR_RETURN(std::string pem, ReadPemFile(path, what));
  RETURN_IF_ERROR(ParseCertificates(pem, path, what).status());
  return pem;
}

}  // namespace coldfuse
