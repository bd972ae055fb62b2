// protomem::PrototypeMemory — a fixed-size memory of recent class prototypes used as the classifier
// of a margin softmax (Smirnov et al., "Prototype Memory for Large-Scale Face Representation
// Learning", IEEE Access 2022; the rules we had to reconstruct are listed in docs/algorithm.md).
//
// One step (docs/algorithm.md, "One step"): the batch's exemplars are normalised; each batch class
// gets a fresh prototype, the mean of its exemplars; the fresh prototypes (differentiable) and the
// stored prototypes of every other class (constants) are the columns of a margin softmax; the loss
// and dL/dE are returned; then the fresh prototypes are written into the memory: a class already
// stored is refreshed, a new class takes an empty slot or evicts the oldest. The design behind it:
// docs/design.md; a step's path through the files: docs/architecture.md.
//
//   protomem::PrototypeMemory<float> memory({/*capacity=*/65536, /*dim=*/512});
//   float loss = memory.step(embeddings, labels, gradient);   // or forward() ... commit()
//
// Requires: embeddings B x dim (row-major, row stride >= dim), finite and non-zero rows; labels
// >= 0 (and < num_classes when declared); at most `capacity` distinct labels per batch.
// Guarantees: per-step work O(B D M), independent of the number of identities; every failure throws
// protomem::Error and leaves the memory exactly as it was (also the caller's gradient buffer, and a
// pending update); a step whose loss or gradient is not finite throws and commits nothing.
#pragma once

#include <protomem/detail/language.hpp>  // first: C++17 is checked before anything else

#include <algorithm>
#include <cstdint>
#include <istream>
#include <iterator>
#include <new>
#include <ostream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <protomem/backend/cpu/backend.hpp>
#include <protomem/backend/seam.hpp>
#include <protomem/detail/atomic_file.hpp>
#include <protomem/detail/batch.hpp>
#include <protomem/detail/bookkeeping.hpp>
#include <protomem/detail/checkpoint.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/detail/validation.hpp>
#include <protomem/device.hpp>
#include <protomem/error.hpp>
#include <protomem/policies/any.hpp>
#include <protomem/types.hpp>
#include <protomem/view.hpp>

namespace protomem {

/// The memory. Scalar (float or double) is its arithmetic; Device picks the backend: cpu (Eigen),
/// cpu_bf16 / cpu_fp16 (float arithmetic over narrow storage), cuda (protomem/cuda.hpp). The
/// policies - margin, generator, refresh, queue, mining, aging, each documented in its family's
/// header under policies/ - are constructor objects, in any order, each family at most once; an
/// omitted family takes its default (CosFace(64, 0.35), ExemplarMean, Replace,
/// LeastRecentlyWritten, NoMining, default_aging()). The memory keeps them as values (holders,
/// policies/any.hpp), so one instantiation serves every combination.
template <class Scalar, class Device = cpu>
class PrototypeMemory {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "PrototypeMemory stores float or double prototypes");
  using Backend = typename detail::BackendFor<Scalar, Device>::type;
  // The members the memory calls on its backend (backend/seam.hpp), named when one is missing.
  static_assert(detail::check_backend<Backend, Scalar, AnyMargin, AnyGenerator, AnyRefresh>());
  using Book = detail::Book;

 public:
  using scalar_type = Scalar;
  using device_type = Device;
  using backend_type = Backend;
  /// What the backend borrows from the caller: nothing for protomem::cpu; the stream, cuBLAS
  /// handle, workspace and GEMM precision for protomem::cuda (protomem/cuda.hpp).
  using resources_type = typename Backend::Resources;
  /// What prototype() and iteration give for a stored prototype: Span<const Scalar> (a view into
  /// the store) for cpu, std::vector<Scalar> (a decoded copy) for cpu_bf16 and cpu_fp16.
  using prototype_type = typename Backend::prototype_type;
  using record_type = Record<Scalar, prototype_type>;

  /// Checkpoint format version written by save(); load() reads it and every earlier one
  /// (detail/checkpoint.hpp lists them).
  static constexpr std::uint32_t format_version = detail::checkpoint_version;

  /// A memory of `config`'s size with the given policies (any order, each family at most once),
  /// e.g. PrototypeMemory<float> memory(config, ArcFace(64, 0.5), AgeDecay(8),
  /// DoppelgangerMining(8)). Bad sizes or policy parameters throw protomem::Error; a capacity x
  /// dim that cannot be allocated too (not std::bad_alloc).
  template <class... Policies>
  explicit PrototypeMemory(const Config& config, Policies... policies)
      : PrototypeMemory(resources_type{}, config, std::move(policies)...) {}

  /// The same, with a backend that uses `resources` (e.g. the caller's CUDA stream), FAISS-style.
  template <class... Policies>
  PrototypeMemory(const resources_type& resources, const Config& config,
                  Policies... policies) try
      : config_(checked(config)),
        margin_(checked_policy(detail::pick_policy<AnyMargin>(policies...))),
        generator_(checked_policy(detail::pick_policy<AnyGenerator>(policies...))),
        refresh_(checked_policy(detail::pick_policy<AnyRefresh>(policies...))),
        queue_(checked_policy(detail::pick_policy<AnyQueue>(policies...))),
        mining_(checked_policy(detail::pick_policy<AnyMining>(policies...))),
        aging_(checked_policy(detail::pick_policy<AnyAging>(policies...))),
        book_(config_.capacity),
        backend_(config_.capacity, config_.dim, resources) {
    static_assert(detail::each_family_at_most_once<Policies...>(),
                  "protomem: a PrototypeMemory takes at most one policy of each family");
  } catch (const std::bad_alloc&) {
    fail_allocation("", config);
  } catch (const std::length_error&) {
    fail_allocation("", config);
  }

  // ---- the step ---------------------------------------------------------------------------------

  /// forward() then commit(): returns the loss, writes dL/dE into `gradient` (which may be the
  /// embeddings' own buffer) and updates the memory.
  Scalar step(MatrixView<const Scalar> embeddings, LabelView labels, MatrixView<Scalar> gradient) {
    const Scalar loss = forward(embeddings, labels, gradient).loss;
    commit();
    return loss;
  }

  /// The loss and dL/dE of a step; the memory is not changed until commit() (or discard()).
  /// A forward that throws writes nothing into `gradient`.
  StepResult<Scalar> forward(MatrixView<const Scalar> embeddings, LabelView labels,
                             MatrixView<Scalar> gradient) {
    if (pending_) {
      detail::fail("forward() called while the previous forward's update is pending; call "
                   "commit() or discard() first");
    }
    return forward_step(embeddings, labels, gradient);
  }

  /// As forward(), but a pending update is allowed: it is replaced by this forward's when this
  /// forward succeeds, and kept as it was when it throws (the LibTorch head's training forward,
  /// which drops a step whose backward never ran).
  StepResult<Scalar> forward_replacing(MatrixView<const Scalar> embeddings, LabelView labels,
                                       MatrixView<Scalar> gradient) {
    return forward_step(embeddings, labels, gradient);
  }

 private:
  // The step's forward; on a throw nothing changes (the backend keeps the pending fresh
  // prototypes, and the pending bookkeeping below is written only after the backend succeeded).
  StepResult<Scalar> forward_step(MatrixView<const Scalar> embeddings, LabelView labels,
                                  MatrixView<Scalar> gradient) {
    detail::check_batch(embeddings, labels, gradient, config_.dim, config_.num_classes);
    detail::BatchClasses batch = detail::group_by_class(labels);
    detail::check_classes(batch, config_, generator_.min_exemplars(), generator_.name());

    // Stale copies of this batch's classes are no columns of the memory pass, nor are expired
    // prototypes; the others count by their age (policies/aging.hpp).
    std::vector<index_t> excluded = book_.slots_of(batch.labels);
    std::vector<Scalar> column_bias;
    detail::age_columns(aging_, book_.used, age_of(), excluded, column_bias);
    const backend::StepInput<Scalar> in{&batch,
                                        embeddings,
                                        gradient,
                                        book_.used,
                                        span_of(excluded),
                                        config_.workspace_bytes,
                                        config_.threads,
                                        std::max(config_.similar_k, mining_.similar_k()),
                                        {},
                                        span_of(column_bias),
                                        config_.gemm};
    backend::StepOutput<Scalar> out = backend_.forward(in, margin_, generator_);
    const backend::SimilarSlots<Scalar>& similar = out.similar;
    const backend::PassReport& pass = out.pass;
    StepResult<Scalar> result;
    result.loss = out.loss;
    result.threads = pass.threads;
    result.tile_columns = pass.tile_columns;
    result.workspace_bytes = pass.workspace_bytes;
    result.gemm = pass.gemm;
    result.classes = batch.labels;
    result.single_exemplar_classes = detail::single_exemplar_classes(batch);
    result.similar_k = similar.k;
    result.similar.reserve(similar.slots.size());
    for (index_t slot : similar.slots) result.similar.push_back(slot < 0 ? -1 : book_.label[slot]);
    result.similar_cosines = std::move(out.similar.cosines);
    // The pending update, built aside and swapped in: nothing below can throw.
    std::vector<label_t> pending_similar;
    std::vector<Scalar> pending_cosines;
    const bool mines = mining_.similar_k() > 0;
    if (mines) {  // kept for the Mining policy at commit()
      pending_similar = result.similar;
      pending_cosines = result.similar_cosines;
    }
    pending_classes_.swap(batch.labels);
    pending_similar_.swap(pending_similar);
    pending_cosines_.swap(pending_cosines);
    pending_k_ = mines ? similar.k : 0;
    pending_ = true;
    return result;
  }

 public:
  /// Writes the fresh prototypes of the last forward() into the memory. Throws, changing nothing
  /// (the update stays pending, so commit() may be retried), only before the update is written;
  /// once it is, the update is marked done and the rest cannot throw (the policies' noexcept is
  /// checked at compile time), so a commit never applies twice.
  void commit() {
    if (!pending_) {
      detail::fail("commit() without a pending forward(): each forward() is committed at most ",
                   "once");
    }
    const std::vector<detail::SlotWrite> writes =
        detail::plan_writes(book_, pending_classes_, config_.capacity);  // may throw
    // An expired prototype is not blended into its class's fresh one. The CPU backend's write
    // cannot throw; the CUDA one throws with nothing written.
    backend_.write(detail::unblend_expired(aging_, age_of(), writes), refresh_);
    pending_ = false;                  // done: nothing below throws
    detail::apply_writes(book_, queue_, writes, pending_classes_);
    if (pending_k_ > 0) {  // only committed steps reach the Mining policy
      mining_.record(span_of(pending_classes_), span_of(pending_similar_),
                     span_of(pending_cosines_), pending_k_);
    }
  }

  /// Drops the update of the last forward() (e.g. a step skipped for a non-finite loss).
  void discard() {
    if (!pending_) detail::fail("discard() without a pending forward()");
    pending_ = false;
  }

  bool pending() const { return pending_; }

  // ---- what is stored ---------------------------------------------------------------------------

  index_t size() const { return book_.used; }
  index_t capacity() const { return config_.capacity; }
  index_t dim() const { return config_.dim; }
  const Config& config() const { return config_; }
  const Stats& stats() const { return book_.stats; }
  std::uint64_t step_count() const { return book_.stats.steps; }

  bool contains(label_t label) const { return label >= 0 && book_.find(label) >= 0; }

  /// The stored prototype of `label`: a view, valid until the next commit, load or clear (a
  /// decoded copy under narrow storage, see prototype_type).
  prototype_type prototype(label_t label) const { return backend_.prototype_view(slot_of(label)); }

  /// The step that last wrote `label`'s prototype; its age is step_count() - last_written.
  std::uint64_t last_written(label_t label) const { return book_.written[slot_of(label)]; }

  /// Iterates over the stored classes in eviction order, the next to be evicted first.
  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = record_type;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = record_type;

    const_iterator() = default;
    record_type operator*() const {
      return {memory_->book_.label[slot_], memory_->backend_.prototype_view(slot_),
              memory_->book_.written[slot_]};
    }
    const_iterator& operator++() {
      slot_ = memory_->book_.queue.next(slot_);
      return *this;
    }
    const_iterator operator++(int) {
      const_iterator before = *this;
      ++*this;
      return before;
    }
    bool operator==(const const_iterator& other) const { return slot_ == other.slot_; }
    bool operator!=(const const_iterator& other) const { return slot_ != other.slot_; }

   private:
    friend class PrototypeMemory;
    const_iterator(const PrototypeMemory* memory, index_t slot) : memory_(memory), slot_(slot) {}
    const PrototypeMemory* memory_ = nullptr;
    index_t slot_ = -1;
  };
  const_iterator begin() const { return {this, book_.queue.front()}; }
  const_iterator end() const { return {this, -1}; }

  /// Empties the memory and resets the counters; policies keep their parameters, the Mining
  /// policy forgets its state.
  void clear() {
    book_ = Book(config_.capacity);
    backend_.clear();
    mining_.clear();
    pending_ = false;
  }

  // ---- policies ----------------------------------------------------------------------------------
  // Each family's holder (policies/any.hpp): its members, name(), and get<P>() / get_if<P>() for
  // the policy object itself, e.g. memory.mining().get<DoppelgangerMining>().size().

  const AnyMargin& margin() const { return margin_; }
  const AnyGenerator& generator() const { return generator_; }
  const AnyRefresh& refresh() const { return refresh_; }
  const AnyQueue& queue() const { return queue_; }
  /// The Mining policy, e.g. the doppelganger table a sampler draws from.
  const AnyMining& mining() const { return mining_; }
  const AnyAging& aging() const { return aging_; }

  // The one way to change a policy between steps, one per family. The new policy is checked as a
  // checkpoint's would be (its parameters through its own save() and load(), the margin also in
  // Scalar), so a bad value - CosFace with m = 5 set through its public field, a NaN half-life -
  // throws protomem::Error and changes nothing, and whatever is accepted saves a checkpoint that
  // loads. It takes effect from the next call that uses it: margin and generator at the next
  // forward(), refresh, queue and aging at the next commit() (aging also at the next forward),
  // mining at the next commit() (its table is the new policy's: pass the current one, changed,
  // to keep it).
  void set_margin(AnyMargin margin) { margin_ = checked_policy(std::move(margin)); }
  void set_generator(AnyGenerator generator) {
    generator_ = checked_policy(std::move(generator));
  }
  void set_refresh(AnyRefresh refresh) { refresh_ = checked_policy(std::move(refresh)); }
  void set_queue(AnyQueue queue) { queue_ = checked_policy(std::move(queue)); }
  void set_mining(AnyMining mining) { mining_ = checked_policy(std::move(mining)); }
  /// E.g. a half-life that follows the learning rate.
  void set_aging(AnyAging aging) { aging_ = checked_policy(std::move(aging)); }

  // ---- backend ----------------------------------------------------------------------------------

  /// The resources the backend borrows; set_resources() takes effect from the next call (e.g. the
  /// stream of the current training step).
  resources_type resources() const { return backend_.resources(); }
  void set_resources(const resources_type& resources) { backend_.set_resources(resources); }
  /// Backend-specific queries and controls (e.g. the CUDA backend's workspace_size()).
  const Backend& backend() const { return backend_; }
  Backend& backend() { return backend_; }

  // ---- checkpoints (format: docs/algorithm.md, "Checkpoint format") ----------------------------

  /// Writes the committed state (a pending forward is not part of it).
  void save(std::ostream& out) const { detail::write_stream(out, serialize()); }

  /// Writes to `path` crash-safely (detail/atomic_file.hpp): through a new temporary file in the
  /// same directory, flushed to the disk and renamed over `path`. A failed save throws, removes
  /// its temporary and leaves the file at `path` as it was.
  void save(const std::string& path) const { detail::write_file_atomically(path, serialize()); }

  /// Replaces the state by a checkpoint's, its policies included: a checkpoint restores the
  /// policies it was saved with (a stored policy of the memory's own name loads into a copy of
  /// it, so a user-written policy loads into itself; another name loads into the built-in policy
  /// of that name). Throws, leaving the memory untouched, when the checkpoint is truncated,
  /// corrupt, of an unknown version, another scalar type or dimension, names a policy that is
  /// neither built in nor this memory's, has policy parameters out of range, or holds more
  /// classes than this memory's capacity. Reads every earlier format version (format 1: no aging
  /// policy, read as NoAging). Discards a pending forward.
  /// Reads exactly one checkpoint from `in`, which may hold more data after it.
  void load(std::istream& in, const std::string& source = "checkpoint stream") {
    try {
      deserialize(detail::read_checkpoint(in, source), source);
    } catch (const std::bad_alloc&) {
      fail_allocation(source, config_);
    }
  }

  /// Reads the checkpoint file at `path`; the file must hold exactly one checkpoint.
  void load(const std::string& path) {
    try {
      deserialize(detail::read_file(path), detail::quoted_path(path));
    } catch (const std::bad_alloc&) {
      fail_allocation("load: " + detail::quoted_path(path), config_);
    }
  }

  /// Replaces the state by that of a sharded memory's shard files (ShardedPrototypeMemory::
  /// save_shard, checkpoint format version 3): `paths` are the W files of one save, in any order.
  /// This is how a checkpoint of W ranks moves to one process without ever being gathered into one
  /// file. Each file is streamed and its CRC-32 checked; throws protomem::Error naming the file and
  /// the value, leaving the memory untouched, for a missing or corrupt file, a file of another
  /// save, the wrong number of files, or what load() rejects. Discards a pending forward.
  void load_shards(const std::vector<std::string>& paths) {
    try {
      std::vector<Scalar> prototypes;  // by global slot
      const detail::ShardSet set = detail::read_shard_set<Scalar>(
          paths, config_.dim, config_.capacity, config_.num_classes,
          [&](const detail::ShardHeader& h, const detail::ShardFileRecord& r, const Scalar* p) {
            const auto D = static_cast<std::size_t>(config_.dim);
            prototypes.resize(static_cast<std::size_t>(h.used) * D);
            std::copy_n(p, D, prototypes.data() + static_cast<std::size_t>(r.slot) * D);
          });
      const std::string source = "load_shards: " + detail::quoted_path(paths.front());
      const auto& stored = set.header.policies;
      Policies policies = detail::load_policies(stored, policies_now(), source);
      policies.margin = checked_policy(std::move(policies.margin));
      Book book(config_.capacity);
      book.stats = set.header.stats;
      book.used = static_cast<index_t>(set.records.size());
      for (const detail::ShardFileRecord& r : set.records) {  // ascending ticket: eviction order
        book.add_record(r.label, static_cast<index_t>(r.slot), r.last_written);
      }
      replace_state(std::move(book), std::move(policies), [&](index_t slot) {
        return std::pair<index_t, const Scalar*>{slot, prototypes.data() + slot * config_.dim};
      });
    } catch (const std::bad_alloc&) {
      fail_allocation("load_shards", config_);
    }
  }

  /// Replaces the stored classes by `labels.size` = n records given in eviction order (record 0 is
  /// the next to be evicted), record r being labels[r] with prototype row r of `prototypes` (host
  /// memory, n x dim, any row stride >= dim) written at step last_written[r]; step_count() becomes
  /// `steps`. It fills a memory as load() would, without checkpoint bytes (e.g. a benchmark's
  /// memory of 2^20 classes). Prototypes are stored as given (rounded under narrow storage, as a
  /// write would round them); iteration then yields the records in this order.
  /// Requires: n <= capacity; labels >= 0, distinct, and < num_classes when declared; finite
  /// prototypes of unit norm (| |p| - 1 | <= sqrt(epsilon of Scalar)); last_written[r] <= steps.
  /// Guarantees: on a violation throws protomem::Error naming the record and changes nothing;
  /// otherwise the counters restart (steps = `steps`, insertions = n, refreshes = evictions = 0),
  /// the policies keep their parameters, the Mining policy forgets its state (as clear()), and a
  /// pending forward is discarded.
  void assign(Span<const label_t> labels, MatrixView<const Scalar> prototypes,
              Span<const std::uint64_t> last_written, std::uint64_t steps) {
    Book book = detail::book_from_records(labels, prototypes, last_written, steps, config_.capacity,
                                          config_.dim, config_.num_classes);
    Policies policies = policies_now();
    policies.mining.clear();
    replace_state(std::move(book), std::move(policies), [&](index_t r) {
      return std::pair<index_t, const Scalar*>{r, prototypes.data + r * prototypes.row_stride};
    });
  }

 private:
  // Copies of the memory's policies, which a load or an assign replaces together.
  Policies policies_now() const {
    return Policies(margin_, generator_, refresh_, queue_, mining_, aging_);
  }

  // The one way load() and assign() replace the state: a backend filled from `n` = book.used
  // records (prototype_of(r) -> {slot, values}) is built aside (may throw), then the new state is
  // swapped in (nothing below the build throws).
  template <class PrototypeOf>
  void replace_state(Book book, Policies policies, PrototypeOf prototype_of) {
    Backend backend(config_.capacity, config_.dim, backend_.resources());
    for (index_t r = 0; r < book.used; ++r) {
      const std::pair<index_t, const Scalar*> record = prototype_of(r);
      backend.set_prototype(record.first, record.second);
    }
    backend_ = std::move(backend);
    book_ = std::move(book);
    margin_ = std::move(policies.margin);
    generator_ = std::move(policies.generator);
    refresh_ = std::move(policies.refresh);
    queue_ = std::move(policies.queue);
    mining_ = std::move(policies.mining);
    aging_ = std::move(policies.aging);
    pending_ = false;
  }

  static const Config& checked(const Config& config) {
    backend::check_gemm_request(config.gemm);  // a value, and blas only in a build with one
    return detail::checked_config<Scalar>(config);
  }

  template <class Holder>
  static Holder checked_policy(Holder policy) {
    return detail::checked_policy<Scalar>(std::move(policy));
  }

  // std::bad_alloc / std::length_error from building a store of `config`'s size, as an Error.
  [[noreturn]] static void fail_allocation(const std::string& source, const Config& config) {
    detail::fail_allocation<Scalar>(source, config.capacity, config.dim);
  }

  template <class T>
  static Span<const T> span_of(const std::vector<T>& v) {
    return {v.data(), static_cast<index_t>(v.size())};
  }

  // A slot's age: committed steps since the step that wrote it (policies/aging.hpp).
  auto age_of() const {
    return [this](index_t slot) {
      return book_.stats.steps - book_.written[static_cast<std::size_t>(slot)];
    };
  }

  index_t slot_of(label_t label) const {
    const index_t slot = label >= 0 ? book_.find(label) : -1;
    if (slot < 0) detail::fail("label ", label, " is not in the memory");
    return slot;
  }

  // ---- checkpoints (format: detail/checkpoint.hpp) ---------------------------------------------
  std::string serialize() const {
    return detail::write_checkpoint<Scalar>(
        config_.dim, config_.capacity, config_.num_classes, book_,
        [&](detail::ByteWriter& out, index_t slot) {
          const prototype_type p = backend_.prototype_view(slot);  // the logical (decoded) values
          for (index_t k = 0; k < config_.dim; ++k) out.put<Scalar>(p[k]);
        },
        margin_, generator_, refresh_, queue_, mining_, aging_);
  }

  void deserialize(const std::string& bytes, const std::string& source) {
    detail::ByteReader in(bytes.data(), bytes.size(), source);
    const detail::CheckpointHeader header = detail::parse_checkpoint(bytes, in, source);
    detail::check_compatible<Scalar>(header, config_.dim, config_.capacity, source);
    const auto& stored = header.policies;
    Policies policies = detail::load_policies(stored, policies_now(), source);
    policies.margin = checked_policy(std::move(policies.margin));  // in Scalar too (s = 1e39)

    detail::CheckpointRecords<Scalar> records =
        detail::read_records<Scalar>(in, header, config_.capacity, config_.num_classes, source);
    replace_state(std::move(records.book), std::move(policies), [&](index_t r) {
      return std::pair<index_t, const Scalar*>{records.slots[static_cast<std::size_t>(r)],
                                               records.prototypes.data() + r * config_.dim};
    });
  }

  Config config_;
  AnyMargin margin_;
  AnyGenerator generator_;
  AnyRefresh refresh_;
  AnyQueue queue_;
  AnyMining mining_;
  AnyAging aging_;
  Book book_;
  Backend backend_;
  bool pending_ = false;
  std::vector<label_t> pending_classes_;
  std::vector<label_t> pending_similar_;  // C x k, for the Mining policy
  std::vector<Scalar> pending_cosines_;
  index_t pending_k_ = 0;  // k of pending_similar_ (0: no Mining record)
};

}  // namespace protomem
