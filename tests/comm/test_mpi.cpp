// The Communicator concept over MPI (protomem/mpi.hpp), run by mpirun with 1, 2 and 4 ranks
// (tests/comm/CMakeLists.txt): the collectives against values every rank computes itself, the
// agreement on failure, and the sharded bookkeeping against the single-process model - including
// a move from all ranks to a sub-communicator of about half of them (a checkpoint N -> M).
#include <mpi.h>

#include <catch2/catch.hpp>
#include <protomem/detail/shard_plan.hpp>
#include <protomem/mpi.hpp>
#include <string>
#include <vector>

#include "support/comm_cases.hpp"
#include "support/shard_model.hpp"
#include "support/shard_sim.hpp"

using protomem::MpiCommunicator;
using protomem::detail::ShardBook;
using protomem::test::BatchStream;
using protomem::test::Expect;
using protomem::test::LogicalModel;

TEST_CASE("MPI collectives", "[mpi]") {
  MpiCommunicator comm;
  int world = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &world);
  CHECK(comm.world_size() == world);
  Expect expect;
  protomem::test::check_collectives(comm, expect);
  CHECK(expect.report() == "");
}

TEST_CASE("MPI: bad input on some ranks, every rank throws the same error", "[mpi]") {
  MpiCommunicator comm;
  Expect expect;
  protomem::test::check_error_agreement(comm, expect);
  CHECK(expect.report() == "");
}

TEST_CASE("MPI: sharded bookkeeping equals the single-process memory", "[mpi]") {
  constexpr protomem::index_t M = 37;
  for (bool moves_to_back : {true, false}) {
    MpiCommunicator comm;
    const int W = comm.world_size();
    ShardBook book(M, comm.rank(), W);
    LogicalModel model(M, moves_to_back);
    BatchStream stream(77, M, 24);
    Expect expect;
    protomem::test::simulate_shards(comm, book, model, stream, 300, moves_to_back, 10, expect);
    INFO("rank " << comm.rank() << " of " << W);
    CHECK(expect.report() == "");
    CHECK(model.evictions > 100);

    // Checkpoint N -> M: the logical memory moves to the first max(1, W / 2) ranks, which carry
    // on from it; the others stand by.
    const std::vector<protomem::detail::ShardRecord> records =
        protomem::detail::gather_records(book, comm);
    const int kept = W / 2 > 0 ? W / 2 : 1;
    const int color = comm.rank() < kept ? 0 : 1;
    MPI_Comm half;
    MPI_Comm_split(MPI_COMM_WORLD, color, comm.rank(), &half);
    if (color == 0) {
      MpiCommunicator sub(half);
      CHECK(sub.world_size() == kept);
      ShardBook moved = ShardBook::from_records(
          M, sub.rank(), kept, records,
          {model.steps, model.refreshes, model.insertions, model.evictions});
      // All ranks drew the full world's splits so far; the sub-communicator continues with its own.
      Expect after;
      protomem::test::simulate_shards(sub, moved, model, stream, 200, moves_to_back, 10, after);
      CHECK(after.report() == "");
      CHECK(moved.steps() == 500);
    }
    MPI_Comm_free(&half);
    MPI_Barrier(MPI_COMM_WORLD);
  }
}

TEST_CASE("MPI: traffic is counted as the logical payload", "[mpi]") {
  MpiCommunicator comm;
  const int W = comm.world_size();
  std::vector<double> rows(6, 1.0);  // 2 rows of 3 from every rank
  std::vector<double> all(rows.size() * std::size_t(W));
  std::vector<std::int64_t> row_counts(std::size_t(W), 2);
  const auto before = comm.traffic();
  protomem::all_gather_rows(comm, rows.data(), 3, all.data(), row_counts.data());
  comm.all_reduce(all.data(), std::int64_t(all.size()), protomem::ReduceOp::sum);
  const auto used = comm.traffic() - before;
  const std::uint64_t n = 6 * sizeof(double);
  CHECK(used.collectives == 2);
  CHECK(used.bytes_sent == (W == 1 ? 0 : n + n * std::uint64_t(W)));
  CHECK(used.bytes_received == (W == 1 ? 0 : n * std::uint64_t(W - 1) + n * std::uint64_t(W)));
  for (double v : all) CHECK(v == W);
}
