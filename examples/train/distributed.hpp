// examples/train --distributed: data-parallel training over MPI ranks with one Prototype Memory
// sharded across them (a protomem::PrototypeMemory given an MpiCommunicator), as Partial FC shards
// its classifier.
//
// Every rank builds the same encoder (same seed) and draws the same global batch; rank r keeps rows
// [B r / W, B (r + 1) / W). Per step each rank
//   1. runs its encoder replica on its rows; the batch norms take their statistics over the global
//      batch (SyncBatchNorm1d: all-reduced sums, as torch.nn.SyncBatchNorm);
//   2. passes its embeddings to the sharded memory (ShardedHead): the loss of the global batch and
//      the dL/dE of its own rows, of the global mean loss;
//   3. back-propagates, sums every encoder gradient over the ranks (one all-reduce; a sum, not a
//      mean, since each rank's dL/dE is already of the global mean loss) and takes the same SGD
//      step, so the replicas stay identical (check_replicas() verifies it at the end);
//   4. commits the memory update that lands on its own slots.
// The result equals one process training on the concatenated batch, to float rounding (which
// grows through training: docs/distributed.md, "examples/train --distributed").
//
// Requires: MPI initialised; every rank runs the same command line (the same Options).
// Guarantees: the loss of every step is the same on every rank; the encoder replicas are identical
// while the all-reduce returns the same sum on every rank (check_replicas() throws otherwise).
#pragma once

#include <torch/torch.h>

#include <algorithm>
#include <cstdint>
#include <memory>
#include <protomem/error.hpp>
#include <protomem/comm/mpi.hpp>
#include <protomem/memory.hpp>
#include <random>
#include <string>
#include <unordered_map>
#include <vector>

#include "trainer.hpp"

namespace train {

namespace detail {

// Sum over the ranks as an autograd node: the adjoint of an all-reduce sum is the all-reduce sum of
// the incoming gradients (each rank's graph holds its own uses of the sum).
struct AllReduceSum : ::torch::autograd::Function<AllReduceSum> {
  static at::Tensor forward(::torch::autograd::AutogradContext* ctx, const at::Tensor& local,
                            std::int64_t comm) {
    ctx->saved_data["comm"] = comm;
    return sum(local, comm);
  }
  static ::torch::autograd::variable_list backward(::torch::autograd::AutogradContext* ctx,
                                                   ::torch::autograd::variable_list grad) {
    return {sum(grad[0], ctx->saved_data["comm"].toInt()), at::Tensor()};
  }
  // `comm`: the MpiCommunicator's address (autograd contexts store only IValues).
  static at::Tensor sum(const at::Tensor& t, std::int64_t comm) {
    at::Tensor out = t.detach().contiguous().clone();
    reinterpret_cast<protomem::MpiCommunicator*>(comm)->all_reduce(
        out.data_ptr<float>(), out.numel(), protomem::ReduceOp::sum);
    return out;
  }
};

inline at::Tensor all_reduce_sum(const at::Tensor& t, protomem::MpiCommunicator& comm) {
  return AllReduceSum::apply(t, static_cast<std::int64_t>(reinterpret_cast<std::intptr_t>(&comm)));
}

}  // namespace detail

/// BatchNorm1d over the rows of every rank: in training the mean and (biased) variance of the
/// global batch, through all-reduced sums, and the running statistics updated with them (momentum
/// 0.1, unbiased variance), as BatchNorm1d on the concatenated batch; in evaluation the running
/// statistics, without a collective. Training forwards and backwards are collectives.
class SyncBatchNorm1dImpl : public ::torch::nn::Module {
 public:
  SyncBatchNorm1dImpl(std::int64_t features, protomem::MpiCommunicator& comm) : comm_(&comm) {
    weight_ = register_parameter("weight", ::torch::ones({features}));
    bias_ = register_parameter("bias", ::torch::zeros({features}));
    running_mean_ = register_buffer("running_mean", ::torch::zeros({features}));
    running_var_ = register_buffer("running_var", ::torch::ones({features}));
  }

  at::Tensor forward(const at::Tensor& x) {
    if (!is_training()) {
      return at::batch_norm(x, weight_, bias_, running_mean_, running_var_, false, kMomentum, kEps,
                            false);
    }
    std::int64_t rows = x.size(0);
    comm_->all_reduce(&rows, 1, protomem::ReduceOp::sum);
    if (rows < 2) {
      protomem::detail::fail("SyncBatchNorm1d: ", rows,
                             " rows over all ranks; batch norm needs at least 2");
    }
    const auto n = static_cast<double>(rows);
    // Two passes (mean, then the centred squares), as a single-process batch norm sums.
    const at::Tensor mean = detail::all_reduce_sum(x.sum(0), *comm_) / n;
    const at::Tensor centred = x - mean;
    const at::Tensor var = detail::all_reduce_sum(centred.pow(2).sum(0), *comm_) / n;
    {
      ::torch::NoGradGuard no_grad;
      running_mean_.mul_(1 - kMomentum).add_(mean.detach() * kMomentum);
      running_var_.mul_(1 - kMomentum).add_(var.detach() * (kMomentum * n / (n - 1)));
    }
    return centred * (var + kEps).rsqrt() * weight_ + bias_;
  }

 private:
  static constexpr double kMomentum = 0.1, kEps = 1e-5;  // BatchNorm1d's defaults
  protomem::MpiCommunicator* comm_;
  at::Tensor weight_, bias_, running_mean_, running_var_;
};
TORCH_MODULE(SyncBatchNorm1d);

/// Prototype Memory sharded over the MPI ranks, with the single-process head's policies
/// (ProtomemHead): loss() is the collective forward over this rank's rows, update() the local
/// commit. state_bytes() is this rank's share of the memory.
class ShardedHead : public Head {
 public:
  using Adapter = protomem::torch::PrototypeHead<float>;
  /// Every rank makes its head at the same point (the communicator is duplicated: a collective).
  explicit ShardedHead(const Options& o)
      : head_(protomem::MpiCommunicator(), memory_config(o), make_margin(o), make_generator(o),
              make_refresh(o), make_queue(o), make_mining(o), make_aging(o, lr_at(o, 0)),
              protomem::torch::Commit::manual),
        options_(o) {}

  at::Tensor loss(const at::Tensor& e, const at::Tensor& y) override {
    return head_(e, y);  // a collective: this rank's rows of the global batch
  }
  void update(double, std::int64_t step) override {
    head_.commit();
    if (options_.age_clock == "lr") memory().set_aging(make_aging(options_, lr_at(options_, step)));
  }
  double state_bytes() const override {
    return static_cast<double>(memory().local_capacity()) * memory().dim() * sizeof(float);
  }
  /// A collective (the whole memory is gathered on every rank): the same sample as ProtomemHead's
  /// on the same memory, since gather_records() lists the classes in the single-process order.
  VectorSample sample_vectors(std::int64_t count, std::mt19937_64& rng,
                              std::int64_t) const override {
    const auto records = memory().gather_records();
    std::vector<std::int64_t> labels;
    for (const auto& record : records) labels.push_back(record.label);
    std::shuffle(labels.begin(), labels.end(), rng);
    if (static_cast<std::int64_t>(labels.size()) > count) labels.resize(count);
    std::unordered_map<std::int64_t, std::size_t> where;
    for (std::size_t i = 0; i < records.size(); ++i) where[records[i].label] = i;
    VectorSample s;
    s.vectors = at::empty({static_cast<std::int64_t>(labels.size()), memory().dim()});
    for (std::size_t r = 0; r < labels.size(); ++r) {
      const auto& record = records[where.at(labels[r])];
      std::copy(record.prototype.begin(), record.prototype.end(),
                s.vectors.data_ptr<float>() + r * memory().dim());
      s.ages.push_back(static_cast<std::int64_t>(memory().step_count() - record.last_written));
      s.positive_ages.push_back(s.ages.back());
    }
    s.labels = std::move(labels);
    return s;
  }
  const protomem::DoppelgangerMining* mining_table() const override {
    // The same table on every rank; null under NoMining.
    return memory().mining().get_if<protomem::DoppelgangerMining>();
  }

 private:
  Adapter::Memory& memory() { return head_.memory(); }
  const Adapter::Memory& memory() const { return head_.memory(); }

  Adapter head_;
  Options options_;
};

/// The Parallel of a run over the ranks of `comm` (the encoder's collectives; the memory has its
/// own communicator).
inline Parallel mpi_parallel(protomem::MpiCommunicator& comm) {
  Parallel p;
  p.rank = comm.rank();
  p.world_size = comm.world_size();
  p.batch_norm = [&comm](std::int64_t features) {
    return ::torch::nn::AnyModule(SyncBatchNorm1d(features, comm));
  };
  p.sum_gradients = [&comm](::torch::nn::Sequential& encoder) {
    std::vector<at::Tensor> parts;
    const auto parameters = encoder->parameters();
    for (const auto& p : parameters) {
      parts.push_back(p.grad().defined() ? p.grad().reshape(-1) : ::torch::zeros({p.numel()}));
    }
    at::Tensor flat = at::cat(parts);
    comm.all_reduce(flat.data_ptr<float>(), flat.numel(), protomem::ReduceOp::sum);
    std::int64_t offset = 0;
    for (const auto& p : parameters) {
      at::Tensor summed = flat.slice(0, offset, offset + p.numel()).view_as(p);
      if (p.grad().defined()) {
        p.mutable_grad().copy_(summed);
      } else {
        p.mutable_grad() = summed.clone();
      }
      offset += p.numel();
    }
  };
  p.check_replicas = [&comm](::torch::nn::Sequential& encoder) {
    // A checksum of every weight and buffer, summed in one fixed order: the same on every rank
    // exactly when the replicas are (up to a collision no SGD step produces by chance).
    double sum = 0;
    auto add = [&sum](const at::Tensor& t) {
      const at::Tensor c = t.detach().to(::torch::kDouble).contiguous();
      const double* v = c.data_ptr<double>();
      for (std::int64_t i = 0; i < c.numel(); ++i) sum += v[i] * static_cast<double>(i % 7 + 1);
    };
    for (const auto& t : encoder->parameters()) add(t);
    for (const auto& t : encoder->buffers()) add(t);
    double range[2] = {sum, -sum};
    comm.all_reduce(range, 2, protomem::ReduceOp::max);
    if (range[0] != -range[1]) {
      protomem::detail::fail("the encoder replicas diverged: weight checksum from ", -range[1],
                             " to ", range[0], " over the ranks");
    }
  };
  return p;
}

}  // namespace train
