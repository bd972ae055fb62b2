// Must NOT compile (tests/CMakeLists.txt, compile_fail_throwing_refresh): a Refresh policy whose
// refresh() may throw runs inside commit(), inside the backend's write, past the last point where
// a commit may fail; PrototypeMemory refuses it with a static_assert. Were it accepted, the CPU
// backend's noexcept write would end the process (std::terminate) at the second commit below.
#include <cstdio>
#include <protomem/memory.hpp>
#include <stdexcept>
#include <vector>

struct ThrowingRefresh {
  static constexpr const char* name = "throwing";
  template <class T>
  void refresh(const T*, T*, protomem::index_t) const {
    throw std::runtime_error("refresh failed");
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

int main() {
  protomem::PrototypeMemory<float, protomem::cpu, protomem::CosFace, protomem::ExemplarMean,
                            ThrowingRefresh>
      memory({8, 2});
  std::vector<float> e = {1, 0, 0.9f, 0.1f}, g(4);
  std::vector<protomem::label_t> y = {3, 3};
  for (int step = 0; step < 2; ++step) {  // the second step refreshes class 3
    try {
      memory.step(protomem::matrix_view<const float>(e.data(), 2, 2),
                  protomem::label_view(y.data(), 2), protomem::matrix_view(g.data(), 2, 2));
    } catch (const std::exception& error) {
      std::printf("step %d threw: %s\n", step, error.what());
    }
  }
  std::printf("steps: %llu\n", static_cast<unsigned long long>(memory.step_count()));
  return 0;
}
