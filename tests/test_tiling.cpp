// The tiled, threaded memory pass and narrow storage:
//   - the tile plan respects the workspace budget, the cache cap and the thread count;
//   - a step's loss, gradient and mining results agree across tile widths and thread counts, and
//     with the naive loop of tests/support/naive.hpp;
//   - bfloat16 / half storage: each stored value is float rounded to nearest (error bounds of
//     storage.hpp); a narrow step equals a float step on the rounded prototypes; its loss is within
//     the bound s * eps of the float step's; checkpoints carry the decoded values.
// Built twice: with Eigen's GEMM (test_tiling) and with OpenBLAS (test_tiling_blas) when found.
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <protomem/memory.hpp>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "support/batch.hpp"
#include "support/naive.hpp"
#include "support/steps.hpp"

namespace {

using protomem::index_t;
using protomem::label_t;

template <class T>
using Batch = test_support::Batch<T>;

using test_support::filled_checkpoint;
using test_support::forward;
using test_support::load;
using test_support::make_batch;
using test_support::max_abs;
using test_support::max_abs_diff;

}  // namespace

TEST_CASE("the tile plan respects the budget, the cache cap and the threads", "[tiling]") {
  using Backend = protomem::backend::CpuBackend<float>;
  const index_t cap = Backend::max_tile_columns;
  struct Case {
    index_t batch, dim, used, extra;
    std::size_t budget;
    int threads;
  };
  const std::vector<Case> cases = {{256, 512, 65536, 0, std::size_t{64} << 20, 2},
                                   {256, 512, 65536, 0, 256 * 4 * 10, 2},
                                   {256, 512, 65536, 0, 256 * 4 * 10, 16},
                                   {256, 512, 65536, 0, 1, 2},
                                   {256, 512, 100, 0, std::size_t{64} << 20, 2},
                                   {16, 8, 1, 0, 1 << 20, 4},
                                   {16, 8, 0, 0, 1 << 20, 4},
                                   {10, 5, 64, 0, 1 << 20, 2},
                                   {128, 64, 5000, 512, 1 << 20, 3},
                                   {128, 64, 5000, 513, 4 << 20, 1}};
  for (const Case& c : cases) {
    CAPTURE(c.batch, c.dim, c.used, c.extra, c.budget, c.threads);
    const auto plan = Backend::plan_tiles(c.batch, c.dim, c.used, c.extra, c.budget, c.threads);
    const int lanes = plan.first;
    const index_t width = plan.second;
    const std::size_t column = std::size_t(c.batch + c.extra) * sizeof(float);
    const double work = 4.0 * double(c.batch) * double(c.dim) * double(c.used);
    CHECK(lanes >= 1);
    CHECK(lanes <= std::max(1, c.threads));
    if (lanes > 1) CHECK(work / lanes >= Backend::min_lane_flops);  // a thread has enough work
    CHECK(width >= 1);
    CHECK(width <= cap);
    // Within the budget unless a single column per lane already exceeds it (then one lane).
    if (c.budget >= column) {
      CHECK(std::size_t(lanes) * std::size_t(width) * column <= c.budget);
    } else {
      CHECK(lanes == 1);
      CHECK(width == 1);
    }
    if (c.used > 0) CHECK(width <= (c.used + lanes - 1) / lanes);
  }
  // The default budget and B = 256 give every one of 2 threads a full-width tile; a memory of 64
  // slots of dimension 5 runs on one thread.
  CHECK(Backend::plan_tiles(256, 512, 1 << 16, 0, std::size_t{64} << 20, 2) ==
        std::pair<int, index_t>{2, cap});
  CHECK(Backend::plan_tiles(10, 5, 64, 0, std::size_t{64} << 20, 2).first == 1);
}

TEST_CASE("loss, gradient and mining agree across tile widths and thread counts", "[tiling]") {
  std::mt19937_64 rng(11);
  const index_t dim = 24, capacity = 1500;
  const std::string checkpoint = filled_checkpoint<double>(capacity, dim, 1300, rng);
  // The next batch: 12 classes of which 4 are stored (their stale copies are excluded columns).
  auto batch = make_batch<double>(1290, 12, 3, dim, rng);
  const index_t B = batch.rows();

  // Independent value: the naive loop over the stored prototypes.
  protomem::Config reference_config{capacity, dim};
  protomem::PrototypeMemory<double> reference(reference_config, protomem::NoAging{});
  load(reference, checkpoint);
  const double naive_loss =
      naive::loss(batch.embeddings.data(), dim, batch.labels, dim, naive::stored_classes(reference),
                  reference.margin(), false);

  std::vector<double> first_gradient;
  protomem::StepResult<double> first;
  bool have_first = false;
  const std::vector<std::size_t> budgets = {1, std::size_t(B) * 8 * 7, std::size_t(B) * 8 * 100,
                                            std::size_t{64} << 20};
  for (std::size_t budget : budgets) {
    for (int threads : {1, 2, 3}) {
      CAPTURE(budget, threads);
      protomem::Config config{capacity, dim};
      config.workspace_bytes = budget;
      config.threads = threads;
      config.similar_k = 5;
      protomem::PrototypeMemory<double> memory(config);
      load(memory, checkpoint);
      std::vector<double> gradient;
      const auto result = forward(memory, batch, gradient);
      CHECK(result.loss == Approx(naive_loss).epsilon(1e-12));
      CHECK(result.tile_columns >= 1);
      if (budget >= std::size_t(B + 1) * 8) CHECK(result.workspace_bytes <= budget);
#ifdef _OPENMP
      // With budget >= 3 columns this memory is worth 3 threads (work / min_lane_flops = 4).
      if (budget >= std::size_t(B + 1) * 8 * 3) CHECK(result.threads == threads);
#else
      CHECK(result.threads == 1);
#endif
      if (!have_first) {
        first = result;
        first_gradient = gradient;
        have_first = true;
        continue;
      }
      CHECK(result.loss == Approx(first.loss).epsilon(1e-13));
      CHECK(max_abs_diff(gradient, first_gradient) <= 1e-13 * max_abs(first_gradient));
      CHECK(result.similar == first.similar);
      CHECK(max_abs_diff(result.similar_cosines, first.similar_cosines) <= 1e-14);
    }
  }
  // The gradient against central differences of the naive loss, once (other configs agree above).
  for (index_t i : {index_t{0}, B / 2, B - 1}) {
    for (index_t k : {index_t{0}, dim - 1}) {
      const std::size_t at = static_cast<std::size_t>(i * dim + k);
      const double h = 1e-6, saved = batch.embeddings[at];
      batch.embeddings[at] = saved + h;
      const double up = naive::loss(batch.embeddings.data(), dim, batch.labels, dim,
                                    naive::stored_classes(reference), reference.margin(), false);
      batch.embeddings[at] = saved - h;
      const double down = naive::loss(batch.embeddings.data(), dim, batch.labels, dim,
                                      naive::stored_classes(reference), reference.margin(), false);
      batch.embeddings[at] = saved;
      CHECK(first_gradient[at] == Approx((up - down) / (2 * h)).margin(1e-7));
    }
  }
}

TEST_CASE("float steps agree across thread counts and tile widths to float rounding", "[tiling]") {
  std::mt19937_64 rng(12);
  const index_t dim = 64, capacity = 4096;
  const std::string checkpoint = filled_checkpoint<float>(capacity, dim, 4000, rng);
  const auto batch = make_batch<float>(3990, 32, 4, dim, rng);
  std::vector<float> base_gradient;
  float base_loss = 0;
  bool have_base = false;
  for (std::size_t budget : {std::size_t(128) * 4 * 3, std::size_t{64} << 20}) {
    for (int threads : {1, 2}) {
      CAPTURE(budget, threads);
      protomem::Config config{capacity, dim};
      config.workspace_bytes = budget;
      config.threads = threads;
      protomem::PrototypeMemory<float> memory(config);
      load(memory, checkpoint);
      std::vector<float> gradient;
      const auto result = forward(memory, batch, gradient);
      if (!have_base) {
        base_loss = result.loss;
        base_gradient = gradient;
        have_base = true;
        continue;
      }
      CHECK(result.loss == Approx(base_loss).epsilon(1e-5));
      CHECK(max_abs_diff(gradient, base_gradient) <= 1e-4 * max_abs(base_gradient));
    }
  }
}

namespace {

// Rounding bound of a stored value (storage.hpp): relative 2^-8 for bfloat16; relative 2^-11 for
// half in its normal range, absolute 2^-25 below it.
template <class Device>
bool within_rounding(float original, float stored) {
  const double error = std::abs(double(original) - double(stored));
  if (std::is_same_v<Device, protomem::cpu_bf16>)
    return error <= std::ldexp(std::abs(original), -8);
  if (std::abs(original) >= std::ldexp(1.0, -14))
    return error <= std::ldexp(std::abs(original), -11);
  return error <= std::ldexp(1.0, -25);
}

template <class Device>
double epsilon_of() {
  return std::is_same_v<Device, protomem::cpu_bf16> ? std::ldexp(1.0, -8) : std::ldexp(1.0, -11);
}

}  // namespace

TEMPLATE_TEST_CASE("narrow storage rounds each value and computes in float", "[tiling][narrow]",
                   protomem::cpu_bf16, protomem::cpu_fp16) {
  using Narrow = protomem::PrototypeMemory<float, TestType>;
  static_assert(std::is_same_v<typename Narrow::prototype_type, std::vector<float>>);
  std::mt19937_64 rng(13);
  const index_t dim = 48, capacity = 2048;
  const std::string checkpoint = filled_checkpoint<float>(capacity, dim, 2000, rng);
  protomem::Config config{capacity, dim};
  config.workspace_bytes = 40 * 4 * (40 + dim) * 5;  // several tiles with the decoded prototypes
  // Float GEMMs on decoded tiles (the build's BLAS where it has one); the bf16 kernel, which also
  // rounds x and p, is checked against this in tests/test_gemm.cpp.
  config.gemm = protomem::backend::gemm_built(protomem::Gemm::blas) ? protomem::Gemm::blas
                                                                    : protomem::Gemm::eigen;
  protomem::PrototypeMemory<float> exact(config);
  Narrow narrow(config);
  load(exact, checkpoint);
  load(narrow, checkpoint);  // float checkpoint -> rounded on the way in
  REQUIRE(narrow.size() == exact.size());

  // 1. Every stored value is its float rounded to nearest.
  for (auto record : exact) {
    const std::vector<float> stored = narrow.prototype(record.label);
    REQUIRE(static_cast<index_t>(stored.size()) == dim);
    for (index_t k = 0; k < dim; ++k) {
      INFO("label " << record.label << " k " << k);
      REQUIRE(within_rounding<TestType>(record.prototype[k], stored[static_cast<std::size_t>(k)]));
    }
  }

  // 2. A narrow checkpoint holds the decoded values: into a float memory they load exactly, and the
  //    narrow step equals the float step on those values (to float rounding).
  std::ostringstream saved;
  narrow.save(saved);
  protomem::PrototypeMemory<float> decoded(config);
  load(decoded, saved.str());
  for (auto record : narrow) {
    const auto values = decoded.prototype(record.label);
    REQUIRE(std::equal(record.prototype.begin(), record.prototype.end(), values.begin()));
  }
  const auto batch = make_batch<float>(1980, 10, 4, dim, rng);
  std::vector<float> g_narrow, g_decoded, g_exact;
  const float loss_narrow = forward(narrow, batch, g_narrow).loss;
  const float loss_decoded = forward(decoded, batch, g_decoded).loss;
  const float loss_exact = forward(exact, batch, g_exact).loss;
  CHECK(loss_narrow == Approx(loss_decoded).epsilon(1e-5));
  CHECK(max_abs_diff(g_narrow, g_decoded) <= 1e-4 * max_abs(g_decoded));

  // 3. Against float storage: |d cos| <= eps |x| |w| = eps, so every logit moves by at most s eps
  //    and the loss (log-sum-exp minus the target, which the memory does not touch) by at most
  //    that.
  const double s = exact.margin().scale();
  CHECK(std::abs(double(loss_narrow) - double(loss_exact)) <= s * epsilon_of<TestType>() + 1e-5);
  INFO("loss float " << loss_exact << " narrow " << loss_narrow << ", gradient rel. error "
                     << max_abs_diff(g_narrow, g_exact) / max_abs(g_exact));

  // 4. Commit writes the fresh prototypes rounded; a refresh reads the stored one decoded.
  exact.commit();
  narrow.commit();
  decoded.discard();
  for (label_t label : batch.labels) {
    const auto want = exact.prototype(label);
    const auto got = narrow.prototype(label);
    for (index_t k = 0; k < dim; ++k) {
      CHECK(std::abs(double(want[k]) - double(got[static_cast<std::size_t>(k)])) <=
            2 * epsilon_of<TestType>() * std::abs(double(want[k])) + 1e-6);
    }
  }
}

TEST_CASE("a step leaves OpenMP's and OpenBLAS's thread settings as it found them",
          "[tiling][threads]") {
  std::mt19937_64 rng(14);
  const index_t dim = 32, capacity = 2048;
  const std::string checkpoint = filled_checkpoint<float>(capacity, dim, 2000, rng);
  const auto batch = make_batch<float>(5000, 16, 4, dim, rng);
  auto bad = batch;
  bad.embeddings[7] = std::numeric_limits<float>::quiet_NaN();  // throws inside forward()
#ifdef _OPENMP
  const int omp_before = omp_get_max_threads();
  omp_set_num_threads(3);
#endif
#ifdef PROTOMEM_USE_OPENBLAS
  const int blas_before = openblas_get_num_threads();
  openblas_set_num_threads(2);
#endif
  for (int threads : {0, 1, 2}) {
    protomem::Config config{capacity, dim};
    config.threads = threads;
    protomem::PrototypeMemory<float> memory(config);
    load(memory, checkpoint);
    std::vector<float> gradient;
    const auto result = forward(memory, batch, gradient);
#ifdef _OPENMP
    CHECK(result.threads == (threads == 0 ? 3 : threads));
#endif
    memory.discard();
    CHECK_THROWS_AS(forward(memory, bad, gradient), protomem::Error);
#ifdef _OPENMP
    CHECK(omp_get_max_threads() == 3);
#endif
#ifdef PROTOMEM_USE_OPENBLAS
    CHECK(openblas_get_num_threads() == 2);
#endif
  }
#ifdef _OPENMP
  omp_set_num_threads(omp_before);
#endif
#ifdef PROTOMEM_USE_OPENBLAS
  openblas_set_num_threads(blas_before);
#endif
}
