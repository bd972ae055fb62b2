# Warning and instruction-set flags for protomem's own targets (tests, examples, benchmarks,
# header checks). Nothing here reaches protomem::protomem, so nothing reaches a consumer's build.
#
#   protomem_project_target(<target> [MARCH <level>])
#
# Adds -Wall -Wextra -Wpedantic (/W4 /permissive- on MSVC), plus -Werror (/WX) when PROTOMEM_WERROR
# is ON, and -march=<level> for C++ sources (<level> defaults to PROTOMEM_MARCH; the benchmarks pass
# PROTOMEM_BENCH_MARCH). Third-party headers (Eigen, Catch2, benchmark, LibTorch) come from imported
# targets whose include directories are SYSTEM, so their warnings do not fail our build; protomem's
# own headers are included as a normal directory, so their warnings do.
#
# The one exception, and why: GCC before 13 reports `'__Y' may be used uninitialized` inside its own
# avx512fintrin.h (GCC bug 105593: the _mm512_undefined_* idiom), inlined from Eigen's AVX-512 GEMM
# kernels into our translation units, where SYSTEM does not hide it. So for GCC < 13 compiling with
# AVX-512 enabled (-march=native on an AVX-512 machine, x86-64-v4, ...), -Wmaybe-uninitialized is
# off for that build. The same sources compiled for x86-64-v2 and v3 keep it as an error, and CI
# compiles every level (scripts/test), so our own code is still checked by it.
#
# CUDA sources (nvcc): the host compiler's -Wall -Wextra. Warnings are errors under nvcc only for
# the toolkit and host compiler this project was tested with (PROTOMEM_CUDA_WERROR=AUTO): nvcc and
# host compilers add warnings from release to release, and a newer toolkit must not fail a build
# whose code did not change. ON forces them to be errors, OFF never.
include_guard(GLOBAL)
include(CheckCXXSourceCompiles)

set(PROTOMEM_MARCH "" CACHE STRING
    "-march of protomem's tests and examples: empty = the compiler's default (x86-64 baseline), \
native, x86-64-v2, x86-64-v3, x86-64-v4, ...")
set(PROTOMEM_BENCH_MARCH "native" CACHE STRING
    "-march of protomem's benchmarks (empty = the compiler's default)")
set(PROTOMEM_CUDA_WERROR AUTO CACHE STRING
    "nvcc warnings as errors: AUTO (only with the tested nvcc 13.0 + GCC 12), ON or OFF")
set_property(CACHE PROTOMEM_CUDA_WERROR PROPERTY STRINGS AUTO ON OFF)

# The toolchain the CUDA warning flags were last verified with (see PROTOMEM_CUDA_WERROR).
set(PROTOMEM_CUDA_TESTED_NVCC "13.0")
set(PROTOMEM_CUDA_TESTED_HOST_GCC "12")

# _protomem_march_has_avx512(<out> <level>): whether -march=<level> enables AVX-512F (cached).
function(_protomem_march_has_avx512 out level)
  string(MAKE_C_IDENTIFIER "PROTOMEM_MARCH_AVX512_${level}" cache_var)
  if(NOT DEFINED ${cache_var})
    set(CMAKE_REQUIRED_FLAGS "-march=${level}")
    set(CMAKE_REQUIRED_QUIET ON)
    check_cxx_source_compiles("
      #ifndef __AVX512F__
      #error no AVX-512
      #endif
      int main() { return 0; }" ${cache_var})
  endif()
  set(${out} ${${cache_var}} PARENT_SCOPE)
endfunction()

function(_protomem_cuda_werror out)
  string(TOUPPER "${PROTOMEM_CUDA_WERROR}" request)
  if(request STREQUAL "AUTO")
    set(tested FALSE)
    if(CMAKE_CUDA_COMPILER_VERSION VERSION_GREATER_EQUAL "${PROTOMEM_CUDA_TESTED_NVCC}" AND
       CMAKE_CUDA_COMPILER_VERSION VERSION_LESS "${PROTOMEM_CUDA_TESTED_NVCC}.99999" AND
       CMAKE_CXX_COMPILER_ID STREQUAL "GNU")
      string(REGEX MATCH "^[0-9]+" gcc_major "${CMAKE_CXX_COMPILER_VERSION}")
      if(gcc_major STREQUAL PROTOMEM_CUDA_TESTED_HOST_GCC)
        set(tested TRUE)
      endif()
    endif()
    set(${out} ${tested} PARENT_SCOPE)
  elseif(PROTOMEM_CUDA_WERROR)
    set(${out} TRUE PARENT_SCOPE)
  else()
    set(${out} FALSE PARENT_SCOPE)
  endif()
endfunction()

function(protomem_project_target target)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "MARCH" "")
  if(NOT TARGET ${target})
    message(FATAL_ERROR "protomem_project_target: '${target}' is not a target")
  endif()
  if(DEFINED arg_MARCH)
    set(march "${arg_MARCH}")
  else()
    set(march "${PROTOMEM_MARCH}")
  endif()
  if(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive-)
    if(PROTOMEM_WERROR)
      target_compile_options(${target} PRIVATE /WX)
    endif()
    return()
  endif()

  # CUDA sources (nvcc): the host compiler's -Wall -Wextra through -Xcompiler (not -Wpedantic,
  # which flags nvcc's own generated host code).
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>
    $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
  if(PROTOMEM_WERROR)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Werror>)
    if(CMAKE_CUDA_COMPILER_VERSION)
      _protomem_cuda_werror(cuda_werror)
      if(cuda_werror)
        target_compile_options(${target} PRIVATE
          $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
      endif()
    endif()
  endif()

  if(NOT march STREQUAL "" AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=${march}>)
    if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
      _protomem_march_has_avx512(avx512 "${march}")
      if(avx512)
        target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wno-maybe-uninitialized>)
      endif()
    endif()
  endif()
endfunction()

# protomem_summarize_flags(): the configure summary lines for the flags above.
function(protomem_summarize_flags)
  set(march "${PROTOMEM_MARCH}")
  if(march STREQUAL "")
    set(march "compiler default")
  endif()
  set(bench_march "${PROTOMEM_BENCH_MARCH}")
  if(bench_march STREQUAL "")
    set(bench_march "compiler default")
  endif()
  protomem_summary_line("-march (tests, examples)" "${march}")
  protomem_summary_line("-march (benchmarks)" "${bench_march}")
  if(CMAKE_CUDA_COMPILER_VERSION AND PROTOMEM_WERROR)
    _protomem_cuda_werror(cuda_werror)
    if(cuda_werror)
      protomem_summary_line("nvcc warnings as errors" "yes (PROTOMEM_CUDA_WERROR=${PROTOMEM_CUDA_WERROR})")
    else()
      protomem_summary_line("nvcc warnings as errors"
        "no (PROTOMEM_CUDA_WERROR=${PROTOMEM_CUDA_WERROR}; tested: nvcc ${PROTOMEM_CUDA_TESTED_NVCC}, GCC ${PROTOMEM_CUDA_TESTED_HOST_GCC})")
    endif()
  endif()
endfunction()
