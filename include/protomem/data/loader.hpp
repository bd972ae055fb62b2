// protomem::data::ImageLoader — decodes the batches a sampler picks, on worker threads, ahead of
// the training loop, through a bounded prefetch queue.
//
//   protomem::data::RecordIOSource source("train.rec");
//   protomem::IterateAndSample sampler(source.index(), {C, K, seed});
//   protomem::data::ImageLoader loader(source, [&] { return sampler.next().samples; },
//                                      {{112, 112, 3}, /*threads=*/4, /*prefetch=*/8});
//   protomem::data::ImageBatch batch = loader.next();  // batch.pixels: N x H x W x C uint8
//
// Batch number b holds the sample ids of the b-th call of `next_samples` - the calls are made one
// at a time, in order, under the loader's lock - and next() returns batches in that order. So the
// sequence of batches, pixels included, depends only on the sampler (its seed) and the data, never
// on the number of threads or their timing.
//
// Requires: `source` and whatever `next_samples` uses outlive the loader; threads >= 0 (0: decode
// in next()'s own thread), prefetch >= 1; next() from one thread at a time.
// Guarantees: at most `prefetch` batches are decoded or held ahead of the consumer (the bounded
// queue); a sample that cannot be read or decoded makes next() throw protomem::Error naming the
// file and record, when that batch is reached - unless `skip_corrupt`, which replaces it by the
// next sample of the same class (in the class's sample order, wrapping) that decodes, and counts
// it in the batch and in substituted(); a class with no decodable sample still throws. The
// destructor stops and joins the workers.
#pragma once

#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <mutex>
#include <protomem/data/decode.hpp>
#include <protomem/data/sources.hpp>
#include <protomem/error.hpp>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace protomem::data {

struct LoaderOptions {
  ImageSize size{32, 32, 1};  ///< every image is decoded to this size
  int threads = 2;            ///< decoding threads; 0 decodes in next()
  int prefetch = 4;           ///< batches decoded ahead of the consumer, >= 1
  bool skip_corrupt = false;  ///< replace an undecodable sample (see the header comment)
  /// Pixels a header may claim, JPEG scans (decode.hpp): an image over a limit is an undecodable
  /// sample, an Error naming it (or replaced, with skip_corrupt).
  DecodeLimits limits{};
};

struct ImageBatch {
  std::uint64_t number = 0;          ///< position in the sequence, from 0
  std::vector<index_t> samples;      ///< the ids asked for
  std::vector<index_t> decoded;      ///< the ids decoded (differ where substituted)
  std::vector<label_t> labels;       ///< labels[i]: the label of samples[i]
  std::vector<std::uint8_t> pixels;  ///< samples.size() x height x width x channels
  index_t substituted = 0;           ///< samples replaced (skip_corrupt)
};

class ImageLoader {
 public:
  using NextSamples = std::function<std::vector<index_t>()>;

  ImageLoader(const ImageSource& source, NextSamples next_samples, LoaderOptions options)
      : source_(source), next_samples_(std::move(next_samples)), options_(options) {
    if (options_.threads < 0 || options_.threads > 1024) {
      protomem::detail::fail("ImageLoader: threads = ", options_.threads,
                             " (must be in [0, 1024])");
    }
    // Batches decoded ahead are held in memory: more than 1024 is memory, not speed.
    if (options_.prefetch < 1 || options_.prefetch > 1024) {
      protomem::detail::fail("ImageLoader: prefetch = ", options_.prefetch,
                             " (must be in [1, 1024])");
    }
    const ImageSize& s = options_.size;
    if (s.width < 1 || s.height < 1 || (s.channels != 1 && s.channels != 3)) {
      protomem::detail::fail("ImageLoader: image size ", s.width, "x", s.height, "x", s.channels,
                             " (width, height >= 1; channels 1 or 3)");
    }
    check_decode_limits(options_.limits, "ImageLoader");
    check_output_size(s, options_.limits, "ImageLoader");
    if (!next_samples_) protomem::detail::fail("ImageLoader: no sample source (next_samples)");
    for (int t = 0; t < options_.threads; ++t) workers_.emplace_back([this] { work(); });
  }
  ImageLoader(const ImageLoader&) = delete;
  ImageLoader& operator=(const ImageLoader&) = delete;
  ~ImageLoader() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      stop_ = true;
    }
    can_issue_.notify_all();
    for (auto& worker : workers_) worker.join();
  }

  /// The next batch in sequence order (see the header comment); rethrows its error.
  ImageBatch next() {
    Slot slot;
    if (workers_.empty()) {
      slot.batch.number = consumed_++;
      fill(&slot);
    } else {
      std::unique_lock<std::mutex> lock(mutex_);
      is_ready_.wait(lock, [&] { return ready_.count(consumed_) != 0; });
      auto it = ready_.find(consumed_);
      slot = std::move(it->second);
      ready_.erase(it);
      ++consumed_;
      lock.unlock();
      can_issue_.notify_one();
    }
    if (slot.error) std::rethrow_exception(slot.error);
    substituted_ += static_cast<std::uint64_t>(slot.batch.substituted);
    return std::move(slot.batch);
  }

  /// Samples replaced so far in the batches next() returned (skip_corrupt).
  std::uint64_t substituted() const { return substituted_; }
  const LoaderOptions& options() const { return options_; }
  std::size_t image_bytes() const {
    return static_cast<std::size_t>(options_.size.width) * options_.size.height *
           options_.size.channels;
  }

 private:
  struct Slot {
    ImageBatch batch;
    std::exception_ptr error;
  };

  void work() {
    for (;;) {
      Slot slot;
      {
        std::unique_lock<std::mutex> lock(mutex_);
        can_issue_.wait(lock, [&] {
          return stop_ || issued_ < consumed_ + static_cast<std::uint64_t>(options_.prefetch);
        });
        if (stop_) return;
        slot.batch.number = issued_++;
        try {
          slot.batch.samples = next_samples_();  // in sequence order: under the lock
        } catch (...) {
          slot.error = std::current_exception();
        }
      }
      if (!slot.error) decode_batch(&slot);
      {
        std::lock_guard<std::mutex> lock(mutex_);
        ready_.emplace(slot.batch.number, std::move(slot));
      }
      is_ready_.notify_all();
    }
  }

  void fill(Slot* slot) {
    try {
      slot->batch.samples = next_samples_();
    } catch (...) {
      slot->error = std::current_exception();
      return;
    }
    decode_batch(slot);
  }

  void decode_batch(Slot* slot) const {
    try {
      ImageBatch& b = slot->batch;
      const std::size_t n = b.samples.size();
      const std::size_t bytes = image_bytes();
      b.pixels.resize(n * bytes);
      b.labels.resize(n);
      b.decoded.resize(n);
      for (std::size_t i = 0; i < n; ++i) {
        const index_t sample = b.samples[i];
        if (sample < 0 || sample >= source_.size()) {
          protomem::detail::fail("ImageLoader: sample id ", sample, " is outside [0, ",
                                 source_.size(), ")");
        }
        b.labels[i] = source_.label(sample);
        b.decoded[i] = decode_into(sample, &b.pixels[i * bytes]);
        if (b.decoded[i] != sample) ++b.substituted;
      }
    } catch (...) {
      slot->error = std::current_exception();
    }
  }

  // Decodes `sample` (or, with skip_corrupt, its replacement) into `out`; returns the id decoded.
  index_t decode_into(index_t sample, std::uint8_t* out) const {
    try {
      decode_one(sample, out);
      return sample;
    } catch (const Error& first) {
      if (!options_.skip_corrupt) throw;
      const DatasetIndex& index = source_.index();
      const auto members = index.samples(index.class_index(source_.label(sample)));
      index_t at = 0;
      while (members[at] != sample) ++at;
      for (index_t step = 1; step < members.size; ++step) {
        const index_t other = members[(at + step) % members.size];
        try {
          decode_one(other, out);
          return other;
        } catch (const Error&) {
        }
      }
      protomem::detail::fail("no sample of label ", source_.label(sample),
                             " decodes (skip_corrupt); the first: ", first.what());
    }
  }

  void decode_one(index_t sample, std::uint8_t* out) const {
    const std::string bytes = source_.bytes(sample);
    const Image image =
        decode_image(reinterpret_cast<const unsigned char*>(bytes.data()), bytes.size(),
                     options_.size, source_.describe(sample), options_.limits);
    std::copy(image.pixels.begin(), image.pixels.end(), out);
  }

  const ImageSource& source_;
  NextSamples next_samples_;
  LoaderOptions options_;
  std::mutex mutex_;
  std::condition_variable can_issue_;
  std::condition_variable is_ready_;
  std::uint64_t issued_ = 0;    // batches handed to workers
  std::uint64_t consumed_ = 0;  // the next batch next() returns
  std::map<std::uint64_t, Slot> ready_;
  bool stop_ = false;
  std::uint64_t substituted_ = 0;
  std::vector<std::thread> workers_;  // last: started after everything above exists
};

}  // namespace protomem::data
