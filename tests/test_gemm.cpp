// The memory pass's GEMM chosen at run time (backend/cpu/gemm_choice.hpp, Config::gemm):
//   - Config::gemm is validated: a value that is no choice, and blas in a build without one, are
//     protomem::Errors naming the value;
//   - the reported GEMM is one the build has, the faster of the calibration's times, and the same
//     for every memory of a shape class (the process-wide cache);
//   - forced eigen and forced blas (where built) agree with each other, with auto and with the
//     naive loop of tests/support/naive.hpp;
//   - first steps in concurrent threads share the process-wide cache (ThreadSanitizer: preset tsan);
//   - the bf16 kernel (bf16_kernel.hpp, only where the CPU has avx512_bf16) against a double
//     reference on ragged shapes, and a cpu_bf16 step on it against the fp32 step on the same
//     stored values, within bf16's tolerance.
// No timing is asserted. Built as test_gemm (Eigen only) and test_gemm_blas (protomem::blas).
#include <catch2/catch.hpp>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <tuple>
#include <utility>
#include <vector>

#include <protomem/memory.hpp>

#include "support/batch.hpp"
#include "support/naive.hpp"
#include "support/steps.hpp"

namespace {

using protomem::Gemm;
using protomem::index_t;
using protomem::label_t;

constexpr bool kHasBlas =
#ifdef PROTOMEM_USE_CBLAS
    true;
#else
    false;
#endif

using namespace test_support;  // make_batch, forward, filled_checkpoint, load, max_abs(_diff)

protomem::Config config_with(index_t capacity, index_t dim, Gemm gemm) {
  protomem::Config config{capacity, dim};
  config.gemm = gemm;
  return config;
}

}  // namespace

TEST_CASE("Config::gemm is validated", "[gemm]") {
  CHECK_THROWS_WITH(protomem::PrototypeMemory<float>(config_with(64, 8, Gemm::bf16)),
                    Catch::Contains("Config::gemm = bf16"));
  CHECK_THROWS_WITH(protomem::PrototypeMemory<float>(config_with(64, 8, static_cast<Gemm>(42))),
                    Catch::Contains("Config::gemm = unknown"));
  CHECK_NOTHROW(protomem::PrototypeMemory<float>(config_with(64, 8, Gemm::eigen)));
  CHECK_NOTHROW(protomem::PrototypeMemory<float>(config_with(64, 8, Gemm::automatic)));
  if (kHasBlas) {
    CHECK_NOTHROW(protomem::PrototypeMemory<float>(config_with(64, 8, Gemm::blas)));
  } else {
    CHECK_THROWS_WITH(protomem::PrototypeMemory<float>(config_with(64, 8, Gemm::blas)),
                      Catch::Contains("Config::gemm = blas") && Catch::Contains("no BLAS"));
  }
  CHECK(std::string(protomem::gemm_name(Gemm::automatic)) == "auto");
  CHECK(protomem::backend::gemm_built(Gemm::blas) == kHasBlas);
}

TEST_CASE("the reported GEMM is one the build has, the faster one measured", "[gemm]") {
  std::mt19937_64 rng(21);
  const index_t dim = 40, capacity = 700;
  const std::string checkpoint = filled_checkpoint<float>(capacity, dim, 600, rng);
  const auto batch = make_batch<float>(590, 8, 4, dim, rng);
  std::vector<protomem::backend::GemmReport> reports;
  for (int memory_index = 0; memory_index < 2; ++memory_index) {  // the second hits the cache
    protomem::PrototypeMemory<float> memory(protomem::Config{capacity, dim});
    load(memory, checkpoint);
    std::vector<float> gradient;
    const protomem::backend::GemmReport report = forward(memory, batch, gradient).gemm;
    INFO("used " << protomem::gemm_name(report.used) << ", eigen " << report.eigen_ms
                 << " ms, blas " << report.blas_ms << " ms; built: "
                 << protomem::backend::gemm_names());
    CHECK(protomem::backend::gemm_built(report.used));
    CHECK(report.used != Gemm::automatic);
    if (kHasBlas) {
      CHECK(report.eigen_ms > 0);
      CHECK(report.blas_ms > 0);
      CHECK((report.used == Gemm::blas) == (report.blas_ms < report.eigen_ms));
    } else {
      CHECK(report.used == Gemm::eigen);
      CHECK(report.eigen_ms == 0);  // one candidate: nothing measured
      CHECK(report.blas_ms == 0);
    }
    reports.push_back(report);
  }
  CHECK(reports[0].used == reports[1].used);
  CHECK(reports[0].eigen_ms == reports[1].eigen_ms);
  CHECK(reports[0].blas_ms == reports[1].blas_ms);
}

TEST_CASE("first steps in concurrent threads calibrate a shape class once", "[gemm][threads]") {
  // A class no other test uses (D = 72), for float and bf16 storage: with a BLAS or the bf16
  // kernel there is something to measure, and every thread must see the same result.
  std::mt19937_64 rng(25);
  const index_t dim = 72, capacity = 900;
  const std::string checkpoint = filled_checkpoint<float>(capacity, dim, 800, rng);
  const auto batch = make_batch<float>(790, 8, 4, dim, rng);
  constexpr int kThreads = 4;
  std::vector<protomem::backend::GemmReport> fp32(kThreads), bf16(kThreads);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      protomem::Config config{capacity, dim};
      config.threads = 1;
      protomem::PrototypeMemory<float> plain(config);
      protomem::PrototypeMemory<float, protomem::cpu_bf16> narrow(config);
      load(plain, checkpoint);
      load(narrow, checkpoint);
      std::vector<float> gradient;
      fp32[std::size_t(t)] = forward(plain, batch, gradient).gemm;
      bf16[std::size_t(t)] = forward(narrow, batch, gradient).gemm;
    });
  }
  for (std::thread& thread : threads) thread.join();
  for (int t = 1; t < kThreads; ++t) {
    for (const auto* reports : {&fp32, &bf16}) {
      const auto& first = (*reports)[0];
      const auto& other = (*reports)[std::size_t(t)];
      CHECK(other.used == first.used);
      CHECK(other.eigen_ms == first.eigen_ms);
      CHECK(other.blas_ms == first.blas_ms);
      CHECK(other.bf16_ms == first.bf16_ms);
    }
  }
}

TEMPLATE_TEST_CASE("forced GEMMs agree with each other, with auto and with the naive loop",
                   "[gemm]", float, double) {
  using T = TestType;
  std::mt19937_64 rng(22);
  const index_t dim = 24, capacity = 1500;
  const std::string checkpoint = filled_checkpoint<T>(capacity, dim, 1300, rng);
  const auto batch = make_batch<T>(1290, 12, 3, dim, rng);
  protomem::PrototypeMemory<T> reference(protomem::Config{capacity, dim});
  load(reference, checkpoint);
  const std::vector<double> e(batch.embeddings.begin(), batch.embeddings.end());
  const double naive_loss = naive::loss(e.data(), dim, batch.labels, dim,
                                        naive::stored_classes(reference), reference.margin(),
                                        false);
  const double tolerance = std::is_same_v<T, float> ? 1e-5 : 1e-12;

  std::vector<Gemm> choices = {Gemm::automatic, Gemm::eigen};
  if (kHasBlas) choices.push_back(Gemm::blas);
  std::vector<T> first_gradient;
  for (Gemm gemm : choices) {
    for (int threads : {1, 2}) {
      CAPTURE(protomem::gemm_name(gemm), threads);
      protomem::Config config = config_with(capacity, dim, gemm);
      config.threads = threads;
      config.workspace_bytes = std::size_t(batch.rows()) * sizeof(T) * 100;  // several tiles
      config.similar_k = 3;
      protomem::PrototypeMemory<T> memory(config);
      load(memory, checkpoint);
      std::vector<T> gradient;
      const auto result = forward(memory, batch, gradient);
      if (gemm != Gemm::automatic) CHECK(result.gemm.used == gemm);
      CHECK(result.loss == Approx(naive_loss).epsilon(tolerance));
      if (first_gradient.empty()) {
        first_gradient = gradient;
        continue;
      }
      CHECK(max_abs_diff(gradient, first_gradient) <= tolerance * max_abs(first_gradient));
    }
  }
}

#ifdef PROTOMEM_HAS_BF16_KERNEL
TEST_CASE("the bf16 kernel against a double reference on ragged shapes", "[gemm][bf16]") {
  namespace bf16 = protomem::backend::bf16;
  if (!bf16::cpu_has_avx512_bf16()) {
    WARN("this CPU has no avx512_bf16: the bf16 kernel is not run");
    return;
  }
  std::mt19937_64 rng(23);
  std::uniform_real_distribution<float> uniform(-1.0f, 1.0f);
  for (const auto& [B, D, n] : std::vector<std::tuple<index_t, index_t, index_t>>{
           {13, 19, 37}, {1, 1, 1}, {6, 64, 64}, {7, 130, 129}, {25, 32, 200}}) {
    CAPTURE(B, D, n);
    // Inputs that bf16 holds exactly, so that only the float accumulation rounds.
    auto exact = [&] {
      const std::uint16_t bits = bf16::to_bf16(uniform(rng));
      const std::uint32_t word = std::uint32_t(bits) << 16;
      float v;
      std::memcpy(&v, &word, sizeof v);
      return std::pair<std::uint16_t, float>{bits, v};
    };
    std::vector<float> x(std::size_t(B * D)), w(std::size_t(n * D)), p(std::size_t(B * n));
    std::vector<std::uint16_t> stored(w.size());
    for (float& v : x) v = exact().second;
    for (std::size_t k = 0; k < w.size(); ++k) std::tie(stored[k], w[k]) = exact();
    for (float& v : p) v = exact().second;
    const index_t pairs = (D + 1) / 2, ldt = n + 3;
    std::vector<std::uint32_t> packed_x(std::size_t(B * pairs));
    bf16::pack_rows(x.data(), B, D, D, packed_x.data(), pairs);
    bf16::Buffers buffers;
    buffers.resize(B, D, n);
    std::vector<float> tile(std::size_t(B * ldt), -7.0f), weighted(std::size_t(B * D), 0.5f);
    bf16::logits(packed_x.data(), B, D, stored.data(), n, buffers, tile.data(), ldt);
    // got == start + sum_t a[t a_step] b[t b_step] up to float accumulation (the products are
    // exact in float: bf16 x bf16).
    auto agrees = [](float got, double start, const float* a, index_t a_step, const float* b,
                     index_t b_step, index_t count) {
      double want = start, scale = std::abs(start);
      for (index_t t = 0; t < count; ++t) {
        want += double(a[t * a_step]) * b[t * b_step];
        scale += std::abs(double(a[t * a_step]) * b[t * b_step]);
      }
      return std::abs(got - want) <= 1e-6 * scale + 1e-30;
    };
    for (index_t i = 0; i < B; ++i) {
      for (index_t j = 0; j < n; ++j) {
        REQUIRE(agrees(tile[i * ldt + j], 0.0, &x[i * D], 1, &w[j * D], 1, D));
      }
      for (index_t j = n; j < ldt; ++j) REQUIRE(tile[i * ldt + j] == -7.0f);  // untouched
      for (index_t j = 0; j < n; ++j) tile[i * ldt + j] = p[i * n + j];
    }
    bf16::accumulate(tile.data(), B, ldt, stored.data(), n, D, buffers, weighted.data());
    for (index_t i = 0; i < B; ++i) {
      for (index_t k = 0; k < D; ++k) {
        REQUIRE(agrees(weighted[i * D + k], 0.5, &p[i * n], 1, &w[k], D, n));
      }
    }
  }
}
#endif

TEST_CASE("a cpu_bf16 step agrees with the fp32 step on the same values within bf16's tolerance",
          "[gemm][bf16]") {
  std::mt19937_64 rng(24);
  const index_t dim = 96, capacity = 3000;
  const std::string checkpoint = filled_checkpoint<float>(capacity, dim, 2900, rng);
  const auto batch = make_batch<float>(2880, 16, 4, dim, rng);
  std::vector<float> g_auto, g_fp32;
  for (int threads : {1, 2}) {
    CAPTURE(threads);
    protomem::Config config{capacity, dim};
    config.threads = threads;
    config.similar_k = 4;
    protomem::PrototypeMemory<float, protomem::cpu_bf16> automatic(config);
    config.gemm = Gemm::eigen;  // fp32 GEMMs on the decoded tiles
    protomem::PrototypeMemory<float, protomem::cpu_bf16> fp32(config);
    load(automatic, checkpoint);
    load(fp32, checkpoint);
    const auto got = forward(automatic, batch, g_auto);
    const auto want = forward(fp32, batch, g_fp32);
    INFO("auto ran " << protomem::gemm_name(got.gemm.used) << " (eigen " << got.gemm.eigen_ms
                     << " ms, blas " << got.gemm.blas_ms << " ms, bf16 " << got.gemm.bf16_ms
                     << " ms); loss " << got.loss << " against " << want.loss
                     << ", gradient error " << max_abs_diff(g_auto, g_fp32) / max_abs(g_fp32));
    CHECK(want.gemm.used == Gemm::eigen);
    if (!protomem::backend::bf16::cpu_has_avx512_bf16()) CHECK(got.gemm.used != Gemm::bf16);
    // x and p rounded to bf16 as w is: each cosine moves by at most 2 eps + eps^2, each logit by
    // s times that, and the loss by at most the largest logit's move.
    const double eps = std::ldexp(1.0, -8), s = fp32.margin().scale();
    CHECK(std::abs(double(got.loss) - double(want.loss)) <= s * (2 * eps + eps * eps) + 1e-5);
    CHECK(max_abs_diff(g_auto, g_fp32) <= 8 * eps * max_abs(g_fp32));
    // Mining ranks by cosines that moved by at most 2 eps + eps^2.
    CHECK(max_abs_diff(got.similar_cosines, want.similar_cosines) <= 2 * eps + eps * eps + 1e-6);
  }
}
