// Fuzz target: the data set list parser (DatasetIndex::from_list, format in dataset_index.hpp).
// Expected: it returns an index or throws protomem::Error; a returned index is consistent: every
// sample is in exactly one class, the class of its label, classes ascend, and the paths match the
// sample count.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <protomem/data/dataset_index.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {
[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz finding: %s\n", what);
  std::abort();
}
}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::istringstream in(std::string(reinterpret_cast<const char*>(data), size));
  try {
    const protomem::DatasetIndex index = protomem::DatasetIndex::from_list(in, "fuzz input");
    const protomem::index_t n = index.num_samples();
    if (n < 1 || static_cast<protomem::index_t>(index.paths().size()) != n) {
      finding("sample count and path count disagree");
    }
    std::vector<int> seen(static_cast<std::size_t>(n), 0);
    for (protomem::index_t c = 0; c < index.num_classes(); ++c) {
      if (c > 0 && index.label(c) <= index.label(c - 1)) finding("class labels do not ascend");
      if (index.class_index(index.label(c)) != c) finding("class lookup disagrees");
      for (protomem::index_t s : index.samples(c)) {
        if (s < 0 || s >= n) finding("a class holds a sample id out of range");
        if (index.label_of_sample(s) != index.label(c)) finding("a sample in the wrong class");
        ++seen[static_cast<std::size_t>(s)];
      }
    }
    for (int count : seen) {
      if (count != 1) finding("a sample is not in exactly one class");
    }
  } catch (const protomem::Error&) {
  }
  return 0;
}
