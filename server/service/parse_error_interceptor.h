// Gives a request that is not a valid protobuf message a true error: INVALID_ARGUMENT
// saying the request could not be parsed, where gRPC 1.51's callback handlers answer
// UNIMPLEMENTED with no message (which reads as "this server lacks the method").
// Applies to RPCs with one request message (unary and server-streaming); an upload
// stream's messages are checked by its reactor. Thread-safe.
#ifndef COLDFUSE_SERVER_SERVICE_PARSE_ERROR_INTERCEPTOR_H_
#define COLDFUSE_SERVER_SERVICE_PARSE_ERROR_INTERCEPTOR_H_

#include <grpcpp/support/server_interceptor.h>

namespace coldfuse::service {

class ParseErrorInterceptorFactory final
    : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(
      grpc::experimental::ServerRpcInfo* info) override;
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_PARSE_ERROR_INTERCEPTOR_H_
