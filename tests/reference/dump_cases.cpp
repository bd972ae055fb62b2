// dump_cases: random steps of PrototypeMemory<double> for an independent check against PyTorch
// autograd (tests/reference/torch_reference.py).
//
// For every margin x generator combination it runs a few short training sequences (a memory that is
// warming up, a full memory that evicts, a full memory whose memory pass runs over tiny tiles) and,
// for each step, records the memory's stored records BEFORE forward(), the batch (raw embeddings
// and labels), and the loss and dL/dE that forward() returns; then it commits, so that the next
// step sees the evolved state. Everything is printed as one JSON document (a list of cases) on
// stdout, doubles with %.17g. Deterministic: a seeded std::mt19937_64.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <exception>
#include <map>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include <protomem/memory.hpp>

namespace {

using protomem::index_t;
using protomem::label_t;
using Rng = std::mt19937_64;

std::string num(double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

template <class T>
std::string list(const std::vector<T>& values) {
  std::string s = "[";
  for (std::size_t k = 0; k < values.size(); ++k) {
    if (k) s += ",";
    if constexpr (std::is_floating_point_v<T>) {
      s += num(values[k]);
    } else {
      s += std::to_string(values[k]);
    }
  }
  return s + "]";
}

std::string matrix(const std::vector<double>& values, index_t rows, index_t cols, index_t stride) {
  std::string s = "[";
  for (index_t i = 0; i < rows; ++i) {
    if (i) s += ",";
    std::vector<double> row(values.begin() + i * stride, values.begin() + i * stride + cols);
    s += list(row);
  }
  return s + "]";
}

// Margin descriptions, as JSON objects the reference reads.
std::string describe(const protomem::NoMargin& m) {
  return "{\"name\":\"none\",\"s\":" + num(m.s) + "}";
}
std::string describe(const protomem::CosFace& m) {
  return "{\"name\":\"cosface\",\"s\":" + num(m.s) + ",\"m\":" + num(m.m) + "}";
}
std::string describe(const protomem::ArcFace& m) {
  return "{\"name\":\"arcface\",\"s\":" + num(m.s) + ",\"m\":" + num(m.m) +
         ",\"easy_margin\":" + (m.easy_margin ? "true" : "false") + "}";
}
std::string describe(const protomem::CombinedMargin& m) {
  return "{\"name\":\"combined\",\"s\":" + num(m.s) + ",\"m1\":" + num(m.m1) +
         ",\"m2\":" + num(m.m2) + ",\"m3\":" + num(m.m3) + "}";
}

// Aging descriptions (policies/aging.hpp); max_age -1: never.
std::string describe(const protomem::NoAging&) { return "{\"name\":\"none\"}"; }
std::string describe(const protomem::MaxAge& a) {
  return "{\"name\":\"max_age\",\"max_age\":" + std::to_string(a.max_age) + "}";
}
std::string describe(const protomem::AgeDecay& a) {
  return "{\"name\":\"age_decay\",\"half_life\":" + num(a.half_life) + ",\"max_age\":" +
         (a.max_age == protomem::AgeDecay::never ? std::string("-1") : std::to_string(a.max_age)) +
         "}";
}

struct Scenario {
  const char* name;
  index_t capacity_lo, capacity_hi;  // capacity drawn in [lo, hi]
  label_t label_pool;                // labels drawn from [0, label_pool)
  int steps;
  std::size_t workspace_bytes;
  index_t row_padding;  // extra columns in the embedding / gradient buffers (row_stride > dim)
};

const Scenario scenarios[] = {
    {"warm", 12, 16, 20, 5, std::size_t{64} << 20, 0},   // partly full, no eviction yet
    {"full_tiled", 6, 8, 24, 8, 100, 0},                  // evicting; tiles of 1-2 columns
    {"full_strided", 8, 12, 16, 6, 300, 3},               // evicting; tiles of 3-6; strided rows
};

// One fixed random direction per label, so that batches resemble what the memory stores.
struct Centers {
  index_t dim;
  std::map<label_t, std::vector<double>> of;
  const std::vector<double>& get(label_t label, Rng& rng) {
    auto it = of.find(label);
    if (it != of.end()) return it->second;
    std::normal_distribution<double> normal;
    std::vector<double> c(static_cast<std::size_t>(dim));
    for (double& v : c) v = normal(rng);
    return of.emplace(label, std::move(c)).first->second;
  }
};

template <class Margin, class Generator, class Aging = protomem::NoAging>
void run_combination(const Margin& margin, const char* generator_name, const Scenario& scenario,
                     Rng& rng, std::vector<std::string>& cases, const Aging& aging = Aging{}) {
  std::uniform_int_distribution<index_t> capacity_dist(scenario.capacity_lo, scenario.capacity_hi);
  std::uniform_int_distribution<index_t> dim_dist(4, 8);
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::normal_distribution<double> normal;

  protomem::Config config;
  config.capacity = capacity_dist(rng);
  config.dim = dim_dist(rng);
  config.workspace_bytes = scenario.workspace_bytes;
  // Every family passed explicitly (NoAging where a case has no aging): the case's policies.
  protomem::PrototypeMemory<double> memory(config, margin, Generator{}, protomem::Replace{},
                                           protomem::LeastRecentlyWritten{}, protomem::NoMining{},
                                           aging);
  const index_t D = config.dim;
  const index_t stride = D + scenario.row_padding;
  const index_t min_k = Generator::min_exemplars;
  Centers centers{D, {}};

  for (int step = 0; step < scenario.steps; ++step) {
    // The stored records, before forward().
    std::vector<label_t> stored_labels;
    std::vector<double> stored_prototypes;
    std::vector<label_t> stored_written;
    for (auto r : memory) {
      stored_labels.push_back(r.label);
      stored_written.push_back(static_cast<label_t>(r.last_written));
      for (index_t k = 0; k < r.prototype.size; ++k) stored_prototypes.push_back(r.prototype[k]);
    }

    // The batch: classes of 1-3 exemplars (2-3 for LeaveOneOut), about half of them stored
    // already, until B reaches a target in [6, 12] or the classes reach the capacity.
    const index_t target_b = std::uniform_int_distribution<index_t>(6, 12)(rng);
    std::vector<label_t> classes;
    std::vector<label_t> labels;
    while (static_cast<index_t>(labels.size()) < target_b &&
           static_cast<index_t>(classes.size()) < config.capacity) {
      label_t label = -1;
      std::vector<label_t> candidates;
      const bool want_stored = uniform(rng) < 0.5;
      if (want_stored) {
        for (label_t l : stored_labels) {
          if (std::find(classes.begin(), classes.end(), l) == classes.end()) candidates.push_back(l);
        }
      }
      if (candidates.empty()) {
        for (label_t l = 0; l < scenario.label_pool; ++l) {
          if (std::find(classes.begin(), classes.end(), l) == classes.end() &&
              (want_stored || !memory.contains(l))) {
            candidates.push_back(l);
          }
        }
      }
      if (candidates.empty()) break;
      label = candidates[std::uniform_int_distribution<std::size_t>(0, candidates.size() - 1)(rng)];
      classes.push_back(label);
      const index_t k = std::uniform_int_distribution<index_t>(min_k, 3)(rng);
      for (index_t j = 0; j < k; ++j) labels.push_back(label);
    }
    std::shuffle(labels.begin(), labels.end(), rng);
    const auto B = static_cast<index_t>(labels.size());

    // Raw embeddings: around the class's direction (sometimes against it, so that target cosines
    // reach the margins' fallback branches), with row norms from about 0.08 to 12.
    std::vector<double> E(static_cast<std::size_t>(B * stride), 0.0);
    for (index_t i = 0; i < B; ++i) {
      const std::vector<double>& center = centers.get(labels[static_cast<std::size_t>(i)], rng);
      const double sign = uniform(rng) < 0.15 ? -1.0 : 1.0;
      const double noise = 0.3 + 1.2 * uniform(rng);
      const double scale = std::exp(-2.5 + 5.0 * uniform(rng));
      for (index_t k = 0; k < D; ++k) {
        E[static_cast<std::size_t>(i * stride + k)] =
            scale * (sign * center[static_cast<std::size_t>(k)] + noise * normal(rng));
      }
    }
    std::vector<double> G(static_cast<std::size_t>(B * stride), 0.0);

    const auto result = memory.forward(protomem::matrix_view<const double>(E.data(), B, D, stride),
                                       protomem::label_view(labels.data(), B),
                                       protomem::matrix_view(G.data(), B, D, stride));

    std::string c = "{";
    c += "\"scenario\":\"" + std::string(scenario.name) + "\"";
    c += ",\"step\":" + std::to_string(step);
    c += ",\"margin\":" + describe(margin);
    c += ",\"generator\":\"" + std::string(generator_name) + "\"";
    c += ",\"aging\":" + describe(aging);
    c += ",\"steps_before\":" + std::to_string(memory.step_count());
    c += ",\"capacity\":" + std::to_string(config.capacity);
    c += ",\"dim\":" + std::to_string(D);
    c += ",\"workspace_bytes\":" + std::to_string(config.workspace_bytes);
    c += ",\"evictions_before\":" + std::to_string(memory.stats().evictions);
    c += ",\"labels\":" + list(labels);
    c += ",\"E\":" + matrix(E, B, D, stride);
    c += ",\"stored_labels\":" + list(stored_labels);
    c += ",\"stored_last_written\":" + list(stored_written);
    c += ",\"stored_prototypes\":" +
         matrix(stored_prototypes, static_cast<index_t>(stored_labels.size()), D, D);
    c += ",\"loss\":" + num(result.loss);
    c += ",\"grad\":" + matrix(G, B, D, stride);
    c += "}";
    cases.push_back(std::move(c));

    memory.commit();
  }
}

template <class Margin>
void run_margin(const Margin& margin, Rng& rng, std::vector<std::string>& cases) {
  for (const Scenario& scenario : scenarios) {
    run_combination<Margin, protomem::ExemplarMean>(margin, "exemplar_mean", scenario, rng, cases);
    run_combination<Margin, protomem::DetachedExemplarMean>(margin, "detached_exemplar_mean",
                                                            scenario, rng, cases);
    run_combination<Margin, protomem::LeaveOneOut>(margin, "leave_one_out", scenario, rng, cases);
  }
}

}  // namespace

int main() {
  try {
    Rng rng(20240611);
    std::vector<std::string> cases;
    for (double s : {8.0, 30.0}) run_margin(protomem::NoMargin(s), rng, cases);
    for (double s : {16.0, 30.0}) run_margin(protomem::CosFace(s, 0.35), rng, cases);
    for (double s : {8.0, 16.0}) run_margin(protomem::ArcFace(s, 0.5), rng, cases);
    for (double s : {8.0, 30.0}) run_margin(protomem::ArcFace(s, 0.5, /*easy=*/true), rng, cases);
    for (double s : {16.0, 30.0}) run_margin(protomem::CombinedMargin(s, 1.2, 0.3, 0.1), rng, cases);
    // Aging (policies/aging.hpp): expired columns dropped, the others weighted by their age.
    for (const Scenario& scenario : scenarios) {
      const protomem::CosFace cosface(30.0, 0.35);
      run_combination<protomem::CosFace, protomem::ExemplarMean>(cosface, "exemplar_mean", scenario,
                                                                 rng, cases, protomem::MaxAge(1));
      run_combination<protomem::CosFace, protomem::LeaveOneOut>(
          cosface, "leave_one_out", scenario, rng, cases, protomem::AgeDecay(1.5));
      run_combination<protomem::ArcFace, protomem::ExemplarMean>(protomem::ArcFace(16.0, 0.5),
                                                                 "exemplar_mean", scenario, rng,
                                                                 cases, protomem::AgeDecay(2.0, 1));
      run_combination<protomem::CosFace, protomem::DetachedExemplarMean>(
          cosface, "detached_exemplar_mean", scenario, rng, cases, protomem::AgeDecay(0.5));
    }

    std::fputs("[\n", stdout);
    for (std::size_t k = 0; k < cases.size(); ++k) {
      std::fputs(cases[k].c_str(), stdout);
      std::fputs(k + 1 < cases.size() ? ",\n" : "\n", stdout);
    }
    std::fputs("]\n", stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "dump_cases: %s\n", e.what());
    return 1;
  }
}
