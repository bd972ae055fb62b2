// protomem::MpiCommunicator - the Communicator concept (protomem/comm/communicator.hpp) over MPI, for
// CPU training launched with mpirun. CMake target protomem::mpi (links MPI::MPI_CXX, C API only).
//
// Requires: MPI initialised (MPI_Init or MPI_Init_thread) before construction, and every rank of
// the communicator constructing it and calling its collectives in the same order from one thread
// at a time (any MPI thread level). Host memory only.
// Guarantees: the constructor duplicates the caller's communicator (MPI_Comm_dup), so protomem's
// collectives never match the caller's own messages, and sets MPI_ERRORS_RETURN on the duplicate:
// an error the MPI library reports becomes a protomem::Error naming the call and MPI's message
// instead of aborting the job. (A peer that dies is reported or not as the MPI implementation
// decides; Open MPI's mpirun ends the whole job when a rank exits abnormally, so nothing hangs.)
// The destructor frees the duplicate unless MPI is already finalised.
// Limits: MPI-3 counts are int: one collective carries at most INT_MAX values per rank and in
// total (checked; a protomem::Error names the count).
#pragma once

#include <mpi.h>

#include <climits>
#include <cstdint>
#include <protomem/comm/communicator.hpp>
#include <protomem/error.hpp>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace protomem {

class MpiCommunicator {
 public:
  /// A communicator over the ranks of `comm` (MPI_COMM_WORLD by default), duplicated.
  explicit MpiCommunicator(MPI_Comm comm = MPI_COMM_WORLD) {
    int initialised = 0;
    MPI_Initialized(&initialised);
    if (!initialised) detail::fail("MpiCommunicator: MPI is not initialised (call MPI_Init first)");
    check(MPI_Comm_dup(comm, &comm_), "MPI_Comm_dup");
    check(MPI_Comm_set_errhandler(comm_, MPI_ERRORS_RETURN), "MPI_Comm_set_errhandler");
    check(MPI_Comm_rank(comm_, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(comm_, &size_), "MPI_Comm_size");
  }
  ~MpiCommunicator() {
    int finalised = 1;
    MPI_Finalized(&finalised);
    if (comm_ != MPI_COMM_NULL && !finalised) MPI_Comm_free(&comm_);
  }
  MpiCommunicator(const MpiCommunicator&) = delete;
  MpiCommunicator& operator=(const MpiCommunicator&) = delete;
  MpiCommunicator(MpiCommunicator&& other) noexcept { *this = std::move(other); }
  MpiCommunicator& operator=(MpiCommunicator&& other) noexcept {
    std::swap(comm_, other.comm_);
    std::swap(rank_, other.rank_);
    std::swap(size_, other.size_);
    std::swap(counter_, other.counter_);
    return *this;
  }

  int rank() const { return rank_; }
  int world_size() const { return size_; }
  CommTraffic traffic() const { return counter_.totals; }
  /// protomem's duplicate of the caller's communicator.
  MPI_Comm comm() const { return comm_; }

  template <class T>
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    detail::check_all_gather_args("MPI", mine, count, all, counts, rank_, size_);
    recv_counts_.resize(static_cast<std::size_t>(size_));
    displacements_.resize(static_cast<std::size_t>(size_));
    std::int64_t offset = 0;
    for (int r = 0; r < size_; ++r) {
      recv_counts_[static_cast<std::size_t>(r)] = as_int(counts[r], "all_gather count");
      displacements_[static_cast<std::size_t>(r)] = as_int(offset, "all_gather total");
      offset += counts[r];
    }
    as_int(offset, "all_gather total");
    check(MPI_Allgatherv(mine, static_cast<int>(count), type<T>(), all, recv_counts_.data(),
                         displacements_.data(), type<T>(), comm_),
          "MPI_Allgatherv");
    counter_.all_gather(sizeof(T), counts, rank_, size_);
  }

  template <class T>
  void all_reduce(T* data, std::int64_t count, ReduceOp op) {
    static_assert(detail::is_comm_value_v<T>, "all_reduce carries int64, uint64, float or double");
    if (count < 0) detail::fail("MPI all_reduce on rank ", rank_, ": count = ", count, " < 0");
    if (count > 0) {
      check(MPI_Allreduce(MPI_IN_PLACE, data, as_int(count, "all_reduce count"), type<T>(),
                          op == ReduceOp::sum ? MPI_SUM : MPI_MAX, comm_),
            "MPI_Allreduce");
    }
    counter_.all_reduce(sizeof(T), count, size_);
  }

 private:
  template <class T>
  static MPI_Datatype type() {
    static_assert(detail::is_comm_value_v<T>, "MPI collectives carry int64, uint64, float, double");
    if constexpr (std::is_same_v<T, std::int64_t>) return MPI_INT64_T;
    if constexpr (std::is_same_v<T, std::uint64_t>) return MPI_UINT64_T;
    if constexpr (std::is_same_v<T, float>) return MPI_FLOAT;
    if constexpr (std::is_same_v<T, double>) return MPI_DOUBLE;
  }

  int as_int(std::int64_t n, const char* what) const {
    if (n > INT_MAX) {
      detail::fail("MPI on rank ", rank_, ": ", what, " = ", n,
                   " values is beyond MPI's int counts (at most ", INT_MAX, ")");
    }
    return static_cast<int>(n);
  }

  void check(int code, const char* call) const {
    if (code == MPI_SUCCESS) return;
    char text[MPI_MAX_ERROR_STRING] = {};
    int length = 0;
    MPI_Error_string(code, text, &length);
    detail::fail(call, " failed on rank ", rank_, ": ", std::string(text, std::size_t(length)));
  }

  MPI_Comm comm_ = MPI_COMM_NULL;
  int rank_ = 0;
  int size_ = 1;
  detail::TrafficCounter counter_;
  std::vector<int> recv_counts_, displacements_;
};

static_assert(check_communicator<MpiCommunicator>());

}  // namespace protomem
