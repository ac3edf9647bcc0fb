# libFuzzer targets (tests/fuzz/README.md), included from CMakeLists.txt.
#
# Only with -DFETCHD_FUZZ=ON and clang: the engine is built once more, with
# the fuzzer's coverage instrumentation and ASan/UBSan, as fetchd_engine_fuzz;
# each target links it with libFuzzer and runs briefly under ctest (label
# "fuzz") from a scratch copy of its seed corpus. With FETCHD_FUZZ off this
# file defines the option and nothing else.
option(FETCHD_FUZZ "Build the libFuzzer targets (clang) and run them briefly in ctest" OFF)

if(FETCHD_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "FETCHD_FUZZ needs clang: -DCMAKE_C_COMPILER=clang")
  endif()
  set(FETCHD_FUZZ_SECONDS 30 CACHE STRING "How long ctest runs each fuzz target (seconds)")

  # UBSan must abort, or libFuzzer never sees the finding.
  set(FETCHD_FUZZ_SAN -fsanitize=address,undefined -fno-sanitize-recover=undefined
      -fno-omit-frame-pointer)

  fetchd_engine_library(fetchd_engine_fuzz)
  target_compile_options(fetchd_engine_fuzz PUBLIC ${FETCHD_FUZZ_SAN})
  target_compile_options(fetchd_engine_fuzz PRIVATE -fsanitize=fuzzer-no-link)
  target_link_options(fetchd_engine_fuzz PUBLIC ${FETCHD_FUZZ_SAN})

  # When llhttp is built from Debian's sources, compile them into the fuzz
  # engine too: the fuzzer then sees llhttp's branches (its coverage guides
  # the response target), and these objects are linked instead of the
  # uninstrumented fetchd_llhttp ones.
  get_target_property(_fetchd_llhttp_type fetchd_llhttp TYPE)
  if(_fetchd_llhttp_type STREQUAL "STATIC_LIBRARY")
    get_target_property(_fetchd_llhttp_sources fetchd_llhttp SOURCES)
    target_sources(fetchd_engine_fuzz PRIVATE ${_fetchd_llhttp_sources})
    # Third-party code: our warning flags are not applied to it.
    set_source_files_properties(${_fetchd_llhttp_sources} PROPERTIES COMPILE_OPTIONS -w)
  endif()

  foreach(t url jobspec jsonr response control config state metrics)
    add_executable(fuzz_${t} ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c)
    if(t STREQUAL "control" OR t STREQUAL "state")
      # Inputs name URLs: every connection and lookup stays on loopback.
      target_sources(fuzz_${t} PRIVATE ${CMAKE_SOURCE_DIR}/tests/fuzz/sandbox.c)
      target_link_libraries(fuzz_${t} PRIVATE ${CMAKE_DL_LIBS})
    endif()
    target_compile_options(fuzz_${t} PRIVATE ${FETCHD_WARNINGS} -fsanitize=fuzzer)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_link_libraries(fuzz_${t} PRIVATE fetchd_engine_fuzz)
    set_target_properties(fuzz_${t} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    # The run works on a scratch copy of the seeds, so the inputs it finds
    # never land in the source tree; a crash reproducer is written to
    # build/fuzz/ (-artifact_prefix).
    add_test(NAME fuzz_${t}
      COMMAND sh -c "rm -rf corpus-${t} && cp -r '${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${t}' corpus-${t} && exec '$<TARGET_FILE:fuzz_${t}>' -max_total_time=${FETCHD_FUZZ_SECONDS} -timeout=10 -rss_limit_mb=2048 -print_final_stats=1 -artifact_prefix=crash-${t}- -dict='${CMAKE_SOURCE_DIR}/tests/fuzz/${t}.dict' corpus-${t}"
      WORKING_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    math(EXPR _fuzz_timeout "${FETCHD_FUZZ_SECONDS} + 240")
    set_tests_properties(fuzz_${t} PROPERTIES LABELS fuzz TIMEOUT ${_fuzz_timeout}
      ENVIRONMENT "ASAN_OPTIONS=detect_leaks=1:abort_on_error=1;UBSAN_OPTIONS=print_stacktrace=1")
  endforeach()
endif()
