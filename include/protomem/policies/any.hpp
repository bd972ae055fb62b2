// How a memory holds its policies: one holder per family (AnyMargin, AnyGenerator, AnyRefresh,
// AnyQueue, AnyMining, AnyAging), each a value that holds any policy of its family - a built-in one
// or a class of the user's that meets the family's requirements (listed in the family's header and
// checked, member by member, when the holder is made from it).
//
// Why holders and not template parameters: every built-in policy acts per batch row, per written
// slot or per column bias - O(B + M) calls a step against the O(B M D) GEMMs of the memory pass -
// so one indirect call each costs nothing measured (docs/performance.md, "Policies as objects": the
// step took 0.99x the time of the release with policies as types), while a type per policy
// made every combination a new instantiation of the whole step (the Python package compiled 120).
// So PrototypeMemory<Scalar, Device> is compiled once per Scalar x Device and takes its policies
// as constructor objects, in any order: PrototypeMemory<float> m(config, ArcFace(64, 0.5),
// AgeDecay(8), DoppelgangerMining(8)).
//
// A holder forwards the family's members (a Margin holder has target(), derivative(), scale(), ...
// for float and double), names its policy (name(), the checkpoint's name), and gives it back:
// get_if<P>() (nullptr when it holds another policy), get<P>() (throws protomem::Error naming
// both). Copies copy the policy (value semantics, as a policy class has). The CUDA backend runs the
// built-in policies only and reaches them through visit_builtin (below), which throws a clear Error
// for a user-written one.
#pragma once

#include <memory>
#include <string>
#include <type_traits>
#include <typeinfo>
#include <utility>

#include <protomem/backend/cpu/generator_rows.hpp>
#include <protomem/detail/detect.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/detail/slot_queue.hpp>
#include <protomem/error.hpp>
#include <protomem/policies/aging.hpp>
#include <protomem/policies/generator.hpp>
#include <protomem/policies/margin.hpp>
#include <protomem/policies/mining.hpp>
#include <protomem/policies/queue.hpp>
#include <protomem/policies/refresh.hpp>
#include <protomem/view.hpp>

namespace protomem {
namespace detail {

/// What every held policy answers, whatever its family.
struct PolicyConcept {
  virtual ~PolicyConcept() = default;
  virtual const char* name() const noexcept = 0;
  virtual void save(ByteWriter& out) const = 0;
  virtual void load(ByteReader& in) = 0;
  /// The held policy when its type is `type`, else nullptr.
  virtual const void* held_as(const std::type_info& type) const noexcept = 0;
};

/// A concrete policy P behind the family's interface Concept; Family<P> adds the family members.
template <class P, class Concept>
struct HeldPolicy : Concept {
  P policy;
  explicit HeldPolicy(P p) : policy(std::move(p)) {}
  const char* name() const noexcept override { return P::name; }
  void save(ByteWriter& out) const override { policy.save(out); }
  void load(ByteReader& in) override { policy.load(in); }
  const void* held_as(const std::type_info& type) const noexcept override {
    return type == typeid(P) ? &policy : nullptr;
  }
};

/// The value semantics and the queries every holder shares; `Concept` is its family's interface,
/// `family` its name in messages ("margin", ...).
template <class Concept>
class PolicyHolder {
 public:
  PolicyHolder(const PolicyHolder& other) : held_(other.held_->clone()) {}
  PolicyHolder(PolicyHolder&&) noexcept = default;
  PolicyHolder& operator=(const PolicyHolder& other) {
    if (this != &other) held_ = other.held_->clone();
    return *this;
  }
  PolicyHolder& operator=(PolicyHolder&&) noexcept = default;

  /// The family's name in messages and checkpoints ("margin", ...).
  static const char* family_name() noexcept { return Concept::family; }
  /// The held policy's name, as checkpoints store it.
  const char* name() const noexcept { return held_->name(); }
  void save(ByteWriter& out) const { held_->save(out); }
  void load(ByteReader& in) { held_->load(in); }

  /// The held policy if it is a P, else nullptr.
  template <class P>
  const P* get_if() const noexcept {
    return static_cast<const P*>(held_->held_as(typeid(P)));
  }
  /// The held policy as a P; throws protomem::Error when it is another one.
  template <class P>
  const P& get() const {
    if (const P* p = get_if<P>()) return *p;
    fail("the ", Concept::family, " policy is '", name(), "', not '", P::name, "'");
  }
  template <class P>
  bool holds() const noexcept {
    return get_if<P>() != nullptr;
  }

 protected:
  explicit PolicyHolder(std::unique_ptr<Concept> held) : held_(std::move(held)) {}
  Concept& held() noexcept { return *held_; }
  const Concept& held() const noexcept { return *held_; }

 private:
  std::unique_ptr<Concept> held_;
};

/// `P` with its family's requirements checked (the static_asserts name a missing member).
template <class P, bool Ok>
using checked_policy_t = std::enable_if_t<Ok, P>;

// ---- Margin --------------------------------------------------------------------------------------
struct MarginConcept : PolicyConcept {
  static constexpr const char* family = "margin";
  virtual std::unique_ptr<MarginConcept> clone() const = 0;
  virtual double scale() const = 0;
  virtual float target(float cos) const = 0;
  virtual double target(double cos) const = 0;
  virtual float derivative(float cos) const = 0;
  virtual double derivative(double cos) const = 0;
};
template <class P>
struct HeldMargin final : HeldPolicy<P, MarginConcept> {
  using HeldPolicy<P, MarginConcept>::HeldPolicy;
  std::unique_ptr<MarginConcept> clone() const override {
    return std::make_unique<HeldMargin>(*this);
  }
  double scale() const override { return this->policy.scale(); }
  float target(float c) const override { return this->policy.template target<float>(c); }
  double target(double c) const override { return this->policy.template target<double>(c); }
  float derivative(float c) const override { return this->policy.template derivative<float>(c); }
  double derivative(double c) const override {
    return this->policy.template derivative<double>(c);
  }
};

// ---- Generator -----------------------------------------------------------------------------------
struct GeneratorConcept : PolicyConcept {
  static constexpr const char* family = "generator";
  virtual std::unique_ptr<GeneratorConcept> clone() const = 0;
  virtual index_t min_exemplars() const noexcept = 0;
  virtual bool constant_target(index_t exemplars) const noexcept = 0;
#define PROTOMEM_GENERATOR_RULE(T)                                                       \
  virtual void targets(backend::GeneratorRows<T>& rows) const = 0;                       \
  virtual T target_cosine(const backend::GeneratorRows<T>& rows, index_t i) const = 0;   \
  virtual void route_target(backend::GeneratorRows<T>& rows, index_t i, index_t y, T g)  \
      const = 0;                                                                         \
  virtual void backward(backend::GeneratorRows<T>& rows) const = 0;
  PROTOMEM_GENERATOR_RULE(float)
  PROTOMEM_GENERATOR_RULE(double)
#undef PROTOMEM_GENERATOR_RULE
};
template <class P>
struct HeldGenerator final : HeldPolicy<P, GeneratorConcept> {
  using HeldPolicy<P, GeneratorConcept>::HeldPolicy;
  std::unique_ptr<GeneratorConcept> clone() const override {
    return std::make_unique<HeldGenerator>(*this);
  }
  index_t min_exemplars() const noexcept override { return P::min_exemplars; }
  bool constant_target(index_t exemplars) const noexcept override {
    return P::constant_target(exemplars);
  }
#define PROTOMEM_GENERATOR_RULE(T)                                                          \
  void targets(backend::GeneratorRows<T>& rows) const override { this->policy.targets(rows); } \
  T target_cosine(const backend::GeneratorRows<T>& rows, index_t i) const override {        \
    return T(this->policy.target_cosine(rows, i));                                          \
  }                                                                                         \
  void route_target(backend::GeneratorRows<T>& rows, index_t i, index_t y, T g)             \
      const override {                                                                      \
    this->policy.route_target(rows, i, y, g);                                               \
  }                                                                                         \
  void backward(backend::GeneratorRows<T>& rows) const override { this->policy.backward(rows); }
  PROTOMEM_GENERATOR_RULE(float)
  PROTOMEM_GENERATOR_RULE(double)
#undef PROTOMEM_GENERATOR_RULE
};

// ---- Refresh -------------------------------------------------------------------------------------
struct RefreshConcept : PolicyConcept {
  static constexpr const char* family = "refresh";
  virtual std::unique_ptr<RefreshConcept> clone() const = 0;
  virtual void refresh(const float* old, float* fresh, index_t dim) const noexcept = 0;
  virtual void refresh(const double* old, double* fresh, index_t dim) const noexcept = 0;
};
template <class P>
struct HeldRefresh final : HeldPolicy<P, RefreshConcept> {
  using HeldPolicy<P, RefreshConcept>::HeldPolicy;
  std::unique_ptr<RefreshConcept> clone() const override {
    return std::make_unique<HeldRefresh>(*this);
  }
  void refresh(const float* old, float* fresh, index_t dim) const noexcept override {
    this->policy.refresh(old, fresh, dim);
  }
  void refresh(const double* old, double* fresh, index_t dim) const noexcept override {
    this->policy.refresh(old, fresh, dim);
  }
};

// ---- Queue ---------------------------------------------------------------------------------------
struct QueueConcept : PolicyConcept {
  static constexpr const char* family = "queue";
  virtual std::unique_ptr<QueueConcept> clone() const = 0;
  virtual bool refresh_renews() const noexcept = 0;
};
template <class P>
struct HeldQueue final : HeldPolicy<P, QueueConcept> {
  using HeldPolicy<P, QueueConcept>::HeldPolicy;
  std::unique_ptr<QueueConcept> clone() const override {
    return std::make_unique<HeldQueue>(*this);
  }
  bool refresh_renews() const noexcept override { return this->policy.refresh_renews(); }
};

// ---- Mining --------------------------------------------------------------------------------------
struct MiningConcept : PolicyConcept {
  static constexpr const char* family = "mining";
  virtual std::unique_ptr<MiningConcept> clone() const = 0;
  virtual index_t similar_k() const = 0;
  virtual void record(Span<const label_t> classes, Span<const label_t> similar,
                      Span<const float> cosines, index_t stride) noexcept = 0;
  virtual void record(Span<const label_t> classes, Span<const label_t> similar,
                      Span<const double> cosines, index_t stride) noexcept = 0;
  virtual Span<const label_t> doppelgangers(label_t label) const = 0;
  virtual Span<const float> cosines(label_t label) const = 0;
  virtual void clear() = 0;
};
template <class P>
struct HeldMining final : HeldPolicy<P, MiningConcept> {
  using HeldPolicy<P, MiningConcept>::HeldPolicy;
  std::unique_ptr<MiningConcept> clone() const override {
    return std::make_unique<HeldMining>(*this);
  }
  index_t similar_k() const override { return this->policy.similar_k(); }
  void record(Span<const label_t> classes, Span<const label_t> similar, Span<const float> cosines,
              index_t stride) noexcept override {
    this->policy.record(classes, similar, cosines, stride);
  }
  void record(Span<const label_t> classes, Span<const label_t> similar, Span<const double> cosines,
              index_t stride) noexcept override {
    this->policy.record(classes, similar, cosines, stride);
  }
  Span<const label_t> doppelgangers(label_t label) const override {
    return this->policy.doppelgangers(label);
  }
  Span<const float> cosines(label_t label) const override { return this->policy.cosines(label); }
  void clear() override { this->policy.clear(); }
};

// ---- Aging ---------------------------------------------------------------------------------------
struct AgingConcept : PolicyConcept {
  static constexpr const char* family = "aging";
  virtual std::unique_ptr<AgingConcept> clone() const = 0;
  virtual bool by_age() const noexcept = 0;
  virtual double log_weight(std::uint64_t age) const noexcept = 0;
};
template <class P>
struct HeldAging final : HeldPolicy<P, AgingConcept> {
  using HeldPolicy<P, AgingConcept>::HeldPolicy;
  std::unique_ptr<AgingConcept> clone() const override {
    return std::make_unique<HeldAging>(*this);
  }
  bool by_age() const noexcept override { return P::by_age; }
  double log_weight(std::uint64_t age) const noexcept override {
    return this->policy.log_weight(age);
  }
};

// Which family a policy class belongs to: the family whose characteristic member it has (the
// full requirements are then checked, naming whatever else is missing).
template <class P>
using has_margin_t = decltype(std::declval<const P&>().scale());
template <class P>
using has_min_exemplars_t = decltype(P::min_exemplars);
template <class P>
using has_constant_target_t = decltype(P::constant_target(index_t{}));
template <class P>
using has_generator_t = std::enable_if_t<is_detected<has_min_exemplars_t, P> ||
                                         is_detected<has_constant_target_t, P>>;
template <class P>
using has_refresh_t = decltype(std::declval<const P&>().refresh(
    std::declval<const float*>(), std::declval<float*>(), index_t{}));
template <class P>
using has_queue_t = decltype(std::declval<const P&>().refresh_renews());
template <class P>
using has_mining_t = decltype(std::declval<const P&>().similar_k());
template <class P>
using has_aging_t = decltype(std::declval<const P&>().log_weight(std::uint64_t{}));

template <class P>
constexpr int policy_families_of() {
  return int(is_detected<has_margin_t, P>) + int(is_detected<has_generator_t, P>) +
         int(is_detected<has_refresh_t, P>) + int(is_detected<has_queue_t, P>) +
         int(is_detected<has_mining_t, P>) + int(is_detected<has_aging_t, P>);
}

/// The built-in policies of a family: visit() calls f(policy) with the one a holder holds (the
/// CUDA backend's kernels are compiled for these only; a user-written policy is a protomem::Error
/// naming it and `where`), make(name) builds one by its checkpoint name with its default
/// parameters (load() then reads the stored ones).
template <class... Builtin>
struct Builtins {
  template <class Holder, class F>
  static decltype(auto) visit(const Holder& holder, const char* where, F&& f) {
    return visit_one<Holder, F, Builtin...>(holder, where, std::forward<F>(f));
  }
  template <class Holder>
  static Holder make(const std::string& name, const std::string& source) {
    return make_one<Holder, Builtin...>(name, source);
  }

 private:
  template <class Holder, class F, class First, class... Rest>
  static decltype(auto) visit_one(const Holder& holder, const char* where, F&& f) {
    if (const First* p = holder.template get_if<First>()) return f(*p);
    if constexpr (sizeof...(Rest) > 0) {
      return visit_one<Holder, F, Rest...>(holder, where, std::forward<F>(f));
    } else {
      fail(where, " runs the built-in policies only; its ", Holder::family_name(), " policy is '",
           holder.name(), "' (a user-written policy runs on protomem::cpu)");
    }
  }
  template <class Holder, class First, class... Rest>
  static Holder make_one(const std::string& name, const std::string& source) {
    if (name == First::name) return Holder(First{});
    if constexpr (sizeof...(Rest) > 0) {
      return make_one<Holder, Rest...>(name, source);
    } else {
      fail(source, ": its ", Holder::family_name(), " policy '", escaped(name),
           "' is not a built-in one, nor this memory's; construct the memory with that policy "
           "before load()");
    }
  }
};
using BuiltinMargins = Builtins<CosFace, ArcFace, CombinedMargin, NoMargin>;
using BuiltinGenerators = Builtins<ExemplarMean, DetachedExemplarMean, LeaveOneOut>;
using BuiltinRefreshes = Builtins<Replace, Momentum>;
using BuiltinQueues = Builtins<LeastRecentlyWritten, FirstInFirstOut>;
using BuiltinMinings = Builtins<NoMining, DoppelgangerMining>;
using BuiltinAgings = Builtins<AgeDecay, NoAging, MaxAge>;

}  // namespace detail

/// Holds any Margin policy (policies/margin.hpp). Default: CosFace(64, 0.35).
class AnyMargin : public detail::PolicyHolder<detail::MarginConcept> {
 public:
  AnyMargin() : AnyMargin(CosFace{}) {}
  template <class P, class = std::enable_if_t<!std::is_base_of_v<AnyMargin, std::decay_t<P>>>>
  AnyMargin(P policy)  // NOLINT: implicit, so that a policy object is passed where a holder is
      : PolicyHolder(make(std::move(policy))) {}
  /// The built-in policy checkpoints call `name`, with its default parameters (load() reads the
  /// stored ones); an Error naming `source` when there is none.
  static AnyMargin builtin(const std::string& name, const std::string& source) {
    return detail::BuiltinMargins::make<AnyMargin>(name, source);
  }
  double scale() const { return held().scale(); }
  template <class T>
  T target(T cos) const {
    return held().target(cos);
  }
  template <class T>
  T derivative(T cos) const {
    return held().derivative(cos);
  }

 private:
  template <class P>
  static std::unique_ptr<detail::MarginConcept> make(P policy) {
    static_assert(detail::check_margin_policy<P, float>() && detail::check_margin_policy<P, double>());
    return std::make_unique<detail::HeldMargin<P>>(std::move(policy));
  }
};

/// Holds any Generator policy (policies/generator.hpp). Default: ExemplarMean.
class AnyGenerator : public detail::PolicyHolder<detail::GeneratorConcept> {
 public:
  AnyGenerator() : AnyGenerator(ExemplarMean{}) {}
  template <class P, class = std::enable_if_t<!std::is_base_of_v<AnyGenerator, std::decay_t<P>>>>
  AnyGenerator(P policy)  // NOLINT: implicit
      : PolicyHolder(make(std::move(policy))) {}
  /// The built-in policy checkpoints call `name`, with its default parameters (load() reads the
  /// stored ones); an Error naming `source` when there is none.
  static AnyGenerator builtin(const std::string& name, const std::string& source) {
    return detail::BuiltinGenerators::make<AnyGenerator>(name, source);
  }
  index_t min_exemplars() const noexcept { return held().min_exemplars(); }
  bool constant_target(index_t exemplars) const noexcept {
    return held().constant_target(exemplars);
  }
  template <class T>
  void targets(backend::GeneratorRows<T>& rows) const {
    held().targets(rows);
  }
  template <class T>
  T target_cosine(const backend::GeneratorRows<T>& rows, index_t i) const {
    return held().target_cosine(rows, i);
  }
  template <class T>
  void route_target(backend::GeneratorRows<T>& rows, index_t i, index_t y, T g) const {
    held().route_target(rows, i, y, g);
  }
  template <class T>
  void backward(backend::GeneratorRows<T>& rows) const {
    held().backward(rows);
  }

 private:
  template <class P>
  static std::unique_ptr<detail::GeneratorConcept> make(P policy) {
    static_assert(detail::check_generator_policy<P>() &&
                  backend::check_cpu_generator<P, float>() &&
                  backend::check_cpu_generator<P, double>());
    return std::make_unique<detail::HeldGenerator<P>>(std::move(policy));
  }
};

/// Holds any Refresh policy (policies/refresh.hpp). Default: Replace.
class AnyRefresh : public detail::PolicyHolder<detail::RefreshConcept> {
 public:
  AnyRefresh() : AnyRefresh(Replace{}) {}
  template <class P, class = std::enable_if_t<!std::is_base_of_v<AnyRefresh, std::decay_t<P>>>>
  AnyRefresh(P policy)  // NOLINT: implicit
      : PolicyHolder(make(std::move(policy))) {}
  /// The built-in policy checkpoints call `name`, with its default parameters (load() reads the
  /// stored ones); an Error naming `source` when there is none.
  static AnyRefresh builtin(const std::string& name, const std::string& source) {
    return detail::BuiltinRefreshes::make<AnyRefresh>(name, source);
  }
  template <class T>
  void refresh(const T* old, T* fresh, index_t dim) const noexcept {
    held().refresh(old, fresh, dim);
  }

 private:
  template <class P>
  static std::unique_ptr<detail::RefreshConcept> make(P policy) {
    static_assert(detail::check_refresh_policy<P, float>() &&
                  detail::check_refresh_policy<P, double>());
    return std::make_unique<detail::HeldRefresh<P>>(std::move(policy));
  }
};

/// Holds any Queue policy (policies/queue.hpp). Default: LeastRecentlyWritten.
class AnyQueue : public detail::PolicyHolder<detail::QueueConcept> {
 public:
  AnyQueue() : AnyQueue(LeastRecentlyWritten{}) {}
  template <class P, class = std::enable_if_t<!std::is_base_of_v<AnyQueue, std::decay_t<P>>>>
  AnyQueue(P policy)  // NOLINT: implicit
      : PolicyHolder(make(std::move(policy))) {}
  /// The built-in policy checkpoints call `name`, with its default parameters (load() reads the
  /// stored ones); an Error naming `source` when there is none.
  static AnyQueue builtin(const std::string& name, const std::string& source) {
    return detail::BuiltinQueues::make<AnyQueue>(name, source);
  }
  /// Whether a refreshed class moves to the back of the eviction order.
  bool refresh_renews() const noexcept { return held().refresh_renews(); }

 private:
  template <class P>
  static std::unique_ptr<detail::QueueConcept> make(P policy) {
    static_assert(detail::check_queue_policy<P>());
    return std::make_unique<detail::HeldQueue<P>>(std::move(policy));
  }
};

/// Holds any Mining policy (policies/mining.hpp). Default: NoMining.
class AnyMining : public detail::PolicyHolder<detail::MiningConcept> {
 public:
  AnyMining() : AnyMining(NoMining{}) {}
  template <class P, class = std::enable_if_t<!std::is_base_of_v<AnyMining, std::decay_t<P>>>>
  AnyMining(P policy)  // NOLINT: implicit
      : PolicyHolder(make(std::move(policy))) {}
  /// The built-in policy checkpoints call `name`, with its default parameters (load() reads the
  /// stored ones); an Error naming `source` when there is none.
  static AnyMining builtin(const std::string& name, const std::string& source) {
    return detail::BuiltinMinings::make<AnyMining>(name, source);
  }
  index_t similar_k() const { return held().similar_k(); }
  template <class T>
  void record(Span<const label_t> classes, Span<const label_t> similar, Span<const T> cosines,
              index_t stride) noexcept {
    held().record(classes, similar, cosines, stride);
  }
  /// What a sampler draws from: the doppelgangers of `label`, most similar first. A view into the
  /// policy's table, valid until the memory's next commit(), load(), assign(), clear() or
  /// set_mining() (each may rewrite the row); copy it to keep it.
  Span<const label_t> doppelgangers(label_t label) const { return held().doppelgangers(label); }
  /// Their cosines, valid as doppelgangers() is.
  Span<const float> cosines(label_t label) const { return held().cosines(label); }
  void clear() { held().clear(); }

 private:
  template <class P>
  static std::unique_ptr<detail::MiningConcept> make(P policy) {
    static_assert(detail::check_mining_policy<P, float>() &&
                  detail::check_mining_policy<P, double>());
    return std::make_unique<detail::HeldMining<P>>(std::move(policy));
  }
};

/// Holds any Aging policy (policies/aging.hpp). Default: default_aging() (policies/aging.hpp).
class AnyAging : public detail::PolicyHolder<detail::AgingConcept> {
 public:
  AnyAging() : AnyAging(default_aging()) {}
  template <class P, class = std::enable_if_t<!std::is_base_of_v<AnyAging, std::decay_t<P>>>>
  AnyAging(P policy)  // NOLINT: implicit
      : PolicyHolder(make(std::move(policy))) {}
  /// The built-in policy checkpoints call `name`, with its default parameters (load() reads the
  /// stored ones); an Error naming `source` when there is none.
  static AnyAging builtin(const std::string& name, const std::string& source) {
    return detail::BuiltinAgings::make<AnyAging>(name, source);
  }
  bool by_age() const noexcept { return held().by_age(); }
  double log_weight(std::uint64_t age) const noexcept { return held().log_weight(age); }

 private:
  template <class P>
  static std::unique_ptr<detail::AgingConcept> make(P policy) {
    static_assert(detail::check_aging_policy<P>());
    return std::make_unique<detail::HeldAging<P>>(std::move(policy));
  }
};

namespace detail {

/// The holder of P's family (a static_assert names the problem when P fits none, or several).
template <class P>
constexpr bool is_policy_holder =
    std::is_same_v<P, AnyMargin> || std::is_same_v<P, AnyGenerator> ||
    std::is_same_v<P, AnyRefresh> || std::is_same_v<P, AnyQueue> || std::is_same_v<P, AnyMining> ||
    std::is_same_v<P, AnyAging>;

/// What a type of no family maps to: the constructor's static_assert has named the problem, and
/// this takes any argument so that no further error follows.
struct NoPolicyFamily {
  template <class P>
  NoPolicyFamily(P&&) {}  // NOLINT
};

/// Whether P is, or is held by, the family whose holder is Holder and whose characteristic member
/// Has detects.
template <class P, class Holder, template <class> class Has>
constexpr bool belongs_to = is_policy_holder<P> ? std::is_same_v<P, Holder> : is_detected<Has, P>;

template <class P>
constexpr auto policy_holder_of() {
  static_assert(is_policy_holder<P> || policy_families_of<P>() == 1,
                "protomem: a policy passed to PrototypeMemory must belong to exactly one family: "
                "a Margin has scale(), a Generator min_exemplars or constant_target(n), a Refresh "
                "refresh(old, fresh, dim), a Queue refresh_renews(), a Mining similar_k(), "
                "an Aging log_weight(age) (policies/*.hpp list each family's requirements)");
  if constexpr (belongs_to<P, AnyMargin, has_margin_t>) {
    return static_cast<AnyMargin*>(nullptr);
  } else if constexpr (belongs_to<P, AnyGenerator, has_generator_t>) {
    return static_cast<AnyGenerator*>(nullptr);
  } else if constexpr (belongs_to<P, AnyRefresh, has_refresh_t>) {
    return static_cast<AnyRefresh*>(nullptr);
  } else if constexpr (belongs_to<P, AnyQueue, has_queue_t>) {
    return static_cast<AnyQueue*>(nullptr);
  } else if constexpr (belongs_to<P, AnyMining, has_mining_t>) {
    return static_cast<AnyMining*>(nullptr);
  } else if constexpr (belongs_to<P, AnyAging, has_aging_t>) {
    return static_cast<AnyAging*>(nullptr);
  } else {
    return static_cast<NoPolicyFamily*>(nullptr);  // the static_assert above has said why
  }
}
template <class P>
using policy_holder_t = std::remove_pointer_t<decltype(policy_holder_of<std::decay_t<P>>())>;


/// How many of Policies belong to Holder's family.
template <class Holder, class... Policies>
constexpr int count_family() {
  return (0 + ... + int(std::is_same_v<policy_holder_t<Policies>, Holder>));
}
template <class... Policies>
constexpr bool each_family_at_most_once() {
  return count_family<AnyMargin, Policies...>() <= 1 &&
         count_family<AnyGenerator, Policies...>() <= 1 &&
         count_family<AnyRefresh, Policies...>() <= 1 && count_family<AnyQueue, Policies...>() <= 1 &&
         count_family<AnyMining, Policies...>() <= 1 && count_family<AnyAging, Policies...>() <= 1;
}

/// The policy of Holder's family among `policies` (moved from), or the family's default.
template <class Holder>
Holder pick_policy() {
  return Holder{};
}
template <class Holder, class First, class... Rest>
Holder pick_policy(First& first, Rest&... rest) {
  if constexpr (std::is_same_v<policy_holder_t<First>, Holder>) {
    return Holder(std::move(first));
  } else {
    return pick_policy<Holder>(rest...);
  }
}

/// A policy as a checkpoint would give it back, for a memory of Scalar: its parameters through a
/// copy's save() and load() (where the built-in policies check their ranges, so a field set out of
/// range by hand is caught), the margin also in Scalar (check_margin_in). Throws protomem::Error.
template <class Scalar, class Holder>
Holder checked_policy(Holder policy) {
  ByteWriter saved;
  policy.save(saved);
  const std::string& bytes = saved.bytes();
  ByteReader in(bytes.data(), bytes.size(),
                std::string("the ") + Holder::family_name() + " policy '" + policy.name() + "'");
  Holder copy = policy;
  copy.load(in);
  if constexpr (std::is_same_v<Holder, AnyMargin>) check_margin_in<Scalar>(policy);
  return policy;
}

}  // namespace detail

/// One policy of each family: what a memory keeps and what load() replaces together, and what a
/// head or a binding passes on. Built from policies in any order, each family at most once; a
/// family left out takes its default (as the memory's constructor).
struct Policies {
  AnyMargin margin;
  AnyGenerator generator;
  AnyRefresh refresh;
  AnyQueue queue;
  AnyMining mining;
  AnyAging aging;

  Policies() = default;
  template <class... P,
            std::enable_if_t<(sizeof...(P) > 0) &&
                                 (... && !std::is_same_v<std::decay_t<P>, Policies>),
                             int> = 0>
  explicit Policies(P... policies)
      : margin(detail::pick_policy<AnyMargin>(policies...)),
        generator(detail::pick_policy<AnyGenerator>(policies...)),
        refresh(detail::pick_policy<AnyRefresh>(policies...)),
        queue(detail::pick_policy<AnyQueue>(policies...)),
        mining(detail::pick_policy<AnyMining>(policies...)),
        aging(detail::pick_policy<AnyAging>(policies...)) {
    static_assert(detail::each_family_at_most_once<P...>(),
                  "protomem: at most one policy of each family");
  }

  /// Puts `policy` (any policy, or a holder) in its family's place.
  template <class P>
  void set(P policy) {
    using Family = detail::policy_holder_t<P>;
    if constexpr (std::is_same_v<Family, AnyMargin>) {
      margin = AnyMargin(std::move(policy));
    } else if constexpr (std::is_same_v<Family, AnyGenerator>) {
      generator = AnyGenerator(std::move(policy));
    } else if constexpr (std::is_same_v<Family, AnyRefresh>) {
      refresh = AnyRefresh(std::move(policy));
    } else if constexpr (std::is_same_v<Family, AnyQueue>) {
      queue = AnyQueue(std::move(policy));
    } else if constexpr (std::is_same_v<Family, AnyMining>) {
      mining = AnyMining(std::move(policy));
    } else {
      aging = AnyAging(std::move(policy));
    }
  }
};

}  // namespace protomem
