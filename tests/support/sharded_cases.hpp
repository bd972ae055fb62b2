// Test support: the sharded memory (protomem/sharded.hpp) against the single-process memory, run by
// every rank with its own communicator - threads (ThreadComm), MPI ranks and c10d processes alike.
//
// Every rank draws the same global batches from the same seed (uneven splits, often an empty rank)
// and steps a plain PrototypeMemory on the concatenated batch as its reference; the sharded memory
// sees only the rank's own rows. After each step: the loss and this rank's gradient rows, the
// batch's classes and most similar stored classes, the bytes exchanged (against the traffic model
// of docs/distributed.md, computed here from the batch), and every few steps the whole logical memory
// gathered from the shards (labels, last-written steps, order, counters; prototypes to rounding).
// Failures are collected in an Expect (Catch2's macros are not thread safe); a failed expectation
// never returns early, so no rank leaves the others waiting in a collective.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <protomem/memory.hpp>
#include <protomem/memory.hpp>

#include "comm_cases.hpp"

namespace protomem::test {

/// One step's global batch, the same on every rank: rows[r] rows from rank r, rank 0's first.
template <class Scalar>
struct GlobalBatch {
  std::vector<std::int64_t> rows;  // per rank
  std::vector<label_t> labels;     // B
  std::vector<Scalar> embeddings;  // B x D
  std::int64_t offset(int rank) const {
    std::int64_t o = 0;
    for (int r = 0; r < rank; ++r) o += rows[static_cast<std::size_t>(r)];
    return o;
  }
};

/// Draws global batches: 1-24 rows over 4x `capacity` labels, a hot range refreshed again and
/// again, classes with 1-3 exemplars, split unevenly over the ranks, one rank empty every third
/// step (and, with W = 1, never the whole batch).
template <class Scalar>
class ShardedBatches {
 public:
  ShardedBatches(std::uint64_t seed, index_t capacity, index_t dim, int world_size)
      : rng_(seed), capacity_(capacity), dim_(dim), world_(world_size) {}

  GlobalBatch<Scalar> next() {
    GlobalBatch<Scalar> b;
    std::uniform_int_distribution<int> classes(1, 10), exemplars(1, 3), hot(0, 3);
    std::uniform_int_distribution<label_t> any(0, 4 * capacity_ - 1), recent(0, capacity_ / 3);
    const int C = classes(rng_);
    for (int c = 0; c < C; ++c) {
      const label_t label = hot(rng_) == 0 ? recent(rng_) : any(rng_);
      if (std::find(b.labels.begin(), b.labels.end(), label) != b.labels.end()) continue;
      for (int e = exemplars(rng_); e > 0; --e) b.labels.push_back(label);
    }
    std::shuffle(b.labels.begin(), b.labels.end(), rng_);
    const auto B = static_cast<std::int64_t>(b.labels.size());
    // Uneven split: cut points drawn at random; every third step one rank gets nothing.
    b.rows.assign(static_cast<std::size_t>(world_), 0);
    const int empty = (step_ % 3 == 0 && world_ > 1) ? static_cast<int>(step_ / 3 % world_) : -1;
    std::vector<std::int64_t> cuts;
    std::uniform_int_distribution<std::int64_t> cut(0, B);
    for (int r = 0; r + 1 < world_; ++r) cuts.push_back(cut(rng_));
    std::sort(cuts.begin(), cuts.end());
    cuts.insert(cuts.begin(), 0);
    cuts.push_back(B);
    for (int r = 0; r < world_; ++r) {
      b.rows[static_cast<std::size_t>(r)] = cuts[static_cast<std::size_t>(r) + 1] - cuts[r];
    }
    if (empty >= 0) {  // hand the empty rank's rows to its neighbour
      const int to = (empty + 1) % world_;
      b.rows[static_cast<std::size_t>(to)] += b.rows[static_cast<std::size_t>(empty)];
      b.rows[static_cast<std::size_t>(empty)] = 0;  // the blocks stay in rank order
    }
    b.embeddings.resize(static_cast<std::size_t>(B * dim_));
    std::normal_distribution<double> normal;
    for (Scalar& v : b.embeddings) v = static_cast<Scalar>(normal(rng_));
    ++step_;
    return b;
  }

 private:
  std::mt19937_64 rng_;
  index_t capacity_, dim_;
  int world_;
  std::uint64_t step_ = 0;
};

/// max |a - b| / max(max |b|, tiny): the relative error of a block of values.
template <class Scalar>
double relative_error(const Scalar* a, const Scalar* b, std::size_t n) {
  double diff = 0, scale = 0;
  for (std::size_t i = 0; i < n; ++i) {
    diff = std::max(diff, std::fabs(double(a[i]) - double(b[i])));
    scale = std::max(scale, std::fabs(double(b[i])));
  }
  return diff / std::max(scale, 1e-300);
}

/// Whether a communicator pads uneven all-gathers to the largest count and counts the padding
/// (the c10d adapter; tests/comm/test_c10d.cpp specialises this).
template <class Comm>
inline constexpr bool pads_gathers = false;

/// The bytes (sent + received) one rank exchanges in a sharded step, from the traffic model of
/// docs/distributed.md: margin agreement (2 int64, all-reduce), validation flag (1 int64),
/// batch sizes (1 int64 per rank), labels and embeddings (B rows; W times the largest share when
/// the engine pads), stored flags (C int64), eviction offers (2 k_evict int64 per rank), row
/// maxima (B), [row sums | weighted rows] (B (D + 1)), and the most similar classes (3 C k int64
/// per rank) when k > 0. Zero on one rank.
inline std::uint64_t model_step_bytes(std::uint64_t scalar_bytes,
                                      const std::vector<std::int64_t>& rows, bool padded,
                                      std::int64_t D, std::int64_t C, std::int64_t k_evict,
                                      std::int64_t k) {
  const auto W = static_cast<std::uint64_t>(rows.size());
  if (W == 1) return 0;
  std::uint64_t b = 0, largest = 0;
  for (std::int64_t r : rows) {
    b += static_cast<std::uint64_t>(r);
    largest = std::max(largest, static_cast<std::uint64_t>(r));
  }
  const std::uint64_t gathered_rows = padded ? largest * W : b;
  const auto d = static_cast<std::uint64_t>(D), c = static_cast<std::uint64_t>(C);
  auto reduce = [](std::uint64_t bytes) { return 2 * bytes; };         // sent + received
  auto gather_equal = [&](std::uint64_t bytes) { return bytes * W; };  // mine + W-1 others
  std::uint64_t total = reduce(16) + reduce(8) + gather_equal(8);
  total += 8 * gathered_rows;                 // labels: mine sent, the others' received
  total += scalar_bytes * gathered_rows * d;  // embeddings
  if (c > 0) total += reduce(8 * c);          // stored flags
  if (k_evict > 0) total += gather_equal(16 * static_cast<std::uint64_t>(k_evict));
  total += reduce(scalar_bytes * b) + reduce(scalar_bytes * b * (d + 1));
  if (k > 0) total += gather_equal(24 * c * static_cast<std::uint64_t>(k));
  return total;
}

/// The single-process reference: the default policies but for the Queue (constructor objects).
template <class Scalar, class Queue = LeastRecentlyWritten>
class ReferenceMemory : public PrototypeMemory<Scalar> {
 public:
  explicit ReferenceMemory(const Config& config) : PrototypeMemory<Scalar>(config, Queue{}) {}
};
/// The same memory over the ranks of `comm`, with the same policies as ReferenceMemory.
template <class Scalar, class Comm, class Queue = LeastRecentlyWritten>
class Sharded : public PrototypeMemory<Scalar> {
 public:
  using communicator_type = Comm;  // what the traffic model needs to know of the engine
  Sharded(Comm& comm, const Config& config) : PrototypeMemory<Scalar>(comm, config, Queue{}) {}
};

inline Config sharded_test_config() {
  Config config;
  config.capacity = 29;  // not a multiple of 2, 3 or 4: uneven shares
  config.dim = 8;
  config.threads = 1;
  config.similar_k = 3;
  return config;
}

/// The logical memory of the sharded memory (gathered) against the reference's iteration.
template <class Scalar, class ShardedMemory, class Reference>
void expect_same_memory(const ShardedMemory& sharded, const Reference& reference, double tolerance,
                        Expect& expect) {
  const auto records = sharded.gather_records();  // a collective: every rank, every time
  std::vector<label_t> labels, ref_labels;
  std::vector<std::uint64_t> ages, ref_ages;
  double worst = 0;
  auto it = reference.begin();
  for (const auto& r : records) {
    labels.push_back(r.label);
    ages.push_back(r.last_written);
    if (it != reference.end()) {
      const auto ref = *it;
      worst = std::max(worst, relative_error(r.prototype.data(), &ref.prototype[0],
                                             static_cast<std::size_t>(reference.dim())));
      ++it;
    }
  }
  for (const auto& r : reference) {
    ref_labels.push_back(r.label);
    ref_ages.push_back(r.last_written);
  }
  expect(labels == ref_labels, "stored labels in eviction order differ from the reference's");
  expect(ages == ref_ages, "last-written steps differ from the reference's");
  expect(worst <= tolerance, "prototypes differ by " + std::to_string(worst));
  const Stats a = sharded.stats(), b = reference.stats();
  expect(a.steps == b.steps && a.refreshes == b.refreshes && a.insertions == b.insertions &&
             a.evictions == b.evictions,
         "counters differ from the reference's");
  expect(sharded.size() == reference.size(), "size differs from the reference's");
}

/// One step of both memories on `batch`: loss, this rank's gradient rows, classes, similar
/// classes and traffic compared.
template <class Scalar, class ShardedMemory, class Reference>
void step_both(ShardedMemory& sharded, Reference& reference, const GlobalBatch<Scalar>& batch,
               double tolerance, Expect& expect) {
  const int r = sharded.rank();
  const index_t D = reference.dim();
  const auto B = static_cast<index_t>(batch.labels.size());
  const std::int64_t mine = batch.rows[static_cast<std::size_t>(r)], offset = batch.offset(r);
  std::vector<Scalar> ref_gradient(static_cast<std::size_t>(B * D));
  const std::uint64_t evictions_before = reference.stats().evictions;
  const StepResult<Scalar> ref =
      reference.forward(matrix_view<const Scalar>(batch.embeddings.data(), B, D),
                        label_view(batch.labels.data(), B), matrix_view(ref_gradient.data(), B, D));
  reference.commit();
  const std::int64_t k_evict =
      static_cast<std::int64_t>(reference.stats().evictions - evictions_before);

  // This rank's rows, with a row stride wider than dim (the memory packs them).
  const index_t stride = D + 3;
  std::vector<Scalar> e(static_cast<std::size_t>(std::max<std::int64_t>(mine, 1) * stride), 7);
  std::vector<Scalar> g(e.size(), 0);
  for (std::int64_t i = 0; i < mine; ++i) {
    std::copy_n(batch.embeddings.data() + (offset + i) * D, D, e.data() + i * stride);
  }
  const StepResult<Scalar> got = sharded.forward(
      matrix_view<const Scalar>(e.data(), mine, D, stride),
      label_view(batch.labels.data() + offset, mine), matrix_view(g.data(), mine, D, stride));
  sharded.commit();

  const double loss_error = std::fabs(double(got.loss) - double(ref.loss)) /
                            std::max(std::fabs(double(ref.loss)), 1e-300);
  expect(loss_error <= tolerance, "loss " + std::to_string(got.loss) + " vs the reference's " +
                                      std::to_string(ref.loss));
  double worst = 0;
  for (std::int64_t i = 0; i < mine; ++i) {
    worst = std::max(worst, relative_error(g.data() + i * stride,
                                           ref_gradient.data() + (offset + i) * D,
                                           static_cast<std::size_t>(D)));
  }
  expect(worst <= tolerance, "gradient rows differ by " + std::to_string(worst));
  expect(got.classes == ref.classes, "the batch's classes differ");
  expect(got.similar_k == ref.similar_k, "similar_k differs");
  expect(got.similar == ref.similar, "the most similar stored classes differ");
  double cos_worst = 0;
  for (std::size_t j = 0; j < got.similar_cosines.size() && j < ref.similar_cosines.size(); ++j) {
    if (std::isfinite(ref.similar_cosines[j])) {
      cos_worst = std::max(cos_worst, std::fabs(double(got.similar_cosines[j]) -
                                                double(ref.similar_cosines[j])));
    } else if (got.similar_cosines[j] != ref.similar_cosines[j]) {
      cos_worst = 1;
    }
  }
  expect(cos_worst <= tolerance, "similar cosines differ by " + std::to_string(cos_worst));
  const std::uint64_t model =
      model_step_bytes(sizeof(Scalar), batch.rows,
                       pads_gathers<typename ShardedMemory::communicator_type>, D,
                       static_cast<std::int64_t>(ref.classes.size()), k_evict, ref.similar_k);
  expect(got.traffic.bytes() == model, "traffic " + std::to_string(got.traffic.bytes()) +
                                           " bytes, the model says " + std::to_string(model));
  // Columns past dim of the caller's gradient are not touched.
  bool untouched = true;
  for (std::int64_t i = 0; i < mine; ++i) {
    for (index_t k = D; k < stride; ++k) untouched = untouched && g[static_cast<std::size_t>(i * stride + k)] == 0;
  }
  expect(untouched, "the gradient was written past dim");
}

/// `steps` steps of the sharded memory against the reference on the concatenated batches.
template <class Scalar, class Queue, class Comm>
void check_sharded_matches_single(Comm& comm, int steps, double tolerance, Expect& expect) {
  const Config config = sharded_test_config();
  Sharded<Scalar, Comm, Queue> sharded(comm, config);
  ReferenceMemory<Scalar, Queue> reference(config);
  ShardedBatches<Scalar> batches(2024, config.capacity, config.dim, comm.world_size());
  for (int t = 0; t < steps; ++t) {
    expect.context = "rank " + std::to_string(comm.rank()) + " of " +
                     std::to_string(comm.world_size()) + ", step " + std::to_string(t + 1);
    step_both(sharded, reference, batches.next(), tolerance, expect);
    if (t % 7 == 6 || t + 1 == steps) expect_same_memory<Scalar>(sharded, reference, tolerance, expect);
  }
  expect(reference.stats().evictions > 20, "too few evictions to test eviction");
}

/// Bad input on one rank (`bad_rank`): every rank throws the same protomem::Error naming that rank
/// and the value, nothing changes anywhere, and the next good step runs on every rank.
template <class Comm>
void check_sharded_bad_input(Comm& comm, int bad_rank, Expect& expect) {
  using Scalar = double;
  const Config config = sharded_test_config();
  Sharded<Scalar, Comm> sharded(comm, config);
  ReferenceMemory<Scalar> reference(config);
  ShardedBatches<Scalar> batches(99, config.capacity, config.dim, comm.world_size());
  for (int t = 0; t < 12; ++t) step_both(sharded, reference, batches.next(), 1e-10, expect);
  const auto before = sharded.gather_records();
  const std::string W = std::to_string(comm.world_size());

  const GlobalBatch<Scalar> batch = batches.next();
  for (int kind = 0; kind < 3; ++kind) {
    const std::int64_t mine = batch.rows[static_cast<std::size_t>(comm.rank())];
    const std::int64_t offset = batch.offset(comm.rank());
    const index_t D = config.dim;
    std::vector<label_t> labels(batch.labels.begin() + offset, batch.labels.begin() + offset + mine);
    std::vector<Scalar> e(batch.embeddings.begin() + offset * D,
                          batch.embeddings.begin() + (offset + mine) * D);
    std::vector<Scalar> g(e.size(), 5);
    std::string needle;
    if (comm.rank() == bad_rank) {
      if (labels.empty()) {  // the bad rank needs a row to spoil
        labels.push_back(1);
        e.assign(static_cast<std::size_t>(D), 0.5);
        g.assign(e.size(), 5);
      }
      if (kind == 0) labels.back() = -3;
      if (kind == 1) e[1] = std::numeric_limits<Scalar>::quiet_NaN();
      if (kind == 2) std::fill(e.end() - D, e.end(), Scalar(0));
    }
    needle = kind == 0 ? "] = -3 is negative" : kind == 1 ? "is not finite" : "has norm 0";
    const auto n = static_cast<index_t>(labels.size());
    std::string message;
    try {
      sharded.forward(matrix_view<const Scalar>(e.data(), n, D), label_view(labels.data(), n),
                      matrix_view(g.data(), n, D));
    } catch (const Error& error) {
      message = error.what();
    }
    expect.context = "rank " + std::to_string(comm.rank()) + ", bad input " + std::to_string(kind);
    expect(message.find("rank " + std::to_string(bad_rank) + " of " + W + ": ") !=
               std::string::npos,
           "the error does not name the bad rank: '" + message + "'");
    expect(message.find(needle) != std::string::npos,
           "the error does not name the value: '" + message + "'");
    expect(!sharded.pending(), "a failed forward left an update pending");
    bool untouched = true;
    for (Scalar v : g) untouched = untouched && v == 5;
    expect(untouched, "a failed forward wrote the gradient");
  }
  const auto after = sharded.gather_records();
  bool same = after.size() == before.size();
  for (std::size_t i = 0; same && i < after.size(); ++i) {
    same = after[i].label == before[i].label && after[i].last_written == before[i].last_written &&
           after[i].prototype == before[i].prototype;
  }
  expect(same, "a failed step changed the memory");
  // The collectives are still aligned: good steps run on every rank and agree.
  expect.context = "rank " + std::to_string(comm.rank()) + ", after the failures";
  step_both(sharded, reference, batch, 1e-10, expect);
  step_both(sharded, reference, batches.next(), 1e-10, expect);
  expect_same_memory<Scalar>(sharded, reference, 1e-10, expect);
}

/// Checkpoint files: W ranks save (rank 0 writes `path`); every rank loads the file into a plain
/// PrototypeMemory (N -> 1, no communicator) and both continue identically; the sharded memory
/// loads it back and continues as a plain memory loaded from it; a corrupt file fails the load on
/// every rank and changes nothing. `path` must be the same on every rank (a shared directory).
template <class Comm>
void check_sharded_checkpoint_file(Comm& comm, const std::string& path, Expect& expect) {
  using Scalar = double;
  const Config config = sharded_test_config();
  const index_t D = config.dim;
  Sharded<Scalar, Comm> sharded(comm, config);
  ReferenceMemory<Scalar> reference(config);
  ShardedBatches<Scalar> batches(4242, config.capacity, D, comm.world_size());
  expect.context = "rank " + std::to_string(comm.rank()) + ", checkpoint file";
  for (int t = 0; t < 30; ++t) step_both(sharded, reference, batches.next(), 1e-10, expect);
  sharded.save(path);  // returns on every rank once rank 0 has written the file
  ReferenceMemory<Scalar> plain(config);
  plain.load(path);
  expect_same_memory<Scalar>(sharded, plain, 1e-10, expect);
  for (int t = 0; t < 20; ++t) {
    const GlobalBatch<Scalar> b = batches.next();
    step_both(sharded, reference, b, 1e-10, expect);
    std::vector<Scalar> g(b.embeddings.size());
    const auto B = static_cast<index_t>(b.labels.size());
    plain.step(matrix_view<const Scalar>(b.embeddings.data(), B, D), label_view(b.labels.data(), B),
               matrix_view(g.data(), B, D));
  }
  expect_same_memory<Scalar>(sharded, plain, 1e-10, expect);
  // Back to the saved state, on every rank, and on with a plain memory loaded from the same file.
  sharded.load(path);
  ReferenceMemory<Scalar> restored(config);
  restored.load(path);
  for (int t = 0; t < 10; ++t) step_both(sharded, restored, batches.next(), 1e-10, expect);
  expect_same_memory<Scalar>(sharded, restored, 1e-10, expect);
  // A corrupt copy (written by rank 0; the agreement makes every rank wait for it).
  const std::string bad = path + ".corrupt";
  detail::collective_check(comm, [&] {
    if (comm.rank() != 0) return;
    std::string bytes = detail::read_file(path);
    bytes[bytes.size() - 7] ^= 0x10;
    detail::write_file_atomically(bad, bytes);
  });
  std::string message;
  try {
    sharded.load(bad);
  } catch (const Error& e) {
    message = e.what();
  }
  expect(message.find("rank 0 of " + std::to_string(comm.world_size()) + ": '" + bad + "'") !=
             std::string::npos,
         "a corrupt checkpoint did not fail on every rank naming rank 0 and the file: '" +
             message + "'");
  for (int t = 0; t < 5; ++t) step_both(sharded, restored, batches.next(), 1e-10, expect);
  expect_same_memory<Scalar>(sharded, restored, 1e-10, expect);
  detail::collective_check(comm, [&] {
    if (comm.rank() == 0) std::remove(bad.c_str());
  });
}

}  // namespace protomem::test
