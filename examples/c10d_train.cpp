// A LibTorch trainer on several processes with the c10d process group it already has: the encoder
// is data-parallel (its gradients all-reduced over the group), the prototype memory is sharded over
// the same group: protomem::torch::PrototypeHead (protomem/torch.hpp) given a
// protomem::C10dCommunicator, as a loss head whose backward commits the step - the same head, and
// the same autograd path, as in one process and in the Python package.
//
// Launch with torchrun (a TCPStore from RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT):
//   torchrun --no_python --nproc_per_node=2 build/<dir>/examples/c10d_train
// or by hand, with a FileStore every process can reach:
//   c10d_train --rank 0 --world 2 --store /tmp/run1 &
//   c10d_train --rank 1 --world 2 --store /tmp/run1
// Options: --steps N (default 300), --dim D (64), --capacity M (512).
//
// The data: 2000 synthetic identities, each a random direction in R^32, observed with a strong
// nuisance in a fixed 16-dimensional subspace (pose, light: what the encoder must learn to ignore)
// and a little isotropic noise; every
// rank draws the same global batch (16 identities x 4 samples) from the same seed and keeps its
// share of the rows, as a distributed sampler would. Rank 0 prints the loss (the same on every
// rank; it rises while the memory fills with negatives). At the end every rank checks that the
// encoders are still the same, and rank 0 reports the rank-1 identification accuracy on 500
// held-out identities (one noisy sample as gallery, another as probe) before and after training.
// Exit status 0 when the encoders agree and the accuracy went up.
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#include <torch/torch.h>

#include <protomem/comm/c10d.hpp>
#include <protomem/torch.hpp>

namespace {

std::string env(const char* name) {
  const char* value = std::getenv(name);
  return value == nullptr ? "" : value;
}

// The process group of this trainer: Gloo over a FileStore (--store) or torchrun's TCPStore.
c10::intrusive_ptr<c10d::ProcessGroup> make_group(int rank, int world,
                                                  const std::string& store_path) {
  c10::intrusive_ptr<c10d::Store> store;
  if (!store_path.empty()) {
    store = c10::make_intrusive<c10d::FileStore>(store_path, world);
  } else {
    c10d::TCPStoreOptions options;
    options.port = static_cast<std::uint16_t>(std::stoi(env("MASTER_PORT")));
    options.isServer = rank == 0;
    options.numWorkers = world;
    store = c10::make_intrusive<c10d::TCPStore>(env("MASTER_ADDR"), options);
  }
  auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(60));
  // One machine (a FileStore): loopback. torchrun: the interface of this host's name, so that
  // processes on several machines reach each other.
  options->devices.push_back(store_path.empty()
                                 ? c10d::ProcessGroupGloo::createDefaultDevice()
                                 : c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  return c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
}

// One all-reduce (sum) of every parameter's gradient, flattened into one tensor.
void all_reduce_gradients(c10d::ProcessGroup& group, torch::nn::Module& module) {
  std::vector<at::Tensor> grads;
  for (const at::Tensor& p : module.parameters()) grads.push_back(p.grad().reshape(-1));
  std::vector<at::Tensor> flat{torch::cat(grads)};
  group.allreduce(flat)->wait();
  std::int64_t offset = 0;
  for (const at::Tensor& p : module.parameters()) {
    const std::int64_t n = p.numel();
    p.grad().copy_(flat[0].slice(0, offset, offset + n).view_as(p));
    offset += n;
  }
}

// Rank-1 identification on `ids` held-out identities: the nearest gallery embedding (cosine) of
// each probe belongs to the probe's identity.
// Samples of identities `centers`: the centre, a nuisance 0.5 z Q^T (z ~ N(0, I_16), Q the fixed
// nuisance basis) and 0.05 isotropic noise.
at::Tensor observe(const at::Tensor& centers, const at::Tensor& nuisance) {
  const std::int64_t n = centers.size(0);
  return centers + 0.5 * torch::randn({n, nuisance.size(1)}).matmul(nuisance.t()) +
         0.05 * torch::randn(centers.sizes());
}

double identification(torch::nn::Sequential& encoder, const at::Tensor& nuisance, int ids) {
  torch::NoGradGuard no_grad;
  torch::manual_seed(77);
  namespace F = torch::nn::functional;
  const at::Tensor centers =
      F::normalize(torch::randn({ids, nuisance.size(0)}), F::NormalizeFuncOptions().dim(1));
  const at::Tensor gallery = F::normalize(encoder->forward(observe(centers, nuisance)),
                                          F::NormalizeFuncOptions().dim(1));
  const at::Tensor probes = F::normalize(encoder->forward(observe(centers, nuisance)),
                                         F::NormalizeFuncOptions().dim(1));
  const at::Tensor nearest = probes.matmul(gallery.t()).argmax(1);
  return nearest.eq(torch::arange(ids)).to(torch::kDouble).mean().item<double>();
}

}  // namespace

int main(int argc, char** argv) {
  int rank = env("RANK").empty() ? 0 : std::stoi(env("RANK"));
  int world = env("WORLD_SIZE").empty() ? 1 : std::stoi(env("WORLD_SIZE"));
  std::string store_path;
  int steps = 300;
  protomem::Config config;
  config.capacity = 512;
  config.dim = 64;
  for (int i = 1; i + 1 < argc; i += 2) {
    const std::string flag = argv[i], value = argv[i + 1];
    if (flag == "--rank") rank = std::stoi(value);
    else if (flag == "--world") world = std::stoi(value);
    else if (flag == "--store") store_path = value;
    else if (flag == "--steps") steps = std::stoi(value);
    else if (flag == "--dim") config.dim = std::stoi(value);
    else if (flag == "--capacity") config.capacity = std::stoi(value);
    else {
      std::fprintf(stderr, "c10d_train: unknown option %s\n", flag.c_str());
      return 2;
    }
  }
  if (store_path.empty() && env("MASTER_ADDR").empty()) {
    std::fprintf(stderr, "c10d_train: give --store PATH (and --rank, --world) or run under "
                         "torchrun (MASTER_ADDR, MASTER_PORT, RANK, WORLD_SIZE)\n");
    return 2;
  }
  try {
    const c10::intrusive_ptr<c10d::ProcessGroup> group = make_group(rank, world, store_path);
    // The head owns the communicator (which holds a reference to the group); policies are
    // constructor objects, the omitted ones the memory's defaults.
    protomem::torch::PrototypeHead<float> head(
        protomem::C10dCommunicator(group), config, protomem::CosFace(16, 0.2),
        protomem::AgeDecay(8));

    // The same encoder on every rank (same seed), data-parallel from here on.
    torch::manual_seed(1);
    constexpr int input = 32, identities = 2000, per_batch = 16, samples = 4;
    torch::nn::Sequential encoder(torch::nn::Linear(input, 128), torch::nn::ReLU(),
                                  torch::nn::Linear(128, config.dim));
    torch::optim::SGD optimizer(encoder->parameters(), torch::optim::SGDOptions(0.1).momentum(0.9));
    const at::Tensor centers = torch::nn::functional::normalize(torch::randn({identities, input}),
        torch::nn::functional::NormalizeFuncOptions().dim(1));
    const at::Tensor nuisance = std::get<0>(torch::linalg::qr(torch::randn({input, 16})));
    const double before = identification(encoder, nuisance, 500);

    std::mt19937_64 rng(2);  // the global batch: the same on every rank
    std::uniform_int_distribution<std::int64_t> pick(0, identities - 1);
    const std::int64_t B = per_batch * samples;
    const std::int64_t lo = B * rank / world, hi = B * (rank + 1) / world;
    for (int step = 1; step <= steps; ++step) {
      std::vector<std::int64_t> labels;
      for (int c = 0; c < per_batch; ++c) {
        const std::int64_t id = pick(rng);
        for (int s = 0; s < samples; ++s) labels.push_back(id);
      }
      const at::Tensor all_labels = torch::tensor(labels, torch::kLong);
      torch::manual_seed(1000 + step);  // the same noise on every rank
      const at::Tensor all_x = observe(centers.index_select(0, all_labels), nuisance);
      const at::Tensor x = all_x.slice(0, lo, hi), y = all_labels.slice(0, lo, hi).contiguous();

      // The loss of the global batch (the same on every rank), from this rank's rows; its
      // backward sends dL/dE of these rows into the encoder and commits the memory update.
      const at::Tensor loss_tensor = head(encoder->forward(x), y);
      const float loss = loss_tensor.item<float>();
      optimizer.zero_grad();
      loss_tensor.backward();
      all_reduce_gradients(*group, *encoder);  // sum: each rank's share of one global loss
      optimizer.step();
      if (rank == 0 && (step % 50 == 0 || step == 1)) {
        std::printf("step %4d  loss %.4f  memory %lld classes\n", step, double(loss),
                    static_cast<long long>(head.memory().size()));
      }
    }
    // Every rank's encoder must be the same: compare a checksum's maximum and minimum.
    double sum = 0;
    for (const at::Tensor& p : encoder->parameters()) sum += p.sum().item<double>();
    double extremes[2] = {sum, -sum};
    head.communicator().all_reduce(extremes, 2, protomem::ReduceOp::max);
    const bool same = extremes[0] == -extremes[1];
    const double after = identification(encoder, nuisance, 500);
    if (rank == 0) {
      std::printf("c10d_train: %d rank(s), held-out rank-1 identification %.3f -> %.3f, encoders "
                  "%s\n", world, before, after, same ? "identical" : "DIFFER");
    }
    return same && after > before ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "c10d_train rank %d: %s\n", rank, e.what());
    return 1;
  }
}
