# COLDFUSE_FUZZ=ON (clang only; `make fuzz` uses it in build-fuzz/) builds the targets in
# fuzz/ as libFuzzer binaries: every target is compiled with coverage instrumentation for
# libFuzzer plus ASan and UBSan (any UB aborts, so libFuzzer keeps the input), the fuzz
# executables link libFuzzer's main. Without it (every other build), the same targets link
# fuzz/standalone_main.cc and run as the ctest tests fuzz_smoke_*. See docs/development.md,
# "Fuzzing".
option(COLDFUSE_FUZZ "Build fuzz/ as libFuzzer binaries with ASan+UBSan (clang only)" OFF)
if(NOT COLDFUSE_FUZZ)
  return()
endif()
if(NOT CMAKE_CXX_COMPILER_ID MATCHES "Clang")
  message(FATAL_ERROR "COLDFUSE_FUZZ needs clang (libFuzzer): configure with "
                      "-DCMAKE_CXX_COMPILER=clang++-14, as `make fuzz` does")
endif()
if(COLDFUSE_SANITIZE)
  message(FATAL_ERROR "COLDFUSE_FUZZ brings its own sanitizers; leave COLDFUSE_SANITIZE empty")
endif()
add_compile_options(-fsanitize=fuzzer-no-link,address,undefined -fno-sanitize-recover=all
                    -fno-omit-frame-pointer
                    # Bounds checks in std::vector/string operator[] and friends (no ABI change).
                    -D_GLIBCXX_ASSERTIONS)
add_link_options(-fsanitize=address,undefined)
message(STATUS "Fuzzing: libFuzzer + ASan + UBSan (fuzz/)")
