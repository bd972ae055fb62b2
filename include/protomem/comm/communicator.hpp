// protomem's communicator concept: the few collectives a memory sharded across processes needs,
// the single-process default protomem::SingleProcess, and helpers built on the concept.
//
// A Communicator is any type C with these members (c: C&, cc: const C&), every call made by every
// rank of the group in the same order (they are collectives):
//
//   int cc.rank();           this process's rank, 0 <= rank < world_size
//   int cc.world_size();     the number of ranks W, >= 1
//   void c.all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts);
//       T in {std::int64_t, std::uint64_t, float, double}. counts[0 .. W) is the same on every rank
//       and counts[rank()] == count >= 0 (a rank may contribute nothing). Writes the
//       counts[0] + ... + counts[W-1] values into `all`, rank 0's first, then rank 1's, ...
//       `mine` and `all` are host memory and do not overlap.
//   void c.all_reduce(T* data, std::int64_t count, ReduceOp op);
//       T in {std::int64_t, std::uint64_t, float, double}, op ReduceOp::sum or ReduceOp::max; in
//       place; the same count on every rank. Sums of integers wrap modulo 2^64 (as unsigned).
//   CommTraffic cc.traffic();  the bytes this rank has sent and received in collectives so far.
//
// Rows of a matrix (B_r x D embeddings) are gathered with counts in values (rows * D), see
// all_gather_rows(); "all-reduce sum on B_total x D" is all_reduce over B_total * D values.
// Failures: a member throws protomem::Error where its engine reports an error; a precondition
// violated on one rank only (different counts) is undefined, as in MPI - agree on bad input first
// with detail::collective_check(), which is itself built on the members above.
//
// check_communicator<C>() static_asserts each requirement with a message naming the missing
// member; is_communicator_v<C> is the same test as a bool.
//
// Traffic is counted as the logical payload of each collective, independent of the engine's
// algorithm: all-gather - sent: this rank's values, received: everyone else's; all-reduce of n
// values - sent n, received n. On one rank nothing leaves the process, so nothing is counted.
// (What crosses the wire depends on the engine: a ring all-reduce sends and receives about
// 2 (W - 1) / W * n values per rank; docs/distributed.md.) An adapter that pads (c10d) counts
// the padded bytes it actually exchanges.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <exception>
#include <memory>
#include <protomem/error.hpp>
#include <protomem/types.hpp>
#include <protomem/view.hpp>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace protomem {

/// The reduction of an all-reduce.
enum class ReduceOp { sum, max };

namespace detail {

// ---- compile-time checks of the concept -----------------------------------------------------

template <class C, class = void>
struct has_rank : std::false_type {};
template <class C>
struct has_rank<
    C, std::enable_if_t<std::is_convertible_v<decltype(std::declval<const C&>().rank()), int>>>
    : std::true_type {};

template <class C, class = void>
struct has_world_size : std::false_type {};
template <class C>
struct has_world_size<
    C,
    std::enable_if_t<std::is_convertible_v<decltype(std::declval<const C&>().world_size()), int>>>
    : std::true_type {};

template <class C, class T, class = void>
struct has_all_gather : std::false_type {};
template <class C, class T>
struct has_all_gather<C, T,
                      std::void_t<decltype(std::declval<C&>().all_gather(
                          std::declval<const T*>(), std::int64_t{}, std::declval<T*>(),
                          std::declval<const std::int64_t*>()))>> : std::true_type {};

template <class C, class T, class = void>
struct has_all_reduce : std::false_type {};
template <class C, class T>
struct has_all_reduce<C, T,
                      std::void_t<decltype(std::declval<C&>().all_reduce(
                          std::declval<T*>(), std::int64_t{}, ReduceOp::sum))>> : std::true_type {};

template <class C, class = void>
struct has_traffic : std::false_type {};
template <class C>
struct has_traffic<C, std::enable_if_t<std::is_convertible_v<
                          decltype(std::declval<const C&>().traffic()), CommTraffic>>>
    : std::true_type {};

template <class C, class T>
constexpr bool has_collectives_for = has_all_gather<C, T>::value&& has_all_reduce<C, T>::value;

}  // namespace detail

/// True when C meets every requirement of the Communicator concept (top of this header).
template <class C>
inline constexpr bool is_communicator_v =
    detail::has_rank<C>::value&& detail::has_world_size<C>::value&& detail::has_traffic<C>::value&&
        detail::has_collectives_for<C, std::int64_t>&&
            detail::has_collectives_for<C, std::uint64_t>&& detail::has_collectives_for<C, float>&&
                detail::has_collectives_for<C, double>;

/// static_asserts each requirement of the Communicator concept, naming the one that is missing;
/// returns true, so that it can be used as `static_assert(check_communicator<C>());`.
template <class C>
constexpr bool check_communicator() {
  static_assert(detail::has_rank<C>::value, "protomem: a Communicator needs `int rank() const`");
  static_assert(detail::has_world_size<C>::value,
                "protomem: a Communicator needs `int world_size() const`");
  static_assert(detail::has_traffic<C>::value,
                "protomem: a Communicator needs `CommTraffic traffic() const`");
  static_assert(detail::has_all_gather<C, std::int64_t>::value,
                "protomem: a Communicator needs `void all_gather(const std::int64_t* mine, "
                "std::int64_t count, std::int64_t* all, const std::int64_t* counts)`");
  static_assert(detail::has_all_gather<C, std::uint64_t>::value,
                "protomem: a Communicator needs `void all_gather(const std::uint64_t* mine, "
                "std::int64_t count, std::uint64_t* all, const std::int64_t* counts)`");
  static_assert(detail::has_all_gather<C, float>::value,
                "protomem: a Communicator needs `void all_gather(const float* mine, std::int64_t "
                "count, float* all, const std::int64_t* counts)`");
  static_assert(detail::has_all_gather<C, double>::value,
                "protomem: a Communicator needs `void all_gather(const double* mine, std::int64_t "
                "count, double* all, const std::int64_t* counts)`");
  static_assert(detail::has_all_reduce<C, std::int64_t>::value,
                "protomem: a Communicator needs `void all_reduce(std::int64_t* data, std::int64_t "
                "count, ReduceOp op)`");
  static_assert(detail::has_all_reduce<C, std::uint64_t>::value,
                "protomem: a Communicator needs `void all_reduce(std::uint64_t* data, "
                "std::int64_t count, ReduceOp op)`");
  static_assert(detail::has_all_reduce<C, float>::value,
                "protomem: a Communicator needs `void all_reduce(float* data, std::int64_t count, "
                "ReduceOp op)`");
  static_assert(detail::has_all_reduce<C, double>::value,
                "protomem: a Communicator needs `void all_reduce(double* data, std::int64_t "
                "count, ReduceOp op)`");
  return true;
}

namespace detail {

/// The value types every Communicator carries.
template <class T>
inline constexpr bool is_comm_value_v =
    std::is_same_v<T, std::int64_t> || std::is_same_v<T, std::uint64_t> ||
    std::is_same_v<T, float> || std::is_same_v<T, double>;

/// Counts the logical payload of collectives into a CommTraffic (shared by every adapter).
struct TrafficCounter {
  CommTraffic totals;

  void all_gather(std::size_t value_bytes, const std::int64_t* counts, int rank, int world_size) {
    ++totals.collectives;
    if (world_size <= 1) return;
    std::uint64_t others = 0;
    for (int r = 0; r < world_size; ++r) {
      if (r != rank) others += static_cast<std::uint64_t>(counts[r]);
    }
    totals.bytes_sent += static_cast<std::uint64_t>(counts[rank]) * value_bytes;
    totals.bytes_received += others * value_bytes;
  }
  /// An all-gather of `per_rank` values from every rank (a padded all-gather counts the padding).
  void all_gather_fixed(std::size_t value_bytes, std::int64_t per_rank, int world_size) {
    ++totals.collectives;
    if (world_size <= 1) return;
    const auto bytes = static_cast<std::uint64_t>(per_rank) * value_bytes;
    totals.bytes_sent += bytes;
    totals.bytes_received += bytes * static_cast<std::uint64_t>(world_size - 1);
  }
  void all_reduce(std::size_t value_bytes, std::int64_t count, int world_size) {
    ++totals.collectives;
    if (world_size <= 1) return;
    const auto bytes = static_cast<std::uint64_t>(count) * value_bytes;
    totals.bytes_sent += bytes;
    totals.bytes_received += bytes;
  }
};

/// Checks an adapter's arguments that every rank can check alike (local programming errors).
template <class T>
void check_all_gather_args(const char* engine, const T* mine, std::int64_t count, const T* all,
                           const std::int64_t* counts, int rank, int world_size) {
  static_assert(is_comm_value_v<T>, "all_gather carries int64, uint64, float or double");
  if (counts == nullptr) fail(engine, " all_gather on rank ", rank, ": counts is null");
  if (count < 0) fail(engine, " all_gather on rank ", rank, ": count = ", count, " is negative");
  if (counts[rank] != count) {
    fail(engine, " all_gather on rank ", rank, ": count = ", count, " but counts[", rank,
         "] = ", counts[rank]);
  }
  std::int64_t total = 0;
  for (int r = 0; r < world_size; ++r) {
    if (counts[r] < 0) fail(engine, " all_gather: counts[", r, "] = ", counts[r], " is negative");
    total += counts[r];
  }
  if (count > 0 && mine == nullptr) fail(engine, " all_gather on rank ", rank, ": mine is null");
  if (total > 0 && all == nullptr) fail(engine, " all_gather on rank ", rank, ": all is null");
}

}  // namespace detail

/// The single-process Communicator: rank 0 of 1. all_gather copies, all_reduce does nothing, and
/// nothing is sent or received. What the memory uses when no communicator is given.
/// Guarantees: no allocation, no synchronisation; traffic().bytes() stays 0.
class SingleProcess {
 public:
  int rank() const { return 0; }
  int world_size() const { return 1; }

  template <class T>
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    detail::check_all_gather_args("single-process", mine, count, all, counts, 0, 1);
    if (count > 0) std::copy_n(mine, count, all);
    counter_.all_gather(sizeof(T), counts, 0, 1);
  }

  template <class T>
  void all_reduce(T* data, std::int64_t count, ReduceOp) {
    static_assert(detail::is_comm_value_v<T>, "all_reduce carries int64, uint64, float or double");
    if (count < 0) detail::fail("single-process all_reduce: count = ", count, " is negative");
    if (count > 0 && data == nullptr) detail::fail("single-process all_reduce: data is null");
    counter_.all_reduce(sizeof(T), count, 1);
  }

  CommTraffic traffic() const { return counter_.totals; }

 private:
  detail::TrafficCounter counter_;
};

static_assert(check_communicator<SingleProcess>());

/// Any Communicator, borrowed: what a PrototypeMemory keeps of the communicator it was given, so
/// that one memory type serves one process or many (FAISS-style: the choice is a value, the
/// collectives a virtual call each, a handful per step). Default-constructed it is the single
/// process (it owns a SingleProcess); built from a communicator it borrows it, which must outlive
/// every AnyCommunicator that refers to it. Itself a Communicator.
class AnyCommunicator {
 public:
  AnyCommunicator() = default;
  template <class Comm, class = std::enable_if_t<!std::is_same_v<std::decay_t<Comm>, AnyCommunicator>>>
  explicit AnyCommunicator(Comm& comm) : model_(std::make_shared<Model<Comm>>(comm)) {
    static_assert(check_communicator<Comm>());
  }

  int rank() const { return model_ ? model_->rank() : 0; }
  int world_size() const { return model_ ? model_->world_size() : 1; }
  CommTraffic traffic() const { return model_ ? model_->traffic() : single_.traffic(); }

  template <class T>
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    static_assert(detail::is_comm_value_v<T>, "all_gather carries int64, uint64, float or double");
    if (model_) {
      model_->all_gather(mine, count, all, counts);
    } else {
      single_.all_gather(mine, count, all, counts);
    }
  }
  template <class T>
  void all_reduce(T* data, std::int64_t count, ReduceOp op) {
    static_assert(detail::is_comm_value_v<T>, "all_reduce carries int64, uint64, float or double");
    if (model_) {
      model_->all_reduce(data, count, op);
    } else {
      single_.all_reduce(data, count, op);
    }
  }

  /// Whether it was built from a communicator (false for the default single process). A memory
  /// given one reports errors as a collective does, naming the rank, even with one rank.
  bool given() const { return model_ != nullptr; }

  /// The communicator it was built from, when it is a `Comm`; nullptr otherwise (and for the
  /// single process of a default-constructed one).
  template <class Comm>
  Comm* get_if() const {
    auto* model = dynamic_cast<Model<Comm>*>(model_.get());
    return model ? &model->comm : nullptr;
  }

 private:
  struct Concept {
    virtual ~Concept() = default;
    virtual int rank() const = 0;
    virtual int world_size() const = 0;
    virtual CommTraffic traffic() const = 0;
#define PROTOMEM_COMM_VALUE(T)                                                               \
  virtual void all_gather(const T* mine, std::int64_t count, T* all,                         \
                          const std::int64_t* counts) = 0;                                   \
  virtual void all_reduce(T* data, std::int64_t count, ReduceOp op) = 0;
    PROTOMEM_COMM_VALUE(std::int64_t)
    PROTOMEM_COMM_VALUE(std::uint64_t)
    PROTOMEM_COMM_VALUE(float)
    PROTOMEM_COMM_VALUE(double)
#undef PROTOMEM_COMM_VALUE
  };
  template <class Comm>
  struct Model final : Concept {
    explicit Model(Comm& c) : comm(c) {}
    int rank() const override { return comm.rank(); }
    int world_size() const override { return comm.world_size(); }
    CommTraffic traffic() const override { return comm.traffic(); }
#define PROTOMEM_COMM_VALUE(T)                                                                \
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts)      \
      override {                                                                              \
    comm.all_gather(mine, count, all, counts);                                                \
  }                                                                                           \
  void all_reduce(T* data, std::int64_t count, ReduceOp op) override {                        \
    comm.all_reduce(data, count, op);                                                         \
  }
    PROTOMEM_COMM_VALUE(std::int64_t)
    PROTOMEM_COMM_VALUE(std::uint64_t)
    PROTOMEM_COMM_VALUE(float)
    PROTOMEM_COMM_VALUE(double)
#undef PROTOMEM_COMM_VALUE
    Comm& comm;
  };

  SingleProcess single_;             // the default: rank 0 of 1
  std::shared_ptr<Concept> model_;   // the borrowed communicator, when one was given
};

static_assert(check_communicator<AnyCommunicator>());

// ---- helpers built on the concept
// ----------------------------------------------------------------

/// Every rank's `mine` (an all-gather of one value per rank): e.g. the batch sizes B_r.
template <class Comm>
std::vector<std::int64_t> all_gather_counts(Comm& comm, std::int64_t mine) {
  static_assert(check_communicator<Comm>());
  const auto W = static_cast<std::size_t>(comm.world_size());
  std::vector<std::int64_t> ones(W, 1), counts(W, 0);
  comm.all_gather(&mine, 1, counts.data(), ones.data());
  return counts;
}

/// The concatenation, in rank order, of every rank's `count` values at `mine`, where the counts
/// are not known in advance: one all-gather of the counts (W values), then one of the values.
/// `counts_out` (optional) receives the counts.
template <class Comm, class T>
std::vector<T> all_gather_varying(Comm& comm, const T* mine, std::int64_t count,
                                  std::vector<std::int64_t>* counts_out = nullptr) {
  std::vector<std::int64_t> counts = all_gather_counts(comm, count);
  std::int64_t total = 0;
  for (std::int64_t c : counts) total += c;
  std::vector<T> all(static_cast<std::size_t>(total));
  comm.all_gather(mine, count, all.data(), counts.data());
  if (counts_out != nullptr) *counts_out = std::move(counts);
  return all;
}

/// Gathers densely packed B_r x width row blocks: row_counts[r] rows from rank r (the same array
/// on every rank), rank 0's rows first, into `all` (sum of row_counts rows of `width` values).
template <class Comm, class T>
void all_gather_rows(Comm& comm, const T* mine, std::int64_t width, T* all,
                     const std::int64_t* row_counts) {
  const auto W = static_cast<std::size_t>(comm.world_size());
  std::vector<std::int64_t> counts(W);
  for (std::size_t r = 0; r < W; ++r) counts[r] = row_counts[r] * width;
  comm.all_gather(mine, counts[static_cast<std::size_t>(comm.rank())], all, counts.data());
}

namespace detail {

// Messages travel as 64-bit words: the Communicator concept carries no bytes type.
inline std::vector<std::uint64_t> pack_message(const std::string& text) {
  std::vector<std::uint64_t> words((text.size() + 7) / 8, 0);
  if (!text.empty()) std::memcpy(words.data(), text.data(), text.size());
  return words;
}

inline std::string unpack_message(const std::uint64_t* words, std::int64_t count) {
  std::string text(static_cast<std::size_t>(count) * 8, '\0');
  if (count > 0) std::memcpy(&text[0], words, text.size());
  const auto end = text.find('\0');
  if (end != std::string::npos) text.resize(end);
  return text;
}

/// Agreement on failure: runs `check()` on every rank (a local validation that throws
/// protomem::Error or another std::exception on bad input), then makes every rank agree on the
/// outcome. When every rank's check passed, returns normally on every rank (cost: one all-reduce
/// of one int64). When any failed, every rank throws the same protomem::Error:
///   "rank R of W: <R's message>"  (+ " (also failed on ranks a, b)" when several failed),
/// R the lowest failing rank; the failure path costs two more all-gathers (message lengths, then
/// the messages). Nobody is left waiting in a collective.
/// Requires: every rank calls it at the same point. Exceptions that are not std::exception are not
/// caught (they leave the other ranks waiting): checks must throw protomem::Error.
template <class Comm, class Check>
void collective_check(Comm& comm, Check&& check) {
  static_assert(check_communicator<Comm>());
  const int W = comm.world_size();
  std::string message;
  bool failed = false;
  try {
    check();
  } catch (const Error& e) {
    failed = true;
    message = e.what();
    const std::string prefix = "protomem: ";
    if (message.compare(0, prefix.size(), prefix) == 0) message.erase(0, prefix.size());
  } catch (const std::exception& e) {
    failed = true;
    message = e.what();
  }
  if (message.empty()) message = "failed";  // an exception with an empty what()

  std::int64_t any = failed ? 1 : 0;
  comm.all_reduce(&any, 1, ReduceOp::max);
  if (any == 0) return;

  const std::vector<std::uint64_t> words =
      failed ? pack_message(message) : std::vector<std::uint64_t>{};
  std::vector<std::int64_t> counts;
  const std::vector<std::uint64_t> all =
      all_gather_varying(comm, words.data(), static_cast<std::int64_t>(words.size()), &counts);

  int first = -1;
  std::int64_t offset = 0, first_offset = 0;
  std::string others;
  for (int r = 0; r < W; ++r) {
    if (counts[static_cast<std::size_t>(r)] > 0) {
      if (first < 0) {
        first = r;
        first_offset = offset;
      } else {
        others += (others.empty() ? "" : ", ") + std::to_string(r);
      }
    }
    offset += counts[static_cast<std::size_t>(r)];
  }
  // counts[r] > 0 exactly on the failing ranks (a message is never empty), so first >= 0.
  std::string text =
      "rank " + std::to_string(first) + " of " + std::to_string(W) + ": " +
      unpack_message(all.data() + first_offset, counts[static_cast<std::size_t>(first)]);
  if (!others.empty()) {
    const bool several = others.find(',') != std::string::npos;
    text += std::string(" (also failed on rank") + (several ? "s " : " ") + others + ")";
  }
  throw Error(text);
}

}  // namespace detail
}  // namespace protomem
