# libFuzzer targets (tests/fuzz/README.md). Only with -DFETCHD_FUZZ=ON and
# clang: the engine is built once more with the fuzzer's coverage
# instrumentation and ASan/UBSan, and each target runs briefly under ctest
# (label "fuzz") from its seed corpus.
option(FETCHD_FUZZ "Build the libFuzzer targets (clang) and run them briefly in ctest" OFF)

if(FETCHD_FUZZ)
  if(NOT CMAKE_C_COMPILER_ID STREQUAL "Clang")
    message(FATAL_ERROR "FETCHD_FUZZ needs clang: -DCMAKE_C_COMPILER=clang")
  endif()
  set(FETCHD_FUZZ_FLAGS -fsanitize=fuzzer-no-link,address,undefined -fno-omit-frame-pointer)
  fetchd_engine_library(fetchd_engine_fuzz)
  target_compile_options(fetchd_engine_fuzz PUBLIC ${FETCHD_FUZZ_FLAGS})
  target_link_options(fetchd_engine_fuzz PUBLIC -fsanitize=address,undefined)
  set(FETCHD_FUZZ_SECONDS 30 CACHE STRING "How long ctest runs each fuzz target")
  foreach(t url jobspec response)
    add_executable(fuzz_${t} ${CMAKE_SOURCE_DIR}/tests/fuzz/fuzz_${t}.c)
    target_compile_options(fuzz_${t} PRIVATE ${FETCHD_WARNINGS} -fsanitize=fuzzer)
    target_link_options(fuzz_${t} PRIVATE -fsanitize=fuzzer)
    target_link_libraries(fuzz_${t} PRIVATE fetchd_engine_fuzz)
    set_target_properties(fuzz_${t} PROPERTIES RUNTIME_OUTPUT_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    # A scratch copy of the seed corpus: new inputs never land in the repo.
    add_test(NAME fuzz_${t}
      COMMAND ${CMAKE_COMMAND} -E env ASAN_OPTIONS=detect_leaks=1
        sh -c "rm -rf corpus-${t} && cp -r ${CMAKE_SOURCE_DIR}/tests/fuzz/corpus/${t} corpus-${t} && $<TARGET_FILE:fuzz_${t}> -max_total_time=${FETCHD_FUZZ_SECONDS} -timeout=10 corpus-${t}"
      WORKING_DIRECTORY ${CMAKE_BINARY_DIR}/fuzz)
    set_tests_properties(fuzz_${t} PROPERTIES LABELS fuzz TIMEOUT 300)
  endforeach()
endif()
