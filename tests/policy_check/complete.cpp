// The control for the policy checks: the smallest policies of every family that meet the
// requirements listed in policies/*.hpp. Building this must succeed; each broken_*.cpp beside it
// is one of these with a single requirement removed, and must fail with a message naming it.
#include <cstdint>
#include <protomem/memory.hpp>

namespace {

using protomem::index_t;
using protomem::label_t;
using protomem::Span;

struct PlainMargin {
  static constexpr const char* name = "plain";
  double scale() const { return 16.0; }
  template <class T>
  PROTOMEM_HOST_DEVICE T target(T cos) const {
    return cos;
  }
  template <class T>
  PROTOMEM_HOST_DEVICE T derivative(T) const {
    return T(1);
  }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// A rule of its own: the exemplar mean's targets, detached (the members the CPU backend calls).
struct PlainGenerator {
  static constexpr const char* name = "plain";
  static constexpr index_t min_exemplars = 1;
  PROTOMEM_HOST_DEVICE static constexpr bool constant_target(index_t n) { return n == 1; }
  template <class Rows>
  void targets(Rows&) const {}
  template <class Rows>
  auto target_cosine(const Rows& r, index_t i) const {
    return r.batch_cos(i, r.batch.class_of[static_cast<std::size_t>(i)]);
  }
  template <class Rows, class T>
  void route_target(Rows& r, index_t i, index_t y, T g) const {
    r.batch_grad(i, y) = g;
  }
  template <class Rows>
  void backward(Rows&) const {}
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

struct PlainRefresh {
  static constexpr const char* name = "plain";
  template <class T>
  PROTOMEM_HOST_DEVICE void refresh(const T*, T*, index_t) const noexcept {}
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

struct PlainQueue {
  static constexpr const char* name = "plain";
  bool refresh_renews() const noexcept { return false; }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

struct PlainMining {
  static constexpr const char* name = "plain";
  index_t similar_k() const { return 0; }
  template <class T>
  void record(Span<const label_t>, Span<const label_t>, Span<const T>, index_t) noexcept {}
  Span<const label_t> doppelgangers(label_t) const { return {}; }
  Span<const float> cosines(label_t) const { return {}; }
  void clear() {}
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

struct PlainAging {
  static constexpr const char* name = "plain";
  static constexpr bool by_age = true;
  double log_weight(std::uint64_t age) const noexcept { return age > 9 ? -1.0 : 0.0; }
  void save(protomem::detail::ByteWriter&) const {}
  void load(protomem::detail::ByteReader&) {}
};

// Passing the policies to the constructor builds their holders, which check each family's
// requirements (the Generator's rule for the CPU backend too), in float and in double.
[[maybe_unused]] void make(const protomem::Config& config) {
  protomem::PrototypeMemory<float> f(config, PlainMargin{}, PlainGenerator{}, PlainRefresh{},
                                     PlainQueue{}, PlainMining{});
  protomem::PrototypeMemory<double> d(config, PlainAging{}, PlainMining{}, PlainQueue{},
                                      PlainRefresh{}, PlainGenerator{}, PlainMargin{});
}

// A step with them all, and each as the one policy passed to a set_*().
[[maybe_unused]] float step(protomem::PrototypeMemory<float>& memory,
                            protomem::MatrixView<const float> e, protomem::LabelView y,
                            protomem::MatrixView<float> g) {
  memory.set_margin(PlainMargin{});
  memory.set_generator(PlainGenerator{});
  memory.set_refresh(PlainRefresh{});
  memory.set_queue(PlainQueue{});
  memory.set_mining(PlainMining{});
  memory.set_aging(PlainAging{});
  return memory.step(e, y, g);
}

}  // namespace
