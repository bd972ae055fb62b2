# protomem_find_openblas()
#
# Looks for OpenBLAS (its CBLAS header and library) without reaching the network: first the
# OpenBLASConfig.cmake that OpenBLAS installs (Debian's libopenblas-dev ships one), then a plain
# find_library/find_path. Sets, in the caller's scope, PROTOMEM_OPENBLAS_FOUND and, when found,
# PROTOMEM_OPENBLAS_LIBRARIES and PROTOMEM_OPENBLAS_INCLUDE_DIRS.
#
# protomem_add_blas_target(<name> [IMPORTED])
#
# Defines the INTERFACE target <name> (protomem::blas): protomem::protomem plus OpenBLAS, compiled
# with PROTOMEM_USE_OPENBLAS so that the CPU backend's GEMMs call cblas_?gemm and manage OpenBLAS's
# thread count per step (include/protomem/backend/cpu/gemm.hpp). Header-only, so the choice is the
# consumer's: link protomem::blas instead of protomem::protomem to use it.
include_guard(GLOBAL)

macro(protomem_find_openblas)
  set(PROTOMEM_OPENBLAS_FOUND FALSE)
  find_package(OpenBLAS CONFIG QUIET)
  if(OpenBLAS_FOUND AND OpenBLAS_LIBRARIES)
    set(PROTOMEM_OPENBLAS_LIBRARIES "${OpenBLAS_LIBRARIES}")
    set(PROTOMEM_OPENBLAS_INCLUDE_DIRS "${OpenBLAS_INCLUDE_DIRS}")
    set(PROTOMEM_OPENBLAS_FOUND TRUE)
  else()
    find_library(PROTOMEM_OPENBLAS_LIBRARY NAMES openblas)
    find_path(PROTOMEM_OPENBLAS_INCLUDE_DIR NAMES cblas.h PATH_SUFFIXES openblas)
    if(PROTOMEM_OPENBLAS_LIBRARY AND PROTOMEM_OPENBLAS_INCLUDE_DIR)
      set(PROTOMEM_OPENBLAS_LIBRARIES "${PROTOMEM_OPENBLAS_LIBRARY}")
      set(PROTOMEM_OPENBLAS_INCLUDE_DIRS "${PROTOMEM_OPENBLAS_INCLUDE_DIR}")
      set(PROTOMEM_OPENBLAS_FOUND TRUE)
    endif()
  endif()
endmacro()

function(protomem_add_blas_target name)
  if(ARGV1 STREQUAL "IMPORTED")
    add_library(${name} INTERFACE IMPORTED)
  else()
    add_library(${name} INTERFACE)
  endif()
  target_link_libraries(${name} INTERFACE protomem::protomem ${PROTOMEM_OPENBLAS_LIBRARIES})
  # SYSTEM: OpenBLAS's header is third-party; its warnings must not fail -Werror builds.
  target_include_directories(${name} SYSTEM INTERFACE ${PROTOMEM_OPENBLAS_INCLUDE_DIRS})
  target_compile_definitions(${name} INTERFACE PROTOMEM_USE_OPENBLAS)
endfunction()
