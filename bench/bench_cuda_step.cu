// GPU step against the cuBLAS two-GEMM bound on the same shapes (docs/design.md, "Performance
// model"; issue #5: target <= 1.3x at B = 512, D = 512, M = 2^20).
//
//   BM_two_gemm_bound/B/D/M/precision/0 logits (B x M) = X W^T, then G (B x D) = P W, cuBLAS only
//   BM_cuda_step/B/D/M/precision/0     PrototypeMemory<float, cuda>::step() on a full memory of M
//                                      slots: forward (one host sync) + commit, wall clock
//   BM_cuda_step_tile/512/512/2^20/precision/T   the same step, tiles of T columns (1 GiB budget)
// precision: 0 fp32, 1 tf32, 2 bf16, 3 fp16 (protomem::GemmPrecision), the same for both; the
// bound's operands are random, as the step's are.
// The memory is filled by PrototypeMemory::assign (filling 2^20 slots by steps would cost
// O(M^2 D)). Prints a summary table (step / bound) after the benchmarks; --benchmark_out=FILE
// --benchmark_out_format=json writes every figure. Exits 77 where there is no GPU.
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <protomem/cuda.hpp>
#include <string>
#include <tuple>
#include <vector>

namespace {

using protomem::index_t;
using Memory = protomem::PrototypeMemory<float, protomem::cuda>;

constexpr index_t kExemplars = 4;  // per class: B / 4 classes per batch

void check(cudaError_t status, const char* what) { protomem::detail::cuda_check(status, what); }

// Deterministic pseudo-random floats in [-1, 1) (fast: 2^29 of them fill the largest memory).
struct Noise {
  std::uint64_t state;
  float next() {
    state = state * 6364136223846793005ULL + 1442695040888963407ULL;
    return float(static_cast<std::uint32_t>(state >> 40)) / float(1 << 23) - 1.0f;
  }
};

// Fills `memory` with M classes: labels 0..M-1 in eviction order, random unit prototypes, all
// written at step 1 (PrototypeMemory::assign takes the records from the host).
void fill_full(Memory& memory, index_t M, index_t D) {
  std::vector<std::int64_t> labels(static_cast<std::size_t>(M));
  std::vector<std::uint64_t> written(static_cast<std::size_t>(M), 1);
  std::vector<float> prototypes(static_cast<std::size_t>(M * D));
  Noise noise{12345};
  for (index_t slot = 0; slot < M; ++slot) {
    labels[static_cast<std::size_t>(slot)] = slot;
    float* p = prototypes.data() + slot * D;
    double n2 = 0;
    for (index_t k = 0; k < D; ++k) {
      p[k] = noise.next();
      n2 += double(p[k]) * p[k];
    }
    const float inv = float(1.0 / std::sqrt(n2));
    for (index_t k = 0; k < D; ++k) p[k] *= inv;
  }
  memory.assign({labels.data(), M}, protomem::matrix_view<const float>(prototypes.data(), M, D),
                {written.data(), M}, 1);
}

// Device noise in [-1, 1) as the precision's input type, for the bound's operands.
template <class T>
__global__ void fill_noise(T* out, std::size_t n, std::uint64_t seed) {
  for (std::size_t t = blockIdx.x * std::size_t(blockDim.x) + threadIdx.x; t < n;
       t += std::size_t(gridDim.x) * blockDim.x) {
    std::uint64_t z = (t + 1) * 0x9E3779B97F4A7C15ULL + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    z ^= z >> 31;
    out[t] = protomem::backend::cuda_kernels::convert_to<T>(float(z >> 40) / float(1 << 23) - 1.0f);
  }
}

void fill(void* out, std::size_t n, protomem::GemmPrecision precision, std::uint64_t seed) {
  switch (precision) {
    case protomem::GemmPrecision::bf16:
      fill_noise<<<1024, 256>>>(static_cast<__nv_bfloat16*>(out), n, seed);
      break;
    case protomem::GemmPrecision::fp16:
      fill_noise<<<1024, 256>>>(static_cast<__half*>(out), n, seed);
      break;
    default:
      fill_noise<<<1024, 256>>>(static_cast<float*>(out), n, seed);
  }
  check(cudaGetLastError(), "fill_noise");
}

// One full memory per (D, M), shared by the precisions and batch sizes.
// The memory with the default Config (workspace budget 64 MiB) or, for the tile sweep, a budget
// wide enough for any tile of it.
Memory& full_memory(index_t D, index_t M, bool wide_budget) {
  static std::tuple<index_t, index_t, bool> key{0, 0, false};
  static std::unique_ptr<Memory> memory;  // one at a time: 2^20 x 512 floats is 2 GiB
  if (!memory || key != std::make_tuple(D, M, wide_budget)) {
    memory.reset();
    protomem::Config config;
    config.capacity = M;
    config.dim = D;
    if (wide_budget) config.workspace_bytes = std::size_t{1} << 30;
    // NoAging: as the recorded measurements were taken (the default became AgeDecay(8)).
    memory = std::make_unique<Memory>(protomem::CudaResources{}, config, protomem::NoAging());
    fill_full(*memory, M, D);
    key = {D, M, wide_budget};
  }
  return *memory;
}

struct Batch {
  protomem::detail::DeviceArray<float> embeddings, gradient;
  std::vector<std::int64_t> labels;
  Batch(index_t B, index_t D)
      : embeddings(static_cast<std::size_t>(B * D)),
        gradient(static_cast<std::size_t>(B * D)),
        labels(static_cast<std::size_t>(B)) {
    std::vector<float> host(static_cast<std::size_t>(B * D));
    Noise noise{777};
    for (float& v : host) v = noise.next();
    check(cudaMemcpy(embeddings.data(), host.data(), host.size() * sizeof(float),
                     cudaMemcpyHostToDevice),
          "upload");
  }
  void relabel(std::int64_t first) {
    for (std::size_t i = 0; i < labels.size(); ++i) {
      labels[i] = first + static_cast<std::int64_t>(i) / kExemplars;
    }
  }
};

void BM_cuda_step(benchmark::State& state) {
  const index_t B = state.range(0), D = state.range(1), M = state.range(2);
  const auto precision = static_cast<protomem::GemmPrecision>(state.range(3));
  const std::int64_t tile = state.range(4);  // 0: the width the default budget gives
  Memory& memory = full_memory(D, M, tile > 0);
  protomem::CudaResources resources = memory.resources();
  resources.precision = precision;
  resources.tile_columns = tile;
  memory.set_resources(resources);
  Batch batch(B, D);
  static std::int64_t next_label = std::int64_t{1} << 40;
  auto step = [&] {
    batch.relabel(next_label);
    next_label += B / kExemplars;
    return memory.step(protomem::matrix_view<const float>(batch.embeddings.data(), B, D),
                       protomem::label_view(batch.labels.data(), B),
                       protomem::matrix_view(batch.gradient.data(), B, D));
  };
  for (int warm = 0; warm < 2; ++warm) step();  // workspace, 16-bit copy, cuBLAS heuristics
  batch.relabel(next_label);
  next_label += B / kExemplars;
  const index_t tile_used =
      memory
          .forward(protomem::matrix_view<const float>(batch.embeddings.data(), B, D),
                   protomem::label_view(batch.labels.data(), B),
                   protomem::matrix_view(batch.gradient.data(), B, D))
          .tile_columns;
  memory.commit();
  check(cudaDeviceSynchronize(), "warm-up");
  float loss = 0;
  for (auto _ : state) {
    const auto start = std::chrono::steady_clock::now();
    loss = step();
    check(cudaStreamSynchronize(resources.stream), "step");  // commit() is asynchronous
    state.SetIterationTime(
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
  }
  state.counters["loss"] = loss;
  state.counters["tile"] = double(tile_used);
  state.counters["GEMM_TFLOPs"] = benchmark::Counter(4.0 * double(B) * double(D) * double(M),
                                                     benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(protomem::to_string(precision));
}

void BM_two_gemm_bound(benchmark::State& state) {
  const index_t B = state.range(0), D = state.range(1), M = state.range(2);
  const auto precision = static_cast<protomem::GemmPrecision>(state.range(3));
  const bool half = protomem::detail::is_16bit(precision);
  const std::size_t in = half ? 2 : 4;
  protomem::detail::DeviceArray<char> x(static_cast<std::size_t>(B * D) * in);
  protomem::detail::DeviceArray<char> w(static_cast<std::size_t>(M * D) * in);
  protomem::detail::DeviceArray<float> logits(static_cast<std::size_t>(B * M));
  protomem::detail::DeviceArray<char> p(half ? static_cast<std::size_t>(B * M) * 2 : 0);
  protomem::detail::DeviceArray<float> g(static_cast<std::size_t>(B * D));
  // Random values like the step's (tensor cores run measurably faster on zeros).
  fill(x.data(), x.size() / in, precision, 1);
  fill(w.data(), w.size() / in, precision, 2);
  if (half) fill(p.data(), p.size() / in, precision, 3);
  protomem::detail::OwnedCublas handle = protomem::detail::OwnedCublas::create();
  const cudaDataType_t type = protomem::detail::gemm_input_type(precision);
  const cublasComputeType_t compute = protomem::detail::gemm_compute_type(precision);
  const void* p_input = half ? static_cast<const void*>(p.data()) : logits.data();
  auto run = [&] {
    protomem::detail::gemm_row_major(handle.get(), B, M, D, 1.0f,
                                     protomem::detail::operand(x.data(), type, D, false),
                                     protomem::detail::operand(w.data(), type, D, true), 0.0f,
                                     logits.data(), M, compute, "bound GEMM 1");
    protomem::detail::gemm_row_major(handle.get(), B, D, M, 1.0f,
                                     protomem::detail::operand(p_input, type, M, false),
                                     protomem::detail::operand(w.data(), type, D, false), 0.0f,
                                     g.data(), D, compute, "bound GEMM 2");
  };
  cudaEvent_t start = nullptr, stop = nullptr;
  check(cudaEventCreate(&start), "event");
  check(cudaEventCreate(&stop), "event");
  for (int warm = 0; warm < 3; ++warm) run();
  check(cudaDeviceSynchronize(), "warm-up");
  for (auto _ : state) {
    check(cudaEventRecord(start), "event");
    run();
    check(cudaEventRecord(stop), "event");
    check(cudaEventSynchronize(stop), "event");
    float ms = 0;
    check(cudaEventElapsedTime(&ms, start, stop), "event");
    state.SetIterationTime(ms / 1e3);
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  state.counters["GEMM_TFLOPs"] = benchmark::Counter(4.0 * double(B) * double(D) * double(M),
                                                     benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(protomem::to_string(precision));
}

// Collects each benchmark's time for the summary.
class SummaryReporter : public benchmark::ConsoleReporter {
 public:
  void ReportRuns(const std::vector<Run>& runs) override {
    for (const Run& run : runs) {
      if (run.run_type != Run::RT_Iteration) continue;          // (no aggregates: fixed iterations)
      times[run.benchmark_name()] = run.GetAdjustedRealTime();  // milliseconds (Unit below)
    }
    ConsoleReporter::ReportRuns(runs);
  }
  std::map<std::string, double> times;
};

const std::vector<std::vector<std::int64_t>> kShapes = {
    {512, 512, std::int64_t{1} << 20},  // issue #5's target shape
    {256, 512, std::int64_t{1} << 16},  // the CPU benchmarks' shape against PyTorch (docs/performance.md)
};

}  // namespace

int main(int argc, char** argv) {
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    std::printf("SKIPPED: no CUDA device\n");
    return 77;
  }
  cudaDeviceProp properties{};
  check(cudaGetDeviceProperties(&properties, 0), "cudaGetDeviceProperties");
  for (const auto& shape : kShapes) {
    for (std::int64_t precision = 0; precision < 4; ++precision) {
      const std::vector<std::int64_t> args = {shape[0], shape[1], shape[2], precision, 0};
      benchmark::RegisterBenchmark("BM_two_gemm_bound", BM_two_gemm_bound)
          ->Args(args)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond)
          ->Iterations(20);
      benchmark::RegisterBenchmark("BM_cuda_step", BM_cuda_step)
          ->Args(args)
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond)
          ->Iterations(20);
    }
  }
  benchmark::Initialize(&argc, argv);
  if (benchmark::ReportUnrecognizedArguments(argc, argv)) return 1;
  // Tile width at the target shape, the budget raised to 1 GiB: 15,360 is half an H200's L2, 32,768
  // the default budget's width at B = 512, 524,288 two tiles.
  for (std::int64_t precision : {0, 2}) {
    for (std::int64_t tile : {4096, 15360, 32768, 131072, 524288}) {
      benchmark::RegisterBenchmark("BM_cuda_step_tile", BM_cuda_step)
          ->Args({512, 512, std::int64_t{1} << 20, precision, tile})
          ->UseManualTime()
          ->Unit(benchmark::kMillisecond)
          ->Iterations(20);
    }
  }
  SummaryReporter reporter;
  benchmark::RunSpecifiedBenchmarks(&reporter);

  std::printf(
      "\nprotomem CUDA step vs cuBLAS two-GEMM bound on %s (sm_%d%d): mean of 20 timed\n"
      "iterations after 3 warm-ups; the step is wall clock, its one host sync included\n",
      properties.name, properties.major, properties.minor);
  std::printf("%6s %5s %9s %-9s %10s %10s %7s\n", "B", "D", "M", "precision", "step ms", "bound ms",
              "ratio");
  for (const auto& shape : kShapes) {
    for (int precision = 0; precision < 4; ++precision) {
      char prefix[96];
      std::snprintf(prefix, sizeof prefix, "/%lld/%lld/%lld/%d/", static_cast<long long>(shape[0]),
                    static_cast<long long>(shape[1]), static_cast<long long>(shape[2]), precision);
      auto find = [&](const std::string& name) {
        const std::string start = name + prefix;
        auto it = reporter.times.lower_bound(start);
        return it != reporter.times.end() && it->first.compare(0, start.size(), start) == 0
                   ? it
                   : reporter.times.end();
      };
      const auto step = find("BM_cuda_step");
      const auto bound = find("BM_two_gemm_bound");
      if (step == reporter.times.end() || bound == reporter.times.end()) continue;
      std::printf("%6lld %5lld %9lld %-9s %10.3f %10.3f %7.2f\n", static_cast<long long>(shape[0]),
                  static_cast<long long>(shape[1]), static_cast<long long>(shape[2]),
                  protomem::to_string(static_cast<protomem::GemmPrecision>(precision)),
                  step->second, bound->second, step->second / bound->second);
    }
  }
  std::printf("\ntile width at B = 512, D = 512, M = 2^20 (1 GiB workspace budget)\n");
  std::printf("%-10s %9s %10s %7s\n", "precision", "T", "step ms", "ratio");
  std::vector<std::tuple<int, long long, double, double>> sweep;  // precision, T, step, ratio
  for (const auto& [name, ms] : reporter.times) {
    long long b = 0, d = 0, m = 0, t = 0;
    int precision = 0;
    if (std::sscanf(name.c_str(), "BM_cuda_step_tile/%lld/%lld/%lld/%d/%lld", &b, &d, &m,
                    &precision, &t) != 5) {
      continue;
    }
    char bound_name[96];
    std::snprintf(bound_name, sizeof bound_name, "BM_two_gemm_bound/%lld/%lld/%lld/%d/", b, d, m,
                  precision);
    const auto bound = reporter.times.lower_bound(bound_name);
    const bool found = bound != reporter.times.end() && bound->first.rfind(bound_name, 0) == 0;
    sweep.emplace_back(precision, t, ms, found ? ms / bound->second : 0.0);
  }
  std::sort(sweep.begin(), sweep.end());
  for (const auto& [precision, t, ms, ratio] : sweep) {
    std::printf("%-10s %9lld %10.3f %7.2f\n",
                protomem::to_string(static_cast<protomem::GemmPrecision>(precision)), t, ms, ratio);
  }
  return 0;
}
