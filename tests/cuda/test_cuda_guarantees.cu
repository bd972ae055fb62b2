// The strong guarantee on the GPU (docs/reliability.md): a commit whose device write fails
// (injected through the backend's test hook, CudaBackend::fail_next_write_for_testing) throws,
// leaves the memory exactly as it was with the update still pending, and a retried commit writes it
// once; a forward that throws keeps the pending update; a step whose loss is not finite throws and
// leaves the caller's gradient untouched. Each is checked against a GPU memory that never failed.
// The memory runs the built-in policies only on the GPU (a user-written margin is refused before
// the device runs), so a margin that breaks its contract is taken to the backend's forward itself.
#include "support.cuh"

namespace {

using namespace cuda_test;
using protomem::Config;
using protomem::CudaResources;

using Gpu = protomem::PrototypeMemory<float, protomem::cuda>;
constexpr index_t kDim = 16;

Gpu make_gpu() {
  Config c;
  c.capacity = 12;  // small: the runs below evict and refresh
  c.dim = kDim;
  // NoAging: as these cases were written (the default aging became AgeDecay(8) in issue #21).
  return Gpu(CudaResources{}, c, protomem::CosFace(32.0, 0.3), protomem::Momentum(0.4),
             protomem::NoAging());
}

}  // namespace

// Outside the anonymous namespace: nvcc warns about its unreferenced members there.
namespace cuda_guarantees {
// A margin that breaks its contract between the points PrototypeMemory probes (see
// tests/test_guarantees.cpp): the last line of defence must catch its NaN loss on the device too.
struct NanTargetMargin {
  static constexpr const char* name = "nan-target";
  double scale() const { return 16.0; }
  template <class T>
  PROTOMEM_HOST_DEVICE T target(T cos) const {
    return cos > T(0.6) && cos < T(0.99) ? T(NAN) : cos;
  }
  template <class T>
  PROTOMEM_HOST_DEVICE T derivative(T) const {
    return T(1);
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

}  // namespace cuda_guarantees

TEST_CASE("a failed device write changes nothing, and a retried commit writes once",
          "[cuda][guarantees]") {
  Gpu failing = make_gpu(), reference = make_gpu();
  std::mt19937_64 rng(31);
  for (int t = 0; t < 12; ++t) {
    const Batch batch = make_batch(rng, kDim, 30, 4, 1, 3);
    forward_gpu(failing, batch);
    forward_gpu(reference, batch);
    reference.commit();
    if (t % 3 == 2) {
      const std::string before = checkpoint_bytes(failing);
      const auto steps = failing.step_count();
      failing.backend().fail_next_write_for_testing(cudaErrorLaunchOutOfResources);
      CHECK_THROWS_WITH(failing.commit(), Catch::Contains("nothing was written"));
      CHECK(failing.pending());
      CHECK(failing.step_count() == steps);
      CHECK(checkpoint_bytes(failing) == before);
    }
    failing.commit();  // the retry (or the plain commit)
    CHECK_FALSE(failing.pending());
    CHECK(checkpoint_bytes(failing) == checkpoint_bytes(reference));
  }
  CHECK(failing.step_count() == 12);
}

TEST_CASE("a forward that throws on the GPU keeps the pending update", "[cuda][guarantees]") {
  Gpu memory = make_gpu(), reference = make_gpu();
  std::mt19937_64 rng(32);
  const Batch batch = make_batch(rng, kDim, 30, 4, 2, 3);
  forward_gpu(memory, batch);
  // Exemplars that sum to zero: the device generator fails after this forward began its own
  // fresh prototypes.
  Batch bad = make_batch(rng, kDim, 30, 1, 2, 2);
  for (index_t k = 0; k < kDim; ++k) bad.embeddings[kDim + k] = -bad.embeddings[k];
  DeviceBatch device(bad);
  std::vector<float> sentinel(bad.embeddings.size(), -7.0f);
  protomem::detail::cuda_check(cudaMemcpy(device.gradient.data(), sentinel.data(),
                                          sentinel.size() * sizeof(float), cudaMemcpyHostToDevice),
                               "test upload");
  CHECK_THROWS_WITH(
      memory.forward_replacing(
          protomem::matrix_view<const float>(device.embeddings.data(), bad.rows(), kDim),
          protomem::label_view(bad.labels.data(), bad.rows()),
          protomem::matrix_view(device.gradient.data(), bad.rows(), kDim)),
      Catch::Contains("sum to zero"));
  CHECK(device.gradient_on_host() == sentinel);
  REQUIRE(memory.pending());
  memory.commit();
  forward_gpu(reference, batch);
  reference.commit();
  CHECK(checkpoint_bytes(memory) == checkpoint_bytes(reference));
}

TEST_CASE("a GPU step whose loss is not finite throws and commits nothing", "[cuda][guarantees]") {
  Config c;
  c.capacity = 16;
  c.dim = 8;
  std::mt19937_64 rng(33);
  const Batch batch = make_batch(rng, 8, 30, 3, 3, 3, 0.3f);
  DeviceBatch device(batch);
  std::vector<float> sentinel(batch.embeddings.size(), -7.0f);
  protomem::detail::cuda_check(cudaMemcpy(device.gradient.data(), sentinel.data(),
                                          sentinel.size() * sizeof(float), cudaMemcpyHostToDevice),
                               "test upload");
  const auto embeddings =
      protomem::matrix_view<const float>(device.embeddings.data(), batch.rows(), 8);
  const auto labels = protomem::label_view(batch.labels.data(), batch.rows());
  const auto gradient = protomem::matrix_view(device.gradient.data(), batch.rows(), 8);

  SECTION("the backend's forward, with the margin compiled in (exemplar mean's rule)") {
    protomem::backend::CudaBackend<float> backend(c.capacity, c.dim);
    const protomem::detail::BatchClasses classes = protomem::detail::group_by_class(labels);
    protomem::backend::SimilarSlots<float> similar;
    CHECK_THROWS_WITH(
        (backend.forward<cuda_guarantees::NanTargetMargin, true, false>(
            classes, embeddings, gradient, 0, {}, {}, cuda_guarantees::NanTargetMargin{},
            c.workspace_bytes, &similar)),
        Catch::Contains("not finite"));
    CHECK(device.gradient_on_host() == sentinel);
  }
  SECTION("the memory: refused as a user-written margin, before the device runs") {
    protomem::PrototypeMemory<float, protomem::cuda> memory(
        CudaResources{}, c, cuda_guarantees::NanTargetMargin{}, protomem::NoAging());
    const std::string before = checkpoint_bytes(memory);
    CHECK_THROWS_WITH(memory.step(embeddings, labels, gradient),
                      Catch::Contains("margin policy is 'nan-target'"));
    CHECK_FALSE(memory.pending());
    CHECK(checkpoint_bytes(memory) == before);
    CHECK(device.gradient_on_host() == sentinel);
  }
}
