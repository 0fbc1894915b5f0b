// A server-streaming reactor whose messages come from a producer that does I/O (reads
// RocksDB or files): the producer runs on the executor, never on gRPC's callback
// threads, one message ahead of the one being written, so memory stays at two messages
// whatever the stream's length. Used by PullBase and Backup.
#ifndef COLDFUSE_SERVER_SERVICE_STREAM_WRITER_H_
#define COLDFUSE_SERVER_SERVICE_STREAM_WRITER_H_

#include <grpcpp/grpcpp.h>

#include <functional>
#include <optional>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/tsan_handoff.h"
#include "server/service/executor.h"
#include "server/service/grpc_status.h"

namespace coldfuse::service {

template <typename Response>
class ProducerWriteReactor final : public grpc::ServerWriteReactor<Response> {
 public:
  // The next message; nullopt once every message was produced (the call then ends OK);
  // an error ends the call with it. Called on the executor, one call at a time.
  using Produce = std::function<absl::StatusOr<std::optional<Response>>()>;

  // `first` (if set) is written before anything is produced (e.g. a header known now).
  ProducerWriteReactor(Executor* executor, Produce produce,
                       std::optional<Response> first = std::nullopt)
      : executor_(executor), produce_(std::move(produce)) {
    if (first.has_value()) {
      absl::MutexLock l(&mu_);
      next_ = std::move(*first);
    }
    Pump();
  }

  void OnWriteDone(bool ok) override {
    TsanTakeOver(this);
    {
      absl::MutexLock l(&mu_);
      writing_ = false;
      if (!ok) {
        finished_ = true;  // the client went away: nothing more is written
      }
    }
    if (!ok) {
      TsanHandOff(this);
      this->Finish(grpc::Status(grpc::StatusCode::CANCELLED, "client went away"));
      return;
    }
    Pump();
  }

  void OnDone() override {
    TsanTakeOver(this);
    bool last;
    {
      absl::MutexLock l(&mu_);
      done_ = true;
      last = tasks_ == 0;
    }
    if (last) delete this;
  }

 private:
  // Writes the next message once it is produced and the previous write is done, and
  // starts producing the one after; finishes after the last. Any thread; decisions under
  // mu_, gRPC calls outside it.
  void Pump() ABSL_LOCKS_EXCLUDED(mu_) {
    enum { kNothing, kWrite, kFinish } act = kNothing;
    grpc::Status status;
    bool produce = false;
    {
      absl::MutexLock l(&mu_);
      if (finished_) return;
      if (!writing_ && next_.has_value()) {
        if (!next_->ok()) {
          finished_ = true;
          status = ToGrpcStatus(next_->status());
          act = kFinish;
        } else {
          message_ = std::move(**next_);
          writing_ = true;
          act = kWrite;
        }
        next_.reset();
      } else if (!writing_ && !next_.has_value() && produced_all_ && !producing_) {
        finished_ = true;
        act = kFinish;
      }
      if (!finished_ && !producing_ && !next_.has_value() && !produced_all_) {
        producing_ = true;
        ++tasks_;
        produce = true;
      }
    }
    if (produce) executor_->Run([this] { ProduceNext(); });
    if (act == kWrite) {
      TsanHandOff(this);
      this->StartWrite(&message_);
    } else if (act == kFinish) {
      TsanHandOff(this);
      this->Finish(status);
    }
  }

  // On the executor: produces the message after the one being written.
  void ProduceNext() ABSL_LOCKS_EXCLUDED(mu_) {
    absl::StatusOr<std::optional<Response>> m = produce_();
    {
      absl::MutexLock l(&mu_);
      if (!m.ok()) {
        next_ = m.status();
        produced_all_ = true;
      } else if (m->has_value()) {
        next_ = std::move(**m);
      } else {
        produced_all_ = true;
      }
      producing_ = false;
    }
    Pump();
    bool last;
    {
      absl::MutexLock l(&mu_);
      last = --tasks_ == 0 && done_;
    }
    if (last) delete this;
  }

  Executor* const executor_;
  const Produce produce_;  // called by one ProduceNext at a time
  Response message_;       // gRPC's while writing_

  absl::Mutex mu_;
  std::optional<absl::StatusOr<Response>> next_ ABSL_GUARDED_BY(mu_);
  bool writing_ ABSL_GUARDED_BY(mu_) = false;       // StartWrite(&message_) outstanding
  bool producing_ ABSL_GUARDED_BY(mu_) = false;     // a ProduceNext is filling next_
  bool produced_all_ ABSL_GUARDED_BY(mu_) = false;  // the producer said so (or failed)
  bool finished_ ABSL_GUARDED_BY(mu_) = false;      // Finish called (or being called)
  bool done_ ABSL_GUARDED_BY(mu_) = false;          // OnDone ran
  int tasks_ ABSL_GUARDED_BY(mu_) = 0;              // ProduceNext tasks not yet returned
};

}  // namespace coldfuse::service

#endif  // COLDFUSE_SERVER_SERVICE_STREAM_WRITER_H_
