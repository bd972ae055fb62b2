// The backend seam (include/protomem/backend/seam.hpp): a backend driven through StepInput alone,
// and the row-statistics hook between the memory pass and the batch columns. Two backends that
// each hold half of a memory's prototypes, one merging the other's (m, l, O) through the hook as a
// sharded memory would (docs/distributed.md), give the loss and gradient of one backend holding
// them all; without the merge they do not.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <protomem/backend/cpu/backend.hpp>
#include <protomem/backend/seam.hpp>
#include <protomem/detail/batch.hpp>
#include <protomem/policies/generator.hpp>
#include <protomem/policies/margin.hpp>
#include <random>
#include <vector>

namespace {

using protomem::index_t;
using protomem::label_t;
using Backend = protomem::backend::CpuBackend<double>;
using Stats = protomem::backend::RowStatistics<double>;

// A copy of one backend's row statistics, merged into another's as lanes are merged.
struct Captured {
  std::vector<double> max, sum, weighted;
  index_t dim = 0;

  static void capture(void* self, const Stats& rows) {
    auto& c = *static_cast<Captured*>(self);
    c.dim = rows.dim;
    c.max.assign(rows.max, rows.max + rows.rows);
    c.sum.assign(rows.sum, rows.sum + rows.rows);
    c.weighted.assign(rows.weighted, rows.weighted + rows.rows * rows.dim);
  }
  static void merge(void* self, const Stats& rows) {
    const auto& c = *static_cast<const Captured*>(self);
    const double neg_inf = -std::numeric_limits<double>::infinity();
    for (index_t i = 0; i < rows.rows; ++i) {
      const double m = std::max(rows.max[i], c.max[i]);
      if (m == neg_inf) continue;
      const double fa = rows.max[i] == neg_inf ? 0.0 : std::exp(rows.max[i] - m);
      const double fb = c.max[i] == neg_inf ? 0.0 : std::exp(c.max[i] - m);
      rows.max[i] = m;
      rows.sum[i] = fa * rows.sum[i] + fb * c.sum[i];
      for (index_t k = 0; k < rows.dim; ++k) {
        double& o = rows.weighted[i * rows.dim + k];
        o = fa * o + fb * c.weighted[static_cast<std::size_t>(i * rows.dim + k)];
      }
    }
  }
};

std::vector<double> unit_rows(index_t n, index_t dim, std::mt19937_64& rng) {
  std::normal_distribution<double> normal;
  std::vector<double> v(static_cast<std::size_t>(n * dim));
  for (index_t r = 0; r < n; ++r) {
    double norm2 = 0;
    for (index_t k = 0; k < dim; ++k) norm2 += std::pow(v[r * dim + k] = normal(rng), 2);
    for (index_t k = 0; k < dim; ++k) v[r * dim + k] /= std::sqrt(norm2);
  }
  return v;
}

}  // namespace

TEST_CASE("the row-statistics hook merges two halves of a memory into the whole", "[seam]") {
  std::mt19937_64 rng(11);
  const index_t M = 40, half = 17, D = 8, B = 9;
  const std::vector<double> w = unit_rows(M, D, rng);
  const std::vector<double> e = unit_rows(B, D, rng);
  const std::vector<label_t> labels{7, 3, 7, 5, 3, 3, 9, 5, 7};
  const protomem::detail::BatchClasses batch =
      protomem::detail::group_by_class(protomem::label_view(labels.data(), B));
  const protomem::CosFace margin(30.0, 0.2);
  const protomem::ExemplarMean generator;

  Backend whole(M, D), first(M, D), second(M, D);
  for (index_t j = 0; j < M; ++j) {
    whole.set_prototype(j, &w[j * D]);
    if (j < half) {
      first.set_prototype(j, &w[j * D]);
    } else {
      second.set_prototype(j - half, &w[j * D]);
    }
  }
  auto step = [&](Backend& backend, index_t used, protomem::backend::MergeRows<double> hook,
                  std::vector<double>& gradient) {
    gradient.assign(static_cast<std::size_t>(B * D), 0.0);
    protomem::backend::StepInput<double> in;
    in.batch = &batch;
    in.embeddings = protomem::matrix_view(e.data(), B, D, D);
    in.gradient = protomem::matrix_view(gradient.data(), B, D, D);
    in.used = used;
    in.workspace_bytes = std::size_t{1} << 20;
    in.threads = 1;
    in.merge_rows = hook;
    return backend.forward(in, margin, generator).loss;
  };
  std::vector<double> g_whole, g_second, g_first, g_alone;
  const double loss_whole = step(whole, M, {}, g_whole);
  Captured captured;
  step(second, M - half, {&Captured::capture, &captured}, g_second);
  const double loss_merged = step(first, half, {&Captured::merge, &captured}, g_first);
  const double loss_alone = step(first, half, {}, g_alone);

  CHECK(loss_merged == Approx(loss_whole).epsilon(1e-12));
  for (std::size_t k = 0; k < g_whole.size(); ++k) {
    CHECK(g_first[k] == Approx(g_whole[k]).margin(1e-12));
  }
  CHECK(std::abs(loss_alone - loss_whole) > 1e-3);  // the other half matters
}
