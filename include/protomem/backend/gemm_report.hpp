// Which GEMM a step's memory pass runs on: what Config::gemm asks for (protomem::Gemm) and what a
// step reports it ran (backend::GemmReport, in PassReport and StepResult). The CPU backend's
// choice by measurement is in backend/cpu/gemm_choice.hpp.
#pragma once

#include <cstdio>
#include <string>
#include <utility>

namespace protomem {

/// The GEMM of the CPU backend's memory pass (Config::gemm).
///   automatic  the faster of those the build has, measured once per process and shape class
///              (backend/cpu/gemm_choice.hpp); under cpu_bf16 storage, on a CPU with
///              avx512_bf16, the bf16 dot-product kernel (backend/cpu/bf16_kernel.hpp)
///   eigen      Eigen's product, compiled for the target of the consumer's build
///   blas       the linked CBLAS (protomem::blas); a Config asking for it in a build without one
///              is rejected
///   bf16       only reported: the avx512_bf16 kernel ran (not a Config value)
enum class Gemm { automatic, eigen, blas, bf16 };

/// "auto", "eigen", "blas", "bf16" (for reports and error messages).
inline const char* gemm_name(Gemm gemm) {
  switch (gemm) {
    case Gemm::automatic:
      return "auto";
    case Gemm::eigen:
      return "eigen";
    case Gemm::blas:
      return "blas";
    case Gemm::bf16:
      return "bf16";
  }
  return "unknown";
}

namespace backend {

/// The GEMM a step ran and, when the choice was measured (Config::gemm = automatic in a build
/// with a BLAS), the calibration's times in milliseconds of one tile's two GEMMs with each
/// (0: not measured). `used` stays automatic where a backend reports no CPU GEMM (CUDA).
struct GemmReport {
  Gemm used = Gemm::automatic;
  double eigen_ms = 0;
  double blas_ms = 0;
  double bf16_ms = 0;
};

/// "eigen (calibration ms: eigen 0.88, blas 2.33)": the GEMM and the times that were measured.
inline std::string describe(const GemmReport& report) {
  std::string text = gemm_name(report.used);
  const std::pair<const char*, double> times[] = {
      {"eigen", report.eigen_ms}, {"blas", report.blas_ms}, {"bf16", report.bf16_ms}};
  std::string measured;
  for (const auto& [name, ms] : times) {
    if (ms <= 0) continue;
    char value[32];
    std::snprintf(value, sizeof value, "%.3g", ms);
    measured += std::string(measured.empty() ? "" : ", ") + name + " " + value;
  }
  if (!measured.empty()) text += " (calibration ms: " + measured + ")";
  return text;
}

}  // namespace backend
}  // namespace protomem
