// Mining policies: what a memory remembers about look-alike classes ("doppelgangers"), so that a
// sampler can put them into the same batch (hard-example mining; protomem/data/sampler.hpp).
//
// Each step's memory pass already yields, for every batch class c, the stored classes whose
// prototypes are most similar to c's fresh prototype p_c (the mining seam: p_c . w_j is summed from
// the cosines the pass computes anyway, O(B M) additions and a top-k heap, no extra GEMM). A mining
// policy asks for its k of them and keeps what it needs from each committed step.
//
// Requires, of a Mining policy P (PrototypeMemory checks each member at compile time and names the
// one that is missing: detail::check_mining_policy at the end of this header):
//   static constexpr const char* name;                    stored in checkpoints
//   index_t similar_k() const;                            similar classes wanted per batch class
//                                                         (0: none)
//   void record(Span<const label_t> classes, Span<const label_t> similar,
//               Span<const T> cosines, index_t stride) noexcept;
//       called by PrototypeMemory::commit() only (never for a discarded forward), after the
//       memory's own update, with T the memory's Scalar: similar[c * stride + r], r < stride, is
//       the r-th most similar stored class to classes[c] (-1 pads), stride >= similar_k(); it must
//       not allocate or throw, because the memory has already changed
//   Span<const label_t> doppelgangers(label_t label) const;  what a sampler draws from,
//   Span<const float> cosines(label_t label) const;          most similar first
//   void clear();                                         forget the state, keep the parameters
//   void save(detail::ByteWriter&) const;                 parameters and state, for checkpoints
//   void load(detail::ByteReader&);                       the same; bad state throws
//                                                         protomem::Error and changes nothing
//   copy-constructible and move-assignable                load() checks a copy, then moves it in
// Guarantees (the built-in policies): the state depends on committed steps only; its size is
// bounded by the constructor's arguments, whatever the number of steps.
//
// Alternatives, side by side:
//   NoMining            remembers nothing; steps compute no similarities for it (default).
//   DoppelgangerMining  a bounded table class -> its k most similar classes, as of the last
//                       committed step that held the class; see the class comment.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <new>
#include <protomem/detail/bookkeeping.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>
#include <type_traits>
#include <utility>
#include <vector>

namespace protomem {
/// No mining (the default): nothing is computed or stored.
struct NoMining {
  static constexpr const char* name = "none";
  index_t similar_k() const { return 0; }
  template <class Scalar>
  void record(Span<const label_t>, Span<const label_t>, Span<const Scalar>, index_t) noexcept {}
  Span<const label_t> doppelgangers(label_t) const { return {}; }
  Span<const float> cosines(label_t) const { return {}; }
  void clear() {}
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Doppelganger mining: a table from a class to its k most similar stored classes.
///
/// Update rule [our reconstruction]: when a committed step holds class a, a's row is replaced by
/// the step's k most similar stored classes to a's fresh prototype, most similar first, with their
/// cosines (the relation is one-directional: b in a's row, not necessarily a in b's). A class
/// whose step found no stored class (an empty memory) keeps its row. Classes of the same batch
/// never find each other (their stale copies are not candidates in that step).
/// Bound: at most `table_capacity` classes have a row; a class that needs a row when the table is
/// full takes the row of the least recently updated class (updates of a row, not reads, count).
/// Cost per committed step: O(C k) plus O(1) expected per class (hash lookup and list moves); the
/// table is allocated once, so record() never allocates.
/// Checkpoint state: k, then the rows in eviction order (least recently updated first); the table
/// capacity is a size, like the memory's, so load() keeps this object's and requires the
/// checkpoint's row count to fit in it; k is a parameter and comes from the checkpoint.
class DoppelgangerMining {
 public:
  static constexpr const char* name = "doppelganger";
  static constexpr index_t max_k = 1 << 16;

  /// The table's default size: a class row for each of 2^16 classes (~6 MB at k = 8).
  static constexpr index_t default_table_capacity = index_t{1} << 16;
  /// k in [1, max_k] doppelgangers per class, in a table of at most `table_capacity` >= 1 classes.
  /// A table too large to allocate is an Error naming k, table_capacity and the bytes.
  explicit DoppelgangerMining(index_t k = 8, index_t table_capacity = default_table_capacity) try
      : k_(checked_k(k)),
        capacity_(checked_capacity(table_capacity, k_)),
        table_(capacity_),
        count_(static_cast<std::size_t>(capacity_), 0),
        similar_(static_cast<std::size_t>(capacity_ * k_), -1),
        cosine_(static_cast<std::size_t>(capacity_ * k_), 0.0f) {
  } catch (const std::bad_alloc&) {
    detail::fail("DoppelgangerMining: cannot allocate a table of table_capacity x k = ",
                 table_capacity, " x ", k, " (about ", table_bytes(table_capacity, k), " bytes)");
  }

  index_t similar_k() const { return k_; }
  index_t k() const { return k_; }
  index_t table_capacity() const { return capacity_; }
  /// Classes with a row.
  index_t size() const { return table_.used; }
  bool contains(label_t label) const { return table_.find(label) >= 0; }

  /// The doppelgangers of `label`, most similar first (empty when it has no row): a view into the
  /// table, valid until the table changes - the memory's next commit(), load(), assign(), clear()
  /// or set_mining() - so copy it to keep it.
  Span<const label_t> doppelgangers(label_t label) const {
    const index_t row = table_.find(label);
    if (row < 0) return {};
    return {similar_.data() + row * k_, count_[static_cast<std::size_t>(row)]};
  }
  /// Their cosines p_a . w_b at the step that wrote the row; valid as doppelgangers() is.
  Span<const float> cosines(label_t label) const {
    const index_t row = table_.find(label);
    if (row < 0) return {};
    return {cosine_.data() + row * k_, count_[static_cast<std::size_t>(row)]};
  }

  /// Calls f(label, doppelgangers, cosines) for every row, least recently updated first.
  template <class F>
  void for_each(F&& f) const {
    for (index_t row = table_.queue.front(); row >= 0; row = table_.queue.next(row)) {
      const auto n = count_[static_cast<std::size_t>(row)];
      f(table_.label[static_cast<std::size_t>(row)],
        Span<const label_t>{similar_.data() + row * k_, n},
        Span<const float>{cosine_.data() + row * k_, n});
    }
  }

  template <class Scalar>
  void record(Span<const label_t> classes, Span<const label_t> similar, Span<const Scalar> cosines,
              index_t stride) noexcept {
    const index_t take = std::min(k_, stride);
    for (index_t c = 0; c < classes.size; ++c) {
      const label_t* found = similar.data + c * stride;
      index_t n = 0;
      while (n < take && found[n] >= 0) ++n;
      if (n == 0) continue;
      const index_t row = row_for(classes[c]);
      for (index_t r = 0; r < n; ++r) {
        similar_[static_cast<std::size_t>(row * k_ + r)] = found[r];
        cosine_[static_cast<std::size_t>(row * k_ + r)] =
            static_cast<float>(cosines[c * stride + r]);
      }
      count_[static_cast<std::size_t>(row)] = n;
    }
  }

  void clear() { table_.clear(); }

  void save(detail::ByteWriter& out) const {
    out.put<std::int64_t>(k_);
    out.put<std::uint64_t>(static_cast<std::uint64_t>(table_.used));
    for (index_t row = table_.queue.front(); row >= 0; row = table_.queue.next(row)) {
      const auto n = count_[static_cast<std::size_t>(row)];
      out.put<std::int64_t>(table_.label[static_cast<std::size_t>(row)]);
      out.put<std::uint64_t>(static_cast<std::uint64_t>(n));
      for (index_t r = 0; r < n; ++r) {
        out.put<std::int64_t>(similar_[static_cast<std::size_t>(row * k_ + r)]);
        out.put<float>(cosine_[static_cast<std::size_t>(row * k_ + r)]);
      }
    }
  }

  /// Replaces k and the rows by the checkpoint's; throws (leaving *this unchanged) when they do
  /// not fit this table or are malformed.
  void load(detail::ByteReader& in) {
    const auto k = in.get<std::int64_t>("the doppelganger k");
    if (k < 1 || k > max_k) {
      detail::fail(in.source(), ": doppelganger mining k = ", k, " is outside [1, ", max_k, "]");
    }
    const auto n = in.get<std::uint64_t>("the doppelganger row count");
    if (n > static_cast<std::uint64_t>(capacity_)) {
      detail::fail(in.source(), " holds ", n, " doppelganger rows; this table's capacity is ",
                   capacity_);
    }
    DoppelgangerMining loaded(k, capacity_);
    for (std::uint64_t i = 0; i < n; ++i) {
      const auto label = in.get<std::int64_t>("a doppelganger row's label");
      const auto count = in.get<std::uint64_t>("a doppelganger row's count");
      if (label < 0 || loaded.contains(label)) {
        detail::fail(in.source(), ": doppelganger row ", i, " has label ", label,
                     ", negative or repeated");
      }
      if (count < 1 || count > static_cast<std::uint64_t>(k)) {
        detail::fail(in.source(), ": doppelganger row ", i, " (label ", label, ") has ", count,
                     " entries; k = ", k);
      }
      const index_t row = loaded.row_for(label);
      for (std::uint64_t r = 0; r < count; ++r) {
        const auto other = in.get<std::int64_t>("a doppelganger label");
        const auto cosine = in.get<float>("a doppelganger cosine");
        if (other < 0 || other == label || !std::isfinite(cosine)) {
          detail::fail(in.source(), ": doppelganger row ", i, " (label ", label, ") entry ", r,
                       " is label ", other, " with cosine ", cosine);
        }
        loaded.similar_[static_cast<std::size_t>(row * k + static_cast<index_t>(r))] = other;
        loaded.cosine_[static_cast<std::size_t>(row * k + static_cast<index_t>(r))] = cosine;
      }
      loaded.count_[static_cast<std::size_t>(row)] = static_cast<index_t>(count);
    }
    *this = std::move(loaded);
  }

 private:
  static index_t checked_k(index_t k) {
    if (k < 1 || k > max_k) {
      detail::fail("DoppelgangerMining: k = ", k, " must be in [1, ", max_k, "]");
    }
    return k;
  }
  // Per row: k labels and cosines, a count, and about 64 bytes of the label table (map, queue).
  static std::uint64_t table_bytes(index_t capacity, index_t k) {
    return static_cast<std::uint64_t>(capacity) *
           (static_cast<std::uint64_t>(k) * (sizeof(label_t) + sizeof(float)) + 72);
  }
  // k <= 2^16 (checked first) and capacity <= 2^40: table_bytes() cannot wrap. A table larger
  // than x86-64's whole user address space (2^47 bytes) is refused before anything is allocated
  // (allocating its first parts could take gigabytes and seconds); a smaller one that cannot be
  // allocated fails as std::bad_alloc, which the constructor names.
  static index_t checked_capacity(index_t capacity, index_t k) {
    if (capacity < 1 || capacity > (index_t{1} << 40)) {
      detail::fail("DoppelgangerMining: table_capacity = ", capacity, " must be in [1, 2^40]");
    }
    if (table_bytes(capacity, k) > (std::uint64_t{1} << 47)) {
      detail::fail("DoppelgangerMining: table_capacity x k = ", capacity, " x ", k, " needs about ",
                   table_bytes(capacity, k), " bytes, more than any address space (2^47)");
    }
    return capacity;
  }

  // The row of `label`, made the most recently updated: its own, an unused one, or the least
  // recently updated class's (detail/bookkeeping.hpp, the memory's slot table).
  index_t row_for(label_t label) noexcept { return table_.claim_least_recent(label); }

  index_t k_;
  index_t capacity_;
  detail::SlotTable table_;       // label <-> row, rows least recently updated first
  std::vector<index_t> count_;    // per row: doppelgangers held (<= k)
  std::vector<label_t> similar_;  // rows x k
  std::vector<float> cosine_;     // rows x k
};

namespace detail {

template <class P>
using mining_similar_k_t = decltype(static_cast<index_t>(std::declval<const P&>().similar_k()));
template <class P, class T>
using mining_record_t = decltype(std::declval<P&>().record(
    std::declval<Span<const label_t>>(), std::declval<Span<const label_t>>(),
    std::declval<Span<const T>>(), std::declval<index_t>()));
template <class P, class T>
using mining_record_noexcept_t = std::enable_if_t<noexcept(std::declval<P&>().record(
    std::declval<Span<const label_t>>(), std::declval<Span<const label_t>>(),
    std::declval<Span<const T>>(), std::declval<index_t>()))>;
template <class P>
using mining_doppelgangers_t = std::enable_if_t<std::is_convertible_v<
    decltype(std::declval<const P&>().doppelgangers(label_t{})), Span<const label_t>>>;
template <class P>
using mining_cosines_t =
    std::enable_if_t<std::is_convertible_v<decltype(std::declval<const P&>().cosines(label_t{})),
                                           Span<const float>>>;
template <class P>
using mining_clear_t = decltype(std::declval<P&>().clear());

/// The requirements of a Mining policy (this header's comment), one static_assert per member so
/// that the compiler names the missing one. True when they all hold.
template <class P, class Scalar>
constexpr bool check_mining_policy() {
  static_assert(is_detected<policy_name_t, P>,
                "protomem: a Mining policy needs `static constexpr const char* name` (stored in "
                "checkpoints)");
  static_assert(is_detected<mining_similar_k_t, P>,
                "protomem: a Mining policy needs `index_t similar_k() const` (0: no similarities)");
  static_assert(is_detected<mining_record_t, P, Scalar>,
                "protomem: a Mining policy needs `void record(Span<const label_t> classes, "
                "Span<const label_t> similar, Span<const T> cosines, index_t stride) noexcept` for "
                "T = the memory's Scalar");
  static_assert(
      !is_detected<mining_record_t, P, Scalar> || is_detected<mining_record_noexcept_t, P, Scalar>,
      "protomem: a Mining policy's `record(...)` must be noexcept (commit() calls it "
      "after the memory has changed)");
  static_assert(
      is_detected<mining_doppelgangers_t, P>,
      "protomem: a Mining policy needs `Span<const label_t> doppelgangers(label_t) const` "
      "(what a sampler draws from)");
  static_assert(is_detected<mining_cosines_t, P>,
                "protomem: a Mining policy needs `Span<const float> cosines(label_t) const`");
  static_assert(is_detected<mining_clear_t, P>,
                "protomem: a Mining policy needs `void clear()` (forget the state)");
  static_assert(is_detected<policy_save_t, P>,
                "protomem: a Mining policy needs `void save(protomem::detail::ByteWriter&) const`");
  static_assert(is_detected<policy_load_t, P>,
                "protomem: a Mining policy needs `void load(protomem::detail::ByteReader&)`");
  static_assert(policy_is_copyable<P>,
                "protomem: a Mining policy must be copy-constructible and move-assignable");
  return true;
}

}  // namespace detail

}  // namespace protomem
