// protomem::torch — the LibTorch adapter: a PrototypeMemory as the classifier head of a LibTorch
// training loop. The core never includes this header; link protomem::torch (CMake target, defined
// when LibTorch is found) to use it.
//
//   protomem::torch::PrototypeHead<float> head({/*capacity=*/65536, /*dim=*/512},
//                                              protomem::CosFace(32, 0.3), protomem::AgeDecay(8));
//   auto loss = head(encoder->forward(images), labels);   // embeddings B x D, labels int64 [B]
//   loss.backward();        // dL/dE flows into the encoder; the memory update is committed here
//   optimizer.step();
//
// When the memory is updated (Commit::on_backward, the default):
//   - a forward with autograd recording (GradMode enabled and embeddings.requires_grad()) leaves
//     the update of the step pending; the backward pass through the loss commits it. The memory
//     therefore changes only for steps that are actually trained on.
//   - a forward whose backward never ran (loss only logged, step skipped for a non-finite loss) is
//     discarded by the next forward that succeeds: it never reaches the memory. A forward that
//     throws leaves it pending (its backward still commits it).
//   - an evaluation forward (under torch::NoGradGuard, or embeddings that do not require grad)
//     returns the loss and never updates the memory.
//   - a second backward through the same graph (retain_graph) does not commit twice.
// With Commit::manual the caller decides: commit() or discard() after each training forward (the
// next training forward before either is an error). A training update dropped because the next
// forward came before its backward is counted (dropped_updates()) and warned once per head.
//
// The gradient: the exact dL/dE of the returned loss times GradientScale (1 by default; W for a
// data-parallel trainer that averages gradients over W ranks, as DistributedDataParallel does).
//
// Policies: as PrototypeMemory's (memory.hpp, policies/any.hpp) - constructor objects in any
// order, each family at most once, omitted ones take the memory's defaults (CosFace(64, 0.35),
// ExemplarMean, Replace, LeastRecentlyWritten, NoMining, AgeDecay(8)); a Commit value may be among
// them. head.memory().set_margin(...) etc. change them between steps (checked setters).
// PrototypeHead<Scalar, Device> is compiled once per Scalar x Device: Device cpu, or cpu_bf16 /
// cpu_fp16 (float arithmetic over bf16 / fp16 storage; the tensors stay float32).
//
// PrototypeHead<Scalar, Device>(comm, config, ...): the same head over one memory spread over the
// processes of a communicator it owns (e.g. protomem::C10dCommunicator over a gloo group,
// c10d.hpp): each process passes its own rows (possibly none); the loss is the global batch's,
// the gradient that of its rows. Tensors that fail the checks on one process fail the forward on
// every process alike (PrototypeMemory::fail_forward), so the processes stay in step.
// ShardedPrototypeHead<Scalar, Comm, Device> is that head under its former name. One autograd path
// (detail::HeadState, detail::PrototypeLoss, detail::head_forward) - the Python package's heads
// are this class.
//
// Tensors: embeddings CPU, rank 2 (B x D, D = the memory's dim), of the head's Scalar (float32 for
// PrototypeHead<float, *>, float64 for PrototypeHead<double>); labels CPU int64, rank 1, length B
// (B >= 1; the sharded head also takes B = 0).
// They are read in place: any row stride works zero-copy as long as each row is contiguous
// (stride(1) == 1); otherwise the embeddings are copied once with .contiguous(). Anything else
// throws protomem::Error naming the tensor, what it is and what was expected, before any state
// changes. The returned loss is a 0-dim tensor of the embeddings' dtype: the mean margin-softmax
// cross-entropy, whose gradient w.r.t. the embeddings is the core's dL/dE times the incoming grad.
#pragma once

#include <protomem/detail/language.hpp>  // first: C++17 is checked before anything else

#include <ATen/ATen.h>
#include <torch/csrc/autograd/custom_function.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <cmath>
#include <cstdint>
#include <memory>
#include <protomem/device.hpp>
#include <protomem/error.hpp>
#include <protomem/memory.hpp>
#include <protomem/sharded.hpp>
#include <sstream>
#include <string>
#include <type_traits>
#include <utility>

namespace protomem {
namespace torch {

/// When a training forward's memory update is applied (see the header comment).
enum class Commit {
  on_backward,  ///< in the backward pass through the loss (default)
  manual,       ///< by the caller: PrototypeHead::commit() or discard()
};

/// What the gradient a head returns is multiplied by (a head constructor argument; 1 by default).
/// The loss is the mean over the (global) batch and its exact gradient is what a head returns by
/// default: summing the encoder's gradients over the ranks gives one process's gradient. A trainer
/// that averages them instead (PyTorch's DistributedDataParallel) passes GradientScale{W} for W
/// ranks - what insightface's PartialFC_V2 does inside its all-gather - so that the averaged encoder
/// gradient is again one process's. The Python package does this by default (docs/python.md).
struct GradientScale {
  double factor = 1;
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

/// "PrototypeHead<float>", "ShardedPrototypeHead<float, cpu_bf16>", ... for messages.
template <class Scalar, class Device>
std::string head_name(const char* kind) {
  std::string name = std::string(kind) + (std::is_same_v<Scalar, float> ? "<float" : "<double");
  if (std::is_same_v<Device, cpu_bf16>) name += ", cpu_bf16";
  if (std::is_same_v<Device, cpu_fp16>) name += ", cpu_fp16";
  return name + ">";
}

// The state a head shares with the autograd nodes of its pending step, so that a graph that
// outlives its head (or a head that outlives its graph) never dangles. A head given a
// communicator owns it here, beside the memory that borrows it.
template <class Memory>
struct HeadState : ::torch::CustomClassHolder {
  using scalar_type = typename Memory::scalar_type;
  template <class... Args>
  explicit HeadState(Commit mode_, Args&&... args)
      : memory(std::forward<Args>(args)...), mode(mode_) {}
  template <class Comm, class... Args>
  HeadState(Commit mode_, std::shared_ptr<Comm> comm_, Args&&... args)
      : comm(comm_), memory(*comm_, std::forward<Args>(args)...), mode(mode_) {}
  std::shared_ptr<void> comm;  // the communicator the memory borrows, if any (declared first)
  Memory memory;
  Commit mode;
  std::uint64_t generation = 0;  // id of the last training forward; its update is pending if
                                 // memory.pending()
  StepResult<scalar_type> last;
  double gradient_scale = 1;     // GradientScale
  std::uint64_t dropped = 0;     // training updates dropped before their backward ran
  bool warn_dropped = true;      // warn (TORCH_WARN) at the first drop; the Python layer warns itself
};

// The loss as an autograd node: forward returns the loss the core computed; backward scales the
// core's dL/dE (saved at forward) by the incoming gradient and commits the pending update.
template <class State>
struct PrototypeLoss : ::torch::autograd::Function<PrototypeLoss<State>> {
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
    if (state->gradient_scale != 1) grad_embeddings.mul_(state->gradient_scale);
    return {grad_embeddings, at::Tensor(), at::Tensor(), at::Tensor(), at::Tensor()};
  }
};

// The family a head constructor argument belongs to: a policy's holder, or Commit.
template <class P>
struct head_argument {
  using type = protomem::detail::policy_holder_t<P>;
};
template <>
struct head_argument<Commit> {
  using type = Commit;
};
template <>
struct head_argument<GradientScale> {
  using type = GradientScale;
};
template <>
struct head_argument<Policies> {
  using type = Policies;
};
template <class Family, class... Args>
constexpr int count_argument() {
  return (0 + ... + int(std::is_same_v<typename head_argument<std::decay_t<Args>>::type, Family>));
}

/// A head's constructor arguments sorted into the policies (a Policies object, or policies of any
/// family), the commit mode and the gradient scale.
struct HeadArguments {
  Policies policies;
  Commit mode = Commit::on_backward;
  GradientScale scale;

  template <class... Args>
  explicit HeadArguments(Args... args) {
    static_assert(
        count_argument<AnyMargin, Args...>() <= 1 && count_argument<AnyGenerator, Args...>() <= 1 &&
            count_argument<AnyRefresh, Args...>() <= 1 &&
            count_argument<AnyQueue, Args...>() <= 1 && count_argument<AnyMining, Args...>() <= 1 &&
            count_argument<AnyAging, Args...>() <= 1 && count_argument<Commit, Args...>() <= 1 &&
            count_argument<GradientScale, Args...>() <= 1 &&
            count_argument<Policies, Args...>() <= 1,
        "protomem: a head takes at most one policy of each family (or one Policies), one Commit "
        "and one GradientScale");
    (take(std::move(args)), ...);
  }

 private:
  template <class P>
  void take(P p) {
    using Family = typename head_argument<P>::type;
    if constexpr (std::is_same_v<Family, Commit>) {
      mode = p;
    } else if constexpr (std::is_same_v<Family, GradientScale>) {
      scale = p;
    } else if constexpr (std::is_same_v<Family, Policies>) {
      policies = std::move(p);
    } else {
      policies.set(std::move(p));
    }
  }
};

/// The tensor checks of both heads (header comment), before any state changes.
inline void check_tensors(const std::string& head, at::ScalarType dtype, index_t memory_dim,
                          const at::Tensor& embeddings, const at::Tensor& labels,
                          bool allow_empty) {
  using protomem::detail::fail;
  if (!embeddings.defined()) fail(head, ": embeddings is an undefined tensor");
  if (!labels.defined()) fail(head, ": labels is an undefined tensor");
  if (embeddings.device().type() != c10::DeviceType::CPU || embeddings.is_sparse()) {
    fail(head, ": embeddings must be a dense CPU tensor; got a ", describe(embeddings));
  }
  if (embeddings.scalar_type() != dtype) {
    fail(head, ": embeddings must have dtype ", dtype, "; got a ", describe(embeddings),
         " (use a head of the matching Scalar, or convert with .to())");
  }
  if (embeddings.dim() != 2) {
    fail(head, ": embeddings must be rank 2 (B x D); got a ", describe(embeddings));
  }
  if (embeddings.size(1) != memory_dim) {
    fail(head, ": embeddings have D = ", embeddings.size(1), " columns but the memory's dim is ",
         memory_dim);
  }
  if (embeddings.size(0) < 1 && !allow_empty) {
    fail(head, ": embeddings hold an empty batch (B = 0)");
  }
  if (labels.device().type() != c10::DeviceType::CPU || labels.is_sparse()) {
    fail(head, ": labels must be a dense CPU tensor; got a ", describe(labels));
  }
  if (labels.scalar_type() != at::kLong) {
    fail(head, ": labels must have dtype int64 (torch::kLong); got a ", describe(labels));
  }
  if (labels.dim() != 1) fail(head, ": labels must be rank 1; got a ", describe(labels));
  if (labels.size(0) != embeddings.size(0)) {
    fail(head, ": labels has ", labels.size(0),
         " entries but embeddings have B = ", embeddings.size(0), " rows");
  }
}

/// A GradientScale's factor: finite and > 0.
inline double checked_scale(const std::string& head, GradientScale scale) {
  if (!(std::isfinite(scale.factor) && scale.factor > 0)) {
    protomem::detail::fail(head, ": GradientScale factor = ", scale.factor,
                           " must be finite and > 0");
  }
  return scale.factor;
}

/// The one forward of both heads (checked tensors): the loss of the step, an autograd node that
/// commits the update in its backward when autograd records, else the loss alone (no update).
template <class State>
at::Tensor head_forward(const c10::intrusive_ptr<State>& state, const std::string& head,
                        const at::Tensor& embeddings, const at::Tensor& labels) {
  using Scalar = typename State::scalar_type;
  auto& memory = state->memory;
  const bool training = ::torch::autograd::GradMode::is_enabled() && embeddings.requires_grad();
  if (memory.pending() && state->mode == Commit::manual && training) {
    protomem::detail::fail(head,
                           " (Commit::manual): the previous training forward is neither "
                           "committed nor discarded; call commit() or discard() first");
  }

  // Views over the caller's tensors: zero-copy whenever each row is contiguous.
  const at::Tensor e = embeddings.detach();
  const index_t batch = e.size(0), dim = e.size(1);
  const at::Tensor rows =
      (batch == 0 || (e.stride(1) == 1 && e.stride(0) >= dim)) ? e : e.contiguous();
  const at::Tensor y = labels.is_contiguous() ? labels : labels.contiguous();
  at::Tensor gradient = at::empty({batch, dim}, rows.options());

  // A pending update's backward never ran (the step was not trained on): it is dropped, but
  // only once this forward has succeeded, so a forward that throws leaves it to its backward.
  const bool drops = memory.pending() && state->mode == Commit::on_backward;
  StepResult<Scalar> result =
      memory.forward_replacing(matrix_view<const Scalar>(rows.data_ptr<Scalar>(), batch, dim,
                                                         batch > 0 ? rows.stride(0) : dim),
                               label_view(y.data_ptr<std::int64_t>(), batch),
                               matrix_view<Scalar>(gradient.data_ptr<Scalar>(), batch, dim));
  const double loss = static_cast<double>(result.loss);
  state->last = std::move(result);
  if (drops) {
    ++state->dropped;
    if (state->warn_dropped) {
      state->warn_dropped = false;
      TORCH_WARN(head, ": the memory update of the previous training forward was dropped: its "
                 "backward had not run when this forward came (two forwards before one backward "
                 "keep only the last; with gradient accumulation, run backward after each "
                 "forward). Warned once per head; dropped_updates() counts them.");
    }
  }

  if (!training) {
    memory.discard();  // evaluation: never an update
    return at::scalar_tensor(loss, embeddings.options().requires_grad(false));
  }
  const std::uint64_t generation = ++state->generation;
  return PrototypeLoss<State>::apply(embeddings, gradient, loss, state,
                                     static_cast<std::int64_t>(generation));
}

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
/// Aging: the memory's Aging policy (AgeDecay(8) by default; NoAging for none; policies/aging.hpp).
template <class Scalar, class Device = cpu>
class PrototypeHead {
 public:
  using Memory = PrototypeMemory<Scalar, Device>;
  using scalar_type = Scalar;
  using device_type = Device;

  /// A head over a memory of `config` with the given policies and Commit mode, in any order,
  /// e.g. PrototypeHead<float> head(config, ArcFace(64, 0.5), NoAging{}, Commit::manual).
  template <class... Args>
  explicit PrototypeHead(const Config& config, Args... args)
      : PrototypeHead(std::shared_ptr<void>(), config, detail::HeadArguments(std::move(args)...)) {}

  /// A head over one memory spread over the processes of `comm` (any Communicator,
  /// comm/communicator.hpp, e.g. C10dCommunicator over a gloo group), which the head owns (moved
  /// in). Construction and forward are collectives: every process calls them, in the same order,
  /// with the same configuration and policies. Each process passes its own rows (B >= 0); the
  /// loss is that of the global batch (the same everywhere), the gradient that of its rows; the
  /// backward through the loss commits on each process (commit() is local).
  template <class Comm, class... Args,
            class = std::enable_if_t<is_communicator_v<Comm> &&
                                     !std::is_same_v<std::decay_t<Comm>, AnyCommunicator>>>
  PrototypeHead(Comm comm, const Config& config, Args... args)
      : PrototypeHead(std::make_shared<Comm>(std::move(comm)), config,
                      detail::HeadArguments(std::move(args)...)) {}

  /// The mean margin-softmax loss of the batch (0-dim tensor); differentiable w.r.t. the
  /// embeddings when autograd records.
  at::Tensor operator()(const at::Tensor& embeddings, const at::Tensor& labels) {
    return forward(embeddings, labels);
  }

  /// With a communicator, a collective: tensors that fail the checks on one process fail the
  /// forward on every process alike (PrototypeMemory::fail_forward): the same Error everywhere,
  /// nothing changed, the processes still in step.
  at::Tensor forward(const at::Tensor& embeddings, const at::Tensor& labels) {
    const bool shared = state_->comm != nullptr;
    try {
      detail::check_tensors(name(), detail::scalar_type_of<Scalar>(), state_->memory.dim(),
                            embeddings, labels, /*allow_empty=*/shared);
    } catch (const Error& e) {
      if (!shared) throw;
      state_->memory.fail_forward(e.what());
    }
    return detail::head_forward(state_, name(), embeddings, labels);
  }

  /// Commit::manual: applies the pending update of the last training forward.
  void commit() { state_->memory.commit(); }
  /// Drops the pending update of the last training forward.
  void discard() { state_->memory.discard(); }
  /// Whether a training forward's update waits for its backward (or commit()).
  bool pending() const { return state_->memory.pending(); }
  Commit commit_mode() const { return state_->mode; }

  /// What the returned gradient is multiplied by (GradientScale); a factor that is not finite
  /// and > 0 throws and changes nothing.
  double gradient_scale() const { return state_->gradient_scale; }
  void set_gradient_scale(double factor) {
    state_->gradient_scale = detail::checked_scale(name(), GradientScale{factor});
  }
  /// Training updates dropped because their backward had not run when the next forward came
  /// (warned once per head through TORCH_WARN, unless set_drop_warning(false)).
  std::uint64_t dropped_updates() const { return state_->dropped; }
  void set_drop_warning(bool warn) { state_->warn_dropped = warn; }

  /// The last forward's result (loss, batch classes, most similar stored classes).
  const StepResult<Scalar>& last_result() const { return state_->last; }

  Memory& memory() { return state_->memory; }
  const Memory& memory() const { return state_->memory; }
  /// The memory's Mining policy (memory().mining()): the doppelganger table a sampler draws from,
  /// e.g. head.mining().get<DoppelgangerMining>().
  const AnyMining& mining() const { return state_->memory.mining(); }
  /// The communicator the memory borrows from the head (a default AnyCommunicator: one process).
  AnyCommunicator& communicator() const { return state_->memory.communicator(); }

 protected:
  using State = detail::HeadState<Memory>;

  // `comm`: the communicator the head owns (nullptr: one process).
  template <class Comm>
  PrototypeHead(std::shared_ptr<Comm> comm, const Config& config, detail::HeadArguments a)
      : state_(make_state(std::move(comm), config, a)) {
    // With a communicator a bad factor throws on every rank alike (the memory, built above, is a
    // collective).
    if (state_->comm) {
      protomem::detail::collective_check(state_->memory.communicator(),
                                         [&] { set_gradient_scale(a.scale.factor); });
    } else {
      set_gradient_scale(a.scale.factor);
    }
  }
  static c10::intrusive_ptr<State> make_state(std::shared_ptr<void> none, const Config& config,
                                              detail::HeadArguments& a) {
    (void)none;
    return c10::make_intrusive<State>(
        a.mode, config, std::move(a.policies.margin), std::move(a.policies.generator),
        std::move(a.policies.refresh), std::move(a.policies.queue),
        std::move(a.policies.mining), std::move(a.policies.aging));
  }
  template <class Comm, class = std::enable_if_t<!std::is_void_v<Comm>>>
  static c10::intrusive_ptr<State> make_state(std::shared_ptr<Comm> comm, const Config& config,
                                              detail::HeadArguments& a) {
    return c10::make_intrusive<State>(
        a.mode, std::move(comm), config, std::move(a.policies.margin),
        std::move(a.policies.generator), std::move(a.policies.refresh),
        std::move(a.policies.queue), std::move(a.policies.mining), std::move(a.policies.aging));
  }
  std::string name() const {
    return detail::head_name<Scalar, Device>(state_ && state_->comm ? "ShardedPrototypeHead"
                                                                    : "PrototypeHead");
  }

  c10::intrusive_ptr<State> state_;
};

/// The name a head over several processes had before PrototypeHead took a communicator: a
/// PrototypeHead<Scalar, Device> built with `comm`, plus the communicator typed as given. Kept so
/// that code written against it compiles unchanged.
template <class Scalar, class Comm = SingleProcess, class Device = cpu>
class ShardedPrototypeHead : public PrototypeHead<Scalar, Device> {
  using Base = PrototypeHead<Scalar, Device>;

 public:
  template <class... Args>
  ShardedPrototypeHead(Comm comm, const Config& config, Args... args)
      : Base(std::make_shared<Comm>(std::move(comm)), config,
             detail::HeadArguments(std::move(args)...)) {}

  Comm& communicator() { return *static_cast<Comm*>(this->state_->comm.get()); }
  const Comm& communicator() const { return *static_cast<const Comm*>(this->state_->comm.get()); }
};

}  // namespace torch
}  // namespace protomem
