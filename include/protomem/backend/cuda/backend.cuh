// CUDA backend: the prototype store in GPU memory and the numerics of a step on cuBLAS and small
// kernels (kernels.cuh). The same five parts as the CPU backend (backend/cpu/backend.hpp), with
// the same interface towards PrototypeMemory, so that the bookkeeping in memory.hpp (slot map,
// queue, checkpoints) is written once and runs on the host for both:
//   1. normalise      block-per-row kernel
//   2. generate       block-per-class segmented sum over the batch's classes, grouped on the host
//                     (the labels are on the host already: the slot map needs them there)
//   3. memory pass    per tile of T stored prototypes: cuBLAS GEMM for the cosines (B x T), one
//                     kernel for the online-softmax statistics (also rescaling O; it adds an aged
//                     column's log-weight, computed on the host and uploaded with the step's
//                     metadata), cuBLAS GEMM O += P W; for mining a third GEMM (C x T class
//                     cosines, no log-weights) and a top-k merge
//   4. batch columns  small fp32 GEMM (B x C) and a block-per-row kernel (margin, softmax, loss)
//   5. backward       two small GEMMs and elementwise / per-row kernels
// Host synchronisation: once per forward(), at its end (docs/cuda.md says why); commit() is
// asynchronous; reading prototypes on the host (prototype(), iteration, save) copies the rows
// written since the last read and waits for them.
//
// Requires: embeddings and gradient in device memory of the memory's device (the device current
// when it was constructed); labels in host memory (PrototypeMemory's LabelView).
// Guarantees: as the CPU backend: forward() changes nothing but its workspace and the pending fresh
// prototypes, and throws protomem::Error (with the CPU backend's message) for invalid input.
#pragma once

#include <algorithm>
#include <climits>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>
#include <utility>
#include <vector>

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <protomem/backend/cuda/buffers.cuh>
#include <protomem/backend/cuda/check.cuh>
#include <protomem/backend/cuda/gemm.cuh>
#include <protomem/backend/cuda/kernels.cuh>
#include <protomem/backend/cuda/resources.cuh>
#include <protomem/backend/row_math.hpp>
#include <protomem/backend/seam.hpp>
#include <protomem/detail/batch.hpp>
#include <protomem/device.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>

namespace protomem {
namespace backend {

template <class Scalar>
class CudaBackend {
  static_assert(
      std::is_same_v<Scalar, float>,
      "the CUDA backend stores float prototypes (PrototypeMemory<float, protomem::cuda>)");
  using Index = cuda_kernels::Index;
  using StepStatus = cuda_kernels::StepStatus;
  static constexpr int kThreads = cuda_kernels::kThreads;

 public:
  using Resources = CudaResources;

  CudaBackend(index_t capacity, index_t dim, const Resources& resources = {})
      : capacity_(capacity), dim_(dim), resources_(resources) {
    detail::cuda_check(cudaGetDevice(&device_), "cudaGetDevice");
    if (static_cast<std::uint64_t>(capacity) >
        (std::uint64_t{1} << 62) / sizeof(float) / static_cast<std::uint64_t>(dim)) {
      detail::fail("a CUDA memory of ", capacity, " x ", dim, " prototypes is beyond any device");
    }
    store_ = detail::DeviceArray<float>(static_cast<std::size_t>(capacity * dim));
    inactive_ = detail::DeviceArray<std::uint8_t>(static_cast<std::size_t>(capacity));
    detail::cuda_check(cudaMemsetAsync(inactive_.data(), 0, inactive_.size(), stream()),
                       "cudaMemsetAsync(column mask)");
    if (resources_.cublas == nullptr) owned_cublas_ = detail::OwnedCublas::create();
    stale_.reserve(static_cast<std::size_t>(std::min<index_t>(capacity, kStaleRows)));
  }

  CudaBackend(CudaBackend&&) noexcept = default;
  CudaBackend& operator=(CudaBackend&&) noexcept = default;
  CudaBackend(const CudaBackend&) = delete;
  CudaBackend& operator=(const CudaBackend&) = delete;

  index_t dim() const { return dim_; }
  index_t capacity() const { return capacity_; }
  int device() const { return device_; }

  // ---- resources --------------------------------------------------------------------------------

  Resources resources() const { return resources_; }

  /// Takes effect from the next call. Work already issued on the old stream is ordered before any
  /// work on the new one (an event hand-off, no host wait).
  void set_resources(const Resources& resources) {
    detail::DeviceScope scope(device_);
    if (resources.stream != resources_.stream) {
      detail::cuda_check(cudaEventRecord(handoff_.get(), resources_.stream), "cudaEventRecord");
      detail::cuda_check(cudaStreamWaitEvent(resources.stream, handoff_.get(), 0),
                         "cudaStreamWaitEvent");
    }
    if (resources.cublas == nullptr && owned_cublas_.get() == nullptr) {
      owned_cublas_ = detail::OwnedCublas::create();
    }
    resources_ = resources;
  }

  /// Bytes of workspace a step with `rows` samples and `classes` distinct classes needs (the first
  /// phase of CUB's idiom); valid for every step with at most that many rows and classes. `aged`:
  /// the memory's Aging policy looks at ages, so a step may exclude any slot (the expired ones)
  /// and carries a log-weight per slot (StepInput::column_bias).
  std::size_t workspace_size(index_t rows, index_t classes, std::size_t workspace_budget,
                             index_t similar_k, bool leave_one_out, bool aged = false) const {
    const index_t excluded = aged ? capacity_ : classes;
    const index_t shifted = aged ? capacity_ : 0;
    const Shape shape = make_shape(rows, classes, capacity_, excluded, shifted, workspace_budget,
                                   similar_k, leave_one_out, resources_.precision);
    Work work;
    return carve(nullptr, shape, work);
  }

  // ---- the store, seen from the host ------------------------------------------------------------

  /// A host copy of the slot's prototype, valid until the next write, set_prototype or clear. The
  /// first read after a commit copies the rows written since the previous read (and waits for
  /// them).
  const Scalar* prototype(index_t slot) const {
    sync_host_mirror();
    return host_.data() + slot * dim_;
  }
  /// The same as a view (the seam the narrow-storage CPU backends use).
  using prototype_type = Span<const Scalar>;
  prototype_type prototype_view(index_t slot) const { return {prototype(slot), dim_}; }

  /// Stores a prototype on the host; the device copy follows at the next step (one bulk upload).
  /// Used by PrototypeMemory::load() on a fresh backend.
  void set_prototype(index_t slot, const Scalar* values) {
    sync_host_mirror();
    if (slot + 1 > hwm_) {
      hwm_ = slot + 1;
      if (host_.size() < static_cast<std::size_t>(hwm_ * dim_)) {
        host_.resize(std::max(host_.size() * 2, static_cast<std::size_t>(hwm_ * dim_)));
      }
    }
    std::copy(values, values + dim_, host_.data() + slot * dim_);
    upload_pending_ = true;
  }

  /// Test hook (tests/cuda/test_cuda_guarantees.cu): the next write() fails with `status`, as a
  /// failed kernel launch would, before it issues anything. Not for use outside tests.
  void fail_next_write_for_testing(cudaError_t status) { injected_write_failure_ = status; }

  void clear() {
    hwm_ = 0;
    host_.clear();
    stale_.clear();
    stale_all_ = false;
    upload_pending_ = false;
  }

  // ---- the step ---------------------------------------------------------------------------------

  /// Loss and dL/de of one step (docs/algorithm.md, "One step"); see the CPU backend's forward().
  /// The kernels run the built-in exemplar-mean rules: the gradient flows through the prototypes
  /// (Gradient) or not, and each row's target is its class prototype or its leave-one-out mean
  /// (LeaveOneOut); Margin is a built-in margin, evaluated in device code.
  template <class Margin, bool Gradient, bool LeaveOneOut>
  Scalar forward(const detail::BatchClasses& batch, MatrixView<const Scalar> embeddings,
                 MatrixView<Scalar> gradient, index_t used, Span<const index_t> excluded,
                 Span<const Scalar> column_bias, const Margin& margin, std::size_t workspace_bytes,
                 SimilarSlots<Scalar>* similar) {
    constexpr bool loo = LeaveOneOut;
    detail::DeviceScope scope(device_);
    check_device_pointer(embeddings.data, "embeddings.data");
    check_device_pointer(gradient.data, "gradient.data");
    const cudaStream_t s = stream();
    const index_t B = embeddings.rows, C = batch.size(), D = dim_;
    const index_t k = similar != nullptr ? similar->k : 0;
    const index_t shifted = column_bias.size == 0 ? 0 : used;  // aged columns (seam: size used)
    const Shape shape = make_shape(B, C, used, excluded.size, shifted, workspace_bytes, k, loo,
                                   resources_.precision);

    upload_host_store();
    ensure_shadow(resources_.precision);
    // This forward builds its fresh prototypes in the spare buffer and keeps them only when it
    // succeeds: a forward that throws leaves the pending ones (what write() stores) as they were.
    std::swap(fresh_, spare_fresh_);
    struct KeepPending {
      detail::ScratchBuffer& fresh;
      detail::ScratchBuffer& spare;
      bool succeeded = false;
      ~KeepPending() {
        if (!succeeded) std::swap(fresh, spare);
      }
    } keep{fresh_, spare_fresh_};

    // Workspace: the caller's when it is large enough, else ours (CUB's two-phase idiom).
    Work w;
    const std::size_t needed = carve(nullptr, shape, w);
    last_tile_columns_ = shape.T;
    last_workspace_bytes_ = needed;
    char* base = static_cast<char*>(resources_.workspace);
    if (base == nullptr || resources_.workspace_bytes < needed) {
      workspace_.reserve(needed, s);
      base = static_cast<char*>(workspace_.data());
    }
    carve(base, shape, w);
    // Persistent across forward -> commit: the fresh prototypes and the write plan's staging.
    fresh_.reserve(static_cast<std::size_t>(C * D) * sizeof(float), s);
    float* fresh = static_cast<float*>(fresh_.data());
    detail::cuda_check(cudaEventSynchronize(plan_copied_.get()), "cudaEventSynchronize");
    plan_host_.reserve(static_cast<std::size_t>(3 * C));
    plan_device_.reserve(static_cast<std::size_t>(3 * C) * sizeof(Index), s);

    // The batch's grouping (host), the excluded slots and the aged columns' shifts, in one copy
    // (the layout of carve()).
    detail::cuda_check(cudaEventSynchronize(meta_copied_.get()), "cudaEventSynchronize");
    const MetaLayout layout = meta_layout(shape);
    const auto meta_count = static_cast<std::size_t>(layout.count);
    meta_host_.reserve(meta_count);
    Index* meta = meta_host_.data();
    std::copy(batch.offsets.begin(), batch.offsets.end(), meta);
    std::copy(batch.members.begin(), batch.members.end(), meta + C + 1);
    std::copy(batch.class_of.begin(), batch.class_of.end(), meta + C + 1 + B);
    std::copy(excluded.data, excluded.data + excluded.size, meta + C + 1 + 2 * B);
    if (shape.A > 0) {
      // The CPU backend's column_shift_: log pi_j / s in float, added to the cosines in the pass.
      auto* shift = reinterpret_cast<float*>(meta + layout.shift);
      const auto s_float = float(margin.scale());
      for (index_t j = 0; j < shape.A; ++j) shift[j] = column_bias.data[j] / s_float;
    }
    detail::cuda_check(cudaMemcpyAsync(w.offsets, meta, meta_count * sizeof(Index),
                                       cudaMemcpyHostToDevice, s),
                       "cudaMemcpyAsync(batch classes)");
    detail::cuda_check(cudaEventRecord(meta_copied_.get(), s), "cudaEventRecord");
    detail::cuda_check(cudaMemsetAsync(w.status, 0xff, sizeof(StepStatus), s),
                       "cudaMemsetAsync(status)");

    detail::CublasScope blas(cublas(), s);
    namespace k_ = cuda_kernels;

    // 1. normalise, 2. generate.
    k_::normalise<<<grid(B), kThreads, 0, s>>>(embeddings.data, embeddings.row_stride, D, w.x,
                                                w.inv_norm, w.norms, w.status);
    detail::cuda_check_launch("normalise");
    k_::generate<<<grid(C), kThreads, 0, s>>>(w.x, D, w.offsets, w.members, fresh, w.inv_sum_norm,
                                               w.status);
    detail::cuda_check_launch("generate");
    if constexpr (loo) {
      k_::leave_one_out<<<grid(B), kThreads, 0, s>>>(w.x, fresh, w.inv_sum_norm, w.class_of, D,
                                                      w.others, w.inv_others_norm, w.status);
      detail::cuda_check_launch("leave_one_out");
    }

    // 3. memory pass.
    memory_pass(shape, w, fresh, float(margin.scale()));

    // 4. batch columns: B x C cosines in fp32, then margin, softmax, loss.
    detail::gemm_row_major(cublas(), B, C, D, 1.0f, detail::operand(w.x, CUDA_R_32F, D, false),
                           detail::operand(fresh, CUDA_R_32F, D, true), 0.0f, w.batch_cos, C,
                           CUBLAS_COMPUTE_32F, "GEMM batch cosines");
    const float scale = float(margin.scale());
    const float s_over_b = scale / float(B);
    k_::batch_columns<loo><<<grid(B), kThreads, 0, s>>>(
        w.batch_cos, C, w.class_of, w.offsets, w.x, w.others, D, margin, scale, s_over_b,
        w.run_max, w.run_sum, w.batch_grad, w.target_grad, w.memory_weight, w.row_loss);
    detail::cuda_check_launch("batch_columns");
    k_::sum_loss<<<1, kThreads, 0, s>>>(w.row_loss, B, w.status);
    detail::cuda_check_launch("sum_loss");

    // 5. backward.
    k_::memory_part<loo><<<elementwise_grid(B * D), kThreads, 0, s>>>(
        w.weighted, w.memory_weight, w.others, w.target_grad, B, D, w.grad_x);
    detail::cuda_check_launch("memory_part");
    // dL/dx += G P (columns p_c; the target column too, unless leave-one-out, where G_iy = 0)
    detail::gemm_row_major(cublas(), B, D, C, 1.0f,
                           detail::operand(w.batch_grad, CUDA_R_32F, C, false),
                           detail::operand(fresh, CUDA_R_32F, D, false), 1.0f, w.grad_x, D,
                           CUBLAS_COMPUTE_32F, "GEMM batch-column gradient");
    if constexpr (Gradient) {
      // dL/dp_c = sum_i G_ic x_i, then through the normalisation of u_c.
      detail::gemm_row_major(cublas(), C, D, B, 1.0f,
                             detail::operand(w.batch_grad, CUDA_R_32F, C, true),
                             detail::operand(w.x, CUDA_R_32F, D, false), 0.0f, w.grad_fresh, D,
                             CUBLAS_COMPUTE_32F, "GEMM prototype gradient");
      k_::project_class_grad<<<grid(C), kThreads, 0, s>>>(fresh, w.inv_sum_norm, D, w.grad_fresh);
      detail::cuda_check_launch("project_class_grad");
      k_::add_class_grad<<<elementwise_grid(B * D), kThreads, 0, s>>>(w.grad_fresh, w.class_of, B,
                                                                      D, w.grad_x);
      detail::cuda_check_launch("add_class_grad");
      if constexpr (loo) {
        k_::leave_one_out_grad<<<grid(B), kThreads, 0, s>>>(w.x, w.others, w.inv_others_norm,
                                                             w.target_grad, D, w.grad_others);
        detail::cuda_check_launch("leave_one_out_grad");
        k_::leave_one_out_scatter<<<grid(C), kThreads, 0, s>>>(w.grad_others, w.offsets,
                                                                w.members, D, w.grad_x);
        detail::cuda_check_launch("leave_one_out_scatter");
      }
    }
    k_::through_normalisation<<<grid(B), kThreads, 0, s>>>(w.grad_x, w.x, w.inv_norm, D, w.status);
    detail::cuda_check_launch("through_normalisation");
    k_::copy_gradient<<<grid(B), kThreads, 0, s>>>(w.grad_x, D, w.status, gradient.data,
                                                   gradient.row_stride);
    detail::cuda_check_launch("copy_gradient");

    // The one host synchronisation of a step: the status (errors and loss) and the mining lists.
    status_host_.reserve(1);
    detail::cuda_check(cudaMemcpyAsync(status_host_.data(), w.status, sizeof(StepStatus),
                                       cudaMemcpyDeviceToHost, s),
                       "cudaMemcpyAsync(status)");
    const std::size_t listed = static_cast<std::size_t>(C * k);
    if (listed > 0) {
      similar_cosines_host_.reserve(listed);
      similar_slots_host_.reserve(listed);
      detail::cuda_check(cudaMemcpyAsync(similar_cosines_host_.data(), w.top_cosines[w.top_final],
                                         listed * sizeof(float), cudaMemcpyDeviceToHost, s),
                         "cudaMemcpyAsync(similar cosines)");
      detail::cuda_check(cudaMemcpyAsync(similar_slots_host_.data(), w.top_slots[w.top_final],
                                         listed * sizeof(Index), cudaMemcpyDeviceToHost, s),
                         "cudaMemcpyAsync(similar slots)");
    }
    detail::cuda_check(cudaStreamSynchronize(s), "the step (cudaStreamSynchronize)");
    const StepStatus& status = *status_host_.data();
    throw_invalid_input(status, batch, embeddings, w);
    // The last line of defence, as on the CPU (copy_gradient has written nothing then).
    const auto loss = Scalar(status.loss_sum / double(B));
    if (!std::isfinite(loss)) fail_step::loss_not_finite(loss);
    if (status.bad_gradient != cuda_kernels::kNone) {
      fail_step::gradient_not_finite(static_cast<index_t>(status.bad_gradient));
    }

    if (k > 0) {
      similar->slots.assign(similar_slots_host_.data(), similar_slots_host_.data() + listed);
      similar->cosines.assign(similar_cosines_host_.data(),
                              similar_cosines_host_.data() + listed);
    }
    keep.succeeded = true;
    return loss;
  }

  /// The seam's forward (backend/seam.hpp) for a built-in margin and exemplar-mean rule (cuda.hpp
  /// dispatches the memory's policies to it): the GPU ignores the thread count and reports one
  /// "thread", its tile width and the workspace bytes of the step. A row-statistics merge hook is
  /// not taken yet (the statistics stay on the device; docs/distributed.md).
  template <class Margin, bool Gradient, bool LeaveOneOut>
  StepOutput<Scalar> forward_rule(const StepInput<Scalar>& in, const Margin& margin) {
    if (in.merge_rows) {
      detail::fail("the CUDA backend does not take a row-statistics merge (StepInput::merge_rows)");
    }
    StepOutput<Scalar> out;
    out.similar.k = in.similar_k;
    out.loss = forward<Margin, Gradient, LeaveOneOut>(*in.batch, in.embeddings, in.gradient,
                                                      in.used, in.excluded, in.column_bias, margin,
                                                      in.workspace_bytes, &out.similar);
    out.pass.threads = 1;
    out.pass.tile_columns = last_tile_columns_;
    out.pass.workspace_bytes = last_workspace_bytes_;
    return out;
  }

  /// Stores the fresh prototypes of the last forward() into their slots: one upload of the plan
  /// and one kernel, asynchronous. Allocates nothing. Every error the runtime reports while
  /// issuing them (device, plan copy, launch) throws protomem::Error with the store unwritten,
  /// before PrototypeMemory changes its bookkeeping, so that the update stays pending and a retried
  /// commit() writes it once. A fault while the kernel runs surfaces at the next synchronisation
  /// (the next forward() or prototype read); such faults leave the CUDA context unusable, and
  /// every later call throws.
  template <class Refresh>
  void write(const std::vector<SlotWrite>& writes, const Refresh& refresh) {
    const auto W = static_cast<index_t>(writes.size());
    if (W == 0) return;
    cudaError_t status = cudaSuccess;
    {
      detail::DeviceScope scope(device_, status);
      const cudaStream_t s = stream();
      if (status == cudaSuccess) status = std::exchange(injected_write_failure_, cudaSuccess);
      // An error left by earlier work on this thread would read as this launch's: clear it first
      // (it fails this commit, with nothing written).
      if (status == cudaSuccess) status = cudaGetLastError();
      if (status == cudaSuccess) status = cudaEventSynchronize(plan_copied_.get());
      if (status == cudaSuccess) {
        Index* plan = plan_host_.data();  // room for 3 C entries reserved by forward()
        for (index_t t = 0; t < W; ++t) {
          plan[t] = writes[static_cast<std::size_t>(t)].batch_class;
          plan[W + t] = writes[static_cast<std::size_t>(t)].slot;
          plan[2 * W + t] = writes[static_cast<std::size_t>(t)].refresh ? 1 : 0;
        }
        status = cudaMemcpyAsync(plan_device_.data(), plan,
                                 static_cast<std::size_t>(3 * W) * sizeof(Index),
                                 cudaMemcpyHostToDevice, s);
      }
      if (status == cudaSuccess) status = cudaEventRecord(plan_copied_.get(), s);
      if (status == cudaSuccess) {
        const auto* plan = static_cast<const Index*>(plan_device_.data());
        float* fresh = static_cast<float*>(fresh_.data());
        const bool shadow = shadow_valid_ && detail::is_16bit(shadow_precision_);
        if (shadow && shadow_precision_ == GemmPrecision::bf16) {
          cuda_kernels::write_slots<<<grid(W), kThreads, 0, s>>>(
              plan, W, dim_, refresh, fresh, store_.data(),
              static_cast<__nv_bfloat16*>(shadow_.data()));
        } else if (shadow) {
          cuda_kernels::write_slots<<<grid(W), kThreads, 0, s>>>(
              plan, W, dim_, refresh, fresh, store_.data(), static_cast<__half*>(shadow_.data()));
        } else {
          cuda_kernels::write_slots<<<grid(W), kThreads, 0, s>>>(
              plan, W, dim_, refresh, fresh, store_.data(), static_cast<float*>(nullptr));
        }
        status = cudaGetLastError();
      }
    }
    if (status != cudaSuccess) {
      detail::fail(
          "CUDA error in commit (writing the fresh prototypes): ", cudaGetErrorName(status), " (",
          cudaGetErrorString(status), "); nothing was written and the update is still pending");
    }
    // The host mirror: remember the written rows (no allocation: stale_ has reserved room).
    for (const SlotWrite& write : writes) {
      hwm_ = std::max(hwm_, write.slot + 1);
      if (stale_all_) continue;
      if (stale_.size() < stale_.capacity()) {
        stale_.push_back(write.slot);
      } else {
        stale_all_ = true;
        stale_.clear();
      }
    }
  }

 private:
  static constexpr index_t kStaleRows = 65536;  // beyond this, the mirror is refreshed whole

  // The sizes of one step.
  struct Shape {
    index_t B, C, D, U, T, k, E;
    index_t A;  // aged columns: U with a column bias, else 0
    bool loo;
    GemmPrecision precision;
  };

  // Pointers into the step's workspace (see carve()).
  struct Work {
    Index *offsets, *members, *class_of, *excluded;
    float* shift;  // per slot [0, A): log pi_j / s (nullptr when A = 0)
    float *x, *inv_norm, *inv_sum_norm, *others, *inv_others_norm;
    double* norms;
    void* x16;
    float *run_max, *run_sum, *weighted, *tile;
    void* tile16;
    float* sims;
    float* top_cosines[2];
    Index* top_slots[2];
    int top_final;
    float *batch_cos, *batch_grad, *target_grad, *memory_weight;
    double* row_loss;
    float *grad_x, *grad_fresh, *grad_others;
    StepStatus* status;
  };

  Shape make_shape(index_t B, index_t C, index_t U, index_t E, index_t A, std::size_t budget,
                   index_t k, bool loo, GemmPrecision precision) const {
    return {B, C, dim_, U, tile_columns(B, U, budget), k, E, A, loo, precision};
  }

  // The step's metadata in Index units, one host->device copy: offsets (C + 1), members (B),
  // class_of (B), excluded (E), then, with aging, A float shifts from a 16-byte boundary (so that
  // tile_softmax reads them four at a time; tiles start at multiples of 4 columns).
  struct MetaLayout {
    index_t shift;  // where the shifts start
    index_t count;  // the whole block
  };
  static MetaLayout meta_layout(const Shape& s) {
    static_assert(sizeof(Index) == 2 * sizeof(float), "two float shifts per Index");
    const index_t grouping = s.C + 1 + 2 * s.B + s.E;
    if (s.A == 0) return {grouping, grouping};
    const index_t shift = grouping + grouping % 2;
    return {shift, shift + (s.A + 1) / 2};
  }

  // The CPU backend's rule: the budget over B x sizeof(float) bytes per column, at most U, and at
  // most the caller's CudaResources::tile_columns. Wider is faster on the GPU: an H200 ran the step
  // at B = 512, D = 512, M = 2^20 in bf16 in 4.36 ms with 15,360-column tiles (half its L2), 4.24
  // ms with 32,768 and 3.72 ms with 131,072 (docs/cuda.md), so no cache-sized cap.
  index_t tile_columns(index_t B, index_t U, std::size_t budget) const {
    const index_t cap = resources_.tile_columns > 0 ? static_cast<index_t>(resources_.tile_columns)
                                                    : static_cast<index_t>(INT_MAX / 2);
    // One lane (the GPU is the parallelism): the shared planner's width for a B x T tile.
    index_t t = plan_tiles(std::max<index_t>(B, 1), dim_, U, 0, sizeof(float), budget, 1,
                           std::min(cap, static_cast<index_t>(INT_MAX / 2)), 1.0)
                    .columns;
    if (t < U && t >= 64) t -= t % 4;  // whole tiles of a multiple of 4: tile_softmax's fast path
    return t;
  }

  // Lays the workspace out from `base` (nullptr: only measures) and returns its size in bytes.
  static std::size_t carve(char* base, const Shape& s, Work& w) {
    std::size_t offset = 0;
    auto take = [&](auto* type_tag, index_t count) {
      using T = std::remove_pointer_t<decltype(type_tag)>;
      offset = (offset + 255) & ~std::size_t{255};
      T* p = base != nullptr ? reinterpret_cast<T*>(base + offset) : nullptr;
      offset += static_cast<std::size_t>(std::max<index_t>(count, 0)) * sizeof(T);
      return p;
    };
    const bool half = detail::is_16bit(s.precision);
    const index_t B = s.B, C = s.C, D = s.D, T = s.T;
    // The batch's grouping, contiguous (one upload): offsets, members, class_of, excluded, and the
    // aged columns' shifts (meta_layout()).
    const MetaLayout layout = meta_layout(s);
    w.offsets = take(static_cast<Index*>(nullptr), layout.count);
    w.members = w.offsets + (C + 1);
    w.class_of = w.members + B;
    w.excluded = w.class_of + B;
    w.shift =
        s.A > 0 && base != nullptr ? reinterpret_cast<float*>(w.offsets + layout.shift) : nullptr;
    w.status = take(static_cast<StepStatus*>(nullptr), 1);
    w.x = take(static_cast<float*>(nullptr), B * D);
    w.x16 = take(static_cast<std::uint16_t*>(nullptr), half ? B * D : 0);
    w.inv_norm = take(static_cast<float*>(nullptr), B);
    w.norms = take(static_cast<double*>(nullptr), B);
    w.inv_sum_norm = take(static_cast<float*>(nullptr), C);
    w.others = take(static_cast<float*>(nullptr), s.loo ? B * D : 0);
    w.inv_others_norm = take(static_cast<float*>(nullptr), s.loo ? B : 0);
    w.run_max = take(static_cast<float*>(nullptr), B);
    w.run_sum = take(static_cast<float*>(nullptr), B);
    w.weighted = take(static_cast<float*>(nullptr), B * D);
    w.tile = take(static_cast<float*>(nullptr), B * T);
    w.tile16 = take(static_cast<std::uint16_t*>(nullptr), half ? B * T : 0);
    w.sims = take(static_cast<float*>(nullptr), s.k > 0 ? C * T : 0);
    for (int b = 0; b < 2; ++b) {
      w.top_cosines[b] = take(static_cast<float*>(nullptr), C * s.k);
      w.top_slots[b] = take(static_cast<Index*>(nullptr), C * s.k);
    }
    w.top_final = 0;
    w.batch_cos = take(static_cast<float*>(nullptr), B * C);
    w.batch_grad = take(static_cast<float*>(nullptr), B * C);
    w.target_grad = take(static_cast<float*>(nullptr), B);
    w.memory_weight = take(static_cast<float*>(nullptr), B);
    w.row_loss = take(static_cast<double*>(nullptr), B);
    w.grad_x = take(static_cast<float*>(nullptr), B * D);
    w.grad_fresh = take(static_cast<float*>(nullptr), C * D);
    w.grad_others = take(static_cast<float*>(nullptr), s.loo ? B * D : 0);
    return offset;
  }

  // 3. The memory part, tile by tile (see the CPU backend's memory_pass and kernels.cuh).
  void memory_pass(const Shape& shape, Work& w, const float* fresh, float scale) {
    namespace k_ = cuda_kernels;
    const cudaStream_t s = stream();
    const index_t B = shape.B, C = shape.C, D = shape.D, U = shape.U, T = shape.T, k = shape.k;
    const GemmPrecision precision = shape.precision;
    const bool half = detail::is_16bit(precision);
    const cudaDataType_t input = detail::gemm_input_type(precision);
    const cublasComputeType_t compute = detail::gemm_compute_type(precision);
    const std::size_t input_bytes = half ? 2 : 4;

    k_::start_pass<<<elementwise_grid(B), kThreads, 0, s>>>(w.run_max, w.run_sum, B);
    detail::cuda_check_launch("start_pass");
    detail::cuda_check(
        cudaMemsetAsync(w.weighted, 0, static_cast<std::size_t>(B * D) * sizeof(float), s),
        "cudaMemsetAsync(O)");
    if (k > 0) {
      k_::start_top_k<<<elementwise_grid(C * k), kThreads, 0, s>>>(w.top_cosines[0],
                                                                   w.top_slots[0], C * k);
      detail::cuda_check_launch("start_top_k");
    }
    if (U == 0) return;

    const void* x_input = w.x;
    const void* store_input = store_.data();
    if (half) {
      with_16bit(precision, [&](auto tag) {
        using H = decltype(tag);
        k_::convert<H><<<elementwise_grid(B * D), kThreads, 0, s>>>(w.x, static_cast<H*>(w.x16),
                                                                    B * D);
      });
      detail::cuda_check_launch("convert x");
      x_input = w.x16;
      store_input = shadow_.data();
    }

    // The stale copies of the batch's classes are no columns: mask them for the pass, and unmask
    // them afterwards even when a call below throws.
    k_::set_flags<<<elementwise_grid(shape.E), kThreads, 0, s>>>(inactive_.data(), w.excluded,
                                                                 shape.E, 1);
    detail::cuda_check_launch("set_flags");
    struct Unmask {
      const Work& w;
      std::uint8_t* flags;
      index_t n;
      cudaStream_t s;
      ~Unmask() {
        k_::set_flags<<<elementwise_grid(n), kThreads, 0, s>>>(flags, w.excluded, n, 0);
      }
    } unmask{w, inactive_.data(), shape.E, s};

    int current = 0;
    for (index_t j0 = 0; j0 < U; j0 += T) {
      const index_t n = std::min(T, U - j0);
      const auto* w_tile = static_cast<const char*>(store_input) + j0 * D * input_bytes;
      // cosines (B x n) = x W_tile^T
      detail::gemm_row_major(cublas(), B, n, D, 1.0f, detail::operand(x_input, input, D, false),
                             detail::operand(w_tile, input, D, true), 0.0f, w.tile, n, compute,
                             "GEMM memory cosines");
      if (k > 0) {
        // class cosines (C x n) = P_fresh W_tile^T (fp32 inputs; TF32 when the caller chose a
        // tensor-core precision), merged into the running top-k lists.
        detail::gemm_row_major(
            cublas(), C, n, D, 1.0f, detail::operand(fresh, CUDA_R_32F, D, false),
            detail::operand(store_.data() + j0 * D, CUDA_R_32F, D, true), 0.0f, w.sims, n,
            precision == GemmPrecision::fp32 ? CUBLAS_COMPUTE_32F : CUBLAS_COMPUTE_32F_FAST_TF32,
            "GEMM class similarities");
        k_::top_k_merge<<<grid(C), kThreads, 0, s>>>(
            w.sims, n, j0, inactive_.data() + j0, k, w.top_cosines[current],
            w.top_slots[current], w.top_cosines[1 - current], w.top_slots[1 - current]);
        detail::cuda_check_launch("top_k_merge");
        current = 1 - current;
      }
      // online softmax statistics, with the aged columns' shifts (after mining, which ranks by
      // cosine); P in place (fp32) or into the 16-bit tile
      const void* p_input = w.tile;
      auto softmax = [&](auto shifted, auto* probabilities) {
        using H = std::remove_pointer_t<decltype(probabilities)>;
        k_::tile_softmax<H, decltype(shifted)::value><<<grid(B), kThreads, 0, s>>>(
            w.tile, n, inactive_.data() + j0, shifted ? w.shift + j0 : nullptr, scale, w.run_max,
            w.run_sum, w.weighted, D, probabilities);
      };
      auto softmax_into = [&](auto* probabilities) {
        if (shape.A > 0) {
          softmax(std::true_type{}, probabilities);
        } else {
          softmax(std::false_type{}, probabilities);
        }
      };
      if (half) {
        with_16bit(precision, [&](auto tag) {
          using H = decltype(tag);
          softmax_into(static_cast<H*>(w.tile16));
        });
        p_input = w.tile16;
      } else {
        softmax_into(w.tile);
      }
      detail::cuda_check_launch("tile_softmax");
      // O (B x D) += P W_tile
      detail::gemm_row_major(cublas(), B, D, n, 1.0f, detail::operand(p_input, input, n, false),
                             detail::operand(w_tile, input, D, false), 1.0f, w.weighted, D, compute,
                             "GEMM weighted prototypes");
    }
    w.top_final = current;
  }

  template <class F>
  static void with_16bit(GemmPrecision precision, F&& f) {
    if (precision == GemmPrecision::bf16) {
      f(__nv_bfloat16{});
    } else {
      f(__half{});
    }
  }

  // The first invalid input, in the CPU backend's order and with its message.
  void throw_invalid_input(const StepStatus& status, const detail::BatchClasses& batch,
                           MatrixView<const Scalar> embeddings, const Work& w) const {
    const index_t D = dim_;
    if (status.bad_embedding != cuda_kernels::kNone) {
      const auto i = static_cast<index_t>(status.bad_embedding / static_cast<std::uint64_t>(D + 1));
      const auto k = static_cast<index_t>(status.bad_embedding % static_cast<std::uint64_t>(D + 1));
      if (k < D) {
        Scalar value = 0;
        detail::cuda_check(cudaMemcpy(&value, embeddings.row(i) + k, sizeof(Scalar),
                                      cudaMemcpyDeviceToHost),
                           "cudaMemcpy(invalid embedding)");
        fail_step::embedding_not_finite(i, k, value);
      }
      double norm = 0;
      detail::cuda_check(cudaMemcpy(&norm, w.norms + i, sizeof(double), cudaMemcpyDeviceToHost),
                         "cudaMemcpy(invalid norm)");
      fail_step::embedding_norm(i, norm);
    }
    if (status.bad_class != cuda_kernels::kNone) {
      fail_step::class_sum_zero(batch.labels[static_cast<std::size_t>(status.bad_class)]);
    }
    if (status.bad_loo != cuda_kernels::kNone) {
      const auto i = static_cast<index_t>(status.bad_loo);
      fail_step::leave_one_out_zero(batch.labels[static_cast<std::size_t>(batch.class_of[i])], i);
    }
  }

  void check_device_pointer(const void* pointer, const char* what) const {
    cudaPointerAttributes attributes{};
    detail::cuda_check(cudaPointerGetAttributes(&attributes, pointer), "cudaPointerGetAttributes");
    const bool device_memory = attributes.type == cudaMemoryTypeDevice ||
                               attributes.type == cudaMemoryTypeManaged;
    if (!device_memory) {
      detail::fail(what, " is not device memory: the CUDA memory reads embeddings and writes the ",
                   "gradient on the GPU (labels stay on the host)");
    }
    if (attributes.type == cudaMemoryTypeDevice && attributes.device != device_) {
      detail::fail(what, " is on device ", attributes.device, " but the memory is on device ",
                   device_);
    }
  }

  // After load(): the prototypes set on the host go to the device in one copy.
  void upload_host_store() {
    if (!upload_pending_) return;
    if (hwm_ > 0) {
      detail::cuda_check(cudaMemcpyAsync(store_.data(), host_.data(),
                                         static_cast<std::size_t>(hwm_ * dim_) * sizeof(float),
                                         cudaMemcpyHostToDevice, stream()),
                         "cudaMemcpyAsync(prototypes to the device)");
    }
    upload_pending_ = false;
    stale_.clear();
    stale_all_ = false;
    shadow_valid_ = false;
  }

  // The 16-bit copy of the store that bf16/fp16 GEMMs read, made on first use and kept current by
  // write() from then on.
  void ensure_shadow(GemmPrecision precision) {
    if (!detail::is_16bit(precision)) return;
    if (shadow_valid_ && shadow_precision_ == precision) return;
    const cudaStream_t s = stream();
    shadow_.reserve(static_cast<std::size_t>(capacity_ * dim_) * 2, s);
    if (hwm_ > 0) {
      with_16bit(precision, [&](auto tag) {
        using H = decltype(tag);
        cuda_kernels::convert<H><<<elementwise_grid(hwm_ * dim_), kThreads, 0, s>>>(
            store_.data(), static_cast<H*>(shadow_.data()), hwm_ * dim_);
      });
      detail::cuda_check_launch("convert store");
    }
    shadow_valid_ = true;
    shadow_precision_ = precision;
  }

  // Brings the host mirror up to date with the device rows written since the last read.
  void sync_host_mirror() const {
    if (upload_pending_) return;  // the host copy is the newer one until the next step uploads it
    if (!stale_all_ && stale_.empty()) return;
    detail::DeviceScope scope(device_);
    if (host_.size() < static_cast<std::size_t>(hwm_ * dim_)) {
      host_.resize(static_cast<std::size_t>(hwm_ * dim_));
    }
    const std::size_t row_bytes = static_cast<std::size_t>(dim_) * sizeof(float);
    if (stale_all_) {
      detail::cuda_check(cudaMemcpyAsync(host_.data(), store_.data(),
                                         static_cast<std::size_t>(hwm_) * row_bytes,
                                         cudaMemcpyDeviceToHost, stream()),
                         "cudaMemcpyAsync(prototypes to the host)");
    } else {
      for (index_t slot : stale_) {
        detail::cuda_check(cudaMemcpyAsync(host_.data() + slot * dim_, store_.data() + slot * dim_,
                                           row_bytes, cudaMemcpyDeviceToHost, stream()),
                           "cudaMemcpyAsync(prototype to the host)");
      }
    }
    detail::cuda_check(cudaStreamSynchronize(stream()),
                       "reading prototypes (cudaStreamSynchronize)");
    stale_.clear();
    stale_all_ = false;
  }

  cudaStream_t stream() const { return resources_.stream; }
  cublasHandle_t cublas() const {
    return resources_.cublas != nullptr ? resources_.cublas : owned_cublas_.get();
  }
  static unsigned grid(index_t blocks) {
    return static_cast<unsigned>(std::max<index_t>(blocks, 1));
  }
  static unsigned elementwise_grid(index_t n) {
    return static_cast<unsigned>(std::clamp<index_t>((n + kThreads - 1) / kThreads, 1, 65535));
  }

  index_t capacity_ = 0, dim_ = 0;
  int device_ = 0;
  Resources resources_;
  detail::OwnedCublas owned_cublas_;

  detail::DeviceArray<float> store_;           // capacity x D, row-major; rows [0, hwm_) are used
  detail::DeviceArray<std::uint8_t> inactive_;  // per slot: 1 while it is excluded from a pass
  detail::ScratchBuffer shadow_;               // 16-bit copy of the store (bf16/fp16 GEMMs)
  GemmPrecision shadow_precision_ = GemmPrecision::fp32;
  bool shadow_valid_ = false;
  detail::ScratchBuffer workspace_;            // ours, when the caller lends none
  detail::ScratchBuffer fresh_;                // C x D fresh prototypes, forward() -> write()
  detail::ScratchBuffer spare_fresh_;          // the other forward's (see forward())
  cudaError_t injected_write_failure_ = cudaSuccess;  // fail_next_write_for_testing()
  detail::ScratchBuffer plan_device_;          // the write plan on the device
  detail::PinnedArray<Index> plan_host_;       // ... and its staging
  detail::PinnedArray<Index> meta_host_;       // staging of the batch's grouping
  detail::PinnedArray<StepStatus> status_host_;
  detail::PinnedArray<float> similar_cosines_host_;
  detail::PinnedArray<Index> similar_slots_host_;
  detail::Event plan_copied_, meta_copied_, handoff_;

  index_t hwm_ = 0;  // rows of the store that hold prototypes (PrototypeMemory's used count)
  // Host mirror for prototype(): rows of host_ are current except the slots in stale_ (or all of
  // them when stale_all_); after load() host_ is current and the device copy waits for an upload.
  mutable std::vector<float> host_;
  mutable std::vector<index_t> stale_;
  mutable bool stale_all_ = false;
  bool upload_pending_ = false;

  index_t last_tile_columns_ = 0;  // of the last forward(), for the pass report
  std::size_t last_workspace_bytes_ = 0;
};

}  // namespace backend

}  // namespace protomem
