// The Communicator concept over MPI (protomem/comm/mpi.hpp), run by mpirun with 1, 2 and 4 ranks
// (tests/comm/CMakeLists.txt): the collectives against values every rank computes itself, the
// agreement on failure, and the sharded bookkeeping against the single-process model - including
// a move from all ranks to a sub-communicator of about half of them (a checkpoint N -> M).
#include <mpi.h>

#include <catch2/catch.hpp>
#include <protomem/detail/shard_plan.hpp>
#include <protomem/comm/mpi.hpp>
#include <unistd.h>

#include <cstdio>
#include <string>
#include <vector>

#include "support/comm_cases.hpp"
#include "support/shard_model.hpp"
#include "support/shard_sim.hpp"
#include "support/sharded_cases.hpp"

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

// ---- the sharded memory (protomem/sharded.hpp) over MPI ----------------------------------------

namespace {

// A path every rank agrees on: rank 0's process id, shared by an all-reduce.
std::string shared_path(MpiCommunicator& comm, const char* stem) {
  std::int64_t pid = comm.rank() == 0 ? static_cast<std::int64_t>(getpid()) : 0;
  comm.all_reduce(&pid, 1, protomem::ReduceOp::max);
  return "/tmp/protomem_mpi_" + std::to_string(pid) + "_" + stem;
}

}  // namespace

TEST_CASE("MPI: sharded step equals the single-process step on the concatenated batch",
          "[mpi][sharded]") {
  MpiCommunicator comm;
  Expect expect;
  protomem::test::check_sharded_matches_single<double, protomem::LeastRecentlyWritten>(comm, 60,
                                                                                      1e-10, expect);
  protomem::test::check_sharded_matches_single<float, protomem::LeastRecentlyWritten>(comm, 60,
                                                                                     1e-5, expect);
  protomem::test::check_sharded_matches_single<double, protomem::FirstInFirstOut>(comm, 50, 1e-10,
                                                                                 expect);
  INFO("rank " << comm.rank() << " of " << comm.world_size());
  CHECK(expect.report() == "");
}

TEST_CASE("MPI: bad input on one rank, every rank throws and nothing changes", "[mpi][sharded]") {
  MpiCommunicator comm;
  for (int bad : {0, comm.world_size() - 1}) {
    Expect expect;
    protomem::test::check_sharded_bad_input(comm, bad, expect);
    INFO("rank " << comm.rank() << ", bad rank " << bad);
    CHECK(expect.report() == "");
  }
}

TEST_CASE("MPI: checkpoint files between W ranks, one process and W / 2 ranks", "[mpi][sharded]") {
  MpiCommunicator comm;
  const std::string path = shared_path(comm, "memory.ckpt");
  Expect expect;
  protomem::test::check_sharded_checkpoint_file(comm, path, expect);
  CHECK(expect.report() == "");

  // W -> max(1, W / 2): the first half of the ranks loads the file and continues against a plain
  // memory loaded from it; the others stand by.
  using protomem::test::GlobalBatch;
  const protomem::Config config = protomem::test::sharded_test_config();
  protomem::test::Sharded<double, MpiCommunicator> sharded(comm, config);
  protomem::test::ReferenceMemory<double> reference(config);
  protomem::test::ShardedBatches<double> batches(515, config.capacity, config.dim,
                                                 comm.world_size());
  for (int t = 0; t < 40; ++t) {
    protomem::test::step_both(sharded, reference, batches.next(), 1e-10, expect);
  }
  sharded.save(path);
  const int kept = comm.world_size() / 2 > 0 ? comm.world_size() / 2 : 1;
  const int color = comm.rank() < kept ? 0 : 1;
  MPI_Comm half;
  MPI_Comm_split(MPI_COMM_WORLD, color, comm.rank(), &half);
  if (color == 0) {
    MpiCommunicator sub(half);
    protomem::test::Sharded<double, MpiCommunicator> moved(sub, config);
    moved.load(path);
    protomem::test::ReferenceMemory<double> plain(config);
    plain.load(path);
    protomem::test::ShardedBatches<double> more(516, config.capacity, config.dim, kept);
    for (int t = 0; t < 30; ++t) protomem::test::step_both(moved, plain, more.next(), 1e-10, expect);
    protomem::test::expect_same_memory<double>(moved, plain, 1e-10, expect);
    CHECK(moved.step_count() == 70);
  }
  MPI_Comm_free(&half);
  MPI_Barrier(MPI_COMM_WORLD);
  if (comm.rank() == 0) std::remove(path.c_str());
  INFO("rank " << comm.rank() << " of " << comm.world_size());
  CHECK(expect.report() == "");
}
