# Sanitizer and fuzzing builds. Included by the top-level CMakeLists.txt before the CUDA check,
# so that such builds can turn CUDA off: nvcc-compiled code carries no sanitizer
# instrumentation and the CUDA runtime's allocations confuse ASan's leak checker.
#
#   -DHEADWISE_SANITIZE=address,undefined   every target built with ASan + UBSan
#                                           (UBSan findings abort: -fno-sanitize-recover)
#   -DHEADWISE_SANITIZE=thread              every target built with ThreadSanitizer
#   -DHEADWISE_FUZZ=ON                      libFuzzer targets in tests/fuzz (clang only); every
#                                           library gets -fsanitize=fuzzer-no-link,address,
#                                           undefined for coverage feedback, the fuzzers link
#                                           -fsanitize=fuzzer,address,undefined
#
# scripts/sanitize.sh and scripts/fuzz.sh configure these; see them for the run-time options.
set(HEADWISE_SANITIZE "" CACHE STRING
    "Sanitizers for every target, as -fsanitize takes them: address,undefined or thread")
option(HEADWISE_FUZZ "Build the libFuzzer targets in tests/fuzz (needs clang)" OFF)

if(HEADWISE_SANITIZE OR HEADWISE_FUZZ)
  if(HEADWISE_CUDA STREQUAL "ON")
    message(FATAL_ERROR "HEADWISE_SANITIZE / HEADWISE_FUZZ builds are CPU-only: "
                        "configure them with -DHEADWISE_CUDA=OFF")
  endif()
  # A normal variable shadows the cache entry: AUTO becomes OFF for this build only.
  set(HEADWISE_CUDA OFF)
endif()

if(HEADWISE_SANITIZE AND HEADWISE_FUZZ)
  message(FATAL_ERROR "HEADWISE_FUZZ already implies address,undefined; "
                      "leave HEADWISE_SANITIZE empty in fuzz builds")
endif()

if(HEADWISE_SANITIZE)
  if(HEADWISE_SANITIZE MATCHES "thread" AND HEADWISE_SANITIZE MATCHES "address")
    message(FATAL_ERROR "HEADWISE_SANITIZE: thread and address cannot be combined")
  endif()
  set(_hw_san_flags -fsanitize=${HEADWISE_SANITIZE} -fno-omit-frame-pointer -g)
  if(HEADWISE_SANITIZE MATCHES "undefined")
    # A UB report must fail the test that triggered it, not scroll past in its log.
    list(APPEND _hw_san_flags -fno-sanitize-recover=undefined)
  endif()
  add_compile_options("$<$<COMPILE_LANGUAGE:C,CXX>:${_hw_san_flags}>")
  add_link_options(-fsanitize=${HEADWISE_SANITIZE})
  message(STATUS "headwise: sanitizers ${HEADWISE_SANITIZE}")
endif()

if(HEADWISE_FUZZ)
  if(NOT CMAKE_CXX_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "HEADWISE_FUZZ needs clang (libFuzzer): configure with "
                        "-DCMAKE_C_COMPILER=clang -DCMAKE_CXX_COMPILER=clang++")
  endif()
  # Libraries: coverage instrumentation plus ASan/UBSan, but not libFuzzer's main().
  set(HEADWISE_FUZZ_SANITIZERS address,undefined)
  add_compile_options(
      "$<$<COMPILE_LANGUAGE:C,CXX>:-fsanitize=fuzzer-no-link,${HEADWISE_FUZZ_SANITIZERS};-fno-sanitize-recover=undefined;-fno-omit-frame-pointer;-g>")
  add_link_options(-fsanitize=${HEADWISE_FUZZ_SANITIZERS})
  message(STATUS "headwise: libFuzzer targets (tests/fuzz)")
endif()

# Adds tests/fuzz when the test tree (whose CMakeLists adds every tests/ subfolder) is off.
macro(headwise_add_fuzzers)
  if(HEADWISE_FUZZ AND NOT HEADWISE_BUILD_TESTS)
    add_subdirectory(${PROJECT_SOURCE_DIR}/tests/fuzz ${PROJECT_BINARY_DIR}/tests/fuzz)
  endif()
endmacro()
