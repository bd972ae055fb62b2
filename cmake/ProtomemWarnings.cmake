# Warning flags for protomem's own targets (tests, examples, benchmarks, header checks).
#
#   protomem_project_target(<target>)
#
# Adds -Wall -Wextra -Wpedantic (/W4 /permissive- on MSVC), plus -Werror (/WX) when PROTOMEM_WERROR
# is ON. The flags are PRIVATE to <target>: they never leak into protomem::protomem and so never into
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
    target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
    if(PROTOMEM_WERROR)
      target_compile_options(${target} PRIVATE -Werror)
    endif()
  endif()
endfunction()
