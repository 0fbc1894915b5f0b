# COLDFUSE_SANITIZE=address,undefined or thread instruments the whole build (`make test-asan`,
# `make test-tsan`; README.md, "Tests"). Every test, and every coldfused / coldfuse-client /
# coldfusectl process a test starts (they inherit its environment), then runs with the
# options below and the suppressions in tests/sanitizers/ for the third-party libraries,
# which are not instrumented. Reports go to files in <build>/sanitizer-logs/ named after the
# test and the program, so that those of child processes are kept too (a test may kill a
# child before its report fails anything); the test sanitizer_logs_check fails the run when
# any report was written, and prints them.
set(COLDFUSE_SANITIZE "" CACHE STRING
    "Instrument the whole build: address,undefined (ASan+UBSan) or thread (TSan)")

# Called at the end of the top-level CMakeLists.txt, once every target exists. With TSan,
# every executable gets tests/sanitizers/tsan_absl_mutex.cc, which makes the absl::Mutex
# locking inside Debian's uninstrumented Abseil (gRPC's, and ours) visible to TSan.
function(coldfuse_sanitizer_link_executables)
  if(NOT "thread" IN_LIST _sanitizers)
    return()
  endif()
  add_library(coldfuse_tsan_absl_mutex OBJECT
    "${PROJECT_SOURCE_DIR}/tests/sanitizers/tsan_absl_mutex.cc")
  target_link_libraries(coldfuse_tsan_absl_mutex PRIVATE absl::synchronization)
  set(dirs "${PROJECT_SOURCE_DIR}")
  while(dirs)
    list(POP_FRONT dirs dir)
    get_property(subdirs DIRECTORY "${dir}" PROPERTY SUBDIRECTORIES)
    list(APPEND dirs ${subdirs})
    get_property(targets DIRECTORY "${dir}" PROPERTY BUILDSYSTEM_TARGETS)
    foreach(t IN LISTS targets)
      get_target_property(type ${t} TYPE)
      if(type STREQUAL "EXECUTABLE")
        # Exported, so that libgrpc's calls bind to these definitions rather than libabsl's.
        target_link_libraries(${t} PRIVATE coldfuse_tsan_absl_mutex ${CMAKE_DL_LIBS}
          "-Wl,--export-dynamic-symbol=_ZN4absl*5Mutex*"
          "-Wl,--export-dynamic-symbol=_ZN4absl*7CondVar*")
      endif()
    endforeach()
  endwhile()
endfunction()

set(COLDFUSE_TEST_TIMEOUT 300)  # seconds per test; instrumented runs get 3x
set(COLDFUSE_SANITIZER_ENV "")  # the ENVIRONMENT of every test (coldfuse_test)
string(REPLACE "," ";" _sanitizers "${COLDFUSE_SANITIZE}")
if(NOT COLDFUSE_SANITIZE)
  return()
endif()

set(_flags -fsanitize=${COLDFUSE_SANITIZE} -fno-omit-frame-pointer)
if("undefined" IN_LIST _sanitizers)
  # Any undefined behaviour aborts the process, so it fails the test instead of scrolling by.
  list(APPEND _flags -fno-sanitize-recover=all)
endif()
add_compile_options(${_flags})
add_link_options(${_flags})
if(CMAKE_BUILD_TYPE STREQUAL "Debug")
  add_compile_options(-O1)  # the sanitizers' advice: -O0 code is needlessly slow
endif()
set(COLDFUSE_TEST_TIMEOUT 900)

# Symbolized stacks: the llvm-symbolizer beside the compiler (Debian: package llvm-14).
get_filename_component(_compiler_dir "${CMAKE_CXX_COMPILER}" REALPATH)
get_filename_component(_compiler_dir "${_compiler_dir}" DIRECTORY)
find_program(COLDFUSE_LLVM_SYMBOLIZER NAMES llvm-symbolizer HINTS "${_compiler_dir}"
             PATHS /usr/lib/llvm-14/bin)
set(_supp "${PROJECT_SOURCE_DIR}/tests/sanitizers")
set(COLDFUSE_SANITIZER_LOGS "${PROJECT_BINARY_DIR}/sanitizer-logs")
# One report file per process, named <test>.<program>.<pid>: @TEST@ becomes the test's name.
set(_common "log_path=${COLDFUSE_SANITIZER_LOGS}/@TEST@:log_exe_name=1")
if(COLDFUSE_LLVM_SYMBOLIZER)
  string(APPEND _common ":external_symbolizer_path=${COLDFUSE_LLVM_SYMBOLIZER}")
endif()
set(COLDFUSE_SANITIZER_ENV
  "ASAN_OPTIONS=${_common}:detect_stack_use_after_return=1:check_initialization_order=1:strict_init_order=1"
  "LSAN_OPTIONS=${_common}:suppressions=${_supp}/lsan.supp:print_suppressions=0"
  "UBSAN_OPTIONS=${_common}:print_stacktrace=1:halt_on_error=1"
  "TSAN_OPTIONS=${_common}:suppressions=${_supp}/tsan.supp:print_suppressions=0:second_deadlock_stack=1")

# Every test requires the fixture `sanitizer_logs`: an empty report folder before the first
# test, a check that it is still empty after the last.
add_test(NAME sanitizer_logs_clear COMMAND ${CMAKE_COMMAND}
         -D "LOGS=${COLDFUSE_SANITIZER_LOGS}" -D CLEAR=1 -P "${_supp}/check_logs.cmake")
add_test(NAME sanitizer_logs_check COMMAND ${CMAKE_COMMAND}
         -D "LOGS=${COLDFUSE_SANITIZER_LOGS}" -P "${_supp}/check_logs.cmake")
set_tests_properties(sanitizer_logs_clear PROPERTIES FIXTURES_SETUP sanitizer_logs)
set_tests_properties(sanitizer_logs_check PROPERTIES FIXTURES_CLEANUP sanitizer_logs)
message(STATUS "Sanitizers: ${COLDFUSE_SANITIZE}; reports in ${COLDFUSE_SANITIZER_LOGS}")
