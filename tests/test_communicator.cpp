// The Communicator concept (protomem/comm/communicator.hpp): its compile-time check, the single-process
// default, and the collectives and failure agreement over 1, 2, 3 and 4 thread ranks
// (tests/support/thread_comm.hpp). The same cases run over MPI and c10d in tests/comm/.
#include <catch2/catch.hpp>
#include <cstdint>
#include <protomem/comm/communicator.hpp>
#include <string>
#include <vector>

#include "support/comm_cases.hpp"
#include "support/thread_comm.hpp"

using protomem::CommTraffic;
using protomem::ReduceOp;
using protomem::SingleProcess;
using protomem::test::Expect;
using protomem::test::run_ranks;
using protomem::test::ThreadComm;

namespace {

// A communicator without all_reduce for float: not a Communicator.
struct NoFloatReduce {
  int rank() const { return 0; }
  int world_size() const { return 1; }
  CommTraffic traffic() const { return {}; }
  template <class T>
  void all_gather(const T*, std::int64_t, T*, const std::int64_t*) {}
  void all_reduce(std::int64_t*, std::int64_t, ReduceOp) {}
  void all_reduce(std::uint64_t*, std::int64_t, ReduceOp) {}
  void all_reduce(double*, std::int64_t, ReduceOp) {}
};
// rank() that is not const.
struct MutableRank {
  int rank() { return 0; }
  int world_size() const { return 1; }
  CommTraffic traffic() const { return {}; }
  template <class T>
  void all_gather(const T*, std::int64_t, T*, const std::int64_t*) {}
  template <class T>
  void all_reduce(T*, std::int64_t, ReduceOp) {}
};

static_assert(protomem::is_communicator_v<SingleProcess>);
static_assert(protomem::is_communicator_v<ThreadComm>);
static_assert(!protomem::is_communicator_v<NoFloatReduce>);
static_assert(!protomem::is_communicator_v<MutableRank>);
static_assert(!protomem::is_communicator_v<int>);
static_assert(protomem::detail::has_all_reduce<NoFloatReduce, double>::value);
static_assert(!protomem::detail::has_all_reduce<NoFloatReduce, float>::value);

}  // namespace

TEST_CASE("SingleProcess copies, reduces to itself and sends nothing", "[comm]") {
  SingleProcess comm;
  CHECK(comm.rank() == 0);
  CHECK(comm.world_size() == 1);
  const std::vector<double> mine{1.5, -2.0, 3.25};
  std::vector<double> all(3);
  const std::int64_t counts[1] = {3};
  comm.all_gather(mine.data(), 3, all.data(), counts);
  CHECK(all == mine);
  std::vector<std::uint64_t> v{1, 2, 3};
  comm.all_reduce(v.data(), 3, ReduceOp::sum);
  CHECK(v == std::vector<std::uint64_t>{1, 2, 3});
  CHECK(comm.traffic().bytes() == 0);
  CHECK(comm.traffic().collectives == 2);
  // A count that is not the rank's own: a local error, reported.
  const std::int64_t wrong[1] = {2};
  CHECK_THROWS_WITH(comm.all_gather(mine.data(), 3, all.data(), wrong),
                    "protomem: single-process all_gather on rank 0: count = 3 but counts[0] = 2");

  Expect expect;
  protomem::test::check_collectives(comm, expect);
  protomem::test::check_error_agreement(comm, expect);
  CHECK(expect.report() == "");
}

TEST_CASE("collectives over thread ranks", "[comm]") {
  for (int W = 1; W <= 4; ++W) {
    INFO("W = " << W);
    std::vector<std::string> failures(static_cast<std::size_t>(W));
    const std::vector<std::string> errors = run_ranks(W, [&](ThreadComm& comm) {
      Expect expect;
      protomem::test::check_collectives(comm, expect);
      failures[static_cast<std::size_t>(comm.rank())] = expect.report();
    });
    CHECK(errors == std::vector<std::string>(std::size_t(W)));
    CHECK(failures == std::vector<std::string>(std::size_t(W)));
  }
}

TEST_CASE("bad input on some ranks: every rank throws the same error", "[comm]") {
  for (int W = 1; W <= 4; ++W) {
    INFO("W = " << W);
    std::vector<std::string> failures(static_cast<std::size_t>(W));
    const std::vector<std::string> errors = run_ranks(W, [&](ThreadComm& comm) {
      Expect expect;
      protomem::test::check_error_agreement(comm, expect);
      failures[static_cast<std::size_t>(comm.rank())] = expect.report();
    });
    CHECK(errors == std::vector<std::string>(std::size_t(W)));
    CHECK(failures == std::vector<std::string>(std::size_t(W)));
  }
}

TEST_CASE("without collective_check, a rank that throws leaves the others to time out", "[comm]") {
  // The hazard collective_check exists for, shown with the test hub's barrier timeout (a real
  // engine would wait for good): rank 1 skips the all-reduce that rank 0 makes.
  protomem::test::ThreadHub hub(2, std::chrono::seconds(1));
  std::string error0, error1;
  std::thread r0([&] {
    ThreadComm comm(hub, 0);
    std::int64_t v = 1;
    try {
      comm.all_reduce(&v, 1, ReduceOp::sum);
    } catch (const std::exception& e) {
      error0 = e.what();
    }
  });
  std::thread r1([&] {
    try {
      protomem::detail::fail("labels[0] = -1 is negative");
    } catch (const protomem::Error& e) {
      error1 = e.what();
    }
  });
  r0.join();
  r1.join();
  CHECK(error1 == "protomem: labels[0] = -1 is negative");
  CHECK(error0 == "thread hub: a barrier timed out (a rank is missing)");
}
