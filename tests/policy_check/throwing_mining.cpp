// A Mining policy whose record() may throw: record() runs inside commit() after the update is
// written, so a retried commit would apply twice; PrototypeMemory must refuse it and say why.
// Were it accepted (as before the check existed), main() shows the double apply: it exits 1 when a
// retried commit counts two steps.
#include <cstdio>
#include <protomem/memory.hpp>
#include <stdexcept>
#include <vector>

struct ThrowingMining : protomem::NoMining {
  protomem::index_t similar_k() const { return 1; }
  template <class Scalar>
  void record(protomem::Span<const protomem::label_t>, protomem::Span<const protomem::label_t>,
              protomem::Span<const Scalar>, protomem::index_t) {
    if (first) {  // fails once
      first = false;
      throw std::runtime_error("record failed");
    }
  }
  bool first = true;
};

int main() {
  protomem::PrototypeMemory<float> memory({8, 2}, ThrowingMining{});
  std::vector<float> e = {1, 0, 0.9f, 0.1f}, g(4);
  std::vector<protomem::label_t> y = {3, 3};
  memory.forward(protomem::matrix_view<const float>(e.data(), 2, 2),
                 protomem::label_view(y.data(), 2), protomem::matrix_view(g.data(), 2, 2));
  try {
    memory.commit();
  } catch (const std::exception&) {
    memory.commit();  // the retry the strong guarantee allows
  }
  std::printf("steps after a failed and a retried commit: %llu\n",
              static_cast<unsigned long long>(memory.step_count()));
  return memory.step_count() == 1 ? 0 : 1;
}
