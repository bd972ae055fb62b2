// Batch samplers: which sample ids form each batch — C classes x K exemplars — for a memory step.
//
//   protomem::DatasetIndex index = protomem::DatasetIndex::from_list_file("train.lst");
//   protomem::IterateAndSample sampler(index, {/*C=*/64, /*K=*/4, /*seed=*/1});
//   protomem::Batch batch = sampler.next();            // batch.samples: C * K ids, K per class
//   protomem::Batch mined = sampler.next(memory.mining());   // with doppelganger fill (below)
//
// Requires: the DatasetIndex has at least C classes; K >= 1. A sampler built from a reference
// borrows the index (which must then outlive it; a temporary is refused at compile time); one built
// from a std::shared_ptr shares its ownership.
// Guarantees:
//   - Deterministic and portable: batch n is a pure function of (seed, n, the data set, and — for
//     the doppelganger fill — the mining table passed in). The randomness is splitmix64 with our
//     own bounded draws and shuffles (protomem/detail/random.hpp), not the standard library's
//     implementation-defined distributions, so a seed gives the same batches on every platform.
//   - Resumable: the state is the seed and the number of batches drawn; save() writes it (with the
//     configuration and a fingerprint of the data set, checked by load()); save(path) replaces a
//     file crash-safely (a failed save leaves the old file). A stream may hold a
//     memory checkpoint followed by the sampler state: PrototypeMemory::load(std::istream&) stops
//     at the end of its checkpoint, and load() here reads exactly one sampler state.
//   - Every batch holds C distinct classes; a class's K exemplars are distinct samples whenever the
//     class has at least K samples. A class with n < K samples contributes all n of them plus K - n
//     drawn uniformly with replacement from them.
//
// Class orders, side by side (the ClassOrder parameter of BatchSampler):
//   IterateClasses  (IterateAndSample) every class once per epoch, in an order shuffled afresh each
//                   epoch; an epoch is ceil(N / C_base) batches. When C_base does not divide N, the
//                   epoch's last batch takes its N mod C_base remaining classes and is completed
//                   with classes drawn without replacement from the epoch's other classes, so
//                   batches keep their shape and those few classes are visited twice in that epoch
//                   (default; docs/design.md, "The policies").
//   UniformClasses  (UniformSampler) each batch draws C_base distinct classes uniformly at random,
//                   independently of other batches; its nominal epoch is ceil(N / C_base) batches.
//
// Doppelganger fill (SamplerConfig::doppelganger_fraction = f > 0): C_mined = round(f C) of the C
// classes come from a mining table (e.g. PrototypeMemory::mining() with DoppelgangerMining), the
// other C_base = C - C_mined from the class order. The fill takes the hardest look-alikes first:
// among the doppelgangers of all base classes, in descending order of their recorded cosine (ties:
// by rank, then by batch order), each class not yet in the batch and present in the data set,
// until C_mined are found [our rule]. Where the table holds too few, the rest are drawn uniformly
// from the classes not yet in the batch (Batch says how many of each). The fill is extra visits:
// the class order still visits every class as a base class.
// A table is anything with Span<const label_t> doppelgangers(label_t) const and
// Span<const float> cosines(label_t) const (missing cosines count as 0).
#pragma once

#include <protomem/detail/language.hpp>  // first: C++17 is checked before anything else

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <istream>
#include <memory>
#include <numeric>
#include <ostream>
#include <protomem/data/dataset_index.hpp>
#include <protomem/detail/atomic_file.hpp>
#include <protomem/detail/checkpoint.hpp>
#include <protomem/detail/random.hpp>
#include <protomem/detail/serialize.hpp>
#include <protomem/error.hpp>
#include <protomem/policies/mining.hpp>
#include <protomem/view.hpp>
#include <sstream>
#include <string>
#include <unordered_set>
#include <utility>
#include <vector>

namespace protomem {

/// The shape of the batches and the seed.
struct SamplerConfig {
  index_t classes_per_batch = 0;    ///< C >= 1
  index_t exemplars_per_class = 0;  ///< K >= 1
  std::uint64_t seed = 0;
  /// f in [0, 1): share of the C classes filled with doppelgangers of the others (0: none);
  /// C_mined = round(f C), and C - C_mined >= 1.
  double doppelganger_fraction = 0;
};

/// One batch: C classes x K exemplars.
struct Batch {
  std::uint64_t number = 0;  ///< its position in the sampler's sequence, from 0
  std::uint64_t epoch = 0;   ///< number / batches_per_epoch()
  /// The C classes: base classes (class order) first, then doppelgangers from the mining table,
  /// then random fill where the table held too few.
  std::vector<label_t> classes;
  index_t base_classes = 0;      ///< C_base
  index_t mined_classes = 0;     ///< doppelgangers found in the table (<= C_mined)
  std::vector<index_t> samples;  ///< C * K sample ids: K for classes[0], then K for classes[1], ...
  std::vector<label_t> labels;   ///< labels[i]: the label of samples[i]

  index_t random_fill_classes() const {
    return static_cast<index_t>(classes.size()) - base_classes - mined_classes;
  }
};

namespace detail {
// Purposes of the counter-based random streams (detail::stream).
constexpr std::uint64_t kEpochOrderStream = 0x65706f6368ULL;  // "epoch"
constexpr std::uint64_t kBatchStream = 0x6261746368ULL;       // "batch"
}  // namespace detail

/// Every class once per epoch in a freshly shuffled order (see the header comment).
class IterateClasses {
 public:
  static constexpr const char* name = "iterate_and_sample";

  static std::uint64_t batches_per_epoch(index_t num_classes, index_t per_batch) {
    return static_cast<std::uint64_t>((num_classes + per_batch - 1) / per_batch);
  }

  /// Appends the `per_batch` class indices of batch `number`.
  void classes(index_t num_classes, index_t per_batch, std::uint64_t seed, std::uint64_t number,
               detail::SplitMix64& rng, std::vector<index_t>& out) {
    const std::uint64_t per_epoch = batches_per_epoch(num_classes, per_batch);
    const std::uint64_t epoch = number / per_epoch;
    if (!cached_ || epoch != epoch_) {
      order_.resize(static_cast<std::size_t>(num_classes));
      std::iota(order_.begin(), order_.end(), index_t{0});
      detail::SplitMix64 epoch_rng = detail::stream(seed, detail::kEpochOrderStream, epoch);
      detail::shuffle(order_, epoch_rng);
      epoch_ = epoch;
      cached_ = true;
    }
    const auto start = static_cast<index_t>(number % per_epoch) * per_batch;
    const index_t end = std::min(start + per_batch, num_classes);
    for (index_t p = start; p < end; ++p) out.push_back(order_[static_cast<std::size_t>(p)]);
    if (end - start < per_batch) {  // the epoch's last, partial batch: complete it
      std::vector<index_t> positions;
      detail::distinct_below(start, per_batch - (end - start), rng, positions);
      for (index_t p : positions) out.push_back(order_[static_cast<std::size_t>(p)]);
    }
  }

 private:
  // The current epoch's order, a cache: a pure function of (seed, epoch), never saved.
  bool cached_ = false;
  std::uint64_t epoch_ = 0;
  std::vector<index_t> order_;
};

/// Each batch: distinct classes drawn uniformly at random (see the header comment).
class UniformClasses {
 public:
  static constexpr const char* name = "uniform_classes";

  static std::uint64_t batches_per_epoch(index_t num_classes, index_t per_batch) {
    return static_cast<std::uint64_t>((num_classes + per_batch - 1) / per_batch);
  }

  void classes(index_t num_classes, index_t per_batch, std::uint64_t, std::uint64_t,
               detail::SplitMix64& rng, std::vector<index_t>& out) {
    detail::distinct_below(num_classes, per_batch, rng, out);
  }
};

/// Batches of C classes x K exemplars from a DatasetIndex, in the order of `ClassOrder`, optionally
/// filled with doppelgangers from a mining table (see the header comment).
template <class ClassOrder>
class BatchSampler {
 public:
  /// The most samples (C x K) a batch may hold.
  static constexpr index_t max_batch_samples = index_t{1} << 24;

  /// Borrows `index`, which must outlive the sampler.
  BatchSampler(const DatasetIndex& index, const SamplerConfig& config)
      : BatchSampler(std::shared_ptr<const DatasetIndex>(&index, [](const DatasetIndex*) {}),
                     config) {}
  /// A temporary index would dangle: pass a named one, or a shared_ptr to share its ownership.
  BatchSampler(DatasetIndex&&, const SamplerConfig&) = delete;
  /// Shares the ownership of `index`.
  BatchSampler(std::shared_ptr<const DatasetIndex> index, const SamplerConfig& config)
      : index_(std::move(index)), config_(config) {
    if (!index_) detail::fail("BatchSampler: the DatasetIndex pointer is null");
    const index_t C = config.classes_per_batch;
    const double f = config.doppelganger_fraction;
    if (C < 1) detail::fail("SamplerConfig::classes_per_batch = ", C, " must be >= 1");
    if (config.exemplars_per_class < 1) {
      detail::fail("SamplerConfig::exemplars_per_class = ", config.exemplars_per_class,
                   " must be >= 1");
    }
    // A batch holds C x K sample ids: beyond 2^24 (128 MB of ids) it is no training step, and
    // C x K = 2^40 ended in std::bad_alloc at the first batch.
    if (config.exemplars_per_class > max_batch_samples / C) {
      detail::fail("SamplerConfig: classes_per_batch x exemplars_per_class = ", C, " x ",
                   config.exemplars_per_class, " is more than ", max_batch_samples,
                   " samples a batch");
    }
    if (!(f >= 0.0 && f < 1.0)) {
      detail::fail("SamplerConfig::doppelganger_fraction = ", f, " is outside [0, 1)");
    }
    mined_per_batch_ = static_cast<index_t>(std::floor(f * static_cast<double>(C) + 0.5));
    if (mined_per_batch_ >= C) {
      detail::fail("SamplerConfig::doppelganger_fraction = ", f, " leaves no class of the ", C,
                   " per batch to the class order");
    }
    if (index_->num_classes() < C) {
      detail::fail("the data set has ", index_->num_classes(), " classes, fewer than the ", C,
                   " a batch needs");
    }
  }

  /// The next batch without doppelganger fill (the C_mined classes are random fill).
  Batch next() { return next(NoMining{}); }

  /// The next batch, its C_mined fill taken from `table` (see the header comment), e.g.
  /// memory.mining().
  template <class Table>
  Batch next(const Table& table) {
    Batch batch = make(position_, table);
    ++position_;
    return batch;
  }

  /// The number of batches drawn so far: the number of the next batch.
  std::uint64_t position() const { return position_; }
  /// Makes batch `number` the next one.
  void seek(std::uint64_t number) { position_ = number; }

  std::uint64_t batches_per_epoch() const {
    return ClassOrder::batches_per_epoch(index_->num_classes(), base_per_batch());
  }
  /// C_base: classes per batch chosen by the class order.
  index_t base_per_batch() const { return config_.classes_per_batch - mined_per_batch_; }
  /// C_mined = round(f C).
  index_t mined_per_batch() const { return mined_per_batch_; }
  const SamplerConfig& config() const { return config_; }
  std::uint64_t seed() const { return config_.seed; }
  const DatasetIndex& index() const { return *index_; }

  // ---- state
  // ------------------------------------------------------------------------------------- Format
  // (little-endian), version 1:
  //   "PMSAMPLR" | u32 version | u32-length class order name | u64 seed | u64 position
  //   | u64 C | u64 K | f64 doppelganger_fraction | u64 num_samples | u64 num_classes
  //   | u64 data set fingerprint | u32 CRC-32 (zlib) of every byte before it

  static constexpr std::uint32_t format_version = 1;

  void save(std::ostream& out) const {
    detail::ByteWriter w;
    detail::begin_frame(w, magic, format_version);
    w.put_string(ClassOrder::name);
    w.put<std::uint64_t>(config_.seed);
    w.put<std::uint64_t>(position_);
    w.put<std::uint64_t>(static_cast<std::uint64_t>(config_.classes_per_batch));
    w.put<std::uint64_t>(static_cast<std::uint64_t>(config_.exemplars_per_class));
    w.put<double>(config_.doppelganger_fraction);
    w.put<std::uint64_t>(static_cast<std::uint64_t>(index_->num_samples()));
    w.put<std::uint64_t>(static_cast<std::uint64_t>(index_->num_classes()));
    w.put<std::uint64_t>(index_->fingerprint());
    detail::end_frame(w);
    out.write(w.bytes().data(), static_cast<std::streamsize>(w.bytes().size()));
    if (!out) detail::fail("sampler save: writing to the stream failed");
  }

  /// Writes the state to the file at `path` crash-safely, as PrototypeMemory::save(path) does: a
  /// failed save throws and leaves the file at `path` as it was.
  void save(const std::string& path) const {
    std::ostringstream out;
    save(out);
    detail::write_file_atomically(path, out.str());
  }

  /// Reads the state file at `path` (which must hold exactly one state), as load(std::istream&).
  /// The file must be a regular file (a directory, device or FIFO is an Error at once).
  void load(const std::string& path) {
    std::istringstream in(detail::read_regular_file(path, "sampler load"));
    BatchSampler loaded = *this;
    loaded.load(in, detail::quoted_path(path));
    if (in.peek() != std::char_traits<char>::eof()) {
      detail::fail(detail::quoted_path(path), " has unexpected bytes after its sampler state");
    }
    *this = std::move(loaded);
  }

  /// Reads exactly one sampler state from `in` and restores its seed and position. Throws, leaving
  /// the sampler unchanged, when the state is truncated or corrupt, or was saved by a sampler with
  /// another class order, C, K, doppelganger fraction or data set.
  void load(std::istream& in, const std::string& source = "sampler state") {
    // A stream's own exceptions (exceptions() enabled, a throwing buffer) become an Error.
    detail::reading_stream(source, [&] { load_unguarded(in, source); });
  }

 private:
  void load_unguarded(std::istream& in, const std::string& source) {
    std::string bytes(16, '\0');
    auto read = [&](std::size_t at, std::size_t n) {
      in.read(&bytes[at], static_cast<std::streamsize>(n));
      if (static_cast<std::size_t>(in.gcount()) != n) {
        detail::fail(source, ": truncated sampler state (",
                     at + static_cast<std::size_t>(in.gcount()), " bytes)");
      }
    };
    read(0, 16);
    if (!detail::has_magic(bytes, magic)) {
      detail::fail(source, " is not a protomem sampler state (its first bytes are not \"",
                   std::string(magic, 8), "\")");
    }
    std::uint32_t name_length = 0;
    for (int k = 0; k < 4; ++k) {
      name_length |= std::uint32_t{static_cast<unsigned char>(bytes[12 + k])} << (8 * k);
    }
    if (name_length > 256)
      detail::fail(source, " is corrupt: class order name of ", name_length, " bytes");
    const std::size_t total = 16 + name_length + 8 * 8 + 4;
    bytes.resize(total);
    read(16, total - 16);

    detail::ByteReader r(bytes.data(), bytes.size(), source);
    r.get<std::uint64_t>("the magic bytes");
    const auto version = r.get<std::uint32_t>("the format version");
    const std::string order = r.get_string("the class order");
    const auto seed = r.get<std::uint64_t>("the seed");
    const auto position = r.get<std::uint64_t>("the position");
    const auto C = r.get<std::uint64_t>("C");
    const auto K = r.get<std::uint64_t>("K");
    const auto f = r.get<double>("the doppelganger fraction");
    const auto samples = r.get<std::uint64_t>("the sample count");
    const auto classes = r.get<std::uint64_t>("the class count");
    const auto fingerprint = r.get<std::uint64_t>("the data set fingerprint");
    r.get<std::uint32_t>("the checksum");
    detail::check_frame_crc(bytes, source, "the state");
    if (version != format_version) {
      detail::fail(source, " has sampler state version ", version, "; this build reads version ",
                   format_version);
    }
    if (order != ClassOrder::name) {
      detail::fail(source, " is the state of a '", detail::escaped(order),
                   "' sampler; this sampler is '", ClassOrder::name, "'");
    }
    if (C != static_cast<std::uint64_t>(config_.classes_per_batch) ||
        K != static_cast<std::uint64_t>(config_.exemplars_per_class) ||
        std::memcmp(&f, &config_.doppelganger_fraction, sizeof f) != 0) {
      detail::fail(source, " was saved with C = ", C, ", K = ", K, ", doppelganger fraction ", f,
                   "; this sampler has C = ", config_.classes_per_batch,
                   ", K = ", config_.exemplars_per_class, ", doppelganger fraction ",
                   config_.doppelganger_fraction);
    }
    if (samples != static_cast<std::uint64_t>(index_->num_samples()) ||
        classes != static_cast<std::uint64_t>(index_->num_classes()) ||
        fingerprint != index_->fingerprint()) {
      detail::fail(source, " was saved on another data set (", samples, " samples, ", classes,
                   " classes, fingerprint ", fingerprint, "); this one has ", index_->num_samples(),
                   " samples, ", index_->num_classes(), " classes, fingerprint ",
                   index_->fingerprint());
    }
    config_.seed = seed;
    position_ = position;
  }

 private:
  static constexpr char magic[9] = "PMSAMPLR";

  template <class Table>
  Batch make(std::uint64_t number, const Table& table) {
    const DatasetIndex& index = *index_;
    const index_t N = index.num_classes();
    const index_t C = config_.classes_per_batch, K = config_.exemplars_per_class;
    const index_t base = base_per_batch();
    detail::SplitMix64 rng = detail::stream(config_.seed, detail::kBatchStream, number);

    Batch batch;
    batch.number = number;
    batch.epoch = number / batches_per_epoch();
    std::vector<index_t> chosen;  // class indices
    chosen.reserve(static_cast<std::size_t>(C));
    order_.classes(N, base, config_.seed, number, rng, chosen);
    batch.base_classes = base;

    std::unordered_set<index_t> in_batch(chosen.begin(), chosen.end());  // membership only
    if (mined_per_batch_ > 0) {
      // Candidates: every (base class, doppelganger) entry, hardest (highest cosine) first; ties
      // keep the order rank r, then batch order.
      struct Candidate {
        float cosine;
        label_t label;
      };
      std::vector<std::pair<Span<const label_t>, Span<const float>>> rows;
      index_t longest = 0;
      for (index_t b = 0; b < base; ++b) {
        const label_t label = index.label(chosen[static_cast<std::size_t>(b)]);
        rows.emplace_back(table.doppelgangers(label), table.cosines(label));
        longest = std::max(longest, rows.back().first.size);
      }
      std::vector<Candidate> candidates;
      for (index_t r = 0; r < longest; ++r) {
        for (const auto& [found, cosines] : rows) {
          if (r < found.size)
            candidates.push_back({r < cosines.size ? cosines[r] : 0.0f, found[r]});
        }
      }
      std::stable_sort(candidates.begin(), candidates.end(),
                       [](const Candidate& x, const Candidate& y) { return x.cosine > y.cosine; });
      for (const Candidate& candidate : candidates) {
        if (batch.mined_classes == mined_per_batch_) break;
        const index_t c = index.class_index(candidate.label);
        if (c < 0 || !in_batch.insert(c).second) continue;
        chosen.push_back(c);
        ++batch.mined_classes;
      }
      while (static_cast<index_t>(chosen.size()) < C) {  // random fill; N >= C, so this ends
        const auto c = static_cast<index_t>(rng.below(static_cast<std::uint64_t>(N)));
        if (in_batch.insert(c).second) chosen.push_back(c);
      }
    }

    batch.classes.reserve(chosen.size());
    batch.samples.reserve(static_cast<std::size_t>(C * K));
    std::vector<index_t> picks;
    for (index_t c : chosen) {
      const label_t label = index.label(c);
      const Span<const index_t> members = index.samples(c);
      batch.classes.push_back(label);
      picks.clear();
      if (members.size >= K) {
        detail::distinct_below(members.size, K, rng, picks);
      } else {  // every sample once, the rest with replacement
        for (index_t s = 0; s < members.size; ++s) picks.push_back(s);
        for (index_t s = members.size; s < K; ++s) {
          picks.push_back(
              static_cast<index_t>(rng.below(static_cast<std::uint64_t>(members.size))));
        }
      }
      for (index_t p : picks) {
        batch.samples.push_back(members[p]);
        batch.labels.push_back(label);
      }
    }
    return batch;
  }

  std::shared_ptr<const DatasetIndex> index_;  // owned, or borrowed (a no-op deleter)
  SamplerConfig config_;
  index_t mined_per_batch_ = 0;
  std::uint64_t position_ = 0;
  ClassOrder order_;
};

/// Every class once per epoch, K exemplars each (the default sampler).
using IterateAndSample = BatchSampler<IterateClasses>;
/// Uniformly random classes in each batch, K exemplars each.
using UniformSampler = BatchSampler<UniformClasses>;

}  // namespace protomem
