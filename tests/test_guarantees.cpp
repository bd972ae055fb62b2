// The strong guarantee where it is easiest to lose, and the last lines of defence
// (docs/reliability.md): a failure inside the step's OpenMP region, margins that are valid in double
// but not in the memory's float, steps whose loss or gradient comes out non-finite, checkpoints
// whose prototypes are not unit vectors or whose scale breaks a float step, sizes that cannot be
// allocated, and file text in messages. Every case checks that the memory is exactly as before
// (through its checkpoint bytes) and that the caller's gradient buffer is untouched.
//
// To make Eigen's GEMM fail inside the memory pass's parallel region, this file (and only this
// one) builds Eigen with EIGEN_RUNTIME_NO_MALLOC, an eigen_assert that throws, and no stack
// allocation of GEMM blocks, so that a heap allocation while malloc is forbidden throws from
// inside a lane. Defined before any Eigen header.
#include <stdexcept>
#define EIGEN_RUNTIME_NO_MALLOC
#define EIGEN_STACK_ALLOCATION_LIMIT 0
#define eigen_assert(x)                                                  \
  do {                                                                   \
    if (!(x)) throw std::runtime_error("eigen_assert failed: " #x);      \
  } while (false)

#include <catch2/catch.hpp>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <protomem/data/dataset_index.hpp>
#include <protomem/memory.hpp>

#include "support/checkpoint.hpp"

namespace {

using Catch::Matchers::Contains;
using checkpoint_support::bytes_of;
using checkpoint_support::records_offset;
using checkpoint_support::with_valid_crc;
using protomem::index_t;
using protomem::label_t;

// A batch of `classes` classes with `per_class` exemplars each around a per-class direction.
template <class Scalar>
struct Batch {
  index_t dim;
  std::vector<Scalar> e;
  std::vector<label_t> y;
  std::vector<Scalar> g;
  Batch(index_t dim_, int classes, int per_class, label_t first, std::uint64_t seed) : dim(dim_) {
    std::mt19937_64 rng(seed);
    std::normal_distribution<double> normal;
    for (int c = 0; c < classes; ++c) {
      std::vector<double> centre(static_cast<std::size_t>(dim));
      for (double& v : centre) v = normal(rng);
      for (int k = 0; k < per_class; ++k) {
        for (index_t j = 0; j < dim; ++j) {
          e.push_back(static_cast<Scalar>(centre[static_cast<std::size_t>(j)] + 0.3 * normal(rng)));
        }
        y.push_back(first + c);
      }
    }
    g.assign(e.size(), Scalar(-7));  // a sentinel: a failed step must leave it as it is
  }
  index_t rows() const { return static_cast<index_t>(y.size()); }
  protomem::MatrixView<const Scalar> embeddings() const {
    return protomem::matrix_view<const Scalar>(e.data(), rows(), dim);
  }
  protomem::LabelView labels() const { return protomem::label_view(y.data(), rows()); }
  protomem::MatrixView<Scalar> gradient() { return protomem::matrix_view(g.data(), rows(), dim); }
  bool gradient_untouched() const {
    for (Scalar v : g) {
      if (v != Scalar(-7)) return false;
    }
    return true;
  }
};

template <class Memory, class Scalar>
auto step(Memory& memory, Batch<Scalar>& batch) {
  return memory.step(batch.embeddings(), batch.labels(), batch.gradient());
}

// Contract-breaking margins, for the last line of defence: finite wherever
// detail::check_margin_in probes (cos = -1, -1/2, 0, 1/2, 1) and broken between 0.6 and 0.99,
// where the target cosines of clustered exemplars lie.
struct NanTargetMargin {
  static constexpr const char* name = "nan-target";
  double scale() const { return 16.0; }
  template <class T>
  T target(T cos) const {
    return cos > T(0.6) && cos < T(0.99) ? std::numeric_limits<T>::quiet_NaN() : cos;
  }
  template <class T>
  T derivative(T) const {
    return T(1);
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};
struct InfiniteSlopeMargin {
  static constexpr const char* name = "infinite-slope";
  double scale() const { return 16.0; }
  template <class T>
  T target(T cos) const {
    return cos;
  }
  template <class T>
  T derivative(T cos) const {
    return cos > T(0.6) && cos < T(0.99) ? std::numeric_limits<T>::infinity() : T(1);
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

}  // namespace

TEST_CASE("an exception inside the memory pass's OpenMP region is rethrown after it",
          "[guarantees]") {
  protomem::Config config{4096, 64};
  config.threads = 2;
  config.workspace_bytes = std::size_t{1} << 16;  // several tiles per lane
  protomem::PrototypeMemory<float> memory(config);
  for (int t = 0; t < 8; ++t) {  // fill the memory; the last step sizes the workspace
    Batch<float> fill(64, 512, 1, 512 * t, 100 + t);
    step(memory, fill);
  }
  Batch<float> batch(64, 8, 2, 100000, 9);
  const std::string before = bytes_of(memory);
  // Two forwards of the same shape, discarded, size the workspace (fresh prototypes are double
  // buffered): from now on only the GEMMs inside the lanes allocate.
  for (int warm = 0; warm < 2; ++warm) {
    memory.forward(batch.embeddings(), batch.labels(), batch.gradient());
    memory.discard();
  }
  batch.g.assign(batch.g.size(), -7.0f);

  Eigen::internal::set_is_malloc_allowed(false);  // Eigen's GEMM blocks now throw in the lanes
  bool threw = false;
  try {
    step(memory, batch);
  } catch (const std::runtime_error& error) {
    threw = std::string(error.what()).find("eigen_assert failed") != std::string::npos;
  }
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(threw);
  CHECK_FALSE(memory.pending());
  CHECK(bytes_of(memory) == before);
  CHECK(batch.gradient_untouched());
  // And the step succeeds once allocation does.
  step(memory, batch);
  CHECK(memory.step_count() == 9);
}

// A user's margin that checks nothing itself: only the memory's check in its Scalar stops a scale
// that is fine in double but 0 or inf in float. (The built-in margins also keep s in [1e-3, 1e4].)
struct UncheckedMargin {
  static constexpr const char* name = "unchecked";
  double s = 64.0;
  double scale() const { return s; }
  template <class T>
  PROTOMEM_HOST_DEVICE T target(T cos) const {
    return cos;
  }
  template <class T>
  PROTOMEM_HOST_DEVICE T derivative(T) const {
    return T(1);
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

TEST_CASE("a float memory checks its margin in float", "[guarantees]") {
  using Float = protomem::PrototypeMemory<float>;
  using Double = protomem::PrototypeMemory<double>;
  CHECK_THROWS_WITH(Float({8, 4}, UncheckedMargin{1e-50}), Contains("is 0 as a float"));
  CHECK_THROWS_WITH(Float({8, 4}, UncheckedMargin{1e39}), Contains("is inf as a float"));
  CHECK_THROWS_AS(Float({8, 4}, UncheckedMargin{1e-40}), protomem::Error);  // subnormal
  // The same values are fine in double.
  CHECK_NOTHROW(Double({8, 4}, UncheckedMargin{1e-50}));
  CHECK_NOTHROW(Double({8, 4}, UncheckedMargin{1e39}));
  // The built-in margins refuse such scales in any Scalar.
  CHECK_THROWS_WITH(protomem::CosFace(1e-50), Contains("within [0.001, 10000]"));
  CHECK_THROWS_AS(protomem::ArcFace(1e39), protomem::Error);

  // set_margin() is the one way to change the margin: it checks the new one in float too, and
  // throws before anything changes.
  Float memory({8, 4});
  Batch<float> first(4, 2, 2, 0, 1);
  step(memory, first);
  const std::string before = bytes_of(memory);
  CHECK_THROWS_WITH(memory.set_margin(UncheckedMargin{1e39}), Contains("is inf as a float"));
  CHECK(memory.margin().holds<protomem::CosFace>());
  CHECK(bytes_of(memory) == before);
  // A built-in margin with its public field set out of range: refused alike.
  protomem::CosFace huge;
  huge.s = 1e39;
  CHECK_THROWS_AS(memory.set_margin(huge), protomem::Error);
  CHECK(bytes_of(memory) == before);
  // A double memory takes the same user-written margin.
  Double wide({8, 4});
  CHECK_NOTHROW(wide.set_margin(UncheckedMargin{1e39}));
  CHECK(wide.margin().scale() == 1e39);
}

TEST_CASE("a step whose loss or gradient is not finite throws and commits nothing",
          "[guarantees]") {
  SECTION("loss") {
    protomem::PrototypeMemory<float> memory({16, 8}, NanTargetMargin{});
    Batch<float> first(8, 3, 3, 0, 3);
    const std::string before = bytes_of(memory);
    CHECK_THROWS_WITH(step(memory, first), Contains("loss is nan, not finite"));
    CHECK_FALSE(memory.pending());
    CHECK(memory.step_count() == 0);
    CHECK(bytes_of(memory) == before);
    CHECK(first.gradient_untouched());
  }
  SECTION("gradient") {
    protomem::PrototypeMemory<double> memory({16, 8}, InfiniteSlopeMargin{});
    Batch<double> first(8, 3, 3, 0, 3);
    const std::string before = bytes_of(memory);
    CHECK_THROWS_WITH(step(memory, first), Contains("gradient dL/dE row"));
    CHECK_FALSE(memory.pending());
    CHECK(memory.step_count() == 0);
    CHECK(bytes_of(memory) == before);
    CHECK(first.gradient_untouched());
  }
}

TEST_CASE("a forward that throws keeps the pending update for forward_replacing",
          "[guarantees]") {
  // The fresh prototypes of the pending forward survive a forward that fails after it has begun
  // building its own (exemplars that sum to zero fail in the generator).
  protomem::PrototypeMemory<float> memory({16, 4}), reference({16, 4});
  Batch<float> batch(4, 3, 2, 0, 5);
  Batch<float> same(4, 3, 2, 0, 5);
  memory.forward(batch.embeddings(), batch.labels(), batch.gradient());
  Batch<float> bad(4, 2, 2, 10, 6);
  for (index_t k = 0; k < 4; ++k) bad.e[static_cast<std::size_t>(4 + k)] = -bad.e[k];  // class 10
  CHECK_THROWS_WITH(memory.forward_replacing(bad.embeddings(), bad.labels(), bad.gradient()),
                    Contains("sum to zero"));
  CHECK(bad.gradient_untouched());
  REQUIRE(memory.pending());
  memory.commit();
  step(reference, same);
  CHECK(bytes_of(memory) == bytes_of(reference));
}

TEST_CASE("a loaded memory satisfies every invariant a stepped one does", "[guarantees]") {
  protomem::PrototypeMemory<float> source({16, 6});
  Batch<float> batch(6, 4, 2, 0, 7);
  step(source, batch);
  const std::string good = bytes_of(source);
  protomem::PrototypeMemory<float> target({16, 6});
  Batch<float> other(6, 3, 2, 50, 8);
  step(target, other);
  const std::string before = bytes_of(target);
  auto load = [&](const std::string& bytes) {
    std::istringstream in(bytes);
    target.load(in);
  };

  SECTION("a prototype of norm 1000") {
    std::string bad = good;
    const std::size_t values = records_offset(good) + 8 + 24;  // record 0's prototype
    for (index_t k = 0; k < 6; ++k) {
      float v;
      std::memcpy(&v, &bad[values + 4 * static_cast<std::size_t>(k)], 4);
      v *= 1000.0f;
      std::memcpy(&bad[values + 4 * static_cast<std::size_t>(k)], &v, 4);
    }
    CHECK_THROWS_WITH(load(with_valid_crc(bad)), Contains("has norm 999.99"));
    CHECK(bytes_of(target) == before);
  }
  SECTION("a scale outside the margin's range") {
    std::string bad = good;
    const std::string name = "cosface";
    const std::size_t s_at = bad.find(name) + name.size() + 8;  // the margin state: s, then m
    for (double s : {1e39, 1e-50}) {
      std::memcpy(&bad[s_at], &s, 8);
      CHECK_THROWS_WITH(load(with_valid_crc(bad)), Contains("scale s = "));
      CHECK(bytes_of(target) == before);
    }
  }
  SECTION("unit prototypes within the tolerance load") {
    load(good);
    CHECK(bytes_of(target) == good);
  }
}

TEST_CASE("a size that cannot be allocated is a protomem::Error", "[guarantees]") {
  using Float = protomem::PrototypeMemory<float>;
  const index_t huge = index_t{1} << 40;
  // (Sizes past the address space: even an overcommitting kernel refuses them.)
  CHECK_THROWS_WITH(Float({huge, huge}), Contains("beyond any memory"));
  CHECK_THROWS_WITH(Float({2, index_t{1} << 62}), Contains("beyond any memory"));
  CHECK_THROWS_WITH(Float({2, index_t{1} << 59}),
                    Contains("cannot allocate a memory of capacity x dim = 2 x 576460752303423488"));
  CHECK_THROWS_AS(Float({2, index_t{1} << 59}), protomem::Error);
  // An empty memory's checkpoint is shorter than its dim: it loads (dim bounds no record).
  Float wide({8, 512}), wide_copy({8, 512});
  std::istringstream empty(bytes_of(wide));
  wide_copy.load(empty);
  CHECK(bytes_of(wide_copy) == bytes_of(wide));
  // A checkpoint announcing more records than its bytes hold: no wrap, a plain refusal.
  Float memory({8, 4});
  Batch<float> batch(4, 2, 2, 0, 1);
  step(memory, batch);
  std::string bad = bytes_of(memory);
  const std::uint64_t many = ~std::uint64_t{0} / 3;
  std::memcpy(&bad[records_offset(bad)], &many, 8);
  std::istringstream in(with_valid_crc(bad));
  CHECK_THROWS_WITH(memory.load(in), Contains("is truncated"));
}

TEST_CASE("file text in messages is escaped; an empty list names its file", "[guarantees]") {
  CHECK(protomem::detail::escaped("a b\\c") == "a b\\\\c");
  CHECK(protomem::detail::escaped(std::string("x\x1b[2J\xff\n", 7)) == "x\\x1b[2J\\xff\\x0a");
  CHECK(protomem::detail::escaped(std::string(300, 'a')).size() == 203);

  std::istringstream empty("# only a comment\n\n   \n");
  CHECK_THROWS_WITH(protomem::DatasetIndex::from_list(empty, "lists/train.txt"),
                    Contains("lists/train.txt: holds no samples"));
  std::istringstream raw(std::string("img.jpg 1\nimg\x1b[31m.jpg x\x07\n"));
  try {
    protomem::DatasetIndex::from_list(raw, "list");
    FAIL("no error");
  } catch (const protomem::Error& error) {
    const std::string message = error.what();
    CHECK_THAT(message, Contains("label 'x\\x07' is not a non-negative integer"));
    CHECK(message.find('\x07') == std::string::npos);
  }

  // A checkpoint whose margin policy name holds control bytes (same length as "cosface").
  protomem::PrototypeMemory<float> memory({8, 4});
  std::string bad = bytes_of(memory);
  const std::size_t at = bad.find("cosface");
  bad.replace(at, 7, "cos\x1b\x07\xfe\n");
  std::istringstream in(with_valid_crc(bad));
  CHECK_THROWS_WITH(memory.load(in), Contains("policy 'cos\\x1b\\x07\\xfe\\x0a'"));
}
