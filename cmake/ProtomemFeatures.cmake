# Project-level helpers: OpenMP for our own executables, optional features, the configure summary.
include_guard(GLOBAL)

# protomem_link_openmp(<target>)
#
# Links OpenMP::OpenMP_CXX into <target> when find_package(OpenMP) found it. Only for protomem's own
# tests, examples and benchmarks: the library target never forces OpenMP on a consumer (headers must
# compile, warning-free, with and without -fopenmp).
function(protomem_link_openmp target)
  if(TARGET OpenMP::OpenMP_CXX)
    target_link_libraries(${target} PRIVATE OpenMP::OpenMP_CXX)
  endif()
endfunction()

# protomem_optional_feature(<NAME> <FOUND_VAR> <DOC>)
#
# The one mechanism for optional parts (CUDA backend, LibTorch adapter, MPI, ...). Call it after the
# find_package()/check that sets <FOUND_VAR>. It defines the cache option PROTOMEM_WITH_<NAME>, one of
#   AUTO (default) - enabled exactly when <FOUND_VAR> is true;
#   ON             - required: configure fails (FATAL_ERROR) when <FOUND_VAR> is false, never a
#                    silent skip;
#   OFF            - disabled even when found.
# It sets PROTOMEM_HAS_<NAME> (TRUE/FALSE) in the caller's scope - test that, not the option - and
# adds a line to the configure summary. Example for a later issue:
#   find_package(Torch QUIET)
#   protomem_optional_feature(TORCH Torch_FOUND "LibTorch adapter (protomem/torch.hpp)")
#   if(PROTOMEM_HAS_TORCH) ... endif()
function(protomem_optional_feature name found_var doc)
  set(option PROTOMEM_WITH_${name})
  set(${option} AUTO CACHE STRING "${doc}: AUTO (use if found), ON (required) or OFF")
  set_property(CACHE ${option} PROPERTY STRINGS AUTO ON OFF)
  string(TOUPPER "${${option}}" request)
  if(NOT request MATCHES "^(AUTO|ON|OFF|TRUE|FALSE|YES|NO|Y|N|1|0)$")
    message(FATAL_ERROR "protomem: ${option}='${${option}}' must be AUTO, ON or OFF")
  endif()

  if(${found_var})
    set(found TRUE)
  else()
    set(found FALSE)
  endif()

  if(request STREQUAL "AUTO")
    set(enabled ${found})
    set(how "auto")
  elseif(${option})
    if(NOT found)
      message(FATAL_ERROR
        "protomem: ${option}=${${option}} asks for ${doc}, but it was not found "
        "(${found_var} is false). Install it, point CMAKE_PREFIX_PATH at it, or set ${option}=OFF.")
    endif()
    set(enabled TRUE)
    set(how "required")
  else()
    set(enabled FALSE)
    set(how "off by request")
  endif()

  set(PROTOMEM_HAS_${name} ${enabled} PARENT_SCOPE)
  if(enabled)
    set(state "yes")
  elseif(found)
    set(state "no (found, ${how})")
  else()
    set(state "no (not found)")
  endif()
  protomem_summary_line("${doc}" "${state}")
endfunction()

# protomem_summary_line(<label> <value>)
#
# Appends one "label: value" line to the configure summary (printed by protomem_print_summary()).
function(protomem_summary_line label value)
  set_property(GLOBAL APPEND PROPERTY PROTOMEM_SUMMARY_LINES "${label}\t${value}")
endfunction()

function(_protomem_yes_no out)
  if(${ARGN})
    set(${out} "yes" PARENT_SCOPE)
  else()
    set(${out} "no" PARENT_SCOPE)
  endif()
endfunction()

# protomem_print_summary()
#
# Prints what was found and what is built. Called once, at the end of the top-level CMakeLists.txt.
function(protomem_print_summary)
  get_property(lines GLOBAL PROPERTY PROTOMEM_SUMMARY_LINES)
  message(STATUS "")
  message(STATUS "protomem ${PROJECT_VERSION} configure summary")
  foreach(line IN LISTS lines)
    string(REPLACE "\t" ";" parts "${line}")
    list(GET parts 0 label)
    list(GET parts 1 value)
    string(LENGTH "${label}" length)
    set(pad "")
    if(length LESS 36)
      math(EXPR width "36 - ${length}")
      string(REPEAT " " ${width} pad)
    endif()
    message(STATUS "  ${label}${pad} ${value}")
  endforeach()
  message(STATUS "")
endfunction()
