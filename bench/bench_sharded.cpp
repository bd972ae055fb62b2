// The sharded memory's cost per step (protomem/sharded.hpp), run by mpirun with W ranks:
//   mpirun -np W build/<dir>/bench/bench_sharded [--steps N] [--out file.csv]
// For each shape (global batch B, dimension D, capacity M) on a full memory (a PrototypeMemory filled
// with assign(), saved, and loaded by the W ranks), it reports per rank and step: the bytes
// exchanged (StepResult::traffic, sent + received) next to the traffic model of
// docs/distributed.md, the step time, and the time spent inside collectives - measured by wrapping
// the communicator - as the communication share. Medians over N timed steps after 2 warm-ups,
// the maximum over ranks (the slowest rank sets the pace).
// What it shows: bytes per step depend on B, D and W and not on M; on one machine with fewer cores
// than ranks the times show oversubscription, not a speed-up (docs/distributed.md says how to
// read them).
#include <mpi.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include <protomem/memory.hpp>
#include <protomem/comm/mpi.hpp>
#include <protomem/sharded.hpp>

namespace {

using Clock = std::chrono::steady_clock;

// A Communicator that forwards to another and adds up the wall time spent in collectives.
class TimedComm {
 public:
  explicit TimedComm(protomem::MpiCommunicator& inner) : inner_(&inner) {}
  int rank() const { return inner_->rank(); }
  int world_size() const { return inner_->world_size(); }
  protomem::CommTraffic traffic() const { return inner_->traffic(); }
  template <class T>
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    const auto t0 = Clock::now();
    inner_->all_gather(mine, count, all, counts);
    seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  template <class T>
  void all_reduce(T* data, std::int64_t count, protomem::ReduceOp op) {
    const auto t0 = Clock::now();
    inner_->all_reduce(data, count, op);
    seconds += std::chrono::duration<double>(Clock::now() - t0).count();
  }
  double seconds = 0;

 private:
  protomem::MpiCommunicator* inner_;
};

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  const std::size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

struct Shape {
  protomem::index_t B, D, M;
};

}  // namespace

int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int steps = 8;
  std::string out_path;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i];
    if (flag == "--steps") steps = std::atoi(argv[i + 1]);
    if (flag == "--out") out_path = argv[i + 1];
  }
  {
    protomem::MpiCommunicator mpi;
    TimedComm comm(mpi);
    const int W = comm.world_size(), rank = comm.rank();
    const std::vector<Shape> shapes = {{256, 128, 4096},  {256, 128, 16384}, {256, 128, 65536},
                                       {512, 128, 16384}, {256, 256, 16384}, {256, 512, 16384}};
    FILE* csv = nullptr;
    if (rank == 0) {
      std::printf("%3s %5s %4s %6s | %12s %12s | %9s %9s %7s\n", "W", "B", "D", "M",
                  "bytes/step", "model", "step ms", "comm ms", "share");
      if (!out_path.empty()) {
        csv = std::fopen(out_path.c_str(), "w");
        if (csv != nullptr) {
          std::fprintf(csv, "world,batch,dim,capacity,bytes_per_step,model_bytes,step_ms,comm_ms\n");
        }
      }
    }
    for (const Shape& s : shapes) {
      protomem::Config config;
      config.capacity = s.M;
      config.dim = s.D;
      config.threads = 1;  // one core per rank: the ranks are the parallelism
      // A full memory: M classes with random unit prototypes, the same on every rank.
      std::string checkpoint;
      {
        std::mt19937_64 rng(7);
        std::normal_distribution<float> normal;
        std::vector<float> p(static_cast<std::size_t>(s.M * s.D));
        for (protomem::index_t i = 0; i < s.M; ++i) {
          double n2 = 0;
          for (protomem::index_t k = 0; k < s.D; ++k) {
            const float v = normal(rng);
            p[static_cast<std::size_t>(i * s.D + k)] = v;
            n2 += double(v) * v;
          }
          for (protomem::index_t k = 0; k < s.D; ++k) {
            p[static_cast<std::size_t>(i * s.D + k)] /= static_cast<float>(std::sqrt(n2));
          }
        }
        std::vector<protomem::label_t> labels(static_cast<std::size_t>(s.M));
        std::vector<std::uint64_t> written(labels.size(), 0);
        for (protomem::index_t i = 0; i < s.M; ++i) labels[static_cast<std::size_t>(i)] = i;
        protomem::PrototypeMemory<float> plain(config, protomem::NoAging());
        plain.assign({labels.data(), s.M}, protomem::matrix_view<const float>(p.data(), s.M, s.D),
                     {written.data(), s.M}, 0);
        std::ostringstream bytes;
        plain.save(bytes);
        checkpoint = bytes.str();
      }
      protomem::ShardedPrototypeMemory<float, TimedComm> memory(comm, config, protomem::NoAging());
      {
        std::istringstream in(checkpoint);
        memory.load(in);
      }
      // Batches of B / 4 classes x 4 exemplars, half of them stored classes, half new (evictions).
      std::mt19937_64 rng(11);
      std::normal_distribution<float> normal;
      const protomem::index_t lo = s.B * rank / W, hi = s.B * (rank + 1) / W, mine = hi - lo;
      std::vector<float> e(static_cast<std::size_t>(mine * s.D)), g(e.size());
      std::vector<protomem::label_t> y(static_cast<std::size_t>(mine));
      std::vector<double> step_s, comm_s, bytes;
      protomem::label_t next_new = s.M;
      for (int t = 0; t < steps + 2; ++t) {
        std::vector<protomem::label_t> global(static_cast<std::size_t>(s.B));
        for (protomem::index_t c = 0; c < s.B / 4; ++c) {
          const protomem::label_t label =
              c % 2 == 0 ? static_cast<protomem::label_t>(rng() % static_cast<std::uint64_t>(s.M))
                         : next_new++;
          for (int k = 0; k < 4; ++k) global[static_cast<std::size_t>(4 * c + k)] = label;
        }
        std::sort(global.begin(), global.end());
        global.erase(std::unique(global.begin(), global.end()), global.end());
        while (static_cast<protomem::index_t>(global.size()) < s.B / 4) global.push_back(next_new++);
        std::vector<protomem::label_t> rows;
        for (protomem::label_t label : global) {
          for (int k = 0; k < 4 && static_cast<protomem::index_t>(rows.size()) < s.B; ++k) {
            rows.push_back(label);
          }
        }
        for (protomem::index_t i = 0; i < mine; ++i) y[static_cast<std::size_t>(i)] = rows[static_cast<std::size_t>(lo + i)];
        for (float& v : e) v = normal(rng);
        MPI_Barrier(MPI_COMM_WORLD);
        comm.seconds = 0;
        const auto t0 = Clock::now();
        const protomem::StepResult<float> r =
            memory.forward(protomem::matrix_view<const float>(e.data(), mine, s.D),
                           protomem::label_view(y.data(), mine),
                           protomem::matrix_view(g.data(), mine, s.D));
        memory.commit();
        const double took = std::chrono::duration<double>(Clock::now() - t0).count();
        if (t >= 2) {
          step_s.push_back(took);
          comm_s.push_back(comm.seconds);
          bytes.push_back(static_cast<double>(r.traffic.bytes()));
        }
      }
      // The slowest rank's medians; rank 0's bytes (every rank exchanges the same amount for an
      // even split).
      double med[2] = {median(step_s), median(comm_s)};
      MPI_Allreduce(MPI_IN_PLACE, med, 2, MPI_DOUBLE, MPI_MAX, MPI_COMM_WORLD);
      const double b = median(bytes);
      // The model (docs/distributed.md): 2 s B D + ... with C = B / 4 classes, k_evict = C / 2.
      const double C = double(s.B) / 4, s4 = 4, Bd = double(s.B), Dd = double(s.D);
      const double model =
          W == 1 ? 0
                 : 2 * 16 + 2 * 8 + 8.0 * W + 8 * Bd + s4 * Bd * Dd + 2 * 8 * C +
                       16 * (C / 2) * W + 2 * s4 * Bd + 2 * s4 * Bd * (Dd + 1);
      if (rank == 0) {
        std::printf("%3d %5lld %4lld %6lld | %12.0f %12.0f | %9.2f %9.2f %6.1f%%\n", W,
                    static_cast<long long>(s.B), static_cast<long long>(s.D),
                    static_cast<long long>(s.M), b, model, 1e3 * med[0], 1e3 * med[1],
                    100 * med[1] / med[0]);
        if (csv != nullptr) {
          std::fprintf(csv, "%d,%lld,%lld,%lld,%.0f,%.0f,%.4f,%.4f\n", W,
                       static_cast<long long>(s.B), static_cast<long long>(s.D),
                       static_cast<long long>(s.M), b, model, 1e3 * med[0], 1e3 * med[1]);
        }
      }
    }
    if (csv != nullptr) std::fclose(csv);
  }
  MPI_Finalize();
  return 0;
}
