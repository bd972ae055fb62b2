// The Python package's view of a head: one abstract class (AnyHead) over the few instantiated
// heads - protomem::torch::PrototypeHead and ShardedPrototypeHead (protomem/torch.hpp) per Scalar x
// Device: float32 and float64 over cpu, float32 over cpu_bf16 and cpu_fp16 (narrow storage) - so
// that the binding (module.cpp) binds one class. The policies are run-time values (the holders of
// policies/any.hpp), so no policy is a template parameter here: the policy objects chosen in
// Python reach every head as they are.
//
// Requires: tensors already checked by the Python layer (python/protomem/_head.py); the C++ head
// checks them again (protomem/torch.hpp) before any state changes.
// Guarantees: every call goes through the library's public API (the heads, PrototypeMemory,
// ShardedPrototypeMemory); every failure throws protomem::Error and leaves the memory as it was.
#pragma once

#include <ATen/ATen.h>

#include <cstdint>
#include <memory>
#include <protomem/memory.hpp>
#include <string>
#include <vector>

namespace protomem {
namespace python {

/// The policy objects of a head, one per family (policies/any.hpp).
using Policies = protomem::Policies;

/// How the prototypes are stored: in the head's dtype, or narrow (float32 arithmetic).
enum class Storage { full, bfloat16, float16 };

/// The last forward's StepResult, scalar-independent.
struct LastStep {
  double loss = 0;
  std::vector<label_t> classes;
  index_t single_exemplar_classes = 0;
  index_t similar_k = 0;
  std::vector<label_t> similar;
  std::vector<double> similar_cosines;
  int threads = 0;
  index_t tile_columns = 0;
  std::size_t workspace_bytes = 0;
  protomem::backend::GemmReport gemm;  // the memory pass's GEMM, chosen by the library
};

/// What is stored, in eviction order (the next to be evicted first).
struct Contents {
  at::Tensor labels;        // int64 [n]
  at::Tensor prototypes;    // n x D, the head's dtype
  at::Tensor last_written;  // int64 [n]
};

class AnyHead {
 public:
  virtual ~AnyHead() = default;

  /// The head's forward (protomem/torch.hpp): the loss, differentiable when autograd records.
  virtual at::Tensor forward(const at::Tensor& embeddings, const at::Tensor& labels) = 0;
  /// For a process whose input failed the Python layer's checks: the sharded head's forward fails
  /// on every process with `reason` (ShardedPrototypeMemory::fail_forward, a collective); a
  /// single-process head throws it.
  [[noreturn]] virtual void fail_forward(const std::string& reason) = 0;
  /// The factor the returned gradient is multiplied by (protomem::torch::GradientScale).
  virtual double gradient_scale() const = 0;
  virtual void set_gradient_scale(double factor) = 0;
  /// Training updates dropped before their backward ran; the Python layer warns, not the head.
  virtual std::uint64_t dropped_updates() const = 0;
  /// The memory's step() on raw pointers (no autograd): writes dL/dE into `gradient` (B x D,
  /// contiguous, the head's dtype) and commits. Returns the loss; `seconds` gets the time the
  /// core's step() took (steady clock).
  virtual double core_step(const at::Tensor& embeddings, const at::Tensor& labels,
                           at::Tensor& gradient, double* seconds) = 0;

  /// A head with the same configuration, policies and committed state (via a checkpoint).
  virtual std::unique_ptr<AnyHead> clone() const = 0;

  /// The checkpoint bytes (save) and their strict inverse: exactly one checkpoint, nothing after
  /// it; the memory is unchanged on failure. A load adopts the checkpoint's policies. A sharded
  /// head's state() is this rank's shard (format version 3) and its load_state() takes this rank's
  /// shard of a save at the same world size, or a whole single-process checkpoint.
  virtual std::string state() const = 0;
  virtual void load_state(const std::string& bytes, const std::string& source) = 0;
  /// The whole memory as one single-process checkpoint (sharded: a collective that gathers it).
  virtual std::string full_state() const = 0;
  /// Writes the checkpoint file(s) and returns the path written: a sharded head writes this rank's
  /// shard to protomem::shard_path(path, rank, W), or with `gather` the whole memory to `path`
  /// (rank 0 writes); a single-process head writes `path`.
  virtual std::string save(const std::string& path, bool gather) const = 0;
  /// Reads the single-process checkpoint at `path` when `shards` is empty, else the shard files
  /// `shards` of one save (any world size); `path` names the checkpoint in messages.
  virtual void load(const std::string& path, const std::vector<std::string>& shards) = 0;

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
  /// The memory's policies (copies of its holders) and its Mining policy itself (the table a
  /// sampler draws from).
  virtual Policies policies() const = 0;
  virtual const AnyMining& mining() const = 0;
  /// The memory's checked setters (PrototypeMemory::set_margin, ...).
  virtual void set_margin(AnyMargin margin) = 0;
  virtual void set_generator(AnyGenerator generator) = 0;
  virtual void set_refresh(AnyRefresh refresh) = 0;
  virtual void set_queue(AnyQueue queue) = 0;
  virtual void set_mining(AnyMining mining) = 0;
  virtual void set_aging(AnyAging aging) = 0;
  /// "float32" or "float64".
  virtual const char* dtype() const = 0;
  /// "float32", "float64", "bfloat16" or "float16".
  virtual const char* storage() const = 0;
  virtual bool sharded() const = 0;
};

/// The heads of one Scalar x Device (heads_float.cpp, heads_double.cpp, heads_bf16.cpp,
/// heads_fp16.cpp): a single-process head when `group` is null, else a head sharded over the
/// torch.distributed process group `group` points to (a collective) - a
/// c10::intrusive_ptr<c10d::ProcessGroup>, passed type-erased so that this header does not need
/// c10d's.
std::unique_ptr<AnyHead> make_head_float(const void* group, const Config& config,
                                         const Policies& policies);
std::unique_ptr<AnyHead> make_head_double(const void* group, const Config& config,
                                          const Policies& policies);
std::unique_ptr<AnyHead> make_head_bf16(const void* group, const Config& config,
                                        const Policies& policies);
std::unique_ptr<AnyHead> make_head_fp16(const void* group, const Config& config,
                                        const Policies& policies);

}  // namespace python
}  // namespace protomem
