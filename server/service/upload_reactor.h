// The server side of a client-streamed tensor upload (PushContribution, InitModel):
// header, chunks, trailer. The header (which may re-hash a resumed upload), each chunk
// (checked and stored as it arrives) and the final check and synced commit run on the
// executor, one step at a time: a gRPC callback thread never touches the store. Deletes
// itself in OnDone; an upload it did not commit is removed from storage then.
#ifndef COLDFUSE_SERVER_SERVICE_UPLOAD_REACTOR_H_
#define COLDFUSE_SERVER_SERVICE_UPLOAD_REACTOR_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <memory>

#include "common/tsan_handoff.h"
#include "server/metrics/metrics.h"
#include "server/rounds/tensor_upload.h"
#include "server/service/executor.h"
#include "server/service/grpc_status.h"
#include "server/service/upload_streams.h"

namespace coldfuse::service {

// Request: a proto with a oneof `part` of header / chunk / trailer.
template <typename Request, typename Response>
class UploadReactor final : public grpc::ServerReadReactor<Request> {
 public:
  using BeginFn =
      std::function<absl::StatusOr<std::unique_ptr<rounds::TensorUpload>>(const Request&)>;
  using ReplyFn = std::function<void(const rounds::UploadResult&, Response*)>;

  // `streams` (optional) is told when the stream waits for the client and when it is
  // done; `stream_id` is its UploadStreams::Open id. `metrics` (optional) counts the
  // stream, its bytes and its outcome.
  UploadReactor(grpc::CallbackServerContext* ctx, Executor* executor, Response* response,
                BeginFn begin, ReplyFn reply, UploadStreams* streams = nullptr,
                uint64_t stream_id = 0,
                std::unique_ptr<metrics::ServerMetrics::StreamScope> metrics = nullptr)
      : ctx_(ctx),
        executor_(executor),
        response_(response),
        begin_(std::move(begin)),
        reply_(std::move(reply)),
        streams_(streams),
        stream_id_(stream_id),
        metrics_(std::move(metrics)) {
    Read();
  }

  void OnReadDone(bool ok) override {
    TsanTakeOver(this);
    if (streams_ != nullptr) streams_->Working(stream_id_);
    if (!ok) {
      if (ctx_->IsCancelled()) {  // the connection broke: a resumable upload is kept
        Fail(rounds::TensorUpload::EndKind::kBroken,
             absl::CancelledError("the upload stream broke off"));
      } else {  // the client closed its side before the trailer
        Fail(rounds::TensorUpload::EndKind::kNoTrailer,
             absl::InvalidArgumentError("stream ended before its trailer; nothing was stored"));
      }
      return;
    }
    absl::Status st;
    switch (request_.part_case()) {
      case Request::kHeader: {
        if (upload_ != nullptr) {
          st = absl::InvalidArgumentError("second header in one upload");
          break;
        }
        // Beginning may re-hash a resumed upload's stored prefix (gigabytes): never on
        // a callback thread. No read is outstanding until this continues.
        executor_->Run([this] {
          auto upload = begin_(request_);
          if (!upload.ok()) {
            FinishWith(upload.status());
            return;
          }
          upload_ = std::move(*upload);
          Read();
        });
        return;
      }
      case Request::kChunk:
        if (upload_ == nullptr) {
          st = absl::InvalidArgumentError("chunk before the header");
          break;
        }
        // Storing a chunk is a RocksDB write, and RocksDB queues every write behind the
        // one in progress, a synced commit's too: never on a callback thread. No read is
        // outstanding until this continues, so chunks stay in order.
        executor_->Run([this] {
          absl::Status accepted = upload_->Accept(request_.chunk());
          if (!accepted.ok()) {
            Fail(rounds::TensorUpload::EndKind::kRejected, accepted);
            return;
          }
          if (metrics_ != nullptr) metrics_->AddBytes(request_.chunk().data().size());
          Read();
        });
        return;
      case Request::kTrailer:
        if (upload_ == nullptr) {
          st = absl::InvalidArgumentError("trailer before the header");
          break;
        }
        executor_->Run([this] { Commit(); });
        return;
      default:
        st = absl::InvalidArgumentError("empty message: send a header, chunk or trailer");
    }
    if (!st.ok()) {
      Fail(rounds::TensorUpload::EndKind::kRejected, st);
      return;
    }
    Read();
  }

  void OnDone() override {
    TsanTakeOver(this);
    if (streams_ != nullptr) streams_->Close(stream_id_);
    delete this;
  }

 private:
  // The stream stops counting against the limits before the client can hear the
  // outcome, so a client that retries at once is not refused for its own finished call.
  void FinishWith(const absl::Status& status) {
    if (streams_ != nullptr) streams_->Close(stream_id_);
    if (metrics_ != nullptr) metrics_->SetOutcome(status);
    TsanHandOff(this);
    this->Finish(ToGrpcStatus(status));
  }

  void Read() {
    if (streams_ != nullptr) streams_->Waiting(stream_id_);
    TsanHandOff(this);
    this->StartRead(&request_);
  }

  void Commit() {
    auto result = upload_->Finish(request_.trailer());
    if (result.ok()) reply_(*result, response_);
    upload_.reset();  // removes the stored data unless it was committed
    FinishWith(result.status());
  }

  // Removing stored chunks is a synced write: do it off the callback thread. The upload
  // says what it kept, so the client is told the truth.
  void Fail(rounds::TensorUpload::EndKind kind, const absl::Status& why) {
    executor_->Run([this, kind, why] {
      absl::Status st = upload_ == nullptr ? why : upload_->Abandon(kind, why);
      upload_.reset();
      FinishWith(st);
    });
  }

  grpc::CallbackServerContext* ctx_;
  Executor* executor_;
  Response* response_;
  BeginFn begin_;
  ReplyFn reply_;
  UploadStreams* streams_;
  uint64_t stream_id_;
  std::unique_ptr<metrics::ServerMetrics::StreamScope> metrics_;  // ends in the destructor
  Request request_;
  std::unique_ptr<rounds::TensorUpload> upload_;
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_UPLOAD_REACTOR_H_
