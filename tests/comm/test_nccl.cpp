// The Communicator concept over NCCL (protomem/comm/nccl.hpp): one rank per visible GPU, each rank a
// thread with its own device, stream and communicator (ncclCommInitAll). Exits 77 ("skipped")
// where no GPU is usable. On one GPU this is W = 1 (NCCL allows one rank per device), which still
// runs every NCCL call the adapter makes (broadcast group, all-gather, all-reduce, staging).
#define CATCH_CONFIG_RUNNER
#include <cuda_runtime_api.h>
#include <nccl.h>

#include <catch2/catch.hpp>
#include <cstdio>
#include <protomem/comm/nccl.hpp>
#include <string>
#include <thread>
#include <vector>

#include "support/comm_cases.hpp"

namespace {

int device_count = 0;

// Runs body(comm, expect) on one thread per device; returns every rank's failures.
template <class Body>
std::string on_every_device(Body body) {
  const int W = device_count;
  std::vector<ncclComm_t> comms(static_cast<std::size_t>(W));
  std::vector<int> devices(static_cast<std::size_t>(W));
  for (int d = 0; d < W; ++d) devices[std::size_t(d)] = d;
  if (ncclCommInitAll(comms.data(), W, devices.data()) != ncclSuccess)
    return "ncclCommInitAll failed";
  std::vector<std::string> reports(static_cast<std::size_t>(W));
  std::vector<std::thread> threads;
  for (int d = 0; d < W; ++d) {
    threads.emplace_back([&, d] {
      protomem::test::Expect expect;
      try {
        cudaSetDevice(d);
        cudaStream_t stream = nullptr;
        cudaStreamCreate(&stream);
        {
          protomem::NcclCommunicator comm(comms[std::size_t(d)], stream);
          body(comm, stream, expect);
        }
        cudaStreamDestroy(stream);
      } catch (const std::exception& e) {
        expect(false, std::string("threw: ") + e.what());
      }
      reports[std::size_t(d)] = expect.report();
    });
  }
  for (std::thread& t : threads) t.join();
  for (ncclComm_t c : comms) ncclCommDestroy(c);
  std::string all;
  for (const std::string& r : reports) all += r;
  return all;
}

}  // namespace

TEST_CASE("NCCL collectives on host memory (staged)", "[nccl]") {
  CHECK(on_every_device([](protomem::NcclCommunicator& comm, cudaStream_t, auto& expect) {
          protomem::test::check_collectives(comm, expect);
          protomem::test::check_error_agreement(comm, expect);
        }) == "");
}

TEST_CASE("NCCL collectives on device memory, on the caller's stream", "[nccl]") {
  CHECK(on_every_device([](protomem::NcclCommunicator& comm, cudaStream_t stream, auto& expect) {
          const int rank = comm.rank(), W = comm.world_size();
          const std::int64_t D = 5;
          // Uneven rows: rank r has r + 1 rows (all equal only when W = 1, which takes the
          // ncclAllGather path; the broadcast path is taken for W > 1).
          std::vector<std::int64_t> counts(static_cast<std::size_t>(W));
          std::int64_t total = 0;
          for (int r = 0; r < W; ++r) total += counts[std::size_t(r)] = (r + 1) * D;
          std::vector<float> mine(static_cast<std::size_t>(counts[std::size_t(rank)]));
          for (std::size_t i = 0; i < mine.size(); ++i) {
            mine[i] = protomem::test::comm_value<float>(rank, std::int64_t(i));
          }
          float *d_mine = nullptr, *d_all = nullptr;
          cudaMalloc(&d_mine, sizeof(float) * mine.size());
          cudaMalloc(&d_all, sizeof(float) * std::size_t(total));
          cudaMemcpyAsync(d_mine, mine.data(), sizeof(float) * mine.size(), cudaMemcpyHostToDevice,
                          stream);
          comm.all_gather_device(d_mine, std::int64_t(mine.size()), d_all, counts.data());
          comm.all_reduce_device(d_all, total, protomem::ReduceOp::sum);  // B_total x D sum
          std::vector<float> all(static_cast<std::size_t>(total));
          cudaMemcpyAsync(all.data(), d_all, sizeof(float) * all.size(), cudaMemcpyDeviceToHost,
                          stream);
          comm.synchronize();
          std::vector<float> want;
          for (int r = 0; r < W; ++r) {
            for (std::int64_t i = 0; i < counts[std::size_t(r)]; ++i) {
              want.push_back(float(W) * protomem::test::comm_value<float>(r, i));
            }
          }
          expect.context = "rank " + std::to_string(rank) + ": device all_gather + all_reduce";
          expect(all == want, "W x the gathered rows");
          cudaFree(d_mine);
          cudaFree(d_all);
        }) == "");
}

int main(int argc, char** argv) {
  if (cudaGetDeviceCount(&device_count) != cudaSuccess || device_count < 1) {
    std::printf("test_nccl: no usable GPU - skipped\n");
    return 77;
  }
  std::printf("test_nccl: %d GPU(s), one NCCL rank each\n", device_count);
  return Catch::Session().run(argc, argv);
}
