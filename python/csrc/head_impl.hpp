// HeadImpl: AnyHead over one PrototypeHead instantiation. Included only by instances_*.cpp, which
// instantiate the supported combinations (make_head_for below; the set is documented in
// docs/python.md and checked by module.cpp's make_head).
#pragma once

#include <chrono>
#include <sstream>
#include <type_traits>
#include <utility>

#include "head.hpp"

namespace protomem {
namespace python {

template <class Scalar, class Margin, class Generator, class Refresh, class Queue, class Mining>
class HeadImpl final : public AnyHead {
 public:
  using Head = protomem::torch::PrototypeHead<Scalar, Margin, Generator, Refresh, Queue, Mining>;
  using Memory = typename Head::Memory;

  HeadImpl(const Config& config, Margin margin, Generator generator, Refresh refresh, Queue queue,
           Mining mining)
      : head_(config, std::move(margin), std::move(generator), std::move(refresh), std::move(queue),
              std::move(mining)) {}

  at::Tensor forward(const at::Tensor& embeddings, const at::Tensor& labels) override {
    return head_.forward(embeddings, labels);
  }

  double core_step(const at::Tensor& embeddings, const at::Tensor& labels, at::Tensor& gradient,
                   double* seconds) override {
    Memory& memory = head_.memory();
    if (memory.pending()) memory.discard();  // as the head does before a forward
    const index_t batch = embeddings.size(0), dim = embeddings.size(1);
    const auto start = std::chrono::steady_clock::now();
    const Scalar loss = memory.step(
        matrix_view<const Scalar>(embeddings.data_ptr<Scalar>(), batch, dim, embeddings.stride(0)),
        label_view(labels.data_ptr<std::int64_t>(), batch),
        matrix_view<Scalar>(gradient.data_ptr<Scalar>(), batch, dim, gradient.stride(0)));
    if (seconds) {
      *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    return static_cast<double>(loss);
  }

  std::unique_ptr<AnyHead> clone() const override {
    const Memory& m = head_.memory();
    auto copy = std::make_unique<HeadImpl>(m.config(), m.margin(), m.generator(), m.refresh(),
                                           m.queue(), m.mining());
    copy->load_state(state(), "clone");
    return copy;
  }

  std::string state() const override {
    std::ostringstream out(std::ios::binary);
    head_.memory().save(out);
    return std::move(out).str();
  }

  void load_state(const std::string& bytes, const std::string& source) override {
    // Validate into a scratch memory first, so that trailing bytes (which PrototypeMemory::load
    // leaves unread) are rejected before this memory changes.
    const Memory& m = head_.memory();
    Memory scratch(m.config(), m.margin(), m.generator(), m.refresh(), m.queue(), m.mining());
    std::istringstream in(bytes, std::ios::binary);
    scratch.load(in, source);
    const auto used = static_cast<std::size_t>(in.tellg());
    if (used != bytes.size()) {
      protomem::detail::fail(source, " has ", bytes.size() - used,
                             " unexpected bytes after its checkpoint (", used, " bytes)");
    }
    std::istringstream again(bytes, std::ios::binary);
    head_.memory().load(again, source);
  }

  void save(const std::string& path) const override { head_.memory().save(path); }
  void load(const std::string& path) override { head_.memory().load(path); }

  Contents contents() const override {
    const Memory& m = head_.memory();
    const index_t n = m.size(), dim = m.dim();
    Contents c;
    c.labels = at::empty({n}, at::kLong);
    c.prototypes = at::empty({n, dim}, protomem::torch::detail::scalar_type_of<Scalar>());
    c.last_written = at::empty({n}, at::kLong);
    auto* labels = c.labels.data_ptr<std::int64_t>();
    auto* written = c.last_written.data_ptr<std::int64_t>();
    Scalar* rows = c.prototypes.data_ptr<Scalar>();
    index_t r = 0;
    for (const auto& record : m) {
      labels[r] = record.label;
      written[r] = static_cast<std::int64_t>(record.last_written);
      for (index_t k = 0; k < dim; ++k) rows[r * dim + k] = record.prototype[k];
      ++r;
    }
    return c;
  }

  at::Tensor prototype(label_t label) const override {
    const Memory& m = head_.memory();
    const auto p = m.prototype(label);  // throws protomem::Error naming the label
    at::Tensor out = at::empty({m.dim()}, protomem::torch::detail::scalar_type_of<Scalar>());
    for (index_t k = 0; k < m.dim(); ++k) out.data_ptr<Scalar>()[k] = p[k];
    return out;
  }

  bool contains(label_t label) const override { return head_.memory().contains(label); }
  Stats stats() const override { return head_.memory().stats(); }

  LastStep last_step() const override { return last_step_of(head_.last_result()); }

  index_t size() const override { return head_.memory().size(); }
  index_t capacity() const override { return head_.memory().capacity(); }
  index_t dim() const override { return head_.memory().dim(); }
  bool pending() const override { return head_.pending(); }
  void discard() override { head_.discard(); }
  void clear() override { head_.memory().clear(); }
  const Config& config() const override { return head_.memory().config(); }

  const DoppelgangerMining* mining_table() const override {
    if constexpr (std::is_same_v<Mining, DoppelgangerMining>) {
      return &head_.mining();
    } else {
      return nullptr;
    }
  }

  const char* dtype() const override {
    return std::is_same_v<Scalar, float> ? "float32" : "float64";
  }

  std::vector<std::string> policy_names() const override {
    return {Margin::name, Generator::name, Refresh::name, Queue::name, Mining::name};
  }

 private:
  Head head_;
};

/// The heads of one (Scalar, Margin): every generator and refresh policy, the
/// LeastRecentlyWritten queue, and NoMining (plus DoppelgangerMining when WithMining). The
/// dispatcher (module.cpp, make_head) has rejected every other combination before this is called.
template <class Scalar, class Margin, bool WithMining>
std::unique_ptr<AnyHead> make_head_for(const Config& config, const Policies& p) {
  const Margin& margin = std::get<Margin>(p.margin);
  const LeastRecentlyWritten queue = std::get<LeastRecentlyWritten>(p.queue);
  return std::visit(
      [&](const auto& generator, const auto& refresh) -> std::unique_ptr<AnyHead> {
        using G = std::decay_t<decltype(generator)>;
        using R = std::decay_t<decltype(refresh)>;
        if constexpr (WithMining) {
          if (const auto* mining = std::get_if<DoppelgangerMining>(&p.mining)) {
            return std::make_unique<
                HeadImpl<Scalar, Margin, G, R, LeastRecentlyWritten, DoppelgangerMining>>(
                config, margin, generator, refresh, queue, *mining);
          }
        }
        return std::make_unique<HeadImpl<Scalar, Margin, G, R, LeastRecentlyWritten, NoMining>>(
            config, margin, generator, refresh, queue, NoMining{});
      },
      p.generator, p.refresh);
}

}  // namespace python
}  // namespace protomem

#define PROTOMEM_PY_INSTANCE(scalar, margin, with_mining)                      \
  namespace protomem {                                                         \
  namespace python {                                                           \
  std::unique_ptr<AnyHead> make_head_##scalar##_##margin(const Config& config, \
                                                         const Policies& p) {  \
    return make_head_for<scalar, margin, with_mining>(config, p);              \
  }                                                                            \
  }                                                                            \
  }
