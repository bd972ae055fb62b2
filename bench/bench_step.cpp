// bench_step: one protomem step (forward + commit) against the two-GEMM bound, measured in the
// same iteration on the same shapes (docs/design.md, "Performance model"), so that their ratio is
// robust to a machine whose speed drifts.
//
//   BM_Step<Device>/B/D/M   step time (manual time); counters bound_ms (logits B x D x M plus
//                           gradient B x M x D, OpenBLAS sgemm on the full shapes, same threads)
//                           and ratio = step / bound, both per iteration; threads; tile (T)
//   BM_TileWidth/B/D/M/T    BM_Step<cpu> with a budget of exactly one B x T tile per thread
//   BM_NarrowError<Device>/B/D/M   loss and dL/dE of a bfloat16 / half memory against a float
//                           memory holding the same prototypes (counters; the time is the narrow
//                           forward())
//
// Threads: $PROTOMEM_BENCH_THREADS (default: every core). A batch is B / 4 classes of 4 exemplars,
// all new to the memory (every step evicts B / 4 classes). The memory holds M random unit
// prototypes. Run (JSON): bench_step --benchmark_format=json --benchmark_repetitions=3
// Built as bench_step (OpenBLAS under protomem, protomem::blas) and bench_step_eigen (Eigen's GEMM
// under protomem; the bound still uses OpenBLAS).
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <memory>
#include <string>
#include <typeinfo>
#include <vector>

#include <protomem/memory.hpp>

#include "common.hpp"

namespace {

using bench::index_t;
using bench::label_t;

constexpr index_t kExemplars = 4;

// One memory (and the bound's dense copy of its shape) at a time: 2^20 x 512 floats are 2 GiB.
struct Holder {
  std::string key;
  std::shared_ptr<void> value;
};
Holder& current() {
  static Holder holder;
  return holder;
}

template <class Device>
struct Fixture {
  protomem::PrototypeMemory<float, Device> memory;
  std::vector<float> dense;  // M x D unit rows for the bound
  label_t next_label;

  Fixture(index_t D, index_t M, int threads, std::size_t budget)
      : memory(config(D, M, threads, budget), protomem::NoAging()),
        dense(static_cast<std::size_t>(M * D)),
        next_label(M) {
    bench::fill(
        memory, M, [](index_t r) { return label_t(r); }, 1);
    bench::Random random(2);
    bench::unit_rows(dense.data(), M, D, random);
  }
  static protomem::Config config(index_t D, index_t M, int threads, std::size_t budget) {
    protomem::Config c{M, D};
    c.threads = threads;
    if (budget > 0) c.workspace_bytes = budget;
    return c;
  }
};

template <class Device>
Fixture<Device>& fixture(index_t D, index_t M, int threads, std::size_t budget = 0) {
  const std::string key = std::string(typeid(Device).name()) + "/" + std::to_string(D) + "/" +
                          std::to_string(M) + "/" + std::to_string(threads) + "/" +
                          std::to_string(budget);
  Holder& holder = current();
  if (holder.key != key) {
    holder.value.reset();  // free the previous one first
    holder.key.clear();
    holder.value = std::make_shared<Fixture<Device>>(D, M, threads, budget);
    holder.key = key;
  }
  return *static_cast<Fixture<Device>*>(holder.value.get());
}

// The two GEMMs of a step at full size, with OpenBLAS on `threads` threads.
struct Bound {
  index_t B, D, M;
  std::vector<float> x, logits, out;
  Bound(index_t b, index_t d, index_t m)
      : B(b),
        D(d),
        M(m),
        x(std::size_t(b * d)),
        logits(std::size_t(b * m)),
        out(std::size_t(b * d)) {
    bench::Random random(4);
    bench::unit_rows(x.data(), B, D, random);
  }
  double run(const float* w, int threads) {
    openblas_set_num_threads(threads);
    const double t0 = bench::seconds();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(B), int(M), int(D), 1.0f, x.data(),
                int(D), w, int(D), 0.0f, logits.data(), int(M));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(B), int(D), int(M), 1.0f,
                logits.data(), int(M), w, int(D), 0.0f, out.data(), int(D));
    const double t1 = bench::seconds();
    benchmark::DoNotOptimize(out.data());
    return t1 - t0;
  }
};

// The step and the bound, paired per iteration. tile > 0: a budget of exactly one B x tile tile
// per thread (else the default budget).
template <class Device>
void run_step(benchmark::State& state, index_t tile) {
  const index_t B = state.range(0), D = state.range(1), M = state.range(2);
  const int threads = bench::threads();
  const std::size_t budget =
      tile > 0 ? std::size_t(threads) * std::size_t(tile * B) * sizeof(float) : 0;
  Fixture<Device>& f = fixture<Device>(D, M, threads, budget);
  bench::Batch batch(B, D, kExemplars);
  Bound bound(B, D, M);
  double step_total = 0, bound_total = 0;
  protomem::StepResult<float> last;
  for (auto _ : state) {
    batch.relabel(f.next_label);
    const double t0 = bench::seconds();
    last = f.memory.forward(protomem::matrix_view(batch.embeddings.data(), B, D),
                            protomem::label_view(batch.labels.data(), B),
                            protomem::matrix_view(batch.gradient.data(), B, D));
    f.memory.commit();
    const double t1 = bench::seconds();
    const double b = bound.run(f.dense.data(), threads);
    state.SetIterationTime(t1 - t0);
    step_total += t1 - t0;
    bound_total += b;
  }
  const auto iterations = static_cast<double>(state.iterations());
  state.counters["bound_ms"] = 1e3 * bound_total / iterations;
  state.counters["ratio"] = step_total / bound_total;
  state.counters["threads"] = last.threads;
  state.counters["tile"] = static_cast<double>(last.tile_columns);
  state.counters["gflops"] =
      4.0 * double(B) * double(D) * double(M) * iterations / step_total / 1e9;
  state.SetLabel(protomem::backend::gemm_name());
}

template <class Device>
void BM_Step(benchmark::State& state) {
  run_step<Device>(state, 0);
}

void BM_TileWidth(benchmark::State& state) { run_step<protomem::cpu>(state, state.range(3)); }

template <class Device>
void BM_NarrowError(benchmark::State& state) {
  const index_t B = state.range(0), D = state.range(1), M = state.range(2);
  protomem::Config config{M, D};
  config.threads = bench::threads();
  current().value.reset();
  current().key.clear();
  protomem::PrototypeMemory<float> exact(config, protomem::NoAging());
  protomem::PrototypeMemory<float, Device> narrow(config, protomem::NoAging());
  bench::fill(
      exact, M, [](index_t r) { return label_t(r); }, 1);
  bench::fill(
      narrow, M, [](index_t r) { return label_t(r); }, 1);  // the same, rounded
  // Classes around random centres, half of them already stored (their columns are excluded). The
  // noise puts an exemplar at cosine ~0.3 from its centre, so that the loss is far from 0 (about
  // 12 here), as early in training.
  const float noise = 6.0f / std::sqrt(float(D));
  std::vector<float> e(std::size_t(B * D)), g_exact(e.size()), g_narrow(e.size());
  std::vector<label_t> labels(static_cast<std::size_t>(B));
  bench::Random random(5);
  std::vector<float> centre(static_cast<std::size_t>(D));
  for (index_t c = 0; c < B / kExemplars; ++c) {
    bench::unit_rows(centre.data(), 1, D, random);
    for (index_t k = 0; k < kExemplars; ++k) {
      const index_t i = c * kExemplars + k;
      labels[std::size_t(i)] = c % 2 == 0 ? c : M + c;
      for (index_t j = 0; j < D; ++j)
        e[std::size_t(i * D + j)] = centre[std::size_t(j)] + noise * random.symmetric();
    }
  }
  const auto E = protomem::matrix_view(static_cast<const float*>(e.data()), B, D);
  const auto Y = protomem::label_view(labels.data(), B);
  const float loss_exact = exact.forward(E, Y, protomem::matrix_view(g_exact.data(), B, D)).loss;
  exact.discard();
  float loss_narrow = 0;
  for (auto _ : state) {
    const double t0 = bench::seconds();
    loss_narrow = narrow.forward(E, Y, protomem::matrix_view(g_narrow.data(), B, D)).loss;
    state.SetIterationTime(bench::seconds() - t0);
    narrow.discard();
  }
  double d2 = 0, g2 = 0, dmax = 0, gmax = 0;
  for (std::size_t k = 0; k < e.size(); ++k) {
    const double d = double(g_narrow[k]) - double(g_exact[k]);
    d2 += d * d;
    g2 += double(g_exact[k]) * g_exact[k];
    dmax = std::max(dmax, std::abs(d));
    gmax = std::max(gmax, std::abs(double(g_exact[k])));
  }
  state.counters["loss"] = loss_exact;
  state.counters["loss_abs_err"] = std::abs(double(loss_narrow) - double(loss_exact));
  state.counters["loss_rel_err"] =
      std::abs(double(loss_narrow) - double(loss_exact)) / std::abs(double(loss_exact));
  state.counters["grad_rel_err"] = std::sqrt(d2 / g2);  // |dg|_2 / |g|_2
  state.counters["grad_max_err"] = dmax / gmax;         // max |dg| / max |g|
}

// The grid of the issue: B in {128, 256, 512}, D in {128, 512}, M in {2^14, 2^16, 2^18, 2^20};
// D and M outermost so that consecutive benchmarks share one memory.
void grid(benchmark::internal::Benchmark* b) {
  for (index_t D : {128, 512}) {
    for (index_t M : {index_t{1} << 14, index_t{1} << 16, index_t{1} << 18, index_t{1} << 20}) {
      for (index_t B : {128, 256, 512}) b->Args({B, D, M});
    }
  }
  b->ArgNames({"B", "D", "M"})->UseManualTime()->Unit(benchmark::kMillisecond);
}

// Tile widths (through the budget; the cap max_tile_columns still applies: build with
// -DPROTOMEM_MAX_TILE_COLUMNS=4096 to try wider ones).
void tile_grid(benchmark::internal::Benchmark* b) {
  for (index_t T : {64, 128, 256, 512, 1024, 2048, 4096}) b->Args({256, 512, index_t{1} << 16, T});
  b->ArgNames({"B", "D", "M", "T"})->UseManualTime()->Unit(benchmark::kMillisecond);
}

void error_grid(benchmark::internal::Benchmark* b) {
  for (index_t D : {128, 512}) b->Args({256, D, index_t{1} << 16});
  b->ArgNames({"B", "D", "M"})->UseManualTime()->Unit(benchmark::kMillisecond)->Iterations(1);
}

}  // namespace

BENCHMARK_TEMPLATE(BM_Step, protomem::cpu)->Apply(grid);
BENCHMARK(BM_TileWidth)->Apply(tile_grid);
BENCHMARK_TEMPLATE(BM_Step, protomem::cpu_bf16)->Apply(grid);
BENCHMARK_TEMPLATE(BM_Step, protomem::cpu_fp16)->Apply(grid);
BENCHMARK_TEMPLATE(BM_NarrowError, protomem::cpu_bf16)->Apply(error_grid);
BENCHMARK_TEMPLATE(BM_NarrowError, protomem::cpu_fp16)->Apply(error_grid);
