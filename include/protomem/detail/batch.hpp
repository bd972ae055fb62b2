// The classes of a batch: its distinct labels and which samples are the exemplars of each.
#pragma once

#include <algorithm>
#include <numeric>
#include <vector>

#include <protomem/view.hpp>

namespace protomem::detail {

/// Distinct labels of a batch (ascending) and their exemplars, in compressed-row form:
/// the exemplars of class c are members[offsets[c] .. offsets[c + 1]).
struct BatchClasses {
  std::vector<label_t> labels;    // C distinct labels, ascending
  std::vector<index_t> offsets;   // C + 1
  std::vector<index_t> members;   // B sample indices, grouped by class, ascending within a class
  std::vector<index_t> class_of;  // B: class index of each sample

  index_t size() const { return static_cast<index_t>(labels.size()); }
  index_t samples() const { return static_cast<index_t>(class_of.size()); }
  index_t count(index_t c) const { return offsets[c + 1] - offsets[c]; }
};

inline BatchClasses group_by_class(LabelView y) {
  BatchClasses batch;
  batch.members.resize(static_cast<std::size_t>(y.size));
  std::iota(batch.members.begin(), batch.members.end(), index_t{0});
  std::stable_sort(batch.members.begin(), batch.members.end(),
                   [&](index_t a, index_t b) { return y[a] < y[b]; });
  batch.class_of.resize(static_cast<std::size_t>(y.size));
  for (index_t k = 0; k < y.size; ++k) {
    const index_t i = batch.members[static_cast<std::size_t>(k)];
    if (k == 0 || y[i] != batch.labels.back()) {
      batch.labels.push_back(y[i]);
      batch.offsets.push_back(k);
    }
    batch.class_of[static_cast<std::size_t>(i)] = batch.size() - 1;
  }
  batch.offsets.push_back(y.size);
  return batch;
}

}  // namespace protomem::detail
