// bench_step: one protomem step (forward + commit) against the two-GEMM bound, measured in the
// same iteration on the same shapes (docs/design.md, "Performance model"), so that their ratio is
// robust to a machine whose speed drifts.
//
//   BM_Step<Device>/B/D/M   step time (manual time); counters bound_ms (logits B x D x M plus
//                           gradient B x M x D on the full shapes, same threads, with the fastest
//                           GEMM on this machine: see below) and ratio = step / bound, both per
//                           iteration; threads; tile (T); the label names the step's GEMM, the
//                           bound's, and every candidate's two-GEMM time
//   BM_TileWidth/B/D/M/T    BM_Step<cpu> with a budget of exactly one B x T tile per thread
//   BM_Bf16VsFp32/B/D/M     a cpu_bf16 step and a float step on the same prototypes, paired per
//                           iteration: ratio = bf16 step / float step; bound_ms and bf16_bound the
//                           same fp32 bound as BM_Step's
//   BM_NarrowError<Device>/B/D/M   loss and dL/dE of a bfloat16 / half memory against a float
//                           memory holding the same prototypes (counters; the time is the narrow
//                           forward())
//
// The bound is the fastest two-GEMM time among the GEMMs on this machine, so that a slow GEMM
// under both the step and the bound cannot make a ratio look good (issue #26: an OpenBLAS that
// fell back to Prescott kernels ran the step and its bound 5x slower than Eigen's GEMM): Eigen's
// product compiled for this CPU (-march=PROTOMEM_BENCH_MARCH, on OpenMP threads), the linked
// OpenBLAS (its core name in the label, openblas_get_corename()), and any of BLIS, MKL or
// another OpenBLAS found at run time by dlopen ($PROTOMEM_BENCH_BLAS: more libraries, colon-
// separated; "none" loads none), each run on its own threads and split over the threads by M as
// the step splits its tiles (Bound). Each runs the two GEMMs twice before the first iteration
// (once when it is over 2x slower than the best so far); the fastest is then timed in every
// iteration beside the step.
//
// Threads: $PROTOMEM_BENCH_THREADS (default: every core). $PROTOMEM_BENCH_GEMM = auto (default),
// eigen or blas sets the step's Config::gemm. A batch is B / 4 classes of 4 exemplars, all new to
// the memory (every step evicts B / 4 classes). The memory holds M random unit prototypes.
// Run (JSON): bench_step --benchmark_format=json --benchmark_repetitions=3
// Built as bench_step (protomem::blas: the step may run Eigen's GEMM or OpenBLAS's) and
// bench_step_eigen (no BLAS under protomem; the bound still has every candidate).
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <dlfcn.h>

#include <algorithm>
#include <cstdlib>
#include <cstdint>
#include <cstring>
#include <functional>
#include <memory>
#include <mutex>
#include <sstream>
#include <string>
#include <typeinfo>
#include <vector>

#include <Eigen/Core>

#include <protomem/memory.hpp>

#include "common.hpp"

extern "C" {
void openblas_set_num_threads(int num_threads);
char* openblas_get_corename(void);
}

namespace {

using bench::index_t;
using bench::label_t;

constexpr index_t kExemplars = 4;

// Config::gemm from $PROTOMEM_BENCH_GEMM (auto, eigen, blas).
protomem::Gemm bench_gemm() {
  const char* env = std::getenv("PROTOMEM_BENCH_GEMM");
  if (env == nullptr || std::strcmp(env, "auto") == 0) return protomem::Gemm::automatic;
  if (std::strcmp(env, "eigen") == 0) return protomem::Gemm::eigen;
  if (std::strcmp(env, "blas") == 0) return protomem::Gemm::blas;
  std::fprintf(stderr, "PROTOMEM_BENCH_GEMM=%s: not auto, eigen or blas\n", env);
  std::exit(2);
}

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
    c.gemm = bench_gemm();
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

// A GEMM the bound may use: a CBLAS cblas_sgemm (the linked OpenBLAS or one loaded by dlopen)
// or Eigen's product, with a way to set its threads.
using Sgemm = void (*)(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE, int, int, int, float,
                       const float*, int, const float*, int, float, float*, int);
struct Candidate {
  std::string name;
  Sgemm sgemm = nullptr;                 // null: Eigen's product
  std::function<void(int)> set_threads;  // the GEMM's own thread control
};

void eigen_threads(int threads) { Eigen::setNbThreads(threads); }

// Eigen's product on Eigen's threads (OpenMP), row-major as cblas_sgemm with CblasRowMajor.
void eigen_sgemm(CBLAS_ORDER, CBLAS_TRANSPOSE, CBLAS_TRANSPOSE tb, int m, int n, int k,
                 float alpha, const float* a, int lda, const float* b, int ldb, float beta,
                 float* c, int ldc) {
  using Matrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<const Matrix, 0, Stride> A(a, m, k, Stride(lda));
  Eigen::Map<Matrix, 0, Stride> C(c, m, n, Stride(ldc));
  if (tb == CblasTrans) {
    C.noalias() = alpha * A * Eigen::Map<const Matrix, 0, Stride>(b, n, k, Stride(ldb)).transpose();
  } else {
    C.noalias() = alpha * A * Eigen::Map<const Matrix, 0, Stride>(b, k, n, Stride(ldb));
  }
  (void)beta;  // 0 here
}

// BLAS libraries found at run time. RTLD_DEEPBIND: a library's calls to its own sgemm_ etc. must
// not bind to the linked OpenBLAS's symbols of the same names.
std::vector<Candidate> loaded_blas() {
  std::string paths = "libblis.so.4:libmkl_rt.so.2:libmkl_rt.so";
  if (const char* more = std::getenv("PROTOMEM_BENCH_BLAS")) {
    paths = std::strcmp(more, "none") == 0 ? "" : std::string(more) + ":" + paths;
  }
  std::vector<Candidate> found;
  std::stringstream list(paths);
  for (std::string path; std::getline(list, path, ':');) {
    if (path.empty()) continue;
    void* lib = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL | RTLD_DEEPBIND);
    if (lib == nullptr) continue;
    Candidate c;
    c.sgemm = reinterpret_cast<Sgemm>(dlsym(lib, "cblas_sgemm"));
    if (c.sgemm == nullptr) continue;
    c.name = path.substr(0, path.find(".so"));
    if (c.name.rfind("lib", 0) == 0) c.name = c.name.substr(3);
    const auto slash = c.name.rfind('/');
    if (slash != std::string::npos) c.name = c.name.substr(slash + 1);
    if (void* f = dlsym(lib, "bli_thread_set_num_threads")) {  // BLIS: dim_t (int64_t)
      c.set_threads = [f](int n) { reinterpret_cast<void (*)(std::int64_t)>(f)(n); };
    } else {
      for (const char* setter : {"MKL_Set_Num_Threads", "openblas_set_num_threads"}) {
        if (void* g = dlsym(lib, setter)) {
          c.set_threads = [g](int n) { reinterpret_cast<void (*)(int)>(g)(n); };
          break;
        }
      }
    }
    // The kernel set: OpenBLAS's core name, BLIS's architecture.
    if (auto core = reinterpret_cast<char* (*)()>(dlsym(lib, "openblas_get_corename"))) {
      c.name += std::string(" ") + core();
    }
    auto arch_id = reinterpret_cast<int (*)()>(dlsym(lib, "bli_arch_query_id"));
    auto arch_name = reinterpret_cast<const char* (*)(int)>(dlsym(lib, "bli_arch_string"));
    if (arch_id != nullptr && arch_name != nullptr) {
      c.name += std::string(" ") + arch_name(arch_id());
    }
    found.push_back(c);
  }
  return found;
}

const std::vector<Candidate>& candidates() {
  static const std::vector<Candidate> all = [] {
    std::vector<Candidate> c = {{"eigen", nullptr, &eigen_threads},
                                {std::string("openblas ") + openblas_get_corename(), &cblas_sgemm,
                                 &openblas_set_num_threads}};
    for (const Candidate& more : loaded_blas()) c.push_back(more);
    return c;
  }();
  return all;
}

// The two GEMMs of a step at full size on `threads` threads, with the fastest candidate. Each
// GEMM runs two ways: on its own threads, and split over the threads by M (OpenMP, each thread's
// share of the prototypes with the GEMM on one thread, the B x D partial sums added at the end:
// how the step runs its tiles); the bound is the fastest of all.
struct Bound {
  index_t B, D, M;
  std::vector<float> x, logits, out, parts;
  std::size_t best = 0;              // candidates()[best / 2], split when best is odd
  std::vector<double> candidate_ms;  // per candidate and way: best of 2, before the iterations
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
  double run_with(const Candidate& c, bool split, const float* w, int threads) {
    const Sgemm sgemm = c.sgemm != nullptr ? c.sgemm : &eigen_sgemm;
    if (c.set_threads) c.set_threads(split ? 1 : threads);
    parts.resize(std::size_t(threads) * out.size());
    const double t0 = bench::seconds();
    if (!split) {
      sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(B), int(M), int(D), 1.0f, x.data(),
            int(D), w, int(D), 0.0f, logits.data(), int(M));
      sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(B), int(D), int(M), 1.0f,
            logits.data(), int(M), w, int(D), 0.0f, out.data(), int(D));
    } else {
#pragma omp parallel for num_threads(threads) schedule(static, 1)
      for (int t = 0; t < threads; ++t) {
        const index_t lo = M * t / threads, n = M * (t + 1) / threads - lo;
        float* part = parts.data() + std::size_t(t) * out.size();
        sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(B), int(n), int(D), 1.0f, x.data(),
              int(D), w + lo * D, int(D), 0.0f, logits.data() + lo, int(M));
        sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(B), int(D), int(n), 1.0f,
              logits.data() + lo, int(M), w + lo * D, int(D), 0.0f, part, int(D));
      }
      std::copy(parts.begin(), parts.begin() + std::ptrdiff_t(out.size()), out.begin());
      for (int t = 1; t < threads; ++t) {
        const float* part = parts.data() + std::size_t(t) * out.size();
        for (std::size_t k = 0; k < out.size(); ++k) out[k] += part[k];
      }
    }
    const double t1 = bench::seconds();
    benchmark::DoNotOptimize(out.data());
    return t1 - t0;
  }
  std::string name(std::size_t k) const {
    return candidates()[k / 2].name + (k % 2 == 1 ? " split" : "");
  }
  // Times every candidate both ways: twice, or once when the first run is over 2x the best yet.
  void choose(const float* w, int threads) {
    candidate_ms.clear();
    double fastest = 1e30;
    for (const Candidate& c : candidates()) {
      for (bool split : {false, true}) {
        double ms = 1e3 * run_with(c, split, w, threads);
        if (ms < 2 * fastest) ms = std::min(ms, 1e3 * run_with(c, split, w, threads));
        fastest = std::min(fastest, ms);
        candidate_ms.push_back(ms);
      }
    }
    best = std::size_t(std::min_element(candidate_ms.begin(), candidate_ms.end()) -
                       candidate_ms.begin());
  }
  double run(const float* w, int threads) {
    return run_with(candidates()[best / 2], best % 2 == 1, w, threads);
  }
  // Counters: every candidate's time, "<first word of its name>[_split]_ms" (eigen_ms,
  // openblas_split_ms, blis_ms, ...), so that a JSON result keeps them per repetition.
  void add_counters(benchmark::State& state) const {
    for (std::size_t k = 0; k < candidate_ms.size(); ++k) {
      const std::string& full = candidates()[k / 2].name;
      const std::string key = full.substr(0, full.find(' ')) + (k % 2 == 1 ? "_split" : "") + "_ms";
      state.counters[key] = candidate_ms[k];
    }
  }
  // "bound=eigen split; eigen 183 ms, eigen split 150 ms, openblas Haswell 384 ms, ..."
  std::string describe() const {
    std::string text = "bound=" + name(best) + ";";
    for (std::size_t k = 0; k < candidate_ms.size(); ++k) {
      text += " " + name(k) + " " + std::to_string(int(candidate_ms[k] + 0.5)) + " ms";
      text += k + 1 < candidate_ms.size() ? "," : "";
    }
    return text;
  }
};

// "step=eigen (calibration ms: eigen 1.2, blas 2.3)"
std::string describe_step(const protomem::backend::GemmReport& g) {
  return "step=" + protomem::backend::describe(g);
}

// The step's calibration (one tile's two GEMMs on one thread, 0: not measured) as counters.
void add_calibration_counters(benchmark::State& state, const protomem::backend::GemmReport& g) {
  state.counters["tile_eigen_ms"] = g.eigen_ms;
  state.counters["tile_blas_ms"] = g.blas_ms;
  state.counters["tile_bf16_ms"] = g.bf16_ms;
}

// A float memory and a cpu_bf16 memory of the same prototypes (the latter rounded).
struct Pair {
  Fixture<protomem::cpu> fp32;
  Fixture<protomem::cpu_bf16> bf16;
  Pair(index_t D, index_t M, int threads) : fp32(D, M, threads, 0), bf16(D, M, threads, 0) {}
};

// One timed step (forward + commit) of a fixture's memory on a batch of new classes.
template <class F>
double timed_step(F& f, bench::Batch& batch, protomem::StepResult<float>& last) {
  const index_t B = index_t(batch.labels.size()), D = f.memory.dim();
  batch.relabel(f.next_label);
  const double t0 = bench::seconds();
  last = f.memory.forward(protomem::matrix_view(batch.embeddings.data(), B, D),
                          protomem::label_view(batch.labels.data(), B),
                          protomem::matrix_view(batch.gradient.data(), B, D));
  f.memory.commit();
  return bench::seconds() - t0;
}

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
  bound.choose(f.dense.data(), threads);
  double step_total = 0, bound_total = 0;
  protomem::StepResult<float> last;
  for (auto _ : state) {
    const double step = timed_step(f, batch, last);
    const double b = bound.run(f.dense.data(), threads);
    state.SetIterationTime(step);
    step_total += step;
    bound_total += b;
  }
  const auto iterations = static_cast<double>(state.iterations());
  state.counters["bound_ms"] = 1e3 * bound_total / iterations;
  state.counters["ratio"] = step_total / bound_total;
  state.counters["threads"] = last.threads;
  state.counters["tile"] = static_cast<double>(last.tile_columns);
  state.counters["gflops"] =
      4.0 * double(B) * double(D) * double(M) * iterations / step_total / 1e9;
  bound.add_counters(state);
  add_calibration_counters(state, last.gemm);
  state.SetLabel(describe_step(last.gemm) + "; " + bound.describe());
}

template <class Device>
void BM_Step(benchmark::State& state) {
  run_step<Device>(state, 0);
}

void BM_TileWidth(benchmark::State& state) { run_step<protomem::cpu>(state, state.range(3)); }

void BM_Bf16VsFp32(benchmark::State& state) {
  const index_t B = state.range(0), D = state.range(1), M = state.range(2);
  const int threads = bench::threads();
  Holder& holder = current();
  const std::string key = "pair/" + std::to_string(D) + "/" + std::to_string(M) + "/" +
                          std::to_string(threads);
  if (holder.key != key) {
    holder.value.reset();
    holder.key.clear();
    holder.value = std::make_shared<Pair>(D, M, threads);
    holder.key = key;
  }
  Pair& pair = *static_cast<Pair*>(holder.value.get());
  bench::Batch batch(B, D, kExemplars);
  Bound bound(B, D, M);
  bound.choose(pair.fp32.dense.data(), threads);
  double fp32_total = 0, bf16_total = 0, bound_total = 0;
  protomem::StepResult<float> last_fp32, last_bf16;
  for (auto _ : state) {
    const double bf16 = timed_step(pair.bf16, batch, last_bf16);
    fp32_total += timed_step(pair.fp32, batch, last_fp32);
    bf16_total += bf16;
    bound_total += bound.run(pair.fp32.dense.data(), threads);
    state.SetIterationTime(bf16);
  }
  const auto iterations = static_cast<double>(state.iterations());
  state.counters["fp32_ms"] = 1e3 * fp32_total / iterations;
  state.counters["bound_ms"] = 1e3 * bound_total / iterations;
  state.counters["ratio"] = bf16_total / fp32_total;  // bf16 step / fp32 step
  state.counters["bf16_bound"] = bf16_total / bound_total;
  state.counters["fp32_bound"] = fp32_total / bound_total;
  bound.add_counters(state);
  add_calibration_counters(state, last_bf16.gemm);
  state.SetLabel("bf16 " + describe_step(last_bf16.gemm) + "; fp32 " +
                 describe_step(last_fp32.gemm) + "; " + bound.describe());
}

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
BENCHMARK(BM_Bf16VsFp32)
    ->Args({256, 512, index_t{1} << 16})
    ->Args({256, 128, index_t{1} << 16})
    ->ArgNames({"B", "D", "M"})
    ->UseManualTime()
    ->Unit(benchmark::kMillisecond);
BENCHMARK_TEMPLATE(BM_NarrowError, protomem::cpu_bf16)->Apply(error_grid);
BENCHMARK_TEMPLATE(BM_NarrowError, protomem::cpu_fp16)->Apply(error_grid);
