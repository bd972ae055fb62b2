// The training job behind examples/train: a LibTorch MLP encoder trained on the synthetic identity
// set (synthetic.hpp) with one of three classifier heads, and its evaluation on held-out
// identities.
//
//   protomem  Prototype Memory (a protomem::PrototypeMemory<float> whose policies the flags choose
//             at run time, behind a loss node: ProtomemHead) on class-grouped batches
//   full      a learned N x D margin classifier (full softmax), every row updated every step
//   pfc       Partial-FC-style sampled softmax: a learned N x D classifier of which each step uses
//             the batch's positive rows plus a random sample of negatives (sample_rate * N rows in
//             all, as insightface's PartialFC), and only the sampled rows (and their momentum) are
//             updated, as in Partial FC v1 / the MXNet memory bank
// Batches are either class-grouped (P = batch / K identities, K images each, identities in shuffled
// order, every identity once per epoch: the sampler Prototype Memory needs), instance batches
// (batch images drawn uniformly over all training images: the usual sampler for learned
// classifiers) or mined (protomem's IterateAndSample with doppelganger fill: a share of each
// batch's identities are look-alikes of the others, from the memory's DoppelgangerMining table;
// protomem only, docs/mining.md). Every method sees the same number of steps and images; the
// encoder starts from the same seeded initialisation.
//
// Evaluation on identities never trained on ([N, N + eval_identities) and distractors above them):
// verification TAR at FAR 1e-3 and 1e-4 over all image pairs, rank-1 identification of probes
// against a gallery of one image per identity plus distractor images, and prototype staleness
// (cosine between a class's classifier vector and its current mean embedding, against the vector's
// age in steps: since it was last written, and since its class was last a positive).
#pragma once

#include <torch/torch.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <memory>
#include <numeric>
#include <protomem/data/dataset_index.hpp>
#include <protomem/memory.hpp>
#include <protomem/torch.hpp>
#include <protomem/data/sampler.hpp>
#include <random>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include <protomem/data/synthetic.hpp>
#ifdef PROTOMEM_TRAIN_IMAGES
#include "image_data.hpp"
#endif

namespace train {

enum class Kind { protomem, full, pfc };
enum class Sampler { grouped, instance, mined };

struct Method {
  Kind kind;
  Sampler sampler;
  std::string name() const {
    const char* k = kind == Kind::protomem ? "protomem" : (kind == Kind::full ? "full" : "pfc");
    const char* s = sampler == Sampler::grouped    ? "-grouped"
                    : sampler == Sampler::instance ? "-instance"
                                                   : "-mining";
    return std::string(k) + s;
  }
};

/// Every knob of a run (the command line of examples/train maps onto this one to one).
struct Options {
  synthetic::Config data;
#ifdef PROTOMEM_TRAIN_IMAGES
  images::Config images;  // --data: real images (image_data.hpp) instead of the synthetic set
#endif
  std::string encoder = "mlp";            // mlp | cnn (a small IResNet; needs --data)
  std::int64_t width = 32;                // cnn: channels of the first stage
  std::int64_t depth = 1;                 // cnn: blocks per stage (three stages)
  std::int64_t identities = 10000;        // N training identities: labels [0, N)
  std::int64_t images_per_identity = 16;  // training images per identity
  std::int64_t eval_identities = 1000;    // held-out identities for verification/identification
  std::int64_t eval_images = 4;           // images per held-out identity
  std::int64_t distractors = 10000;       // distractor images (one per further identity)
  std::int64_t hidden = 256;              // encoder width
  std::int64_t dim = 64;                  // D: embedding dimension
  std::int64_t steps = 300;    // the defaults are the `1e4` run of docs/results.md (scripts/demo):
  std::int64_t batch = 128;    // B images per step; a few minutes on 2 cores
  std::int64_t exemplars = 4;  // K images per identity in grouped batches
  double lr = 0.1;
  double momentum = 0.9;
  double weight_decay = 5e-4;            // encoder only
  std::string margin = "cosface";        // cosface | arcface | none
  double scale = 32.0;                   // s
  double m = 0.3;                        // margin (cosface m3, arcface m2)
  std::int64_t capacity = 4096;          // M: protomem slots
  std::string generator = "mean";        // mean | detached | leave-one-out
  double refresh = 0.0;                  // momentum a of the refresh (0: replace)
  std::string queue = "lrw";             // lrw | fifo
  // Aging (make_aging): the half-life h of AgeDecay, protomem's default_aging()'s unless given
  // (inf: no decay), and the age bound (-1: never); neither: NoAging.
  double age_half_life = protomem::default_aging().half_life;
  std::string age_clock = "steps";  // steps | lr: AgeDecay's half-life at the peak lr
  std::int64_t max_age = -1;        // prototypes older than this expire (-1: never)
  double doppelganger_fraction = 0.25;   // mined batches: share of the P identities mined
  std::int64_t similar_k = 8;            // mined: doppelgangers remembered per class
  std::int64_t mining_table = 0;         // mined: classes with a row (0: min(N, 2^20))
  bool mining = false;                   // protomem head with DoppelgangerMining (set per method)
  double sample_rate = 0.1;              // pfc: share of the N rows used per step
  std::int64_t eval_every = 100;         // steps between evaluations (curves)
  std::int64_t staleness_classes = 256;  // classes sampled per staleness measurement
  std::uint64_t seed = 1;                // encoder init, samplers
  bool progress = true;                  // progress bar on a terminal
};

/// The memory's sizes: M slots of dim D, labels below the number of identities; batches of mostly
/// single exemplars (--exemplars 1) are refused, as a trainer should (Config::single_exemplar).
inline protomem::Config memory_config(const Options& o) {
  protomem::Config c;
  c.capacity = o.capacity;
  c.dim = o.dim;
  c.num_classes = o.identities;
  c.single_exemplar = protomem::SingleExemplar::refuse;
  return c;
}

/// The margin of every method: protomem's CombinedMargin(s, 1, m2, m3), cosface = (m2 = 0, m3 = m),
/// arcface = (m2 = m, m3 = 0); the learned baselines apply the same psi (margin_psi).
inline protomem::CombinedMargin make_margin(const Options& o) {
  if (o.margin == "cosface") return protomem::CombinedMargin(o.scale, 1.0, 0.0, o.m);
  if (o.margin == "arcface") return protomem::CombinedMargin(o.scale, 1.0, o.m, 0.0);
  return protomem::CombinedMargin(o.scale, 1.0, 0.0, 0.0);
}

inline at::Tensor margin_psi(const protomem::CombinedMargin& mg, const at::Tensor& cos) {
  if (mg.m2 == 0.0) return cos - mg.m3;
  const at::Tensor c = cos.clamp(-1.0 + 1e-7, 1.0 - 1e-7);
  const at::Tensor theta = at::acos(c);
  const double t = mg.threshold_angle();
  return at::where(theta <= t, at::cos(theta * mg.m1 + mg.m2) - mg.m3,
                   c - mg.m3 - (1.0 + std::cos(t)));
}

/// Rows scaled to unit norm (differentiable).
inline at::Tensor unit(const at::Tensor& t) { return t / t.norm(2, {1}, true).clamp_min(1e-12); }

// ---- heads
// ----------------------------------------------------------------------------------------

/// A class's classifier vector, sampled for the staleness measurement.
struct VectorSample {
  std::vector<std::int64_t> labels;
  std::vector<std::int64_t> ages;  // steps since the vector was last written
  // Steps since the vector's class was last a positive (in a step's batch). For a learned
  // classifier this differs from `ages` where a row is also written as a negative (Partial FC's
  // sampled negatives, every row under full softmax); a prototype is written only when its class
  // is in the batch, so there the two are equal.
  std::vector<std::int64_t> positive_ages;
  at::Tensor vectors;  // S x D, unit rows
};

class Head {
 public:
  virtual ~Head() = default;
  /// The loss of a batch, differentiable w.r.t. the embeddings (and the head's own weights).
  virtual at::Tensor loss(const at::Tensor& embeddings, const at::Tensor& labels) = 0;
  /// After backward: the head's own update (learned classifiers), lr of this step.
  virtual void update(double lr, std::int64_t step) = 0;
  /// Bytes of the head's state (classifier or memory, plus optimizer state).
  virtual double state_bytes() const = 0;
  virtual VectorSample sample_vectors(std::int64_t count, std::mt19937_64& rng,
                                      std::int64_t step) const = 0;
  /// The doppelganger table mined batches draw from (protomem with DoppelgangerMining only).
  virtual const protomem::DoppelgangerMining* mining_table() const { return nullptr; }
  /// How the last step ran, for the log ("" for learned classifiers).
  virtual std::string step_info() const { return ""; }
};

inline std::int64_t mining_table_capacity(const Options& o) {
  return o.mining_table > 0 ? o.mining_table : std::min<std::int64_t>(o.identities, 1 << 20);
}

/// The learning rate of `step` (0-based): linear warm-up over 5% of the steps, then cosine decay.
inline double lr_at(const Options& o, std::int64_t step) {
  const std::int64_t warmup = std::max<std::int64_t>(1, o.steps / 20);
  if (step < warmup) return o.lr * (step + 1) / warmup;
  const double t = static_cast<double>(step - warmup) / std::max<std::int64_t>(1, o.steps - warmup);
  return o.lr * 0.5 * (1.0 + std::cos(3.141592653589793 * t));
}

// ---- the memory's policies, chosen at run time from the flags (policies/any.hpp: each is a
// value of its family's holder, so every combination is the same PrototypeMemory<float>)

inline protomem::AnyGenerator make_generator(const Options& o) {
  if (o.generator == "detached") return protomem::DetachedExemplarMean{};
  if (o.generator == "leave-one-out") return protomem::LeaveOneOut{};
  if (o.generator == "mean") return protomem::ExemplarMean{};
  throw std::invalid_argument("--generator must be mean, detached or leave-one-out, not '" +
                              o.generator + "'");
}

/// --refresh: replace (a = 0) or momentum:A.
inline protomem::AnyRefresh make_refresh(const Options& o) {
  if (o.refresh == 0.0) return protomem::Replace{};
  return protomem::Momentum(o.refresh);
}

inline protomem::AnyQueue make_queue(const Options& o) {
  if (o.queue == "lrw") return protomem::LeastRecentlyWritten{};
  if (o.queue == "fifo") return protomem::FirstInFirstOut{};
  throw std::invalid_argument("--queue must be lrw or fifo, not '" + o.queue + "'");
}

/// DoppelgangerMining for mined batches (protomem-mining), else none.
inline protomem::AnyMining make_mining(const Options& o) {
  if (!o.mining) return protomem::NoMining{};
  return protomem::DoppelgangerMining(o.similar_k, mining_table_capacity(o));
}

/// The Aging policy of --age-half-life H and --max-age N (defaults: protomem's default aging,
/// default_aging() = AgeDecay(8), and no bound): AgeDecay(H, N), MaxAge(N) when H is infinite
/// (--age-half-life inf), NoAging when H is infinite and there is no bound (--no-aging).
/// With --age-clock lr the half-life follows the learning rate, H lr_peak / lr(step): a prototype's
/// weight then falls with the encoder's drift since it was written (fast while the lr is high,
/// hardly once it has decayed) rather than with its age in steps. Set after each step for the next
/// (`lr`: the learning rate of the step it is for).
inline protomem::AnyAging make_aging(const Options& o, double lr) {
  const bool bounded = o.max_age >= 0;
  const auto bound = bounded ? static_cast<std::uint64_t>(o.max_age) : protomem::AgeDecay::never;
  if (!std::isfinite(o.age_half_life)) {
    if (!bounded) return protomem::NoAging{};
    return protomem::MaxAge(bound);
  }
  if (o.age_clock != "lr") return protomem::AgeDecay(o.age_half_life, bound);
  const double h = lr > 0 ? o.age_half_life * o.lr / lr : std::numeric_limits<double>::infinity();
  return protomem::AgeDecay(h, bound);
}

/// The Aging policy in words, as the run's header prints it.
inline std::string describe_aging(const protomem::AnyAging& aging) {
  std::ostringstream out;
  if (const auto* d = aging.get_if<protomem::AgeDecay>()) {
    out << "AgeDecay(half-life " << d->half_life << " steps";
    if (d->max_age != protomem::AgeDecay::never) out << ", max age " << d->max_age << " steps";
    out << ")";
  } else if (const auto* m = aging.get_if<protomem::MaxAge>()) {
    out << "MaxAge(" << m->max_age << " steps)";
  } else {
    out << (aging.holds<protomem::NoAging>() ? "NoAging" : aging.name());
  }
  return out.str();
}

/// Prototype Memory in one process, through the LibTorch adapter (protomem/torch.hpp: the autograd
/// path the Python package uses too): loss() is the head's forward, update() commits it
/// (Commit::manual: the encoder's backward and SGD step come between and do not read the memory)
/// and, with --age-clock lr, sets the next step's aging.
class ProtomemHead : public Head {
 public:
  explicit ProtomemHead(const Options& o)
      : head_(memory_config(o), make_margin(o), make_generator(o), make_refresh(o), make_queue(o),
              make_mining(o), make_aging(o, lr_at(o, 0)), protomem::torch::Commit::manual),
        options_(o) {}

  at::Tensor loss(const at::Tensor& e, const at::Tensor& y) override { return head_(e, y); }
  void update(double, std::int64_t step) override {
    head_.commit();
    if (options_.age_clock == "lr") {  // `step` steps are done: the aging of the next one
      memory().set_aging(make_aging(options_, lr_at(options_, step)));
    }
  }
  double state_bytes() const override {
    return static_cast<double>(memory().capacity()) * memory().dim() * sizeof(float);
  }
  VectorSample sample_vectors(std::int64_t count, std::mt19937_64& rng,
                              std::int64_t) const override {
    std::vector<std::int64_t> labels;
    for (const auto& record : memory()) labels.push_back(record.label);
    std::shuffle(labels.begin(), labels.end(), rng);
    if (static_cast<std::int64_t>(labels.size()) > count) labels.resize(count);
    VectorSample s;
    s.vectors = at::empty({static_cast<std::int64_t>(labels.size()), memory().dim()});
    for (std::size_t r = 0; r < labels.size(); ++r) {
      const auto p = memory().prototype(labels[r]);
      std::copy(p.begin(), p.end(), s.vectors.data_ptr<float>() + r * memory().dim());
      s.ages.push_back(
          static_cast<std::int64_t>(memory().step_count() - memory().last_written(labels[r])));
      s.positive_ages.push_back(s.ages.back());
    }
    s.labels = std::move(labels);
    return s;
  }
  std::string step_info() const override {  // the memory pass's GEMM (measured), threads, tile
    const auto& r = head_.last_result();
    return "GEMM " + protomem::backend::describe(r.gemm) + ", " + std::to_string(r.threads) +
           " thread(s), tile " + std::to_string(r.tile_columns) + " columns";
  }
  const protomem::DoppelgangerMining* mining_table() const override {
    return memory().mining().get_if<protomem::DoppelgangerMining>();  // null under NoMining
  }

 private:
  protomem::PrototypeMemory<float>& memory() { return head_.memory(); }
  const protomem::PrototypeMemory<float>& memory() const { return head_.memory(); }

  protomem::torch::PrototypeHead<float> head_;
  Options options_;
};

/// A learned N x D cosine classifier with SGD momentum: full softmax (sample_rate 1) or Partial-FC
/// sampling (positives plus random negatives; only sampled rows and their momentum are updated).
class LearnedHead : public Head {
 public:
  LearnedHead(const Options& o, double sample_rate)
      : n_(o.identities),
        rate_(sample_rate),
        momentum_(o.momentum),
        margin_(make_margin(o)),
        rng_(o.seed * 7919 + 17),
        last_(static_cast<std::size_t>(o.identities), -1),
        last_positive_(static_cast<std::size_t>(o.identities), -1) {
    ::torch::NoGradGuard no_grad;
    weight_ = at::randn({n_, o.dim}, at::detail::createCPUGenerator(o.seed + 101)) * 0.01;
    velocity_ = ::torch::zeros_like(weight_);
    if (rate_ < 1.0) mark_.assign(static_cast<std::size_t>(n_), 0);
  }

  at::Tensor loss(const at::Tensor& e, const at::Tensor& y) override {
    const auto* labels = y.data_ptr<std::int64_t>();
    positives_.assign(labels, labels + y.size(0));
    at::Tensor rows, targets;
    if (rate_ >= 1.0) {
      weight_.set_requires_grad(true);
      rows = weight_;
      targets = y;
      index_ = at::Tensor();
    } else {
      sample(y, &targets);
      sub_ = weight_.index_select(0, index_).detach().set_requires_grad(true);
      rows = sub_;
    }
    const at::Tensor cos = at::matmul(unit(e), unit(rows).t());
    return margin_softmax(cos, targets);
  }

  void update(double lr, std::int64_t step) override {
    ::torch::NoGradGuard no_grad;
    for (std::int64_t c : positives_) last_positive_[static_cast<std::size_t>(c)] = step;
    positives_.clear();
    if (rate_ >= 1.0) {
      velocity_.mul_(momentum_).add_(weight_.grad());
      weight_.sub_(velocity_ * lr);
      weight_.mutable_grad().reset();
      std::fill(last_.begin(), last_.end(), step);
      return;
    }
    const at::Tensor v = velocity_.index_select(0, index_).mul_(momentum_).add_(sub_.grad());
    velocity_.index_copy_(0, index_, v);
    weight_.index_copy_(0, index_, sub_.detach() - v * lr);
    const auto* idx = index_.data_ptr<std::int64_t>();
    for (std::int64_t r = 0; r < index_.size(0); ++r)
      last_[static_cast<std::size_t>(idx[r])] = step;
    sub_ = at::Tensor();
  }

  double state_bytes() const override { return 2.0 * n_ * weight_.size(1) * sizeof(float); }

  VectorSample sample_vectors(std::int64_t count, std::mt19937_64& rng,
                              std::int64_t step) const override {
    VectorSample s;
    std::uniform_int_distribution<std::int64_t> pick(0, n_ - 1);
    count = std::min(count, n_);
    for (std::int64_t r = 0; r < count; ++r) {
      const std::int64_t c = pick(rng);
      s.labels.push_back(c);
      const std::int64_t last = last_[static_cast<std::size_t>(c)];
      s.ages.push_back(last < 0 ? step + 1 : step - last);  // never written: older than the run
      const std::int64_t positive = last_positive_[static_cast<std::size_t>(c)];
      s.positive_ages.push_back(positive < 0 ? step + 1 : step - positive);  // same convention
    }
    ::torch::NoGradGuard no_grad;
    const at::Tensor idx = ::torch::tensor(s.labels, ::torch::kLong);
    s.vectors = unit(weight_.index_select(0, idx));
    return s;
  }

 private:
  at::Tensor margin_softmax(const at::Tensor& cos, const at::Tensor& targets) const {
    const at::Tensor t = targets.view({-1, 1});
    const at::Tensor target_cos = cos.gather(1, t);
    const at::Tensor logits =
        (cos * margin_.s)
            .scatter_add(1, t, (margin_psi(margin_, target_cos) - target_cos) * margin_.s);
    return (at::logsumexp(logits, 1) - logits.gather(1, t).view(-1)).mean();
  }

  // Positives (the batch's classes) plus uniformly drawn distinct negatives, sorted, as
  // PartialFC.sample(): num_sample = max(int(rate * N), #positives) rows in all.
  void sample(const at::Tensor& y, at::Tensor* targets) {
    const auto* labels = y.data_ptr<std::int64_t>();
    const std::int64_t b = y.size(0);
    std::vector<std::int64_t> index;
    for (std::int64_t i = 0; i < b; ++i) {
      auto& m = mark_[static_cast<std::size_t>(labels[i])];
      if (!m) {
        m = 1;
        index.push_back(labels[i]);
      }
    }
    const auto want = std::max<std::int64_t>(static_cast<std::int64_t>(rate_ * n_),
                                             static_cast<std::int64_t>(index.size()));
    std::uniform_int_distribution<std::int64_t> pick(0, n_ - 1);
    while (static_cast<std::int64_t>(index.size()) < want) {
      const std::int64_t c = pick(rng_);
      auto& m = mark_[static_cast<std::size_t>(c)];
      if (!m) {
        m = 1;
        index.push_back(c);
      }
    }
    for (std::int64_t c : index) mark_[static_cast<std::size_t>(c)] = 0;
    std::sort(index.begin(), index.end());
    std::vector<std::int64_t> local(static_cast<std::size_t>(b));
    for (std::int64_t i = 0; i < b; ++i) {
      local[static_cast<std::size_t>(i)] =
          std::lower_bound(index.begin(), index.end(), labels[i]) - index.begin();
    }
    index_ = ::torch::tensor(index, ::torch::kLong);
    *targets = ::torch::tensor(local, ::torch::kLong);
  }

  std::int64_t n_;
  double rate_, momentum_;
  protomem::CombinedMargin margin_;
  std::mt19937_64 rng_;
  at::Tensor weight_, velocity_, index_, sub_;
  std::vector<std::uint8_t> mark_;
  std::vector<std::int64_t> last_;           // step a row was last written (sampled)
  std::vector<std::int64_t> last_positive_;  // step a row's class was last in the batch
  std::vector<std::int64_t> positives_;      // this step's batch labels, for update()
};

// ---- data
// -----------------------------------------------------------------------------------------

/// Yields (identity, image index) pairs of each step's batch.
class BatchSampler {
 public:
  /// `counts`: images of each identity (real data); empty: o.images_per_identity each.
  BatchSampler(const Options& o, Sampler kind, std::vector<std::int64_t> counts = {})
      : o_(o),
        kind_(kind),
        rng_(o.seed * 1000003 + (kind == Sampler::grouped ? 1 : 2)),
        counts_(std::move(counts)) {
    if (!counts_.empty()) {
      first_.assign(1, 0);
      for (std::int64_t n : counts_) first_.push_back(first_.back() + n);
    }
    if (kind == Sampler::mined) {
      // Sample s is image s % n of identity s / n (n images per identity); with counts, image
      // s - first_[c] of the identity c whose range holds s.
      std::vector<protomem::label_t> labels(static_cast<std::size_t>(
          counts_.empty() ? o.identities * o.images_per_identity : first_.back()));
      for (std::size_t s = 0; s < labels.size(); ++s) {
        labels[s] = counts_.empty() ? static_cast<protomem::label_t>(s) / o.images_per_identity
                                    : identity_of(static_cast<std::int64_t>(s));
      }
      index_ =
          std::make_unique<protomem::DatasetIndex>(protomem::DatasetIndex::from_labels(labels));
      protomem::SamplerConfig c;
      c.classes_per_batch = o.batch / o.exemplars;
      c.exemplars_per_class = o.exemplars;
      c.seed = o.seed * 1000003 + 3;
      c.doppelganger_fraction = o.doppelganger_fraction;
      mined_ = std::make_unique<protomem::IterateAndSample>(*index_, c);
    }
  }

  /// Mined batches: how their fill classes came about, summed over the batches drawn.
  struct FillCounts {
    std::int64_t batches = 0, fill = 0, from_table = 0, planted_twins = 0;
  };
  const FillCounts& fill_counts() const { return fill_; }

  /// `table`: the doppelganger table of mined batches (nullptr: random fill); `data` (optional)
  /// tells planted look-alikes (lookalike_of).
  template <class Data = synthetic::IdentitySet>
  void next(std::vector<std::int64_t>& ids, std::vector<std::int64_t>& idx,
            const protomem::DoppelgangerMining* table = nullptr, const Data* data = nullptr) {
    ids.resize(static_cast<std::size_t>(o_.batch));
    idx.resize(static_cast<std::size_t>(o_.batch));
    if (kind_ == Sampler::mined) {
      const protomem::Batch b = table ? mined_->next(*table) : mined_->next();
      for (std::size_t i = 0; i < b.samples.size(); ++i) {
        if (counts_.empty()) {
          ids[i] = b.samples[i] / o_.images_per_identity;
          idx[i] = b.samples[i] % o_.images_per_identity;
        } else {
          ids[i] = identity_of(b.samples[i]);
          idx[i] = b.samples[i] - first_[static_cast<std::size_t>(ids[i])];
        }
      }
      ++fill_.batches;
      fill_.fill += mined_->mined_per_batch();
      fill_.from_table += b.mined_classes;
      if (data) {  // mined classes that are the planted look-alike of a base class of the batch
        const auto base = b.classes.begin() + b.base_classes;
        for (auto c = base; c != base + b.mined_classes; ++c) {
          const std::int64_t twin = data->lookalike_of(*c);
          fill_.planted_twins += twin >= 0 && std::find(b.classes.begin(), base, twin) != base;
        }
      }
      return;
    }
    if (kind_ == Sampler::instance && !counts_.empty()) {  // uniform over all training images
      std::uniform_int_distribution<std::int64_t> image(0, first_.back() - 1);
      for (std::int64_t i = 0; i < o_.batch; ++i) {
        const std::int64_t s = image(rng_);
        ids[static_cast<std::size_t>(i)] = identity_of(s);
        idx[static_cast<std::size_t>(i)] = s - first_[static_cast<std::size_t>(identity_of(s))];
      }
      return;
    }
    if (kind_ == Sampler::instance) {
      std::uniform_int_distribution<std::int64_t> id(0, o_.identities - 1),
          im(0, o_.images_per_identity - 1);
      for (std::int64_t i = 0; i < o_.batch; ++i) {
        ids[static_cast<std::size_t>(i)] = id(rng_);
        idx[static_cast<std::size_t>(i)] = im(rng_);
      }
      return;
    }
    const std::int64_t k = o_.exemplars, p = o_.batch / k;
    std::vector<std::int64_t> pool(static_cast<std::size_t>(o_.images_per_identity));
    for (std::int64_t c = 0; c < p; ++c) {
      if (cursor_ >= order_.size()) {  // a new epoch over the identities
        if (order_.empty()) {
          order_.resize(static_cast<std::size_t>(o_.identities));
          std::iota(order_.begin(), order_.end(), 0);
        }
        std::shuffle(order_.begin(), order_.end(), rng_);
        cursor_ = 0;
      }
      const std::int64_t identity = order_[cursor_++];
      if (!counts_.empty()) {  // K distinct images where the identity has K, else all, repeated
        const std::int64_t n = counts_[static_cast<std::size_t>(identity)];
        pool.resize(static_cast<std::size_t>(n));
        std::iota(pool.begin(), pool.end(), 0);
        for (std::int64_t e = 0; e < k; ++e) {
          if (e < n) {
            std::uniform_int_distribution<std::int64_t> pick(e, n - 1);
            std::swap(pool[static_cast<std::size_t>(e)],
                      pool[static_cast<std::size_t>(pick(rng_))]);
          }
          ids[static_cast<std::size_t>(c * k + e)] = identity;
          idx[static_cast<std::size_t>(c * k + e)] = pool[static_cast<std::size_t>(e % n)];
        }
        continue;
      }
      std::iota(pool.begin(), pool.end(), 0);
      for (std::int64_t e = 0; e < k; ++e) {  // K distinct images (partial Fisher-Yates)
        std::uniform_int_distribution<std::int64_t> pick(e, o_.images_per_identity - 1);
        std::swap(pool[static_cast<std::size_t>(e)], pool[static_cast<std::size_t>(pick(rng_))]);
        ids[static_cast<std::size_t>(c * k + e)] = identity;
        idx[static_cast<std::size_t>(c * k + e)] = pool[static_cast<std::size_t>(e)];
      }
    }
  }

 private:
  std::int64_t identity_of(std::int64_t sample) const {
    return static_cast<std::int64_t>(std::upper_bound(first_.begin(), first_.end(), sample) -
                                     first_.begin()) -
           1;
  }

  const Options& o_;
  Sampler kind_;
  std::mt19937_64 rng_;
  std::vector<std::int64_t> counts_, first_;  // real data: images per identity, prefix sums
  std::vector<std::int64_t> order_;
  std::size_t cursor_ = 0;
  std::unique_ptr<protomem::DatasetIndex> index_;  // mined batches
  std::unique_ptr<protomem::IterateAndSample> mined_;
  FillCounts fill_;
};

template <class Data>
at::Tensor make_images(const Data& data, const std::vector<std::int64_t>& ids,
                       const std::vector<std::int64_t>& idx) {
  at::Tensor x = at::empty({static_cast<std::int64_t>(ids.size()), data.image_dim()});
  data.images(ids.data(), idx.data(), static_cast<std::int64_t>(ids.size()), x.data_ptr<float>());
  return x;
}

// ---- encoder
// --------------------------------------------------------------------------------------

/// How one run spans processes. The default: one process. examples/train --distributed
/// (distributed.hpp): `world_size` ranks each train the same encoder on their own rows of the same
/// global batch - batch norms over the global batch, gradients summed over the ranks before each
/// optimizer step, evaluation on rank 0 only.
struct Parallel {
  int rank = 0, world_size = 1;
  std::function<::torch::nn::AnyModule(std::int64_t features)> batch_norm;  // null: BatchNorm1d
  std::function<void(::torch::nn::Sequential&)> sum_gradients;   // after backward; null: none
  std::function<void(::torch::nn::Sequential&)> check_replicas;  // after the last step; null: none
};

/// The encoder, from the seed; `batch_norm` (Parallel) makes its batch norms where given.
inline ::torch::nn::Sequential make_encoder(
    const Options& o, const std::function<::torch::nn::AnyModule(std::int64_t)>& batch_norm = {}) {
  ::torch::manual_seed(o.seed);
  namespace nn = ::torch::nn;
#ifdef PROTOMEM_TRAIN_IMAGES
  if (o.encoder == "cnn") {
    return images::make_cnn(o.images.channels, o.images.size, o.width, o.depth, o.dim);
  }
#endif
  auto bn = [&](std::int64_t n) {
    return batch_norm ? batch_norm(n) : nn::AnyModule(nn::BatchNorm1d(n));
  };
  // Linear-BN-ReLU blocks and a BN on the embedding, as face encoders end (BN-FC-BN). One
  // expression, as ever: the order the compiler constructs the Linear layers in decides their
  // seeded initial weights (and so every earlier run's figures).
  return nn::Sequential(nn::Linear(o.data.image_dim, o.hidden), bn(o.hidden), nn::ReLU(),
                        nn::Linear(o.hidden, o.hidden), bn(o.hidden), nn::ReLU(),
                        nn::Linear(o.hidden, o.dim), bn(o.dim));
}

/// Unit embeddings of `images` (no grad, batch-norm in inference mode), in chunks.
inline at::Tensor embed(::torch::nn::Sequential& encoder, const at::Tensor& images) {
  ::torch::NoGradGuard no_grad;
  struct InferenceMode {
    ::torch::nn::Sequential& e;
    bool was_training;
    ~InferenceMode() { e->train(was_training); }
  } mode{encoder, encoder->is_training()};
  encoder->eval();
  std::vector<at::Tensor> parts;
  for (std::int64_t i = 0; i < images.size(0); i += 4096) {
    parts.push_back(encoder->forward(images.slice(0, i, std::min(i + 4096, images.size(0)))));
  }
  return unit(at::cat(parts));
}

// ---- evaluation
// -----------------------------------------------------------------------------------

struct Scores {
  double tar_1e3 = 0, tar_1e4 = 0, rank1 = 0;
};

/// Held-out identities [N, N + E) with V images each, and distractors [N + E, N + E + distractors)
/// with one image each; all generated once.
class Evaluator {
 public:
  template <class Data>
  Evaluator(const Options& o, const Data& data) : o_(o) {
    std::vector<std::int64_t> ids, idx;
    for (std::int64_t c = 0; c < o.eval_identities; ++c) {
      for (std::int64_t v = 0; v < o.eval_images; ++v) {
        ids.push_back(o.identities + c);
        idx.push_back(v);
      }
    }
    heldout_ = make_images(data, ids, idx);
    ids.clear();
    idx.clear();
    for (std::int64_t d = 0; d < o.distractors; ++d) {
      ids.push_back(o.identities + o.eval_identities + d);
      idx.push_back(0);
    }
    distractors_ = ids.empty() ? at::empty({0, data.image_dim()}) : make_images(data, ids, idx);
  }

  Scores evaluate(::torch::nn::Sequential& encoder) const {
    Scores s;
    const at::Tensor f = embed(encoder, heldout_);
    const std::int64_t n = f.size(0), v = o_.eval_images;
    const at::Tensor sim = at::matmul(f, f.t()).contiguous();
    const float* S = sim.data_ptr<float>();
    std::vector<float> genuine, impostor;
    impostor.reserve(static_cast<std::size_t>(n * (n - 1) / 2));
    for (std::int64_t i = 0; i < n; ++i) {
      for (std::int64_t j = i + 1; j < n; ++j) {
        (i / v == j / v ? genuine : impostor).push_back(S[i * n + j]);
      }
    }
    s.tar_1e3 = tar_at(genuine, impostor, 1e-3);
    s.tar_1e4 = tar_at(genuine, impostor, 1e-4);

    // Identification: gallery = image 0 of every held-out identity + the distractors; probes =
    // the other images of the held-out identities.
    const at::Tensor mates = f.index_select(0, at::arange(0, n, v));
    const at::Tensor gallery =
        o_.distractors > 0 ? at::cat({mates, embed(encoder, distractors_)}) : mates;
    std::vector<std::int64_t> probe_rows;
    for (std::int64_t i = 0; i < n; ++i) {
      if (i % v != 0) probe_rows.push_back(i);
    }
    const at::Tensor probes = f.index_select(0, ::torch::tensor(probe_rows, ::torch::kLong));
    const at::Tensor best = at::matmul(probes, gallery.t()).argmax(1).contiguous();
    std::int64_t hits = 0;
    for (std::size_t r = 0; r < probe_rows.size(); ++r) {
      hits += best.data_ptr<std::int64_t>()[r] == probe_rows[r] / v;
    }
    s.rank1 = probe_rows.empty() ? 0.0 : static_cast<double>(hits) / probe_rows.size();
    return s;
  }

  /// TAR at the threshold whose false-accept rate over the impostor pairs is `far`.
  static double tar_at(const std::vector<float>& genuine, std::vector<float> impostor, double far) {
    if (genuine.empty() || impostor.empty()) return 0.0;
    const auto k = static_cast<std::size_t>(far * impostor.size());  // impostors allowed above
    std::nth_element(impostor.begin(), impostor.begin() + k, impostor.end(), std::greater<float>());
    const float threshold = impostor[k];
    std::size_t accepted = 0;
    for (float g : genuine) accepted += g > threshold;
    return static_cast<double>(accepted) / genuine.size();
  }

 private:
  const Options& o_;
  at::Tensor heldout_, distractors_;
};

// ---- one run
// --------------------------------------------------------------------------------------

struct CurvePoint {
  std::int64_t step;
  double loss;  // mean training loss over the steps since the previous point
  Scores scores;
  double staleness_cos;  // mean cosine of the sampled classes' vectors to their mean embedding
};

struct StalenessPoint {
  std::int64_t step, label, age;
  std::int64_t positive_age;  // steps since the class was last a positive (VectorSample)
  double cosine;
};

struct RunResult {
  std::string method;
  Scores untrained, final;
  double step_ms = 0;   // mean wall time of a training step (data, encoder, head, update)
  double state_mb = 0;  // head state (classifier + optimizer state, or the memory)
  double final_loss = 0;
  double staleness_cos = 0;    // at the end
  std::vector<double> losses;  // every step
  std::vector<CurvePoint> curve;
  std::vector<StalenessPoint> staleness;
  // Mined batches: fill classes per batch, the share of them found in the doppelganger table and
  // the share that are the planted look-alike of a base class in the same batch.
  double fill_per_batch = 0, fill_from_table = 0, fill_planted_twins = 0;
};

#ifdef PROTOMEM_TRAIN_IMAGES
template <class Data>
using protomem_loader_t = protomem::data::ImageLoader;
/// `o` with the sizes real data fix: N from the training set; held-out identities and
/// distractors capped by the held-out set; images_per_identity the smallest class (staleness).
inline Options resolve(const Options& o, const images::ImageSet& data) {
  Options r = o;
  r.identities = data.identities();
  r.data.image_dim = data.image_dim();  // the MLP's input
  r.eval_identities = std::min(o.eval_identities, data.verification_identities() / 2 * 2);
  r.distractors = std::min(o.distractors, data.heldout_identities() - r.eval_identities);
  const auto counts = data.counts();
  r.images_per_identity = *std::min_element(counts.begin(), counts.end());
  if (r.eval_identities < 2) {
    throw std::runtime_error("the held-out set has fewer than 2 identities with --eval-images (" +
                             std::to_string(o.eval_images) + ") images");
  }
  return r;
}
#else
template <class Data>
struct protomem_loader_t {};
#endif

inline std::unique_ptr<Head> make_head(
    const Options& o, Kind kind,
    std::function<std::unique_ptr<Head>(const Options&)> protomem_factory) {
  if (kind == Kind::protomem) return protomem_factory(o);  // o.mining chooses the Mining policy
  return std::make_unique<LearnedHead>(o, kind == Kind::full ? 1.0 : o.sample_rate);
}

/// Mean cosine between each sampled class's vector and the class's current mean embedding (of
/// its first 4 training images).
template <class Data>
double measure_staleness(const Options& o, const Data& data, ::torch::nn::Sequential& encoder,
                         const Head& head, std::mt19937_64& rng, std::int64_t step,
                         std::vector<StalenessPoint>* out) {
  const VectorSample s = head.sample_vectors(o.staleness_classes, rng, step);
  if (s.labels.empty()) return 0.0;
  const std::int64_t per = std::min<std::int64_t>(4, o.images_per_identity);
  std::vector<std::int64_t> ids, idx;
  for (std::int64_t c : s.labels) {
    for (std::int64_t i = 0; i < per; ++i) {
      ids.push_back(c);
      idx.push_back(i);
    }
  }
  const at::Tensor f = embed(encoder, make_images(data, ids, idx));
  const at::Tensor means = unit(f.view({-1, per, f.size(1)}).sum(1));
  const at::Tensor cos = (means * s.vectors).sum(1).contiguous();
  double total = 0;
  for (std::size_t r = 0; r < s.labels.size(); ++r) {
    const double c = cos.data_ptr<float>()[r];
    total += c;
    if (out) out->push_back({step, s.labels[r], s.ages[r], s.positive_ages[r], c});
  }
  return total / s.labels.size();
}

/// Progress on a terminal: one line redrawn in place.
class Progress {
 public:
  Progress(std::string label, std::int64_t total, bool enabled)
      : label_(std::move(label)),
        total_(total),
        enabled_(enabled && isatty(2)),
        start_(std::chrono::steady_clock::now()) {}
  void update(std::int64_t done, double loss, double images_per_s, bool force = false) {
    if (!enabled_) return;
    const auto now = std::chrono::steady_clock::now();
    if (!force && now - last_ < std::chrono::milliseconds(200)) return;
    last_ = now;
    const double elapsed = std::chrono::duration<double>(now - start_).count();
    const double eta = done > 0 ? elapsed * (total_ - done) / done : 0.0;
    const int width = 24,
              filled = static_cast<int>(width * done / std::max<std::int64_t>(1, total_));
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(width, '.');
    std::fprintf(stderr, "\r  %-18s [%s] %6lld/%lld  loss %7.3f  %7.0f img/s  ETA %2d:%02d ",
                 label_.c_str(), bar.c_str(), static_cast<long long>(done),
                 static_cast<long long>(total_), loss, images_per_s, static_cast<int>(eta) / 60,
                 static_cast<int>(eta) % 60);
    std::fflush(stderr);
  }
  void finish() {
    if (enabled_) std::fprintf(stderr, "\n");
  }

 private:
  std::string label_;
  std::int64_t total_;
  bool enabled_;
  std::chrono::steady_clock::time_point start_, last_{};
};

/// Trains one method on `data` (synthetic::IdentitySet or images::ImageSet) from the seeded
/// initial encoder and evaluates it.
template <class Data>
RunResult train_on(const Options& o, const Data& data, const Method& method,
                   std::function<std::unique_ptr<Head>(const Options&)> protomem_factory,
                   const Parallel& parallel = {}) {
  RunResult result;
  result.method = method.name();
  const Evaluator evaluator(o, data);
  const bool evaluates = parallel.rank == 0;  // the other ranks' scores stay 0
  auto encoder = make_encoder(o, parallel.batch_norm);
  ::torch::optim::SGD optimizer(
      encoder->parameters(),
      ::torch::optim::SGDOptions(o.lr).momentum(o.momentum).weight_decay(o.weight_decay));
  Options head_options = o;
  head_options.mining = method.sampler == Sampler::mined;
  std::unique_ptr<Head> head = make_head(head_options, method.kind, std::move(protomem_factory));
  result.state_mb = head->state_bytes() / (1024.0 * 1024.0);
  std::vector<std::int64_t> counts;
  // Real images: batches that do not depend on the training state are decoded ahead on the
  // loader's threads; mined batches (which read the memory's table of this step) in this thread.
  std::unique_ptr<protomem_loader_t<Data>> loader;
#ifdef PROTOMEM_TRAIN_IMAGES
  if constexpr (std::is_same_v<Data, images::ImageSet>) counts = data.counts();
#endif
  BatchSampler sampler(o, method.sampler, counts);
#ifdef PROTOMEM_TRAIN_IMAGES
  if constexpr (std::is_same_v<Data, images::ImageSet>) {
    if (method.sampler != Sampler::mined) {
      loader = data.loader([&sampler, &data, ids = std::vector<std::int64_t>(),
                            idx = std::vector<std::int64_t>()]() mutable {
        sampler.next(ids, idx);
        return data.train_samples(ids, idx);
      });
    }
  }
#endif
  std::mt19937_64 staleness_rng(o.seed + 5);

  if (evaluates) result.untrained = evaluator.evaluate(encoder);
  result.curve.push_back({0, std::nan(""), result.untrained, std::nan("")});

  Progress progress(result.method, o.steps, o.progress);
  std::vector<std::int64_t> ids, idx;
  double train_seconds = 0, loss_since = 0;
  std::int64_t since = 0;
  for (std::int64_t step = 0; step < o.steps; ++step) {
    const auto t0 = std::chrono::steady_clock::now();
    at::Tensor x;
#ifdef PROTOMEM_TRAIN_IMAGES
    if constexpr (std::is_same_v<Data, images::ImageSet>) {
      if (loader) {
        protomem::data::ImageBatch b = loader->next();
        ids.resize(b.samples.size());
        for (std::size_t i = 0; i < ids.size(); ++i) ids[i] = data.identity_of(b.samples[i]);
        x = data.to_tensor(b.pixels, static_cast<std::int64_t>(ids.size()));
      }
    }
#endif
    if (!loader) {
      sampler.next(ids, idx, head->mining_table(), &data);
      x = make_images(data, ids, idx);
    }
    at::Tensor y = ::torch::tensor(ids, ::torch::kLong);
    if (parallel.world_size > 1) {  // this rank's rows [B r / W, B (r + 1) / W)
      const std::int64_t b = y.size(0), w = parallel.world_size;
      const std::int64_t first = b * parallel.rank / w, last = b * (parallel.rank + 1) / w;
      x = x.slice(0, first, last);
      y = y.slice(0, first, last);
    }
    const double lr = lr_at(o, step);
    static_cast<::torch::optim::SGDOptions&>(optimizer.param_groups()[0].options()).lr(lr);
    optimizer.zero_grad();
    at::Tensor loss = head->loss(encoder->forward(x), y);
    loss.backward();
    if (parallel.sum_gradients) parallel.sum_gradients(encoder);
    optimizer.step();
    head->update(lr, step + 1);
    const double value = loss.item<double>();
    train_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!std::isfinite(value)) {
      throw std::runtime_error(result.method + ": the loss is not finite at step " +
                               std::to_string(step + 1) + " (try a smaller --lr)");
    }
    result.losses.push_back(value);
    loss_since += value;
    ++since;
    progress.update(step + 1, value, (step + 1) * o.batch / train_seconds);
    if ((step + 1) % o.eval_every == 0 || step + 1 == o.steps) {
      CurvePoint point{step + 1, loss_since / since,
                       evaluates ? evaluator.evaluate(encoder) : Scores{}, 0.0};
      point.staleness_cos =
          measure_staleness(o, data, encoder, *head, staleness_rng, step + 1, &result.staleness);
      result.curve.push_back(point);
      loss_since = 0;
      since = 0;
      progress.update(step + 1, value, (step + 1) * o.batch / train_seconds, true);
    }
  }
  progress.finish();
  if (const std::string info = head->step_info(); !info.empty()) {  // stderr, as the progress
    std::fprintf(stderr, "  %s step: %s\n", result.method.c_str(), info.c_str());
  }
  if (parallel.check_replicas) parallel.check_replicas(encoder);
  result.final = result.curve.back().scores;
  result.staleness_cos = result.curve.back().staleness_cos;
  result.step_ms = 1000.0 * train_seconds / std::max<std::int64_t>(1, o.steps);
  if (const auto& f = sampler.fill_counts(); f.batches > 0 && f.fill > 0) {
    result.fill_per_batch = static_cast<double>(f.fill) / f.batches;
    result.fill_from_table = static_cast<double>(f.from_table) / f.fill;
    result.fill_planted_twins = static_cast<double>(f.planted_twins) / f.fill;
  }
  const std::size_t tail = std::min<std::size_t>(result.losses.size(), 20);
  result.final_loss = std::accumulate(result.losses.end() - static_cast<std::ptrdiff_t>(tail),
                                      result.losses.end(), 0.0) /
                      std::max<std::size_t>(1, tail);
  return result;
}

/// Trains one method on the data `o` names: the synthetic set, or real images (--data).
inline RunResult run_method(const Options& o, const Method& method,
                            std::function<std::unique_ptr<Head>(const Options&)> protomem_factory,
                            const Parallel& parallel = {}) {
#ifdef PROTOMEM_TRAIN_IMAGES
  if (!o.images.train.empty()) {
    const images::ImageSet data(o.images, o.eval_images);
    return train_on(resolve(o, data), data, method, std::move(protomem_factory), parallel);
  }
#endif
  return train_on(o, synthetic::IdentitySet(o.data), method, std::move(protomem_factory), parallel);
}

/// The single-process protomem head: the factory run_method() takes.
inline std::unique_ptr<Head> make_protomem_head(const Options& o) {
  return std::make_unique<ProtomemHead>(o);
}

}  // namespace train
