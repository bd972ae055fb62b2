# protomem_add_test(<name> <sources...> [LABELS <label>...] [SKIP_RETURN_CODE <code>])
#
# Builds executable <name> from <sources...>, linked with protomem::protomem, the shared Catch2 main
# (target protomem_catch_main, defined in tests/CMakeLists.txt) and OpenMP when found, with the
# project's warning flags, and registers it as one CTest test <name> (labels "unit" + LABELS).
# One CTest test per executable keeps `ctest -N` short and needs no post-build discovery step;
# Catch2's report (shown by --output-on-failure) names the failing TEST_CASE and SECTION.
# SKIP_RETURN_CODE lets a test that needs missing hardware (a GPU) report "skipped", not "passed",
# by exiting with that code.
include_guard(GLOBAL)

function(protomem_add_test name)
  cmake_parse_arguments(PARSE_ARGV 1 arg "" "SKIP_RETURN_CODE" "LABELS")
  if(NOT arg_UNPARSED_ARGUMENTS)
    message(FATAL_ERROR "protomem_add_test(${name}): no source files")
  endif()
  add_executable(${name} ${arg_UNPARSED_ARGUMENTS})
  target_link_libraries(${name} PRIVATE protomem::protomem protomem_catch_main)
  protomem_project_target(${name})
  protomem_link_openmp(${name})
  add_test(NAME ${name} COMMAND ${name})
  set_tests_properties(${name} PROPERTIES LABELS "unit;${arg_LABELS}")
  if(DEFINED arg_SKIP_RETURN_CODE)
    set_tests_properties(${name} PROPERTIES SKIP_RETURN_CODE ${arg_SKIP_RETURN_CODE})
  endif()
endfunction()
