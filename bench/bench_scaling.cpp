// bench_scaling: a training step's time and the process's peak RSS as the number of identities N
// grows, at a fixed batch (B = 256: 64 classes x 4 exemplars, D = 128) and a fixed memory /
// sample size (M = 8192):
//   BM_Protomem/N     PrototypeMemory<float> with M slots (protomem::blas): labels drawn from N
//   BM_FullSoftmax/N  a learned CosFace classifier over all N classes: logits B x N, dL/dX and an
//                     SGD update of the N x D weights (three GEMMs over N), weights kept normalised
//   BM_PartialFC/N    Partial-FC-style: all N weights kept, each step samples the batch's classes
//                     plus random others up to M (uniform scores over N, top M, as Partial FC's
//                     torch.rand + topk), then the same three GEMMs over the M sampled classes
// Counters: peak_rss_mib (getrusage, so run each benchmark in its own process: bench/scaling.py),
// state_mib (what the method keeps between steps). A baseline whose buffers would exceed
// $PROTOMEM_BENCH_MAX_GIB (default 8) is skipped with the size it needs.
// All use OpenBLAS sgemm on $PROTOMEM_BENCH_THREADS threads (default: every core).
#include <benchmark/benchmark.h>
#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <string>
#include <unordered_set>
#include <vector>

#include <Eigen/Core>
#include <protomem/memory.hpp>

#include "common.hpp"

namespace {

using bench::index_t;
using bench::label_t;

constexpr index_t kClasses = 64, kExemplars = 4, kBatch = kClasses * kExemplars, kDim = 128;
constexpr index_t kMemory = 8192;
constexpr float kScale = 64.0f, kMargin = 0.35f, kRate = 0.1f;

double max_gib() {
  if (const char* env = std::getenv("PROTOMEM_BENCH_MAX_GIB")) return std::atof(env);
  return 8.0;
}

// A batch: kClasses distinct classes drawn uniformly from [0, N), kExemplars noisy copies each.
struct Batch {
  std::vector<float> embeddings = std::vector<float>(static_cast<std::size_t>(kBatch * kDim));
  std::vector<float> gradient = std::vector<float>(static_cast<std::size_t>(kBatch * kDim));
  std::vector<label_t> labels = std::vector<label_t>(static_cast<std::size_t>(kBatch));
  bench::Random random{7};
  void draw(label_t N) {
    std::unordered_set<label_t> chosen;
    while (static_cast<index_t>(chosen.size()) < kClasses) {
      chosen.insert(static_cast<label_t>(random.next() % static_cast<std::uint64_t>(N)));
    }
    index_t i = 0;
    for (label_t label : chosen) {
      for (index_t k = 0; k < kExemplars; ++k, ++i) labels[static_cast<std::size_t>(i)] = label;
    }
    for (float& v : embeddings) v = random.symmetric();
  }
};

// x = normalised embeddings; returns 1 / |e_i| for the backward pass.
std::vector<float> normalise(const std::vector<float>& e, std::vector<float>& x) {
  std::vector<float> inv(static_cast<std::size_t>(kBatch));
  x.resize(e.size());
  for (index_t i = 0; i < kBatch; ++i) {
    double n2 = 0;
    for (index_t k = 0; k < kDim; ++k)
      n2 += double(e[static_cast<std::size_t>(i * kDim + k)]) *
            e[static_cast<std::size_t>(i * kDim + k)];
    inv[static_cast<std::size_t>(i)] = float(1.0 / std::sqrt(n2));
    for (index_t k = 0; k < kDim; ++k)
      x[static_cast<std::size_t>(i * kDim + k)] =
          e[static_cast<std::size_t>(i * kDim + k)] * inv[static_cast<std::size_t>(i)];
  }
  return inv;
}

// logits (B x n, already s * cos) -> CosFace softmax cross-entropy; leaves dL/dlogits-by-cos
// (s / B (softmax - onehot)) in place and returns the loss.
float softmax_rows(float* logits, index_t n, const std::vector<index_t>& target) {
  double loss = 0;
#pragma omp parallel for reduction(+ : loss)
  for (index_t i = 0; i < kBatch; ++i) {
    Eigen::Map<Eigen::ArrayXf> z(logits + i * n, n);
    const index_t y = target[static_cast<std::size_t>(i)];
    z[y] -= kScale * kMargin;
    const float top = z.maxCoeff();
    const float zy = z[y];
    z = (z - top).exp();
    const float sum = z.sum();
    loss += std::log(double(sum)) + top - zy;
    z *= kScale / (float(kBatch) * sum);
    z[y] -= kScale / float(kBatch);
  }
  return float(loss / double(kBatch));
}

// dL/de from dL/dx (through x = e / |e|).
void through_normalisation(const std::vector<float>& x, const std::vector<float>& inv,
                           std::vector<float>& g) {
  for (index_t i = 0; i < kBatch; ++i) {
    float along = 0;
    for (index_t k = 0; k < kDim; ++k)
      along +=
          g[static_cast<std::size_t>(i * kDim + k)] * x[static_cast<std::size_t>(i * kDim + k)];
    for (index_t k = 0; k < kDim; ++k) {
      auto at = static_cast<std::size_t>(i * kDim + k);
      g[at] = (g[at] - along * x[at]) * inv[static_cast<std::size_t>(i)];
    }
  }
}

void renormalise_rows(float* w, index_t rows) {
#pragma omp parallel for
  for (index_t r = 0; r < rows; ++r) {
    Eigen::Map<Eigen::VectorXf> v(w + r * kDim, kDim);
    v.normalize();
  }
}

void finish(benchmark::State& state, double state_bytes) {
  state.counters["peak_rss_mib"] = bench::peak_rss_mib();
  state.counters["state_mib"] = state_bytes / (1024.0 * 1024.0);
}

void BM_Protomem(benchmark::State& state) {
  const label_t N = state.range(0);
  protomem::Config config{kMemory, kDim};
  config.threads = bench::threads();
  protomem::PrototypeMemory<float> memory(config, protomem::NoAging());  // as measured
  // M distinct labels spread over [0, N).
  bench::fill(
      memory, kMemory, [N](index_t r) { return label_t(r * N / kMemory); }, 1);
  Batch batch;
  for (auto _ : state) {
    state.PauseTiming();
    batch.draw(N);
    state.ResumeTiming();
    benchmark::DoNotOptimize(
        memory.step(protomem::matrix_view(batch.embeddings.data(), kBatch, kDim),
                    protomem::label_view(batch.labels.data(), kBatch),
                    protomem::matrix_view(batch.gradient.data(), kBatch, kDim)));
  }
  finish(state, double(kMemory) * kDim * 4);
}

void BM_FullSoftmax(benchmark::State& state) {
  const index_t N = state.range(0);
  const double need = (double(N) * kDim + double(kBatch) * N) * 4;
  if (need > max_gib() * 1073741824.0) {
    state.SkipWithError(("needs " + std::to_string(need / 1073741824.0) + " GiB").c_str());
    return;
  }
  openblas_set_num_threads(bench::threads());
  std::vector<float> w(static_cast<std::size_t>(N * kDim)),
      logits(static_cast<std::size_t>(kBatch * N)), x;
  bench::Random random(2);
  bench::unit_rows(w.data(), N, kDim, random);
  Batch batch;
  std::vector<index_t> target(static_cast<std::size_t>(kBatch));
  for (auto _ : state) {
    state.PauseTiming();
    batch.draw(N);
    state.ResumeTiming();
    const auto inv = normalise(batch.embeddings, x);
    for (index_t i = 0; i < kBatch; ++i)
      target[static_cast<std::size_t>(i)] = batch.labels[static_cast<std::size_t>(i)];
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(kBatch), int(N), int(kDim), kScale,
                x.data(), int(kDim), w.data(), int(kDim), 0.0f, logits.data(), int(N));
    benchmark::DoNotOptimize(softmax_rows(logits.data(), N, target));
    // dL/dx = G W, then W -= rate * G^T x, rows renormalised.
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(kBatch), int(kDim), int(N), 1.0f,
                logits.data(), int(N), w.data(), int(kDim), 0.0f, batch.gradient.data(), int(kDim));
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(N), int(kDim), int(kBatch), -kRate,
                logits.data(), int(N), x.data(), int(kDim), 1.0f, w.data(), int(kDim));
    renormalise_rows(w.data(), N);
    through_normalisation(x, inv, batch.gradient);
  }
  finish(state, double(N) * kDim * 4);
}

void BM_PartialFC(benchmark::State& state) {
  const index_t N = state.range(0);
  const index_t M = std::min(N, kMemory);
  const double need = double(N) * (kDim * 4 + 8) + double(kBatch) * M * 4;
  if (need > max_gib() * 1073741824.0) {
    state.SkipWithError(("needs " + std::to_string(need / 1073741824.0) + " GiB").c_str());
    return;
  }
  openblas_set_num_threads(bench::threads());
  std::vector<float> w(static_cast<std::size_t>(N * kDim)), scores(static_cast<std::size_t>(N)),
      sub(static_cast<std::size_t>(M * kDim)), logits(static_cast<std::size_t>(kBatch * M)), x;
  std::vector<std::uint32_t> index(static_cast<std::size_t>(N));
  bench::Random random(2);
  bench::unit_rows(w.data(), N, kDim, random);
  Batch batch;
  std::vector<index_t> target(static_cast<std::size_t>(kBatch));
  for (auto _ : state) {
    state.PauseTiming();
    batch.draw(N);
    state.ResumeTiming();
    // Sample: the batch's classes and random others, M in all (uniform scores, the top M).
    for (float& v : scores) v = 0.5f * (random.symmetric() + 1.0f);
    for (label_t y : batch.labels) scores[static_cast<std::size_t>(y)] = 2.0f;
    std::iota(index.begin(), index.end(), 0U);
    std::nth_element(index.begin(), index.begin() + M, index.end(),
                     [&](std::uint32_t a, std::uint32_t b) { return scores[a] > scores[b]; });
    std::sort(index.begin(), index.begin() + M);
    for (index_t j = 0; j < M; ++j) {
      std::copy_n(w.data() + std::size_t(index[static_cast<std::size_t>(j)]) * kDim, kDim,
                  sub.data() + j * kDim);
    }
    for (index_t i = 0; i < kBatch; ++i) {
      const auto y = static_cast<std::uint32_t>(batch.labels[static_cast<std::size_t>(i)]);
      target[static_cast<std::size_t>(i)] =
          std::lower_bound(index.begin(), index.begin() + M, y) - index.begin();
    }
    const auto inv = normalise(batch.embeddings, x);
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, int(kBatch), int(M), int(kDim), kScale,
                x.data(), int(kDim), sub.data(), int(kDim), 0.0f, logits.data(), int(M));
    benchmark::DoNotOptimize(softmax_rows(logits.data(), M, target));
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, int(kBatch), int(kDim), int(M), 1.0f,
                logits.data(), int(M), sub.data(), int(kDim), 0.0f, batch.gradient.data(),
                int(kDim));
    cblas_sgemm(CblasRowMajor, CblasTrans, CblasNoTrans, int(M), int(kDim), int(kBatch), -kRate,
                logits.data(), int(M), x.data(), int(kDim), 1.0f, sub.data(), int(kDim));
    renormalise_rows(sub.data(), M);
    for (index_t j = 0; j < M; ++j) {  // scatter the updated rows back
      std::copy_n(sub.data() + j * kDim, kDim,
                  w.data() + std::size_t(index[static_cast<std::size_t>(j)]) * kDim);
    }
    through_normalisation(x, inv, batch.gradient);
  }
  finish(state, double(N) * kDim * 4);
}

void identities(benchmark::internal::Benchmark* b) {
  for (index_t n : {index_t{10000}, index_t{100000}, index_t{1000000}, index_t{10000000}})
    b->Arg(n);
  b->ArgName("N")->Unit(benchmark::kMillisecond);
}

}  // namespace

BENCHMARK(BM_Protomem)->Apply(identities);
BENCHMARK(BM_FullSoftmax)->Apply(identities);
BENCHMARK(BM_PartialFC)->Apply(identities);
