// The CPU backend's GEMMs and thread control.
//
// GEMM: Eigen's own product is always built; a CBLAS as well when the build asks for one:
//   PROTOMEM_USE_OPENBLAS  cblas_?gemm from OpenBLAS, and OpenBLAS's thread count is managed per
//                          step (below). This is what the CMake target protomem::blas defines.
//   PROTOMEM_USE_CBLAS     cblas_?gemm from any CBLAS; its threads are left as the user set them
//                          (set them to 1 when protomem runs several threads, see Config::threads).
// Which one a step runs is chosen at run time (Config::gemm; by default the faster of the two,
// measured once per process and shape class: gemm_choice.hpp). A BLAS that does not know the CPU
// falls back to old kernels (Debian 12's OpenBLAS 0.3.21 ran Prescott's on a Xeon with
// avx512_bf16, 4x slower than Eigen compiled for it), so linking one is no promise of speed.
//
// Threads: the memory pass splits the stored prototypes into `lanes`, one per thread, each calling
// a single-threaded GEMM on its own tiles (OpenMP, only when the consumer compiles with it; the
// headers compile without it); the O(B C D) rest of the step runs on the calling thread.
// BlasThreads and OmpThreads pin OpenBLAS and the calling thread's OpenMP team size for the
// duration of a step and restore the previous values afterwards, so nothing outlives the call.
#pragma once

#include <climits>
#include <string>
#include <type_traits>

#include <Eigen/Core>

#if defined(PROTOMEM_USE_OPENBLAS) && !defined(PROTOMEM_USE_CBLAS)
#define PROTOMEM_USE_CBLAS
#endif

#ifdef PROTOMEM_USE_CBLAS
#include <cblas.h>
#endif
#ifdef PROTOMEM_USE_OPENBLAS
extern "C" {
void openblas_set_num_threads(int num_threads);
int openblas_get_num_threads(void);
char* openblas_get_corename(void);
}
#endif
#ifdef _OPENMP
#include <omp.h>
#endif

#include <protomem/types.hpp>
#include <protomem/error.hpp>
#include <protomem/view.hpp>

namespace protomem {
namespace backend {

/// A GEMM dimension as the int a CBLAS takes, checked rather than narrowed.
inline int blas_int(index_t value) {
  if (value < 0 || value > INT_MAX) {
    detail::fail("a matrix dimension of the step (", value, ") exceeds the BLAS's int range");
  }
  return static_cast<int>(value);
}

/// Whether this build has the GEMM `gemm` (eigen and automatic: always; blas: with
/// PROTOMEM_USE_CBLAS; bf16: a storage matter, see gemm_choice.hpp).
inline bool gemm_built(Gemm gemm) {
#ifdef PROTOMEM_USE_CBLAS
  constexpr bool blas = true;
#else
  constexpr bool blas = false;
#endif
  return gemm == Gemm::eigen || gemm == Gemm::automatic || (gemm == Gemm::blas && blas);
}

/// Throws protomem::Error unless `requested` is a Config::gemm value this build can run.
inline void check_gemm_request(Gemm requested) {
  if (requested != Gemm::automatic && requested != Gemm::eigen && requested != Gemm::blas) {
    detail::fail("Config::gemm = ", gemm_name(requested),
                 " is not a choice (auto, eigen or blas; bf16 is chosen by auto)");
  }
  if (!gemm_built(requested)) {
    detail::fail("Config::gemm = ", gemm_name(requested),
                 ", but this build has no BLAS (link protomem::blas or define "
                 "PROTOMEM_USE_CBLAS), only Eigen's GEMM");
  }
}

/// The BLAS this build has: "OpenBLAS", "CBLAS" (another one, PROTOMEM_USE_CBLAS) or "none".
inline const char* blas_name() {
#if defined(PROTOMEM_USE_OPENBLAS)
  return "OpenBLAS";
#elif defined(PROTOMEM_USE_CBLAS)
  return "CBLAS";
#else
  return "none";
#endif
}

/// OpenBLAS's kernel set for this CPU (openblas_get_corename(): "Haswell", "Prescott", ...); ""
/// for another BLAS or none.
inline const char* blas_core() {
#ifdef PROTOMEM_USE_OPENBLAS
  const char* core = openblas_get_corename();
  return core != nullptr ? core : "";
#else
  return "";
#endif
}

/// The GEMMs this build has, e.g. "eigen, blas (OpenBLAS Haswell)" (reports and benchmarks).
inline std::string gemm_names() {
  std::string names = "eigen";
#ifdef PROTOMEM_USE_CBLAS
  names += std::string(", blas (") + blas_name();
  if (*blas_core() != '\0') names += std::string(" ") + blas_core();
  names += ")";
#endif
  return names;
}

/// C (m x n) = alpha * A (m x k) * op(B) + beta * C with Eigen's product; arguments as gemm().
template <class Scalar>
void gemm_eigen(bool transpose_b, index_t m, index_t n, index_t k, Scalar alpha, const Scalar* a,
                index_t lda, const Scalar* b, index_t ldb, Scalar beta, Scalar* c, index_t ldc) {
  using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Stride = Eigen::OuterStride<>;
  Eigen::Map<const Matrix, 0, Stride> A(a, m, k, Stride(lda));
  Eigen::Map<Matrix, 0, Stride> C(c, m, n, Stride(ldc));
  if (transpose_b) {
    Eigen::Map<const Matrix, 0, Stride> Bm(b, n, k, Stride(ldb));
    if (beta == Scalar(0)) {
      C.noalias() = alpha * A * Bm.transpose();
    } else {
      C.noalias() += alpha * A * Bm.transpose();
    }
  } else {
    Eigen::Map<const Matrix, 0, Stride> Bm(b, k, n, Stride(ldb));
    if (beta == Scalar(0)) {
      C.noalias() = alpha * A * Bm;
    } else {
      C.noalias() += alpha * A * Bm;
    }
  }
}

/// C (m x n) = alpha * A (m x k) * op(B) + beta * C, all row-major with leading dimensions
/// lda, ldb, ldc; op(B) = B^T (B is n x k) when transpose_b, else B (k x n). beta is 0 or 1.
/// `with` is Gemm::blas (in a build that has one, gemm_built()) or else Eigen's product.
template <class Scalar>
void gemm(Gemm with, bool transpose_b, index_t m, index_t n, index_t k, Scalar alpha,
          const Scalar* a, index_t lda, const Scalar* b, index_t ldb, Scalar beta, Scalar* c,
          index_t ldc) {
  if (m == 0 || n == 0) return;
#ifdef PROTOMEM_USE_CBLAS
  if (with == Gemm::blas) {
    const auto tb = transpose_b ? CblasTrans : CblasNoTrans;
    if constexpr (std::is_same_v<Scalar, float>) {
      cblas_sgemm(CblasRowMajor, CblasNoTrans, tb, blas_int(m), blas_int(n), blas_int(k), alpha,
                  a, blas_int(lda), b, blas_int(ldb), beta, c, blas_int(ldc));
    } else {
      cblas_dgemm(CblasRowMajor, CblasNoTrans, tb, blas_int(m), blas_int(n), blas_int(k), alpha,
                  a, blas_int(lda), b, blas_int(ldb), beta, c, blas_int(ldc));
    }
    return;
  }
#else
  (void)with;
#endif
  gemm_eigen(transpose_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

/// The threads a step runs with: `requested` when > 0, else OpenMP's default
/// (omp_get_max_threads(), i.e. OMP_NUM_THREADS); always 1 when compiled without OpenMP.
inline int step_threads(int requested) {
#ifdef _OPENMP
  return requested > 0 ? requested : omp_get_max_threads();
#else
  (void)requested;
  return 1;
#endif
}

/// Sets OpenBLAS's thread count for a scope and restores the previous count when it ends; does
/// nothing for `threads` <= 0 or without PROTOMEM_USE_OPENBLAS.
class BlasThreads {
 public:
  explicit BlasThreads(int threads) {
#ifdef PROTOMEM_USE_OPENBLAS
    if (threads > 0) {
      saved_ = openblas_get_num_threads();
      if (saved_ != threads) {
        openblas_set_num_threads(threads);
      } else {
        saved_ = 0;
      }
    }
#else
    (void)threads;
#endif
  }
  ~BlasThreads() {
#ifdef PROTOMEM_USE_OPENBLAS
    if (saved_ > 0) openblas_set_num_threads(saved_);
#endif
  }
  BlasThreads(const BlasThreads&) = delete;
  BlasThreads& operator=(const BlasThreads&) = delete;

 private:
  [[maybe_unused]] int saved_ = 0;  // unused without OpenBLAS
};

/// Sets OpenMP's thread count for nested teams of the calling thread (its nthreads-var) for a
/// scope and restores it when the scope ends: with 1, Eigen's products stay on the calling thread
/// (Eigen sizes its teams by omp_get_max_threads()). Does nothing without OpenMP.
class OmpThreads {
 public:
  explicit OmpThreads(int threads) {
#ifdef _OPENMP
    saved_ = omp_get_max_threads();
    omp_set_num_threads(threads);
#else
    (void)threads;
#endif
  }
  ~OmpThreads() {
#ifdef _OPENMP
    omp_set_num_threads(saved_);
#endif
  }
  OmpThreads(const OmpThreads&) = delete;
  OmpThreads& operator=(const OmpThreads&) = delete;

 private:
  int saved_ = 1;
};

}  // namespace backend
}  // namespace protomem
