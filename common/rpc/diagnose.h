// Why a server cannot be reached, told apart from "not up yet". gRPC reports every
// connection failure as UNAVAILABLE, whether the server is restarting (retry) or the
// client is set up wrongly (retrying forever helps no one): an unknown host name, a
// server certificate that does not verify against the client's CA or is not for that
// name, a server that demands a client certificate, or one that refuses the client's.
// DiagnoseConnection finds out with its own name lookup, TCP connection and TLS
// handshake (OpenSSL), the way the client's channel would make them.
#ifndef COLDFUSE_COMMON_RPC_DIAGNOSE_H_
#define COLDFUSE_COMMON_RPC_DIAGNOSE_H_

#include <chrono>
#include <string>

#include "absl/status/status.h"
#include "common/rpc/tls.h"

namespace coldfuse::rpc {

// OK when the problem (if any) may pass: the host resolves and either a TLS handshake
// with these options succeeds (or there is no TLS), or nothing answers on the port yet
// (connection refused, timed out, temporary DNS failure). Otherwise FAILED_PRECONDITION
// with one message that says what is wrong and which flag fixes it. `tls.ca_file` empty:
// plaintext (only the name lookup is checked). `target` is "host:port" ("[v6]:port").
absl::Status DiagnoseConnection(const std::string& target, const ClientTlsOptions& tls,
                                std::chrono::milliseconds timeout);

}  // namespace coldfuse::rpc

#endif  // COLDFUSE_COMMON_RPC_DIAGNOSE_H_
