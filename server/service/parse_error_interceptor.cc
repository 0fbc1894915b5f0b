#include "server/service/parse_error_interceptor.h"

#include <atomic>
#include <string>

#include "absl/strings/str_cat.h"
#include "common/tsan_handoff.h"

namespace coldfuse::service {
namespace {

using grpc::experimental::InterceptionHookPoints;

class ParseErrorInterceptor final : public grpc::experimental::Interceptor {
 public:
  // gRPC creates an interceptor on one thread and calls it on others, ordered inside
  // libgrpc: tell TSan (common/tsan_handoff.h).
  explicit ParseErrorInterceptor(const char* method) : method_(method) { TsanHandOff(this); }
  ~ParseErrorInterceptor() override { TsanTakeOver(this); }

  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    TsanTakeOver(this);
    // The request is deserialised before the handler runs; a failure leaves no message.
    if (methods->QueryInterceptionHookPoint(InterceptionHookPoints::POST_RECV_MESSAGE) &&
        methods->GetRecvMessage() == nullptr) {
      unparsable_ = true;
    }
    if (unparsable_ &&
        methods->QueryInterceptionHookPoint(InterceptionHookPoints::PRE_SEND_STATUS) &&
        methods->GetSendStatus().error_code() == grpc::StatusCode::UNIMPLEMENTED) {
      methods->ModifySendStatus(grpc::Status(
          grpc::StatusCode::INVALID_ARGUMENT,
          absl::StrCat("the request to ", method_,
                       " is not a valid protobuf message of the method's request type "
                       "(see proto/coldfuse/v1/coldfuse.proto); it could not be parsed")));
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  // Atomic: the call's batches and its completion op may be intercepted on different
  // threads at once.
  std::atomic<bool> unparsable_{false};
};

}  // namespace

grpc::experimental::Interceptor* ParseErrorInterceptorFactory::CreateServerInterceptor(
    grpc::experimental::ServerRpcInfo* info) {
  using Type = grpc::experimental::ServerRpcInfo::Type;
  // A stream of requests reports its end as "no message" too: leave those alone.
  if (info->type() != Type::UNARY && info->type() != Type::SERVER_STREAMING) return nullptr;
  return new ParseErrorInterceptor(info->method());
}

}  // namespace coldfuse::service
