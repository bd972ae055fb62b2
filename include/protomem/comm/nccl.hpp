// protomem::NcclCommunicator - the Communicator concept (protomem/comm/communicator.hpp) over NCCL, for
// the CUDA backend: one rank per GPU, on the caller's CUDA stream. CMake target protomem::nccl
// (links NCCL and the CUDA runtime from the CUDA toolkit; plain C++, no nvcc needed).
//
// Two sets of collectives:
//   - the concept's members (all_gather, all_reduce) take HOST memory, as every Communicator's do:
//     the bookkeeping's integers and small arrays. They stage the values through a device buffer
//     owned by the communicator, run the NCCL collective on the stream and synchronise the stream
//     before returning;
//   - all_gather_device / all_reduce_device take DEVICE memory (embeddings, per-row softmax
//     statistics, B_total x D sums) and are only enqueued on the stream: they return at once,
//     ordered with the caller's kernels on that stream, as the CUDA backend's own work is.
// Uneven all-gather: with equal counts, one ncclAllGather; otherwise one ncclBroadcast per rank
// that contributes (rank r is the root of its own block), inside ncclGroupStart/ncclGroupEnd so
// that NCCL runs them as one operation. Every rank knows the counts, so every rank issues the same
// broadcasts.
//
// Requires: the ncclComm_t and the stream outlive the communicator (it borrows both); the current
// CUDA device is the communicator's; every rank calls the collectives in the same order.
// Guarantees: an error NCCL or CUDA reports (at the call, or asynchronously, checked with
// ncclCommGetAsyncError after each synchronised collective) becomes a protomem::Error naming the
// call and the rank. A peer that dies is not detected by NCCL in general: the caller's watchdog
// (e.g. ncclCommAbort after a timeout) is what turns that into an error.
#pragma once

#include <cuda_runtime_api.h>
#include <nccl.h>

#include <cstdint>
#include <protomem/comm/communicator.hpp>
#include <protomem/error.hpp>
#include <string>
#include <type_traits>
#include <vector>

namespace protomem {

class NcclCommunicator {
 public:
  NcclCommunicator(ncclComm_t comm, cudaStream_t stream) : comm_(comm), stream_(stream) {
    if (comm_ == nullptr) detail::fail("NcclCommunicator: the NCCL communicator is null");
    check(ncclCommUserRank(comm_, &rank_), "ncclCommUserRank");
    check(ncclCommCount(comm_, &size_), "ncclCommCount");
  }
  ~NcclCommunicator() {
    if (scratch_ != nullptr) cudaFree(scratch_);
  }
  NcclCommunicator(const NcclCommunicator&) = delete;
  NcclCommunicator& operator=(const NcclCommunicator&) = delete;

  int rank() const { return rank_; }
  int world_size() const { return size_; }
  CommTraffic traffic() const { return counter_.totals; }
  cudaStream_t stream() const { return stream_; }
  /// Later collectives run on `stream` (e.g. a trainer that changes streams between steps).
  void set_stream(cudaStream_t stream) { stream_ = stream; }

  // ---- the Communicator concept: host memory, synchronous ---------------------------------------

  template <class T>
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    detail::check_all_gather_args("NCCL", mine, count, all, counts, rank_, size_);
    std::int64_t total = 0;
    for (int r = 0; r < size_; ++r) total += counts[r];
    T* device = scratch<T>(count + total);  // [mine | all]
    if (count > 0) {
      cuda(cudaMemcpyAsync(device, mine, sizeof(T) * std::size_t(count), cudaMemcpyHostToDevice,
                           stream_),
           "cudaMemcpyAsync");
    }
    all_gather_device(device, count, device + count, counts);
    if (total > 0) {
      cuda(cudaMemcpyAsync(all, device + count, sizeof(T) * std::size_t(total),
                           cudaMemcpyDeviceToHost, stream_),
           "cudaMemcpyAsync");
    }
    synchronize();
  }

  template <class T>
  void all_reduce(T* data, std::int64_t count, ReduceOp op) {
    static_assert(detail::is_comm_value_v<T>, "all_reduce carries int64, uint64, float or double");
    if (count < 0) detail::fail("NCCL all_reduce on rank ", rank_, ": count = ", count, " < 0");
    if (count == 0) {
      counter_.all_reduce(sizeof(T), 0, size_);
      return;
    }
    T* device = scratch<T>(count);
    const std::size_t bytes = sizeof(T) * std::size_t(count);
    cuda(cudaMemcpyAsync(device, data, bytes, cudaMemcpyHostToDevice, stream_), "cudaMemcpyAsync");
    all_reduce_device(device, count, op);
    cuda(cudaMemcpyAsync(data, device, bytes, cudaMemcpyDeviceToHost, stream_), "cudaMemcpyAsync");
    synchronize();
  }

  // ---- device memory, enqueued on the stream ----------------------------------------------------

  /// all_gather on device buffers; `counts` is host memory. Returns once enqueued.
  template <class T>
  void all_gather_device(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    detail::check_all_gather_args("NCCL", mine, count, all, counts, rank_, size_);
    bool equal = true;
    for (int r = 1; r < size_; ++r) equal = equal && counts[r] == counts[0];
    if (equal) {
      if (counts[0] > 0) {
        check(ncclAllGather(mine, all, std::size_t(count), type<T>(), comm_, stream_),
              "ncclAllGather");
      }
    } else {
      check(ncclGroupStart(), "ncclGroupStart");
      std::int64_t offset = 0;
      ncclResult_t first_error = ncclSuccess;
      for (int r = 0; r < size_; ++r) {
        if (counts[r] > 0) {
          const void* send = r == rank_ ? static_cast<const void*>(mine) : all + offset;
          const ncclResult_t result = ncclBroadcast(send, all + offset, std::size_t(counts[r]),
                                                    type<T>(), r, comm_, stream_);
          if (first_error == ncclSuccess) first_error = result;
        }
        offset += counts[r];
      }
      const ncclResult_t ended = ncclGroupEnd();  // always closed, even after an error
      check(first_error, "ncclBroadcast");
      check(ended, "ncclGroupEnd");
    }
    counter_.all_gather(sizeof(T), counts, rank_, size_);
  }

  /// all_reduce in place on a device buffer. Returns once enqueued.
  template <class T>
  void all_reduce_device(T* data, std::int64_t count, ReduceOp op) {
    static_assert(detail::is_comm_value_v<T>, "all_reduce carries int64, uint64, float or double");
    if (count < 0) detail::fail("NCCL all_reduce on rank ", rank_, ": count = ", count, " < 0");
    if (count > 0) {
      check(ncclAllReduce(data, data, std::size_t(count), type<T>(),
                          op == ReduceOp::sum ? ncclSum : ncclMax, comm_, stream_),
            "ncclAllReduce");
    }
    counter_.all_reduce(sizeof(T), count, size_);
  }

  /// Waits for the stream, then reports an asynchronous NCCL error, if any.
  void synchronize() {
    cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    ncclResult_t async = ncclSuccess;
    check(ncclCommGetAsyncError(comm_, &async), "ncclCommGetAsyncError");
    check(async, "an asynchronous NCCL operation");
  }

 private:
  template <class T>
  static ncclDataType_t type() {
    if constexpr (std::is_same_v<T, std::int64_t>) return ncclInt64;
    if constexpr (std::is_same_v<T, std::uint64_t>) return ncclUint64;
    if constexpr (std::is_same_v<T, float>) return ncclFloat32;
    if constexpr (std::is_same_v<T, double>) return ncclFloat64;
  }

  // A device buffer of at least n values of T, grown (never shrunk) as needed.
  template <class T>
  T* scratch(std::int64_t n) {
    const std::size_t bytes = sizeof(T) * std::size_t(n > 0 ? n : 1);
    if (bytes > scratch_bytes_) {
      cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");  // the old one may be in use
      if (scratch_ != nullptr) cudaFree(scratch_);
      scratch_ = nullptr;
      scratch_bytes_ = 0;
      cuda(cudaMalloc(&scratch_, bytes), "cudaMalloc");
      scratch_bytes_ = bytes;
    }
    return static_cast<T*>(scratch_);
  }

  void check(ncclResult_t result, const char* call) const {
    if (result == ncclSuccess) return;
    detail::fail(call, " failed on rank ", rank_, ": ", ncclGetErrorString(result));
  }
  void cuda(cudaError_t result, const char* call) const {
    if (result == cudaSuccess) return;
    detail::fail(call, " failed on rank ", rank_, ": ", cudaGetErrorString(result));
  }

  ncclComm_t comm_;
  cudaStream_t stream_;
  int rank_ = 0;
  int size_ = 1;
  void* scratch_ = nullptr;
  std::size_t scratch_bytes_ = 0;
  detail::TrafficCounter counter_;
};

static_assert(check_communicator<NcclCommunicator>());

}  // namespace protomem
