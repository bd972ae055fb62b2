"""Builds protomem._C with torch.utils.cpp_extension (see pyproject.toml and docs/python.md).

Environment (all optional):
  PROTOMEM_EIGEN_INCLUDE  directory holding Eigen/ (default: /usr/include/eigen3, or $EIGEN3_INCLUDE_DIR)
  PROTOMEM_NATIVE=0       do not compile with -march=native (for a build that runs on other CPUs)
  PROTOMEM_BLAS=0         leave OpenBLAS out even where it is found (Eigen's GEMM only)

The step's GEMM is the library's choice at run time (Config::gemm = auto, docs/performance.md):
each process measures Eigen's GEMM (compiled with -march=native unless PROTOMEM_NATIVE=0) against
OpenBLAS where it is linked, and runs the faster; under bf16 storage on a CPU with avx512_bf16 it
also measures the bf16 kernel, which is compiled in whatever the -march. So the build does not need
OpenBLAS to be fast: linking it only adds a candidate (useful for a PROTOMEM_NATIVE=0 build, whose
Eigen is compiled for baseline x86-64 while OpenBLAS picks its kernels at run time).
  MAX_JOBS                parallel compile jobs (torch's tooling; ninja is used when installed)
"""
import ctypes.util
import os
import sys

import torch
from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))


def eigen_include():
    for candidate in (os.environ.get("PROTOMEM_EIGEN_INCLUDE"), os.environ.get("EIGEN3_INCLUDE_DIR"),
                      "/usr/include/eigen3", "/usr/local/include/eigen3"):
        if candidate and os.path.isfile(os.path.join(candidate, "Eigen", "Core")):
            return candidate
    sys.exit("protomem: Eigen 3.4 headers not found; install libeigen3-dev or set "
             "PROTOMEM_EIGEN_INCLUDE to the directory that holds Eigen/")


def torch_version():
    """(major, minor) of the installed torch: (1, 13) for "1.13.0a0", (2, 15) for "2.15.0+cu132"."""
    major, minor = torch.__version__.split("+")[0].split(".")[:2]
    return int(major), int(minor)


def openblas():
    """(include dir, library name) of OpenBLAS's CBLAS, or None."""
    if os.environ.get("PROTOMEM_BLAS", "1") == "0" or not ctypes.util.find_library("openblas"):
        return None
    for candidate in ("/usr/include/x86_64-linux-gnu/openblas-pthread",
                      "/usr/include/aarch64-linux-gnu/openblas-pthread", "/usr/include/openblas",
                      "/usr/local/include/openblas", "/usr/include"):
        if os.path.isfile(os.path.join(candidate, "cblas.h")):
            return candidate
    return None


# The heads are compiled per Scalar x Device only (python/csrc/head.hpp): float32 and float64 over
# cpu, float32 over cpu_bf16 and cpu_fp16, each in one process and sharded over a
# torch.distributed group, one translation unit per Scalar x Device (so that its backend compiles
# once); the policies are run-time values.
sources = [os.path.join("python", "csrc", name) for name in
           ("module.cpp", "heads_float.cpp", "heads_double.cpp", "heads_bf16.cpp",
            "heads_fp16.cpp")]
include_dirs = [os.path.join(ROOT, "include"), os.path.join(ROOT, "python", "csrc"),
                eigen_include()]
# -fvisibility=hidden: pybind11's advice for extension modules (its namespace is hidden; without it
# GCC warns "declared with greater visibility" for every bound class with torch 2.15's pybind11 3).
# -g0 (after Python's own -g): no debug information, which made most of the compile time and of
# the module's size (docs/python.md, "Install time and size"); -s at link time strips the rest.
cxx_flags = ["-O3", "-fopenmp", "-fvisibility=hidden", "-g0"]
# The C++ standard: the library needs C++17; torch's tooling adds its own default when none is
# given: -std=c++14 up to torch 2.0 (too old for the library, so C++17 is passed there), c++17 from
# 2.1, c++20 once torch's headers require C++20 (torch 2.15's refuse to compile as C++17). From
# 2.1 on the choice is torch's, so the extension always compiles as its headers require.
if torch_version() < (2, 1):
    cxx_flags.append("-std=c++17")
if os.environ.get("PROTOMEM_NATIVE", "1") != "0":
    cxx_flags.append("-march=native")
define_macros = []
libraries = []
blas = openblas()
if blas:
    include_dirs.append(blas)
    define_macros.append(("PROTOMEM_USE_OPENBLAS", None))
    libraries.append("openblas")

setup(
    ext_modules=[CppExtension(
        "protomem._C", sources, include_dirs=include_dirs, define_macros=define_macros,
        libraries=libraries, extra_compile_args={"cxx": cxx_flags},
        extra_link_args=["-fopenmp", "-s"])],
    cmdclass={"build_ext": BuildExtension},
)
