// protomem::torch — the LibTorch adapter: a PrototypeMemory as the classifier head of a LibTorch
// training loop. The core never includes this header; link protomem::torch (CMake target, defined
// when LibTorch is found) to use it.
//
//   protomem::torch::PrototypeHead<float> head({/*capacity=*/65536, /*dim=*/512});
//   auto loss = head(encoder->forward(images), labels);   // embeddings B x D, labels int64 [B]
//   loss.backward();        // dL/dE flows into the encoder; the memory update is committed here
//   optimizer.step();
//
// When the memory is updated (Commit::on_backward, the default):
//   - a forward with autograd recording (GradMode enabled and embeddings.requires_grad()) leaves
//   the
//     update of the step pending; the backward pass through the loss commits it. The memory
//     therefore changes only for steps that are actually trained on.
//   - a forward whose backward never ran (loss only logged, step skipped for a non-finite loss) is
//     discarded by the next forward that succeeds: it never reaches the memory. A forward that
//     throws leaves it pending (its backward still commits it).
//   - an evaluation forward (under torch::NoGradGuard, or embeddings that do not require grad)
//     returns the loss and never updates the memory.
//   - a second backward through the same graph (retain_graph) does not commit twice.
// With Commit::manual the caller decides: commit() or discard() after each training forward (the
// next training forward before either is an error).
//
// Tensors: embeddings CPU, rank 2 (B x D, D = the memory's dim), of the head's Scalar (float32 for
// PrototypeHead<float>, float64 for PrototypeHead<double>); labels CPU int64, rank 1, length B.
// They are read in place: any row stride works zero-copy as long as each row is contiguous
// (stride(1) == 1); otherwise the embeddings are copied once with .contiguous(). Anything else
// throws protomem::Error naming the tensor, what it is and what was expected, before any state
// changes. The returned loss is a 0-dim tensor of the embeddings' dtype: the mean margin-softmax
// cross-entropy, whose gradient w.r.t. the embeddings is the core's dL/dE times the incoming grad.
#pragma once

#include <protomem/detail/language.hpp>  // first: C++17 is checked before anything else

#include <torch/torch.h>

#include <cstdint>
#include <protomem/error.hpp>
#include <protomem/memory.hpp>
#include <sstream>
#include <string>
#include <utility>

namespace protomem {
namespace torch {

/// When a training forward's memory update is applied (see the header comment).
enum class Commit {
  on_backward,  ///< in the backward pass through the loss (default)
  manual,       ///< by the caller: PrototypeHead::commit() or discard()
};

namespace detail {

inline std::string describe(const at::Tensor& t) {
  std::ostringstream out;
  out << t.scalar_type() << " tensor of shape " << t.sizes() << " on " << t.device();
  return out.str();
}

template <class Scalar>
constexpr at::ScalarType scalar_type_of() {
  return std::is_same_v<Scalar, float> ? at::kFloat : at::kDouble;
}

// The state a head shares with the autograd nodes of its pending step, so that a graph that
// outlives its head (or a head that outlives its graph) never dangles.
template <class Memory>
struct HeadState : ::torch::CustomClassHolder {
  template <class... Args>
  explicit HeadState(Commit mode_, Args&&... args)
      : memory(std::forward<Args>(args)...), mode(mode_) {}
  Memory memory;
  Commit mode;
  std::uint64_t generation = 0;  // id of the last training forward; its update is pending if
                                 // memory.pending()
  StepResult<typename Memory::scalar_type> last;
};

// The loss as an autograd node: forward returns the loss the core computed; backward scales the
// core's dL/dE (saved at forward) by the incoming gradient and commits the pending update.
template <class Memory>
struct PrototypeLoss : ::torch::autograd::Function<PrototypeLoss<Memory>> {
  using State = HeadState<Memory>;

  static at::Tensor forward(::torch::autograd::AutogradContext* ctx, const at::Tensor& embeddings,
                            const at::Tensor& gradient, double loss,
                            const c10::intrusive_ptr<State>& state, std::int64_t generation) {
    ctx->saved_data["gradient"] = gradient;
    ctx->saved_data["state"] = c10::IValue::make_capsule(state);
    ctx->saved_data["generation"] = generation;
    return at::scalar_tensor(loss, embeddings.options().requires_grad(false));
  }

  static ::torch::autograd::variable_list backward(::torch::autograd::AutogradContext* ctx,
                                                   ::torch::autograd::variable_list grad_outputs) {
    const at::Tensor gradient = ctx->saved_data["gradient"].toTensor();
    const c10::intrusive_ptr<::torch::CustomClassHolder> capsule =
        ctx->saved_data["state"].toCapsule();
    auto state = c10::intrusive_ptr<State>::reclaim_copy(static_cast<State*>(capsule.get()));
    const auto generation = static_cast<std::uint64_t>(ctx->saved_data["generation"].toInt());
    if (state->mode == Commit::on_backward && state->memory.pending() &&
        state->generation == generation) {
      state->memory.commit();
    }
    at::Tensor grad_embeddings = gradient * grad_outputs[0];
    return {grad_embeddings, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

}  // namespace detail

/// A PrototypeMemory as a LibTorch loss head: head(embeddings, labels) -> loss.
///
/// Requires: the tensors described in the header comment. Guarantees: loss and dL/dE are exactly
/// the core's PrototypeMemory::forward() (no copy of the embeddings for row-contiguous tensors);
/// the memory changes only as the header comment says; every failure throws protomem::Error and
/// leaves the memory as it was.
/// Mining: the memory's Mining policy (NoMining by default; DoppelgangerMining keeps the table a
/// sampler draws look-alike classes from, see protomem/data/sampler.hpp). Its table is updated only by
/// committed steps, like the memory: head.mining() after backward() reflects the trained steps.
/// Aging: the memory's Aging policy (NoAging by default; policies/aging.hpp).
template <class Scalar, class Margin = CosFace, class Generator = ExemplarMean,
          class Refresh = Replace, class Queue = LeastRecentlyWritten, class Mining = NoMining,
          class Aging = NoAging>
class PrototypeHead {
 public:
  using Memory = PrototypeMemory<Scalar, cpu, Margin, Generator, Refresh, Queue, Mining, Aging>;

  explicit PrototypeHead(const Config& config, Margin margin = Margin{},
                         Generator generator = Generator{}, Refresh refresh = Refresh{},
                         Queue queue = Queue{}, Commit mode = Commit::on_backward)
      : PrototypeHead(config, std::move(margin), std::move(generator), std::move(refresh),
                      std::move(queue), Mining{}, mode) {}

  /// With a Mining policy object (e.g. DoppelgangerMining(k, table_capacity), which has no
  /// default).
  PrototypeHead(const Config& config, Margin margin, Generator generator, Refresh refresh,
                Queue queue, Mining mining, Commit mode = Commit::on_backward)
      : PrototypeHead(config, std::move(margin), std::move(generator), std::move(refresh),
                      std::move(queue), std::move(mining), Aging{}, mode) {}

  /// With a Mining and an Aging policy object (e.g. AgeDecay(half_life)).
  PrototypeHead(const Config& config, Margin margin, Generator generator, Refresh refresh,
                Queue queue, Mining mining, Aging aging, Commit mode = Commit::on_backward)
      : state_(c10::make_intrusive<State>(mode, config, std::move(margin), std::move(generator),
                                          std::move(refresh), std::move(queue), std::move(mining),
                                          std::move(aging))) {}

  /// The mean margin-softmax loss of the batch (0-dim tensor); differentiable w.r.t. the
  /// embeddings when autograd records.
  at::Tensor operator()(const at::Tensor& embeddings, const at::Tensor& labels) {
    return forward(embeddings, labels);
  }

  at::Tensor forward(const at::Tensor& embeddings, const at::Tensor& labels) {
    check(embeddings, labels);
    Memory& memory = state_->memory;
    const bool training = ::torch::GradMode::is_enabled() && embeddings.requires_grad();
    if (memory.pending() && state_->mode == Commit::manual && training) {
      protomem::detail::fail(
          "PrototypeHead (Commit::manual): the previous training forward is "
          "neither committed nor discarded; call commit() or discard() first");
    }

    // Views over the caller's tensors: zero-copy whenever each row is contiguous.
    const at::Tensor e = embeddings.detach();
    const at::Tensor rows = (e.stride(1) == 1 && e.stride(0) >= e.size(1)) ? e : e.contiguous();
    const at::Tensor y = labels.is_contiguous() ? labels : labels.contiguous();
    const index_t batch = rows.size(0), dim = rows.size(1);
    at::Tensor gradient = at::empty({batch, dim}, rows.options());

    // A pending update's backward never ran (the step was not trained on): it is dropped, but
    // only once this forward has succeeded, so a forward that throws leaves it to its backward.
    StepResult<Scalar> result = memory.forward_replacing(
        matrix_view<const Scalar>(rows.data_ptr<Scalar>(), batch, dim, rows.stride(0)),
        label_view(y.data_ptr<std::int64_t>(), batch),
        matrix_view<Scalar>(gradient.data_ptr<Scalar>(), batch, dim));
    const double loss = static_cast<double>(result.loss);
    state_->last = std::move(result);

    if (!training) {
      memory.discard();  // evaluation: never an update
      return at::scalar_tensor(loss, embeddings.options().requires_grad(false));
    }
    const std::uint64_t generation = ++state_->generation;
    return detail::PrototypeLoss<Memory>::apply(embeddings, gradient, loss, state_,
                                                static_cast<std::int64_t>(generation));
  }

  /// Commit::manual: applies the pending update of the last training forward.
  void commit() { state_->memory.commit(); }
  /// Drops the pending update of the last training forward.
  void discard() { state_->memory.discard(); }
  /// Whether a training forward's update waits for its backward (or commit()).
  bool pending() const { return state_->memory.pending(); }
  Commit commit_mode() const { return state_->mode; }

  /// The last forward's result (loss, batch classes, most similar stored classes).
  const StepResult<Scalar>& last_result() const { return state_->last; }

  Memory& memory() { return state_->memory; }
  const Memory& memory() const { return state_->memory; }
  /// The memory's Mining policy (memory().mining()): the doppelganger table a sampler draws from.
  const Mining& mining() const { return state_->memory.mining(); }

 private:
  using State = detail::HeadState<Memory>;

  void check(const at::Tensor& embeddings, const at::Tensor& labels) const {
    using protomem::detail::fail;
    const char* head =
        std::is_same_v<Scalar, float> ? "PrototypeHead<float>" : "PrototypeHead<double>";
    if (!embeddings.defined()) fail(head, ": embeddings is an undefined tensor");
    if (!labels.defined()) fail(head, ": labels is an undefined tensor");
    if (embeddings.device().type() != c10::DeviceType::CPU || embeddings.is_sparse()) {
      fail(head, ": embeddings must be a dense CPU tensor; got a ", detail::describe(embeddings));
    }
    if (embeddings.scalar_type() != detail::scalar_type_of<Scalar>()) {
      fail(head, ": embeddings must have dtype ", detail::scalar_type_of<Scalar>(), "; got a ",
           detail::describe(embeddings),
           " (use a head of the matching Scalar, or convert with .to())");
    }
    if (embeddings.dim() != 2) {
      fail(head, ": embeddings must be rank 2 (B x D); got a ", detail::describe(embeddings));
    }
    if (embeddings.size(1) != state_->memory.dim()) {
      fail(head, ": embeddings have D = ", embeddings.size(1), " columns but the memory's dim is ",
           state_->memory.dim());
    }
    if (embeddings.size(0) < 1) fail(head, ": embeddings hold an empty batch (B = 0)");
    if (labels.device().type() != c10::DeviceType::CPU || labels.is_sparse()) {
      fail(head, ": labels must be a dense CPU tensor; got a ", detail::describe(labels));
    }
    if (labels.scalar_type() != at::kLong) {
      fail(head, ": labels must have dtype int64 (torch::kLong); got a ", detail::describe(labels));
    }
    if (labels.dim() != 1) fail(head, ": labels must be rank 1; got a ", detail::describe(labels));
    if (labels.size(0) != embeddings.size(0)) {
      fail(head, ": labels has ", labels.size(0),
           " entries but embeddings have B = ", embeddings.size(0), " rows");
    }
  }

  c10::intrusive_ptr<State> state_;
};

}  // namespace torch
}  // namespace protomem
