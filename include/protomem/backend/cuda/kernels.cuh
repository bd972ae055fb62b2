// The CUDA backend's kernels: the parts of a step that are not GEMMs. Each is the device twin of
// one piece of the CPU backend (include/protomem/backend/cpu/backend.hpp) and keeps its arithmetic:
// the same formulas, the same float/double choices, the same masking, so that the two backends
// differ only by summation order (and by the GEMM precision the caller chose).
//
// Launch shapes: "block per row" kernels take one block of kThreads threads per batch sample,
// "block per class" one per batch class, "elementwise" a grid-stride loop. All indices are 64-bit.
// Every kernel is a template (`template <int = 0>` where nothing else is a parameter), as CUB's
// are, so that several translation units of one program may include this header.
#pragma once

#include <cmath>
#include <cstdint>
#include <type_traits>

#include <cub/block/block_reduce.cuh>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <protomem/backend/row_math.hpp>

namespace protomem::backend::cuda_kernels {

using Index = std::int64_t;
constexpr int kThreads = 256;
constexpr unsigned long long kNone = ~0ULL;

/// What a step reports back to the host in one copy: the first invalid input in the CPU backend's
/// order (kNone where there is none) and the summed loss.
struct StepStatus {
  /// min over invalid rows i of i * (D + 1) + k, k the first non-finite column of row i, or D when
  /// the row's values are finite but its norm cannot be inverted.
  unsigned long long bad_embedding;
  unsigned long long bad_class;  ///< min batch class whose exemplars sum to zero
  unsigned long long bad_loo;    ///< min sample whose leave-one-out sum is zero
  unsigned long long bad_gradient;  ///< min row whose dL/de is not finite
  double loss_sum;               ///< sum over the batch of the cross-entropy
};

// ---- helpers ------------------------------------------------------------------------------------

template <class T>
__device__ __forceinline__ T convert_to(float v) {
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    return __float2bfloat16(v);
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half(v);
  } else {
    return v;
  }
}

struct SumOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return a + b;
  }
};
struct MaxOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return b > a ? b : a;
  }
};
struct MinOp {
  template <class T>
  __device__ T operator()(T a, T b) const {
    return b < a ? b : a;
  }
};

/// Reduces one value per thread over the block (of exactly kThreads threads) and returns the result
/// to every thread. Safe to call repeatedly in a kernel.
template <class T, class Op>
__device__ T block_reduce(T value, Op op) {
  constexpr int warps = kThreads / 32;
  __shared__ T partial[warps];
  for (int offset = 16; offset > 0; offset /= 2) {
    value = op(value, __shfl_down_sync(0xffffffffU, value, offset));
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  __syncthreads();  // the previous call's readers are done with `partial`
  if (lane == 0) partial[warp] = value;
  __syncthreads();
  T result = partial[0];
  for (int w = 1; w < warps; ++w) result = op(result, partial[w]);
  return result;
}

// ---- 1. normalise: x_i = e_i / |e_i| ------------------------------------------------------------

/// Block per row. The norm is accumulated in double, x is computed as float(e / norm) in double, as
/// the CPU backend does; invalid rows are reported, not fixed.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    normalise(const float* e, Index row_stride, Index D, float* x, float* inv_norm, double* norms,
              StepStatus* status) {
  const Index i = blockIdx.x;
  const float* row = e + i * row_stride;
  double sum2 = 0;
  Index first_bad = D;
  for (Index k = threadIdx.x; k < D; k += kThreads) {
    const float v = row[k];
    if (!isfinite(v) && k < first_bad) first_bad = k;
    sum2 += double(v) * double(v);
  }
  sum2 = block_reduce(sum2, SumOp{});
  first_bad = block_reduce(first_bad, MinOp{});
  const double norm = sqrt(sum2);
  if (threadIdx.x == 0) {
    norms[i] = norm;
    inv_norm[i] = float(1.0 / norm);
    const bool bad_norm = !normalisable<float>(norm);
    if (first_bad < D || bad_norm) {
      atomicMin(&status->bad_embedding, static_cast<unsigned long long>(i * (D + 1) + first_bad));
    }
  }
  for (Index k = threadIdx.x; k < D; k += kThreads) x[i * D + k] = float(double(row[k]) / norm);
}

// ---- 2. generate: p_c = normalize(sum_{i in c} x_i), q_i = normalize(u_c - x_i) -----------------

/// Block per class; exemplars summed in member order (ascending sample index), as on the CPU.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    generate(const float* x, Index D, const Index* offsets, const Index* members, float* fresh,
             float* inv_sum_norm, StepStatus* status) {
  const Index c = blockIdx.x;
  const Index begin = offsets[c], end = offsets[c + 1];
  float sq = 0;
  for (Index k = threadIdx.x; k < D; k += kThreads) {
    float u = 0;
    for (Index r = begin; r < end; ++r) u += x[members[r] * D + k];
    fresh[c * D + k] = u;
    sq += u * u;
  }
  sq = block_reduce(sq, SumOp{});
  const float norm = sqrtf(sq);
  const float inv = 1.0f / norm;
  if (threadIdx.x == 0) {
    if (!(norm > 0)) atomicMin(&status->bad_class, static_cast<unsigned long long>(c));
    inv_sum_norm[c] = inv;
  }
  for (Index k = threadIdx.x; k < D; k += kThreads) fresh[c * D + k] *= inv;
}

/// Block per row: the leave-one-out target q_i = normalize(u_c - x_i), u_c = p_c / inv_sum_norm_c.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    leave_one_out(const float* x, const float* fresh, const float* inv_sum_norm,
                  const Index* class_of, Index D, float* others, float* inv_others_norm,
                  StepStatus* status) {
  const Index i = blockIdx.x, c = class_of[i];
  float sq = 0;
  for (Index k = threadIdx.x; k < D; k += kThreads) {
    const float v = fresh[c * D + k] / inv_sum_norm[c] - x[i * D + k];
    others[i * D + k] = v;
    sq += v * v;
  }
  sq = block_reduce(sq, SumOp{});
  const float norm = sqrtf(sq);
  const float inv = 1.0f / norm;
  if (threadIdx.x == 0) {
    if (!(norm > 0)) atomicMin(&status->bad_loo, static_cast<unsigned long long>(i));
    inv_others_norm[i] = inv;
  }
  for (Index k = threadIdx.x; k < D; k += kThreads) others[i * D + k] *= inv;
}

// ---- small utilities ----------------------------------------------------------------------------

/// Elementwise: dst = src converted to a 16-bit GEMM input type.
template <class H>
__global__ void convert(const float* src, H* dst, Index n) {
  for (Index t = blockIdx.x * Index(blockDim.x) + threadIdx.x; t < n;
       t += Index(gridDim.x) * blockDim.x) {
    dst[t] = convert_to<H>(src[t]);
  }
}

/// flags[slots[t]] = value for t < n (marks the stale copies of the batch's classes as no columns).
template <int = 0>
__global__ void set_flags(std::uint8_t* flags, const Index* slots, Index n, std::uint8_t value) {
  for (Index t = blockIdx.x * Index(blockDim.x) + threadIdx.x; t < n;
       t += Index(gridDim.x) * blockDim.x) {
    flags[slots[t]] = value;
  }
}

/// Online-softmax state before the first tile: m_i = -inf, l_i = 0 (O is zeroed by a memset).
template <int = 0>
__global__ void start_pass(float* run_max, float* run_sum, Index B) {
  for (Index t = blockIdx.x * Index(blockDim.x) + threadIdx.x; t < B;
       t += Index(gridDim.x) * blockDim.x) {
    run_max[t] = -INFINITY;
    run_sum[t] = 0;
  }
}

/// Top-k lists before the first tile: slot -1, cosine -inf.
template <int = 0>
__global__ void start_top_k(float* cosines, Index* slots, Index n) {
  for (Index t = blockIdx.x * Index(blockDim.x) + threadIdx.x; t < n;
       t += Index(gridDim.x) * blockDim.x) {
    cosines[t] = -INFINITY;
    slots[t] = -1;
  }
}

// ---- 3. memory pass -----------------------------------------------------------------------------

/// Four P values at out[0..3] (16-byte aligned for float, 8-byte for the 16-bit types).
__device__ __forceinline__ void store4(float* out, float a, float b, float c, float d) {
  *reinterpret_cast<float4*>(out) = make_float4(a, b, c, d);
}
__device__ __forceinline__ void store4(__nv_bfloat16* out, float a, float b, float c, float d) {
  __nv_bfloat162 pair[2] = {__floats2bfloat162_rn(a, b), __floats2bfloat162_rn(c, d)};
  *reinterpret_cast<uint2*>(out) = *reinterpret_cast<const uint2*>(pair);
}
__device__ __forceinline__ void store4(__half* out, float a, float b, float c, float d) {
  __half2 pair[2] = {__floats2half2_rn(a, b), __floats2half2_rn(c, d)};
  *reinterpret_cast<uint2*>(out) = *reinterpret_cast<const uint2*>(pair);
}

/// Block per row, after the tile's cosine GEMM: z_ij = s (cos_ij + shift_j) over the tile's active
/// columns, the running max m_i and sum l_i updated as flash-attention does, P_ij = exp(z_ij - m_i)
/// written (in place when P is float, else to the 16-bit buffer for the next GEMM), and O_i
/// rescaled by exp(m_old - m_new) so that the next GEMM can accumulate P W into it.
/// shift_j = log pi_j / s is an aged column's log-weight in cosine units (policies/aging.hpp), as
/// the CPU backend adds it to its cosine tile; Shifted = false (no aging) reads no shift at all.
/// The mining GEMM has its own cosines, so the shift never reaches the similar-slot search.
/// The kernel is bound by reading the tile twice (max, then exp) from L2: where the tile's width
/// allows (n and the mask's offset multiples of 4, the shift 16-byte aligned; the backend makes
/// tile widths and the shift's place so) it moves four columns per load and store.
/// max(s z) = s max(z) for s > 0, so both paths give the same P.
template <class P, bool Shifted>
__global__ void __launch_bounds__(kThreads)
    tile_softmax(float* logits, Index n, const std::uint8_t* inactive, const float* shift, float s,
                 float* run_max, float* run_sum, float* weighted, Index D, P* probabilities) {
  const Index i = blockIdx.x;
  const float* row = logits + i * n;
  P* out = probabilities + i * n;
  const float old_max = run_max[i];
  const bool by4 = n % 4 == 0 && reinterpret_cast<std::uintptr_t>(inactive) % 4 == 0 &&
                   (!Shifted || reinterpret_cast<std::uintptr_t>(shift) % 16 == 0);
  const Index n4 = by4 ? n / 4 : 0;
  const auto* row4 = reinterpret_cast<const float4*>(row);
  const auto* mask4 = reinterpret_cast<const uchar4*>(inactive);
  // The column's cosine plus its shift (the tile is not rewritten: it is read twice).
  auto shifted4 = [&](Index q) {
    float4 z = row4[q];
    if constexpr (Shifted) {
      const float4 h = reinterpret_cast<const float4*>(shift)[q];
      z.x += h.x;
      z.y += h.y;
      z.z += h.z;
      z.w += h.w;
    }
    return z;
  };
  auto shifted = [&](Index j) {
    if constexpr (Shifted) {
      return row[j] + shift[j];
    } else {
      return row[j];
    }
  };

  float tile_max = -INFINITY;
  if (by4) {
#pragma unroll 4
    for (Index q = threadIdx.x; q < n4; q += kThreads) {
      const float4 z = shifted4(q);
      const uchar4 m = mask4[q];
      if (!m.x) tile_max = fmaxf(tile_max, z.x);
      if (!m.y) tile_max = fmaxf(tile_max, z.y);
      if (!m.z) tile_max = fmaxf(tile_max, z.z);
      if (!m.w) tile_max = fmaxf(tile_max, z.w);
    }
  } else {
    for (Index j = threadIdx.x; j < n; j += kThreads) {
      if (!inactive[j]) tile_max = fmaxf(tile_max, shifted(j));
    }
  }
  tile_max = s * block_reduce(tile_max, MaxOp{});
  const float new_max = fmaxf(old_max, tile_max);
  const float rescale = old_max == new_max ? 1.0f : expf(old_max - new_max);
  const bool live = new_max != -INFINITY;
  float sum = 0;
  if (by4) {
#pragma unroll 4
    for (Index q = threadIdx.x; q < n4; q += kThreads) {
      const float4 z = shifted4(q);
      const uchar4 m = mask4[q];
      const float a = !m.x && live ? expf(s * z.x - new_max) : 0.0f;
      const float b = !m.y && live ? expf(s * z.y - new_max) : 0.0f;
      const float c = !m.z && live ? expf(s * z.z - new_max) : 0.0f;
      const float d = !m.w && live ? expf(s * z.w - new_max) : 0.0f;
      store4(out + 4 * q, a, b, c, d);
      sum += (a + b) + (c + d);
    }
  } else {
    for (Index j = threadIdx.x; j < n; j += kThreads) {
      const float p = !inactive[j] && live ? expf(s * shifted(j) - new_max) : 0.0f;
      out[j] = convert_to<P>(p);
      sum += p;
    }
  }
  sum = block_reduce(sum, SumOp{});
  if (threadIdx.x == 0) {
    run_sum[i] = rescale * run_sum[i] + sum;
    run_max[i] = new_max;
  }
  if (rescale != 1.0f) {
    for (Index k = threadIdx.x; k < D; k += kThreads) weighted[i * D + k] *= rescale;
  }
}

/// A candidate of the mining seam: a stored slot and its cosine to a batch prototype.
struct Candidate {
  float cosine;
  Index slot;  // -1: none
};
/// The order of the top-k lists: larger cosine first, then smaller slot; "none" is last.
__device__ __forceinline__ bool ranks_before(const Candidate& a, const Candidate& b) {
  if (a.slot < 0) return false;
  if (b.slot < 0) return true;
  return backend::ranks_before(a.cosine, a.slot, b.cosine, b.slot);
}
struct FirstCandidate {
  __device__ Candidate operator()(const Candidate& a, const Candidate& b) const {
    return ranks_before(b, a) ? b : a;
  }
};

/// Block per batch class: merges the class's running top-k list (in_*) with one tile of class
/// cosines sims (C x n, columns j0 + j) into out_*, skipping inactive slots. k rounds of a block
/// arg-max, each taking the best candidate ranked after the previous one: O(k (k + n)) per class.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    top_k_merge(const float* sims, Index n, Index j0, const std::uint8_t* inactive, Index k,
                const float* in_cosines, const Index* in_slots, float* out_cosines,
                Index* out_slots) {
  using Reduce = cub::BlockReduce<Candidate, kThreads>;
  __shared__ typename Reduce::TempStorage storage;
  __shared__ Candidate chosen;
  const Index c = blockIdx.x;
  Candidate previous{0.0f, -1};
  for (Index r = 0; r < k; ++r) {
    Candidate best{-INFINITY, -1};
    for (Index q = threadIdx.x; q < k + n; q += kThreads) {
      Candidate candidate;
      if (q < k) {
        candidate = {in_cosines[c * k + q], in_slots[c * k + q]};
        if (candidate.slot < 0) continue;
      } else {
        const Index j = q - k;
        if (inactive[j]) continue;
        candidate = {sims[c * n + j], j0 + j};
      }
      if (previous.slot >= 0 && !ranks_before(previous, candidate)) continue;
      if (ranks_before(candidate, best)) best = candidate;
    }
    best = Reduce(storage).Reduce(best, FirstCandidate{});
    if (threadIdx.x == 0) {
      chosen = best;
      out_cosines[c * k + r] = best.slot >= 0 ? best.cosine : -INFINITY;
      out_slots[c * k + r] = best.slot;
    }
    __syncthreads();
    previous = chosen;
    __syncthreads();  // `chosen` and `storage` are rewritten in the next round
    if (previous.slot < 0) {
      // Nothing left: pad the rest of the list.
      for (Index rest = r + 1 + threadIdx.x; rest < k; rest += kThreads) {
        out_cosines[c * k + rest] = -INFINITY;
        out_slots[c * k + rest] = -1;
      }
      return;
    }
  }
}

// ---- 4. batch columns ---------------------------------------------------------------------------

/// Block per row: logits against the batch's own prototypes, the margin on the target, the softmax
/// completed with the memory's (m_i, l_i), the row's loss, and the loss gradient w.r.t. the batch
/// cosines (batch_grad, B x C), the target (target_grad) and the memory part (memory_weight).
template <bool LeaveOneOut, class Margin>
__global__ void __launch_bounds__(kThreads)
    batch_columns(const float* batch_cos, Index C, const Index* class_of, const Index* offsets,
                  const float* x, const float* others, Index D, Margin margin, float s,
                  float s_over_b, const float* run_max, const float* run_sum, float* batch_grad,
                  float* target_grad, float* memory_weight, double* row_loss) {
  const Index i = blockIdx.x, y = class_of[i];
  const float* cos_row = batch_cos + i * C;
  float* grad_row = batch_grad + i * C;
  // A single exemplar is its own prototype: its target cosine is identically 1.
  const bool constant = constant_target(LeaveOneOut, offsets[y + 1] - offsets[y]);
  float cos_y;
  if constexpr (LeaveOneOut) {
    float dot = 0;
    for (Index k = threadIdx.x; k < D; k += kThreads) dot += x[i * D + k] * others[i * D + k];
    cos_y = block_reduce(dot, SumOp{});
  } else {
    cos_y = cos_row[y];
  }
  if (constant) cos_y = 1.0f;
  const float z_y = s * margin.target(cos_y);
  const float m_i = run_max[i];
  float row_max = m_i;
  for (Index c = threadIdx.x; c < C; c += kThreads) {
    row_max = fmaxf(row_max, c == y ? z_y : cos_row[c] * s);
  }
  row_max = block_reduce(row_max, MaxOp{});
  float sum = 0;
  for (Index c = threadIdx.x; c < C; c += kThreads) {
    const float e = expf((c == y ? z_y : cos_row[c] * s) - row_max);
    grad_row[c] = e;
    sum += e;
  }
  sum = block_reduce(sum, SumOp{}) + run_sum[i] * expf(m_i - row_max);
  const RowSoftmax<float> row = finish_row(sum, row_max, m_i, z_y, s_over_b);
  // dL/dcos = s / B * (softmax - onehot) * dpsi/dcos
  for (Index c = threadIdx.x; c < C; c += kThreads) grad_row[c] *= row.factor;
  __syncthreads();  // grad_row[y] is read below by thread 0
  if (threadIdx.x == 0) {
    row_loss[i] = row.loss;
    memory_weight[i] = row.memory_weight;
    const float g = target_gradient(grad_row[y], s_over_b, cos_y, constant, margin);
    target_grad[i] = g;
    grad_row[y] = LeaveOneOut ? 0.0f : g;
  }
}

/// One block: status->loss_sum = sum of the rows' losses, in a fixed order (deterministic).
template <int = 0>
__global__ void __launch_bounds__(kThreads) sum_loss(const double* row_loss, Index B,
                                                     StepStatus* status) {
  double sum = 0;
  for (Index i = threadIdx.x; i < B; i += kThreads) sum += row_loss[i];
  sum = block_reduce(sum, SumOp{});
  if (threadIdx.x == 0) status->loss_sum = sum;
}

// ---- 5. backward --------------------------------------------------------------------------------

/// Elementwise: dL/dx_i = memory_weight_i O_i (+ target_grad_i q_i for leave-one-out); the batch
/// columns' part is added by a GEMM afterwards.
template <bool LeaveOneOut>
__global__ void memory_part(const float* weighted, const float* memory_weight, const float* others,
                            const float* target_grad, Index B, Index D, float* grad_x) {
  for (Index t = blockIdx.x * Index(blockDim.x) + threadIdx.x; t < B * D;
       t += Index(gridDim.x) * blockDim.x) {
    const Index i = t / D;
    float g = memory_weight[i] * weighted[t];
    if constexpr (LeaveOneOut) g += target_grad[i] * others[t];
    grad_x[t] = g;
  }
}

/// Block per class: dL/du_c = (I - p_c p_c^T) dL/dp_c / |u_c|, in place.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    project_class_grad(const float* fresh, const float* inv_sum_norm, Index D, float* grad_fresh) {
  const Index c = blockIdx.x;
  float* g = grad_fresh + c * D;
  const float* p = fresh + c * D;
  float dot = 0;
  for (Index k = threadIdx.x; k < D; k += kThreads) dot += g[k] * p[k];
  dot = block_reduce(dot, SumOp{});
  for (Index k = threadIdx.x; k < D; k += kThreads) g[k] = (g[k] - dot * p[k]) * inv_sum_norm[c];
}

/// Elementwise: dL/dx_i += dL/du_{class of i} (the generator's chain to every exemplar).
template <int = 0>
__global__ void add_class_grad(const float* grad_fresh, const Index* class_of, Index B, Index D,
                               float* grad_x) {
  for (Index t = blockIdx.x * Index(blockDim.x) + threadIdx.x; t < B * D;
       t += Index(gridDim.x) * blockDim.x) {
    const Index i = t / D, k = t - i * D;
    grad_x[t] += grad_fresh[class_of[i] * D + k];
  }
}

/// Block per row (leave-one-out): dv_i = (I - q_i q_i^T) (target_grad_i x_i) / |v_i|.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    leave_one_out_grad(const float* x, const float* others, const float* inv_others_norm,
                       const float* target_grad, Index D, float* grad_others) {
  const Index i = blockIdx.x;
  const float tg = target_grad[i];
  float dot = 0;
  for (Index k = threadIdx.x; k < D; k += kThreads) dot += tg * x[i * D + k] * others[i * D + k];
  dot = block_reduce(dot, SumOp{});
  for (Index k = threadIdx.x; k < D; k += kThreads) {
    grad_others[i * D + k] = (tg * x[i * D + k] - dot * others[i * D + k]) * inv_others_norm[i];
  }
}

/// Block per class (leave-one-out): dv_i reaches every exemplar of the class but x_i itself:
/// dL/dx_m += sum_{i in c} dv_i - dv_m.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    leave_one_out_scatter(const float* grad_others, const Index* offsets, const Index* members,
                          Index D, float* grad_x) {
  const Index c = blockIdx.x, begin = offsets[c], end = offsets[c + 1];
  for (Index k = threadIdx.x; k < D; k += kThreads) {
    float total = 0;
    for (Index r = begin; r < end; ++r) total += grad_others[members[r] * D + k];
    for (Index r = begin; r < end; ++r) {
      const Index m = members[r];
      grad_x[m * D + k] += total - grad_others[m * D + k];
    }
  }
}

/// Block per row: dL/de_i = (I - x_i x_i^T) dL/dx_i / |e_i|, in place in grad_x (each thread
/// rewrites only the values it read); a row with a non-finite value is reported in the status.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    through_normalisation(float* grad_x, const float* x, const float* inv_norm, Index D,
                          StepStatus* status) {
  const Index i = blockIdx.x;
  float along = 0;
  for (Index k = threadIdx.x; k < D; k += kThreads) along += grad_x[i * D + k] * x[i * D + k];
  along = block_reduce(along, SumOp{});
  bool finite = true;
  for (Index k = threadIdx.x; k < D; k += kThreads) {
    const float g = (grad_x[i * D + k] - along * x[i * D + k]) * inv_norm[i];
    grad_x[i * D + k] = g;
    finite = finite && isfinite(g);
  }
  if (!finite) atomicMin(&status->bad_gradient, static_cast<unsigned long long>(i));
}

/// Block per row: the gradient into the caller's rows, only when the step is valid (no invalid
/// input, a finite loss and gradient): as on the CPU, a failed step leaves the caller's gradient
/// buffer (which may be the embeddings' own) untouched.
template <int = 0>
__global__ void __launch_bounds__(kThreads)
    copy_gradient(const float* grad_x, Index D, const StepStatus* status, float* gradient,
                  Index gradient_stride) {
  if (status->bad_embedding != kNone || status->bad_class != kNone || status->bad_loo != kNone ||
      status->bad_gradient != kNone || !isfinite(status->loss_sum)) {
    return;
  }
  const Index i = blockIdx.x;
  for (Index k = threadIdx.x; k < D; k += kThreads) {
    gradient[i * gradient_stride + k] = grad_x[i * D + k];
  }
}

// ---- 6. commit ----------------------------------------------------------------------------------

/// Block per write. plan = [batch_class x W | slot x W | refresh flag x W]. A refresh first blends
/// the stored prototype into the fresh one through the Refresh policy (its host/device code, run by
/// one thread); then the row is stored, and into the 16-bit copy when there is one (H != float).
template <class Refresh, class H>
__global__ void __launch_bounds__(kThreads)
    write_slots(const Index* plan, Index W, Index D, Refresh refresh, float* fresh, float* store,
                H* shadow) {
  const Index w = blockIdx.x, c = plan[w], slot = plan[W + w];
  float* f = fresh + c * D;
  float* row = store + slot * D;
  if (plan[2 * W + w] != 0 && threadIdx.x == 0) {
    refresh.refresh(static_cast<const float*>(row), f, D);
  }
  __syncthreads();
  for (Index k = threadIdx.x; k < D; k += kThreads) {
    const float v = f[k];
    row[k] = v;
    if constexpr (!std::is_same_v<H, float>) shadow[slot * D + k] = convert_to<H>(v);
  }
}

}  // namespace protomem::backend::cuda_kernels
