// examples/train — protomem's main job: trains a LibTorch MLP encoder on the synthetic identity
// set with Prototype Memory, full softmax and Partial-FC-style sampled softmax, evaluates each on
// held-out identities and prints the comparison. `train --help` lists every flag.
//
// Each method runs in its own child process (this executable, re-executed), so that its peak
// memory (getrusage of the child) is its own and no method inherits another's allocator state.
// Outputs in --out: results.csv (the table), loss.csv, curves.csv, staleness.csv and curves.png.
//
// --distributed (under mpirun; built where MPI is found): every rank trains in its own process, no
// children; rank 0 evaluates, prints and writes the files (distributed.hpp).
#include <sys/resource.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <limits>
#include <map>
#include <sstream>
#include <string>
#include <vector>

#include "trainer.hpp"
#ifdef PROTOMEM_TRAIN_MPI
#include <mpi.h>

#include "distributed.hpp"
#endif

#ifndef PROTOMEM_TRAIN_PLOT_SCRIPT
#define PROTOMEM_TRAIN_PLOT_SCRIPT "plot.py"
#endif

namespace {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

const char* kHelp = R"(usage: train [flags]

Trains a LibTorch MLP encoder on a synthetic identity set with several classifier heads and compares
them on held-out identities (verification TAR at FAR 1e-3/1e-4, rank-1 identification against
distractors), at the same number of steps and images.

methods
  --methods LIST            comma-separated, from: protomem-grouped, protomem-mining,
                            full-grouped, full-instance, pfc-grouped, pfc-instance, or 'all'
                            (default all: every method but protomem-mining)
data (docs/synthetic-data.md)
  --identities N            training identities (default 10000; any size up to 10^7 and beyond)
  --images-per-identity N   training images per identity (default 16)
  --eval-identities N       held-out identities, even (default 1000)
  --eval-images N           images per held-out identity, >= 2 (default 4)
  --distractors N           distractor images for identification (default 10000)
  --data-seed N             seed of the data set (default 1)
  --intra X                 intra-class variation (default 0.4)
  --similarity X            inter-class similarity in [0, 1) (default 0.3)
  --families N              identity families (default 256)
  --lookalike-fraction X    share of identity pairs planted as look-alikes (default 0.1)
  --lookalike-distance X    look-alike latent distance delta in (0, 1] (default 0.5)
  --nuisance X              nuisance factor scale (default 0.5)
  --noise X                 pixel noise (default 0.1)
  --latent-dim N, --image-dim N, --nuisance-dim N, --map-hidden N
                            generator sizes (default 32, 128, 8, 128)
real images (docs/data.md; instead of the synthetic set)
  --data PATH               training set: an insightface .rec (with its .idx), a list file
                            ('path label' lines) or an image folder (one subfolder per identity)
  --heldout PATH            held-out identities, the same kinds (default: heldout.* beside a
                            train.* --data); --eval-images of each, the rest distractors
  --image-size N            images are decoded and resized to N x N (default 32)
  --channels 1|3            grayscale or RGB (default 1)
  --loader-threads N        decoding threads, >= 1 (default 2)
  --max-image-pixels N      an image whose header claims more pixels is an error (default 2^24)
  --max-jpeg-scans N        a JPEG of more scans is an error (default 100)
encoder and optimisation
  --encoder mlp|cnn         MLP on the pixel vector, or a small IResNet (cnn; needs --data)
  --width N                 cnn: channels of the first of its three stages (default 32)
  --depth N                 cnn: IResNet blocks per stage (default 1)
  --dim N                   embedding dimension D (default 64)
  --hidden N                encoder MLP width (default 256)
  --steps N                 training steps (default 300)
  --batch N                 images per step B (default 128)
  --exemplars N             images per identity K in grouped batches (default 4)
  --lr X                    peak SGD learning rate, warm-up then cosine (default 0.1)
  --momentum X              SGD momentum (default 0.9)
  --weight-decay X          encoder weight decay (default 5e-4)
  --seed N                  encoder init and samplers (default 1)
  --threads N               intra-op threads (default: LibTorch's choice)
loss (all methods)
  --margin cosface|arcface|none   (default cosface)
  --scale S                 logit scale s (default 32)
  --m M                     margin m (default 0.3)
protomem
  --capacity M              memory slots (default 4096)
  --generator mean|detached|leave-one-out   (default mean)
  --refresh replace|momentum:A               (default replace)
  --queue lrw|fifo          eviction order (default lrw: least recently written)
  --age-half-life H         a stored prototype counts 2^(-age/H) times in the softmax (default 8:
                            protomem's default aging, AgeDecay(8); inf: no decay; the AgeDecay
                            policy, docs/results.md "Staleness")
  --max-age N               stored prototypes older than N steps expire: no column (default: never;
                            with --age-half-life inf: the MaxAge policy)
  --age-clock steps|lr      lr: the half-life H holds at the peak lr and scales with lr_peak / lr
                            (a prototype's weight follows the encoder's drift; default steps)
  --no-aging                every stored prototype counts fully, whatever its age (NoAging)
doppelganger mining (protomem-mining; docs/mining.md)
  --mining                  run protomem with DoppelgangerMining and mined batches: the method
                            protomem-grouped becomes protomem-mining
  --doppelganger-fraction F share of each batch's identities filled with look-alikes of the others
                            from the memory's mining table, in (0, 1) (default 0.25)
  --similar-k N             look-alikes remembered per identity, in [1, 65536] (default 8)
  --mining-table N          identities with a row in the table (default min(identities, 2^20))
distributed (docs/distributed.md; where the build found MPI)
  --distributed             data-parallel over the ranks of mpirun (mpirun -np W train
                            --distributed ...): each rank encodes 1/W of every batch, the memory is
                            sharded over the ranks; protomem methods only (--methods defaults to
                            protomem-grouped), --encoder mlp; rank 0 evaluates and writes the files
sampled softmax
  --sample-rate R           share of classifier rows per step, in (0, 1] (default 0.1)
evaluation and output
  --eval-every N            steps between evaluations for the curves (default 100)
  --staleness-classes N     classes sampled per staleness measurement (default 256)
  --out DIR                 output directory (default train-out)
  --no-plot                 do not draw curves.png
  --no-progress             no progress bar
  --help
)";

std::int64_t parse_int(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  long long v = 0;
  try {
    v = std::stoll(text, &used);
  } catch (...) {
    used = 0;
  }
  if (used == 0 || used != text.size())
    throw UsageError(flag + ": '" + text + "' is not an integer");
  return v;
}

double parse_real(const std::string& flag, const std::string& text) {
  std::size_t used = 0;
  double v = 0;
  try {
    v = std::stod(text, &used);
  } catch (...) {
    used = 0;
  }
  if (used == 0 || used != text.size()) throw UsageError(flag + ": '" + text + "' is not a number");
  return v;
}

struct Cli {
  train::Options o;
  std::vector<train::Method> methods;
  std::string out = "train-out";
  bool plot = true;
  bool mining = false;         // --mining: protomem-grouped becomes protomem-mining
  bool no_aging = false;       // --no-aging
  bool half_life_given = false;  // --age-half-life on the command line
  bool distributed = false;    // --distributed: ranks of mpirun, no children
  bool methods_given = false;  // --methods on the command line
  int threads = 0;
  std::string child;                   // internal: run this one method and write its files
  std::vector<std::string> forwarded;  // the user's flags, passed on to children
};

std::vector<train::Method> parse_methods(const std::string& list) {
  using train::Kind;
  using train::Sampler;
  const std::map<std::string, train::Method> known = {
      {"protomem-grouped", {Kind::protomem, Sampler::grouped}},
      {"protomem-mining", {Kind::protomem, Sampler::mined}},
      {"full-grouped", {Kind::full, Sampler::grouped}},
      {"full-instance", {Kind::full, Sampler::instance}},
      {"pfc-grouped", {Kind::pfc, Sampler::grouped}},
      {"pfc-instance", {Kind::pfc, Sampler::instance}}};
  if (list == "all")
    return {known.at("protomem-grouped"), known.at("full-grouped"), known.at("full-instance"),
            known.at("pfc-grouped"), known.at("pfc-instance")};
  std::vector<train::Method> methods;
  std::stringstream in(list);
  std::string name;
  while (std::getline(in, name, ',')) {
    if (name == "protomem") name = "protomem-grouped";
    auto it = known.find(name);
    if (it == known.end()) {
      throw UsageError("--methods: unknown method '" + name +
                       "' (protomem-grouped, protomem-mining, full-grouped, full-instance, "
                       "pfc-grouped, pfc-instance, all)");
    }
    methods.push_back(it->second);
  }
  if (methods.empty()) throw UsageError("--methods: empty list");
  return methods;
}

#ifdef PROTOMEM_TRAIN_IMAGES
using images_config = images::Config;
template <class F>
void set_images(train::Options& o, F set) {
  set(o.images);
}
bool has_images(const train::Options& o) { return !o.images.train.empty(); }
#else
struct images_config {
  std::string train, heldout;
  int size = 0, channels = 0, threads = 0;
  struct {
    std::uint64_t max_pixels = 0;
    int max_jpeg_scans = 0;
  } limits;
};
template <class F>
void set_images(train::Options&, F) {
  throw UsageError(
      "--data and its flags need the image reader (protomem::data: libjpeg-turbo and "
      "libpng, found at configure time)");
}
bool has_images(const train::Options&) { return false; }
#endif

Cli parse(int argc, char** argv) {
  Cli cli;
  train::Options& o = cli.o;
  cli.methods = parse_methods("all");
  for (int a = 1; a < argc; ++a) {
    std::string flag = argv[a], value;
    bool has_value = false;
    const auto eq = flag.find('=');
    if (flag.rfind("--", 0) == 0 && eq != std::string::npos) {
      value = flag.substr(eq + 1);
      flag = flag.substr(0, eq);
      has_value = true;
    }
    if (flag == "--help" || flag == "-h") {
      std::fputs(kHelp, stdout);
      std::exit(0);
    }
    if (flag == "--no-plot") {
      cli.plot = false;
      cli.forwarded.push_back(flag);
      continue;
    }
    if (flag == "--no-progress") {
      o.progress = false;
      cli.forwarded.push_back(flag);
      continue;
    }
    if (flag == "--mining") {  // not forwarded: a child gets its method by name
      cli.mining = true;
      continue;
    }
    if (flag == "--no-aging") {
      cli.no_aging = true;
      o.age_half_life = std::numeric_limits<double>::infinity();
      cli.forwarded.push_back(flag);
      continue;
    }
    if (flag == "--distributed") {  // no children to forward it to
      cli.distributed = true;
      continue;
    }
    if (flag.rfind("--", 0) != 0) throw UsageError("unexpected argument '" + flag + "'");
    if (!has_value) {
      if (a + 1 >= argc) throw UsageError(flag + ": missing value");
      value = argv[++a];
    }
    auto I = [&] { return parse_int(flag, value); };
    auto R = [&] { return parse_real(flag, value); };
    if (flag == "--child") {
      cli.child = value;
      continue;
    }
    if (flag == "--methods") {
      cli.methods = parse_methods(value);
      cli.methods_given = true;
    } else if (flag == "--identities")
      o.identities = I();
    else if (flag == "--images-per-identity")
      o.images_per_identity = I();
    else if (flag == "--eval-identities")
      o.eval_identities = I();
    else if (flag == "--eval-images")
      o.eval_images = I();
    else if (flag == "--distractors")
      o.distractors = I();
    else if (flag == "--data-seed")
      o.data.seed = static_cast<std::uint64_t>(I());
    else if (flag == "--intra")
      o.data.intra = R();
    else if (flag == "--similarity")
      o.data.similarity = R();
    else if (flag == "--families")
      o.data.families = I();
    else if (flag == "--lookalike-fraction")
      o.data.lookalike_fraction = R();
    else if (flag == "--lookalike-distance")
      o.data.lookalike_distance = R();
    else if (flag == "--nuisance")
      o.data.nuisance = R();
    else if (flag == "--noise")
      o.data.noise = R();
    else if (flag == "--latent-dim")
      o.data.latent_dim = I();
    else if (flag == "--image-dim")
      o.data.image_dim = I();
    else if (flag == "--nuisance-dim")
      o.data.nuisance_dim = I();
    else if (flag == "--map-hidden")
      o.data.hidden_dim = I();
    else if (flag == "--dim")
      o.dim = I();
    else if (flag == "--data")
      set_images(o, [&](images_config& c) { c.train = value; });
    else if (flag == "--heldout")
      set_images(o, [&](images_config& c) { c.heldout = value; });
    else if (flag == "--image-size")
      set_images(o, [&](images_config& c) { c.size = static_cast<int>(I()); });
    else if (flag == "--channels")
      set_images(o, [&](images_config& c) { c.channels = static_cast<int>(I()); });
    else if (flag == "--loader-threads")
      set_images(o, [&](images_config& c) { c.threads = static_cast<int>(I()); });
    else if (flag == "--max-image-pixels")
      set_images(o, [&](images_config& c) {
        c.limits.max_pixels = static_cast<std::uint64_t>(I());
      });
    else if (flag == "--max-jpeg-scans")
      set_images(o, [&](images_config& c) { c.limits.max_jpeg_scans = static_cast<int>(I()); });
    else if (flag == "--encoder")
      o.encoder = value;
    else if (flag == "--width")
      o.width = I();
    else if (flag == "--depth")
      o.depth = I();
    else if (flag == "--hidden")
      o.hidden = I();
    else if (flag == "--steps")
      o.steps = I();
    else if (flag == "--batch")
      o.batch = I();
    else if (flag == "--exemplars")
      o.exemplars = I();
    else if (flag == "--lr")
      o.lr = R();
    else if (flag == "--momentum")
      o.momentum = R();
    else if (flag == "--weight-decay")
      o.weight_decay = R();
    else if (flag == "--seed")
      o.seed = static_cast<std::uint64_t>(I());
    else if (flag == "--threads")
      cli.threads = static_cast<int>(I());
    else if (flag == "--margin")
      o.margin = value;
    else if (flag == "--scale")
      o.scale = R();
    else if (flag == "--m")
      o.m = R();
    else if (flag == "--capacity")
      o.capacity = I();
    else if (flag == "--generator")
      o.generator = value;
    else if (flag == "--refresh") {
      if (value == "replace")
        o.refresh = 0.0;
      else if (value.rfind("momentum:", 0) == 0)
        o.refresh = parse_real(flag, value.substr(9));
      else if (value == "momentum")
        o.refresh = 0.5;
      else
        throw UsageError("--refresh must be replace or momentum:A, not '" + value + "'");
    } else if (flag == "--max-age")
      o.max_age = I();
    else if (flag == "--age-half-life") {
      o.age_half_life = R();
      cli.half_life_given = true;
    }
    else if (flag == "--age-clock")
      o.age_clock = value;
    else if (flag == "--queue")
      o.queue = value;
    else if (flag == "--doppelganger-fraction")
      o.doppelganger_fraction = R();
    else if (flag == "--similar-k")
      o.similar_k = I();
    else if (flag == "--mining-table")
      o.mining_table = I();
    else if (flag == "--sample-rate")
      o.sample_rate = R();
    else if (flag == "--eval-every")
      o.eval_every = I();
    else if (flag == "--staleness-classes")
      o.staleness_classes = I();
    else if (flag == "--out")
      cli.out = value;
    else
      throw UsageError("unknown flag '" + flag + "' (see --help)");
    if (flag != "--methods") {
      cli.forwarded.push_back(flag);
      cli.forwarded.push_back(value);
    }
  }
  if (cli.distributed) {
#ifndef PROTOMEM_TRAIN_MPI
    throw UsageError(
        "--distributed needs MPI (protomem::mpi: an MPI implementation such as Open MPI, found at "
        "configure time); this train was built without it");
#endif
    if (!cli.methods_given) cli.methods = parse_methods("protomem-grouped");
    for (const auto& m : cli.methods) {
      if (m.kind != train::Kind::protomem) {
        throw UsageError("--distributed trains protomem methods only (sharded memory), not '" +
                         m.name() + "'");
      }
    }
    if (cli.o.encoder != "mlp") {
      throw UsageError("--distributed needs --encoder mlp (its batch norms span the ranks)");
    }
  }
  if (cli.mining && cli.child.empty()) {
    bool found = false;
    for (auto& m : cli.methods) {
      if (m.kind == train::Kind::protomem) {
        m.sampler = train::Sampler::mined;
        found = true;
      }
    }
    if (!found) throw UsageError("--mining applies to protomem, but --methods holds no protomem");
  }
  return cli;
}

void check(const Cli& cli) {
  const train::Options& o = cli.o;
  auto need = [](bool ok, const std::string& what) {
    if (!ok) throw UsageError(what);
  };
  need(o.encoder == "mlp" || o.encoder == "cnn",
       "--encoder must be mlp or cnn, not '" + o.encoder + "'");
  need(o.encoder == "mlp" || has_images(o), "--encoder cnn needs images (--data)");
  need(o.width >= 1 && o.width <= 4096 && o.depth >= 1 && o.depth <= 64,
       "--width must be in [1, 4096] and --depth in [1, 64]");
#ifdef PROTOMEM_TRAIN_IMAGES
  need(o.images.size >= 8 && o.images.size <= 1024, "--image-size must be in [8, 1024]");
  need(o.images.channels == 1 || o.images.channels == 3, "--channels must be 1 or 3");
  need(o.images.threads >= 1 && o.images.threads <= 256, "--loader-threads must be in [1, 256]");
  need(o.images.limits.max_pixels >= 1 && o.images.limits.max_pixels <= (std::uint64_t{1} << 40),
       "--max-image-pixels must be in [1, 2^40]");
  need(o.images.limits.max_jpeg_scans >= 1 && o.images.limits.max_jpeg_scans <= 100000,
       "--max-jpeg-scans must be in [1, 100000]");
  need(!has_images(o) || !o.images.heldout.empty(),
       "--heldout is needed (no heldout.* beside --data '" + o.images.train + "')");
#endif
  need(o.identities >= 2, "--identities must be >= 2");
  need(o.images_per_identity >= 1, "--images-per-identity must be >= 1");
  need(o.eval_identities >= 2 && o.eval_identities % 2 == 0,
       "--eval-identities must be even and >= 2");
  need(o.eval_images >= 2, "--eval-images must be >= 2");
  need(o.distractors >= 0, "--distractors must be >= 0");
  need(o.dim >= 1 && o.hidden >= 1, "--dim and --hidden must be >= 1");
  need(o.steps >= 1, "--steps must be >= 1");
  need(o.batch >= 1, "--batch must be >= 1");
  need(o.exemplars >= 1 && o.batch % o.exemplars == 0,
       "--exemplars must be >= 1 and divide --batch (" + std::to_string(o.batch) + ")");
  need(has_images(o) || o.exemplars <= o.images_per_identity,
       "--exemplars (" + std::to_string(o.exemplars) + ") must be <= --images-per-identity (" +
           std::to_string(o.images_per_identity) + ")");
  need(o.batch / o.exemplars <= o.identities,
       "--batch / --exemplars classes per step must be <= --identities");
  need(o.lr > 0 && std::isfinite(o.lr), "--lr must be > 0");
  need(o.momentum >= 0 && o.momentum < 1, "--momentum must be in [0, 1)");
  need(o.weight_decay >= 0, "--weight-decay must be >= 0");
  need(o.margin == "cosface" || o.margin == "arcface" || o.margin == "none",
       "--margin must be cosface, arcface or none, not '" + o.margin + "'");
  need(o.scale > 0 && std::isfinite(o.scale), "--scale must be > 0");
  need(o.m >= 0 && o.m <= (o.margin == "arcface" ? 1.5 : 1.0), "--m is out of range");
  need(o.capacity >= o.batch / o.exemplars, "--capacity must hold at least one batch's classes (" +
                                                std::to_string(o.batch / o.exemplars) + ")");
  need(o.generator == "mean" || o.generator == "detached" || o.generator == "leave-one-out",
       "--generator must be mean, detached or leave-one-out, not '" + o.generator + "'");
  need(o.generator != "leave-one-out" || o.exemplars >= 2,
       "--generator leave-one-out needs --exemplars >= 2");
  need(o.refresh >= 0 && o.refresh < 1, "--refresh momentum:A needs 0 <= A < 1");
  need(o.max_age >= -1, "--max-age must be >= 0 (or -1: never)");
  need(o.age_half_life > 0, "--age-half-life must be > 0 (inf: no decay)");
  need(o.age_clock == "steps" || o.age_clock == "lr",
       "--age-clock must be steps or lr, not '" + o.age_clock + "'");
  need(!cli.no_aging || (!cli.half_life_given && o.max_age < 0 && o.age_clock == "steps"),
       "--no-aging excludes --age-half-life, --max-age and --age-clock lr");
  need(o.age_clock != "lr" || std::isfinite(o.age_half_life),
       "--age-clock lr needs a finite --age-half-life (the half-life it scales)");
  need(o.queue == "lrw" || o.queue == "fifo", "--queue must be lrw or fifo, not '" + o.queue + "'");
  need(o.sample_rate > 0 && o.sample_rate <= 1, "--sample-rate must be in (0, 1]");
  {
    const double f = o.doppelganger_fraction;
    const std::int64_t classes = o.batch / std::max<std::int64_t>(1, o.exemplars);
    const auto mined =
        static_cast<std::int64_t>(std::floor(f * static_cast<double>(classes) + 0.5));
    std::ostringstream what;
    what << "--doppelganger-fraction " << f << " must be in (0, 1) and give between 1 and "
         << classes - 1 << " of the " << classes
         << " identities per batch (round(F x batch / exemplars) = " << mined << ")";
    need(f > 0 && f < 1 && mined >= 1 && mined < classes, what.str());
  }
  need(o.similar_k >= 1 && o.similar_k <= protomem::DoppelgangerMining::max_k,
       "--similar-k must be in [1, 65536], not " + std::to_string(o.similar_k));
  need(o.mining_table >= 0, "--mining-table must be >= 1 (or 0: the default)");
  need(o.eval_every >= 1, "--eval-every must be >= 1");
  need(o.staleness_classes >= 1, "--staleness-classes must be >= 1");
  need(cli.threads >= 0, "--threads must be >= 0");
  if (!has_images(o)) try {
      synthetic::validate(o.data);
    } catch (const std::invalid_argument& e) {
      throw UsageError(std::string("data: ") + e.what());
    }
}

// ---- child: one method
// ----------------------------------------------------------------------------

std::string file_of(const std::string& out, const std::string& method, const char* what) {
  return out + "/" + method + "." + what;
}

// The method's files in `out`, which the parent gathers: its scores (.result) and its curves.
void write_method_files(const std::string& out, const train::RunResult& r) {
  const std::string m = r.method;
  {
    std::ofstream f(file_of(out, m, "result"));
    f << "untrained_tar_1e3 " << r.untrained.tar_1e3 << "\nuntrained_tar_1e4 "
      << r.untrained.tar_1e4 << "\nuntrained_rank1 " << r.untrained.rank1 << "\ntar_1e3 "
      << r.final.tar_1e3 << "\ntar_1e4 " << r.final.tar_1e4 << "\nrank1 " << r.final.rank1
      << "\nstep_ms " << r.step_ms << "\nstate_mb " << r.state_mb << "\nfinal_loss " << r.final_loss
      << "\nstaleness_cos " << r.staleness_cos << "\n";
  }
  if (r.fill_per_batch > 0) {
    std::printf(
        "%s: %.1f look-alike fill identities per batch; %.1f%% of them from the mining table (the "
        "rest random), %.1f%% the planted look-alike of an identity in the same batch\n",
        m.c_str(), r.fill_per_batch, 100.0 * r.fill_from_table, 100.0 * r.fill_planted_twins);
    std::fflush(stdout);
  }
  {
    std::ofstream f(file_of(out, m, "loss.csv"));
    for (std::size_t s = 0; s < r.losses.size(); ++s)
      f << m << "," << s + 1 << "," << r.losses[s] << "\n";
  }
  {
    std::ofstream f(file_of(out, m, "curves.csv"));
    for (const auto& p : r.curve) {
      f << m << "," << p.step << "," << p.loss << "," << p.scores.tar_1e3 << "," << p.scores.tar_1e4
        << "," << p.scores.rank1 << "," << p.staleness_cos << "\n";
    }
  }
  {
    std::ofstream f(file_of(out, m, "staleness.csv"));
    for (const auto& p : r.staleness) {
      f << m << "," << p.step << "," << p.label << "," << p.age << "," << p.cosine << ","
        << p.positive_age << "\n";
    }
  }
}

int run_child(const Cli& cli) {
  const train::Method method = parse_methods(cli.child).front();
  write_method_files(cli.out, train::run_method(cli.o, method, train::make_protomem_head));
  return 0;
}

// ---- parent: children, table, files
// ---------------------------------------------------------------

std::map<std::string, double> read_result(const std::string& path) {
  std::map<std::string, double> values;
  std::ifstream f(path);
  std::string key;
  double v;
  while (f >> key >> v) values[key] = v;
  return values;
}

void concatenate(const std::string& out, const std::vector<train::Method>& methods,
                 const char* what, const char* header) {
  std::ofstream all(out + "/" + what);
  all << header << "\n";
  for (const auto& m : methods) {
    const std::string part = file_of(out, m.name(), what);
    std::ifstream in(part);
    all << in.rdbuf();
    in.close();
    std::remove(part.c_str());
  }
}

// The Aging policy the protomem methods' memory is built with (train::make_aging), in words.
std::string aging_line(const train::Options& o) {
  const protomem::AnyAging aging = train::make_aging(o, o.lr);
  const protomem::AgeDecay* decay = aging.get_if<protomem::AgeDecay>();
  const bool is_default = decay && decay->half_life == protomem::default_aging().half_life &&
                          decay->max_age == protomem::default_aging().max_age;
  return train::describe_aging(aging) +
         (o.age_clock == "lr" ? " at the peak lr, scaled by lr_peak / lr" : "") +
         (is_default ? " (protomem's default; --no-aging: none)" : "");
}

// `in_process` (--distributed): trains a method in this process, writes its files and returns the
// process's peak memory in MB; null: each method in a child.
int run_parent(const Cli& cli, const char* self,
               const std::function<double(const train::Method&)>& in_process = nullptr) {
  if (std::system(("mkdir -p '" + cli.out + "'").c_str()) != 0) {
    throw std::runtime_error("cannot create --out directory '" + cli.out + "'");
  }
  const train::Options& o = cli.o;
  std::printf(
      "protomem train: %lld identities x %lld images, %lld held-out identities x %lld images, "
      "%lld distractors\n",
      static_cast<long long>(o.identities), static_cast<long long>(o.images_per_identity),
      static_cast<long long>(o.eval_identities), static_cast<long long>(o.eval_images),
      static_cast<long long>(o.distractors));
#ifdef PROTOMEM_TRAIN_IMAGES
  if (has_images(o)) {
    std::printf("  images: %s (held out: %s), %dx%dx%d, %d loader threads\n",
                o.images.train.c_str(), o.images.heldout.c_str(), o.images.size, o.images.size,
                o.images.channels, o.images.threads);
  }
#endif
  if (o.encoder == "cnn") {
    std::printf("  encoder IResNet: width %lld, %lld block(s) x 3 stages, D=%lld;",
                static_cast<long long>(o.width), static_cast<long long>(o.depth),
                static_cast<long long>(o.dim));
  }
  if (o.encoder == "mlp") {
    std::printf("  encoder MLP %lld-%lld-%lld-%lld,", static_cast<long long>(o.data.image_dim),
                static_cast<long long>(o.hidden), static_cast<long long>(o.hidden),
                static_cast<long long>(o.dim));
  }
  std::printf(
      " %lld steps x %lld images (grouped: %lld ids x K=%lld), "
      "%s s=%g m=%g; protomem M=%lld; pfc sample rate %g\n",
      static_cast<long long>(o.steps), static_cast<long long>(o.batch),
      static_cast<long long>(o.batch / o.exemplars), static_cast<long long>(o.exemplars),
      o.margin.c_str(), o.scale, o.m, static_cast<long long>(o.capacity), o.sample_rate);
  std::printf("  protomem aging: %s\n", aging_line(o).c_str());
  std::fflush(stdout);

  std::vector<std::map<std::string, double>> results;
  std::vector<double> peak_mb;
  for (const auto& method : cli.methods) {
    if (in_process) {
      const double mb = in_process(method);
      results.push_back(read_result(file_of(cli.out, method.name(), "result")));
      std::remove(file_of(cli.out, method.name(), "result").c_str());
      peak_mb.push_back(mb);
      continue;
    }
    std::vector<std::string> args = {self, "--child", method.name(), "--out", cli.out};
    args.insert(args.end(), cli.forwarded.begin(), cli.forwarded.end());
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    const pid_t pid = fork();
    if (pid < 0) throw std::runtime_error(std::string("fork failed: ") + std::strerror(errno));
    if (pid == 0) {
      execv("/proc/self/exe", argv.data());
      std::perror("train: exec");
      _exit(127);
    }
    int status = 0;
    struct rusage usage {};
    if (wait4(pid, &status, 0, &usage) < 0) throw std::runtime_error("wait4 failed");
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
      std::fprintf(stderr, "train: method %s failed (status %d)\n", method.name().c_str(), status);
      return 1;
    }
    results.push_back(read_result(file_of(cli.out, method.name(), "result")));
    std::remove(file_of(cli.out, method.name(), "result").c_str());
    peak_mb.push_back(usage.ru_maxrss / 1024.0);
  }

  concatenate(cli.out, cli.methods, "loss.csv", "method,step,loss");
  concatenate(cli.out, cli.methods, "curves.csv",
              "method,step,loss,tar_1e3,tar_1e4,rank1,staleness_cos");
  concatenate(cli.out, cli.methods, "staleness.csv", "method,step,label,age,cosine,positive_age");

  std::ofstream csv(cli.out + "/results.csv");
  csv << "method,identities,steps,images,tar_1e3,tar_1e4,rank1,step_ms,state_mb,peak_rss_mb,final_"
         "loss,"
         "staleness_cos\n";
  const long long images = static_cast<long long>(o.steps * o.batch);
  std::printf("\n%-18s %9s %9s %7s %9s %9s %9s %10s\n", "method", "TAR@1e-3", "TAR@1e-4", "rank-1",
              "step ms", "state MB", "peak MB", "proto cos");
  const auto& u = results.front();
  std::printf("%-18s %9.4f %9.4f %7.4f %9s %9s %9s %10s\n", "untrained encoder",
              u.at("untrained_tar_1e3"), u.at("untrained_tar_1e4"), u.at("untrained_rank1"), "-",
              "-", "-", "-");
  for (std::size_t i = 0; i < results.size(); ++i) {
    const auto& r = results[i];
    const std::string name = cli.methods[i].name();
    std::printf("%-18s %9.4f %9.4f %7.4f %9.2f %9.1f %9.0f %10.3f\n", name.c_str(), r.at("tar_1e3"),
                r.at("tar_1e4"), r.at("rank1"), r.at("step_ms"), r.at("state_mb"), peak_mb[i],
                r.at("staleness_cos"));
    csv << name << "," << o.identities << "," << o.steps << "," << images << "," << r.at("tar_1e3")
        << "," << r.at("tar_1e4") << "," << r.at("rank1") << "," << r.at("step_ms") << ","
        << r.at("state_mb") << "," << peak_mb[i] << "," << r.at("final_loss") << ","
        << r.at("staleness_cos") << "\n";
  }
  std::printf(
      "(%lld steps x %lld images = %lld images per method; proto cos: mean cosine between a "
      "class's classifier vector and its current mean embedding)\n",
      static_cast<long long>(o.steps), static_cast<long long>(o.batch), images);
  if (std::any_of(cli.methods.begin(), cli.methods.end(),
                  [](const train::Method& m) { return m.kind == train::Kind::protomem; })) {
    std::printf("protomem aging: %s\n", aging_line(o).c_str());
  }
  std::printf("files: %s/{results,loss,curves,staleness}.csv", cli.out.c_str());
  csv.close();
  if (cli.plot) {
    const char* python = access("/usr/bin/python3", X_OK) == 0 ? "/usr/bin/python3" : "python3";
    const std::string command =
        std::string(python) + " '" + PROTOMEM_TRAIN_PLOT_SCRIPT + "' '" + cli.out + "' > /dev/null";
    if (std::system(command.c_str()) == 0) {
      std::printf(", %s/curves.png", cli.out.c_str());
    } else {
      std::printf("\n(curves.png not drawn: %s needs matplotlib)", PROTOMEM_TRAIN_PLOT_SCRIPT);
    }
  }
  std::printf("\n");
  return 0;
}

#ifdef PROTOMEM_TRAIN_MPI
// --distributed: every rank trains each method here; rank 0 evaluates, prints and writes the files
// (run_parent with the training in process), the other ranks only train. The memory and the
// encoder each have their own communicator.
int run_distributed(const Cli& cli, const char* self) {
  protomem::MpiCommunicator encoder_comm;
  const train::Parallel parallel = train::mpi_parallel(encoder_comm);
  train::Options o = cli.o;
  o.progress = o.progress && parallel.rank == 0;
  auto factory = [](const train::Options& options) {
    return std::make_unique<train::ShardedHead>(options);  // with its own communicator
  };
  auto train_method = [&](const train::Method& method) {
    return train::run_method(o, method, factory, parallel);
  };
  if (parallel.rank != 0) {
    for (const auto& method : cli.methods) train_method(method);
    return 0;
  }
  std::printf(
      "distributed: %d ranks, each encoding 1/%d of every batch and storing 1/%d of the "
      "memory's slots\n",
      parallel.world_size, parallel.world_size, parallel.world_size);
  return run_parent(cli, self, [&](const train::Method& method) {
    write_method_files(cli.out, train_method(method));
    struct rusage usage {};
    getrusage(RUSAGE_SELF, &usage);
    return usage.ru_maxrss / 1024.0;
  });
}

// MPI_Init .. MPI_Finalize around run_distributed; an error on one rank ends the job (the others
// may wait in a collective).
int main_distributed(const Cli& cli, const char* self, int& argc, char**& argv) {
  MPI_Init(&argc, &argv);
  int rc = 0;
  try {
    rc = run_distributed(cli, self);
  } catch (const std::exception& e) {
    int rank = 0;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    std::fprintf(stderr, "train: error on rank %d: %s\n", rank, e.what());
    std::fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, 1);
  }
  MPI_Finalize();
  return rc;
}
#endif

}  // namespace

int main(int argc, char** argv) {
  Cli cli;
  try {
    cli = parse(argc, argv);
#ifdef PROTOMEM_TRAIN_IMAGES
    if (has_images(cli.o) && cli.o.images.heldout.empty()) {
      cli.o.images.heldout = images::default_heldout(cli.o.images.train);
    }
    if (has_images(cli.o)) {  // the sizes the data fix (N, held-out identities), for the checks
      try {
        cli.o = train::resolve(cli.o, images::ImageSet(cli.o.images, cli.o.eval_images));
      } catch (const std::exception& e) {
        throw UsageError(std::string("--data: ") + e.what());
      }
    }
#endif
    check(cli);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "train: error: %s\n(see train --help)\n", e.what());
    return 2;
  }
  try {
    if (cli.threads > 0) at::set_num_threads(cli.threads);
    if (!cli.child.empty()) return run_child(cli);
#ifdef PROTOMEM_TRAIN_MPI
    if (cli.distributed) return main_distributed(cli, argv[0], argc, argv);
#endif
    return run_parent(cli, argv[0]);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "train: error: %s\n", e.what());
    return 1;
  }
}
