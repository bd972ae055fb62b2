// CPU backend: the prototype store in host memory and the numerics of a step on Eigen.
//
// One step, in the order of docs/algorithm.md, "One step" (each numbered part below is one function):
//   1. normalise      x_i = e_i / |e_i|                       (rejects non-finite and zero rows)
//   2. generate       p_c = normalize(sum_{i in c} x_i)        (and q_i for leave-one-out)
//   3. memory pass    over the stored prototypes in tiles: logits, online softmax statistics
//                     (running max m_i, running sum l_i) and the weighted sum O_i = sum_j
//                     exp(z_ij - m_i) w_j, which is exactly the memory part of dL/dx_i; plus the
//                     most similar stored classes of each batch class (mining seam)
//   4. batch columns  logits against the fresh prototypes, the margin on the target, the softmax
//                     completed with the memory's statistics, the loss
//   5. backward       dL/dx through the batch columns, the generator and the memory part, then
//                     through the normalisation into dL/de
// The memory pass never holds more than a B x T tile of logits per thread, T set by the workspace
// budget and capped for the caches; the stored prototypes are split into one contiguous range per
// thread ("lane"), each lane keeping its own running statistics, merged at the end (gemm.hpp).
// Storage may be narrower than the arithmetic (CpuBackend<float, Eigen::bfloat16>): each tile is
// decoded into float before its two GEMMs (storage.hpp).
//
// Requires: embeddings validated for shape by the caller (PrototypeMemory does this).
// Guarantees: forward() changes nothing but its workspace, and on success the pending fresh
// prototypes and the caller's gradient; it throws protomem::Error for non-finite or zero-norm
// embeddings, degenerate exemplar sums and a loss or gradient that comes out non-finite, and then
// leaves the fresh prototypes of the previous forward and the gradient buffer as they were.
// No exception escapes the OpenMP region: each lane catches its own and the first is rethrown
// after the region.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <exception>
#include <functional>
#include <limits>
#include <type_traits>
#include <utility>
#include <vector>

#include <Eigen/Core>

#include <protomem/backend/cpu/bf16_kernel.hpp>
#include <protomem/backend/cpu/gemm.hpp>
#include <protomem/backend/cpu/gemm_choice.hpp>
#include <protomem/backend/cpu/generator_rows.hpp>
#include <protomem/backend/cpu/storage.hpp>
#include <protomem/backend/row_math.hpp>
#include <protomem/backend/seam.hpp>
#include <protomem/detail/batch.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/device.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>

namespace protomem {
namespace backend {

/// The CPU backend borrows nothing from the caller (the CUDA backend borrows a stream etc.).
struct CpuResources {};

/// The prototype store and the numerics of a step. Scalar (float or double) is the arithmetic;
/// Storage is what a stored value is kept as: Scalar itself, or Eigen::bfloat16 / Eigen::half
/// under Scalar = float (narrow storage, storage.hpp).
template <class Scalar, class Storage = Scalar>
class CpuBackend {
 public:
  using RowMatrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vector = Eigen::Matrix<Scalar, Eigen::Dynamic, 1>;
  using Resources = CpuResources;
  using StoreMatrix = Eigen::Matrix<Storage, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  static constexpr bool narrow = !std::is_same_v<Storage, Scalar>;
  static constexpr bool bf16_storage = std::is_same_v<Storage, Eigen::bfloat16>;
  static_assert(!narrow || (std::is_same_v<Scalar, float> && is_narrow_storage_v<Storage>),
                "narrow storage is bfloat16 or half under float arithmetic");
  /// What prototype_view() returns: a view into the store, or a decoded copy of a narrow one.
  using prototype_type = std::conditional_t<narrow, std::vector<Scalar>, Span<const Scalar>>;

  /// The widest tile the memory pass takes, whatever the budget: B x T logits and T x D
  /// prototypes stay in the per-core caches between the tile's two GEMMs. Measured on the
  /// reference machine (docs/performance.md); define PROTOMEM_MAX_TILE_COLUMNS to retune.
#ifdef PROTOMEM_MAX_TILE_COLUMNS
  static constexpr index_t max_tile_columns = PROTOMEM_MAX_TILE_COLUMNS;
#else
  static constexpr index_t max_tile_columns = 512;
#endif

  CpuBackend(index_t capacity, index_t dim, const Resources& = {})
      : store_(StoreMatrix::Zero(capacity, dim)), decoded_(static_cast<std::size_t>(dim)) {}

  Resources resources() const { return {}; }
  void set_resources(const Resources&) {}

  index_t dim() const { return store_.cols(); }
  index_t capacity() const { return store_.rows(); }

  /// The stored values of `slot` (for narrow storage: bfloat16 / half values).
  const Storage* prototype(index_t slot) const { return store_.row(slot).data(); }
  /// The prototype of `slot` as Scalar values: a view into the store, or a decoded copy.
  prototype_type prototype_view(index_t slot) const {
    if constexpr (narrow) {
      std::vector<Scalar> values(static_cast<std::size_t>(dim()));
      decode(prototype(slot), values.data(), dim());
      return values;
    } else {
      return {prototype(slot), dim()};
    }
  }
  void set_prototype(index_t slot, const Scalar* values) {
    if constexpr (narrow) {
      encode(values, store_.row(slot).data(), dim());
    } else {
      std::copy(values, values + dim(), store_.row(slot).data());
    }
  }
  void clear() { store_.setZero(); }

  /// Loss and dL/de of one step (docs/algorithm.md, "One step"); the seam's forward
  /// (backend/seam.hpp). Keeps the fresh prototypes for write().
  template <class Margin, class Generator>
  StepOutput<Scalar> forward(const StepInput<Scalar>& in, const Margin& margin,
                             const Generator& generator) {
    static_assert(check_cpu_generator<Generator, Scalar>());
    const detail::BatchClasses& batch = *in.batch;
    StepOutput<Scalar> out;
    out.similar.k = in.similar_k;
    const int wanted = step_threads(in.threads);  // before OmpThreads below changes the default
#ifdef _OPENMP
    // Parallelism comes from the memory pass's lanes: every GEMM runs on one thread (OpenBLAS set
    // to one thread, Eigen's products kept from opening teams), restored on return.
    BlasThreads blas(1);
    OmpThreads one(1);
#else
    BlasThreads blas(in.threads);  // no OpenMP: the BLAS may use Config::threads threads
#endif
    // This forward builds its fresh prototypes in the spare buffer and keeps them only when it
    // succeeds: a forward that throws leaves the pending ones (what write() stores) as they were.
    fresh_.swap(spare_fresh_);
    struct KeepPending {
      RowMatrix& fresh;
      RowMatrix& spare;
      bool succeeded = false;
      ~KeepPending() {
        if (!succeeded) fresh.swap(spare);
      }
    } keep{fresh_, spare_fresh_};
    normalise(in.embeddings);
    generate(batch);
    GeneratorRows<Scalar> rows{batch,       x_,          fresh_,           inv_sum_norm_,
                               batch_cos_,  batch_grad_, target_grad_,     grad_x_,
                               grad_fresh_, others_,     inv_others_norm_, grad_others_};
    generator.targets(rows);
    memory_pass(batch, in.used, in.excluded, in.column_bias, Scalar(margin.scale()),
                in.workspace_bytes, wanted, in.gemm, &out.similar, &out.pass);
    if (in.merge_rows) {  // e.g. the other ranks' slots of a sharded memory
      in.merge_rows(RowStatistics<Scalar>{x_.rows(), x_.cols(), run_max_.data(), run_sum_.data(),
                                          weighted_.data()});
    }
    const Scalar loss = batch_columns(batch, margin, generator, rows);
    // The last line of defence (validated inputs and policies should never get here): a step
    // whose loss or gradient is not finite is rejected, before the caller's gradient is written.
    if (!std::isfinite(loss)) fail_step::loss_not_finite(loss);
    backward(generator, rows);
    for (index_t i = 0; i < grad_x_.rows(); ++i) {  // over B x D, not B x M
      if (!grad_x_.row(i).allFinite()) fail_step::gradient_not_finite(i);
    }
    for (index_t i = 0; i < grad_x_.rows(); ++i) {
      std::copy(grad_x_.row(i).data(), grad_x_.row(i).data() + grad_x_.cols(), in.gradient.row(i));
    }
    keep.succeeded = true;
    out.loss = loss;
    return out;
  }

  /// Stores the fresh prototypes of the last forward() into their slots.
  /// Allocates nothing and cannot throw, so that a commit is all-or-nothing.
  template <class Refresh>
  void write(const std::vector<SlotWrite>& writes, const Refresh& refresh) noexcept {
    for (const SlotWrite& w : writes) {
      Scalar* fresh = fresh_.row(w.batch_class).data();
      if (w.refresh) {
        if constexpr (narrow) {
          decode(prototype(w.slot), decoded_.data(), dim());
          refresh.refresh(static_cast<const Scalar*>(decoded_.data()), fresh, dim());
        } else {
          refresh.refresh(static_cast<const Scalar*>(store_.row(w.slot).data()), fresh, dim());
        }
      }
      set_prototype(w.slot, fresh);
    }
  }

  /// Work below which a thread is not worth waking: 2^20 FLOPs (about 15 us of GEMM on one core of
  /// the reference machine), so that small memories run on one thread.
  static constexpr double min_lane_flops = 1048576.0;

  /// The lanes (threads) and tile width T of a memory pass over `used` slots of dimension `dim`
  /// with `batch` rows: at most `threads` lanes, each with at least min_lane_flops of work; the
  /// budget covers every lane's B x T tile of logits plus, per column, `extra_rows` more values
  /// (decoded prototypes, class sums); T is also capped by max_tile_columns and by the slots a lane
  /// has. At least one column per lane: a budget below one column is exceeded by that column.
  static std::pair<int, index_t> plan_tiles(index_t batch, index_t dim, index_t used,
                                            index_t extra_rows, std::size_t budget, int threads) {
    const TilePlan plan = backend::plan_tiles(batch, dim, used, extra_rows, sizeof(Scalar), budget,
                                              threads, max_tile_columns, min_lane_flops);
    return {plan.lanes, plan.columns};
  }

 private:
  // 1. x_i = e_i / |e_i|, with the norm accumulated in double so that float input cannot overflow.
  void normalise(MatrixView<const Scalar> e) {
    const index_t B = e.rows, D = e.cols;
    x_.resize(B, D);
    inv_norm_.resize(B);
    for (index_t i = 0; i < B; ++i) {
      const Scalar* row = e.row(i);
      double sum2 = 0;
      for (index_t k = 0; k < D; ++k) {
        if (!std::isfinite(row[k])) fail_step::embedding_not_finite(i, k, row[k]);
        sum2 += double(row[k]) * double(row[k]);
      }
      const double norm = std::sqrt(sum2);
      if (!normalisable<Scalar>(norm)) fail_step::embedding_norm(i, norm);
      inv_norm_[i] = Scalar(1.0 / norm);
      for (index_t k = 0; k < D; ++k) x_(i, k) = Scalar(row[k] / norm);
    }
  }

  // 2. p_c = normalize(u_c), u_c = sum of the exemplars of c (the Generator policy then makes each
  //    row's target column: Generator::targets).
  void generate(const detail::BatchClasses& batch) {
    const index_t C = batch.size(), D = x_.cols();
    fresh_.setZero(C, D);
    inv_sum_norm_.resize(C);
    for (index_t c = 0; c < C; ++c) {
      for (index_t k = batch.offsets[c]; k < batch.offsets[c + 1]; ++k) {
        fresh_.row(c) += x_.row(batch.members[k]);
      }
      const Scalar norm = fresh_.row(c).norm();
      if (!(norm > 0)) fail_step::class_sum_zero(batch.labels[c]);
      inv_sum_norm_[c] = Scalar(1) / norm;
      fresh_.row(c) *= inv_sum_norm_[c];
    }
  }

  // 3. The memory part, tile by tile: with z_ij = s * x_i . w_j over active slots j,
  //    m_i = max_j z_ij, l_i = sum_j exp(z_ij - m_i), O_i = sum_j exp(z_ij - m_i) w_j.
  //    Each lane (a contiguous range of slots, one per thread) keeps its own (m, l, O), rescaling
  //    l and O by exp(m_old - m_new) when a tile raises m, as flash-attention does; the lanes are
  //    merged the same way at the end. The split depends only on the thread count, so a step is
  //    deterministic for a given Config.
  void memory_pass(const detail::BatchClasses& batch, index_t used, Span<const index_t> excluded,
                   Span<const Scalar> column_bias, Scalar s, std::size_t workspace_bytes,
                   int threads, Gemm requested, SimilarSlots<Scalar>* similar,
                   PassReport* report) {
    // `threads` is resolved (step_threads); forward() has set the GEMMs to run on one thread, the
    // lanes are the parallelism.
    const index_t B = x_.rows(), D = x_.cols(), C = batch.size();
    const Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
    const bool mine = similar != nullptr && similar->k > 0;
    const index_t k_best = mine ? similar->k : 0;
    // Under bf16 storage on a CPU with avx512_bf16 the bf16 kernel may run: its per-column
    // workspace is the two packed copies of the tile (as many bytes as a decoded one) plus the
    // tile's weights as bf16 (B / 2 values), so the plan counts that.
    const bool may_bf16 = bf16_storage && requested == Gemm::automatic &&
                          bf16::cpu_has_avx512_bf16();
    const index_t extra_rows = (narrow ? D : 0) + (mine ? 1 : 0) + (may_bf16 ? (B + 1) / 2 : 0);
    const std::pair<int, index_t> plan =
        plan_tiles(B, D, used, extra_rows, workspace_bytes, threads);
    const int lanes = plan.first;
    const index_t T = plan.second;
    const GemmReport gemm_report = choose_gemm<Scalar, Storage>(requested, B, D, T);
    gemm_ = gemm_report.used;
    if (report != nullptr) {
      report->gemm = gemm_report;
      report->threads = lanes;
      report->tile_columns = T;
      report->workspace_bytes = static_cast<std::size_t>(lanes) * static_cast<std::size_t>(T) *
                                static_cast<std::size_t>(B + extra_rows) * sizeof(Scalar);
    }
    excluded_.assign(excluded.data, excluded.data + excluded.size);  // ascending (the seam)
    // The tile holds cosines, so a column's log-weight enters it divided by s.
    column_shift_.resize(column_bias.size == 0 ? 0 : used);
    for (index_t j = 0; j < static_cast<index_t>(column_shift_.size()); ++j) {
      column_shift_[j] = column_bias.data[j] / s;
    }

    // Every allocation happens here, before the parallel region (which must not throw).
    if constexpr (bf16_storage) {
      if (gemm_ == Gemm::bf16) {  // the rows as bf16 pairs, once a step
        x_bf16_.resize(static_cast<std::size_t>(B * ((D + 1) / 2)));
        bf16::pack_rows(x_.data(), B, D, D, x_bf16_.data(), (D + 1) / 2);
      }
    }
    lanes_.resize(static_cast<std::size_t>(lanes));
    for (Lane& lane : lanes_) {
      lane.tile.resize(B, T);
      lane.weighted.setZero(B, D);
      lane.max.setConstant(B, neg_inf);
      lane.sum.setZero(B);
      if constexpr (narrow) lane.decoded.resize(gemm_ == Gemm::bf16 ? 0 : T, D);
      if constexpr (bf16_storage) {
        if (gemm_ == Gemm::bf16) lane.bf16.resize(B, D, T);
      }
      lane.class_sum.resize(mine ? T : 0);
      lane.best.resize(static_cast<std::size_t>(mine ? C : 0));
      for (auto& heap : lane.best) {
        heap.clear();
        heap.reserve(static_cast<std::size_t>(k_best));
      }
    }

    // An exception must not leave an OpenMP region (that terminates the process): a lane keeps
    // its own (e.g. std::bad_alloc from Eigen's GEMM, which allocates its blocks on the heap
    // above EIGEN_STACK_ALLOCATION_LIMIT) and the first is rethrown after the region.
    std::vector<std::exception_ptr> failed(static_cast<std::size_t>(lanes));
    auto run_lane = [&](int t) {
      try {
        const index_t lo = used * t / lanes, hi = used * (t + 1) / lanes;
        process_lane(lanes_[static_cast<std::size_t>(t)], batch, lo, hi, T, s, k_best);
      } catch (...) {
        failed[static_cast<std::size_t>(t)] = std::current_exception();
      }
    };
#ifdef _OPENMP
#pragma omp parallel num_threads(lanes)
    {
      omp_set_num_threads(1);  // GEMMs inside a lane: no nested team (this region only)
#pragma omp for schedule(static, 1)
      for (int t = 0; t < lanes; ++t) run_lane(t);
    }
#else
    run_lane(0);
#endif
    for (const std::exception_ptr& error : failed) {
      if (error) std::rethrow_exception(error);
    }

    // Merge the lanes: m_i = max over lanes, l_i and O_i rescaled to it. run_max_ is in logits.
    run_max_.resize(B);
    run_sum_.resize(B);
    weighted_.setZero(B, D);
    for (index_t i = 0; i < B; ++i) {
      Scalar top = neg_inf;
      for (const Lane& lane : lanes_) top = std::max(top, lane.max[i]);
      run_max_[i] = top == neg_inf ? neg_inf : s * top;
      run_sum_[i] = 0;
      if (top == neg_inf) continue;  // no active column at all
      for (const Lane& lane : lanes_) {
        if (lane.max[i] == neg_inf) continue;
        const Scalar f = std::exp(s * (lane.max[i] - top));
        run_sum_[i] += f * lane.sum[i];
        weighted_.row(i) += f * lane.weighted.row(i);
      }
    }

    if (mine) {
      // The k best of each class over all lanes, most similar first, the smaller slot first on
      // equal cosines: a total order, so the result does not depend on the split.
      similar->slots.assign(static_cast<std::size_t>(C * k_best), -1);
      similar->cosines.assign(static_cast<std::size_t>(C * k_best), neg_inf);
      std::vector<Candidate> all;
      for (index_t c = 0; c < C; ++c) {
        all.clear();
        for (const Lane& lane : lanes_) {
          const auto& heap = lane.best[static_cast<std::size_t>(c)];
          all.insert(all.end(), heap.begin(), heap.end());
        }
        const auto keep = std::min<std::size_t>(all.size(), static_cast<std::size_t>(k_best));
        std::partial_sort(all.begin(), all.begin() + static_cast<std::ptrdiff_t>(keep), all.end(),
                          RanksBefore{});
        for (std::size_t r = 0; r < keep; ++r) {
          similar->slots[static_cast<std::size_t>(c * k_best) + r] = all[r].second;
          similar->cosines[static_cast<std::size_t>(c * k_best) + r] = all[r].first;
        }
      }
    }
  }

  using Candidate = std::pair<Scalar, index_t>;  // (cosine, slot)
  // The mining order (row_math.hpp): under it a heap's front is the worst of the k kept.
  struct RanksBefore {
    bool operator()(const Candidate& a, const Candidate& b) const {
      return ranks_before(a.first, a.second, b.first, b.second);
    }
  };

  // One thread's share of the memory pass and its running statistics.
  struct Lane {
    RowMatrix tile;      // B x T: cosines, then exp(s (cos - m))
    RowMatrix weighted;  // B x D: O
    Vector max;          // B: running max of cos + log pi / s (the logits' max is s times it)
    Vector sum;          // B: l
    RowMatrix decoded;   // T x D: the tile's prototypes in Scalar (narrow storage only)
    Vector class_sum;    // T: sum of a class's cosines to the tile (mining only)
    bf16::Buffers bf16;  // packed tiles and weights (the bf16 kernel only)
    std::vector<std::vector<Candidate>> best;  // per class: a min-heap of the k best (mining)
  };

  // The stored bits of slot j's row (bf16 storage), as the bf16 kernel reads them.
  const std::uint16_t* stored_bits(index_t slot) const {
    static_assert(sizeof(Storage) == sizeof(std::uint16_t), "bf16 is 2 bytes");
    return reinterpret_cast<const std::uint16_t*>(prototype(slot));
  }

  // Slots [lo, hi) in tiles of T columns. Allocates nothing itself (Eigen's GEMM may).
  void process_lane(Lane& lane, const detail::BatchClasses& batch, index_t lo, index_t hi,
                    index_t T, Scalar s, index_t k_best) {
    const index_t B = x_.rows(), D = x_.cols(), C = batch.size();
    const Scalar neg_inf = -std::numeric_limits<Scalar>::infinity();
    Scalar* tile = lane.tile.data();
    const bool on_bf16 = gemm_ == Gemm::bf16;
    for (index_t j0 = lo; j0 < hi; j0 += T) {
      const index_t n = std::min(T, hi - j0);
      // Stale copies of the batch's classes in this tile.
      const auto first = std::lower_bound(excluded_.begin(), excluded_.end(), j0);
      const auto last = std::lower_bound(first, excluded_.end(), j0 + n);
      if (last - first == n) continue;  // nothing active in this tile

      const Scalar* w = nullptr;  // the tile's prototypes in Scalar (not for the bf16 kernel)
      if constexpr (narrow) {
        if (!on_bf16) {
          decode(prototype(j0), lane.decoded.data(), n * D);
          w = lane.decoded.data();
        }
      } else {
        w = prototype(j0);
      }
      if (on_bf16) {  // cosines
        if constexpr (bf16_storage) {
          bf16::logits(x_bf16_.data(), B, D, stored_bits(j0), n, lane.bf16, tile, T);
        }
      } else {
        gemm<Scalar>(gemm_, true, B, n, D, Scalar(1), x_.data(), D, w, D, Scalar(0), tile, T);
      }
      for (auto e = first; e != last; ++e) {
        for (index_t i = 0; i < B; ++i) tile[i * T + (*e - j0)] = neg_inf;
      }

      if (k_best > 0) {
        // p_c . w_j = (sum_{i in c} x_i . w_j) / |u_c|: the class similarities come from the
        // cosines already in the tile, at O(B n) instead of another GEMM.
        auto sums = lane.class_sum.head(n);
        for (index_t c = 0; c < C; ++c) {
          sums.setZero();
          for (index_t k = batch.offsets[c]; k < batch.offsets[c + 1]; ++k) {
            sums += Eigen::Map<const Vector>(tile + batch.members[k] * T, n);
          }
          auto& heap = lane.best[static_cast<std::size_t>(c)];
          for (index_t j = 0; j < n; ++j) {
            if (sums[j] == neg_inf) continue;  // excluded
            const Candidate candidate{sums[j] * inv_sum_norm_[c], j0 + j};
            if (static_cast<index_t>(heap.size()) < k_best) {
              heap.push_back(candidate);
              std::push_heap(heap.begin(), heap.end(), RanksBefore{});
            } else if (RanksBefore{}(candidate, heap.front())) {
              std::pop_heap(heap.begin(), heap.end(), RanksBefore{});
              heap.back() = candidate;
              std::push_heap(heap.begin(), heap.end(), RanksBefore{});
            }
          }
        }
      }

      if (column_shift_.size() != 0) {  // aged columns (after mining, which ranks by cosine)
        const auto shift = column_shift_.segment(j0, n).array();
        for (index_t i = 0; i < B; ++i) {
          Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>(tile + i * T, n) += shift;
        }
      }
      for (index_t i = 0; i < B; ++i) {
        auto row = Eigen::Map<Eigen::Array<Scalar, Eigen::Dynamic, 1>>(tile + i * T, n);
        const Scalar top = row.maxCoeff();
        Scalar& m = lane.max[i];
        if (top > m) {  // rescale l and O to the new max (skipped when the max does not move)
          if (m != neg_inf) {
            const Scalar f = std::exp(s * (m - top));
            lane.sum[i] *= f;
            lane.weighted.row(i) *= f;
          }
          m = top;
        }
        row = ((row - m) * s).exp();
        lane.sum[i] += row.sum();
      }
      for (auto e = first; e != last; ++e) {  // exp(-inf) is 0; make it exact
        for (index_t i = 0; i < B; ++i) tile[i * T + (*e - j0)] = Scalar(0);
      }
      if (on_bf16) {
        if constexpr (bf16_storage) {
          bf16::accumulate(tile, B, T, stored_bits(j0), n, D, lane.bf16, lane.weighted.data());
        }
      } else {
        gemm<Scalar>(gemm_, false, B, D, n, Scalar(1), tile, T, w, D, Scalar(1),
                     lane.weighted.data(), D);
      }
    }
  }
  // 4. Logits against the batch's own prototypes, the margin on the target, and the softmax
  //    completed with the memory's (m_i, l_i). Leaves in batch_grad_ the loss gradient w.r.t. the
  //    batch cosines, and in memory_weight_ the factor that turns O_i into the memory part of
  //    dL/dx_i.
  template <class Margin, class Generator>
  Scalar batch_columns(const detail::BatchClasses& batch, const Margin& margin,
                       const Generator& generator, GeneratorRows<Scalar>& rows) {
    const index_t B = x_.rows(), C = batch.size();
    const Scalar s = Scalar(margin.scale());
    const Scalar s_over_b = s / Scalar(B);
    batch_cos_.noalias() = x_ * fresh_.transpose();  // B x C
    target_cos_.resize(B);
    target_grad_.resize(B);
    memory_weight_.resize(B);
    batch_grad_.resize(B, C);
    double loss = 0;
    for (index_t i = 0; i < B; ++i) {
      const index_t y = batch.class_of[i];
      // A single exemplar is its own prototype: its target cosine is identically 1.
      const bool constant = generator.constant_target(batch.count(y));
      const Scalar cos_y = constant ? Scalar(1) : Scalar(generator.target_cosine(rows, i));
      target_cos_[i] = cos_y;

      auto z = batch_cos_.row(i).array() * s;  // expression; the target entry is replaced below
      const Scalar z_y = s * margin.target(cos_y);
      Scalar row_max = run_max_[i];
      for (index_t c = 0; c < C; ++c) row_max = std::max(row_max, c == y ? z_y : z(c));
      Scalar sum = run_sum_[i] * std::exp(run_max_[i] - row_max);
      for (index_t c = 0; c < C; ++c) {
        const Scalar e = std::exp((c == y ? z_y : z(c)) - row_max);
        batch_grad_(i, c) = e;
        sum += e;
      }
      const RowSoftmax<Scalar> row = finish_row(sum, row_max, run_max_[i], z_y, s_over_b);
      loss += row.loss;
      memory_weight_[i] = row.memory_weight;
      batch_grad_.row(i) *= row.factor;  // dL/dcos = s / B * (softmax - onehot) * dpsi/dcos
      target_grad_[i] = target_gradient(batch_grad_(i, y), s_over_b, cos_y, constant, margin);
      generator.route_target(rows, i, y, target_grad_[i]);
    }
    return Scalar(loss / double(B));
  }

  // 5. dL/dx_i = memory part + batch columns (+ the generator's chain), then dL/de_i, left in
  //    grad_x_ (forward() checks it before copying it into the caller's gradient).
  template <class Generator>
  void backward(const Generator& generator, GeneratorRows<Scalar>& rows) {
    const index_t B = x_.rows();
    grad_x_ = memory_weight_.asDiagonal() * weighted_;
    grad_x_.noalias() += batch_grad_ * fresh_;  // the batch columns p_c (as the rule routed them)
    generator.backward(rows);                   // the rule's target columns and its chain
    // x_i = e_i / |e_i|: dL/de_i = (I - x_i x_i^T) dL/dx_i / |e_i|, in place.
    for (index_t i = 0; i < B; ++i) {
      auto g = grad_x_.row(i);
      const Scalar along = g.dot(x_.row(i));
      g = (g - along * x_.row(i)) * inv_norm_[i];
    }
  }

  StoreMatrix store_;  // capacity x D, unit prototypes; rows past the used count are zero
  Vector decoded_;     // D: one decoded prototype for write() (narrow storage), never reallocated

  // Per-step workspace, kept between steps to avoid reallocation.
  RowMatrix spare_fresh_;  // the other forward's fresh prototypes (see forward())
  RowMatrix x_, fresh_, others_, weighted_, batch_cos_, batch_grad_, grad_x_, grad_fresh_,
      grad_others_;
  Vector inv_norm_, inv_sum_norm_, inv_others_norm_, run_max_, run_sum_, target_cos_, target_grad_,
      memory_weight_;
  std::vector<Lane> lanes_;
  std::vector<index_t> excluded_;  // sorted
  Gemm gemm_ = Gemm::eigen;        // the GEMM of the current memory pass
  std::vector<std::uint32_t> x_bf16_;  // B x ceil(D / 2): the rows as bf16 pairs (bf16 kernel)
  Vector column_shift_;            // per slot: log pi_j / s (empty: no aging)
};

}  // namespace backend

namespace detail {
template <class Scalar>
struct BackendFor<Scalar, cpu> {
  using type = backend::CpuBackend<Scalar>;
};
template <class Scalar>
struct BackendFor<Scalar, cpu_bf16> {
  static_assert(std::is_same_v<Scalar, float>, "cpu_bf16 stores the prototypes of a float memory");
  using type = backend::CpuBackend<float, Eigen::bfloat16>;
};
template <class Scalar>
struct BackendFor<Scalar, cpu_fp16> {
  static_assert(std::is_same_v<Scalar, float>, "cpu_fp16 stores the prototypes of a float memory");
  using type = backend::CpuBackend<float, Eigen::half>;
};
}  // namespace detail

}  // namespace protomem
