// Queue policies: the order in which a full memory gives up slots. A slot is never evicted in favour
// of a class of the same batch.
//
// A Queue policy must provide
//   static constexpr const char* name;
//   static constexpr bool refresh_moves_to_back;  // a refreshed class becomes the newest
//   void save(detail::ByteWriter&) const;  void load(detail::ByteReader&);
//
// Alternatives, side by side:
//   LeastRecentlyWritten  evict the slot written longest ago; a refresh counts as a write (default).
//                         Under a class-iterating sampler with C classes per batch, no slot of a
//                         full memory of M slots is older than ceil(M / C) steps.
//   FirstInFirstOut       evict the class inserted longest ago; refreshes do not change the order,
//                         so a step that refreshes evicts fewer slots and the ceil(M / C) bound
//                         does not hold (tests/test_memory.cpp measures 13 steps against 12).
//
// Within one step, the refreshed classes (least recently written) move to the back before the new
// ones are appended, each group in ascending label order; the victims are chosen first, oldest
// first, skipping slots that hold a class of the batch.
#pragma once

#include <protomem/detail/serialize.hpp>

namespace protomem {

/// Evict the least recently written slot (the default).
struct LeastRecentlyWritten {
  static constexpr const char* name = "least_recently_written";
  static constexpr bool refresh_moves_to_back = true;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

/// Evict in insertion order; a refresh leaves a class where it is in the queue.
struct FirstInFirstOut {
  static constexpr const char* name = "first_in_first_out";
  static constexpr bool refresh_moves_to_back = false;
  void save(detail::ByteWriter&) const {}
  void load(detail::ByteReader&) {}
};

}  // namespace protomem
