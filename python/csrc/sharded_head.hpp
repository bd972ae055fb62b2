// ShardedHeadImpl: AnyHead over protomem::ShardedPrototypeMemory on a torch.distributed process
// group (protomem/sharded.hpp, protomem/comm/c10d.hpp) - the Python head of a trainer whose processes
// share one memory. Included only by sharded_*.cpp, which instantiate the supported combinations.
//
// The autograd path is the LibTorch adapter's (protomem/torch.hpp: HeadState, PrototypeLoss): a
// training forward leaves the update pending, the backward through the loss commits it (commit() is
// local to each process). What differs from the single-process head: every call that touches the
// memory's contents is a collective (forward, state, load_state, save, load, contents, prototype,
// contains), so every process of the group makes it; a process's share of the batch may be empty.
//
// Requires: the process group's collectives take CPU tensors (Gloo); every process builds the head
// with the same configuration (checked). Guarantees: as ShardedPrototypeMemory's - loss and
// gradients equal the single-process head's on the concatenated batch; bad input on one process
// raises the same protomem.Error, naming the rank, in every process, with nothing changed.
#pragma once

#include <chrono>
#include <sstream>
#include <type_traits>
#include <utility>

#include <protomem/comm/c10d.hpp>
#include <protomem/sharded.hpp>

#include "head.hpp"

namespace protomem {
namespace python {

/// The communicator and the sharded memory that borrows it, owned together (so that autograd nodes
/// holding the state keep both alive). What protomem::torch::detail::HeadState calls a memory.
template <class Sharded>
struct CommAndMemory {
  using scalar_type = typename Sharded::scalar_type;
  template <class... Policies>
  CommAndMemory(c10::intrusive_ptr<c10d::ProcessGroup> group, const Config& config,
                Policies&&... policies)
      : comm(std::move(group)), memory(comm, config, std::forward<Policies>(policies)...) {}
  C10dCommunicator comm;  // declared first: `memory` borrows it
  Sharded memory;
  bool pending() const { return memory.pending(); }
  void commit() { memory.commit(); }
};

template <class Scalar, class Margin, class Generator, class Refresh, class Mining>
class ShardedHeadImpl final : public AnyHead {
 public:
  using Sharded = ShardedPrototypeMemory<Scalar, C10dCommunicator, cpu, Margin, Generator, Refresh,
                                         LeastRecentlyWritten, Mining>;
  using Owner = CommAndMemory<Sharded>;
  using State = protomem::torch::detail::HeadState<Owner>;

  ShardedHeadImpl(c10::intrusive_ptr<c10d::ProcessGroup> group, const Config& config,
                  Margin margin, Generator generator, Refresh refresh, Mining mining)
      : group_(group),
        state_(c10::make_intrusive<State>(protomem::torch::Commit::on_backward, std::move(group),
                                          config, std::move(margin), std::move(generator),
                                          std::move(refresh), LeastRecentlyWritten{},
                                          std::move(mining))) {}

  // The LibTorch head's forward (protomem/torch.hpp, PrototypeHead::forward) on this process's
  // rows; the tensors were checked by the Python layer (an empty share is allowed).
  at::Tensor forward(const at::Tensor& embeddings, const at::Tensor& labels) override {
    Sharded& memory = sharded();
    const bool training = ::torch::GradMode::is_enabled() && embeddings.requires_grad();
    const at::Tensor e = embeddings.detach();
    const at::Tensor rows = (e.size(0) == 0 || (e.stride(1) == 1 && e.stride(0) >= e.size(1)))
                                ? e
                                : e.contiguous();
    const at::Tensor y = labels.contiguous();
    const index_t batch = rows.size(0), dim = rows.size(1);
    at::Tensor gradient = at::empty({batch, dim}, rows.options());
    StepResult<Scalar> result = memory.forward_replacing(
        matrix_view<const Scalar>(rows.data_ptr<Scalar>(), batch, dim,
                                  batch > 0 ? rows.stride(0) : dim),
        label_view(y.data_ptr<std::int64_t>(), batch),
        matrix_view<Scalar>(gradient.data_ptr<Scalar>(), batch, dim));
    const double loss = static_cast<double>(result.loss);
    state_->last = std::move(result);
    if (!training) {
      memory.discard();  // evaluation: never an update
      return at::scalar_tensor(loss, embeddings.options().requires_grad(false));
    }
    const std::uint64_t generation = ++state_->generation;
    return protomem::torch::detail::PrototypeLoss<Owner>::apply(
        embeddings, gradient, loss, state_, static_cast<std::int64_t>(generation));
  }

  double core_step(const at::Tensor& embeddings, const at::Tensor& labels, at::Tensor& gradient,
                   double* seconds) override {
    Sharded& memory = sharded();
    if (memory.pending()) memory.discard();
    const index_t batch = embeddings.size(0), dim = embeddings.size(1);
    const auto start = std::chrono::steady_clock::now();
    const Scalar loss = memory.step(
        matrix_view<const Scalar>(embeddings.data_ptr<Scalar>(), batch, dim,
                                  batch > 0 ? embeddings.stride(0) : dim),
        label_view(labels.data_ptr<std::int64_t>(), batch),
        matrix_view<Scalar>(gradient.data_ptr<Scalar>(), batch, dim,
                            batch > 0 ? gradient.stride(0) : dim));
    if (seconds) {
      *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    return static_cast<double>(loss);
  }

  std::unique_ptr<AnyHead> clone() const override {  // a collective: a new sharded memory
    const Sharded& m = sharded();
    auto copy = std::make_unique<ShardedHeadImpl>(group_, m.config(), m.margin(), m.generator(),
                                                  m.refresh(), m.mining());
    copy->load_state(state(), "clone");
    return copy;
  }

  std::string state() const override {  // a collective: the single-process checkpoint
    std::ostringstream out(std::ios::binary);
    sharded().save(out);
    return std::move(out).str();
  }

  void load_state(const std::string& bytes, const std::string& source) override {
    Sharded& memory = sharded();
    // Exactly one checkpoint, nothing after it - agreed on by every process before the load.
    detail::collective_check(state_->memory.comm, [&] {
      std::istringstream in(bytes, std::ios::binary);
      detail::read_checkpoint(in, source);
      const auto used = static_cast<std::size_t>(in.tellg());
      if (in && used != bytes.size()) {
        detail::fail(source, " has ", bytes.size() - used,
                     " unexpected bytes after its checkpoint (", used, " bytes)");
      }
    });
    std::istringstream in(bytes, std::ios::binary);
    memory.load(in, source);
  }

  void save(const std::string& path) const override { sharded().save(path); }
  void load(const std::string& path) override { sharded().load(path); }

  Contents contents() const override {  // a collective: the whole logical memory
    const auto records = sharded().gather_records();
    const auto n = static_cast<index_t>(records.size());
    const index_t dim = sharded().dim();
    Contents c;
    c.labels = at::empty({n}, at::kLong);
    c.prototypes = at::empty({n, dim}, protomem::torch::detail::scalar_type_of<Scalar>());
    c.last_written = at::empty({n}, at::kLong);
    for (index_t r = 0; r < n; ++r) {
      const auto& record = records[static_cast<std::size_t>(r)];
      c.labels.data_ptr<std::int64_t>()[r] = record.label;
      c.last_written.data_ptr<std::int64_t>()[r] = static_cast<std::int64_t>(record.last_written);
      std::copy(record.prototype.begin(), record.prototype.end(),
                c.prototypes.data_ptr<Scalar>() + r * dim);
    }
    return c;
  }

  at::Tensor prototype(label_t label) const override {  // a collective (through contents())
    const Contents c = contents();
    const at::Tensor hits = c.labels.eq(label).nonzero();
    if (hits.size(0) == 0) detail::fail("label ", label, " is not in the memory");
    return c.prototypes[hits[0][0].item<std::int64_t>()].clone();
  }

  bool contains(label_t label) const override {  // a collective: stored on any rank
    std::int64_t stored = sharded().stores(label) ? 1 : 0;
    state_->memory.comm.all_reduce(&stored, 1, ReduceOp::max);
    return stored > 0;
  }

  Stats stats() const override { return sharded().stats(); }
  LastStep last_step() const override { return last_step_of(state_->last); }
  index_t size() const override { return sharded().size(); }
  index_t capacity() const override { return sharded().capacity(); }
  index_t dim() const override { return sharded().dim(); }
  bool pending() const override { return sharded().pending(); }
  void discard() override { sharded().discard(); }
  void clear() override { sharded().clear(); }
  const Config& config() const override { return sharded().config(); }
  const DoppelgangerMining* mining_table() const override { return nullptr; }
  const char* dtype() const override {
    return std::is_same_v<Scalar, float> ? "float32" : "float64";
  }
  std::vector<std::string> policy_names() const override {
    return {Margin::name, Generator::name, Refresh::name, LeastRecentlyWritten::name, Mining::name};
  }

 private:
  Sharded& sharded() { return state_->memory.memory; }
  const Sharded& sharded() const { return state_->memory.memory; }

  c10::intrusive_ptr<c10d::ProcessGroup> group_;
  c10::intrusive_ptr<State> state_;
};

/// The sharded heads of one Scalar: every margin, generator and refresh policy, the
/// LeastRecentlyWritten queue, NoMining (module.cpp's make_sharded_head has rejected the rest).
template <class Scalar>
std::unique_ptr<AnyHead> make_sharded_head_for(c10::intrusive_ptr<c10d::ProcessGroup> group,
                                               const Config& config, const Policies& p) {
  return std::visit(
      [&](const auto& margin, const auto& generator, const auto& refresh)
          -> std::unique_ptr<AnyHead> {
        using M = std::decay_t<decltype(margin)>;
        using G = std::decay_t<decltype(generator)>;
        using R = std::decay_t<decltype(refresh)>;
        return std::make_unique<ShardedHeadImpl<Scalar, M, G, R, NoMining>>(
            group, config, margin, generator, refresh, NoMining{});
      },
      p.margin, p.generator, p.refresh);
}

}  // namespace python
}  // namespace protomem
