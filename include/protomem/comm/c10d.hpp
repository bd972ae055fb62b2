// protomem::C10dCommunicator - the Communicator concept (protomem/comm/communicator.hpp) over a
// torch.distributed process group (c10d::ProcessGroup), so that a LibTorch trainer passes the
// process group it already has (Gloo on the CPU; any backend whose collectives accept CPU
// tensors). CMake target protomem::c10d (links LibTorch).
//
// Requires: every rank of the group calls the collectives in the same order; the group outlives
// the communicator (it holds a reference). Host memory only.
// Guarantees: each collective waits for its Work to finish; an error the engine reports (including
// Gloo's timeout when a peer is gone: the group's Options::timeout) becomes a protomem::Error
// naming the collective and the rank, never a hang beyond that timeout.
//
// Uneven all-gather: ProcessGroup::allgather needs equally sized tensors on every rank, so each
// rank pads its values to the largest count, all-gathers the padded tensors, and copies the real
// values out (the counts are known to every rank, so nothing else is exchanged). It moves
// W * max(counts) values instead of sum(counts), and traffic() counts the padded bytes. unsigned
// 64-bit values travel as int64 (LibTorch 1.13 has no uint64 dtype): sums are the same bits
// modulo 2^64; for max, each value is offset by 2^63 (x ^ 2^63 orders as signed exactly as x does
// as unsigned) and the result offset back.
#pragma once

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <protomem/comm/communicator.hpp>
#include <protomem/error.hpp>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <type_traits>
#include <vector>

namespace protomem {

class C10dCommunicator {
 public:
  explicit C10dCommunicator(c10::intrusive_ptr<c10d::ProcessGroup> group)
      : group_(std::move(group)) {
    if (!group_) detail::fail("C10dCommunicator: the process group is null");
    rank_ = group_->getRank();
    size_ = group_->getSize();
  }

  int rank() const { return rank_; }
  int world_size() const { return size_; }
  CommTraffic traffic() const { return counter_.totals; }
  const c10::intrusive_ptr<c10d::ProcessGroup>& group() const { return group_; }

  template <class T>
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    detail::check_all_gather_args("c10d", mine, count, all, counts, rank_, size_);
    const std::int64_t padded = *std::max_element(counts, counts + size_);
    counter_.all_gather_fixed(sizeof(T), padded, size_);
    if (padded == 0) return;  // every rank knows: nobody calls the engine
    const at::TensorOptions options = at::TensorOptions().dtype(dtype<T>());
    std::vector<at::Tensor> input{at::zeros({padded}, options)};
    if (count > 0) std::memcpy(input[0].data_ptr(), mine, sizeof(T) * std::size_t(count));
    std::vector<std::vector<at::Tensor>> output(1);
    for (int r = 0; r < size_; ++r) output[0].push_back(at::empty({padded}, options));
    run("allgather", [&] { return group_->allgather(output, input); });
    std::int64_t offset = 0;
    for (int r = 0; r < size_; ++r) {
      if (counts[r] > 0) {
        std::memcpy(all + offset, output[0][std::size_t(r)].data_ptr(),
                    sizeof(T) * std::size_t(counts[r]));
      }
      offset += counts[r];
    }
  }

  template <class T>
  void all_reduce(T* data, std::int64_t count, ReduceOp op) {
    static_assert(detail::is_comm_value_v<T>, "all_reduce carries int64, uint64, float or double");
    if (count < 0) detail::fail("c10d all_reduce on rank ", rank_, ": count = ", count, " < 0");
    counter_.all_reduce(sizeof(T), count, size_);
    if (count == 0) return;
    c10d::AllreduceOptions options;
    options.reduceOp = op == ReduceOp::sum ? c10d::ReduceOp::SUM : c10d::ReduceOp::MAX;
    if constexpr (std::is_same_v<T, std::uint64_t>) {
      constexpr std::uint64_t bias = std::uint64_t{1} << 63;
      std::vector<at::Tensor> tensors{at::empty({count}, at::TensorOptions().dtype(at::kLong))};
      auto* values = tensors[0].data_ptr<std::int64_t>();
      for (std::int64_t i = 0; i < count; ++i) {
        values[i] = static_cast<std::int64_t>(op == ReduceOp::max ? data[i] ^ bias : data[i]);
      }
      run("allreduce", [&] { return group_->allreduce(tensors, options); });
      for (std::int64_t i = 0; i < count; ++i) {
        const auto v = static_cast<std::uint64_t>(values[i]);
        data[i] = op == ReduceOp::max ? v ^ bias : v;
      }
    } else {
      // In place on the caller's buffer: the tensor borrows it.
      std::vector<at::Tensor> tensors{
          at::from_blob(data, {count}, at::TensorOptions().dtype(dtype<T>()))};
      run("allreduce", [&] { return group_->allreduce(tensors, options); });
    }
  }

 private:
  template <class T>
  static at::ScalarType dtype() {
    if constexpr (std::is_same_v<T, float>) return at::kFloat;
    if constexpr (std::is_same_v<T, double>) return at::kDouble;
    return at::kLong;  // int64 (uint64 is converted by the caller)
  }

  template <class Start>
  void run(const char* what, Start&& start) {
    std::string reason;
    try {
      start()->wait();
      return;
    } catch (const c10::Error& e) {
      reason = e.what_without_backtrace();
    } catch (const std::exception& e) {
      reason = e.what();
    }
    detail::fail("c10d ", what, " failed on rank ", rank_, " of ", size_, ": ", reason);
  }

  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  int rank_ = 0;
  int size_ = 1;
  detail::TrafficCounter counter_;
};

static_assert(check_communicator<C10dCommunicator>());

}  // namespace protomem
