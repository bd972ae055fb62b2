// protomem::DatasetIndex — which samples belong to which class: the input of the batch samplers
// (protomem/data/sampler.hpp).
//
// A sample is an integer id in [0, num_samples()): its position in the label array, or its line's
// position among the sample lines of a list file. Classes are the distinct labels, kept in
// ascending label order; class index i (0 <= i < num_classes()) names the i-th smallest label.
//
// List file format (from_list_file / from_list), one sample per line:
//     <path> <label>
// The label is the last whitespace-separated field, a non-negative decimal integer; the path is
// everything before it, trimmed (it may contain inner spaces). Empty lines and lines whose first
// non-blank character is '#' are skipped; a trailing '\r' (CRLF files) is ignored. Every malformed
// line throws protomem::Error naming the source, the 1-based line number and what is wrong (text
// from the file is escaped in messages, detail::escaped); so does a list with no sample line.
//
// Requires: at least one sample; labels >= 0.
// Guarantees: built once, immutable; class lookup by label in O(1) expected; the samples of a class
// are ascending. fingerprint() identifies the sample -> label assignment (samplers store it in
// their state so that a resumed run is checked to use the same data).
#pragma once

#include <algorithm>
#include <cstdint>
#include <fstream>
#include <istream>
#include <limits>
#include <numeric>
#include <protomem/detail/random.hpp>
#include <protomem/detail/regular_file.hpp>
#include <protomem/detail/slot_map.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>
#include <sstream>
#include <string>
#include <utility>
#include <vector>

namespace protomem {

class DatasetIndex {
 public:
  /// Sample i has label labels[i].
  static DatasetIndex from_labels(Span<const label_t> labels) {
    for (index_t i = 0; i < labels.size; ++i) {
      if (labels[i] < 0) detail::fail("dataset labels[", i, "] = ", labels[i], " is negative");
    }
    return DatasetIndex(std::vector<label_t>(labels.begin(), labels.end()), {});
  }
  static DatasetIndex from_labels(const std::vector<label_t>& labels) {
    return from_labels(Span<const label_t>{labels.data(), static_cast<index_t>(labels.size())});
  }

  /// Parses a list file (format above); `path` names it in errors.
  /// The file must be a regular file (a directory, device or FIFO is an Error at once); it is
  /// read up to the size stat() gives it.
  static DatasetIndex from_list_file(const std::string& path) {
    std::istringstream in(detail::read_regular_file(path, "dataset list"));
    return from_list(in, detail::escaped(path, 1024));
  }

  /// Parses a list (format above) from a stream; `source` names it in errors.
  static DatasetIndex from_list(std::istream& in, const std::string& source = "dataset list") {
    std::vector<label_t> labels;
    std::vector<std::string> paths;
    std::string line;
    for (std::uint64_t number = 1; std::getline(in, line); ++number) {
      if (!line.empty() && line.back() == '\r') line.pop_back();
      const std::size_t first = line.find_first_not_of(" \t");
      if (first == std::string::npos || line[first] == '#') continue;
      const std::size_t last = line.find_last_not_of(" \t");
      const std::size_t field = line.find_last_of(" \t", last);  // before the label
      const std::string text = line.substr(first, last + 1 - first);
      if (field == std::string::npos || field < first) {
        detail::fail(source, ":", number, ": expected '<path> <label>' but found one field '",
                     detail::escaped(text), "'");
      }
      const std::string label_text = line.substr(field + 1, last - field);
      const std::size_t path_end = line.find_last_not_of(" \t", field);
      labels.push_back(parse_label(label_text, source, number));
      paths.push_back(line.substr(first, path_end + 1 - first));
    }
    if (in.bad()) detail::fail(source, ": reading failed");
    if (labels.empty()) {
      detail::fail(source, ": holds no samples (every line is empty or a comment)");
    }
    return DatasetIndex(std::move(labels), std::move(paths));
  }

  index_t num_samples() const { return static_cast<index_t>(sample_label_.size()); }
  index_t num_classes() const { return static_cast<index_t>(class_label_.size()); }

  /// The label of class index `c` (ascending in c).
  label_t label(index_t c) const { return class_label_[static_cast<std::size_t>(c)]; }
  /// The class index of `label`, or -1 when no sample has it.
  index_t class_index(label_t label) const { return lookup_.find(label); }
  bool contains(label_t label) const { return lookup_.find(label) >= 0; }

  /// The samples of class index `c`, ascending.
  Span<const index_t> samples(index_t c) const {
    const auto from = offsets_[static_cast<std::size_t>(c)];
    const auto to = offsets_[static_cast<std::size_t>(c) + 1];
    return {members_.data() + from, to - from};
  }
  index_t class_size(index_t c) const {
    return offsets_[static_cast<std::size_t>(c) + 1] - offsets_[static_cast<std::size_t>(c)];
  }

  /// The label of sample `sample`.
  label_t label_of_sample(index_t sample) const {
    return sample_label_[static_cast<std::size_t>(sample)];
  }
  /// The path of each sample (empty when built from a label array).
  const std::vector<std::string>& paths() const { return paths_; }

  /// A 64-bit hash of (num_samples, every sample's label in order).
  std::uint64_t fingerprint() const { return fingerprint_; }

 private:
  DatasetIndex(std::vector<label_t> labels, std::vector<std::string> paths)
      : sample_label_(std::move(labels)), paths_(std::move(paths)), lookup_(0) {
    const auto n = static_cast<index_t>(sample_label_.size());
    if (n == 0) detail::fail("dataset: holds no samples");
    members_.resize(static_cast<std::size_t>(n));
    std::iota(members_.begin(), members_.end(), index_t{0});
    std::stable_sort(members_.begin(), members_.end(), [&](index_t a, index_t b) {
      return sample_label_[static_cast<std::size_t>(a)] <
             sample_label_[static_cast<std::size_t>(b)];
    });
    for (index_t k = 0; k < n; ++k) {
      const label_t l =
          sample_label_[static_cast<std::size_t>(members_[static_cast<std::size_t>(k)])];
      if (class_label_.empty() || class_label_.back() != l) {
        class_label_.push_back(l);
        offsets_.push_back(k);
      }
    }
    offsets_.push_back(n);
    lookup_ = detail::SlotMap(class_label_.size());
    for (std::size_t c = 0; c < class_label_.size(); ++c) {
      lookup_.insert(class_label_[c], static_cast<index_t>(c));
    }
    std::uint64_t h = detail::mix64(static_cast<std::uint64_t>(n));
    for (label_t l : sample_label_)
      h = detail::mix64(h ^ detail::mix64(static_cast<std::uint64_t>(l)));
    fingerprint_ = h;
  }

  static label_t parse_label(const std::string& text, const std::string& source,
                             std::uint64_t line) {
    if (text[0] == '-') {
      detail::fail(source, ":", line, ": label '", detail::escaped(text),
                   "' is negative (labels must be >= 0)");
    }
    label_t value = 0;
    for (char ch : text) {
      if (ch < '0' || ch > '9') {
        detail::fail(source, ":", line, ": label '", detail::escaped(text),
                     "' is not a non-negative integer");
      }
      const int digit = ch - '0';
      constexpr label_t largest = std::numeric_limits<label_t>::max();
      if (value > (largest - digit) / 10) {
        detail::fail(source, ":", line, ": label '", detail::escaped(text),
                     "' is out of range (at most ", largest, ")");
      }
      value = value * 10 + digit;
    }
    return value;
  }

  std::vector<label_t> sample_label_;  // per sample
  std::vector<std::string> paths_;     // per sample, or empty
  std::vector<label_t> class_label_;   // per class, ascending
  std::vector<index_t> offsets_;       // num_classes + 1
  std::vector<index_t> members_;       // samples grouped by class
  detail::SlotMap lookup_;             // label -> class index
  std::uint64_t fingerprint_ = 0;
};

}  // namespace protomem
