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
// One memory for one process or many: given a communicator (comm/communicator.hpp: MPI, a c10d
// process group, ranks as threads, ...), the memory is one logical memory stored across the ranks,
// each rank stepping its own rows of the global batch (docs/distributed.md, "The sharded memory"):
//
//   protomem::MpiCommunicator comm;
//   protomem::PrototypeMemory<float> memory(comm, config, protomem::ArcFace(64, 0.5));
//   float loss = memory.step(my_embeddings, my_labels, my_gradient);  // this rank's rows only
//
// The step, on one rank or W:
//   1. the batch is checked (with W ranks: each rank its own share, B_r rows, possibly 0, and the
//      ranks agree on the outcome: bad input anywhere is the same Error on every rank, naming the
//      rank, before anything changes);
//   2. with W ranks, sizes, labels and embeddings are all-gathered: every rank holds the global
//      batch (rank 0's rows first); the batch is grouped into classes and the memory's writes are
//      planned (detail/shard_plan.hpp: the logical memory does not depend on the number of ranks);
//   3. each rank runs the memory pass over its own slots; with W ranks the per-row softmax
//      statistics are merged across them (the backend's MergeRows hook);
//   4. the step is finished for the whole batch and each rank keeps the dL/dE of its own rows;
//   5. commit() writes the fresh prototypes that land on this rank's slots: local, and it cannot
//      throw once the update is written.
//
// Requires: embeddings B x dim (row-major, row stride >= dim), finite and non-zero rows; labels
// >= 0 (and < num_classes when declared); at most `capacity` distinct labels per batch. With W
// ranks, every rank builds the memory with the same Config and policies and calls forward(),
// step(), save(), load(), save_shard(), load_shards(), load_shard() and gather_records() in the
// same order (they are collectives); commit(), discard(), clear(), assign() and the setters are
// local, but every rank must make the same calls. The CUDA backend runs in one process.
// Guarantees: per-step work O(B D M / W), independent of the number of identities; every failure
// throws protomem::Error and leaves the memory exactly as it was (also the caller's gradient
// buffer, and a pending update), on every rank alike; a step whose loss or gradient is not finite
// throws and commits nothing. W ranks give the loss, gradients and logical memory (labels, global
// slots, last-written steps, eviction order, counters) of one process stepped on the concatenated
// batches, the prototypes and gradients to rounding; checkpoints move between any numbers of ranks.
// Traffic per step with W ranks: O(B D) values plus O(C W) integers (StepResult::traffic).
#pragma once

#include <protomem/detail/language.hpp>  // first: C++17 is checked before anything else

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <istream>
#include <iterator>
#include <limits>
#include <new>
#include <ostream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include <protomem/backend/cpu/backend.hpp>
#include <protomem/backend/seam.hpp>
#include <protomem/comm/communicator.hpp>
#include <protomem/detail/atomic_file.hpp>
#include <protomem/detail/batch.hpp>
#include <protomem/detail/checkpoint.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/detail/shard_plan.hpp>
#include <protomem/detail/validation.hpp>
#include <protomem/device.hpp>
#include <protomem/error.hpp>
#include <protomem/policies/any.hpp>
#include <protomem/types.hpp>
#include <protomem/view.hpp>

namespace protomem {

/// The file name of rank `rank`'s shard of a save to `path` by `world_size` ranks:
/// "<path>.rank<r>-of-<W>" (the W files of one save sit side by side and say how many they are).
inline std::string shard_path(const std::string& path, int rank, int world_size) {
  if (world_size < 1 || rank < 0 || rank >= world_size) {
    detail::fail("shard_path: rank ", rank, " of world size ", world_size, " is not a rank");
  }
  return path + ".rank" + std::to_string(rank) + "-of-" + std::to_string(world_size);
}

/// The W file names shard_path() gives a save to `path` by `world_size` ranks, rank 0 first.
inline std::vector<std::string> shard_paths(const std::string& path, int world_size) {
  std::vector<std::string> paths;
  for (int r = 0; r < world_size; ++r) paths.push_back(shard_path(path, r, world_size));
  return paths;
}

/// The memory. Scalar (float or double) is its arithmetic; Device picks the backend: cpu (Eigen),
/// cpu_bf16 / cpu_fp16 (float arithmetic over narrow storage), cuda (protomem/cuda.hpp). The
/// policies - margin, generator, refresh, queue, mining, aging, each documented in its family's
/// header under policies/ - are constructor objects, in any order, each family at most once; an
/// omitted family takes its default (CosFace(64, 0.35), ExemplarMean, Replace,
/// LeastRecentlyWritten, NoMining, default_aging()). The memory keeps them as values (holders,
/// policies/any.hpp), and the communicator as an AnyCommunicator, so one instantiation serves
/// every combination and any number of processes.
template <class Scalar, class Device = cpu>
class PrototypeMemory {
  static_assert(std::is_same_v<Scalar, float> || std::is_same_v<Scalar, double>,
                "PrototypeMemory stores float or double prototypes");
  using Backend = typename detail::BackendFor<Scalar, Device>::type;
  // The members the memory calls on its backend (backend/seam.hpp), named when one is missing.
  static_assert(detail::check_backend<Backend, Scalar, AnyMargin, AnyGenerator, AnyRefresh>());
  static constexpr bool on_host = std::is_same_v<Device, cpu> ||
                                  std::is_same_v<Device, cpu_bf16> ||
                                  std::is_same_v<Device, cpu_fp16>;

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
  /// One stored class of the logical memory, as gather_records() returns it (a copy).
  using gathered_record_type = Record<Scalar, std::vector<Scalar>>;

  /// Checkpoint format version written by save(); load() reads it and every earlier one
  /// (detail/checkpoint.hpp lists them).
  static constexpr std::uint32_t format_version = detail::checkpoint_version;

  /// A memory of `config`'s size in this process, with the given policies (any order, each family
  /// at most once), e.g. PrototypeMemory<float> memory(config, ArcFace(64, 0.5), AgeDecay(8),
  /// DoppelgangerMining(8)). Bad sizes or policy parameters throw protomem::Error; a capacity x
  /// dim that cannot be allocated too (not std::bad_alloc).
  template <class... Policies>
  explicit PrototypeMemory(const Config& config, Policies... policies)
      : PrototypeMemory(AnyCommunicator{}, resources_type{}, config, std::move(policies)...) {}

  /// The same, with a backend that uses `resources` (e.g. the caller's CUDA stream), FAISS-style.
  template <class... Policies>
  PrototypeMemory(const resources_type& resources, const Config& config, Policies... policies)
      : PrototypeMemory(AnyCommunicator{}, resources, config, std::move(policies)...) {}

  /// One logical memory over the ranks of `comm` (any Communicator, comm/communicator.hpp; an
  /// AnyCommunicator is taken as it is). A collective: every rank builds its share with the same
  /// `config` and policies. Every check and allocation is agreed before the memory exists: a bad
  /// value or a failed allocation on any rank, or a Config or policy that differs between ranks,
  /// throws the same protomem::Error on every rank, naming the rank; none waits. `comm` is
  /// borrowed: it must outlive the memory, and the memory's collectives must not interleave with
  /// other users' of it. Global slot g lives on rank g % W.
  template <class Comm, class... Policies,
            class = std::enable_if_t<is_communicator_v<std::decay_t<Comm>>>>
  PrototypeMemory(Comm& comm, const Config& config, Policies... policies)
      : PrototypeMemory(any_communicator(comm), resources_type{}, config,
                        std::move(policies)...) {}

  // ---- the step ---------------------------------------------------------------------------------

  /// forward() then commit(): returns the loss, writes dL/dE into `gradient` (which may be the
  /// embeddings' own buffer) and updates the memory.
  Scalar step(MatrixView<const Scalar> embeddings, LabelView labels, MatrixView<Scalar> gradient) {
    const Scalar loss = forward(embeddings, labels, gradient).loss;
    commit();
    return loss;
  }

  /// The loss and dL/dE of a step; the memory is not changed until commit() (or discard()). A
  /// forward that throws writes nothing into `gradient`. With W ranks, a collective: this rank's
  /// B_r rows in (B_r = 0 is allowed, with any pointers), the loss of the global batch (the same on
  /// every rank) and the dL/dE of this rank's rows out; StepResult::classes are the global batch's
  /// classes, StepResult::traffic this rank's bytes in the step.
  StepResult<Scalar> forward(MatrixView<const Scalar> embeddings, LabelView labels,
                             MatrixView<Scalar> gradient) {
    return forward_step(embeddings, labels, gradient, false);
  }

  /// As forward(), but a pending update is allowed: it is replaced by this forward's when this
  /// forward succeeds, and kept as it was when it throws (the LibTorch head's training forward,
  /// which drops a step whose backward never ran).
  StepResult<Scalar> forward_replacing(MatrixView<const Scalar> embeddings, LabelView labels,
                                       MatrixView<Scalar> gradient) {
    return forward_step(embeddings, labels, gradient, true);
  }

  /// For a rank that cannot take part in a step because its input failed a check before it could
  /// be passed (an adapter's tensor checks: dtype, device, shape): the forward() the other ranks
  /// are in fails on every rank with `reason`, naming this rank, and nothing changes anywhere.
  /// Call it in place of forward() (the same collectives as forward()'s first phase); it always
  /// throws.
  [[noreturn]] void fail_forward(std::string reason) {
    const std::string prefix = "protomem: ";
    if (reason.compare(0, prefix.size(), prefix) == 0) reason.erase(0, prefix.size());
    agree_on_step([&] { detail::fail(reason); });
    detail::fail(reason);  // not reached: the agreement threw on every rank
  }

  /// Writes the fresh prototypes of the last forward() that land on this rank's slots (all of
  /// them in one process) and applies the step's bookkeeping. Local: no collective; throws,
  /// changing nothing and keeping the update pending, only when the backend cannot write (the
  /// CUDA backend's errors); once written, nothing throws, so a commit never applies twice. Every
  /// rank must commit (or discard) the same forwards.
  void commit() {
    if (!pending_) {
      detail::fail("commit() without a pending forward(): each forward() is committed at most ",
                   "once");
    }
    backend_.write(pending_writes_, refresh_);
    pending_ = false;  // done: nothing below throws
    detail::apply_shard_writes(book_, pending_plan_, pending_renews_);
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

  /// Classes stored (over all ranks: the logical memory's size, the same on every rank).
  index_t size() const { return book_.used(); }
  index_t capacity() const { return config_.capacity; }
  index_t dim() const { return config_.dim; }
  const Config& config() const { return config_; }
  /// The logical memory's counters (the same on every rank).
  Stats stats() const {
    const detail::ShardCounters& c = book_.counters();
    return {c.steps, c.refreshes, c.insertions, c.evictions};
  }
  std::uint64_t step_count() const { return book_.steps(); }

  int rank() const { return book_.layout().rank; }
  int world_size() const { return book_.layout().world_size; }
  /// The communicator the memory was built with (a default AnyCommunicator: one process).
  AnyCommunicator& communicator() const { return comm_; }
  /// This rank's slots (global slot g lives on rank g % W) and how many of them hold a class.
  index_t local_capacity() const { return book_.layout().local_capacity(); }
  index_t local_size() const { return book_.local_used(); }

  /// Whether this rank stores `label` (in one process: whether the memory does; with W ranks each
  /// stored class lives on exactly one of them).
  bool contains(label_t label) const { return book_.find(label) >= 0; }
  bool stores(label_t label) const { return contains(label); }

  /// The stored prototype of `label`, which this rank must store: a view, valid until the next
  /// commit, load or clear (a decoded copy under narrow storage, see prototype_type).
  prototype_type prototype(label_t label) const { return backend_.prototype_view(slot_of(label)); }

  /// The step that last wrote `label`'s prototype; its age is step_count() - last_written.
  std::uint64_t last_written(label_t label) const { return book_.written(slot_of(label)); }

  /// Iterates over this rank's stored classes (all of them in one process) in eviction order, the
  /// next to be evicted first.
  class const_iterator {
   public:
    using iterator_category = std::forward_iterator_tag;
    using value_type = record_type;
    using difference_type = std::ptrdiff_t;
    using pointer = void;
    using reference = record_type;

    const_iterator() = default;
    record_type operator*() const {
      return {memory_->book_.label(slot_), memory_->backend_.prototype_view(slot_),
              memory_->book_.written(slot_)};
    }
    const_iterator& operator++() {
      slot_ = memory_->book_.next(slot_);
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
  const_iterator begin() const { return {this, book_.first()}; }
  const_iterator end() const { return {this, -1}; }

  /// A collective: the whole logical memory on every rank, in eviction order (the next to be
  /// evicted first) - what iterating a one-process memory yields, as copies. With W ranks it moves
  /// every stored prototype to every rank (O(M D) values): for checkpoints and tests.
  std::vector<gathered_record_type> gather_records() const { return gathered().records; }

  /// The global slot of each record of gather_records() (the one-process memory's slot).
  std::vector<index_t> gather_slots() const { return gathered().slots; }

  /// Empties the memory and resets the counters; policies keep their parameters, the Mining
  /// policy forgets its state (local; with W ranks every rank must clear).
  void clear() {
    book_ = detail::ShardBook(config_.capacity, rank(), world_size());
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
  // loads. It takes effect from the next forward() (the bookkeeping of a pending update, planned
  // by its forward, is kept; mining: its table is the new policy's - pass the current one,
  // changed, to keep it). With W ranks the setters are local but every rank must make the same
  // change: the next forward() compares every policy across the ranks and throws on every rank
  // when one differs.
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

  // ---- checkpoints: the one-process format (docs/algorithm.md, "Checkpoint format") ------------
  // W ranks write the bytes one process would write after the same steps, so a checkpoint moves
  // between any numbers of ranks.

  /// Writes the committed state (a pending forward is not part of it). With W ranks a collective:
  /// every rank writes the whole memory's checkpoint to its own `out`; a failed write on any rank
  /// throws on every rank.
  void save(std::ostream& out) const {
    const std::string bytes = serialize();
    agree([&] { detail::write_stream(out, bytes); });
  }

  /// Writes to `path` crash-safely (detail/atomic_file.hpp): through a new temporary file in the
  /// same directory, flushed to the disk and renamed over `path`. A failed save throws, removes
  /// its temporary and leaves the file at `path` as it was. With W ranks a collective: rank 0
  /// writes, and a failure throws on every rank.
  void save(const std::string& path) const {
    const std::string bytes = serialize();
    agree([&] {
      if (rank() == 0) detail::write_file_atomically(path, bytes);
    });
  }

  /// Replaces the state by a checkpoint's, its policies included: a checkpoint restores the
  /// policies it was saved with (a stored policy of the memory's own name loads into a copy of
  /// it, so a user-written policy loads into itself; another name loads into the built-in policy
  /// of that name). Throws, leaving the memory untouched, when the checkpoint is truncated,
  /// corrupt, of an unknown version, another scalar type or dimension, names a policy that is
  /// neither built in nor this memory's, has policy parameters out of range, or holds more
  /// classes than this memory's capacity. Reads every earlier format version (format 1: no aging
  /// policy, read as NoAging). Discards a pending forward. With W ranks a collective: every rank
  /// reads the checkpoint (any number of ranks wrote it) from its own `in` and keeps the classes
  /// on its slots; a failure on any rank, or ranks that read different checkpoints, throws the
  /// same Error on every rank and changes nothing anywhere.
  /// Reads exactly one checkpoint from `in`, which may hold more data after it.
  void load(std::istream& in, const std::string& source = "checkpoint stream") {
    load_bytes([&] { return detail::read_checkpoint(in, source); }, source);
  }

  /// Reads the checkpoint file at `path`; the file must hold exactly one checkpoint (with W ranks:
  /// every rank reads it, from a shared file system or a copy per machine).
  void load(const std::string& path) {
    load_bytes([&] { return detail::read_file(path); }, detail::quoted_path(path));
  }

  // ---- checkpoints: one shard per rank (docs/distributed.md, "Checkpoints") -------------------
  // save() holds the whole memory on every rank; a shard holds the replicated state and only this
  // rank's records, so W ranks write W files of M / W prototypes each, and a load holds one rank's
  // prototypes at a time. The files load into any number of ranks, one included.

  /// A collective: writes this rank's shard (checkpoint format version 3) to `out`: the replicated
  /// state, rank, world size, an id common to the shards of this save, and this rank's records.
  /// A failed write on any rank throws on every rank.
  void save_shard(std::ostream& out) const {
    const std::uint64_t id = agree_on_save_id();
    agree([&] { detail::write_stream(out, serialize_shard(id)); });
  }

  /// A collective: every rank writes its shard to its own `path` crash-safely (use
  /// shard_path(path, rank(), world_size()) for the conventional names); a failed write throws on
  /// every rank and leaves that rank's file as it was.
  void save_shard(const std::string& path) const {
    const std::uint64_t id = agree_on_save_id();
    agree([&] { detail::write_file_atomically(path, serialize_shard(id)); });
  }

  /// Replaces the state by that of the shard files of one save (`paths`: the W files written by W
  /// ranks, any W, in any order; with several ranks every rank passes the same set): each rank
  /// streams them and keeps the records on its own slots, so a checkpoint of W ranks moves to any
  /// number of processes, one included, without ever being gathered into one file. Peak memory:
  /// this rank's share plus O(stored classes) integers. Each file's CRC-32 is checked while
  /// streaming. Throws protomem::Error naming the file and the value (the same on every rank),
  /// changing nothing, when a file is missing, corrupt or truncated, of another save or memory, the
  /// number of files is not the world size that wrote them, or load() would reject the state.
  /// Discards a pending forward.
  void load_shards(const std::vector<std::string>& paths) {
    std::vector<Loaded> loaded;  // 0 or 1
    std::uint64_t save_id = 0;
    const std::string source =
        "load_shards: " + (paths.empty() ? std::string("no files") : detail::quoted_path(paths.front()));
    agree([&] {
      try {
        const detail::ShardLayout layout{config_.capacity, rank(), world_size()};
        Backend backend(layout.local_capacity(), config_.dim, backend_.resources());
        detail::ShardSet set = detail::read_shard_set<Scalar>(
            paths, config_.dim, config_.capacity, config_.num_classes,
            [&](const detail::ShardHeader&, const detail::ShardFileRecord& r, const Scalar* p) {
              const auto global = static_cast<index_t>(r.slot);
              if (layout.owner(global) == layout.rank) {
                backend.set_prototype(layout.local(global), p);
              }
            });
        save_id = set.header.save_id;
        std::vector<detail::ShardRecord> records;
        records.reserve(set.records.size());
        for (const detail::ShardFileRecord& r : set.records) {
          records.push_back({r.label, r.last_written, static_cast<index_t>(r.slot), r.ticket});
        }
        std::vector<detail::ShardFileRecord>().swap(set.records);  // one copy at a time
        detail::ShardBook book = detail::ShardBook::from_records(
            config_.capacity, rank(), world_size(), records, counters_of(set.header.stats));
        loaded.push_back(
            loaded_state(set.header.policies, std::move(book), std::move(backend), source));
      } catch (const std::bad_alloc&) {
        fail_allocation("load_shards", config_);
      }
    });
    agree_on_save(save_id, source);
    install(loaded.front());
  }

  /// A collective: every rank reads its own shard, as save_shard(std::ostream&) wrote it, from its
  /// own `in` (the state_dict idiom: rank r saves and loads its own bytes); the save must have been
  /// made by this world size, and every rank must load its shard of the same save. Throws the same
  /// protomem::Error on every rank, changing nothing, otherwise - to move to another world size,
  /// load the set of shard files with load_shards(). Reads exactly one shard from `in`, which may
  /// hold more data after it. Discards a pending forward.
  void load_shard(std::istream& in, const std::string& source = "shard stream") {
    std::vector<Loaded> loaded;  // 0 or 1
    std::uint64_t save_id = 0;
    agree([&] {
      detail::ShardReader reader(in, source);
      detail::reading_stream(source, [&] {
        const detail::ShardHeader h = detail::read_shard_header(reader);
        detail::check_shard_compatible<Scalar>(h, config_.dim, config_.capacity, source);
        if (h.world_size != static_cast<std::uint32_t>(world_size()) ||
            h.rank != static_cast<std::uint32_t>(rank())) {
          detail::fail(source, " is shard ", h.rank, " of a save by ", h.world_size,
                       " ranks, but it is loaded on rank ", rank(), " of ", world_size(),
                       ": a shard alone loads only into its own rank at the same world size; ",
                       "to change the world size, load the set of shard files with "
                       "load_shards() (Python: save(path) and load(path))");
        }
        save_id = h.save_id;
        const detail::ShardLayout& layout = book_.layout();
        Backend backend(layout.local_capacity(), config_.dim, backend_.resources());
        std::vector<Scalar> prototype(static_cast<std::size_t>(config_.dim));
        std::vector<detail::ShardRecord> records;
        records.reserve(static_cast<std::size_t>(h.records));
        for (std::uint64_t r = 0; r < h.records; ++r) {
          const detail::ShardFileRecord f = detail::read_shard_record<Scalar>(
              reader, h, prototype.data(), r, config_.num_classes);
          const auto global = static_cast<index_t>(f.slot);  // this rank's: checked above
          backend.set_prototype(layout.local(global), prototype.data());
          records.push_back({f.label, f.last_written, global, f.ticket});
        }
        reader.finish(false);
        detail::ShardBook book = detail::ShardBook::from_shard(
            config_.capacity, rank(), world_size(), records, static_cast<index_t>(h.used),
            h.next_ticket, counters_of(h.stats));
        loaded.push_back(loaded_state(h.policies, std::move(book), std::move(backend), source));
        return 0;
      });
    });
    agree_on_save(save_id, source);
    install(loaded.front());
  }

  /// Replaces the stored classes by `labels.size` = n records given in eviction order (record 0 is
  /// the next to be evicted), record r being labels[r] with prototype row r of `prototypes` (host
  /// memory, n x dim, any row stride >= dim) written at step last_written[r]; step_count() becomes
  /// `steps`. It fills a memory as load() would, without checkpoint bytes (e.g. a benchmark's
  /// memory of 2^20 classes); record r takes global slot r, so with W ranks each rank keeps the
  /// records on its slots (every rank passes the same records). Prototypes are stored as given
  /// (rounded under narrow storage, as a write would round them); iteration then yields the
  /// records in this order.
  /// Requires: n <= capacity; labels >= 0, distinct, and < num_classes when declared; finite
  /// prototypes of unit norm (| |p| - 1 | <= sqrt(epsilon of Scalar)); last_written[r] <= steps.
  /// Guarantees: on a violation throws protomem::Error naming the record and changes nothing;
  /// otherwise the counters restart (steps = `steps`, insertions = n, refreshes = evictions = 0),
  /// the policies keep their parameters, the Mining policy forgets its state (as clear()), and a
  /// pending forward is discarded. Local: no collective.
  void assign(Span<const label_t> labels, MatrixView<const Scalar> prototypes,
              Span<const std::uint64_t> last_written, std::uint64_t steps) {
    const detail::Book checked = detail::book_from_records(
        labels, prototypes, last_written, steps, config_.capacity, config_.dim,
        config_.num_classes);
    std::vector<detail::ShardRecord> records;
    records.reserve(static_cast<std::size_t>(labels.size));
    for (index_t r = 0; r < labels.size; ++r) records.push_back({labels[r], last_written[r], r, r});
    detail::ShardBook book = detail::ShardBook::from_records(
        config_.capacity, rank(), world_size(), records, counters_of(checked.stats));
    Backend backend(book.layout().local_capacity(), config_.dim, backend_.resources());
    for (index_t r = 0; r < labels.size; ++r) {
      if (book.layout().owner(r) == rank()) {
        backend.set_prototype(book.layout().local(r), prototypes.data + r * prototypes.row_stride);
      }
    }
    Loaded l{std::move(book), std::move(backend), policies_now()};
    l.policies.mining.clear();
    install(l);
  }

 private:
  // ---- construction: everything a rank could fail on, built aside and agreed ------------------
  struct Shard {
    Config config;
    Policies policies;
    detail::ShardBook book;
    Backend backend;
  };

  template <class Comm>
  static AnyCommunicator any_communicator(Comm& comm) {
    if constexpr (std::is_same_v<std::decay_t<Comm>, AnyCommunicator>) {
      return comm;
    } else {
      return AnyCommunicator(comm);
    }
  }

  template <class... P>
  PrototypeMemory(AnyCommunicator comm, const resources_type& resources, const Config& config,
                  P... policies)
      : PrototypeMemory(comm, [&] {
          static_assert(detail::each_family_at_most_once<P...>(),
                        "protomem: a PrototypeMemory takes at most one policy of each family");
          std::vector<Shard> built;  // 0 or 1: what this rank built, if it could
          agree_with(comm, [&] {
            built.push_back(build(comm, resources, config, Policies(std::move(policies)...)));
          });
          return std::move(built.front());
        }()) {}

  PrototypeMemory(AnyCommunicator comm, Shard shard)
      : comm_(std::move(comm)),
        config_(shard.config),
        margin_(std::move(shard.policies.margin)),
        generator_(std::move(shard.policies.generator)),
        refresh_(std::move(shard.policies.refresh)),
        queue_(std::move(shard.policies.queue)),
        mining_(std::move(shard.policies.mining)),
        aging_(std::move(shard.policies.aging)),
        book_(std::move(shard.book)),
        backend_(std::move(shard.backend)) {
    agree_on_setup();
  }

  // This rank's share, or a protomem::Error for the agreement.
  static Shard build(const AnyCommunicator& comm, const resources_type& resources,
                     const Config& config, Policies policies) {
    if (!on_host && comm.world_size() > 1) {
      detail::fail("the CUDA backend runs in one process: a memory over ", comm.world_size(),
                   " ranks needs a CPU backend (cpu, cpu_bf16, cpu_fp16) for now - the sharded "
                   "CUDA step is not built yet (docs/distributed.md)");
    }
    const Config& checked = checked_config(config);
    try {
      detail::ShardBook book(checked.capacity, comm.rank(), comm.world_size());
      const index_t local_capacity = book.layout().local_capacity();
      return {checked, checked_policies(std::move(policies)), std::move(book),
              Backend(local_capacity, checked.dim, resources)};
    } catch (const std::bad_alloc&) {
      fail_allocation("", checked);
    } catch (const std::length_error&) {
      fail_allocation("", checked);
    }
  }

  static const Config& checked_config(const Config& config) {
    backend::check_gemm_request(config.gemm);  // a value, and blas only in a build with one
    return detail::checked_config<Scalar>(config);
  }

  // Each policy as a checkpoint would give it back.
  static Policies checked_policies(Policies p) {
    p.margin = checked_policy(std::move(p.margin));
    p.generator = checked_policy(std::move(p.generator));
    p.refresh = checked_policy(std::move(p.refresh));
    p.queue = checked_policy(std::move(p.queue));
    p.mining = checked_policy(std::move(p.mining));
    p.aging = checked_policy(std::move(p.aging));
    return p;
  }

  template <class Holder>
  static Holder checked_policy(Holder policy) {
    return detail::checked_policy<Scalar>(std::move(policy));
  }

  // std::bad_alloc / std::length_error from building a store of `config`'s size, as an Error.
  [[noreturn]] static void fail_allocation(const std::string& source, const Config& config) {
    detail::fail_allocation<Scalar>(source, config.capacity, config.dim);
  }

  // ---- agreement --------------------------------------------------------------------------------
  // `check` on this rank, agreed by every rank: any failure is the same Error everywhere, naming
  // the rank (detail::collective_check), also with one rank when a communicator was given, so
  // that a distributed program reads the same errors at any world size. Without a communicator
  // it is `check` itself, its Error as thrown.
  template <class Check>
  static void agree_with(AnyCommunicator& comm, Check&& check) {
    if (!comm.given()) {
      check();
    } else {
      detail::collective_check(comm, std::forward<Check>(check));
    }
  }
  template <class Check>
  void agree(Check&& check) const {
    agree_with(comm_, std::forward<Check>(check));
  }

  // A step's first phase (forward_step, fail_forward): this rank's `check`, agreed by every rank.
  // The policies, which set_*() may change, must be the same on every rank: compared through
  // their checksum (W > 1 only: one process has nothing to compare).
  template <class Check>
  void agree_on_step(Check&& check) {
    if (world_size() == 1) {
      agree(std::forward<Check>(check));
      return;
    }
    const std::int64_t policies = policies_checksum();
    std::int64_t policy_sum[2] = {policies, -policies};
    comm_.all_reduce(policy_sum, 2, ReduceOp::max);
    detail::collective_check(comm_, [&] {
      if (policy_sum[0] != -policy_sum[1]) {
        detail::fail("the policies (margin ", margin_.name(), " s = ", margin_.scale(),
                     ", aging ", aging_.name(), ", ...) differ between the ranks; change them on "
                     "every rank alike");
      }
      check();
    });
  }

  // ---- the step, in the order of the header comment ---------------------------------------------
  StepResult<Scalar> forward_step(MatrixView<const Scalar> embeddings, LabelView labels,
                                  MatrixView<Scalar> gradient, bool replacing) {
    const CommTraffic before = comm_.traffic();
    const int W = world_size();

    // 1. The batch, checked (with W ranks: each rank's share, agreed).
    agree_on_step([&] {
      if (pending_ && !replacing) {
        detail::fail("forward() called while the previous forward's update is pending; call "
                     "commit() or discard() first");
      }
      if (on_host && comm_.given()) {
        check_share(embeddings, labels, gradient);  // every rank's rows, before any exchange
      } else {  // the backend checks the rows (on the device for CUDA)
        detail::check_batch(embeddings, labels, gradient, config_.dim, config_.num_classes);
      }
    });

    // 2. The global batch (in one process: the caller's, not copied - on the device for CUDA).
    const index_t D = config_.dim, mine = labels.size;
    std::int64_t B = mine, offset = 0;
    MatrixView<const Scalar> all_embeddings = embeddings;
    MatrixView<Scalar> all_gradient = gradient;
    std::vector<label_t> all_labels;
    LabelView batch_labels = labels;
    if (W > 1) {
      const std::vector<std::int64_t> rows = all_gather_counts(comm_, labels.size);
      B = 0;
      for (int q = 0; q < W; ++q) {
        if (q < rank()) offset += rows[static_cast<std::size_t>(q)];
        B += rows[static_cast<std::size_t>(q)];
      }
      all_labels.resize(static_cast<std::size_t>(B));
      comm_.all_gather(labels.data, mine, all_labels.data(), rows.data());
      share_.resize(static_cast<std::size_t>(mine * D));
      for (index_t i = 0; i < mine; ++i) std::copy_n(embeddings.row(i), D, share_.data() + i * D);
      all_embeddings_.resize(static_cast<std::size_t>(B * D));
      all_gather_rows(comm_, share_.data(), D, all_embeddings_.data(), rows.data());
      all_gradient_.resize(static_cast<std::size_t>(B * D));
      all_embeddings = matrix_view<const Scalar>(all_embeddings_.data(), B, D);
      all_gradient = matrix_view(all_gradient_.data(), B, D);
      batch_labels = label_view(all_labels.data(), B);
    }
    if (B == 0) detail::fail("empty batch: every one of the ", W, " ranks has 0 rows");
    detail::BatchClasses batch = detail::group_by_class(batch_labels);
    // The same global batch on every rank: these throw on every rank alike.
    detail::check_classes(batch, config_, generator_.min_exemplars(), generator_.name());
    const bool renews = queue_.refresh_renews();
    detail::ShardPlan plan = detail::plan_shard_writes(book_, span_of(batch.labels), renews, comm_);

    // 3-4. The memory pass over this rank's slots (merged across ranks), then the whole step.
    std::vector<index_t> excluded;  // this rank's slots of the batch's classes (stale copies)
    for (label_t label : batch.labels) {
      const index_t slot = book_.find(label);
      if (slot >= 0) excluded.push_back(slot);
    }
    std::sort(excluded.begin(), excluded.end());
    // Expired prototypes are no columns either; the others count by their age (aging.hpp).
    std::vector<Scalar> column_bias;
    detail::age_columns(aging_, book_.local_used(), age_of(), excluded, column_bias);
    backend::StepInput<Scalar> in{&batch,
                                  all_embeddings,
                                  all_gradient,
                                  book_.local_used(),
                                  span_of(excluded),
                                  config_.workspace_bytes,
                                  config_.threads,
                                  std::max(config_.similar_k, mining_.similar_k()),
                                  {},
                                  span_of(column_bias),
                                  config_.gemm};
    if (W > 1) in.merge_rows = {&PrototypeMemory::merge_rows, this};
    backend::StepOutput<Scalar> out = backend_.forward(in, margin_, generator_);

    StepResult<Scalar> result;
    result.loss = out.loss;
    result.threads = out.pass.threads;
    result.tile_columns = out.pass.tile_columns;
    result.workspace_bytes = out.pass.workspace_bytes;
    result.gemm = out.pass.gemm;
    result.similar_k = out.similar.k;
    if (W > 1) {
      merge_similar(batch, out.similar, result);  // a collective when similar_k > 0
    } else {
      result.similar.reserve(out.similar.slots.size());
      for (index_t slot : out.similar.slots) {
        result.similar.push_back(slot < 0 ? -1 : book_.label(slot));
      }
      result.similar_cosines = std::move(out.similar.cosines);
    }
    result.classes = batch.labels;
    result.single_exemplar_classes = detail::single_exemplar_classes(batch);

    // This rank's rows of dL/dE, and the pending update: nothing below throws but allocation.
    std::vector<detail::SlotWrite> writes;
    writes.reserve(plan.writes.size());
    for (const detail::ShardWrite& w : plan.writes) {
      writes.push_back({w.batch_class, w.slot, w.refresh});
    }
    writes = detail::unblend_expired(aging_, age_of(), std::move(writes));  // expired: no blend
    std::vector<label_t> pending_similar;
    std::vector<Scalar> pending_cosines;
    const bool mines = mining_.similar_k() > 0;
    if (mines) {  // kept for the Mining policy at commit()
      pending_similar = result.similar;
      pending_cosines = result.similar_cosines;
    }
    if (W > 1) {
      for (index_t i = 0; i < mine; ++i) {
        std::copy_n(all_gradient_.data() + (offset + i) * D, D, gradient.row(i));
      }
    }
    pending_plan_ = std::move(plan);
    pending_renews_ = renews;
    pending_writes_.swap(writes);
    pending_classes_.swap(batch.labels);
    pending_similar_.swap(pending_similar);
    pending_cosines_.swap(pending_cosines);
    pending_k_ = mines ? result.similar_k : 0;
    pending_ = true;
    result.traffic = comm_.traffic() - before;
    return result;
  }

  // This rank's rows with W ranks: shapes and labels as one process checks them (an empty share
  // is valid), and rows the step can normalise, named by their index on this rank (in one
  // process the backend checks the rows; here they must fail before the ranks exchange them).
  void check_share(MatrixView<const Scalar> e, LabelView y, MatrixView<Scalar> g) const {
    if (y.size < 0) detail::fail("labels.size = ", y.size, " is negative");
    if (y.size == 0) {
      if (e.rows != 0 || g.rows != 0) {
        detail::fail("labels.size = 0 but embeddings.rows = ", e.rows, " and gradient.rows = ",
                     g.rows);
      }
      return;
    }
    detail::check_batch(e, y, g, config_.dim, config_.num_classes);
    for (index_t i = 0; i < e.rows; ++i) {
      double sum2 = 0;
      for (index_t k = 0; k < e.cols; ++k) {
        const Scalar v = e(i, k);
        if (!std::isfinite(v)) backend::fail_step::embedding_not_finite(i, k, v);
        sum2 += double(v) * double(v);
      }
      if (!backend::normalisable<Scalar>(std::sqrt(sum2))) {
        backend::fail_step::embedding_norm(i, std::sqrt(sum2));
      }
    }
  }

  // 3. The merge between the memory pass and the batch columns (backend/seam.hpp, MergeRows):
  //    m_i = max over ranks; each rank's l_i and O_i rescaled by exp(m_r,i - m_i) (0 for a rank
  //    without an active column); then one all-reduce sum of [l_i | O_i].
  static void merge_rows(void* self, const backend::RowStatistics<Scalar>& rows) {
    static_cast<PrototypeMemory*>(self)->merge(rows);
  }
  void merge(const backend::RowStatistics<Scalar>& rows) {
    const index_t B = rows.rows, D = rows.dim, width = D + 1;
    merged_max_.assign(rows.max, rows.max + B);
    comm_.all_reduce(merged_max_.data(), B, ReduceOp::max);
    merged_sums_.resize(static_cast<std::size_t>(B * width));
    for (index_t i = 0; i < B; ++i) {
      const Scalar m = rows.max[i], top = merged_max_[static_cast<std::size_t>(i)];
      const Scalar f = m == -std::numeric_limits<Scalar>::infinity() ? Scalar(0) : std::exp(m - top);
      Scalar* row = merged_sums_.data() + i * width;
      row[0] = f * rows.sum[i];
      for (index_t k = 0; k < D; ++k) row[1 + k] = f * rows.weighted[i * D + k];
    }
    comm_.all_reduce(merged_sums_.data(), B * width, ReduceOp::sum);
    for (index_t i = 0; i < B; ++i) {
      const Scalar* row = merged_sums_.data() + i * width;
      rows.max[i] = merged_max_[static_cast<std::size_t>(i)];
      rows.sum[i] = row[0];
      std::copy_n(row + 1, D, rows.weighted + i * D);
    }
  }

  // The k most similar stored classes of each batch class over all ranks: each rank's k best
  // (cosine, global slot, label) are all-gathered and ordered as one memory orders them (most
  // similar first, the smaller global slot first on equal cosines), so that the result does not
  // depend on the number of ranks. Traffic: 24 C k values per rank.
  void merge_similar(const detail::BatchClasses& batch, const backend::SimilarSlots<Scalar>& local,
                     StepResult<Scalar>& result) const {
    const index_t k = local.k, C = batch.size();
    if (k == 0) return;
    const auto n = static_cast<std::size_t>(C * k);
    std::vector<std::int64_t> mine(3 * n);
    for (std::size_t j = 0; j < n; ++j) {
      const index_t slot = local.slots[j];
      const double cosine = local.cosines[j];
      std::memcpy(&mine[3 * j], &cosine, sizeof cosine);
      mine[3 * j + 1] = slot < 0 ? -1 : book_.layout().global(slot);
      mine[3 * j + 2] = slot < 0 ? -1 : book_.label(slot);
    }
    const auto W = static_cast<std::size_t>(world_size());
    std::vector<std::int64_t> counts(W, static_cast<std::int64_t>(3 * n)), all(3 * n * W);
    comm_.all_gather(mine.data(), static_cast<std::int64_t>(3 * n), all.data(), counts.data());
    struct Candidate {
      Scalar cosine;
      index_t slot;
      label_t label;
    };
    result.similar.assign(n, -1);
    result.similar_cosines.assign(n, -std::numeric_limits<Scalar>::infinity());
    std::vector<Candidate> candidates;
    for (index_t c = 0; c < C; ++c) {
      candidates.clear();
      for (std::size_t q = 0; q < W; ++q) {
        for (index_t j = 0; j < k; ++j) {
          const std::int64_t* e = &all[3 * (q * n + static_cast<std::size_t>(c * k + j))];
          if (e[1] < 0) continue;
          double cosine;
          std::memcpy(&cosine, e, sizeof cosine);
          candidates.push_back({static_cast<Scalar>(cosine), e[1], e[2]});
        }
      }
      const auto keep = std::min<std::size_t>(candidates.size(), static_cast<std::size_t>(k));
      std::partial_sort(candidates.begin(), candidates.begin() + static_cast<std::ptrdiff_t>(keep),
                        candidates.end(), [](const Candidate& a, const Candidate& b) {
                          return backend::ranks_before(a.cosine, a.slot, b.cosine, b.slot);
                        });
      for (std::size_t j = 0; j < keep; ++j) {
        result.similar[static_cast<std::size_t>(c * k) + j] = candidates[j].label;
        result.similar_cosines[static_cast<std::size_t>(c * k) + j] = candidates[j].cosine;
      }
    }
  }

  // ---- setup agreement --------------------------------------------------------------------------
  // The policies' names and parameters (what a checkpoint stores of them), as one checksum.
  std::int64_t policies_checksum() const {
    detail::ByteWriter out;
    int family = 0;
    auto save = [&](const auto& policy) {
      detail::save_policy(out, detail::policy_families[family++], policy);
    };
    save(margin_);
    save(generator_);
    save(refresh_);
    save(queue_);
    save(mining_);
    save(aging_);
    return detail::crc32(out.bytes().data(), out.bytes().size());
  }

  std::int64_t setup_checksum() const {
    detail::ByteWriter out;
    out.put<std::uint64_t>(sizeof(Scalar));
    out.put<std::int64_t>(config_.capacity);
    out.put<std::int64_t>(config_.dim);
    out.put<std::int64_t>(config_.num_classes);
    out.put<std::int64_t>(config_.similar_k);
    out.put<std::int64_t>(static_cast<std::int64_t>(config_.single_exemplar));  // checked globally
    out.put<std::int64_t>(policies_checksum());
    return detail::crc32(out.bytes().data(), out.bytes().size());
  }

  // Every rank must have built the same memory: its Config's sizes and its policies.
  void agree_on_setup() {
    if (world_size() == 1) return;
    const std::int64_t mine = setup_checksum();
    std::int64_t extremes[2] = {mine, -mine};
    comm_.all_reduce(extremes, 2, ReduceOp::max);
    detail::collective_check(comm_, [&] {
      if (extremes[0] != -extremes[1]) {
        detail::fail("PrototypeMemory: the ranks were built with different Configs "
                     "(capacity = ", config_.capacity, ", dim = ", config_.dim, ", num_classes = ",
                     config_.num_classes, ", similar_k = ", config_.similar_k,
                     ", single_exemplar = ",
                     config_.single_exemplar == SingleExemplar::allow ? "allow" : "refuse",
                     " here) or policies (margin ", margin_.name(), " s = ", margin_.scale(),
                     "); every rank must build the same memory");
      }
    });
  }

  // ---- the logical memory, gathered -------------------------------------------------------------
  struct Gathered {
    std::vector<gathered_record_type> records;  // eviction order
    std::vector<index_t> slots;                 // global slot of each record
  };

  Gathered gathered() const {
    const std::vector<detail::ShardRecord> mine = book_.local_records();
    const index_t D = config_.dim;
    std::vector<std::int64_t> ints;
    std::vector<Scalar> values;
    ints.reserve(4 * mine.size());
    values.reserve(mine.size() * static_cast<std::size_t>(D));
    for (const detail::ShardRecord& r : mine) {
      ints.insert(ints.end(), {r.label, static_cast<std::int64_t>(r.last_written), r.slot,
                               r.ticket});
      const prototype_type p = backend_.prototype_view(book_.layout().local(r.slot));
      for (index_t k = 0; k < D; ++k) values.push_back(p[k]);
    }
    const std::vector<std::int64_t> all_ints =
        all_gather_varying(comm_, ints.data(), static_cast<std::int64_t>(ints.size()));
    const std::vector<Scalar> all_values =
        all_gather_varying(comm_, values.data(), static_cast<std::int64_t>(values.size()));
    const std::size_t n = all_ints.size() / 4;
    std::vector<std::size_t> order(n);
    for (std::size_t i = 0; i < n; ++i) order[i] = i;
    std::sort(order.begin(), order.end(), [&](std::size_t a, std::size_t b) {
      return all_ints[4 * a + 3] < all_ints[4 * b + 3];
    });
    Gathered g;
    g.records.reserve(n);
    g.slots.reserve(n);
    for (std::size_t i : order) {
      const Scalar* p = all_values.data() + i * static_cast<std::size_t>(D);
      g.records.push_back({all_ints[4 * i], std::vector<Scalar>(p, p + D),
                           static_cast<std::uint64_t>(all_ints[4 * i + 1])});
      g.slots.push_back(all_ints[4 * i + 2]);
    }
    return g;
  }

  // The one-process checkpoint of the logical memory. In one process it is written from the
  // store; with W ranks the memory is gathered first (a collective).
  std::string serialize() const {
    detail::Book book(config_.capacity);
    book.stats = stats();
    book.used = size();
    auto write = [&](const auto& prototype_of_slot) {
      return detail::write_checkpoint<Scalar>(
          config_.dim, config_.capacity, config_.num_classes, book,
          [&](detail::ByteWriter& out, index_t slot) {
            const auto& p = prototype_of_slot(slot);  // the logical (decoded) values
            for (index_t k = 0; k < config_.dim; ++k) out.put<Scalar>(p[k]);
          },
          margin_, generator_, refresh_, queue_, mining_, aging_);
    };
    if (world_size() == 1) {
      for (index_t s = book_.first(); s >= 0; s = book_.next(s)) {
        book.add_record(book_.label(s), s, book_.written(s));
      }
      return write([&](index_t slot) { return backend_.prototype_view(slot); });
    }
    const Gathered g = gathered();
    std::vector<std::size_t> record_of(g.records.size());
    for (std::size_t i = 0; i < g.records.size(); ++i) {
      book.add_record(g.records[i].label, g.slots[i], g.records[i].last_written);
      record_of[static_cast<std::size_t>(g.slots[i])] = i;
    }
    return write([&](index_t slot) -> const std::vector<Scalar>& {
      return g.records[record_of[static_cast<std::size_t>(slot)]].prototype;
    });
  }

  // The id of a save, the same on every rank (the largest of the ranks' clock-and-address values),
  // so that the shards of one save share it and those of two saves differ. A collective.
  std::uint64_t agree_on_save_id() const {
    std::uint64_t id = static_cast<std::uint64_t>(
        std::chrono::system_clock::now().time_since_epoch().count());
    id ^= static_cast<std::uint64_t>(reinterpret_cast<std::uintptr_t>(this)) *
          0x9E3779B97F4A7C15ULL;
    id ^= static_cast<std::uint64_t>(
              std::chrono::steady_clock::now().time_since_epoch().count()) << 17;
    comm_.all_reduce(&id, 1, ReduceOp::max);
    return id;
  }

  // This rank's shard file (format version 3) of the save `id`; local (may throw: the callers
  // build it inside their agreement).
  std::string serialize_shard(std::uint64_t id) const {
    detail::ShardHeader h;
    h.dim = static_cast<std::uint64_t>(config_.dim);
    h.capacity = static_cast<std::uint64_t>(config_.capacity);
    h.num_classes = config_.num_classes;
    h.stats = stats();
    h.save_id = id;
    h.rank = static_cast<std::uint32_t>(rank());
    h.world_size = static_cast<std::uint32_t>(world_size());
    h.used = static_cast<std::uint64_t>(book_.used());
    h.next_ticket = book_.next_ticket();
    const std::vector<detail::ShardRecord> mine = book_.local_records();  // ascending ticket
    std::vector<detail::ShardFileRecord> records;
    records.reserve(mine.size());
    for (const detail::ShardRecord& r : mine) {
      records.push_back({r.label, static_cast<std::uint64_t>(r.slot), r.last_written, r.ticket});
    }
    return detail::write_shard_checkpoint<Scalar>(
        h, records,
        [&](detail::ByteWriter& out, std::size_t i) {
          const prototype_type p = backend_.prototype_view(book_.layout().local(mine[i].slot));
          for (index_t k = 0; k < config_.dim; ++k) out.put<Scalar>(p[k]);
        },
        margin_, generator_, refresh_, queue_, mining_, aging_);
  }

  // ---- loads: the new state built aside, agreed, then swapped in -------------------------------
  struct Loaded {
    detail::ShardBook book;
    Backend backend;
    Policies policies;
  };

  template <class Read>
  void load_bytes(Read read, const std::string& source) {
    std::vector<Loaded> loaded;  // 0 or 1: Loaded has no default constructor
    std::int64_t read_checksum = 0;
    agree([&] {
      try {
        const std::string bytes = read();
        detail::ByteReader in(bytes.data(), bytes.size(), source);
        const detail::CheckpointHeader header = detail::parse_checkpoint(bytes, in, source);
        // The checkpoint's own CRC-32 (its last 4 bytes; a CRC over them too would be a constant).
        read_checksum = detail::crc32(bytes.data(), bytes.size() - 4);
        detail::check_compatible<Scalar>(header, config_.dim, config_.capacity, source);
        detail::CheckpointRecords<Scalar> records = detail::read_records<Scalar>(
            in, header, config_.capacity, config_.num_classes, source);
        // The records in eviction order with their global slots (the queue of the parsed book).
        std::vector<detail::ShardRecord> shard_records;
        std::vector<std::size_t> record_of(static_cast<std::size_t>(records.book.used));
        for (std::size_t i = 0; i < records.slots.size(); ++i) {
          record_of[static_cast<std::size_t>(records.slots[i])] = i;
        }
        for (index_t s = records.book.queue.front(); s >= 0; s = records.book.queue.next(s)) {
          shard_records.push_back({records.book.label[static_cast<std::size_t>(s)],
                                   records.book.written[static_cast<std::size_t>(s)], s, -1});
        }
        detail::ShardBook book = detail::ShardBook::from_records(
            config_.capacity, rank(), world_size(), shard_records, counters_of(header.stats));
        Backend backend(book.layout().local_capacity(), config_.dim, backend_.resources());
        for (const detail::ShardRecord& r : shard_records) {
          if (book.layout().owner(r.slot) != rank()) continue;
          const std::size_t i = record_of[static_cast<std::size_t>(r.slot)];
          backend.set_prototype(book.layout().local(r.slot),
                                records.prototypes.data() + i * static_cast<std::size_t>(config_.dim));
        }
        loaded.push_back(
            loaded_state(header.policies, std::move(book), std::move(backend), source));
      } catch (const std::bad_alloc&) {
        fail_allocation(source, config_);
      }
    });
    if (world_size() > 1) {
      // Every rank read a valid checkpoint; they must have read the same one (a different file
      // per rank would leave a memory made of halves of two).
      std::int64_t extremes[2] = {read_checksum, -read_checksum};
      comm_.all_reduce(extremes, 2, ReduceOp::max);
      detail::collective_check(comm_, [&] {
        if (extremes[0] != -extremes[1]) {
          detail::fail("load: the ranks read different checkpoints (", source, " on rank ", rank(),
                       " has CRC-32 ", read_checksum, "); every rank must load the same one, and "
                       "none was changed");
        }
      });
    }
    install(loaded.front());  // every rank succeeded
  }

  // The state of a load, built aside from the stored policies (checked as this memory's).
  Loaded loaded_state(const detail::StoredPolicy (&stored)[detail::checkpoint_policies],
                      detail::ShardBook book, Backend backend, const std::string& source) const {
    Policies policies = detail::load_policies(stored, policies_now(), source);
    policies.margin = checked_policy(std::move(policies.margin));  // in Scalar too (s = 1e39)
    return {std::move(book), std::move(backend), std::move(policies)};
  }

  // Every rank read a valid shard or set of shards; they must have read the same save (the
  // replicated state of two saves would not form one memory). A collective.
  void agree_on_save(std::uint64_t save_id, const std::string& source) {
    if (world_size() == 1) return;
    std::uint64_t extremes[2] = {save_id, ~save_id};  // max and ~min
    comm_.all_reduce(extremes, 2, ReduceOp::max);
    detail::collective_check(comm_, [&] {
      if (extremes[0] != ~extremes[1]) {
        detail::fail("load: the ranks read shards of different saves (", source, " on rank ",
                     rank(), " has save id ", save_id,
                     "); every rank must load the same save, and none was changed");
      }
    });
  }

  // Swaps a load's state in (nothing here throws).
  void install(Loaded& l) {
    book_ = std::move(l.book);
    backend_ = std::move(l.backend);
    margin_ = std::move(l.policies.margin);
    generator_ = std::move(l.policies.generator);
    refresh_ = std::move(l.policies.refresh);
    queue_ = std::move(l.policies.queue);
    mining_ = std::move(l.policies.mining);
    aging_ = std::move(l.policies.aging);
    pending_ = false;
  }

  // Copies of the memory's policies, which a load or an assign replaces together.
  Policies policies_now() const {
    return Policies(margin_, generator_, refresh_, queue_, mining_, aging_);
  }

  static detail::ShardCounters counters_of(const Stats& s) {
    return {s.steps, s.refreshes, s.insertions, s.evictions};
  }

  // A local slot's age: committed steps since the step that wrote it (policies/aging.hpp).
  auto age_of() const {
    return [this](index_t local_slot) { return book_.steps() - book_.written(local_slot); };
  }

  index_t slot_of(label_t label) const {
    const index_t slot = book_.find(label);
    if (slot < 0) {
      if (!comm_.given()) detail::fail("label ", label, " is not in the memory");
      detail::fail("label ", label, " is not stored on rank ", rank(), " of ", world_size());
    }
    return slot;
  }

  template <class T>
  static Span<const T> span_of(const std::vector<T>& v) {
    return {v.data(), static_cast<index_t>(v.size())};
  }

  mutable AnyCommunicator comm_;  // collectives are not const; the memory's state is
  Config config_;
  AnyMargin margin_;
  AnyGenerator generator_;
  AnyRefresh refresh_;
  AnyQueue queue_;
  AnyMining mining_;
  AnyAging aging_;
  detail::ShardBook book_;
  Backend backend_;
  // The step's buffers with W ranks, kept between steps.
  std::vector<Scalar> share_, all_embeddings_, all_gradient_, merged_max_, merged_sums_;
  // The pending update of the last forward().
  bool pending_ = false;
  bool pending_renews_ = true;  // the queue's rule the pending plan was made with
  detail::ShardPlan pending_plan_;
  std::vector<detail::SlotWrite> pending_writes_;
  std::vector<label_t> pending_classes_;
  std::vector<label_t> pending_similar_;  // C x k, for the Mining policy
  std::vector<Scalar> pending_cosines_;
  index_t pending_k_ = 0;  // k of pending_similar_ (0: no Mining record)
};

}  // namespace protomem
