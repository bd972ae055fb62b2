// The CUDA backend against the CPU backend: the same steps on the same batches give the same loss,
// gradient, mining lists and memory state, for every policy, over random runs with evictions and
// refreshes, across memory tiles, with the caller's stream and workspace, in every GEMM precision
// (looser where the inputs are rounded), under the Aging policies (weighted and expired columns);
// and invalid input fails with the CPU backend's message, leaving the memory as it was.
// The policies are constructor objects (policies/any.hpp): one PrototypeMemory<float, cuda> runs
// every built-in one, and a user-written Margin is a protomem::Error naming it. The cases that are
// not about aging pin NoAging, as they were written before AgeDecay(8) became the default; the
// aging cases and "the memory's default policies" cover AgeDecay.
#include <tuple>
#include <type_traits>

#include "support.cuh"

namespace {

using namespace cuda_test;
using protomem::Config;
using protomem::CudaResources;
using protomem::GemmPrecision;
using Cpu = protomem::PrototypeMemory<float>;
using Gpu = protomem::PrototypeMemory<float, protomem::cuda>;

struct Run {
  Config config;
  int steps = 40;
  label_t label_range = 60;
  int max_classes = 8;
  int min_exemplars = 1;
  int max_exemplars = 4;
  std::uint64_t seed = 1;
  CudaResources resources;
  Tolerance tolerance;
};

/// What a run of check_agreement() saw: the CPU's losses and gradients (the reference), and how
/// many stored columns were weighted (0 < pi < 1) and expired (pi = 0) at the steps' forwards.
struct Seen {
  std::vector<Outcome> cpu;
  long weighted = 0;
  long expired = 0;
};

template <class Memory>
void count_aged(const Memory& memory, Seen& seen) {
  for (const auto& record : memory) {
    const double log_weight = memory.aging().log_weight(memory.step_count() - record.last_written);
    if (log_weight == -std::numeric_limits<double>::infinity()) {
      ++seen.expired;
    } else if (log_weight < 0) {
      ++seen.weighted;
    }
  }
}

/// Both memories built with these policies (the types name the case; the memories hold them).
template <class Margin, class Generator, class Refresh, class Queue,
          class Mining = protomem::NoMining, class Aging = protomem::NoAging>
Seen check_agreement(const Run& run, Margin margin = Margin{}, Refresh refresh = Refresh{},
                     Mining mining = Mining{}, Aging aging = Aging{}) {
  Cpu cpu(run.config, margin, Generator{}, refresh, Queue{}, mining, aging);
  Gpu gpu(run.resources, run.config, margin, Generator{}, refresh, Queue{}, mining, aging);
  REQUIRE(gpu.margin().holds<Margin>());
  REQUIRE(gpu.generator().holds<Generator>());
  REQUIRE(gpu.refresh().holds<Refresh>());
  REQUIRE(gpu.aging().holds<Aging>());
  Seen seen;
  std::mt19937_64 rng(run.seed);
  for (int t = 0; t < run.steps; ++t) {
    INFO("step " << t);
    const Batch batch = make_batch(rng, run.config.dim, run.label_range, run.max_classes,
                                   run.min_exemplars, run.max_exemplars);
    count_aged(cpu, seen);
    const Outcome expected = forward_cpu(cpu, batch);
    const Outcome got = forward_gpu(gpu, batch);
    check_outcomes(batch, margin.scale(), expected, got, run.tolerance);
    seen.cpu.push_back(expected);
    cpu.commit();
    gpu.commit();
    check_same_state(cpu, gpu, run.tolerance);
  }
  CHECK(gpu.stats().evictions > 0);
  CHECK(gpu.stats().refreshes > 0);
  if constexpr (!std::is_same_v<Mining, protomem::NoMining>) {
    // The Mining policy saw the same lists: the same rows, counts and (to rounding) cosines.
    std::vector<std::tuple<label_t, std::vector<label_t>, std::vector<float>>> a, b;
    auto collect = [](auto& out) {
      return [&out](label_t owner, protomem::Span<const label_t> labels,
                    protomem::Span<const float> cosines) {
        out.emplace_back(owner, std::vector<label_t>(labels.begin(), labels.end()),
                         std::vector<float>(cosines.begin(), cosines.end()));
      };
    };
    cpu.mining().get<Mining>().for_each(collect(a));
    gpu.mining().get<Mining>().for_each(collect(b));
    REQUIRE(a.size() == b.size());
    CHECK(a.size() > 0);
    for (std::size_t r = 0; r < a.size(); ++r) {
      CHECK(std::get<0>(a[r]) == std::get<0>(b[r]));
      REQUIRE(std::get<1>(a[r]).size() == std::get<1>(b[r]).size());
      for (std::size_t j = 0; j < std::get<2>(a[r]).size(); ++j) {
        CHECK(std::fabs(std::get<2>(a[r])[j] - std::get<2>(b[r])[j]) <= run.tolerance.cosine);
      }
    }
  }
  return seen;
}

/// The largest difference, over the steps, between two runs' losses (relative to max(1, |loss|))
/// and gradients (relative to the largest |dL/de| of the step), in units of `tol`'s loss and
/// gradient tolerances: above 1, check_outcomes() tells the two runs apart.
double distinguishable(const std::vector<Outcome>& a, const std::vector<Outcome>& b,
                       const Tolerance& tol) {
  REQUIRE(a.size() == b.size());
  double most = 0;
  for (std::size_t t = 0; t < a.size(); ++t) {
    const double loss = std::fabs(double(a[t].loss) - double(b[t].loss)) /
                        std::max(1.0, std::fabs(double(a[t].loss)));
    most = std::max(most, loss / tol.loss);
    const double scale = std::max(max_abs(a[t].gradient), 1e-12);
    double gradient = 0;
    for (std::size_t k = 0; k < a[t].gradient.size(); ++k) {
      gradient = std::max(gradient, std::fabs(double(a[t].gradient[k]) - b[t].gradient[k]));
    }
    most = std::max(most, gradient / scale / tol.gradient);
  }
  return most;
}

Run base_run(index_t capacity, index_t dim) {
  Run run;
  run.config.capacity = capacity;
  run.config.dim = dim;
  return run;
}

}  // namespace

TEST_CASE("CUDA = CPU: CosFace, exemplar mean, replace, least recently written; mining; tiles",
          "[cuda][agreement]") {
  Run run = base_run(48, 40);
  run.config.similar_k = 3;
  // 5 columns per tile: the memory pass runs over many tiles, as it does at scale.
  run.config.workspace_bytes = 5 * 40 * sizeof(float);
  run.max_classes = 10;
  check_agreement<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                  protomem::LeastRecentlyWritten>(run, protomem::CosFace(64.0, 0.35));
}

TEST_CASE("CUDA = CPU over wide tiles: the four-column softmax path and a ragged last tile",
          "[cuda][agreement]") {
  // T = 4000 / B columns per tile (100 at B = 40, 400 at B = 10), rounded down to a multiple of 4,
  // over up to 500 used slots: whole tiles take tile_softmax's float4 path, the last one takes it
  // or the scalar path depending on its width. About 820 classes over 150 steps: evictions.
  Run run = base_run(500, 32);
  run.config.workspace_bytes = 4000 * sizeof(float);
  run.label_range = 2000;
  run.max_classes = 10;
  run.steps = 150;
  check_agreement<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                  protomem::LeastRecentlyWritten>(run, protomem::CosFace(64.0, 0.35));
}

TEST_CASE("CUDA = CPU: no margin, detached mean, momentum, first in first out",
          "[cuda][agreement]") {
  Run run = base_run(30, 33);
  run.seed = 2;
  check_agreement<protomem::NoMargin, protomem::DetachedExemplarMean, protomem::Momentum,
                  protomem::FirstInFirstOut>(run, protomem::NoMargin(30.0),
                                             protomem::Momentum(0.7));
}

TEST_CASE("CUDA = CPU: ArcFace, leave-one-out, replace, first in first out", "[cuda][agreement]") {
  Run run = base_run(40, 300);  // D > one block of threads
  run.seed = 3;
  run.min_exemplars = 2;
  run.config.similar_k = 2;
  check_agreement<protomem::ArcFace, protomem::LeaveOneOut, protomem::Replace,
                  protomem::FirstInFirstOut>(run, protomem::ArcFace(32.0, 0.5));
}

TEST_CASE("CUDA = CPU: ArcFace easy margin, exemplar mean, momentum, least recently written",
          "[cuda][agreement]") {
  Run run = base_run(36, 24);
  run.seed = 4;
  run.config.workspace_bytes = 7 * 40 * sizeof(float);
  check_agreement<protomem::ArcFace, protomem::ExemplarMean, protomem::Momentum,
                  protomem::LeastRecentlyWritten>(run, protomem::ArcFace(48.0, 0.3, true),
                                                  protomem::Momentum(0.25));
}

TEST_CASE("CUDA = CPU: ArcFace straight-through (arcface_torch's rule), exemplar mean, replace",
          "[cuda][agreement]") {
  Run run = base_run(36, 48);
  run.seed = 7;
  check_agreement<protomem::ArcFace, protomem::ExemplarMean, protomem::Replace,
                  protomem::LeastRecentlyWritten>(
      run, protomem::ArcFace(64.0, 0.5, /*easy=*/false, /*straight_through=*/true));
}

TEST_CASE("CUDA = CPU: combined margin, leave-one-out, momentum, least recently written",
          "[cuda][agreement]") {
  Run run = base_run(32, 64);
  run.seed = 5;
  run.min_exemplars = 2;
  run.max_exemplars = 5;
  check_agreement<protomem::CombinedMargin, protomem::LeaveOneOut, protomem::Momentum,
                  protomem::LeastRecentlyWritten>(
      run, protomem::CombinedMargin(32.0, 1.2, 0.3, 0.1), protomem::Momentum(0.5));
}

TEST_CASE("CUDA = CPU: combined margin, detached mean, replace, first in first out",
          "[cuda][agreement]") {
  Run run = base_run(25, 16);
  run.seed = 6;
  run.config.similar_k = 30;  // more than the memory holds: padded with -1
  check_agreement<protomem::CombinedMargin, protomem::DetachedExemplarMean, protomem::Replace,
                  protomem::FirstInFirstOut>(run, protomem::CombinedMargin(16.0, 2.0, 0.0, 0.2));
}

TEST_CASE("CUDA = CPU: doppelganger mining policy on top of Config::similar_k",
          "[cuda][agreement][mining]") {
  Run run = base_run(40, 24);
  run.seed = 13;
  run.config.similar_k = 2;  // the policy asks for 4: the step computes max(2, 4)
  run.config.workspace_bytes = 6 * 40 * sizeof(float);
  check_agreement<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                  protomem::LeastRecentlyWritten, protomem::DoppelgangerMining>(
      run, protomem::CosFace(), protomem::Replace(), protomem::DoppelgangerMining(4, 32));
}

TEST_CASE("CUDA = CPU with the memory's default policies (CosFace, AgeDecay(8), ...)",
          "[cuda][agreement][aging]") {
  // Policies omitted: each family's default, the same on both backends.
  Run run = base_run(48, 40);
  run.seed = 14;
  run.label_range = 120;
  run.max_classes = 10;
  run.config.workspace_bytes = 5 * 40 * sizeof(float);
  Cpu defaults(run.config);
  REQUIRE(defaults.aging().holds<protomem::AgeDecay>());
  REQUIRE(defaults.aging().get<protomem::AgeDecay>().half_life ==
          protomem::default_aging().half_life);
  const Cpu named(run.config, protomem::CosFace(), protomem::ExemplarMean(), protomem::Replace(),
                  protomem::LeastRecentlyWritten(), protomem::NoMining(),
                  protomem::default_aging());
  CHECK(checkpoint_bytes(defaults) == checkpoint_bytes(named));  // the same policies, stored
  const Seen seen =
      check_agreement<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                      protomem::LeastRecentlyWritten, protomem::NoMining, protomem::AgeDecay>(
          run, protomem::CosFace(), protomem::Replace(), protomem::NoMining(),
          protomem::default_aging());
  CHECK(seen.weighted > 0);
}

// ---- a user-written policy ----------------------------------------------------------------------

namespace {

/// A Margin of the user's (CosFace's rule under its own name), host-only: protomem::cpu runs it,
/// protomem::cuda has kernels for the built-in margins only.
struct ShiftedCosine {
  static constexpr const char* name = "shifted_cosine";
  double s = 16.0;
  double scale() const { return s; }
  template <class T>
  T target(T cos) const {
    return cos - T(0.1);
  }
  template <class T>
  T derivative(T) const {
    return T(1);
  }
  void save(protomem::detail::ByteWriter& out) const { out.put(s); }
  void load(protomem::detail::ByteReader& in) { s = in.get<double>("margin s"); }
};

}  // namespace

TEST_CASE("a user-written Margin on protomem::cuda is a protomem::Error naming it",
          "[cuda][policies][validation]") {
  Config config;
  config.capacity = 16;
  config.dim = 8;
  Cpu cpu(config, ShiftedCosine{});
  Gpu gpu(CudaResources{}, config, ShiftedCosine{});  // constructing it is fine; stepping is not
  CHECK(std::string(gpu.margin().name()) == "shifted_cosine");
  std::mt19937_64 rng(41);
  const Batch batch = make_batch(rng, config.dim, 30, 4, 1, 3);
  const Outcome on_cpu = forward_cpu(cpu, batch);
  CHECK(std::isfinite(on_cpu.loss));
  const std::string before = checkpoint_bytes(gpu);
  CHECK_THROWS_AS(forward_gpu(gpu, batch), protomem::Error);
  CHECK_THROWS_WITH(forward_gpu(gpu, batch),
                    Catch::Matchers::Contains("protomem::cuda") &&
                        Catch::Matchers::Contains("margin policy is 'shifted_cosine'"));
  CHECK_FALSE(gpu.pending());
  CHECK(gpu.size() == 0);
  CHECK(checkpoint_bytes(gpu) == before);
  // The same memory steps once it holds a built-in margin.
  gpu.set_margin(protomem::CosFace(16.0, 0.1));
  Cpu reference(config, protomem::CosFace(16.0, 0.1));
  check_outcomes(batch, 16.0, forward_cpu(reference, batch), forward_gpu(gpu, batch),
                 Tolerance{});
}

// ---- aging --------------------------------------------------------------------------------------

namespace {

/// The CPU's outcomes of check_agreement()'s batches (the same run and seed) under `unweighted`,
/// a policy that expires the same prototypes as the run's but weighs every other one 1: what a
/// CUDA backend that ignored StepInput::column_bias (and honoured `excluded`) would compute.
template <class Margin, class Generator, class Refresh, class Queue, class Unweighted>
std::vector<Outcome> unweighted_outcomes(const Run& run, Margin margin, Refresh refresh,
                                         Unweighted unweighted) {
  Cpu cpu(run.config, margin, Generator{}, refresh, Queue{}, unweighted);
  std::vector<Outcome> out;
  std::mt19937_64 rng(run.seed);
  for (int t = 0; t < run.steps; ++t) {
    const Batch batch = make_batch(rng, run.config.dim, run.label_range, run.max_classes,
                                   run.min_exemplars, run.max_exemplars);
    out.push_back(forward_cpu(cpu, batch));
    cpu.commit();
  }
  return out;
}

}  // namespace

TEST_CASE(
    "CUDA = CPU under AgeDecay with an age bound: weighted and expired columns, tiles, mining",
    "[cuda][agreement][aging]") {
  // 48 slots for 200 labels: slots are rewritten every ten steps or so, so columns of age 1 to 3
  // count 2^(-a / 1.5) times and older ones have expired (no column, no mining candidate).
  Run run = base_run(48, 40);
  run.seed = 31;
  run.config.similar_k = 3;
  run.config.workspace_bytes = 5 * 40 * sizeof(float);  // many tiles
  run.label_range = 200;
  run.max_classes = 10;
  const Seen seen =
      check_agreement<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                      protomem::LeastRecentlyWritten, protomem::NoMining, protomem::AgeDecay>(
          run, protomem::CosFace(64.0, 0.35), protomem::Replace(), protomem::NoMining(),
          protomem::AgeDecay(1.5, 3));
  CHECK(seen.weighted > 0);
  CHECK(seen.expired > 0);
  // This test can fail: MaxAge(3) expires the same prototypes and weighs the others 1, which is
  // what a CUDA backend that ignored the log-weights would compute; it is far from the CPU's.
  const std::vector<Outcome> unweighted =
      unweighted_outcomes<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                          protomem::LeastRecentlyWritten>(run, protomem::CosFace(64.0, 0.35),
                                                          protomem::Replace(), protomem::MaxAge(3));
  CHECK(distinguishable(seen.cpu, unweighted, run.tolerance) > 10);
}

TEST_CASE("CUDA = CPU under MaxAge(1): expired columns, and refreshes of expired prototypes",
          "[cuda][agreement][aging]") {
  // Every weight is 1 or 0: the column bias is all zeros, the expired slots are excluded, and a
  // class that comes back to an expired slot is written without the Momentum blend.
  Run run = base_run(30, 33);
  run.seed = 32;
  run.label_range = 60;
  const Seen seen =
      check_agreement<protomem::NoMargin, protomem::DetachedExemplarMean, protomem::Momentum,
                      protomem::FirstInFirstOut, protomem::NoMining, protomem::MaxAge>(
          run, protomem::NoMargin(30.0), protomem::Momentum(0.7), protomem::NoMining(),
          protomem::MaxAge(1));
  CHECK(seen.expired > 0);
}

TEST_CASE("CUDA = CPU under AgeDecay over wide tiles (the four-column path); the weights matter",
          "[cuda][agreement][aging]") {
  // tile_softmax's four-column path reads the shifts four at a time (as in the wide-tile case
  // above: T = 4000 / B columns, a multiple of 4, over up to 500 used slots).
  Run run = base_run(500, 32);
  run.seed = 33;
  run.config.workspace_bytes = 4000 * sizeof(float);
  run.label_range = 2000;
  run.max_classes = 10;
  run.steps = 150;
  const protomem::CosFace margin(64.0, 0.35);
  const protomem::AgeDecay aging(20.0);  // no age bound: nothing expires, every column weighs
  const Seen seen =
      check_agreement<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                      protomem::LeastRecentlyWritten, protomem::NoMining, protomem::AgeDecay>(
          run, margin, protomem::Replace(), protomem::NoMining(), aging);
  CHECK(seen.weighted > 0);
  CHECK(seen.expired == 0);
  // This test can fail: a CUDA backend that ignored the log-weights would give the unaged
  // memory's losses and gradients (nothing expires here), far outside the tolerance of the aged
  // ones.
  const std::vector<Outcome> unaged =
      unweighted_outcomes<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                          protomem::LeastRecentlyWritten>(run, margin, protomem::Replace(),
                                                          protomem::NoAging());
  CHECK(distinguishable(seen.cpu, unaged, run.tolerance) > 10);
}

TEST_CASE("CUDA = CPU under AgeDecay in the 16-bit GEMM precisions (P rounded after the shift)",
          "[cuda][agreement][precision][aging]") {
  // The run of "tensor-core GEMM precisions stay close to the CPU" below, aged.
  for (GemmPrecision precision : {GemmPrecision::bf16, GemmPrecision::fp16}) {
    INFO("precision " << protomem::to_string(precision));
    Run run = base_run(64, 128);
    run.seed = 8;
    run.steps = 25;
    run.label_range = 150;
    run.config.workspace_bytes = 16 * 40 * sizeof(float);
    run.resources.precision = precision;
    run.tolerance.loss = 3e-2;
    run.tolerance.gradient = 6e-2;
    const Seen seen =
        check_agreement<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                        protomem::LeastRecentlyWritten, protomem::NoMining, protomem::AgeDecay>(
            run, protomem::CosFace(16.0, 0.2), protomem::Replace(), protomem::NoMining(),
            protomem::AgeDecay(3.0, 12));
    CHECK(seen.weighted > 0);
  }
}

TEST_CASE("the two-phase workspace query covers an aged step (log-weights, expired slots)",
          "[cuda][resources][aging]") {
  Config config;
  config.capacity = 64;
  config.dim = 16;
  const protomem::AgeDecay aging(1.5, 3);
  Cpu cpu(config, protomem::CosFace(), protomem::ExemplarMean(), protomem::Replace(),
          protomem::LeastRecentlyWritten(), protomem::NoMining(), aging);
  Gpu gpu(CudaResources{}, config, protomem::CosFace(), protomem::ExemplarMean(),
          protomem::Replace(), protomem::LeastRecentlyWritten(), protomem::NoMining(), aging);
  // A full memory at step 10: slot r written at step 10 - (r % 8), so ages 0 to 7: ages 0 to 3
  // count 2^(-a / 1.5) times, ages 4 to 7 have expired (32 excluded slots besides the batch's).
  std::mt19937_64 rng(34);
  std::normal_distribution<float> normal;
  std::vector<label_t> labels(64);
  std::vector<float> prototypes(64 * 16);
  std::vector<std::uint64_t> written(64);
  for (index_t r = 0; r < 64; ++r) {
    labels[static_cast<std::size_t>(r)] = 1000 + r;
    written[static_cast<std::size_t>(r)] = 10 - static_cast<std::uint64_t>(r % 8);
    float* row = prototypes.data() + r * 16;
    double norm = 0;
    for (index_t k = 0; k < 16; ++k) {
      row[k] = normal(rng);
      norm += double(row[k]) * row[k];
    }
    for (index_t k = 0; k < 16; ++k) row[k] = float(row[k] / std::sqrt(norm));
  }
  cpu.assign({labels.data(), 64}, protomem::matrix_view(prototypes.data(), 64, 16),
             {written.data(), 64}, 10);
  gpu.assign({labels.data(), 64}, protomem::matrix_view(prototypes.data(), 64, 16),
             {written.data(), 64}, 10);

  // Ask for the largest step (64 rows, 16 classes), lend exactly that, and take such a step.
  const std::size_t bytes = protomem::workspace_size(gpu, /*rows=*/64, /*classes=*/16);
  protomem::detail::DeviceArray<char> workspace(bytes);
  CudaResources resources;
  resources.workspace = workspace.data();
  resources.workspace_bytes = bytes;
  gpu.set_resources(resources);
  std::vector<std::pair<label_t, int>> counted;
  for (label_t c = 0; c < 16; ++c) counted.emplace_back(c, 4);
  const Batch batch =
      test_support::make_batch<float>(counted, config.dim, rng, {0.6f, 0.5, 3.0, 0, true});
  REQUIRE(batch.rows() == 64);
  const Outcome expected = forward_cpu(cpu, batch);
  const Outcome got = forward_gpu(gpu, batch);
  check_outcomes(batch, cpu.margin().scale(), expected, got, Tolerance{});
  INFO("lent " << bytes << " bytes, the step needed " << got.result.workspace_bytes);
  CHECK(got.result.workspace_bytes <= bytes);
  // ... which an unaged memory's query would not have covered (the test can fail).
  Gpu unaged(CudaResources{}, config, protomem::NoAging());
  CHECK(got.result.workspace_bytes > protomem::workspace_size(unaged, 64, 16));
}

TEST_CASE("CUDA = CPU on the caller's stream and workspace, switching streams between steps",
          "[cuda][resources]") {
  cudaStream_t first = nullptr, second = nullptr;
  REQUIRE(cudaStreamCreateWithFlags(&first, cudaStreamNonBlocking) == cudaSuccess);
  REQUIRE(cudaStreamCreateWithFlags(&second, cudaStreamNonBlocking) == cudaSuccess);
  cublasHandle_t handle = nullptr;
  REQUIRE(cublasCreate(&handle) == CUBLAS_STATUS_SUCCESS);
  {
    Config config;
    config.capacity = 40;
    config.dim = 32;
    config.workspace_bytes = 9 * 64 * sizeof(float);
    CudaResources resources;
    resources.stream = first;
    resources.cublas = handle;
    Cpu cpu(config, protomem::NoAging());
    Gpu gpu(resources, config, protomem::NoAging());
    // Two-phase workspace: ask the size once for the largest batch, allocate, lend it.
    const std::size_t bytes = protomem::workspace_size(gpu, /*rows=*/64, /*classes=*/16);
    CHECK(bytes > 0);
    protomem::detail::DeviceArray<char> workspace(bytes);
    resources.workspace = workspace.data();
    resources.workspace_bytes = bytes;
    gpu.set_resources(resources);
    CHECK(gpu.resources().workspace == workspace.data());

    std::mt19937_64 rng(7);
    for (int t = 0; t < 30; ++t) {
      INFO("step " << t);
      if (t % 10 == 5) {  // the training loop's current stream changes
        resources.stream = resources.stream == first ? second : first;
        gpu.set_resources(resources);
      }
      const Batch batch = make_batch(rng, config.dim, 70, 16, 1, 4);
      const Outcome expected = forward_cpu(cpu, batch);
      const Outcome got = forward_gpu(gpu, batch);
      check_outcomes(batch, cpu.margin().scale(), expected, got, Tolerance{});
      cpu.commit();
      gpu.commit();
      check_same_state(cpu, gpu, Tolerance{});
    }
    // The handle's stream is the caller's own again after every step.
    cudaStream_t handle_stream = first;
    REQUIRE(cublasGetStream(handle, &handle_stream) == CUBLAS_STATUS_SUCCESS);
    CHECK(handle_stream == nullptr);
  }
  cublasDestroy(handle);
  cudaStreamDestroy(first);
  cudaStreamDestroy(second);
}

TEST_CASE("tensor-core GEMM precisions stay close to the CPU; the stored prototypes do not move",
          "[cuda][precision]") {
  for (GemmPrecision precision :
       {GemmPrecision::tf32, GemmPrecision::bf16, GemmPrecision::fp16, GemmPrecision::fp32}) {
    INFO("precision " << protomem::to_string(precision));
    Run run = base_run(64, 128);
    run.seed = 8;
    run.steps = 25;
    run.label_range = 150;
    run.config.workspace_bytes = 16 * 40 * sizeof(float);
    run.resources.precision = precision;
    if (precision != GemmPrecision::fp32) {
      // Rounded GEMM inputs move the cosines by about 1e-3 (bf16) and the logits by s times that;
      // the prototypes are made in fp32 and must agree as tightly as ever.
      run.tolerance.loss = 3e-2;
      run.tolerance.gradient = 6e-2;
    }
    check_agreement<protomem::CosFace, protomem::ExemplarMean, protomem::Replace,
                    protomem::LeastRecentlyWritten>(run, protomem::CosFace(16.0, 0.2));
  }
}

TEST_CASE("switching precision mid-run keeps the 16-bit copy of the memory current",
          "[cuda][precision]") {
  Config config;
  config.capacity = 30;
  config.dim = 16;
  Cpu cpu(config, protomem::CosFace(8.0, 0.2), protomem::NoAging());
  Gpu gpu(CudaResources{}, config, protomem::CosFace(8.0, 0.2), protomem::NoAging());
  std::mt19937_64 rng(9);
  const GemmPrecision order[] = {GemmPrecision::bf16, GemmPrecision::fp32, GemmPrecision::bf16,
                                 GemmPrecision::fp16, GemmPrecision::fp32};
  Tolerance loose;
  loose.loss = 3e-2;
  loose.gradient = 6e-2;
  for (int t = 0; t < 40; ++t) {
    CudaResources resources = gpu.resources();
    resources.precision = order[(t / 8) % 5];
    gpu.set_resources(resources);
    const Batch batch = make_batch(rng, config.dim, 50, 6, 1, 3);
    const Outcome expected = forward_cpu(cpu, batch);
    const Outcome got = forward_gpu(gpu, batch);
    check_outcomes(batch, cpu.margin().scale(), expected, got, loose);
    cpu.commit();
    gpu.commit();
  }
  check_same_state(cpu, gpu, Tolerance{});
}

TEST_CASE("reading the memory after many unread steps copies it whole and correctly",
          "[cuda][mirror]") {
  Config config;
  config.capacity = 20;
  config.dim = 8;
  Cpu cpu(config, protomem::NoAging());
  Gpu gpu(CudaResources{}, config, protomem::NoAging());
  std::mt19937_64 rng(10);
  for (int t = 0; t < 60; ++t) {  // far more writes than slots, no read in between
    const Batch batch = make_batch(rng, config.dim, 80, 6, 1, 3);
    DeviceBatch device(batch);
    std::vector<float> g(batch.embeddings.size());
    cpu.step(protomem::matrix_view<const float>(batch.embeddings.data(), batch.rows(), batch.dim),
             protomem::label_view(batch.labels.data(), batch.rows()),
             protomem::matrix_view(g.data(), batch.rows(), batch.dim));
    gpu.step(protomem::matrix_view<const float>(device.embeddings.data(), batch.rows(), batch.dim),
             protomem::label_view(batch.labels.data(), batch.rows()),
             protomem::matrix_view(device.gradient.data(), batch.rows(), batch.dim));
  }
  check_same_state(cpu, gpu, Tolerance{});
  gpu.clear();
  CHECK(gpu.size() == 0);
  CHECK(gpu.begin() == gpu.end());
}

// ---- invalid input ------------------------------------------------------------------------------

namespace {

template <class Cpu, class Gpu>
void check_same_error(Cpu& cpu, Gpu& gpu, const Batch& batch) {
  std::string cpu_message, gpu_message;
  const std::string before = checkpoint_bytes(gpu);
  try {
    forward_cpu(cpu, batch);
  } catch (const protomem::Error& e) {
    cpu_message = e.what();
  }
  try {
    forward_gpu(gpu, batch);
  } catch (const protomem::Error& e) {
    gpu_message = e.what();
  }
  INFO("cpu: " << cpu_message);
  INFO("gpu: " << gpu_message);
  CHECK_FALSE(cpu_message.empty());
  CHECK(gpu_message == cpu_message);
  CHECK_FALSE(gpu.pending());
  CHECK(checkpoint_bytes(gpu) == before);
}

template <class Cpu, class Gpu>
void warm_up(Cpu& cpu, Gpu& gpu, std::mt19937_64& rng, index_t dim, int min_exemplars) {
  for (int t = 0; t < 5; ++t) {
    const Batch batch = make_batch(rng, dim, 30, 5, min_exemplars, 3);
    forward_cpu(cpu, batch);
    forward_gpu(gpu, batch);
    cpu.commit();
    gpu.commit();
  }
}

}  // namespace

TEST_CASE("invalid embeddings fail on the GPU with the CPU's message and change nothing",
          "[cuda][validation]") {
  Config config;
  config.capacity = 16;
  config.dim = 12;
  Cpu cpu(config, protomem::NoAging());
  Gpu gpu(CudaResources{}, config, protomem::NoAging());
  std::mt19937_64 rng(11);
  warm_up(cpu, gpu, rng, config.dim, 1);
  // The sections below spoil rows up to 5: draw until the batch has them (a short batch would
  // leave the spoiled values outside it, and nothing to detect).
  Batch batch;
  do batch = make_batch(rng, config.dim, 30, 4, 2, 3);
  while (batch.rows() < 6);

  SECTION("a NaN (the first invalid row wins, as on the CPU)") {
    batch.embeddings[5 * 12 + 7] = std::numeric_limits<float>::infinity();
    batch.embeddings[3 * 12 + 2] = std::nanf("");
    check_same_error(cpu, gpu, batch);
  }
  SECTION("a zero row") {
    std::fill(batch.embeddings.begin() + 2 * 12, batch.embeddings.begin() + 3 * 12, 0.0f);
    check_same_error(cpu, gpu, batch);
  }
  SECTION("a row too small to normalise in float") {
    std::fill(batch.embeddings.begin() + 1 * 12, batch.embeddings.begin() + 2 * 12,
              1e-44f);  // a float denormal
    check_same_error(cpu, gpu, batch);
  }
  SECTION("exemplars that sum to zero") {
    Batch opposite;
    opposite.dim = 12;
    opposite.labels = {4, 4, 9};
    for (int j = 0; j < 12; ++j) opposite.embeddings.push_back(float(j) - 5.5f);
    for (int j = 0; j < 12; ++j) opposite.embeddings.push_back(5.5f - float(j));
    for (int j = 0; j < 12; ++j) opposite.embeddings.push_back(1.0f);
    check_same_error(cpu, gpu, opposite);
  }
  SECTION("a failed step leaves the caller's buffer alone, even as its own gradient buffer") {
    batch.embeddings[4 * 12 + 1] = std::nanf("");
    DeviceBatch device(batch);
    const auto B = batch.rows();
    CHECK_THROWS_WITH(
        gpu.forward(protomem::matrix_view<const float>(device.embeddings.data(), B, 12),
                    protomem::label_view(batch.labels.data(), B),
                    protomem::matrix_view(device.embeddings.data(), B, 12)),
        Catch::Matchers::Contains("embeddings(4, 1) = nan is not finite"));
    std::vector<float> after(batch.embeddings.size());
    REQUIRE(cudaMemcpy(after.data(), device.embeddings.data(), after.size() * sizeof(float),
                       cudaMemcpyDeviceToHost) == cudaSuccess);
    for (std::size_t t = 0; t < after.size(); ++t) {
      if (std::isnan(batch.embeddings[t])) {
        CHECK(std::isnan(after[t]));
      } else {
        CHECK(after[t] == batch.embeddings[t]);
      }
    }
  }
  SECTION("host memory where device memory is expected") {
    std::vector<float> gradient(batch.embeddings.size());
    CHECK_THROWS_WITH(
        gpu.forward(protomem::matrix_view<const float>(batch.embeddings.data(), batch.rows(), 12),
                    protomem::label_view(batch.labels.data(), batch.rows()),
                    protomem::matrix_view(gradient.data(), batch.rows(), 12)),
        Catch::Matchers::Contains("is not device memory"));
    CHECK_FALSE(gpu.pending());
  }
}

TEST_CASE("a leave-one-out prototype that is undefined fails as on the CPU", "[cuda][validation]") {
  Config config;
  config.capacity = 16;
  config.dim = 6;
  Cpu cpu(config, protomem::LeaveOneOut(), protomem::NoAging());
  Gpu gpu(CudaResources{}, config, protomem::LeaveOneOut(), protomem::NoAging());
  std::mt19937_64 rng(12);
  warm_up(cpu, gpu, rng, config.dim, 2);
  // Class 3: a, b, -b: the others of sample 1 (label 3) are b + (-b) = 0.
  Batch batch;
  batch.dim = 6;
  batch.labels = {8, 3, 3, 3, 8};
  const float rows[5][6] = {{1, 2, 3, 4, 5, 6},
                            {1, 0, 0, 1, 0, 0},
                            {0, 1, 2, 0, 1, 1},
                            {0, -1, -2, 0, -1, -1},
                            {6, 5, 4, 3, 2, 1}};
  for (const auto& row : rows) batch.embeddings.insert(batch.embeddings.end(), row, row + 6);
  check_same_error(cpu, gpu, batch);
}

TEST_CASE("CUDA = CPU on exactly tied cosines: the smaller slot first",
          "[cuda][agreement][mining]") {
  // Duplicate prototypes (assign()) give exactly equal cosines: e = (0.6, 0.8, 0, 0) has cosine 0.8
  // with e_2 (slots 0 and 2) and 0.6 with e_1 (slots 1 and 3); products with 0 and 1 are exact in
  // every GEMM precision. docs/algorithm.md: on equal cosines the smaller slot ranks first.
  Config config;
  config.capacity = 5;
  config.dim = 4;
  config.similar_k = 4;
  Cpu cpu(config, protomem::NoAging());
  Gpu gpu(CudaResources{}, config, protomem::NoAging());
  const std::vector<label_t> labels{20, 21, 22, 23};
  const std::vector<float> prototypes{0, 1, 0, 0, 1, 0, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0};
  const std::vector<std::uint64_t> written(4, 0);
  cpu.assign({labels.data(), 4}, protomem::matrix_view(prototypes.data(), 4, 4),
             {written.data(), 4}, 0);
  gpu.assign({labels.data(), 4}, protomem::matrix_view(prototypes.data(), 4, 4),
             {written.data(), 4}, 0);
  Batch batch;
  batch.dim = 4;
  batch.stride = 4;
  batch.labels = {99};
  batch.embeddings = {0.6f, 0.8f, 0.0f, 0.0f};
  const Outcome expected = forward_cpu(cpu, batch);
  const Outcome got = forward_gpu(gpu, batch);
  CHECK(expected.result.similar == std::vector<label_t>{20, 22, 21, 23});
  CHECK(got.result.similar == expected.result.similar);
}
