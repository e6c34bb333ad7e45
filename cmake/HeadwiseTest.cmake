# headwise_add_test(NAME SOURCES src... LIBS lib...)
# Builds a Catch2 test binary and registers each of its test cases with CTest. Cases tagged
# [cuda] need a GPU: they get the CTest label "cuda" and are excluded unless
# HEADWISE_RUN_CUDA_TESTS is ON (the GPU machine's script turns it on).
find_package(Catch2 2 REQUIRED)
include(Catch)
option(HEADWISE_RUN_CUDA_TESTS "Register [cuda]-tagged test cases (needs a GPU)" OFF)

function(headwise_add_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE hw_catch_main ${ARG_LIBS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_definitions(${name} PRIVATE
      HEADWISE_SOURCE_DIR="${PROJECT_SOURCE_DIR}" HEADWISE_BINARY_DIR="${PROJECT_BINARY_DIR}")
  catch_discover_tests(${name} TEST_SPEC "~[cuda]~[.]" TEST_PREFIX "${name}."
      PROPERTIES LABELS "cpu" ENVIRONMENT "HEADWISE_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
  if(HEADWISE_RUN_CUDA_TESTS)
    catch_discover_tests(${name} TEST_SPEC "[cuda]" TEST_PREFIX "${name}.cuda."
        PROPERTIES LABELS "cuda")
  endif()
endfunction()

# headwise_add_pair_test(name SOURCES ... LIBS ...): a CUDA test file built in a CPU-only build with
# a second CPU backend standing in for the GPU (tests/gpu_under_test.h), to check the test's own
# logic before device time is spent on it: `ninja -C build-dev NAME && build-dev/bin/NAME "[cuda]"`.
# Not built by default and not registered with ctest (CI does not run it: minutes on 2 cores).
function(headwise_add_pair_test name)
  cmake_parse_arguments(ARG "" "" "SOURCES;LIBS" ${ARGN})
  add_executable(${name} EXCLUDE_FROM_ALL ${ARG_SOURCES})
  target_link_libraries(${name} PRIVATE hw_catch_main ${ARG_LIBS})
  target_include_directories(${name} PRIVATE ${PROJECT_SOURCE_DIR})
  target_compile_definitions(${name} PRIVATE HEADWISE_TEST_PAIR_CPU
      HEADWISE_SOURCE_DIR="${PROJECT_SOURCE_DIR}" HEADWISE_BINARY_DIR="${PROJECT_BINARY_DIR}")
endfunction()

# headwise_add_python_test(NAME script [args...]): a Python check run with the test venv.
function(headwise_add_python_test name script)
  add_test(NAME ${name} COMMAND ${HEADWISE_PYTHON} ${PROJECT_SOURCE_DIR}/${script} ${ARGN})
  set_tests_properties(${name} PROPERTIES LABELS "cpu;python"
      ENVIRONMENT "HEADWISE_BIN=$<TARGET_FILE:headwise>;HEADWISE_SOURCE_DIR=${PROJECT_SOURCE_DIR}")
endfunction()
