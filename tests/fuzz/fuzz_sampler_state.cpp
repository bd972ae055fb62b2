// Fuzz target: the sampler-state loader (IterateAndSample::load) on a fixed data set of 10 classes.
// Input: one mode byte, then the bytes handed to load(std::istream&); an odd mode byte first
// replaces the last four bytes by the CRC-32 of the others (to get past the checksum).
// Expected: load() succeeds or throws protomem::Error, leaving the sampler as it was; a loaded
// sampler saves the same state back and draws a batch of C x K samples of the data set.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <protomem/data/dataset_index.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/data/sampler.hpp>
#include <sstream>
#include <string>
#include <vector>

namespace {

[[noreturn]] void finding(const char* what) {
  std::fprintf(stderr, "fuzz finding: %s\n", what);
  std::abort();
}

const protomem::DatasetIndex& dataset() {
  static const protomem::DatasetIndex index = [] {
    std::vector<protomem::label_t> labels;
    for (protomem::label_t i = 0; i < 37; ++i) labels.push_back((i * 7) % 10 + (i % 3) * 100);
    return protomem::DatasetIndex::from_labels(labels);
  }();
  return index;
}

std::string state_of(const protomem::IterateAndSample& sampler) {
  std::ostringstream out;
  sampler.save(out);
  return out.str();
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (size == 0) return 0;
  std::string bytes(reinterpret_cast<const char*>(data) + 1, size - 1);
  if ((data[0] & 1U) != 0 && bytes.size() >= 4) {
    const std::uint32_t crc = protomem::detail::crc32(bytes.data(), bytes.size() - 4);
    for (int k = 0; k < 4; ++k) bytes[bytes.size() - 4 + k] = static_cast<char>(crc >> (8 * k));
  }
  protomem::IterateAndSample sampler(dataset(), {/*C=*/4, /*K=*/2, /*seed=*/7, 0.25});
  const std::string before = state_of(sampler);
  std::istringstream in(bytes);
  try {
    sampler.load(in, "fuzz input");
  } catch (const protomem::Error&) {
    if (state_of(sampler) != before) finding("a failed load changed the sampler");
    return 0;
  }
  const std::string saved = state_of(sampler);
  protomem::IterateAndSample copy(dataset(), {4, 2, 0, 0.25});
  std::istringstream again(saved);
  copy.load(again, "re-saved fuzz input");  // an Error here escapes: a finding
  if (state_of(copy) != saved) finding("a re-saved sampler state does not load back identically");
  const protomem::Batch batch = sampler.next();
  if (batch.samples.size() != 8 || batch.classes.size() != 4) finding("a batch of the wrong shape");
  for (protomem::index_t s : batch.samples) {
    if (s < 0 || s >= dataset().num_samples()) finding("a sample id outside the data set");
  }
  return 0;
}
