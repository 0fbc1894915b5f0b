# cmake -D LOGS=<folder> [-D CLEAR=1] -P check_logs.cmake
# CLEAR: empties the sanitizer report folder. Otherwise fails, printing them, when the
# processes of the test run wrote any reports there (see cmake/sanitizers.cmake).
if(CLEAR)
  file(REMOVE_RECURSE "${LOGS}")
  file(MAKE_DIRECTORY "${LOGS}")
  return()
endif()
file(GLOB reports "${LOGS}/*")
if(NOT reports)
  message("no sanitizer reports in ${LOGS}")
  return()
endif()
list(LENGTH reports n)
foreach(r IN LISTS reports)
  file(READ "${r}" text LIMIT 20000)
  message("==== ${r}\n${text}")
endforeach()
message(FATAL_ERROR "${n} sanitizer report file(s) in ${LOGS} (one per process; listed above)")
