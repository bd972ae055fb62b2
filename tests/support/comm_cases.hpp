// Test support: checks of a Communicator (protomem/comm/communicator.hpp) that every rank runs with its
// own communicator - over threads (ThreadComm), MPI ranks and c10d processes alike. Expected values
// are computed here, independently of the communicator: each rank's contribution is a known
// function of (rank, index), so every rank knows what every other rank sent. Values are dyadic
// rationals and small integers, so sums are exact in any order the engine reduces in.
// Failures are collected in an Expect, not reported with Catch2's macros, which are not thread
// safe (ThreadComm runs ranks as threads); the caller CHECKs that the list is empty. A failed
// expectation never returns early, so no rank leaves the others waiting in a collective.
#pragma once

#include <cstdint>
#include <limits>
#include <protomem/comm/communicator.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <vector>

namespace protomem::test {

/// Collects failed expectations with their context.
struct Expect {
  std::vector<std::string> failures;
  std::string context;
  void operator()(bool ok, const std::string& what) {
    if (!ok) failures.push_back(context + ": " + what);
  }
  std::string report() const {
    std::string text;
    for (const std::string& f : failures) text += f + "\n";
    return text;
  }
};

template <class T>
T comm_value(int rank, std::int64_t i) {
  if constexpr (std::is_same_v<T, std::int64_t>) {
    return std::int64_t{rank} * 1000003 + i - 7 - (i % 3 == 0 ? std::int64_t{1} << 40 : 0);
  } else if constexpr (std::is_same_v<T, std::uint64_t>) {
    // Above 2^63 for some: an engine without unsigned types must still order them as unsigned.
    return (i % 2 == 0 ? std::uint64_t{1} << 63 : 0) + std::uint64_t(rank) * 1000 +
           std::uint64_t(i);
  } else {
    return static_cast<T>((rank + 1) * 0.5 + double(i % 64) * 0.125 - 3.0);
  }
}

/// Per-rank counts of an all-gather: pattern 0 uneven with one rank empty, 1 all empty, 2 only the
/// last rank, 3 equal.
inline std::vector<std::int64_t> gather_counts(int world_size, int pattern) {
  std::vector<std::int64_t> counts(static_cast<std::size_t>(world_size));
  for (int r = 0; r < world_size; ++r) {
    std::int64_t n = 0;
    if (pattern == 0) n = r == world_size / 2 ? 0 : 3 * r + 1 + (r % 2) * 17;
    if (pattern == 2) n = r == world_size - 1 ? 5 : 0;
    if (pattern == 3) n = 4;
    counts[static_cast<std::size_t>(r)] = n;
  }
  return counts;
}

template <class T, class Comm>
void check_all_gather_type(Comm& comm, Expect& expect) {
  const int rank = comm.rank(), W = comm.world_size();
  for (int pattern = 0; pattern < 4; ++pattern) {
    const std::vector<std::int64_t> counts = gather_counts(W, pattern);
    const std::int64_t count = counts[static_cast<std::size_t>(rank)];
    std::vector<T> mine(static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; ++i) mine[std::size_t(i)] = comm_value<T>(rank, i);
    std::vector<T> expected;
    for (int r = 0; r < W; ++r) {
      for (std::int64_t i = 0; i < counts[std::size_t(r)]; ++i) {
        expected.push_back(comm_value<T>(r, i));
      }
    }
    std::vector<T> all(expected.size(), T(99));
    const CommTraffic before = comm.traffic();
    comm.all_gather(mine.data(), count, all.data(), counts.data());
    const CommTraffic used = comm.traffic() - before;
    std::ostringstream where;
    where << "rank " << rank << " of " << W << ", all_gather pattern " << pattern << ", "
          << typeid(T).name();
    expect.context = where.str();
    expect(all == expected, "all == expected");
    expect(used.collectives == 1, "used.collectives == 1");
    if (W == 1) {
      expect(used.bytes() == 0, "used.bytes() == 0");
    } else {
      expect(used.bytes_sent >= sizeof(T) * std::uint64_t(count),
             "used.bytes_sent >= sizeof(T) * std::uint64_t(count)");
      expect(used.bytes_received >= sizeof(T) * (expected.size() - std::uint64_t(count)),
             "used.bytes_received >= sizeof(T) * (expected.size() - std::uint64_t(count))");
    }
  }
}

template <class T, class Comm>
void check_all_reduce_type(Comm& comm, Expect& expect) {
  const int rank = comm.rank(), W = comm.world_size();
  for (std::int64_t count : {std::int64_t{0}, std::int64_t{1}, std::int64_t{37}}) {
    for (ReduceOp op : {ReduceOp::sum, ReduceOp::max}) {
      std::vector<T> data(static_cast<std::size_t>(count)), expected(data.size());
      for (std::int64_t i = 0; i < count; ++i) {
        // Permute the ranks per index so that the maximum is not always on the last rank.
        data[std::size_t(i)] = comm_value<T>(int((rank + i) % W), i);
        T acc = comm_value<T>(int(i % W), i);
        for (int r = 1; r < W; ++r) {
          const T v = comm_value<T>(int((r + i) % W), i);
          acc = op == ReduceOp::sum ? T(acc + v) : (v > acc ? v : acc);
        }
        expected[std::size_t(i)] = acc;
      }
      const CommTraffic before = comm.traffic();
      comm.all_reduce(data.data(), count, op);
      const CommTraffic used = comm.traffic() - before;
      std::ostringstream where;
      where << "rank " << rank << " of " << W << ", all_reduce count " << count << ", "
            << (op == ReduceOp::sum ? "sum" : "max") << ", " << typeid(T).name();
      expect.context = where.str();
      expect(data == expected, "data == expected");
      expect(used.collectives == 1, "used.collectives == 1");
      expect(used.bytes() == (W == 1 ? 0 : 2 * sizeof(T) * std::uint64_t(count)),
             "used.bytes() == (W == 1 ? 0 : 2 * sizeof(T) * std::uint64_t(count))");
    }
  }
}

template <class Comm>
void check_collectives(Comm& comm, Expect& expect) {
  static_assert(check_communicator<Comm>());
  check_all_gather_type<std::int64_t>(comm, expect);
  check_all_gather_type<std::uint64_t>(comm, expect);
  check_all_gather_type<float>(comm, expect);
  check_all_gather_type<double>(comm, expect);
  check_all_reduce_type<std::int64_t>(comm, expect);
  check_all_reduce_type<std::uint64_t>(comm, expect);
  check_all_reduce_type<float>(comm, expect);
  check_all_reduce_type<double>(comm, expect);

  // Rows: B_r x D blocks gathered by row counts.
  expect.context = "rank " + std::to_string(comm.rank()) + ": all_gather_rows, all_gather_varying";
  const int rank = comm.rank(), W = comm.world_size();
  const std::int64_t D = 3;
  std::vector<std::int64_t> rows(static_cast<std::size_t>(W));
  for (int r = 0; r < W; ++r) rows[std::size_t(r)] = r % 3;  // rank 0 has none
  std::vector<double> mine(static_cast<std::size_t>(rows[std::size_t(rank)] * D));
  for (std::size_t i = 0; i < mine.size(); ++i) mine[i] = comm_value<double>(rank, std::int64_t(i));
  std::vector<double> expected;
  for (int r = 0; r < W; ++r) {
    for (std::int64_t i = 0; i < rows[std::size_t(r)] * D; ++i) {
      expected.push_back(comm_value<double>(r, i));
    }
  }
  std::vector<double> all(expected.size());
  all_gather_rows(comm, mine.data(), D, all.data(), rows.data());
  expect(all == expected, "all == expected");

  // Counts not known in advance.
  std::vector<std::int64_t> counts;
  const std::vector<std::int64_t> mine_v(static_cast<std::size_t>(rank), std::int64_t{rank});
  const std::vector<std::int64_t> got =
      all_gather_varying(comm, mine_v.data(), std::int64_t(mine_v.size()), &counts);
  std::vector<std::int64_t> want;
  for (int r = 0; r < W; ++r) want.insert(want.end(), std::size_t(r), std::int64_t{r});
  expect(got == want, "got == want");
  expect(counts.size() == std::size_t(W), "counts.size() == std::size_t(W)");
}

/// Bad input on some ranks: every rank throws the same protomem::Error naming the lowest failing
/// rank; afterwards the ranks are still in step (a last all-reduce agrees).
template <class Comm>
void check_error_agreement(Comm& comm, Expect& expect) {
  const int rank = comm.rank(), W = comm.world_size();
  auto outcome = [&](auto&& check) -> std::string {
    try {
      detail::collective_check(comm, check);
    } catch (const Error& e) {
      return e.what();
    }
    return "";
  };
  const std::string W_text = std::to_string(W);
  expect.context = "rank " + std::to_string(rank) + " of " + W_text + ": collective_check";

  auto same = [&](const std::string& got, const std::string& want) {
    expect(got == want, "threw '" + got + "', expected '" + want + "'");
  };

  // Every rank passes: nobody throws.
  same(outcome([] {}), "");

  // The last rank has a bad label.
  same(outcome([&] {
         if (rank == W - 1) detail::fail("labels[3] = ", -2, " is negative (labels must be >= 0)");
       }),
       "protomem: rank " + std::to_string(W - 1) + " of " + W_text +
           ": labels[3] = -2 is negative (labels must be >= 0)");

  // Several ranks fail with different messages: the lowest is named, the others listed.
  if (W >= 3) {
    std::string expected = "protomem: rank 1 of " + W_text + ": bad on rank 1 (also failed on rank";
    expected += W >= 4 ? "s 2, 3)" : " 2)";
    same(outcome([&] {
           if (rank >= 1) detail::fail("bad on rank ", rank);
         }),
         expected);
  }

  // Not a protomem::Error: carried all the same.
  same(outcome([&] {
         if (rank == 0) throw std::out_of_range("index 12 is past the end");
       }),
       "protomem: rank 0 of " + W_text + ": index 12 is past the end");

  // Still in step.
  std::int64_t one = 1;
  comm.all_reduce(&one, 1, ReduceOp::sum);
  expect(one == W, "one == W");
}

}  // namespace protomem::test
