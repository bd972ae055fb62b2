// The Python package's view of a protomem::torch::PrototypeHead: one abstract class (AnyHead) over
// every instantiated policy combination, so that the binding (module.cpp) binds one class and the
// instantiations (instances_*.cpp) compile in parallel, one translation unit per scalar x margin.
//
// Requires: tensors already checked by the Python layer (python/protomem/_head.py); the C++ head
// checks them again (protomem/torch.hpp) before any state changes.
// Guarantees: every call goes through the library's public API (PrototypeHead, PrototypeMemory);
// every failure throws protomem::Error and leaves the memory as it was.
#pragma once

#include <torch/torch.h>

#include <cstdint>
#include <memory>
#include <protomem/memory.hpp>
#include <protomem/torch.hpp>
#include <string>
#include <variant>
#include <vector>

namespace protomem {
namespace python {

/// The policy objects chosen in Python (each alternative is a C++ policy, bound as is).
struct Policies {
  std::variant<NoMargin, CosFace, ArcFace, CombinedMargin> margin;
  std::variant<ExemplarMean, DetachedExemplarMean, LeaveOneOut> generator;
  std::variant<Replace, Momentum> refresh;
  std::variant<LeastRecentlyWritten, FirstInFirstOut> queue;
  std::variant<NoMining, DoppelgangerMining> mining;
};

/// The last forward's StepResult, scalar-independent.
struct LastStep {
  double loss = 0;
  std::vector<label_t> classes;
  index_t similar_k = 0;
  std::vector<label_t> similar;
  std::vector<double> similar_cosines;
  int threads = 0;
  index_t tile_columns = 0;
  std::size_t workspace_bytes = 0;
  protomem::backend::GemmReport gemm;  // the memory pass's GEMM, chosen by the library
};

/// A StepResult as the Python layer sees it.
template <class Scalar>
LastStep last_step_of(const StepResult<Scalar>& r) {
  LastStep s;
  s.loss = static_cast<double>(r.loss);
  s.classes = r.classes;
  s.similar_k = r.similar_k;
  s.similar = r.similar;
  s.similar_cosines.assign(r.similar_cosines.begin(), r.similar_cosines.end());
  s.threads = r.threads;
  s.tile_columns = r.tile_columns;
  s.workspace_bytes = r.workspace_bytes;
  s.gemm = r.gemm;
  return s;
}

/// What is stored, in eviction order (the next to be evicted first).
struct Contents {
  at::Tensor labels;        // int64 [n]
  at::Tensor prototypes;    // n x D, the head's dtype
  at::Tensor last_written;  // int64 [n]
};

class AnyHead {
 public:
  virtual ~AnyHead() = default;

  /// PrototypeHead::forward: the loss, differentiable when autograd records.
  virtual at::Tensor forward(const at::Tensor& embeddings, const at::Tensor& labels) = 0;
  /// PrototypeMemory::step on raw pointers (no autograd): writes dL/dE into `gradient` (B x D,
  /// contiguous, the head's dtype) and commits. Returns the loss; `seconds` gets the time the
  /// core's step() took (steady clock).
  virtual double core_step(const at::Tensor& embeddings, const at::Tensor& labels,
                           at::Tensor& gradient, double* seconds) = 0;

  /// A head with the same configuration, policies and committed state (via a checkpoint).
  virtual std::unique_ptr<AnyHead> clone() const = 0;

  /// The checkpoint bytes (PrototypeMemory::save) and their strict inverse: exactly one
  /// checkpoint, nothing after it; the memory is unchanged on failure.
  virtual std::string state() const = 0;
  virtual void load_state(const std::string& bytes, const std::string& source) = 0;
  virtual void save(const std::string& path) const = 0;
  virtual void load(const std::string& path) = 0;

  virtual Contents contents() const = 0;
  virtual at::Tensor prototype(label_t label) const = 0;
  virtual bool contains(label_t label) const = 0;
  virtual Stats stats() const = 0;
  virtual LastStep last_step() const = 0;
  virtual index_t size() const = 0;
  virtual index_t capacity() const = 0;
  virtual index_t dim() const = 0;
  virtual bool pending() const = 0;
  virtual void discard() = 0;
  virtual void clear() = 0;
  virtual const Config& config() const = 0;
  /// The doppelganger table, or nullptr when the head's Mining policy is NoMining.
  virtual const DoppelgangerMining* mining_table() const = 0;
  /// "float32" or "float64".
  virtual const char* dtype() const = 0;
  /// The policy names as stored in checkpoints: margin, generator, refresh, queue, mining.
  virtual std::vector<std::string> policy_names() const = 0;
};

/// Builds the head of one combination; defined per (scalar, margin) in instances_*.cpp.
#define PROTOMEM_PY_DECLARE(scalar, margin) \
  std::unique_ptr<AnyHead> make_head_##scalar##_##margin(const Config& config, const Policies& p);
PROTOMEM_PY_DECLARE(float, NoMargin)
PROTOMEM_PY_DECLARE(float, CosFace)
PROTOMEM_PY_DECLARE(float, ArcFace)
PROTOMEM_PY_DECLARE(float, CombinedMargin)
PROTOMEM_PY_DECLARE(double, NoMargin)
PROTOMEM_PY_DECLARE(double, CosFace)
PROTOMEM_PY_DECLARE(double, ArcFace)
PROTOMEM_PY_DECLARE(double, CombinedMargin)
#undef PROTOMEM_PY_DECLARE

/// Dispatches on the scalar and the margin (module.cpp).
std::unique_ptr<AnyHead> make_head(bool double_precision, const Config& config,
                                   const Policies& policies);

/// A head whose memory is sharded over the processes of a torch.distributed group (Gloo);
/// defined per scalar in sharded_*.cpp (sharded_head.hpp). `group` is a
/// c10::intrusive_ptr<c10d::ProcessGroup> passed type-erased, so that this header does not need
/// c10d's.
std::unique_ptr<AnyHead> make_sharded_head_float(const void* group, const Config& config,
                                                 const Policies& p);
std::unique_ptr<AnyHead> make_sharded_head_double(const void* group, const Config& config,
                                                  const Policies& p);

}  // namespace python
}  // namespace protomem
