// The seam between PrototypeMemory and a backend: what the memory hands a backend for one step
// (StepInput), what it gets back (StepOutput: loss, similar slots, pass report), the per-row
// statistics a sharded memory merges between the memory pass and the batch columns (RowStatistics,
// MergeRows), and the members every backend provides, checked at compile time
// (detail::check_backend, which names a missing member).
//
// A backend B for Scalar provides (B's comments are the contract; backend/cpu/backend.hpp is the
// reference):
//   using Resources;        what it borrows from the caller (a stream, ...); default-constructible
//   using prototype_type;   what prototype_view() returns (a view or a decoded copy)
//   B(index_t capacity, index_t dim, const Resources&);   a zeroed store (may throw bad_alloc)
//   template <class Margin, class Generator>
//   StepOutput<Scalar> forward(const StepInput<Scalar>&, const Margin&, const Generator&);
//       the loss and dL/de of one step (docs/algorithm.md, "One step"); keeps the batch's fresh
//       prototypes for write(). Throws protomem::Error on bad input (non-finite or zero rows, ...)
//       and then leaves the gradient buffer and the previous fresh prototypes as they were.
//   template <class Refresh> void write(const std::vector<SlotWrite>&, const Refresh&);
//       stores the fresh prototypes of the last forward() into the planned slots; it may throw
//       only before anything is written (the memory's bookkeeping then stays as it was)
//   void set_prototype(index_t slot, const Scalar* values);   load() / assign()
//   prototype_type prototype_view(index_t slot) const;
//   void clear();
//   Resources resources() const;  void set_resources(const Resources&);
// and a specialisation of detail::BackendFor<Scalar, DeviceTag> naming it (device.hpp).
//
// Guarantees (of the memory, to every backend): a StepInput's shapes and labels are validated,
// the batch is grouped (detail::group_by_class), `excluded` is sorted ascending (the batch's own
// classes and expired prototypes), `used` slots [0, used) hold prototypes, and `column_bias` is
// empty or holds `used` finite values <= 0.
#pragma once

#include <cstddef>
#include <protomem/types.hpp>
#include <protomem/detail/batch.hpp>
#include <protomem/detail/bookkeeping.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/view.hpp>
#include <type_traits>
#include <utility>
#include <vector>

namespace protomem {
namespace backend {

using detail::SlotWrite;

/// The memory pass's per-row result over the slots this backend holds, with z_ij = s x_i . w_j:
/// max[i] = m_i = max_j z_ij (-inf for a row without an active column), sum[i] = l_i = sum_j
/// exp(z_ij - m_i), weighted row i = O_i = sum_j exp(z_ij - m_i) w_j (rows x dim, row-major).
/// Two such results over disjoint slot sets merge exactly as the CPU backend merges its lanes:
/// m = max(m_a, m_b), l = sum of l_r exp(m_r - m), O likewise (docs/distributed.md).
template <class Scalar>
struct RowStatistics {
  index_t rows = 0;
  index_t dim = 0;
  Scalar* max = nullptr;
  Scalar* sum = nullptr;
  Scalar* weighted = nullptr;
};

/// A hook between the memory pass and the batch columns: called once per step with this
/// backend's row statistics, which it may replace in place by merged ones (e.g. all-reduced
/// across the ranks of a sharded memory). Empty (the default): the statistics go on unchanged.
/// The CPU backend calls it with host memory; the CUDA backend does not take one yet (a step
/// that sets it throws protomem::Error).
template <class Scalar>
struct MergeRows {
  void (*merge)(void* context, const RowStatistics<Scalar>& rows) = nullptr;
  void* context = nullptr;
  explicit operator bool() const { return merge != nullptr; }
  void operator()(const RowStatistics<Scalar>& rows) const { merge(context, rows); }
};

/// Everything a step's forward needs from the memory.
template <class Scalar>
struct StepInput {
  const detail::BatchClasses* batch = nullptr;  ///< the batch's classes and their rows
  MatrixView<const Scalar> embeddings;          ///< B x dim, validated
  MatrixView<Scalar> gradient;                  ///< B x dim, written only on success
  index_t used = 0;                             ///< slots [0, used) hold prototypes
  /// Slots of this batch's classes (their stale copies are no columns), ascending.
  Span<const index_t> excluded;
  std::size_t workspace_bytes = 0;  ///< Config::workspace_bytes
  int threads = 0;                  ///< Config::threads (0: OpenMP's default)
  index_t similar_k = 0;            ///< most similar stored slots wanted per batch class
  MergeRows<Scalar> merge_rows;     ///< see MergeRows
  /// Per slot [0, used): log pi_j, added to the column's logit (policies/aging.hpp), finite and
  /// <= 0 for every active slot; empty: 0 for every slot.
  Span<const Scalar> column_bias;
  Gemm gemm = Gemm::automatic;  ///< Config::gemm (the CPU backend's; others ignore it)
};

/// For each batch class, its most similar stored prototypes: `slots` and `cosines`, k per class,
/// most similar first, ties in cosine broken by the smaller slot first (docs/algorithm.md, "Hard
/// example mining"); -1 and -inf pad classes with fewer than k candidates.
template <class Scalar>
struct SimilarSlots {
  index_t k = 0;
  std::vector<index_t> slots;   // C x k
  std::vector<Scalar> cosines;  // C x k
};

/// How a step's memory pass ran: its threads ("lanes"), the tile width T, and the bytes of
/// workspace that grow with T (all lanes' logits tiles, plus decoded tiles under narrow storage
/// and a row of class sums when mining). `workspace_bytes` <= the budget unless one column alone
/// exceeds it (a step always takes at least one column per lane). `gemm`: the GEMM it ran and
/// the calibration's times (types.hpp).
struct PassReport {
  int threads = 1;
  index_t tile_columns = 0;
  std::size_t workspace_bytes = 0;
  GemmReport gemm;
};

/// What a step's forward returns.
template <class Scalar>
struct StepOutput {
  Scalar loss = 0;
  SimilarSlots<Scalar> similar;
  PassReport pass;
};

}  // namespace backend

namespace detail {

template <class B>
using backend_resources_t = typename B::Resources;
template <class B>
using backend_prototype_t = typename B::prototype_type;
template <class B>
using backend_construct_t =
    decltype(B(index_t{}, index_t{}, std::declval<const typename B::Resources&>()));
template <class B, class Scalar, class Margin, class Generator>
using backend_forward_t = std::enable_if_t<
    std::is_same_v<decltype(std::declval<B&>().forward(
                       std::declval<const backend::StepInput<Scalar>&>(),
                       std::declval<const Margin&>(), std::declval<const Generator&>())),
                   backend::StepOutput<Scalar>>>;
template <class B, class Refresh>
using backend_write_t = decltype(std::declval<B&>().write(
    std::declval<const std::vector<SlotWrite>&>(), std::declval<const Refresh&>()));
template <class B, class Scalar>
using backend_set_prototype_t =
    decltype(std::declval<B&>().set_prototype(index_t{}, std::declval<const Scalar*>()));
template <class B>
using backend_prototype_view_t =
    std::enable_if_t<std::is_same_v<decltype(std::declval<const B&>().prototype_view(index_t{})),
                                    typename B::prototype_type>>;
template <class B>
using backend_clear_t = decltype(std::declval<B&>().clear());
template <class B>
using backend_get_resources_t = std::enable_if_t<
    std::is_same_v<decltype(std::declval<const B&>().resources()), typename B::Resources>>;
template <class B>
using backend_set_resources_t =
    decltype(std::declval<B&>().set_resources(std::declval<const typename B::Resources&>()));

/// The requirements of a backend (this header's comment), one static_assert per member so that
/// the compiler names the missing one. True when they all hold.
template <class B, class Scalar, class Margin, class Generator, class Refresh>
constexpr bool check_backend() {
  static_assert(is_detected<backend_resources_t, B>,
                "protomem: a backend needs `using Resources` (what it borrows from the caller)");
  static_assert(is_detected<backend_prototype_t, B>,
                "protomem: a backend needs `using prototype_type` (what prototype_view() returns)");
  if constexpr (is_detected<backend_resources_t, B> && is_detected<backend_prototype_t, B>) {
    static_assert(is_detected<backend_construct_t, B>,
                  "protomem: a backend needs a constructor B(index_t capacity, index_t dim, const "
                  "Resources&)");
    static_assert(is_detected<backend_forward_t, B, Scalar, Margin, Generator>,
                  "protomem: a backend needs `template <class Margin, class Generator> "
                  "StepOutput<Scalar> forward(const StepInput<Scalar>&, const Margin&, const "
                  "Generator&)` (backend/seam.hpp)");
    static_assert(is_detected<backend_write_t, B, Refresh>,
                  "protomem: a backend needs `template <class Refresh> void write(const "
                  "std::vector<SlotWrite>&, const Refresh&)`");
    static_assert(is_detected<backend_set_prototype_t, B, Scalar>,
                  "protomem: a backend needs `void set_prototype(index_t slot, const Scalar*)`");
    static_assert(is_detected<backend_prototype_view_t, B>,
                  "protomem: a backend needs `prototype_type prototype_view(index_t slot) const`");
    static_assert(is_detected<backend_clear_t, B>, "protomem: a backend needs `void clear()`");
    static_assert(is_detected<backend_get_resources_t, B>,
                  "protomem: a backend needs `Resources resources() const`");
    static_assert(is_detected<backend_set_resources_t, B>,
                  "protomem: a backend needs `void set_resources(const Resources&)`");
  }
  return true;
}

}  // namespace detail
}  // namespace protomem
