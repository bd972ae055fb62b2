// Policies as constructor objects (policies/any.hpp): construction in any order with the
// defaults, one checked setter per family (a bad value throws and changes nothing - memory,
// counters, pending update), a save after any accepted change loads, checkpoints of the previous
// release (format 2, and format 1 derived from it) load and continue as that release did, and the
// sharded memory's set-up and load agree across 2 and 4 ranks: the same Error everywhere, no hang.
#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include <protomem/memory.hpp>
#include <protomem/memory.hpp>

#include "data/release-checkpoints/stream.hpp"
#include "support/checkpoint.hpp"
#include "support/thread_comm.hpp"

// AddressSanitizer aborts on an impossible allocation rather than throwing std::bad_alloc.
#if defined(__SANITIZE_ADDRESS__)
#define PROTOMEM_TEST_UNDER_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROTOMEM_TEST_UNDER_ASAN 1
#endif
#endif
#ifndef PROTOMEM_TEST_UNDER_ASAN
#define PROTOMEM_TEST_UNDER_ASAN 0
#endif

namespace {

constexpr bool under_asan = PROTOMEM_TEST_UNDER_ASAN != 0;
using Catch::Matchers::Contains;
using checkpoint_support::bytes_of;
using protomem::index_t;
using protomem::test::run_ranks;
using protomem::test::ThreadComm;

protomem::Config small_config() {
  protomem::Config config;
  config.capacity = release_stream::capacity;
  config.dim = release_stream::dim;
  config.threads = 1;
  return config;
}

struct StepOut {
  double loss = 0;
  double gradient_sum = 0;
};

// forward() of release_stream's batch t (commit left to the caller).
template <class Memory>
StepOut forward_batch(Memory& memory, int t) {
  using Scalar = typename Memory::scalar_type;
  const release_stream::Batch b = release_stream::batch(t);
  const auto rows = static_cast<index_t>(b.labels.size());
  std::vector<Scalar> e(b.embeddings.begin(), b.embeddings.end()), g(e.size());
  StepOut out;
  out.loss = static_cast<double>(
      memory
          .forward(protomem::matrix_view<const Scalar>(e.data(), rows, release_stream::dim),
                   protomem::label_view(b.labels.data(), rows),
                   protomem::matrix_view(g.data(), rows, release_stream::dim))
          .loss);
  for (Scalar v : g) out.gradient_sum += static_cast<double>(v);
  return out;
}

template <class Memory>
StepOut step_batch(Memory& memory, int t) {
  const StepOut out = forward_batch(memory, t);
  memory.commit();
  return out;
}

// A Generator, a Queue and a Mining policy of the user's with one parameter each, whose own load()
// rejects a negative one - the families whose built-in policies have no parameter to get wrong.
struct CheckedParameter {
  double value = 1.0;
  void save(protomem::detail::ByteWriter& out) const { out.put(value); }
  void load(protomem::detail::ByteReader& in) {
    const double v = in.get<double>("the parameter");
    if (!(v >= 0)) protomem::detail::fail("parameter = ", v, " must be >= 0");
    value = v;
  }
};
struct MyGenerator : protomem::ExemplarMean, CheckedParameter {
  static constexpr const char* name = "my_generator";
  using CheckedParameter::load;
  using CheckedParameter::save;
};
struct MyQueue : protomem::LeastRecentlyWritten, CheckedParameter {
  static constexpr const char* name = "my_queue";
  using CheckedParameter::load;
  using CheckedParameter::save;
};
struct MyMining : protomem::NoMining, CheckedParameter {
  static constexpr const char* name = "my_mining";
  using CheckedParameter::load;
  using CheckedParameter::save;
};

}  // namespace

TEST_CASE("policies: any order, omitted families take the defaults", "[policies]") {
  const protomem::PrototypeMemory<float> defaults(small_config());
  CHECK(std::string(defaults.margin().name()) == "cosface");
  CHECK(std::string(defaults.generator().name()) == "exemplar_mean");
  CHECK(std::string(defaults.refresh().name()) == "replace");
  CHECK(std::string(defaults.queue().name()) == "least_recently_written");
  CHECK(std::string(defaults.mining().name()) == "none");
  CHECK(defaults.aging().get<protomem::AgeDecay>().half_life == 8.0);  // default_aging()
  CHECK(defaults.margin().get<protomem::CosFace>().s == 64.0);

  protomem::PrototypeMemory<double> a(small_config(), protomem::AgeDecay(4), protomem::ArcFace(16),
                                      protomem::DoppelgangerMining(3, 32), protomem::LeaveOneOut{},
                                      protomem::FirstInFirstOut{}, protomem::Momentum(0.25));
  protomem::PrototypeMemory<double> b(small_config(), protomem::Momentum(0.25),
                                      protomem::FirstInFirstOut{}, protomem::LeaveOneOut{},
                                      protomem::DoppelgangerMining(3, 32), protomem::ArcFace(16),
                                      protomem::AgeDecay(4));
  for (int t = 0; t < 6; ++t) {
    const StepOut x = step_batch(a, t), y = step_batch(b, t);
    CHECK(x.loss == y.loss);
    CHECK(x.gradient_sum == y.gradient_sum);
  }
  CHECK(bytes_of(a) == bytes_of(b));
  CHECK(a.mining().get<protomem::DoppelgangerMining>().size() > 0);
  CHECK_THROWS_WITH(a.margin().get<protomem::CosFace>(),
                    Contains("margin policy is 'arcface', not 'cosface'"));
  CHECK(a.margin().get_if<protomem::CosFace>() == nullptr);
}

TEST_CASE("policies: a bad value through a setter throws and changes nothing", "[policies]") {
  // A memory mid-training with a pending update, and a twin that never sees the bad setters.
  protomem::PrototypeMemory<double> memory(small_config(), MyGenerator{}, MyQueue{}, MyMining{});
  protomem::PrototypeMemory<double> twin(small_config(), MyGenerator{}, MyQueue{}, MyMining{});
  for (int t = 0; t < 5; ++t) {
    step_batch(memory, t);
    step_batch(twin, t);
  }
  const StepOut pending = forward_batch(memory, 5);
  forward_batch(twin, 5);
  const std::string state = bytes_of(memory);
  const protomem::Stats stats = memory.stats();

  protomem::CosFace cosface(32, 0.3);
  cosface.m = 5;  // public fields bypass the constructor's check
  CHECK_THROWS_WITH(memory.set_margin(cosface), Contains("margin m = 5 is outside [0, 1]"));
  protomem::ArcFace arcface(32, 0.5);
  arcface.m = 2.0;
  CHECK_THROWS_AS(memory.set_margin(arcface), protomem::Error);
  protomem::CosFace nan_scale(32, 0.3);
  nan_scale.s = std::nan("");
  CHECK_THROWS_WITH(memory.set_margin(nan_scale), Contains("scale s = nan"));
  protomem::PrototypeMemory<float> float_memory(small_config());
  protomem::CosFace huge(32, 0.3);
  huge.s = 1e4;
  float_memory.set_margin(huge);  // at the range's end, still finite in float

  MyGenerator generator;
  generator.value = -1;
  CHECK_THROWS_WITH(memory.set_generator(generator), Contains("parameter = -1 must be >= 0"));
  protomem::Momentum momentum(0.5);
  momentum.a = 1.5;
  CHECK_THROWS_WITH(memory.set_refresh(momentum), Contains("a = 1.5 is outside [0, 1)"));
  MyQueue queue;
  queue.value = -2;
  CHECK_THROWS_WITH(memory.set_queue(queue), Contains("parameter = -2 must be >= 0"));
  MyMining mining;
  mining.value = -3;
  CHECK_THROWS_WITH(memory.set_mining(mining), Contains("parameter = -3 must be >= 0"));
  for (double h : {std::nan(""), -1.0, 0.0}) {
    protomem::AgeDecay aging(8);
    aging.half_life = h;
    CHECK_THROWS_WITH(memory.set_aging(aging), Contains("half_life"));
  }

  // Nothing changed: the state, the counters, the policies, and the pending update, which commits
  // exactly as the twin's.
  CHECK(bytes_of(memory) == state);
  CHECK(memory.stats().steps == stats.steps);
  CHECK(memory.stats().evictions == stats.evictions);
  CHECK(memory.pending());
  memory.commit();
  twin.commit();
  CHECK(bytes_of(memory) == bytes_of(twin));
  CHECK(step_batch(memory, 6).loss == step_batch(twin, 6).loss);
  CHECK(pending.loss > 0);
}

TEST_CASE("policies: a save after any accepted change loads", "[policies][checkpoint]") {
  protomem::PrototypeMemory<double> memory(small_config());
  for (int t = 0; t < 4; ++t) step_batch(memory, t);
  auto round_trip = [&] {
    protomem::PrototypeMemory<double> loaded(small_config());
    std::istringstream in(bytes_of(memory));
    loaded.load(in);  // adopts the saved policies
    CHECK(bytes_of(loaded) == bytes_of(memory));
    CHECK(std::string(loaded.margin().name()) == memory.margin().name());
    CHECK(std::string(loaded.aging().name()) == memory.aging().name());
  };
  memory.set_margin(protomem::CombinedMargin(32, 1.0, 0.3, 0.2));
  round_trip();
  memory.set_refresh(protomem::Momentum(0.9));
  memory.set_queue(protomem::FirstInFirstOut{});
  round_trip();
  memory.set_aging(protomem::MaxAge(2));
  memory.set_generator(protomem::DetachedExemplarMean{});
  for (int t = 4; t < 8; ++t) step_batch(memory, t);
  round_trip();
  memory.set_mining(protomem::DoppelgangerMining(2, 16));
  for (int t = 8; t < 11; ++t) step_batch(memory, t);
  round_trip();
  memory.set_aging(protomem::NoAging{});
  round_trip();

  // A user-written policy loads into itself; into a memory without it, it is named and refused.
  protomem::PrototypeMemory<double> mine(small_config(), MyMining{});
  step_batch(mine, 0);
  protomem::PrototypeMemory<double> plain(small_config());
  step_batch(plain, 1);
  const std::string before = bytes_of(plain);
  std::istringstream in(bytes_of(mine));
  CHECK_THROWS_WITH(plain.load(in), Contains("mining policy 'my_mining' is not a built-in one"));
  CHECK(bytes_of(plain) == before);
}

namespace {

// The release checkpoints (tests/data/release-checkpoints/README.md) and what that release
// computed after them.
std::string release_file(const std::string& name) {
  const std::string path = std::string(PROTOMEM_TEST_DATA_DIR) + "/release-checkpoints/" + name;
  std::ifstream in(path, std::ios::binary);
  REQUIRE(in.good());
  std::ostringstream bytes;
  bytes << in.rdbuf();
  return bytes.str();
}

std::vector<StepOut> release_expected(const std::string& name) {
  std::istringstream in(release_file(name + ".expected"));
  std::vector<StepOut> out;
  std::string loss, sum;
  while (in >> loss >> sum) out.push_back({std::strtod(loss.c_str(), nullptr),
                                           std::strtod(sum.c_str(), nullptr)});
  REQUIRE(out.size() == static_cast<std::size_t>(release_stream::continued));
  return out;
}

// Loads `checkpoint` into a memory of this build with its DEFAULT policies (the checkpoint's are
// adopted), continues the release's steps and compares them, then compares the final state with
// the release's: bookkeeping and policies exactly (the bytes before the prototypes of each record
// are compared through the records), prototypes to rounding. The release recorded its numbers at
// -O0; this build may use FMA and another reduction order, hence a tolerance on values only.
template <class Scalar>
void continues_as_the_release(const std::string& checkpoint, const std::string& name,
                              double tolerance) {
  protomem::PrototypeMemory<Scalar> memory(small_config());
  std::istringstream in(checkpoint);
  memory.load(in);
  const std::vector<StepOut> expected = release_expected(name);
  for (int t = 0; t < release_stream::continued; ++t) {
    const StepOut got = step_batch(memory, release_stream::saved_after + t);
    INFO(name << " step " << t);
    CHECK(std::abs(got.loss - expected[static_cast<std::size_t>(t)].loss) <=
          tolerance * (1 + std::abs(expected[static_cast<std::size_t>(t)].loss)));
    CHECK(std::abs(got.gradient_sum - expected[static_cast<std::size_t>(t)].gradient_sum) <=
          tolerance * 10);
  }
  protomem::PrototypeMemory<Scalar> final_state(small_config());
  std::istringstream final_in(release_file(name + ".final.ckpt"));
  final_state.load(final_in);
  CHECK(memory.stats().steps == final_state.stats().steps);
  CHECK(memory.stats().evictions == final_state.stats().evictions);
  CHECK(memory.stats().refreshes == final_state.stats().refreshes);
  auto a = memory.begin(), b = final_state.begin();
  for (; a != memory.end() && b != final_state.end(); ++a, ++b) {
    CHECK((*a).label == (*b).label);
    CHECK((*a).last_written == (*b).last_written);
    for (index_t k = 0; k < release_stream::dim; ++k) {
      CHECK(std::abs(double((*a).prototype[k]) - double((*b).prototype[k])) <= tolerance);
    }
  }
  CHECK(a == memory.end());
  CHECK(b == final_state.end());
  CHECK(std::string(memory.aging().name()) == final_state.aging().name());
}

}  // namespace

TEST_CASE("policies: the previous release's checkpoints load and continue", "[checkpoint]") {
  SECTION("format 2, the release's defaults (NoAging, as written), float") {
    continues_as_the_release<float>(release_file("v2-defaults-float.ckpt"), "v2-defaults-float",
                                     2e-5);
    protomem::PrototypeMemory<float> memory(small_config());
    std::istringstream in(release_file("v2-defaults-float.ckpt"));
    memory.load(in);
    CHECK(memory.aging().holds<protomem::NoAging>());  // not this build's default
  }
  SECTION("format 2, a policy of every family, double") {
    continues_as_the_release<double>(release_file("v2-policies-double.ckpt"),
                                     "v2-policies-double", 1e-12);
    protomem::PrototypeMemory<double> memory(small_config());
    std::istringstream in(release_file("v2-policies-double.ckpt"));
    memory.load(in);
    CHECK(memory.margin().get<protomem::ArcFace>().m == 0.4);
    CHECK(memory.refresh().get<protomem::Momentum>().a == 0.25);
    CHECK(memory.queue().holds<protomem::FirstInFirstOut>());
    CHECK(memory.generator().holds<protomem::LeaveOneOut>());
    CHECK(memory.mining().get<protomem::DoppelgangerMining>().k() == 3);
    CHECK(memory.aging().get<protomem::AgeDecay>().half_life == 4.0);
    CHECK(memory.aging().get<protomem::AgeDecay>().max_age == 9);
  }
  SECTION("format 1 (format 2 without the aging policy, read as NoAging)") {
    // Format 1 is format 2 less the aging policy's entry ("aging", "none", an empty state).
    const std::string v2 = release_file("v2-defaults-float.ckpt");
    const std::size_t end = checkpoint_support::records_offset(v2);
    const std::size_t aging_bytes = (4 + 5) + (4 + 4) + 8;
    REQUIRE(v2.substr(end - aging_bytes + 4, 5) == "aging");
    std::string v1 = v2.substr(0, end - aging_bytes) + v2.substr(end);
    v1[8] = 1;
    continues_as_the_release<float>(checkpoint_support::with_valid_crc(v1), "v2-defaults-float",
                                     2e-5);
  }
}

namespace {

// Every rank's error, which must be the same non-empty message on all of them.
void same_error_everywhere(const std::vector<std::string>& errors, const std::string& part) {
  REQUIRE(!errors.empty());
  for (const std::string& e : errors) {
    INFO(e);
    CHECK(e == errors.front());
    CHECK_THAT(e, Contains(part));
    CHECK_THAT(e, !Contains("timed out"));
  }
}

}  // namespace

TEST_CASE("sharded: set-up that fails on one rank fails on every rank", "[sharded][policies]") {
  for (int W : {2, 4}) {
    INFO("W = " << W);
    // A capacity that is 0 on the last rank only.
    same_error_everywhere(run_ranks(W,
                                    [&](ThreadComm& comm) {
                                      protomem::Config config = small_config();
                                      if (comm.rank() == W - 1) config.capacity = 0;
                                      protomem::PrototypeMemory<double> m(
                                          comm, config);
                                    }),
                          "capacity");
    // A NaN scale on rank 0 only.
    same_error_everywhere(run_ranks(W,
                                    [&](ThreadComm& comm) {
                                      protomem::CosFace margin(32, 0.3);
                                      if (comm.rank() == 0) margin.s = std::nan("");
                                      protomem::PrototypeMemory<double> m(
                                          comm, small_config(), margin);
                                    }),
                          "scale s = nan");
    // A store that cannot be allocated on rank 1 only (AddressSanitizer aborts on an allocation
    // this large instead of throwing std::bad_alloc: that case runs without it).
    if (!under_asan) same_error_everywhere(run_ranks(W,
                                    [&](ThreadComm& comm) {
                                      protomem::Config config = small_config();
                                      if (comm.rank() == 1) {
                                        config.capacity = index_t{1} << 40;
                                        config.dim = 4096;
                                      }
                                      protomem::PrototypeMemory<float> m(
                                          comm, config);
                                    }),
                          "rank 1 of " + std::to_string(W) + ": cannot allocate");
    // Valid everywhere but different: the agreement names it.
    same_error_everywhere(run_ranks(W,
                                    [&](ThreadComm& comm) {
                                      protomem::PrototypeMemory<double> m(
                                          comm, small_config(),
                                          protomem::AgeDecay(comm.rank() == 0 ? 4.0 : 8.0));
                                    }),
                          "different Configs");
    // A policy changed on one rank only: the next forward throws on every rank.
    same_error_everywhere(run_ranks(W,
                                    [&](ThreadComm& comm) {
                                      protomem::PrototypeMemory<double> m(
                                          comm, small_config());
                                      if (comm.rank() == 0) m.set_aging(protomem::NoAging{});
                                      const release_stream::Batch b = release_stream::batch(0);
                                      const auto rows = comm.rank() == 0
                                                            ? static_cast<index_t>(b.labels.size())
                                                            : index_t{0};
                                      std::vector<double> g(b.embeddings.size());
                                      m.forward(protomem::matrix_view<const double>(
                                                    b.embeddings.data(), rows, release_stream::dim),
                                                protomem::label_view(b.labels.data(), rows),
                                                protomem::matrix_view(g.data(), rows,
                                                                      release_stream::dim));
                                    }),
                          "differ between the ranks");
  }
}

TEST_CASE("sharded: load agrees across the ranks on what it read", "[sharded][checkpoint]") {
  protomem::PrototypeMemory<double> one(small_config(), protomem::NoAging{});
  for (int t = 0; t < 6; ++t) step_batch(one, t);
  const std::string first = bytes_of(one);
  step_batch(one, 6);
  const std::string second = bytes_of(one);
  for (int W : {2, 4}) {
    INFO("W = " << W);
    std::vector<std::string> before(static_cast<std::size_t>(W)),
        after(static_cast<std::size_t>(W));
    const auto errors = run_ranks(W, [&](ThreadComm& comm) {
      protomem::PrototypeMemory<double> m(comm, small_config(),
                                                             protomem::NoAging{});
      std::istringstream in(first);
      m.load(in);
      std::ostringstream saved;
      m.save(saved);
      before[static_cast<std::size_t>(comm.rank())] = saved.str();
      // Rank W - 1 reads another checkpoint than the others.
      std::istringstream other(comm.rank() == W - 1 ? second : first);
      try {
        m.load(other);
      } catch (...) {
        std::ostringstream kept;
        m.save(kept);  // a collective: every rank is here
        after[static_cast<std::size_t>(comm.rank())] = kept.str();
        throw;
      }
    });
    same_error_everywhere(errors, "the ranks read different checkpoints");
    for (int r = 0; r < W; ++r) {
      CHECK(after[static_cast<std::size_t>(r)] == first);  // nothing changed
      CHECK(before[static_cast<std::size_t>(r)] == first);
    }
  }
}
