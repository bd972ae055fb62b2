// A PrototypeMemory given a communicator (protomem/memory.hpp) with W = 1..4 ranks as threads
// (tests/support/thread_comm.hpp): every step equals a PrototypeMemory stepped on the concatenated
// batch (loss, each rank's gradient rows, the logical memory, the bytes exchanged); checkpoints move
// between world sizes and to and from a plain PrototypeMemory with identical continuation; bad
// input, a corrupt checkpoint or a different Config on one rank throw the same error on every rank
// and change nothing. The same cases run over MPI (tests/comm/test_mpi.cpp) and c10d
// (tests/comm/test_c10d.cpp).
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <protomem/memory.hpp>
#include <protomem/sharded.hpp>  // the former name, tested once below
#include <sstream>
#include <string>
#include <vector>

#include "support/sharded_cases.hpp"
#include "support/thread_comm.hpp"

using protomem::index_t;
using protomem::label_t;
using protomem::test::Expect;
using protomem::test::run_ranks;
using protomem::test::ThreadComm;

namespace {

std::string joined(const std::vector<std::string>& errors) {
  std::string text;
  for (std::size_t r = 0; r < errors.size(); ++r) {
    if (!errors[r].empty()) text += "rank " + std::to_string(r) + " threw: " + errors[r] + "\n";
  }
  return text;
}

template <class Scalar, class Queue>
void matches_single(int W, int steps, double tolerance) {
  std::vector<Expect> expects(static_cast<std::size_t>(W));
  const auto errors = run_ranks(W, [&](ThreadComm& comm) {
    protomem::test::check_sharded_matches_single<Scalar, Queue>(
        comm, steps, tolerance, expects[static_cast<std::size_t>(comm.rank())]);
  });
  INFO("W = " << W);
  CHECK(joined(errors) == "");
  for (const Expect& e : expects) CHECK(e.report() == "");
}

// A Queue policy the library does not ship (policies/queue.hpp): a refresh keeps a class's place,
// as FirstInFirstOut, under another name - a user-written policy, planned across ranks as well.
struct KeepPlaceOnRefresh {
  static constexpr const char* name = "keep_place_on_refresh";
  bool refresh_renews() const noexcept { return false; }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

}  // namespace

TEST_CASE("sharded step equals the single-process step on the concatenated batch", "[sharded]") {
  SECTION("double, LeastRecentlyWritten, W = 1..4") {
    for (int W = 1; W <= 4; ++W) {
      matches_single<double, protomem::LeastRecentlyWritten>(W, 60, 1e-10);
    }
  }
  SECTION("double, FirstInFirstOut, W = 3") {
    matches_single<double, protomem::FirstInFirstOut>(3, 60, 1e-10);
  }
  SECTION("double, a user-written Queue, W = 2") {
    matches_single<double, KeepPlaceOnRefresh>(2, 60, 1e-10);
  }
  SECTION("float, W = 2 and 4") {
    matches_single<float, protomem::LeastRecentlyWritten>(2, 60, 1e-5);
    matches_single<float, protomem::LeastRecentlyWritten>(4, 60, 1e-5);
  }
}

TEST_CASE("one rank without a communicator is the plain memory, bit for bit", "[sharded]") {
  protomem::SingleProcess comm;
  const protomem::Config config = protomem::test::sharded_test_config();
  protomem::test::Sharded<double, protomem::SingleProcess> sharded(comm, config);
  protomem::test::ReferenceMemory<double> reference(config);
  protomem::test::ShardedBatches<double> batches(5, config.capacity, config.dim, 1);
  Expect expect;
  for (int t = 0; t < 50; ++t) {
    protomem::test::step_both(sharded, reference, batches.next(), 0.0, expect);
  }
  protomem::test::expect_same_memory<double>(sharded, reference, 0.0, expect);
  CHECK(expect.report() == "");
  CHECK(comm.traffic().bytes() == 0);
}

TEST_CASE("ShardedPrototypeMemory, the former name, is the memory given its communicator",
          "[sharded]") {
  const protomem::Config config = protomem::test::sharded_test_config();
  std::vector<Expect> expects(2);
  const auto errors = run_ranks(2, [&](ThreadComm& comm) {
    Expect& expect = expects[static_cast<std::size_t>(comm.rank())];
    protomem::ShardedPrototypeMemory<double, ThreadComm> former(comm, config);
    protomem::PrototypeMemory<double>& memory = former;  // the same object
    expect(&former.communicator() == &comm, "communicator() is the one given");
    expect(memory.communicator().get_if<ThreadComm>() == &comm,
                 "the memory borrows the communicator given");
    expect(memory.world_size() == 2 && memory.rank() == comm.rank(), "rank and world size");
  });
  CHECK(joined(errors) == "");
  for (const Expect& e : expects) CHECK(e.report() == "");
}

TEST_CASE("bad input on one rank: every rank throws the same error and nothing changes",
          "[sharded]") {
  for (int W = 1; W <= 4; ++W) {
    for (int bad : {0, W - 1}) {
      std::vector<Expect> expects(static_cast<std::size_t>(W));
      const auto errors = run_ranks(W, [&](ThreadComm& comm) {
        protomem::test::check_sharded_bad_input(comm, bad,
                                                expects[static_cast<std::size_t>(comm.rank())]);
      });
      INFO("W = " << W << ", bad rank " << bad);
      CHECK(joined(errors) == "");
      for (const Expect& e : expects) CHECK(e.report() == "");
    }
  }
}

TEST_CASE("a Config or margin that differs on one rank throws on every rank", "[sharded]") {
  const int W = 3;
  std::vector<std::string> messages(W);
  const auto errors = run_ranks(W, [&](ThreadComm& comm) {
    protomem::Config config = protomem::test::sharded_test_config();
    if (comm.rank() == 1) config.dim = 9;
    try {
      protomem::test::Sharded<double, ThreadComm> memory(comm, config);
    } catch (const protomem::Error& e) {
      messages[static_cast<std::size_t>(comm.rank())] = e.what();
    }
  });
  CHECK(joined(errors) == "");
  for (const std::string& m : messages) {
    CHECK(m.find("rank ") != std::string::npos);
    CHECK(m.find("different Configs") != std::string::npos);
  }
  // A margin changed on one rank only (a schedule applied on some ranks): the next step throws.
  std::vector<std::string> step_messages(W);
  std::vector<int> left_pending(W, 0);  // Catch2's macros are not thread safe: checked below
  const auto step_errors = run_ranks(W, [&](ThreadComm& comm) {
    const protomem::Config config = protomem::test::sharded_test_config();
    protomem::test::Sharded<double, ThreadComm> memory(comm, config);
    if (comm.rank() == 2) memory.set_margin(protomem::CosFace(32, 0.35));
    std::vector<double> e(static_cast<std::size_t>(config.dim), 1.0), g(e.size());
    const label_t label = comm.rank();
    try {
      memory.forward(protomem::matrix_view<const double>(e.data(), 1, config.dim),
                     protomem::label_view(&label, 1), protomem::matrix_view(g.data(), 1, config.dim));
    } catch (const protomem::Error& error) {
      step_messages[static_cast<std::size_t>(comm.rank())] = error.what();
    }
    left_pending[static_cast<std::size_t>(comm.rank())] = memory.pending() ? 1 : 0;
  });
  CHECK(left_pending == std::vector<int>(W, 0));
  CHECK(joined(step_errors) == "");
  for (const std::string& m : step_messages) {
    CHECK(m.find("differ between the ranks") != std::string::npos);
  }
}

namespace {

using Batches = protomem::test::ShardedBatches<double>;
using Global = protomem::test::GlobalBatch<double>;

// The next `steps` global batches (the same stream every caller draws from a copy of).
std::vector<Global> draw(Batches& batches, int steps) {
  std::vector<Global> out;
  for (int t = 0; t < steps; ++t) out.push_back(batches.next());
  return out;
}

// Re-splits a global batch for W ranks (the rows stay in the same order).
Global resplit(Global b, int W) {
  const auto B = static_cast<std::int64_t>(b.labels.size());
  b.rows.assign(static_cast<std::size_t>(W), 0);
  for (int r = 0; r < W; ++r) b.rows[static_cast<std::size_t>(r)] = B * (r + 1) / W - B * r / W;
  return b;
}

// Steps a plain memory on the whole of each batch (the single-process reference).
void step_alone(protomem::test::ReferenceMemory<double>& memory,
                const std::vector<Global>& batches) {
  const index_t D = memory.dim();
  for (const Global& b : batches) {
    std::vector<double> g(b.embeddings.size());
    const auto B = static_cast<index_t>(b.labels.size());
    memory.step(protomem::matrix_view<const double>(b.embeddings.data(), B, D),
                protomem::label_view(b.labels.data(), B), protomem::matrix_view(g.data(), B, D));
  }
}

// Steps `batches` on a sharded memory of one process against `mine` (rows as one share) and on
// the plain memory `one`, as a run continued in one process after a checkpoint.
template <class Sharded>
void continue_alone(Sharded& sharded1, protomem::test::ReferenceMemory<double>& mine,
                    protomem::test::ReferenceMemory<double>& one, const std::vector<Global>& batches,
                    Expect& expect) {
  for (const Global& b : batches) {
    protomem::test::step_both(sharded1, mine, resplit(b, 1), 1e-10, expect);
  }
  step_alone(one, batches);
}

// Steps a sharded memory of W thread ranks (loaded from `checkpoint` when not empty) through
// `batches` against `reference` (a copy per rank), and returns the sharded memory's checkpoint.
std::string run_sharded(int W, const std::string& checkpoint, const std::vector<Global>& batches,
                        const protomem::test::ReferenceMemory<double>& reference,
                        std::vector<Expect>& expects) {
  expects.assign(static_cast<std::size_t>(W), Expect{});
  std::string saved;
  const auto errors = run_ranks(W, [&](ThreadComm& comm) {
    Expect& expect = expects[static_cast<std::size_t>(comm.rank())];
    expect.context = "W = " + std::to_string(W) + ", rank " + std::to_string(comm.rank());
    const protomem::Config config = protomem::test::sharded_test_config();
    protomem::test::Sharded<double, ThreadComm> sharded(comm, config);
    if (!checkpoint.empty()) {
      std::istringstream in(checkpoint);
      sharded.load(in);
    }
    protomem::test::ReferenceMemory<double> mine = reference;  // this rank's copy
    for (const Global& b : batches) {
      protomem::test::step_both(sharded, mine, resplit(b, W), 1e-10, expect);
    }
    protomem::test::expect_same_memory<double>(sharded, mine, 1e-10, expect);
    std::ostringstream out;
    sharded.save(out);
    if (comm.rank() == 0) saved = out.str();
  });
  INFO("W = " << W);
  CHECK(joined(errors) == "");
  return saved;
}

}  // namespace

TEST_CASE("checkpoints move between world sizes: 4 -> 1 -> 2 -> 4, identical continuation",
          "[sharded]") {
  const protomem::Config config = protomem::test::sharded_test_config();
  Batches stream(31, config.capacity, config.dim, 1);
  protomem::test::ReferenceMemory<double> reference(config);  // never checkpointed
  std::vector<Expect> expects;

  // 4 ranks from scratch.
  const std::vector<Global> first = draw(stream, 40);
  const std::string from4 = run_sharded(4, "", first, reference, expects);
  for (const Expect& e : expects) CHECK(e.report() == "");
  step_alone(reference, first);
  // The sharded checkpoint is in the single-process format: a plain memory loads it.
  protomem::test::ReferenceMemory<double> one(config);
  {
    std::istringstream in(from4);
    one.load(in);  // 4 -> 1: a plain PrototypeMemory, no communicator
  }
  Expect expect;
  protomem::SingleProcess single;
  {
    // 1 process continues 30 steps (as a sharded memory over SingleProcess, and as a plain one).
    const std::vector<Global> second = draw(stream, 30);
    protomem::test::Sharded<double, protomem::SingleProcess> sharded1(single, config);
    std::istringstream in(from4);
    sharded1.load(in);
    protomem::test::ReferenceMemory<double> mine = reference;
    continue_alone(sharded1, mine, one, second, expect);
    protomem::test::expect_same_memory<double>(sharded1, mine, 1e-10, expect);
    protomem::test::expect_same_memory<double>(sharded1, one, 1e-10, expect);
    reference = mine;
  }
  CHECK(expect.report() == "");
  // 1 -> 2: the plain memory's checkpoint loads into 2 ranks.
  std::ostringstream from1;
  one.save(from1);
  const std::vector<Global> third = draw(stream, 30);
  const std::string from2 = run_sharded(2, from1.str(), third, reference, expects);
  for (const Expect& e : expects) CHECK(e.report() == "");
  step_alone(reference, third);
  // 2 -> 4.
  const std::vector<Global> fourth = draw(stream, 30);
  run_sharded(4, from2, fourth, reference, expects);
  for (const Expect& e : expects) CHECK(e.report() == "");
  CHECK(reference.stats().evictions > 50);
}

TEST_CASE("a corrupt checkpoint on one rank fails the load on every rank, nothing changes",
          "[sharded]") {
  const int W = 4;
  std::vector<Expect> expects(W);
  const auto errors = run_ranks(W, [&](ThreadComm& comm) {
    Expect& expect = expects[static_cast<std::size_t>(comm.rank())];
    const protomem::Config config = protomem::test::sharded_test_config();
    protomem::test::Sharded<double, ThreadComm> sharded(comm, config);
    protomem::test::ReferenceMemory<double> reference(config);
    Batches batches(8, config.capacity, config.dim, W);
    for (int t = 0; t < 20; ++t) protomem::test::step_both(sharded, reference, batches.next(), 1e-10, expect);
    std::ostringstream out;
    sharded.save(out);
    for (int t = 0; t < 5; ++t) protomem::test::step_both(sharded, reference, batches.next(), 1e-10, expect);
    std::string bytes = out.str();
    if (comm.rank() == 2) bytes[bytes.size() / 2] ^= 0x40;  // one flipped bit on rank 2 only
    std::istringstream in(bytes);
    std::string message;
    try {
      sharded.load(in, "shard copy");
    } catch (const protomem::Error& e) {
      message = e.what();
    }
    expect(message.find("rank 2 of 4: shard copy") != std::string::npos,
           "the error does not name rank 2 and its source: '" + message + "'");
    // Unchanged: the next steps still equal the reference, which never loaded anything.
    for (int t = 0; t < 5; ++t) protomem::test::step_both(sharded, reference, batches.next(), 1e-10, expect);
    protomem::test::expect_same_memory<double>(sharded, reference, 1e-10, expect);
  });
  CHECK(joined(errors) == "");
  for (const Expect& e : expects) CHECK(e.report() == "");
}

TEST_CASE("checkpoint files: N ranks save, one process or N ranks load, corrupt files fail",
          "[sharded]") {
  for (int W : {1, 3}) {
    char pattern[] = "/tmp/protomem_sharded_XXXXXX";
    REQUIRE(mkdtemp(pattern) != nullptr);
    const std::string path = std::string(pattern) + "/memory.ckpt";
    std::vector<Expect> expects(static_cast<std::size_t>(W));
    const auto errors = run_ranks(W, [&](ThreadComm& comm) {
      protomem::test::check_sharded_checkpoint_file(comm, path,
                                                    expects[static_cast<std::size_t>(comm.rank())]);
    });
    INFO("W = " << W);
    CHECK(joined(errors) == "");
    for (const Expect& e : expects) CHECK(e.report() == "");
    std::remove(path.c_str());
    rmdir(pattern);
  }
}

namespace {

// A communicator that forwards to ThreadComm and, while armed, fails its n-th collective on every
// rank alike - an engine error reported to every rank (a broken connection, Gloo's timeout).
class FailingComm {
 public:
  explicit FailingComm(ThreadComm& inner) : inner_(&inner) {}
  int rank() const { return inner_->rank(); }
  int world_size() const { return inner_->world_size(); }
  protomem::CommTraffic traffic() const { return inner_->traffic(); }
  template <class T>
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    maybe_fail();
    inner_->all_gather(mine, count, all, counts);
  }
  template <class T>
  void all_reduce(T* data, std::int64_t count, protomem::ReduceOp op) {
    maybe_fail();
    inner_->all_reduce(data, count, op);
  }
  int fail_at = -1;  // the collective (counted in `calls`) that fails; -1: none
  int calls = 0;     // collectives since the caller last reset it

 private:
  void maybe_fail() {
    const int index = calls++;
    if (fail_at >= 0 && index == fail_at) {
      fail_at = -1;
      protomem::detail::fail("injected engine failure on rank ", rank());
    }
  }
  ThreadComm* inner_;
};

}  // namespace

TEST_CASE("a communicator failure at any collective of a step throws and changes nothing",
          "[sharded]") {
  const int W = 3;
  std::vector<Expect> expects(W);
  std::vector<int> collectives(W, 0);
  const auto errors = run_ranks(W, [&](ThreadComm& thread_comm) {
    Expect& expect = expects[static_cast<std::size_t>(thread_comm.rank())];
    FailingComm comm(thread_comm);
    const protomem::Config config = protomem::test::sharded_test_config();
    protomem::test::Sharded<double, FailingComm> sharded(comm, config);
    protomem::test::ReferenceMemory<double> reference(config);
    Batches batches(17, config.capacity, config.dim, W);
    for (int t = 0; t < 40; ++t) protomem::test::step_both(sharded, reference, batches.next(), 1e-10, expect);
    // How many collectives one step makes (memory full, evicting, similar_k = 3).
    comm.calls = 0;
    protomem::test::step_both(sharded, reference, batches.next(), 1e-10, expect);
    const int per_step = comm.calls;
    collectives[static_cast<std::size_t>(comm.rank())] = per_step;
    for (int n = 0; n < per_step; ++n) {
      const auto before = sharded.gather_records();
      const protomem::Stats stats_before = sharded.stats();
      const protomem::test::GlobalBatch<double> batch = batches.next();
      const std::int64_t mine = batch.rows[static_cast<std::size_t>(comm.rank())];
      const std::int64_t offset = batch.offset(comm.rank());
      std::vector<double> g(static_cast<std::size_t>(std::max<std::int64_t>(mine, 1) * config.dim), 5);
      comm.calls = 0;
      comm.fail_at = n;
      std::string message;
      try {
        sharded.forward(protomem::matrix_view<const double>(
                            batch.embeddings.data() + offset * config.dim, mine, config.dim),
                        protomem::label_view(batch.labels.data() + offset, mine),
                        protomem::matrix_view(g.data(), mine, config.dim));
      } catch (const protomem::Error& e) {
        message = e.what();
      }
      expect.context = "rank " + std::to_string(comm.rank()) + ", failure at collective " +
                       std::to_string(n);
      expect(message.find("injected engine failure") != std::string::npos,
             "the step did not report the engine's failure: '" + message + "'");
      expect(!sharded.pending(), "a failed forward left an update pending");
      bool untouched = true;
      for (double v : g) untouched = untouched && v == 5;
      expect(untouched, "a failed forward wrote the gradient");
      const auto after = sharded.gather_records();
      bool same = after.size() == before.size() && sharded.stats().steps == stats_before.steps;
      for (std::size_t i = 0; same && i < after.size(); ++i) {
        same = after[i].label == before[i].label && after[i].prototype == before[i].prototype;
      }
      expect(same, "a failed step changed the memory");
      // The same batch again, without the failure: the step the reference takes.
      protomem::test::step_both(sharded, reference, batch, 1e-10, expect);
    }
    protomem::test::expect_same_memory<double>(sharded, reference, 1e-10, expect);
  });
  CHECK(joined(errors) == "");
  for (const Expect& e : expects) CHECK(e.report() == "");
  CHECK(collectives[0] >= 10);  // validation, gathers, plan, merge, similar classes
}

TEST_CASE("a rank whose input failed before the step fails the forward on every rank",
          "[sharded]") {
  // fail_forward: what an adapter calls when its own checks (dtype, device, shape) fail on one
  // rank: the others, in forward(), get the same Error naming that rank, and the ranks stay in
  // step - the next forward works on all of them.
  const int W = 3;
  std::vector<std::string> messages(W);
  std::vector<double> losses(W, 0.0);
  std::vector<int> pending(W, 0);
  const auto errors = run_ranks(W, [&](ThreadComm& comm) {
    const protomem::Config config = protomem::test::sharded_test_config();
    protomem::test::Sharded<double, ThreadComm> memory(comm, config);
    const index_t D = config.dim;
    std::vector<double> e(static_cast<std::size_t>(2 * D)), g(e.size());
    for (std::size_t k = 0; k < e.size(); ++k) e[k] = std::sin(1.0 + double(k) + comm.rank());
    const label_t labels[2] = {7, 7};  // every rank: two exemplars of class 7
    auto forward = [&] {
      return memory.forward(protomem::matrix_view<const double>(e.data(), 2, D),
                            protomem::label_view(labels, 2), protomem::matrix_view(g.data(), 2, D));
    };
    try {
      if (comm.rank() == 1) memory.fail_forward("protomem: embeddings must have dtype float64");
      forward();
    } catch (const protomem::Error& error) {
      messages[static_cast<std::size_t>(comm.rank())] = error.what();
    }
    pending[static_cast<std::size_t>(comm.rank())] = memory.pending() ? 1 : 0;
    losses[static_cast<std::size_t>(comm.rank())] = static_cast<double>(forward().loss);
    memory.commit();
  });
  CHECK(joined(errors) == "");
  CHECK(pending == std::vector<int>(W, 0));
  for (const std::string& m : messages) {
    CHECK(m == "protomem: rank 1 of 3: embeddings must have dtype float64");
  }
  CHECK(losses[0] == losses[1]);
  CHECK(losses[1] == losses[2]);
}

TEST_CASE("single-exemplar batches are judged on the global batch, alike on every rank",
          "[sharded]") {
  // Each rank holds one exemplar of each class; together two: a class-grouped global batch,
  // accepted under SingleExemplar::refuse. Classes apart on every rank: refused on every rank.
  const int W = 2;
  std::vector<std::string> messages(W);
  std::vector<index_t> singles(W, -1);
  const auto errors = run_ranks(W, [&](ThreadComm& comm) {
    protomem::Config config = protomem::test::sharded_test_config();
    config.single_exemplar = protomem::SingleExemplar::refuse;
    protomem::test::Sharded<double, ThreadComm> memory(comm, config);
    const index_t D = config.dim;
    std::vector<double> e(static_cast<std::size_t>(3 * D)), g(e.size());
    for (std::size_t k = 0; k < e.size(); ++k) e[k] = std::cos(0.5 + double(k) * (comm.rank() + 1));
    const label_t together[3] = {1, 2, 3};
    const label_t apart[3] = {10 + 3 * comm.rank(), 11 + 3 * comm.rank(), 12 + 3 * comm.rank()};
    singles[static_cast<std::size_t>(comm.rank())] =
        memory
            .forward(protomem::matrix_view<const double>(e.data(), 3, D),
                     protomem::label_view(together, 3), protomem::matrix_view(g.data(), 3, D))
            .single_exemplar_classes;
    memory.commit();
    try {
      memory.forward(protomem::matrix_view<const double>(e.data(), 3, D),
                     protomem::label_view(apart, 3), protomem::matrix_view(g.data(), 3, D));
    } catch (const protomem::Error& error) {
      messages[static_cast<std::size_t>(comm.rank())] = error.what();
    }
  });
  CHECK(joined(errors) == "");
  CHECK(singles == std::vector<index_t>(W, 0));
  for (const std::string& m : messages) {
    CHECK(m.find("6 of the batch's 6 classes have a single exemplar (B = 6)") != std::string::npos);
  }
}

namespace {

std::string slurp(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void spill(const std::string& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

// The logical memory of gather_records() / a PrototypeMemory as comparable values.
struct Logical {
  std::vector<label_t> labels;
  std::vector<std::uint64_t> written;
  std::vector<double> prototypes;
  std::vector<index_t> slots;
  protomem::Stats stats{};
  bool operator==(const Logical& o) const {
    return labels == o.labels && written == o.written && prototypes == o.prototypes &&
           slots == o.slots && stats.steps == o.stats.steps &&
           stats.refreshes == o.stats.refreshes && stats.insertions == o.stats.insertions &&
           stats.evictions == o.stats.evictions;
  }
};

template <class Memory>
Logical logical_of_sharded(const Memory& m) {
  Logical l;
  for (const auto& r : m.gather_records()) {
    l.labels.push_back(r.label);
    l.written.push_back(r.last_written);
    l.prototypes.insert(l.prototypes.end(), r.prototype.begin(), r.prototype.end());
  }
  l.slots = m.gather_slots();
  l.stats = m.stats();
  return l;
}

}  // namespace

TEST_CASE(
    "shard checkpoints: 2 ranks save a shard each; it loads into 1, 2, 3 ranks and into "
    "one process with the same logical memory and identical continuation",
    "[sharded][shards]") {
  char pattern[] = "/tmp/protomem_shards_XXXXXX";
  REQUIRE(mkdtemp(pattern) != nullptr);
  const std::string dir = pattern, path = dir + "/memory", path2 = dir + "/later";
  const protomem::Config config = protomem::test::sharded_test_config();
  Batches stream(41, config.capacity, config.dim, 1);
  const std::vector<Global> first = draw(stream, 40), second = draw(stream, 20);
  protomem::test::ReferenceMemory<double> reference(config);
  step_alone(reference, first);

  // 2 ranks: each writes its shard; a second save after 3 more steps to `path2`.
  Logical saved;
  std::vector<Expect> expects(2);
  auto errors = run_ranks(2, [&](ThreadComm& comm) {
    Expect& expect = expects[static_cast<std::size_t>(comm.rank())];
    protomem::test::Sharded<double, ThreadComm> sharded(comm, config);
    protomem::test::ReferenceMemory<double> mine(config);
    for (const Global& b : first)
      protomem::test::step_both(sharded, mine, resplit(b, 2), 1e-10, expect);
    sharded.save_shard(protomem::shard_path(path, comm.rank(), 2));
    const Logical l = logical_of_sharded(sharded);
    if (comm.rank() == 0) saved = l;
    for (int t = 0; t < 3; ++t)
      protomem::test::step_both(sharded, mine, resplit(second[t], 2), 1e-10, expect);
    sharded.save_shard(protomem::shard_path(path2, comm.rank(), 2));
  });
  REQUIRE(joined(errors) == "");
  for (const Expect& e : expects) CHECK(e.report() == "");
  REQUIRE(saved.labels.size() == static_cast<std::size_t>(config.capacity));
  CHECK(reference.stats().evictions > 20);
  const std::vector<std::string> paths = protomem::shard_paths(path, 2);
  // Each file holds its rank's records only: together they are the whole memory's file plus one
  // more header and 8 bytes (the ticket) a record.
  {
    std::ostringstream whole;
    reference.save(whole);
    const std::size_t one = slurp(paths[0]).size(), other = slurp(paths[1]).size();
    const std::size_t n = saved.labels.size(),
                      record = 32 + 8 * static_cast<std::size_t>(config.dim);
    CHECK(one - other == (n + 1) / 2 * record - n / 2 * record);
    CHECK(one + other < whole.str().size() + n * 8 + 1024);
    CHECK(one < whole.str().size() * 6 / 10 + 1024);
  }

  // Into W' = 1, 2, 3 ranks, the files given in either order: the same logical memory, and the
  // next steps equal the reference's.
  for (int W : {1, 2, 3}) {
    expects.assign(static_cast<std::size_t>(W), Expect{});
    errors = run_ranks(W, [&](ThreadComm& comm) {
      Expect& expect = expects[static_cast<std::size_t>(comm.rank())];
      expect.context = "W' = " + std::to_string(W) + ", rank " + std::to_string(comm.rank());
      protomem::test::Sharded<double, ThreadComm> sharded(comm, config);
      sharded.load_shards(W == 3 ? std::vector<std::string>{paths[1], paths[0]} : paths);
      expect(logical_of_sharded(sharded) == saved, "the loaded logical memory differs");
      expect(sharded.local_size() ==
                 protomem::detail::ShardLayout{config.capacity, comm.rank(), W}.local_count(
                     sharded.size()),
             "this rank does not hold exactly its slots");
      protomem::test::ReferenceMemory<double> mine = reference;
      for (const Global& b : second)
        protomem::test::step_both(sharded, mine, resplit(b, W), 1e-10, expect);
      protomem::test::expect_same_memory<double>(sharded, mine, 1e-10, expect);
    });
    INFO("W' = " << W);
    CHECK(joined(errors) == "");
    for (const Expect& e : expects) CHECK(e.report() == "");
  }

  // Into one plain PrototypeMemory (2 -> 1 without a communicator).
  {
    protomem::test::ReferenceMemory<double> one(config);
    one.load_shards(paths);
    Logical l;
    for (const auto& r : one) {
      l.labels.push_back(r.label);
      l.written.push_back(r.last_written);
      l.prototypes.insert(l.prototypes.end(), &r.prototype[0], &r.prototype[0] + config.dim);
    }
    l.slots = saved.slots;  // the plain memory does not expose slots; its continuation checks them
    l.stats = one.stats();
    CHECK(l == saved);
    // Continuation: the plain memory and the never-checkpointed reference step alike.
    protomem::SingleProcess single;
    protomem::test::Sharded<double, protomem::SingleProcess> sharded1(single, config);
    sharded1.load_shards(paths);
    Expect expect;
    protomem::test::ReferenceMemory<double> mine = reference;
    continue_alone(sharded1, mine, one, second, expect);
    protomem::test::expect_same_memory<double>(sharded1, one, 1e-10, expect);
    protomem::test::expect_same_memory<double>(sharded1, mine, 1e-10, expect);
    CHECK(expect.report() == "");
    // A shard given to load() says what it is.
    std::string message;
    try {
      one.load(paths[0]);
    } catch (const protomem::Error& e) {
      message = e.what();
    }
    CHECK(message.find("is one shard of a sharded checkpoint") != std::string::npos);
    CHECK(message.find("load_shards") != std::string::npos);
  }

  // Bad sets: every rank throws the same Error naming the file and the value; nothing changes.
  const std::string corrupt = dir + "/corrupt.rank1-of-2", whole = dir + "/whole.ckpt";
  const std::string truncated = dir + "/truncated.rank1-of-2";
  {
    std::string bytes = slurp(paths[1]);
    spill(truncated, bytes.substr(0, bytes.size() - 30));
    bytes[bytes.size() - 12] ^= 0x01;  // the lowest byte of the last prototype value
    spill(corrupt, bytes);
    std::ostringstream out;
    reference.save(out);
    spill(whole, out.str());
  }
  const std::vector<std::string> later = protomem::shard_paths(path2, 2);
  struct Bad {
    std::vector<std::string> paths;
    std::string says;
  };
  const std::vector<Bad> bads = {
      {{paths[0], dir + "/missing.rank1-of-2"}, "missing.rank1-of-2' does not exist"},
      {{paths[0]}, "shard 0 of a save by 2 ranks, but 1 files were given"},
      {{paths[0], later[1]}, "later.rank1-of-2' is of another save"},
      {{paths[0], corrupt}, "corrupt.rank1-of-2' is corrupt: CRC-32"},
      {{paths[0], truncated}, "truncated.rank1-of-2' is truncated: it ends at byte"},
      {{paths[0], paths[0]}, "memory.rank0-of-2' is shard 0 of 2, which another file"},
      {{whole, paths[1]}, "whole.ckpt' is a single-process checkpoint (format version 2)"},
      {{}, "no shard files given"}};
  for (int W : {1, 2, 3}) {
    std::vector<std::vector<std::string>> messages(static_cast<std::size_t>(W));
    expects.assign(static_cast<std::size_t>(W), Expect{});
    errors = run_ranks(W, [&](ThreadComm& comm) {
      Expect& expect = expects[static_cast<std::size_t>(comm.rank())];
      protomem::test::Sharded<double, ThreadComm> sharded(comm, config);
      sharded.load_shards(later);
      const Logical before = logical_of_sharded(sharded);
      for (const Bad& bad : bads) {
        std::string message = "no error";
        try {
          sharded.load_shards(bad.paths);
        } catch (const protomem::Error& e) {
          message = e.what();
        }
        expect(message.find(bad.says) != std::string::npos,
               "'" + message + "' does not say '" + bad.says + "'");
        messages[static_cast<std::size_t>(comm.rank())].push_back(message);
        expect(logical_of_sharded(sharded) == before, "a failed load changed the memory");
      }
    });
    INFO("W' = " << W);
    CHECK(joined(errors) == "");
    for (const Expect& e : expects) CHECK(e.report() == "");
    for (const auto& m : messages) CHECK(m == messages[0]);  // the same error on every rank
  }
  {
    protomem::test::ReferenceMemory<double> one(config);
    for (const Bad& bad : bads) {
      std::string message = "no error";
      try {
        one.load_shards(bad.paths);
      } catch (const protomem::Error& e) {
        message = e.what();
      }
      CHECK(message.find(bad.says) != std::string::npos);
      CHECK(one.size() == 0);
    }
  }
  for (const std::string& p : {paths[0], paths[1], later[0], later[1], corrupt, truncated, whole}) {
    std::remove(p.c_str());
  }
  rmdir(pattern);
}

TEST_CASE("a shard stream loads back into its own rank at the same world size, and only there",
          "[sharded][shards]") {
  const int W = 3;
  const protomem::Config config = protomem::test::sharded_test_config();
  std::vector<std::string> shards(W);
  std::vector<Expect> expects(W);
  std::vector<std::string> messages(W);
  const auto errors = run_ranks(W, [&](ThreadComm& comm) {
    const auto me = static_cast<std::size_t>(comm.rank());
    Expect& expect = expects[me];
    protomem::test::Sharded<double, ThreadComm> sharded(comm, config);
    protomem::test::ReferenceMemory<double> reference(config);
    Batches batches(17, config.capacity, config.dim, W);
    for (int t = 0; t < 30; ++t)
      protomem::test::step_both(sharded, reference, batches.next(), 1e-10, expect);
    std::ostringstream out;
    sharded.save_shard(out);
    shards[me] = out.str();
    const Logical saved = logical_of_sharded(sharded);
    protomem::test::ReferenceMemory<double> at_save = reference;
    for (int t = 0; t < 5; ++t)
      protomem::test::step_both(sharded, reference, batches.next(), 1e-10, expect);
    const Logical moved_on = logical_of_sharded(sharded);
    // Another rank's shard: the same error on every rank, nothing changed.
    {
      std::istringstream in(shards[(me + 1) % W]);
      try {
        sharded.load_shard(in, "shard of rank " + std::to_string((me + 1) % W));
      } catch (const protomem::Error& e) {
        messages[me] = e.what();
      }
      expect(logical_of_sharded(sharded) == moved_on, "a failed load_shard changed the memory");
    }
    // Its own shard: the memory at the save, and the same continuation.
    std::istringstream in(shards[me]);
    sharded.load_shard(in);
    expect(logical_of_sharded(sharded) == saved, "load_shard did not restore the saved memory");
    for (int t = 0; t < 10; ++t)
      protomem::test::step_both(sharded, at_save, batches.next(), 1e-10, expect);
    protomem::test::expect_same_memory<double>(sharded, at_save, 1e-10, expect);
  });
  CHECK(joined(errors) == "");
  for (const Expect& e : expects) CHECK(e.report() == "");
  for (const std::string& m : messages) CHECK(m == messages[0]);
  CHECK(messages[0].find("rank 0 of 3: shard of rank 1 is shard 1 of a save by 3 ranks, but it is "
                         "loaded on rank 0 of 3") != std::string::npos);
  CHECK(messages[0].find("load_shards()") != std::string::npos);
}

TEST_CASE("every truncation and every flipped byte of a shard file fails its load, nothing changes",
          "[sharded][shards]") {
  // ~2,800 small files are written: in memory (/dev/shm) where there is one.
  char in_memory[] = "/dev/shm/protomem_shard_bytes_XXXXXX";
  char on_disk[] = "/tmp/protomem_shard_bytes_XXXXXX";
  char* pattern = mkdtemp(in_memory) != nullptr ? in_memory : on_disk;
  REQUIRE((pattern == in_memory || mkdtemp(on_disk) != nullptr));
  const std::string dir = pattern, path = dir + "/memory", bad = dir + "/bad";
  const protomem::Config config = protomem::test::sharded_test_config();
  const auto errors = run_ranks(2, [&](ThreadComm& comm) {
    protomem::test::Sharded<double, ThreadComm> sharded(comm, config);
    Batches batches(23, config.capacity, config.dim, 2);
    for (int t = 0; t < 25; ++t) {
      const Global b = batches.next();
      std::vector<double> g(static_cast<std::size_t>(b.rows[static_cast<std::size_t>(comm.rank())] *
                                                     config.dim));
      const auto mine = static_cast<index_t>(b.rows[static_cast<std::size_t>(comm.rank())]);
      const auto at = static_cast<std::size_t>(b.offset(comm.rank()));
      sharded.step(protomem::matrix_view<const double>(b.embeddings.data() + at * config.dim, mine,
                                                       config.dim),
                   protomem::label_view(b.labels.data() + at, mine),
                   protomem::matrix_view(g.data(), mine, config.dim));
    }
    sharded.save_shard(protomem::shard_path(path, comm.rank(), 2));
  });
  REQUIRE(joined(errors) == "");
  const std::vector<std::string> paths = protomem::shard_paths(path, 2);
  protomem::test::ReferenceMemory<double> memory(config);
  memory.load_shards(paths);
  REQUIRE(memory.size() == config.capacity);
  std::ostringstream before;
  memory.save(before);
  int loads = 0, failures = 0;
  for (int which = 0; which < 2; ++which) {
    const std::string good = slurp(paths[static_cast<std::size_t>(which)]);
    std::vector<std::string> set = paths;
    set[static_cast<std::size_t>(which)] = bad;
    auto fails = [&](const std::string& bytes) {
      spill(bad, bytes);
      ++loads;
      try {
        memory.load_shards(set);
      } catch (const protomem::Error& e) {
        ++failures;
        return std::string(e.what()).find("'" + bad + "'") != std::string::npos;  // names it
      }
      return false;
    };
    for (std::size_t n = 0; n < good.size(); ++n) {
      INFO("file " << which << " truncated to " << n << " bytes");
      CHECK(fails(good.substr(0, n)));
    }
    for (std::size_t i = 0; i < good.size(); ++i) {
      std::string flipped = good;
      flipped[i] = static_cast<char>(flipped[i] ^ 0x10);
      INFO("file " << which << ", byte " << i << " flipped");
      CHECK(fails(flipped));
    }
    CHECK(fails(good + "x"));  // a byte past the end
  }
  CHECK(failures == loads);
  std::ostringstream after;
  memory.save(after);
  CHECK(after.str() == before.str());
  for (const std::string& p : {paths[0], paths[1], bad}) std::remove(p.c_str());
  rmdir(pattern);
}
