// bench_loader: the image reader's throughput (protomem/data.hpp) - what the CNN training step
// (examples/train --encoder cnn) has to be fed.
//
//   BM_Open            open the data set (every record's frame and image header, the class index);
//                      counter peak_rss_mb: the process's peak RSS after opening (run it alone:
//                      --benchmark_filter=BM_Open)
//   BM_Decode/S        read one record + decode + resize to S x S grayscale, one thread: images/s
//                      per core (counter images_per_s)
//   BM_Loader/T/B      ImageLoader with T decoding threads, batches of B images from an
//                      IterateAndSample sampler (K = 4), prefetch 4: images/s the consumer receives
//
// Data: $PROTOMEM_BENCH_DATA, a .rec (with its .idx), list file or image folder; default
// data/hangul/train.rec (scripts/make-hangul-set). Run from the repository root:
//   nice -n 19 build/dev/bench/bench_loader --benchmark_min_time=2
#include <benchmark/benchmark.h>
#include <sys/resource.h>

#include <cstdlib>
#include <memory>
#include <protomem/data.hpp>
#include <protomem/data/sampler.hpp>
#include <string>

namespace {

const protomem::data::ImageSource* source() {
  static std::unique_ptr<protomem::data::ImageSource> s = [] {
    const char* env = std::getenv("PROTOMEM_BENCH_DATA");
    const std::string path = env ? env : "data/hangul/train.rec";
    try {
      return protomem::data::open_image_source(path);
    } catch (const std::exception& e) {
      std::fprintf(stderr, "bench_loader: %s (set PROTOMEM_BENCH_DATA)\n", e.what());
      return std::unique_ptr<protomem::data::ImageSource>();
    }
  }();
  return s.get();
}

void BM_Open(benchmark::State& state) {
  const char* env = std::getenv("PROTOMEM_BENCH_DATA");
  const std::string path = env ? env : "data/hangul/train.rec";
  for (auto _ : state) {
    try {
      auto opened = protomem::data::open_image_source(path);
      benchmark::DoNotOptimize(opened.get());
      state.counters["samples"] = static_cast<double>(opened->size());
    } catch (const std::exception& e) {
      return state.SkipWithError(e.what());
    }
  }
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  state.counters["peak_rss_mb"] = static_cast<double>(usage.ru_maxrss) / 1024.0;
}

void BM_Decode(benchmark::State& state) {
  const auto* src = source();
  if (!src) return state.SkipWithError("no data");
  const int size = static_cast<int>(state.range(0));
  protomem::index_t sample = 0;
  for (auto _ : state) {
    const std::string bytes = src->bytes(sample);
    auto image = protomem::data::decode_image(reinterpret_cast<const unsigned char*>(bytes.data()),
                                              bytes.size(), {size, size, 1}, "bench");
    benchmark::DoNotOptimize(image.pixels.data());
    sample = (sample + 7919) % src->size();  // stride through the file
  }
  state.counters["images_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()), benchmark::Counter::kIsRate);
}

void BM_Loader(benchmark::State& state) {
  const auto* src = source();
  if (!src) return state.SkipWithError("no data");
  const int threads = static_cast<int>(state.range(0));
  const auto batch = static_cast<protomem::index_t>(state.range(1));
  protomem::IterateAndSample sampler(src->index(), {batch / 4, 4, 1});
  protomem::data::ImageLoader loader(*src, [&] { return sampler.next().samples; },
                                     {{32, 32, 1}, threads, 4, false});
  loader.next();  // the pipeline is full from here
  for (auto _ : state) {
    auto b = loader.next();
    benchmark::DoNotOptimize(b.pixels.data());
  }
  state.counters["images_per_s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * static_cast<double>(batch),
                         benchmark::Counter::kIsRate);
  state.counters["threads"] = threads;
}

}  // namespace

BENCHMARK(BM_Open)->Iterations(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Decode)->Arg(32)->Arg(24)->UseRealTime();
BENCHMARK(BM_Loader)->Args({1, 128})->Args({2, 128})->UseRealTime();
