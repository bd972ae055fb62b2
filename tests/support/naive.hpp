// A naive, loop-by-loop evaluation of one step's loss (docs/algorithm.md, "One step"), written without the
// library's numerics: the independent computation that tests compare the library with.
#pragma once

#include <algorithm>
#include <cmath>
#include <map>
#include <vector>

#include <protomem/view.hpp>

namespace naive {

using protomem::index_t;
using protomem::label_t;

struct StoredClass {
  label_t label;
  std::vector<double> prototype;
};

/// Copies what a memory stores (its iteration order does not matter here).
template <class Memory>
std::vector<StoredClass> stored_classes(const Memory& memory) {
  std::vector<StoredClass> out;
  for (auto record : memory) {
    out.push_back({record.label, std::vector<double>(record.prototype.begin(), record.prototype.end())});
  }
  return out;
}

inline std::vector<double> normalized(std::vector<double> v) {
  double n2 = 0;
  for (double a : v) n2 += a * a;
  for (double& a : v) a /= std::sqrt(n2);
  return v;
}

inline double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0;
  for (std::size_t k = 0; k < a.size(); ++k) s += a[k] * b[k];
  return s;
}

/// The batch prototypes p_c = normalize(sum of the normalised exemplars of c), by label.
inline std::map<label_t, std::vector<double>> batch_prototypes(const double* e, index_t stride,
                                                               const std::vector<label_t>& y,
                                                               index_t dim) {
  std::map<label_t, std::vector<double>> sums;
  for (std::size_t i = 0; i < y.size(); ++i) {
    const auto x = normalized(std::vector<double>(e + i * stride, e + i * stride + dim));
    auto& s = sums[y[i]];
    s.resize(static_cast<std::size_t>(dim), 0.0);
    for (index_t k = 0; k < dim; ++k) s[k] += x[k];
  }
  for (auto& [label, s] : sums) s = normalized(s);
  return sums;
}

/// Mean margin-softmax cross-entropy. Columns: every stored class not in the batch, and each batch
/// class once with its fresh prototype (or `fixed` prototypes, when given, held constant).
/// leave_one_out: the target column of x_i is normalize(u_c - x_i).
template <class Margin>
double loss(const double* e, index_t stride, const std::vector<label_t>& y, index_t dim,
            const std::vector<StoredClass>& stored, const Margin& margin, bool leave_one_out,
            const std::map<label_t, std::vector<double>>* fixed = nullptr) {
  const auto fresh = fixed ? *fixed : batch_prototypes(e, stride, y, dim);
  std::map<label_t, std::vector<double>> sums;  // u_c
  std::map<label_t, int> counts;
  std::vector<std::vector<double>> x;
  for (std::size_t i = 0; i < y.size(); ++i) {
    x.push_back(normalized(std::vector<double>(e + i * stride, e + i * stride + dim)));
    auto& s = sums[y[i]];
    s.resize(static_cast<std::size_t>(dim), 0.0);
    for (index_t k = 0; k < dim; ++k) s[k] += x.back()[k];
    ++counts[y[i]];
  }
  std::vector<std::pair<label_t, std::vector<double>>> columns;
  for (const auto& c : stored) {
    if (!fresh.count(c.label)) columns.push_back({c.label, c.prototype});
  }
  for (const auto& [label, p] : fresh) columns.push_back({label, p});

  const double s = margin.scale();
  double total = 0;
  for (std::size_t i = 0; i < y.size(); ++i) {
    std::vector<double> z;
    double z_target = 0;
    for (const auto& [label, w] : columns) {
      if (label != y[i]) {
        z.push_back(s * dot(x[i], w));
        continue;
      }
      double cos;
      if (leave_one_out) {
        std::vector<double> others = sums[label];
        for (index_t k = 0; k < dim; ++k) others[k] -= x[i][k];
        cos = dot(x[i], normalized(others));
      } else if (counts[label] == 1) {
        cos = 1.0;  // a single exemplar is its own prototype: a constant (generator.hpp)
      } else {
        cos = dot(x[i], w);
      }
      z_target = s * margin.target(cos);
      z.push_back(z_target);
    }
    const double top = *std::max_element(z.begin(), z.end());
    double sum = 0;
    for (double v : z) sum += std::exp(v - top);
    total += std::log(sum) + top - z_target;
  }
  return total / static_cast<double>(y.size());
}

}  // namespace naive
