// bench_grpc_floor: what gRPC itself and hashing cost on this machine, with no storage and
// no coldfuse logic, so the benchmark's transfer figures can be set against a true floor.
// Prints one JSON object on stdout. GB/s means 1e9 bytes per second.
//
//   grpc_download  a server (callback API, as coldfused) streams --mib messages of
//                  v1::PullBaseResponse, each one 1 MiB chunk made once and reused; the
//                  client (sync API, as coldfusectl) reads and drops them
//   grpc_upload    the client streams --mib v1::PushContributionRequest chunks of 1 MiB;
//                  the server's reactor reads and drops them
//   sha256         OpenSSL SHA-256 over a 1 MiB buffer, --mib times (coldfuse hashes every
//                  byte once on each side of a transfer)
// Server and client run in this one process, on loopback, best of --reps.
//
// Usage: bench_grpc_floor [--mib=2048] [--reps=3]
#include <grpcpp/grpcpp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "coldfuse/v1/coldfuse.grpc.pb.h"
#include "common/sha256.h"

namespace {

constexpr size_t kMiB = size_t{1} << 20;

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

class Floor final : public coldfuse::v1::Contributor::CallbackService {
 public:
  explicit Floor(size_t mib) : mib_(mib) {
    chunk_.mutable_chunk()->set_data(std::string(kMiB, '\x5a'));
  }

  grpc::ServerWriteReactor<coldfuse::v1::PullBaseResponse>* PullBase(
      grpc::CallbackServerContext*, const coldfuse::v1::PullBaseRequest*) override {
    class Writer final : public grpc::ServerWriteReactor<coldfuse::v1::PullBaseResponse> {
     public:
      Writer(const coldfuse::v1::PullBaseResponse* chunk, size_t n) : chunk_(chunk), left_(n) {
        Next();
      }
      void OnWriteDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::CANCELLED);
          return;
        }
        Next();
      }
      void OnDone() override { delete this; }

     private:
      void Next() {
        if (left_ == 0) {
          Finish(grpc::Status::OK);
          return;
        }
        --left_;
        StartWrite(chunk_);
      }
      const coldfuse::v1::PullBaseResponse* chunk_;
      size_t left_;
    };
    return new Writer(&chunk_, mib_);
  }

  grpc::ServerReadReactor<coldfuse::v1::PushContributionRequest>* PushContribution(
      grpc::CallbackServerContext*, coldfuse::v1::ContributionReceipt*) override {
    class Reader final : public grpc::ServerReadReactor<coldfuse::v1::PushContributionRequest> {
     public:
      Reader() { StartRead(&request_); }
      void OnReadDone(bool ok) override {
        if (!ok) {
          Finish(grpc::Status::OK);
          return;
        }
        StartRead(&request_);
      }
      void OnDone() override { delete this; }

     private:
      coldfuse::v1::PushContributionRequest request_;
    };
    return new Reader();
  }

 private:
  const size_t mib_;
  coldfuse::v1::PullBaseResponse chunk_;
};

std::shared_ptr<grpc::Channel> Channel(int port) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(4 << 20);
  return grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port),
                                   grpc::InsecureChannelCredentials(), args);
}

double Download(const std::shared_ptr<grpc::Channel>& channel, size_t mib) {
  auto stub = coldfuse::v1::Contributor::NewStub(channel);
  grpc::ClientContext ctx;
  coldfuse::v1::PullBaseRequest req;
  const double t0 = Now();
  auto reader = stub->PullBase(&ctx, req);
  coldfuse::v1::PullBaseResponse m;
  size_t bytes = 0;
  while (reader->Read(&m)) bytes += m.chunk().data().size();
  const double dt = Now() - t0;
  grpc::Status st = reader->Finish();
  if (!st.ok() || bytes != mib * kMiB) {
    std::fprintf(stderr, "download failed: %s (%zu bytes)\n", st.error_message().c_str(), bytes);
    std::exit(1);
  }
  return static_cast<double>(bytes) / dt / 1e9;
}

double Upload(const std::shared_ptr<grpc::Channel>& channel, size_t mib) {
  auto stub = coldfuse::v1::Contributor::NewStub(channel);
  grpc::ClientContext ctx;
  coldfuse::v1::ContributionReceipt receipt;
  coldfuse::v1::PushContributionRequest req;
  req.mutable_chunk()->set_data(std::string(kMiB, '\x5a'));
  const double t0 = Now();
  auto writer = stub->PushContribution(&ctx, &receipt);
  for (size_t i = 0; i < mib; ++i) {
    if (!writer->Write(req)) break;
  }
  writer->WritesDone();
  grpc::Status st = writer->Finish();
  const double dt = Now() - t0;
  if (!st.ok()) {
    std::fprintf(stderr, "upload failed: %s\n", st.error_message().c_str());
    std::exit(1);
  }
  return static_cast<double>(mib * kMiB) / dt / 1e9;
}

double Sha(size_t mib) {
  std::string buf(kMiB, '\x5a');
  coldfuse::Sha256 sha;
  const double t0 = Now();
  for (size_t i = 0; i < mib; ++i) sha.Update(buf);
  std::string d = sha.Finish();
  const double dt = Now() - t0;
  if (d.size() != 32) std::exit(1);
  return static_cast<double>(mib * kMiB) / dt / 1e9;
}

std::string Runs(const std::vector<double>& v) {
  std::string s = "[";
  for (size_t i = 0; i < v.size(); ++i) s += (i ? ", " : "") + std::to_string(v[i]);
  return s + "]";
}

}  // namespace

int main(int argc, char** argv) {
  size_t mib = 2048;
  int reps = 3;
  for (int i = 1; i < argc; ++i) {
    if (std::strncmp(argv[i], "--mib=", 6) == 0) {
      mib = std::strtoull(argv[i] + 6, nullptr, 10);
    } else if (std::strncmp(argv[i], "--reps=", 7) == 0) {
      reps = std::atoi(argv[i] + 7);
    } else {
      std::fprintf(stderr, "usage: bench_grpc_floor [--mib=2048] [--reps=3]\n");
      return 2;
    }
  }
  if (mib == 0 || reps < 1) {
    std::fprintf(stderr, "--mib and --reps must be positive\n");
    return 2;
  }
  Floor service(mib);
  int port = 0;
  grpc::ServerBuilder builder;
  builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port);
  builder.SetMaxReceiveMessageSize(4 << 20);
  builder.RegisterService(&service);
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server == nullptr || port == 0) {
    std::fprintf(stderr, "cannot start the server\n");
    return 1;
  }
  auto channel = Channel(port);
  std::vector<double> down, up, sha;
  for (int r = 0; r < reps; ++r) {  // alternating, so drift hits all three alike
    down.push_back(Download(channel, mib));
    up.push_back(Upload(channel, mib));
    sha.push_back(Sha(mib));
  }
  server->Shutdown();
  std::printf(
      "{\"mib\": %zu, \"grpc_download_gbps\": %f, \"grpc_download_runs_gbps\": %s, "
      "\"grpc_upload_gbps\": %f, \"grpc_upload_runs_gbps\": %s, \"sha256_gbps\": %f, "
      "\"sha256_runs_gbps\": %s}\n",
      mib, *std::max_element(down.begin(), down.end()), Runs(down).c_str(),
      *std::max_element(up.begin(), up.end()), Runs(up).c_str(),
      *std::max_element(sha.begin(), sha.end()), Runs(sha).c_str());
  return 0;
}
