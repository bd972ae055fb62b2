// The world-size-independent bookkeeping of a sharded memory (protomem/detail/shard_plan.hpp):
// W = 1, 2, 3, 4 ranks simulated as threads (tests/support/thread_comm.hpp) over >= 1000 random
// steps with evictions, uneven batches and empty ranks; after every step the logical memory
// (labels, last-written steps, global slots, eviction order) gathered from the shards equals an
// independent single-process model (tests/support/shard_model.hpp), which is itself checked
// against the real PrototypeMemory here.
#include <catch2/catch.hpp>
#include <protomem/detail/shard_plan.hpp>
#include <protomem/memory.hpp>
#include <random>
#include <string>
#include <vector>

#include "support/comm_cases.hpp"
#include "support/shard_model.hpp"
#include "support/shard_sim.hpp"
#include "support/thread_comm.hpp"

using protomem::index_t;
using protomem::label_t;
using protomem::detail::ShardBook;
using protomem::detail::ShardRecord;
using protomem::test::BatchStream;
using protomem::test::Expect;
using protomem::test::LogicalModel;
using protomem::test::run_ranks;
using protomem::test::ThreadComm;

namespace {

// The model against the real memory: same batches, then the same classes, order and ages.
template <class Queue>
void model_matches_memory(bool moves_to_back) {
  constexpr index_t M = 37, D = 3;
  protomem::Config config;
  config.capacity = M;
  config.dim = D;
  protomem::PrototypeMemory<double> memory(config, Queue{});
  LogicalModel model(M, moves_to_back);
  BatchStream stream(7, M, 24);
  std::mt19937_64 rng(11);
  std::normal_distribution<double> normal;
  for (int t = 0; t < 400; ++t) {
    const std::vector<label_t> labels = stream.next_batch();
    const auto B = static_cast<index_t>(labels.size());
    std::vector<double> e(static_cast<std::size_t>(B * D)), g(e.size());
    for (double& v : e) v = normal(rng);
    memory.step(protomem::matrix_view<const double>(e.data(), B, D),
                protomem::label_view(labels.data(), B), protomem::matrix_view(g.data(), B, D));
    model.step(BatchStream::classes_of(labels));

    std::vector<std::pair<label_t, std::uint64_t>> stored, modelled;
    for (const auto& record : memory) stored.push_back({record.label, record.last_written});
    for (const auto& entry : model.order) modelled.push_back({entry.label, entry.written});
    INFO("step " << t + 1);
    REQUIRE(stored == modelled);
    REQUIRE(memory.stats().evictions == model.evictions);
    REQUIRE(memory.stats().refreshes == model.refreshes);
    REQUIRE(memory.stats().insertions == model.insertions);
  }
  CHECK(model.evictions > 500);  // the stream does evict, a lot
  CHECK(model.refreshes > 500);
}

struct RunResult {
  std::vector<std::string> errors;    // per rank: an exception, if any
  std::vector<std::string> failures;  // per rank: failed expectations
  std::vector<ShardRecord> records;   // rank 0's gathered logical memory at the end
  std::uint64_t steps = 0;
};

// Runs `steps` steps on W thread ranks, starting from `records` (eviction order) at `start_step`.
RunResult run_shards(int W, index_t capacity, index_t max_batch, bool moves_to_back,
                     std::uint64_t seed, int skip_steps, int skip_world, int steps,
                     const std::vector<ShardRecord>& records, LogicalModel model_at_start) {
  RunResult result;
  result.failures.resize(static_cast<std::size_t>(W));
  result.errors = run_ranks(W, [&](ThreadComm& comm) {
    const protomem::detail::ShardCounters counters{model_at_start.steps, model_at_start.refreshes,
                                                   model_at_start.insertions,
                                                   model_at_start.evictions};
    ShardBook book = ShardBook::from_records(capacity, comm.rank(), W, records, counters);
    LogicalModel model = model_at_start;
    BatchStream stream(seed, capacity, max_batch);
    // Replay the stream to where the checkpoint was taken (batches and splits alike).
    for (int t = 0; t < skip_steps; ++t) stream.split(stream.next_batch(), skip_world);
    Expect expect;
    protomem::test::simulate_shards(comm, book, model, stream, steps, moves_to_back, 1, expect);
    result.failures[static_cast<std::size_t>(comm.rank())] = expect.report();
    const std::vector<ShardRecord> all = protomem::detail::gather_records(book, comm);
    if (comm.rank() == 0) {
      result.records = all;
      result.steps = book.steps();
    }
  });
  return result;
}

void require_clean(const RunResult& run) {
  for (std::size_t r = 0; r < run.errors.size(); ++r) {
    INFO("rank " << r);
    CHECK(run.errors[r] == "");
    CHECK(run.failures[r] == "");
  }
}

}  // namespace

TEST_CASE("the logical model is the single-process memory's bookkeeping", "[shard]") {
  SECTION("least recently written") { model_matches_memory<protomem::LeastRecentlyWritten>(true); }
  SECTION("first in, first out") { model_matches_memory<protomem::FirstInFirstOut>(false); }
}

TEST_CASE("sharded bookkeeping equals the single-process memory for W = 1..4", "[shard]") {
  for (bool moves_to_back : {true, false}) {
    for (int W = 1; W <= 4; ++W) {
      INFO("W = " << W << (moves_to_back ? ", least recently written" : ", first in first out"));
      // Capacity 37 is no multiple of 2, 3 or 4; batches of 1..24 labels, so most steps evict.
      const RunResult run = run_shards(W, 37, 24, moves_to_back, 100 + W, 0, 0, 1200, {},
                                       LogicalModel(37, moves_to_back));
      require_clean(run);
      CHECK(run.steps == 1200);
      CHECK(run.records.size() == 37);
    }
  }
}

TEST_CASE("sharded bookkeeping with fewer slots than ranks", "[shard]") {
  // Capacity 3 on 4 ranks: rank 3 owns no slot at all; a batch may fill the whole memory.
  for (int W : {2, 4}) {
    INFO("W = " << W);
    const RunResult run = run_shards(W, 3, 3, true, 5, 0, 0, 1000, {}, LogicalModel(3, true));
    require_clean(run);
  }
}

TEST_CASE("the logical memory moves between world sizes (checkpoint N -> M)", "[shard]") {
  const index_t M = 37;
  for (auto [from, to] : {std::pair{4, 1}, std::pair{1, 2}, std::pair{2, 4}, std::pair{3, 2}}) {
    INFO(from << " -> " << to << " ranks");
    const std::uint64_t seed = 1000 + std::uint64_t(from * 10 + to);
    const RunResult first =
        run_shards(from, M, 24, true, seed, 0, 0, 600, {}, LogicalModel(M, true));
    require_clean(first);
    // The model at the checkpoint, rebuilt from the same stream (it is deterministic).
    LogicalModel model(M, true);
    BatchStream replay(seed, M, 24);
    for (int t = 0; t < 600; ++t) {
      const std::vector<label_t> batch = replay.next_batch();
      replay.split(batch, from);  // draws as the ranks' streams did
      model.step(BatchStream::classes_of(batch));
    }
    const RunResult second =
        run_shards(to, M, 24, true, seed, 600, from, 600, first.records, model);
    require_clean(second);
    CHECK(second.steps == 1200);
  }
}

TEST_CASE("from_records rejects records that are not a memory", "[shard]") {
  const std::vector<ShardRecord> good{{4, 1, 1, 0}, {9, 2, 0, 1}};
  CHECK_NOTHROW(ShardBook::from_records(5, 1, 2, good, {2}));
  CHECK_THROWS_WITH(ShardBook::from_records(5, 0, 2, {{4, 1, 0, 0}, {9, 2, 0, 1}}, {2}),
                    "protomem: shard book: record 1 (label 9) has slot 0: the slots of 2 records "
                    "must be 0 .. 1, each once");
  CHECK_THROWS_WITH(ShardBook::from_records(5, 0, 2, {{4, 1, 0, 0}, {9, 2, 2, 1}}, {2}),
                    "protomem: shard book: record 1 (label 9) has slot 2: the slots of 2 records "
                    "must be 0 .. 1, each once");
  CHECK_THROWS_WITH(ShardBook::from_records(5, 0, 2, {{4, 1, 0, 0}, {4, 2, 1, 1}}, {2}),
                    "protomem: shard book: record 1 has label 4, as record 0 does");
  CHECK_THROWS_WITH(ShardBook::from_records(5, 0, 2, {{-4, 1, 0, 0}}, {2}),
                    "protomem: shard book: record 0 has label -4 (labels must be >= 0)");
  CHECK_THROWS_WITH(ShardBook::from_records(5, 0, 2, {{4, 3, 0, 0}}, {2}),
                    "protomem: shard book: record 0 (label 4) was last written at step 3, after "
                    "the memory's step 2");
  CHECK_THROWS_WITH(ShardBook::from_records(1, 0, 2, good, {2}),
                    "protomem: shard book: 2 records but the capacity is 1");
  CHECK_THROWS_WITH(ShardBook(4, 2, 2), "protomem: shard book: rank = 2 is outside [0, 2)");
}

TEST_CASE("a bad plan throws the same error on every rank and changes nothing", "[shard]") {
  auto plan_on = [](int W, index_t capacity, std::vector<std::vector<ShardRecord>> per_rank,
                    std::vector<label_t> classes) {
    std::vector<std::string> unchanged(static_cast<std::size_t>(W));
    std::vector<std::string> errors = run_ranks(W, [&](ThreadComm& comm) {
      const auto r = static_cast<std::size_t>(comm.rank());
      ShardBook book = ShardBook::from_records(capacity, comm.rank(), W, per_rank[r], {3});
      const auto before = book.local_records();
      try {
        protomem::detail::plan_shard_writes(
            book, {classes.data(), static_cast<index_t>(classes.size())}, true, comm);
      } catch (...) {
        const auto after = book.local_records();
        bool same = before.size() == after.size() && book.steps() == 3;
        for (std::size_t i = 0; same && i < before.size(); ++i) {
          same = before[i].label == after[i].label && before[i].ticket == after[i].ticket;
        }
        unchanged[r] = same ? "unchanged" : "changed";
        throw;
      }
    });
    return std::pair{errors, unchanged};
  };
  const std::vector<ShardRecord> two{{4, 1, 0, 0}, {9, 2, 1, 1}};

  // More classes than slots: every rank, the same message.
  auto [errors, unchanged] = plan_on(3, 2, {two, two, two}, {1, 2, 3});
  for (std::size_t r = 0; r < 3; ++r) {
    CHECK(errors[r] == "protomem: the batch has 3 distinct classes but the memory's capacity is 2");
    CHECK(unchanged[r] == "unchanged");
  }
  // Rank 0 and rank 1 both hold label 9 (books built from different records): not one memory.
  const std::vector<ShardRecord> other{{9, 1, 0, 0}, {7, 2, 1, 1}};
  std::tie(errors, unchanged) = plan_on(2, 4, {other, two}, {9});
  for (std::size_t r = 0; r < 2; ++r) {
    CHECK(errors[r] ==
          "protomem: shard plan: class 9 is stored on 2 ranks: the shards do not form one memory");
    CHECK(unchanged[r] == "unchanged");
  }
}

TEST_CASE("plan traffic does not grow with the capacity", "[shard]") {
  // The same batches on memories of 40 and 4000 slots, both full: the bytes of each step's plan
  // depend on C and the evictions only (the per-step figures are checked in simulate_shards).
  for (index_t M : {index_t{40}, index_t{4000}}) {
    std::vector<std::uint64_t> bytes(2);
    const auto errors = run_ranks(2, [&](ThreadComm& comm) {
      std::vector<ShardRecord> full;
      for (index_t i = 0; i < M; ++i) full.push_back({1000000 + i, 1, i, i});
      ShardBook book = ShardBook::from_records(M, comm.rank(), 2, full, {1});
      const std::vector<label_t> classes{1, 2, 3, 1000000 + M - 1};  // 3 new, 1 refresh
      const auto before = comm.traffic();
      const auto plan = protomem::detail::plan_shard_writes(book, {classes.data(), 4}, true, comm);
      bytes[static_cast<std::size_t>(comm.rank())] = (comm.traffic() - before).bytes();
      (void)plan;
    });
    CHECK(errors == std::vector<std::string>(2));
    // 4 flags each way (64 B) + 3 offers of 16 B from each of 2 ranks (48 sent, 48 received).
    CHECK(bytes == std::vector<std::uint64_t>{160, 160});
  }
}
