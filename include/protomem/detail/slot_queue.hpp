// The eviction order of occupied slots: a doubly linked list threaded through slot indices, oldest
// at the front. Every operation is O(1) and allocation-free after construction.
#pragma once

#include <vector>

#include <protomem/view.hpp>

namespace protomem::detail {

class SlotQueue {
 public:
  explicit SlotQueue(index_t capacity)
      : prev_(static_cast<std::size_t>(capacity), -1), next_(static_cast<std::size_t>(capacity), -1) {}

  index_t front() const { return head_; }
  index_t back() const { return tail_; }
  /// The slot after `slot` towards the back, or -1.
  index_t next(index_t slot) const { return next_[static_cast<std::size_t>(slot)]; }

  void push_back(index_t slot) {
    prev_[static_cast<std::size_t>(slot)] = tail_;
    next_[static_cast<std::size_t>(slot)] = -1;
    if (tail_ >= 0) next_[static_cast<std::size_t>(tail_)] = slot; else head_ = slot;
    tail_ = slot;
  }
  void unlink(index_t slot) {
    const index_t p = prev_[static_cast<std::size_t>(slot)], n = next_[static_cast<std::size_t>(slot)];
    if (p >= 0) next_[static_cast<std::size_t>(p)] = n; else head_ = n;
    if (n >= 0) prev_[static_cast<std::size_t>(n)] = p; else tail_ = p;
  }
  void move_to_back(index_t slot) {
    if (slot == tail_) return;
    unlink(slot);
    push_back(slot);
  }
  void clear() { head_ = tail_ = -1; }

 private:
  std::vector<index_t> prev_, next_;
  index_t head_ = -1, tail_ = -1;
};

}  // namespace protomem::detail
