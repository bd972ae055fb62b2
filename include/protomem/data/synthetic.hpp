// protomem/data/synthetic.hpp - a data source beside the image reader (protomem/data.hpp): an
// embedded synthetic identity data set, no files, any number of identities (up to 2^62), every
// identity and every image of it a pure function of (seed, identity, index). Header-only, no
// dependency beyond the core; used by examples/train and the Python package (protomem.synthetic).
// See docs/synthetic-data.md for why it is a fair test of Prototype Memory and what it cannot tell.
//
// Generative model (all random numbers from a counter-based generator keyed by what they describe,
// so nothing is stored and any image can be made in any order on any thread):
//   family   f(c)   = hash(seed, c) mod families
//   latent   z_c    = sqrt(similarity) g_f(c) + sqrt(1 - similarity) u_c           (L dims, g, u ~
//   N(0, I)) look-alike pairs: identities 2k and 2k+1 form a planted pair with probability
//   lookalike_fraction;
//            then z_{2k+1} = sqrt(1 - delta^2) z_{2k} + delta u_{2k+1}   (delta =
//            lookalike_distance)
//   image i of identity c:
//            v = z_c + intra * eps_{c,i}                  (intra-class variation, eps ~ N(0, I_L))
//            n = nuisance * nu_{c,i}                      (nuisance factors, nu ~ N(0, I_Q): "pose,
//                                                          light", independent of identity)
//            h = tanh(A [v; n] / sqrt(L + Q) * gain + b)  (fixed random nonlinear map, H hidden)
//            x = P h / sqrt(H) + noise * xi_{c,i}         (fixed random projection to X "pixels")
// A and P, b are fixed by the seed. The encoder sees only x (X values) and must undo the map,
// ignore the nuisance factors and the pixel noise, and keep identity.
#pragma once

#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include <protomem/detail/random.hpp>

namespace synthetic {

/// One splitmix64 step (golden-ratio increment, then protomem's finaliser): a bijective 64-bit
/// mix, the counter-based generator's core.
inline std::uint64_t mix(std::uint64_t x) {
  return protomem::detail::mix64(x + 0x9E3779B97F4A7C15ULL);
}

/// A stream of random numbers that is a pure function of its key (seed, tag, a, b).
class CounterRng {
 public:
  CounterRng(std::uint64_t seed, std::uint64_t tag, std::uint64_t a, std::uint64_t b = 0)
      : key_(mix(mix(mix(seed ^ mix(tag)) ^ a) ^ mix(b + 0x632BE59BD9B4E019ULL))) {}
  std::uint64_t next() { return mix(key_ + 0xD1B54A32D192ED03ULL * ++counter_); }
  /// Uniform in (0, 1).
  double uniform() {
    return (static_cast<double>(next() >> 11) + 0.5) * (1.0 / 9007199254740992.0);
  }
  /// Standard normal (Box-Muller; both values of a pair are used).
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    const double r = std::sqrt(-2.0 * std::log(uniform()));
    const double t = 6.283185307179586 * uniform();
    spare_ = r * std::sin(t);
    has_spare_ = true;
    return r * std::cos(t);
  }

 private:
  std::uint64_t key_;
  std::uint64_t counter_ = 0;
  double spare_ = 0;
  bool has_spare_ = false;
};

/// The knobs of the data set. Defaults give a task that a small MLP learns in minutes on 2 cores.
struct Config {
  std::uint64_t seed = 1;
  std::int64_t latent_dim = 32;   ///< L: identity latent dimension
  std::int64_t nuisance_dim = 8;  ///< Q: nuisance factors per image
  std::int64_t hidden_dim = 128;  ///< H: width of the fixed random map
  std::int64_t image_dim = 128;   ///< X: values per image (the encoder's input)
  double intra = 0.4;             ///< intra-class variation (std of eps, latents have unit std)
  double similarity = 0.3;  ///< inter-class similarity: share of latent variance from the family
  std::int64_t families = 256;      ///< number of families identities are drawn around
  double lookalike_fraction = 0.1;  ///< probability that identities (2k, 2k+1) are a planted pair
  double lookalike_distance = 0.5;  ///< delta: a pair's latent cosine is about sqrt(1 - delta^2)
  double nuisance = 0.5;            ///< scale of the nuisance factors
  double gain = 2.0;                ///< pre-activation gain of the map (higher: more nonlinear)
  double noise = 0.1;               ///< additive pixel noise (std)
};

/// Checks a configuration; throws std::invalid_argument naming the bad knob.
inline void validate(const Config& c) {
  auto bad = [](const std::string& what) { throw std::invalid_argument(what); };
  if (c.latent_dim < 1) bad("latent_dim must be >= 1");
  if (c.nuisance_dim < 0) bad("nuisance_dim must be >= 0");
  if (c.hidden_dim < 1) bad("hidden_dim must be >= 1");
  if (c.image_dim < 1) bad("image_dim must be >= 1");
  if (!(c.intra >= 0 && std::isfinite(c.intra))) bad("intra must be finite and >= 0");
  if (!(c.similarity >= 0 && c.similarity < 1)) bad("similarity must be in [0, 1)");
  if (c.families < 1) bad("families must be >= 1");
  if (!(c.lookalike_fraction >= 0 && c.lookalike_fraction <= 1)) {
    bad("lookalike_fraction must be in [0, 1]");
  }
  if (!(c.lookalike_distance > 0 && c.lookalike_distance <= 1)) {
    bad("lookalike_distance must be in (0, 1]");
  }
  if (!(c.nuisance >= 0 && std::isfinite(c.nuisance))) bad("nuisance must be finite and >= 0");
  if (!(c.gain > 0 && std::isfinite(c.gain))) bad("gain must be finite and > 0");
  if (!(c.noise >= 0 && std::isfinite(c.noise))) bad("noise must be finite and >= 0");
}

/// The data set: identities are any int64 >= 0; images of an identity are indexed by any int64
/// >= 0. Which identities train and which are held out is the caller's choice (the trainer uses
/// [0, N) for training and identities above N for evaluation). Thread-safe (const).
class IdentitySet {
 public:
  explicit IdentitySet(const Config& config) : c_(config) {
    validate(c_);
    const std::int64_t in = c_.latent_dim + c_.nuisance_dim;
    a_.resize(static_cast<std::size_t>(c_.hidden_dim * in));
    b_.resize(static_cast<std::size_t>(c_.hidden_dim));
    p_.resize(static_cast<std::size_t>(c_.image_dim * c_.hidden_dim));
    CounterRng rng(c_.seed, kTagMap, 0);
    const double a_scale = c_.gain / std::sqrt(static_cast<double>(in));
    for (double& v : a_) v = a_scale * rng.normal();
    for (double& v : b_) v = 0.5 * rng.normal();
    const double p_scale = 1.0 / std::sqrt(static_cast<double>(c_.hidden_dim));
    for (double& v : p_) v = p_scale * rng.normal();
  }

  const Config& config() const { return c_; }
  std::int64_t image_dim() const { return c_.image_dim; }

  /// The planted look-alike of `identity`, or -1 when it has none.
  std::int64_t lookalike_of(std::int64_t identity) const {
    const std::int64_t pair = identity / 2;
    CounterRng rng(c_.seed, kTagPair, static_cast<std::uint64_t>(pair));
    return rng.uniform() < c_.lookalike_fraction ? (identity ^ 1) : -1;
  }

  std::int64_t family_of(std::int64_t identity) const {
    return static_cast<std::int64_t>(
        mix(c_.seed ^ mix(static_cast<std::uint64_t>(identity) + kTagFamily)) %
        static_cast<std::uint64_t>(c_.families));
  }

  /// z_c (L values).
  void latent(std::int64_t identity, double* z) const {
    if (identity % 2 == 1 && lookalike_of(identity) >= 0) {
      // The odd member of a planted pair: a small move away from its partner.
      latent_unpaired(identity - 1, z);
      const double d = c_.lookalike_distance, keep = std::sqrt(1.0 - d * d);
      CounterRng own(c_.seed, kTagOwn, static_cast<std::uint64_t>(identity));
      for (std::int64_t k = 0; k < c_.latent_dim; ++k) z[k] = keep * z[k] + d * own.normal();
      return;
    }
    latent_unpaired(identity, z);
  }

  /// Image `index` of `identity`: image_dim() floats into `out`.
  void image(std::int64_t identity, std::int64_t index, float* out) const {
    const std::int64_t L = c_.latent_dim, Q = c_.nuisance_dim, H = c_.hidden_dim, X = c_.image_dim;
    std::vector<double> in(static_cast<std::size_t>(L + Q)), h(static_cast<std::size_t>(H));
    latent(identity, in.data());
    CounterRng rng(c_.seed, kTagImage, static_cast<std::uint64_t>(identity),
                   static_cast<std::uint64_t>(index));
    for (std::int64_t k = 0; k < L; ++k) in[k] += c_.intra * rng.normal();
    for (std::int64_t k = 0; k < Q; ++k) in[L + k] = c_.nuisance * rng.normal();
    for (std::int64_t j = 0; j < H; ++j) {
      const double* row = a_.data() + j * (L + Q);
      double s = b_[j];
      for (std::int64_t k = 0; k < L + Q; ++k) s += row[k] * in[k];
      h[j] = std::tanh(s);
    }
    for (std::int64_t r = 0; r < X; ++r) {
      const double* row = p_.data() + r * H;
      double s = 0;
      for (std::int64_t j = 0; j < H; ++j) s += row[j] * h[j];
      out[r] = static_cast<float>(s + c_.noise * rng.normal());
    }
  }

  /// n images: (identities[i], indices[i]) into out (n x image_dim(), row-major).
  void images(const std::int64_t* identities, const std::int64_t* indices, std::int64_t n,
              float* out) const {
#if defined(_OPENMP)
#pragma omp parallel for schedule(static)
#endif
    for (std::int64_t i = 0; i < n; ++i) image(identities[i], indices[i], out + i * c_.image_dim);
  }

 private:
  static constexpr std::uint64_t kTagMap = 1, kTagPair = 2, kTagFamily = 3, kTagCentre = 4,
                                 kTagOwn = 5, kTagImage = 6;

  void latent_unpaired(std::int64_t identity, double* z) const {
    const double shared = std::sqrt(c_.similarity), own = std::sqrt(1.0 - c_.similarity);
    CounterRng centre(c_.seed, kTagCentre, static_cast<std::uint64_t>(family_of(identity)));
    CounterRng mine(c_.seed, kTagOwn, static_cast<std::uint64_t>(identity));
    for (std::int64_t k = 0; k < c_.latent_dim; ++k) {
      z[k] = shared * centre.normal() + own * mine.normal();
    }
  }

  Config c_;
  std::vector<double> a_, b_, p_;  // the fixed map: A (H x (L+Q)), b (H), P (X x H)
};

}  // namespace synthetic
