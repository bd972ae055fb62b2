# cmake -P script behind the consumer_fetchcontent / consumer_find_package tests: configures, builds
# and runs tests/consumer against protomem, in a fresh WORK_DIR, with the caller's generator,
# compiler, flags and build type.
#   MODE=fetch    FetchContent_Declare(protomem SOURCE_DIR <PROTOMEM_SOURCE_DIR>) - offline
#   MODE=package  `cmake --install <PROTOMEM_BINARY_DIR> --prefix <WORK_DIR>/prefix`, then
#                 find_package(protomem CONFIG) with CMAKE_PREFIX_PATH=<WORK_DIR>/prefix
# Other inputs (-D...): PROTOMEM_SOURCE_DIR, PROTOMEM_BINARY_DIR, WORK_DIR, CTEST_COMMAND, GENERATOR,
# GENERATOR_PLATFORM, GENERATOR_TOOLSET, MAKE_PROGRAM, CXX_COMPILER, CXX_FLAGS, EXE_LINKER_FLAGS,
# BUILD_TYPE.
cmake_minimum_required(VERSION 3.18)

foreach(required MODE PROTOMEM_SOURCE_DIR WORK_DIR GENERATOR CTEST_COMMAND)
  if(NOT DEFINED ${required} OR "${${required}}" STREQUAL "")
    message(FATAL_ERROR "run_consumer.cmake: -D${required}=... is required")
  endif()
endforeach()

# run_step(<what> [WORKING_DIRECTORY <dir>] COMMAND <command...>): run it, fail on non-zero exit.
function(run_step what)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "WORKING_DIRECTORY" "COMMAND")
  if(NOT arg_WORKING_DIRECTORY)
    set(arg_WORKING_DIRECTORY "${WORK_DIR}")
  endif()
  message(STATUS "consumer (${MODE}): ${what}")
  execute_process(COMMAND ${arg_COMMAND} WORKING_DIRECTORY "${arg_WORKING_DIRECTORY}"
    RESULT_VARIABLE result COMMAND_ECHO STDOUT)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "consumer (${MODE}): ${what} failed (${result})")
  endif()
endfunction()

set(build_dir "${WORK_DIR}/build")
file(REMOVE_RECURSE "${WORK_DIR}")
file(MAKE_DIRECTORY "${WORK_DIR}")

set(configure "${CMAKE_COMMAND}" -S "${CMAKE_CURRENT_LIST_DIR}" -B "${build_dir}" -G "${GENERATOR}"
    "-DPROTOMEM_CONSUMER_MODE=${MODE}")
if(GENERATOR_PLATFORM)
  list(APPEND configure -A "${GENERATOR_PLATFORM}")
endif()
if(GENERATOR_TOOLSET)
  list(APPEND configure -T "${GENERATOR_TOOLSET}")
endif()
if(MAKE_PROGRAM)
  list(APPEND configure "-DCMAKE_MAKE_PROGRAM=${MAKE_PROGRAM}")
endif()
if(CXX_COMPILER)
  list(APPEND configure "-DCMAKE_CXX_COMPILER=${CXX_COMPILER}")
endif()
if(BUILD_TYPE)
  list(APPEND configure "-DCMAKE_BUILD_TYPE=${BUILD_TYPE}")
  set(config_args --config "${BUILD_TYPE}")
  set(ctest_config_args -C "${BUILD_TYPE}")
endif()
list(APPEND configure "-DCMAKE_CXX_FLAGS=${CXX_FLAGS}" "-DCMAKE_EXE_LINKER_FLAGS=${EXE_LINKER_FLAGS}")

if(MODE STREQUAL "fetch")
  list(APPEND configure "-DPROTOMEM_SOURCE_DIR=${PROTOMEM_SOURCE_DIR}"
       -DFETCHCONTENT_FULLY_DISCONNECTED=ON)
elseif(MODE STREQUAL "package")
  if(NOT PROTOMEM_BINARY_DIR)
    message(FATAL_ERROR "run_consumer.cmake: MODE=package needs -DPROTOMEM_BINARY_DIR=...")
  endif()
  set(prefix "${WORK_DIR}/prefix")
  run_step("install protomem into ${prefix}" COMMAND
    "${CMAKE_COMMAND}" --install "${PROTOMEM_BINARY_DIR}" --prefix "${prefix}" ${config_args})
  list(APPEND configure "-DCMAKE_PREFIX_PATH=${prefix}" -DCMAKE_FIND_USE_PACKAGE_REGISTRY=OFF)
else()
  message(FATAL_ERROR "run_consumer.cmake: MODE='${MODE}', expected fetch or package")
endif()

run_step("configure" COMMAND ${configure})
if(MODE STREQUAL "package")
  # The package must come from the fresh install, not from some protomem elsewhere on the system.
  file(STRINGS "${build_dir}/CMakeCache.txt" dir_line REGEX "^protomem_DIR:")
  string(REGEX REPLACE "^protomem_DIR:[A-Z]+=" "" found_dir "${dir_line}")
  file(REAL_PATH "${prefix}" real_prefix)
  file(REAL_PATH "${found_dir}" real_found_dir)
  string(FIND "${real_found_dir}/" "${real_prefix}/" at)
  if(NOT at EQUAL 0)
    message(FATAL_ERROR "consumer (package): found protomem in '${found_dir}', not under '${prefix}'")
  endif()
endif()
run_step("build" COMMAND "${CMAKE_COMMAND}" --build "${build_dir}" ${config_args})
run_step("run" WORKING_DIRECTORY "${build_dir}"
  COMMAND "${CTEST_COMMAND}" --output-on-failure ${ctest_config_args})
