// The Aging policies (policies/aging.hpp): parameters; MaxAge as the same memory without its
// expired prototypes; AgeDecay with an infinite half-life as NoAging, bit for bit; an expired
// prototype neither blended nor a mining candidate; dL/dE against central finite differences;
// checkpoints (round trip, the policy checked, version 1 files); the sharded memory against one
// process. The loss itself is checked against PyTorch autograd by tests/reference.
#include <catch2/catch.hpp>
#include <cmath>
#include <cstring>
#include <limits>
#include <protomem/memory.hpp>
#include <protomem/memory.hpp>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "support/batch.hpp"
#include "support/checkpoint.hpp"
#include "support/thread_comm.hpp"

namespace {

using Catch::Matchers::Contains;
using protomem::index_t;
using protomem::label_t;
using Batch = test_support::Batch<double>;

constexpr index_t kDim = 6;
constexpr double kInf = std::numeric_limits<double>::infinity();

using Memory = protomem::PrototypeMemory<double>;

protomem::Config config_of(index_t capacity, index_t similar_k = 0) {
  protomem::Config config;
  config.capacity = capacity;
  config.dim = kDim;
  config.similar_k = similar_k;
  config.workspace_bytes = 3 * 12 * sizeof(double);  // tiles of a few columns
  return config;
}

Batch batch_of(const std::vector<label_t>& classes, std::mt19937_64& rng, int exemplars = 2) {
  return test_support::make_batch<double>(classes, exemplars, kDim, rng,
                                          {0.6, 0.5, 2.0, 1, /*shuffle=*/true});
}

struct Forward {
  double loss;
  std::vector<double> gradient;
  std::vector<label_t> similar;
};

template <class M>
Forward forward(M& memory, const Batch& batch, bool commit) {
  Forward f;
  f.gradient.resize(static_cast<std::size_t>(batch.rows() * kDim));
  const auto result = memory.forward(batch.view(), batch.label_view(),
                                     protomem::matrix_view(f.gradient.data(), batch.rows(), kDim));
  f.loss = result.loss;
  f.similar = result.similar;
  if (commit) {
    memory.commit();
  } else {
    memory.discard();
  }
  return f;
}

double relative(const std::vector<double>& a, const std::vector<double>& b) {
  double d = 0, n = 0;
  for (std::size_t i = 0; i < a.size(); ++i) {
    d += (a[i] - b[i]) * (a[i] - b[i]);
    n += b[i] * b[i];
  }
  return std::sqrt(d / std::max(n, 1e-300));
}

// Steps of 3 classes drawn from a pool of 14, so that classes come back at various ages.
std::vector<std::vector<label_t>> schedule(int steps, std::uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::vector<std::vector<label_t>> out;
  for (int t = 0; t < steps; ++t) out.push_back(test_support::distinct_labels(rng, 3, 14));
  return out;
}

}  // namespace

TEST_CASE("aging policies: weights and parameters", "[aging]") {
  CHECK(protomem::NoAging{}.log_weight(1000000) == 0.0);
  const protomem::MaxAge bound(5);
  CHECK(bound.log_weight(0) == 0.0);
  CHECK(bound.log_weight(5) == 0.0);
  CHECK(bound.log_weight(6) == -kInf);
  const protomem::AgeDecay decay(2.0, 3);
  CHECK(decay.log_weight(0) == 0.0);
  CHECK(decay.log_weight(2) == Approx(-std::log(2.0)).epsilon(1e-15));
  CHECK(decay.log_weight(3) == Approx(-1.5 * std::log(2.0)).epsilon(1e-15));
  CHECK(decay.log_weight(4) == -kInf);
  CHECK(protomem::AgeDecay(kInf).log_weight(1u << 30) == 0.0);  // no decay, never expires
  CHECK(protomem::AgeDecay().max_age == protomem::AgeDecay::never);
  CHECK_THROWS_WITH(protomem::AgeDecay(0.0), Contains("half_life = 0 must be > 0"));
  CHECK_THROWS_WITH(protomem::AgeDecay(-4.0), Contains("half_life = -4"));
  CHECK_THROWS_WITH(protomem::AgeDecay(std::nan("")), Contains("half_life = nan"));
}

TEST_CASE("MaxAge: a memory without its expired prototypes, step by step", "[aging]") {
  // The memory under test keeps expired prototypes in their slots; the reference is a NoAging
  // memory given, before each step, only the records that have not expired. Loss, gradient and
  // the most similar classes must agree; the expired classes must never be among them.
  const std::uint64_t max_age = 2;
  Memory memory(config_of(10, 4), protomem::CosFace(16.0, 0.2), protomem::ExemplarMean{},
                protomem::Replace{}, protomem::LeastRecentlyWritten{}, protomem::NoMining{},
                protomem::MaxAge(max_age));
  Memory reference(config_of(10, 4), protomem::CosFace(16.0, 0.2), protomem::NoAging{});
  std::mt19937_64 rng(5);
  int expired_steps = 0;
  for (const std::vector<label_t>& classes : schedule(30, 11)) {
    std::vector<label_t> labels, expired;
    std::vector<double> rows;
    std::vector<std::uint64_t> written;
    for (const auto& r : memory) {
      if (memory.step_count() - r.last_written > max_age) {
        expired.push_back(r.label);
        continue;
      }
      labels.push_back(r.label);
      rows.insert(rows.end(), r.prototype.begin(), r.prototype.end());
      written.push_back(r.last_written);
    }
    expired_steps += !expired.empty();
    reference.assign(
        {labels.data(), static_cast<index_t>(labels.size())},
        protomem::matrix_view<const double>(rows.data(), static_cast<index_t>(labels.size()), kDim),
        {written.data(), static_cast<index_t>(written.size())}, memory.step_count());
    const Batch batch = batch_of(classes, rng);
    const Forward want = forward(reference, batch, false);
    const Forward got = forward(memory, batch, true);
    INFO("step " << memory.step_count() << ", " << expired.size() << " expired");
    CHECK(std::abs(got.loss - want.loss) <= 1e-12 * std::abs(want.loss));
    CHECK(relative(got.gradient, want.gradient) <= 1e-12);
    CHECK(got.similar == want.similar);
    for (label_t label : expired) {
      CHECK(std::find(got.similar.begin(), got.similar.end(), label) == got.similar.end());
    }
  }
  CHECK(expired_steps >= 10);  // the schedule does exercise expiry
  CHECK(memory.stats().evictions > 0);
}

TEST_CASE("AgeDecay with an infinite half-life is NoAging, bit for bit", "[aging]") {
  Memory aged(config_of(8), protomem::CosFace(30.0, 0.3), protomem::ExemplarMean{},
              protomem::Replace{}, protomem::LeastRecentlyWritten{}, protomem::NoMining{},
              protomem::AgeDecay(kInf));
  Memory plain(config_of(8), protomem::CosFace(30.0, 0.3), protomem::NoAging{});
  Memory decayed(config_of(8), protomem::CosFace(30.0, 0.3), protomem::ExemplarMean{},
                 protomem::Replace{}, protomem::LeastRecentlyWritten{}, protomem::NoMining{},
                 protomem::AgeDecay(1.0));
  std::mt19937_64 rng(3);
  bool differs = false;
  for (const std::vector<label_t>& classes : schedule(12, 4)) {
    const Batch batch = batch_of(classes, rng);
    const Forward a = forward(aged, batch, true);
    const Forward b = forward(plain, batch, true);
    const Forward c = forward(decayed, batch, true);
    CHECK(a.loss == b.loss);
    CHECK(a.gradient == b.gradient);
    differs = differs || std::abs(c.loss - b.loss) > 1e-6 * std::abs(b.loss);
  }
  CHECK(differs);  // a finite half-life does change the loss
}

TEST_CASE("set_aging() takes effect from the next forward", "[aging]") {
  // A memory switched from no decay to AgeDecay(1) after step 6 steps as one that had AgeDecay(1)
  // all along (under Replace the writes do not depend on the weights).
  const auto cosface = protomem::CosFace(30.0, 0.3);
  Memory always(config_of(8), cosface, protomem::AgeDecay(1.0));
  Memory switched(config_of(8), cosface, protomem::AgeDecay(kInf));
  std::mt19937_64 rng(31);
  int t = 0;
  bool differed = false;
  for (const std::vector<label_t>& classes : schedule(12, 5)) {
    if (t++ == 6) switched.set_aging(protomem::AgeDecay(1.0));
    const Batch batch = batch_of(classes, rng);
    const Forward a = forward(always, batch, true);
    const Forward b = forward(switched, batch, true);
    INFO("step " << t);
    if (t > 6) {
      CHECK(a.loss == b.loss);
      CHECK(a.gradient == b.gradient);
    } else {
      differed = differed || a.loss != b.loss;  // old prototypes do exist before the switch
    }
  }
  CHECK(differed);
  CHECK(switched.aging().get<protomem::AgeDecay>().half_life == 1.0);
}

TEST_CASE("an expired prototype is not blended into its class's fresh one", "[aging]") {
  // Momentum(0.5) blends a refreshed class with its stored prototype unless it has expired.
  Memory memory(config_of(8), protomem::CosFace(16.0, 0.2), protomem::ExemplarMean{},
                protomem::Momentum(0.5), protomem::LeastRecentlyWritten{}, protomem::NoMining{},
                protomem::MaxAge(1));
  std::mt19937_64 rng(9);
  auto fresh_prototype = [](const Batch& batch, label_t label) {  // normalize(sum of unit rows)
    std::vector<double> p(kDim, 0.0);
    for (index_t i = 0; i < batch.rows(); ++i) {
      if (batch.labels[static_cast<std::size_t>(i)] != label) continue;
      double n2 = 0;
      for (index_t k = 0; k < kDim; ++k) n2 += std::pow(batch.embeddings[i * batch.stride + k], 2);
      for (index_t k = 0; k < kDim; ++k)
        p[k] += batch.embeddings[i * batch.stride + k] / std::sqrt(n2);
    }
    double n2 = 0;
    for (double v : p) n2 += v * v;
    for (double& v : p) v /= std::sqrt(n2);
    return p;
  };
  auto stored = [&](label_t label) {
    const auto view = memory.prototype(label);
    return std::vector<double>(view.begin(), view.end());
  };
  forward(memory, batch_of({1, 2}, rng), true);  // step 1 writes 1 and 2
  const Batch again = batch_of({2, 3}, rng);     // step 2: 2 has age 0, is blended
  forward(memory, again, true);
  CHECK(relative(stored(2), fresh_prototype(again, 2)) > 1e-3);
  forward(memory, batch_of({4, 5}, rng), true);  // steps 3 and 4: 1 reaches age 3 > 1
  forward(memory, batch_of({6, 7}, rng), true);
  REQUIRE(memory.step_count() - memory.last_written(1) == 3);
  const Batch back = batch_of({1, 6}, rng);  // 1 is back after expiring; 6 (age 0) is blended
  forward(memory, back, true);
  CHECK(relative(stored(1), fresh_prototype(back, 1)) <= 1e-14);
  CHECK(relative(stored(6), fresh_prototype(back, 6)) > 1e-3);
}

TEST_CASE("aging: dL/dE against central finite differences", "[aging]") {
  auto check = [](auto memory) {
    std::mt19937_64 rng(21);
    for (const std::vector<label_t>& classes : schedule(14, 8)) {
      Batch batch = batch_of(classes, rng, 2);
      const Forward analytic = forward(memory, batch, false);
      double diff2 = 0, ref2 = 0;
      for (index_t i = 0; i < batch.rows(); ++i) {
        for (index_t k = 0; k < kDim; ++k) {
          double& e = batch.embeddings[static_cast<std::size_t>(i * batch.stride + k)];
          const double h = 1e-5 * std::max(1.0, std::abs(e)), saved = e;
          e = saved + h;
          const double up = forward(memory, batch, false).loss;
          e = saved - h;
          const double down = forward(memory, batch, false).loss;
          e = saved;
          const double numeric = (up - down) / (2 * h);
          const double a = analytic.gradient[static_cast<std::size_t>(i * kDim + k)];
          diff2 += (a - numeric) * (a - numeric);
          ref2 += numeric * numeric;
        }
      }
      INFO("aging " << memory.aging().name() << ", step " << memory.step_count());
      REQUIRE(ref2 > 1e-16);
      CHECK(std::sqrt(diff2 / ref2) <= 1e-6);
      forward(memory, batch, true);
    }
  };
  const auto cosface = protomem::CosFace(30.0, 0.35);
  check(Memory(config_of(9), cosface, protomem::AgeDecay(1.5, 4)));
  check(Memory(config_of(9), cosface, protomem::MaxAge(1)));
  check(Memory(config_of(9), cosface, protomem::LeaveOneOut{}, protomem::AgeDecay(0.75)));
}

TEST_CASE("aging: checkpoints keep the policy, check it, and read version 1", "[aging]") {
  using checkpoint_support::bytes_of;
  using checkpoint_support::records_offset;
  using checkpoint_support::with_valid_crc;
  const auto cosface = protomem::CosFace(30.0, 0.35);
  Memory source(config_of(8), cosface, protomem::AgeDecay(3.0, 7));
  std::mt19937_64 rng(17);
  const auto steps = schedule(10, 2);
  for (int t = 0; t < 6; ++t) forward(source, batch_of(steps[t], rng), true);
  const std::string saved = bytes_of(source);

  // Round trip: the loaded memory takes the checkpoint's parameters and continues identically.
  Memory target(config_of(8), cosface, protomem::AgeDecay());
  std::istringstream in(saved);
  target.load(in);
  CHECK(target.aging().get<protomem::AgeDecay>().half_life == 3.0);
  CHECK(target.aging().get<protomem::AgeDecay>().max_age == 7);
  CHECK(bytes_of(target) == saved);
  for (int t = 6; t < 10; ++t) {
    const Batch batch = batch_of(steps[t], rng);
    const Forward a = forward(source, batch, true);
    const Forward b = forward(target, batch, true);
    CHECK(a.loss == b.loss);
    CHECK(a.gradient == b.gradient);
  }

  // Another Aging policy: the checkpoint's is adopted, with its parameters (a checkpoint
  // restores the policies it was saved with).
  Memory plain(config_of(8), cosface, protomem::NoAging{});
  forward(plain, batch_of({1, 2}, rng), true);
  const std::string before = bytes_of(plain);
  std::istringstream again(saved);
  plain.load(again);
  CHECK(std::string(plain.aging().name()) == "age_decay");
  CHECK(plain.aging().get<protomem::AgeDecay>().half_life == 3.0);
  CHECK(plain.aging().get<protomem::AgeDecay>().max_age == 7);
  CHECK(bytes_of(plain) == saved);
  // The adopted policy is checked as it loads: a bad half-life, or an aging policy that is
  // neither built in nor the memory's own, is refused and changes nothing.
  const std::string adopted = bytes_of(plain);
  std::string bad_half_life = saved;
  const std::string name = "age_decay";
  const std::size_t h_at = bad_half_life.find(name) + name.size() + 8;  // after the state length
  const double negative = -1.0;
  std::memcpy(&bad_half_life[h_at], &negative, 8);
  std::istringstream bad_in(with_valid_crc(bad_half_life));
  CHECK_THROWS_WITH(plain.load(bad_in), Contains("half_life = -1"));
  std::string unknown = saved;
  unknown[unknown.find(name) + 4] = 'X';  // "age_Xecay"
  std::istringstream unknown_in(with_valid_crc(unknown));
  CHECK_THROWS_WITH(plain.load(unknown_in),
                    Contains("its aging policy 'age_Xecay' is not a built-in one"));
  CHECK(bytes_of(plain) == adopted);

  // Version 1 is version 2 without the aging policy: it loads as NoAging.
  const std::size_t end = records_offset(before);         // the record count follows the policies
  const std::size_t aging_bytes = (4 + 5) + (4 + 4) + 8;  // "aging", "none", an empty state
  REQUIRE(before.substr(end - aging_bytes + 4, 5) == "aging");
  std::string v1 = before.substr(0, end - aging_bytes) + before.substr(end);
  v1[8] = 1;
  v1 = with_valid_crc(v1);
  Memory from_v1(config_of(8), cosface, protomem::NoAging{});
  std::istringstream old(v1 + "trailer");  // load(stream) stops at the checkpoint's end
  from_v1.load(old);
  CHECK(bytes_of(from_v1) == before);
  std::string rest;
  old >> rest;
  CHECK(rest == "trailer");
  // A memory of another Aging policy adopts the version 1 file's: NoAging.
  std::istringstream old_again(v1);
  target.load(old_again);
  CHECK(target.aging().holds<protomem::NoAging>());
  CHECK(bytes_of(target) == before);
}

TEST_CASE("aging: the sharded memory equals one process", "[aging][sharded]") {
  using Sharded = protomem::PrototypeMemory<double>;
  const auto cosface = protomem::CosFace(30.0, 0.35);
  const protomem::AgeDecay aging(2.0, 4);
  const auto steps = schedule(20, 6);
  std::vector<Batch> batches;
  std::mt19937_64 rng(12);
  for (const auto& classes : steps) batches.push_back(batch_of(classes, rng));

  Memory single(config_of(9), cosface, aging);
  std::vector<Forward> want;
  for (const Batch& b : batches) want.push_back(forward(single, b, true));

  const int W = 2;
  std::vector<std::vector<double>> losses(W), gradients(W);
  const auto errors = protomem::test::run_ranks(W, [&](protomem::test::ThreadComm& comm) {
    Sharded memory(comm, config_of(9), cosface, aging);
    const auto r = static_cast<std::size_t>(comm.rank());
    for (const Batch& b : batches) {
      const index_t half = b.rows() / 2;
      const index_t first = comm.rank() == 0 ? 0 : half;
      const index_t rows = comm.rank() == 0 ? half : b.rows() - half;
      std::vector<double> g(static_cast<std::size_t>(rows * kDim));
      const double loss = memory.step(
          protomem::matrix_view(b.embeddings.data() + first * b.stride, rows, kDim, b.stride),
          protomem::label_view(b.labels.data() + first, rows),
          protomem::matrix_view(g.data(), rows, kDim));
      losses[r].push_back(loss);
      gradients[r].insert(gradients[r].end(), g.begin(), g.end());
    }
  });
  for (const std::string& e : errors) CHECK(e == "");
  for (std::size_t t = 0; t < batches.size(); ++t) {
    for (int r = 0; r < W; ++r) {
      CHECK(std::abs(losses[r][t] - want[t].loss) <= 1e-10 * std::abs(want[t].loss));
    }
  }
  std::vector<double> all_want, all_got;
  for (std::size_t t = 0; t < batches.size(); ++t) {
    all_want.insert(all_want.end(), want[t].gradient.begin(), want[t].gradient.end());
  }
  // Rank 0's rows then rank 1's, step by step, as the single process's rows.
  std::size_t at0 = 0, at1 = 0;
  for (const Batch& b : batches) {
    const auto half = static_cast<std::size_t>((b.rows() / 2) * kDim);
    const auto rest = static_cast<std::size_t>(b.rows() * kDim) - half;
    all_got.insert(all_got.end(), gradients[0].begin() + at0, gradients[0].begin() + at0 + half);
    all_got.insert(all_got.end(), gradients[1].begin() + at1, gradients[1].begin() + at1 + rest);
    at0 += half;
    at1 += rest;
  }
  CHECK(relative(all_got, all_want) <= 1e-10);
}
