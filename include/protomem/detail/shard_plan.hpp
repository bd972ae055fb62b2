// The slot bookkeeping of a prototype memory sharded over W ranks, planned so that the LOGICAL
// memory - which classes are stored, in which global slot, their last-written steps and the global
// eviction order - is exactly that of the single-process memory, for every world size.
//
// Layout. Global slot g lives on rank g % W as local slot g / W (round robin). The single-process
// memory fills slots 0, 1, 2, ... in order and then reuses evicted slots; round robin keeps the
// ranks' shares within one slot of each other while the memory fills (contiguous blocks would put
// the first M / W classes, and so all the memory-pass work of the early steps, on rank 0), and
// once full every slot stays occupied, so the shares stay M / W (+1) for good.
//
// Queue positions. Every write gets a "ticket", a counter replicated on every rank: the global
// eviction order is ascending ticket. Tickets are unique, so no two slots ever tie. Within a step,
// as in the single-process memory, refreshed classes (ascending label) move to the back before the
// new classes (ascending label) are appended; under a queue whose refresh does not move a class
// (FirstInFirstOut) a refreshed class keeps its ticket.
//
// One step, on every rank, given the global batch's distinct classes (ascending; from the
// all-gathered labels):
//   1. stored flags: each rank marks the classes it stores; one all-reduce (sum) of C int64 tells
//      every rank which classes are stored anywhere (R refreshes) and which are new (k = C - R);
//   2. while the memory has free slots, new classes take global slots used, used + 1, ... (the
//      single-process rule);
//   3. the other k_evict new classes evict the k_evict oldest slots over all ranks that hold no
//      class of the batch: each rank offers its own k_evict oldest such slots (ticket, global
//      slot), padded with sentinels to exactly k_evict; one all-gather of 2 * k_evict * W int64;
//      every rank sorts the offers by ticket and takes the first k_evict - the same on every rank,
//      no coordinator;
//   4. each rank keeps the writes that land on its own slots (plan_shard_writes) and applies them
//      (apply_shard_writes).
// used (the number of stored classes), the step count, the next ticket and the counters are
// replicated: every rank updates them from the same global information.
// Traffic per step: 8 C + 16 W k_evict bytes (k_evict <= C), nothing at all when W = 1 or when
// nothing is evicted; independent of the capacity and of the number of identities.
//
// Requires: every rank calls plan/apply with the same classes and refresh_moves_to_back (they are
// collectives). Guarantees: planning changes nothing (a throw leaves the book as it was, on every
// rank alike: every check depends only on replicated data or on the all-reduced flags);
// apply_shard_writes cannot throw and allocates nothing.
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <protomem/comm/communicator.hpp>
#include <protomem/detail/slot_map.hpp>
#include <protomem/detail/slot_queue.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>
#include <utility>
#include <vector>

namespace protomem::detail {

/// Round-robin placement of global slots: global slot g lives on rank g % W as local slot g / W.
struct ShardLayout {
  index_t capacity = 0;
  int rank = 0;
  int world_size = 1;

  int owner(index_t global) const { return static_cast<int>(global % world_size); }
  index_t local(index_t global) const { return global / world_size; }
  index_t global(index_t local_slot) const { return local_slot * world_size + rank; }
  /// The global slots in [0, n) that live on this rank.
  index_t local_count(index_t n) const { return n > rank ? (n - rank - 1) / world_size + 1 : 0; }
  index_t local_capacity() const { return local_count(capacity); }
};

/// The replicated counters of a memory (as protomem::Stats in memory.hpp): saved in checkpoints.
struct ShardCounters {
  std::uint64_t steps = 0;
  std::uint64_t refreshes = 0;
  std::uint64_t insertions = 0;
  std::uint64_t evictions = 0;
};

template <class Comm>
struct ShardPlanner;
struct ShardApplier;

/// One stored class of the logical memory (the same whatever the world size).
struct ShardRecord {
  label_t label = -1;
  std::uint64_t last_written = 0;
  index_t slot = -1;         ///< global slot
  std::int64_t ticket = -1;  ///< queue position: the eviction order is ascending ticket
};

/// One rank's share of the bookkeeping: its local slots, plus the replicated logical counters.
class ShardBook {
 public:
  ShardBook(index_t capacity, int rank, int world_size)
      : layout_(checked_layout(capacity, rank, world_size)),
        label_(static_cast<std::size_t>(layout_.local_capacity()), -1),
        written_(static_cast<std::size_t>(layout_.local_capacity()), 0),
        ticket_(static_cast<std::size_t>(layout_.local_capacity()), -1),
        map_(static_cast<std::size_t>(layout_.local_capacity())),
        queue_(layout_.local_capacity()) {}

  /// A book for `rank` of `world_size` holding `records`, given in eviction order (oldest first)
  /// with their global slots - what a checkpoint written by any number of ranks holds. Records are
  /// those of the whole memory; this rank keeps the ones on its slots. Throws protomem::Error when
  /// the records are not a memory: a label twice or negative, slots that are not exactly
  /// 0 .. n - 1 (the single-process memory's occupied slots), a last_written beyond the step count.
  /// The records' tickets are ignored: their order is the eviction order.
  static ShardBook from_records(index_t capacity, int rank, int world_size,
                                const std::vector<ShardRecord>& records,
                                const ShardCounters& counters) {
    const std::uint64_t steps = counters.steps;
    ShardBook book(capacity, rank, world_size);
    const auto n = static_cast<index_t>(records.size());
    if (n > capacity) fail("shard book: ", n, " records but the capacity is ", capacity);
    std::vector<char> seen(static_cast<std::size_t>(n), 0);
    SlotMap labels(static_cast<std::size_t>(n));
    for (index_t i = 0; i < n; ++i) {
      const ShardRecord& r = records[static_cast<std::size_t>(i)];
      if (r.slot < 0 || r.slot >= n || seen[static_cast<std::size_t>(r.slot)]) {
        fail("shard book: record ", i, " (label ", r.label, ") has slot ", r.slot,
             ": the slots of ", n, " records must be 0 .. ", n - 1, ", each once");
      }
      if (r.last_written > steps) {
        fail("shard book: record ", i, " (label ", r.label, ") was last written at step ",
             r.last_written, ", after the memory's step ", steps);
      }
      if (r.label < 0)
        fail("shard book: record ", i, " has label ", r.label, " (labels must be >= 0)");
      const index_t earlier = labels.find(r.label);
      if (earlier >= 0) {
        fail("shard book: record ", i, " has label ", r.label, ", as record ", earlier, " does");
      }
      labels.insert(r.label, i);
      seen[static_cast<std::size_t>(r.slot)] = 1;
    }
    for (index_t i = 0; i < n; ++i) {
      const ShardRecord& r = records[static_cast<std::size_t>(i)];
      if (book.layout_.owner(r.slot) != rank) continue;
      const index_t slot = book.layout_.local(r.slot);
      book.place(slot, r.label, r.last_written, i);
    }
    book.used_ = n;
    book.next_ticket_ = n;
    book.counters_ = counters;
    return book;
  }

  /// A book for `rank` of `world_size` from its own shard of a save by the same world size: the
  /// records on its slots with their tickets, ascending, and the replicated count of stored
  /// classes, next ticket and counters (what the other ranks' shards of that save hold). Throws
  /// protomem::Error when a record is not on this rank's slots below `used`, a slot or label
  /// repeats, tickets do not ascend below `next_ticket`, a last_written is beyond the step count,
  /// or the records are not this rank's share of `used`.
  static ShardBook from_shard(index_t capacity, int rank, int world_size,
                              const std::vector<ShardRecord>& records, index_t used,
                              std::int64_t next_ticket, const ShardCounters& counters) {
    ShardBook book(capacity, rank, world_size);
    const ShardLayout& layout = book.layout_;
    if (used < 0 || used > capacity || next_ticket < used) {
      fail("shard book: ", used, " stored classes, capacity ", capacity, ", next ticket ",
           next_ticket);
    }
    const auto n = static_cast<index_t>(records.size());
    if (n != layout.local_count(used)) {
      fail("shard book: rank ", rank, " of ", world_size, " holds ", layout.local_count(used),
           " of ", used, " stored classes, but its shard has ", n, " records");
    }
    std::int64_t last_ticket = -1;
    for (index_t i = 0; i < n; ++i) {
      const ShardRecord& r = records[static_cast<std::size_t>(i)];
      if (r.slot < 0 || r.slot >= used || layout.owner(r.slot) != rank) {
        fail("shard book: record ", i, " (label ", r.label, ") has global slot ", r.slot,
             ", not one of rank ", rank, " of ", world_size, " below ", used);
      }
      const index_t slot = layout.local(r.slot);
      if (book.label_[static_cast<std::size_t>(slot)] >= 0) {
        fail("shard book: record ", i, " (label ", r.label, ") has slot ", r.slot, " taken twice");
      }
      if (r.label < 0 || book.map_.find(r.label) >= 0) {
        fail("shard book: record ", i, " has label ", r.label, ", negative or twice");
      }
      if (r.ticket <= last_ticket || r.ticket >= next_ticket) {
        fail("shard book: record ", i, " (label ", r.label, ") has ticket ", r.ticket,
             " after ", last_ticket, " and below ", next_ticket, ": not ascending");
      }
      if (r.last_written > counters.steps) {
        fail("shard book: record ", i, " (label ", r.label, ") was last written at step ",
             r.last_written, ", after the memory's step ", counters.steps);
      }
      last_ticket = r.ticket;
      book.place(slot, r.label, r.last_written, r.ticket);
    }
    book.used_ = used;
    book.next_ticket_ = next_ticket;
    book.counters_ = counters;
    return book;
  }

  const ShardLayout& layout() const { return layout_; }
  // Replicated: the same on every rank.
  index_t used() const {
    return used_;
  }  ///< classes stored over all ranks (global slots [0, used))
  const ShardCounters& counters() const { return counters_; }
  std::uint64_t steps() const { return counters_.steps; }
  std::int64_t next_ticket() const { return next_ticket_; }
  std::uint64_t refreshes() const { return counters_.refreshes; }
  std::uint64_t insertions() const { return counters_.insertions; }
  std::uint64_t evictions() const { return counters_.evictions; }
  // Local.
  index_t local_used() const { return layout_.local_count(used_); }
  /// The local slot of `label`, or -1 when this rank does not store it.
  index_t find(label_t label) const { return label >= 0 ? map_.find(label) : -1; }
  label_t label(index_t local_slot) const { return label_[static_cast<std::size_t>(local_slot)]; }
  std::uint64_t written(index_t local_slot) const {
    return written_[static_cast<std::size_t>(local_slot)];
  }
  std::int64_t ticket(index_t local_slot) const {
    return ticket_[static_cast<std::size_t>(local_slot)];
  }
  /// This rank's occupied local slots in eviction order: first(), then next(slot) until -1.
  index_t first() const { return queue_.front(); }
  index_t next(index_t local_slot) const { return queue_.next(local_slot); }
  /// This rank's records, oldest first.
  std::vector<ShardRecord> local_records() const {
    std::vector<ShardRecord> records;
    records.reserve(static_cast<std::size_t>(local_used()));
    for (index_t s = queue_.front(); s >= 0; s = queue_.next(s)) {
      const auto i = static_cast<std::size_t>(s);
      records.push_back({label_[i], written_[i], layout_.global(s), ticket_[i]});
    }
    return records;
  }

 private:
  template <class Comm>
  friend struct ShardPlanner;
  friend struct ShardApplier;

  static ShardLayout checked_layout(index_t capacity, int rank, int world_size) {
    if (capacity < 1) fail("shard book: capacity = ", capacity, " must be >= 1");
    if (world_size < 1) fail("shard book: world_size = ", world_size, " must be >= 1");
    if (rank < 0 || rank >= world_size) {
      fail("shard book: rank = ", rank, " is outside [0, ", world_size, ")");
    }
    return {capacity, rank, world_size};
  }

  // A loaded record at local slot `slot`, appended to the eviction order (records come in
  // ascending ticket).
  void place(index_t slot, label_t label, std::uint64_t written, std::int64_t ticket) {
    label_[static_cast<std::size_t>(slot)] = label;
    written_[static_cast<std::size_t>(slot)] = written;
    ticket_[static_cast<std::size_t>(slot)] = ticket;
    map_.insert(label, slot);
    queue_.push_back(slot);
  }

  ShardLayout layout_;
  std::vector<label_t> label_;          // per local slot, -1 when empty
  std::vector<std::uint64_t> written_;  // per local slot
  std::vector<std::int64_t> ticket_;    // per local slot
  SlotMap map_;                         // label -> local slot
  SlotQueue queue_;                     // local slots in ascending ticket order
  index_t used_ = 0;
  std::int64_t next_ticket_ = 0;
  ShardCounters counters_;
};

/// A write of one batch class into one of this rank's slots.
struct ShardWrite {
  index_t batch_class;  ///< index into the step's classes
  label_t label;
  index_t slot;  ///< local slot on this rank
  bool refresh;  ///< the class was stored here already; else it is new (maybe evicting)
  std::int64_t ticket;
};

/// What a step does to the bookkeeping: this rank's writes plus the replicated totals.
struct ShardPlan {
  std::vector<ShardWrite> writes;  ///< this rank's only: refreshes, then new classes
  index_t refreshes = 0;           ///< over all ranks (the same on every rank)
  index_t insertions = 0;
  index_t evictions = 0;
  index_t used_after = 0;
  std::int64_t next_ticket_after = 0;
};

template <class Comm>
struct ShardPlanner {
  static ShardPlan plan(const ShardBook& book, Span<const label_t> classes,
                        bool refresh_moves_to_back, Comm& comm) {
    static_assert(check_communicator<Comm>());
    const ShardLayout& layout = book.layout_;
    if (comm.world_size() != layout.world_size || comm.rank() != layout.rank) {
      fail("shard plan: the book is rank ", layout.rank, " of ", layout.world_size,
           " but the communicator is rank ", comm.rank(), " of ", comm.world_size());
    }
    const index_t C = classes.size;
    // The classes are the same on every rank (all-gathered), so these throws are too.
    if (C > layout.capacity) {
      fail("the batch has ", C, " distinct classes but the memory's capacity is ", layout.capacity);
    }
    for (index_t c = 0; c < C; ++c) {
      if (classes[c] < 0) fail("shard plan: classes[", c, "] = ", classes[c], " is negative");
      if (c > 0 && classes[c] <= classes[c - 1]) {
        fail("shard plan: classes must be distinct and ascending, but classes[", c - 1,
             "] = ", classes[c - 1], " and classes[", c, "] = ", classes[c]);
      }
    }

    // 1. Which classes are stored, anywhere.
    std::vector<index_t> local_slot(static_cast<std::size_t>(C));
    std::vector<std::int64_t> stored(static_cast<std::size_t>(C));
    for (index_t c = 0; c < C; ++c) {
      local_slot[static_cast<std::size_t>(c)] = book.find(classes[c]);
      stored[static_cast<std::size_t>(c)] = local_slot[static_cast<std::size_t>(c)] >= 0 ? 1 : 0;
    }
    if (C > 0) comm.all_reduce(stored.data(), C, ReduceOp::sum);
    index_t R = 0;
    for (index_t c = 0; c < C; ++c) {
      const std::int64_t n = stored[static_cast<std::size_t>(c)];
      if (n > 1) {
        fail("shard plan: class ", classes[c], " is stored on ", n,
             " ranks: the shards do not form one memory");
      }
      R += n;
    }
    const index_t k = C - R;
    const index_t k_fill = std::min(k, layout.capacity - book.used_);
    const index_t k_evict = k - k_fill;

    // 3. The k_evict globally oldest slots holding no class of the batch.
    std::vector<index_t> victims;
    if (k_evict > 0) victims = oldest(book, local_slot, k_evict, comm);

    // 2, 4. Slots and tickets of every class; keep the writes on this rank's slots.
    ShardPlan plan;
    plan.refreshes = R;
    plan.insertions = k;
    plan.evictions = k_evict;
    plan.used_after = book.used_ + k_fill;
    const std::int64_t base = book.next_ticket_;
    plan.next_ticket_after = base + (refresh_moves_to_back ? R : 0) + k;
    std::int64_t refreshed = 0, fresh = 0;
    for (index_t c = 0; c < C; ++c) {  // refreshes first, as the single-process memory
      if (stored[static_cast<std::size_t>(c)] == 0) continue;
      const std::int64_t ticket = refresh_moves_to_back ? base + refreshed : -1;
      ++refreshed;
      const index_t slot = local_slot[static_cast<std::size_t>(c)];
      if (slot < 0) continue;  // stored on another rank
      plan.writes.push_back(
          {c, classes[c], slot, true, refresh_moves_to_back ? ticket : book.ticket(slot)});
    }
    for (index_t c = 0; c < C; ++c) {
      if (stored[static_cast<std::size_t>(c)] != 0) continue;
      const std::int64_t ticket = base + (refresh_moves_to_back ? R : 0) + fresh;
      const index_t global =
          fresh < k_fill ? book.used_ + fresh : victims[static_cast<std::size_t>(fresh - k_fill)];
      ++fresh;
      if (layout.owner(global) == layout.rank) {
        plan.writes.push_back({c, classes[c], layout.local(global), false, ticket});
      }
    }
    return plan;
  }

 private:
  // Every rank offers its k oldest slots that hold no class of the batch; all pick the k oldest
  // offers. Returns their global slots, oldest first.
  static std::vector<index_t> oldest(const ShardBook& book, const std::vector<index_t>& local_slot,
                                     index_t k, Comm& comm) {
    std::vector<index_t> refreshed;  // local slots of this batch's classes, sorted
    for (index_t s : local_slot) {
      if (s >= 0) refreshed.push_back(s);
    }
    std::sort(refreshed.begin(), refreshed.end());
    constexpr std::int64_t none = std::numeric_limits<std::int64_t>::max();
    std::vector<std::int64_t> offers(static_cast<std::size_t>(2 * k), -1);
    for (index_t i = 0; i < k; ++i) offers[static_cast<std::size_t>(2 * i)] = none;
    index_t n = 0;
    for (index_t s = book.queue_.front(); s >= 0 && n < k; s = book.queue_.next(s)) {
      if (std::binary_search(refreshed.begin(), refreshed.end(), s)) continue;
      offers[static_cast<std::size_t>(2 * n)] = book.ticket(s);
      offers[static_cast<std::size_t>(2 * n + 1)] = book.layout_.global(s);
      ++n;
    }
    const auto W = static_cast<std::size_t>(comm.world_size());
    std::vector<std::int64_t> counts(W, 2 * k);
    std::vector<std::int64_t> all(W * static_cast<std::size_t>(2 * k));
    comm.all_gather(offers.data(), 2 * k, all.data(), counts.data());
    std::vector<std::pair<std::int64_t, std::int64_t>> pairs(W * static_cast<std::size_t>(k));
    for (std::size_t i = 0; i < pairs.size(); ++i) pairs[i] = {all[2 * i], all[2 * i + 1]};
    std::partial_sort(pairs.begin(), pairs.begin() + k, pairs.end());
    std::vector<index_t> victims(static_cast<std::size_t>(k));
    for (index_t i = 0; i < k; ++i) {
      if (pairs[static_cast<std::size_t>(i)].first == none) {
        fail("shard plan: ", k, " slots must be evicted but the ranks offered only ", i,
             ": the shards do not form one memory");
      }
      victims[static_cast<std::size_t>(i)] = pairs[static_cast<std::size_t>(i)].second;
    }
    return victims;
  }
};

struct ShardApplier {
  static void apply(ShardBook& book, const ShardPlan& plan, bool refresh_moves_to_back) noexcept {
    const std::uint64_t step = ++book.counters_.steps;
    for (const ShardWrite& w : plan.writes) {
      const auto slot = static_cast<std::size_t>(w.slot);
      if (w.refresh) {
        if (refresh_moves_to_back) book.queue_.move_to_back(w.slot);
      } else {
        if (book.label_[slot] >= 0) {  // eviction
          book.map_.erase(book.label_[slot]);
          book.queue_.unlink(w.slot);
        }
        book.label_[slot] = w.label;
        book.map_.insert(w.label, w.slot);  // cannot throw: the label was stored nowhere
        book.queue_.push_back(w.slot);
      }
      book.ticket_[slot] = w.ticket;
      book.written_[slot] = step;
    }
    book.used_ = plan.used_after;
    book.next_ticket_ = plan.next_ticket_after;
    book.counters_.refreshes += static_cast<std::uint64_t>(plan.refreshes);
    book.counters_.insertions += static_cast<std::uint64_t>(plan.insertions);
    book.counters_.evictions += static_cast<std::uint64_t>(plan.evictions);
  }
};

/// Plans a step's writes for the global batch's `classes` (distinct, ascending, the same on every
/// rank) without changing anything. A collective: every rank calls it. Throws protomem::Error, on
/// every rank alike, for more classes than the capacity, classes not ascending, or shards that do
/// not form one memory.
template <class Comm>
ShardPlan plan_shard_writes(const ShardBook& book, Span<const label_t> classes,
                            bool refresh_moves_to_back, Comm& comm) {
  return ShardPlanner<Comm>::plan(book, classes, refresh_moves_to_back, comm);
}

/// Applies a plan of plan_shard_writes() (bookkeeping only; the backend writes the prototypes).
inline void apply_shard_writes(ShardBook& book, const ShardPlan& plan,
                               bool refresh_moves_to_back) noexcept {
  ShardApplier::apply(book, plan, refresh_moves_to_back);
}

/// The whole logical memory, on every rank: all ranks' records in eviction order (ascending
/// ticket). A collective (two all-gathers, 4 int64 per stored class): for checkpoints and tests,
/// not for every step.
template <class Comm>
std::vector<ShardRecord> gather_records(const ShardBook& book, Comm& comm) {
  const std::vector<ShardRecord> mine = book.local_records();
  std::vector<std::int64_t> packed;
  packed.reserve(4 * mine.size());
  for (const ShardRecord& r : mine) {
    packed.insert(packed.end(),
                  {r.label, static_cast<std::int64_t>(r.last_written), r.slot, r.ticket});
  }
  const std::vector<std::int64_t> all =
      all_gather_varying(comm, packed.data(), static_cast<std::int64_t>(packed.size()));
  std::vector<ShardRecord> records(all.size() / 4);
  for (std::size_t i = 0; i < records.size(); ++i) {
    records[i] = {all[4 * i], static_cast<std::uint64_t>(all[4 * i + 1]), all[4 * i + 2],
                  all[4 * i + 3]};
  }
  std::sort(records.begin(), records.end(),
            [](const ShardRecord& a, const ShardRecord& b) { return a.ticket < b.ticket; });
  return records;
}

}  // namespace protomem::detail
