# Warning flags for protomem's own targets (tests, examples, benchmarks, header checks).
#
#   protomem_project_target(<target>)
#
# Adds -Wall -Wextra -Wpedantic (/W4 /permissive- on MSVC), plus -Werror (/WX) when PROTOMEM_WERROR
# is ON; for CUDA sources the host compiler's -Wall -Wextra and nvcc's -Werror=all-warnings. The
# flags are PRIVATE to <target>: they never leak into protomem::protomem and so never into
# a consumer's build. Third-party headers (Eigen, Catch2, benchmark) come from imported targets whose
# include directories are SYSTEM, so their warnings do not fail our build; protomem's own headers are
# included as a normal directory, so their warnings do.
include_guard(GLOBAL)

function(protomem_project_target target)
  if(NOT TARGET ${target})
    message(FATAL_ERROR "protomem_project_target: '${target}' is not a target")
  endif()
  if(MSVC)
    target_compile_options(${target} PRIVATE /W4 /permissive-)
    if(PROTOMEM_WERROR)
      target_compile_options(${target} PRIVATE /WX)
    endif()
  else()
    # CUDA sources (nvcc): the host compiler's -Wall -Wextra through -Xcompiler (not -Wpedantic,
    # which flags nvcc's own generated host code), and nvcc's own warnings as errors with -Werror.
    target_compile_options(${target} PRIVATE
      $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra -Wpedantic>
      $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall,-Wextra>)
    if(PROTOMEM_WERROR)
      target_compile_options(${target} PRIVATE
        $<$<COMPILE_LANGUAGE:CXX>:-Werror>
        $<$<COMPILE_LANGUAGE:CUDA>:-Werror=all-warnings -Xcompiler=-Werror>)
    endif()
  endif()
endfunction()
