// Checkpoints across devices: a checkpoint written from the GPU loads on the CPU (byte for byte the
// same state) and back; a loaded GPU memory continues exactly as the memory it was saved from; the
// copy_state() helper moves a memory between CPU and GPU; prototypes read before the first
// step after a load are the loaded ones; and an aged memory's policy parameters and ages make the
// round trip GPU -> CPU -> GPU.
#include "support.cuh"

namespace {

using namespace cuda_test;
using protomem::Config;
using protomem::CudaResources;

using Cpu = protomem::PrototypeMemory<float>;
using Gpu = protomem::PrototypeMemory<float, protomem::cuda>;
constexpr index_t kDim = 20;

Config config() {
  Config c;
  c.capacity = 24;
  c.dim = kDim;
  c.similar_k = 2;
  return c;
}
// The policies of tests/test_checkpoint.cpp: every one with state (and NoAging, the default
// aging when these cases were written; the aged memories are below).
Cpu make_cpu() {
  return Cpu(config(), protomem::ArcFace(32.0, 0.4), protomem::Momentum(0.3), protomem::NoAging());
}
Gpu make_gpu() {
  return Gpu(CudaResources{}, config(), protomem::ArcFace(32.0, 0.4), protomem::Momentum(0.3),
             protomem::NoAging());
}

template <class Memory>
void load_bytes(Memory& memory, const std::string& bytes) {
  std::istringstream in(bytes);
  memory.load(in);
}

template <class Memory>
std::vector<Outcome> run_gpu(Memory& memory, std::mt19937_64& rng, int steps) {
  std::vector<Outcome> outcomes;
  for (int t = 0; t < steps; ++t) {
    const Batch batch = make_batch(rng, kDim, 50, 6, 1, 3);
    outcomes.push_back(forward_gpu(memory, batch));
    memory.commit();
  }
  return outcomes;
}

}  // namespace

TEST_CASE("a GPU checkpoint loads on the CPU, and the CPU's loads back on the GPU",
          "[cuda][checkpoint]") {
  Gpu gpu = make_gpu();
  std::mt19937_64 rng(21);
  run_gpu(gpu, rng, 30);
  REQUIRE(gpu.size() == 24);
  const std::string from_gpu = checkpoint_bytes(gpu);

  // GPU -> CPU: the same logical state, byte for byte.
  Cpu cpu = make_cpu();
  load_bytes(cpu, from_gpu);
  CHECK(checkpoint_bytes(cpu) == from_gpu);
  check_same_state(cpu, gpu, Tolerance{0, 0, 0, 0});

  // Both continue on the same batches and agree as any CPU/GPU pair does.
  for (int t = 0; t < 15; ++t) {
    INFO("step " << t << " after the load");
    const Batch batch = make_batch(rng, kDim, 50, 6, 1, 3);
    const Outcome expected = forward_cpu(cpu, batch);
    const Outcome got = forward_gpu(gpu, batch);
    check_outcomes(batch, cpu.margin().scale(), expected, got, Tolerance{});
    cpu.commit();
    gpu.commit();
    check_same_state(cpu, gpu, Tolerance{});
  }

  // CPU -> GPU: a fresh GPU memory holds exactly the CPU's state, readable before any step.
  const std::string from_cpu = checkpoint_bytes(cpu);
  Gpu back = make_gpu();
  load_bytes(back, from_cpu);
  CHECK(checkpoint_bytes(back) == from_cpu);
  check_same_state(cpu, back, Tolerance{0, 0, 0, 0});
  // ... and steps from it as the CPU does (the first step uploads the loaded prototypes).
  for (int t = 0; t < 10; ++t) {
    const Batch batch = make_batch(rng, kDim, 50, 6, 1, 3);
    check_outcomes(batch, cpu.margin().scale(), forward_cpu(cpu, batch), forward_gpu(back, batch),
                   Tolerance{});
    cpu.commit();
    back.commit();
    check_same_state(cpu, back, Tolerance{});
  }
}

TEST_CASE("a GPU memory loaded from a GPU checkpoint continues bit for bit", "[cuda][checkpoint]") {
  Gpu original = make_gpu();
  std::mt19937_64 rng(22);
  run_gpu(original, rng, 20);
  Gpu restored = make_gpu();
  load_bytes(restored, checkpoint_bytes(original));

  std::mt19937_64 rng_a(23), rng_b(23);
  const auto a = run_gpu(original, rng_a, 12);
  const auto b = run_gpu(restored, rng_b, 12);
  for (std::size_t t = 0; t < a.size(); ++t) {
    INFO("step " << t);
    CHECK(a[t].loss == b[t].loss);
    CHECK(a[t].gradient == b[t].gradient);
    CHECK(a[t].result.similar == b[t].result.similar);
  }
  CHECK(checkpoint_bytes(original) == checkpoint_bytes(restored));
}

TEST_CASE("copy_state moves a memory between CPU and GPU", "[cuda][checkpoint]") {
  Cpu cpu = make_cpu();
  std::mt19937_64 rng(24);
  for (int t = 0; t < 12; ++t) {
    const Batch batch = make_batch(rng, kDim, 40, 5, 1, 3);
    std::vector<float> g(batch.embeddings.size());
    cpu.step(protomem::matrix_view<const float>(batch.embeddings.data(), batch.rows(), kDim),
             protomem::label_view(batch.labels.data(), batch.rows()),
             protomem::matrix_view(g.data(), batch.rows(), kDim));
  }
  Gpu gpu = make_gpu();
  protomem::copy_state(cpu, gpu);
  CHECK(checkpoint_bytes(gpu) == checkpoint_bytes(cpu));
  Cpu again = make_cpu();
  protomem::copy_state(gpu, again);
  CHECK(checkpoint_bytes(again) == checkpoint_bytes(cpu));

  // A mismatch (another dimension) is refused and leaves the target as it was.
  Config other = config();
  other.dim = kDim + 1;
  Gpu wrong(CudaResources{}, other, protomem::ArcFace(32.0, 0.4), protomem::Momentum(0.3),
            protomem::NoAging());
  CHECK_THROWS_AS(protomem::copy_state(cpu, wrong), protomem::Error);
  CHECK(wrong.size() == 0);
}

namespace {

// The memories a checkpoint is loaded into start with the default AgeDecay (half-life 64, no age
// bound): the loaded ones must be the saved memory's.
Cpu make_aged_cpu(protomem::AgeDecay aging = protomem::AgeDecay()) {
  return Cpu(config(), protomem::ArcFace(32.0, 0.4), protomem::ExemplarMean(),
             protomem::Momentum(0.3), protomem::LeastRecentlyWritten(), protomem::NoMining(),
             aging);
}
Gpu make_aged_gpu(protomem::AgeDecay aging = protomem::AgeDecay()) {
  return Gpu(CudaResources{}, config(), protomem::ArcFace(32.0, 0.4), protomem::ExemplarMean(),
             protomem::Momentum(0.3), protomem::LeastRecentlyWritten(), protomem::NoMining(),
             aging);
}

template <class Memory>
void check_aging_parameters(const Memory& memory, double half_life, std::uint64_t max_age) {
  REQUIRE(memory.aging().template holds<protomem::AgeDecay>());
  CHECK(memory.aging().template get<protomem::AgeDecay>().half_life == half_life);
  CHECK(memory.aging().template get<protomem::AgeDecay>().max_age == max_age);
}

}  // namespace

TEST_CASE("an aged memory makes the round trip GPU -> CPU -> GPU with its policy and ages",
          "[cuda][checkpoint][aging]") {
  // 24 slots for 80 labels: evictions, weighted columns (ages 1 to 5) and expired ones (> 5).
  const protomem::AgeDecay aging(2.5, 5);
  Gpu gpu = make_aged_gpu(aging);
  std::mt19937_64 rng(25);
  for (int t = 0; t < 30; ++t) {
    const Batch batch = make_batch(rng, kDim, 80, 6, 1, 3);
    forward_gpu(gpu, batch);
    gpu.commit();
  }
  REQUIRE(gpu.size() == 24);
  int weighted = 0, expired = 0;
  for (const auto& record : gpu) {
    const std::uint64_t age = gpu.step_count() - record.last_written;
    weighted += age >= 1 && age <= 5;
    expired += age > 5;
  }
  CHECK(weighted > 0);
  CHECK(expired > 0);
  const std::string from_gpu = checkpoint_bytes(gpu);

  // GPU -> CPU: the same state and AgeDecay(2.5, 5), byte for byte.
  Cpu cpu = make_aged_cpu();
  load_bytes(cpu, from_gpu);
  CHECK(checkpoint_bytes(cpu) == from_gpu);
  check_aging_parameters(cpu, 2.5, 5);
  check_same_state(cpu, gpu, Tolerance{0, 0, 0, 0});

  // CPU -> GPU: a fresh GPU memory takes them back.
  Gpu back = make_aged_gpu();
  load_bytes(back, checkpoint_bytes(cpu));
  CHECK(checkpoint_bytes(back) == from_gpu);
  check_aging_parameters(back, 2.5, 5);
  check_same_state(cpu, back, Tolerance{0, 0, 0, 0});

  // All three continue alike: the CPU and both GPUs agree as any CPU/GPU pair does, and the
  // reloaded GPU memory steps exactly as the one it was saved from.
  for (int t = 0; t < 15; ++t) {
    INFO("step " << t << " after the round trip");
    const Batch batch = make_batch(rng, kDim, 80, 6, 1, 3);
    const Outcome expected = forward_cpu(cpu, batch);
    const Outcome got = forward_gpu(gpu, batch);
    const Outcome again = forward_gpu(back, batch);
    check_outcomes(batch, cpu.margin().scale(), expected, got, Tolerance{});
    CHECK(again.loss == got.loss);
    CHECK(again.gradient == got.gradient);
    cpu.commit();
    gpu.commit();
    back.commit();
    check_same_state(cpu, gpu, Tolerance{});
  }
  CHECK(checkpoint_bytes(back) == checkpoint_bytes(gpu));
}
