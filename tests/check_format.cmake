# Fails when a C++ or CUDA source of the project differs from what
# clang-format (the repository's .clang-format: Google style) makes of it.
# Run by CTest (test `format`):
#   cmake -DSOURCE_DIR=... -DCLANG_FORMAT=... -P check_format.cmake
# Only the project's own source folders are checked, never build trees.
if(NOT SOURCE_DIR OR NOT CLANG_FORMAT)
  message(FATAL_ERROR "check_format.cmake: SOURCE_DIR and CLANG_FORMAT must be set")
endif()
set(patterns)
foreach(dir bench examples fuzz include python src tests tools)
  foreach(ext cc h cu cuh)
    list(APPEND patterns "${SOURCE_DIR}/${dir}/*.${ext}")
  endforeach()
endforeach()
file(GLOB_RECURSE files LIST_DIRECTORIES false ${patterns})
list(SORT files)
list(LENGTH files count)
if(count EQUAL 0)
  message(FATAL_ERROR "check_format.cmake: no sources found under ${SOURCE_DIR}")
endif()
execute_process(
  COMMAND ${CLANG_FORMAT} --style=file --dry-run --Werror ${files}
  WORKING_DIRECTORY ${SOURCE_DIR}
  RESULT_VARIABLE rc
  ERROR_VARIABLE diagnostics)
if(NOT rc EQUAL 0)
  string(REGEX MATCHALL "[^\n]*: error: [^\n]*" lines "${diagnostics}")
  set(unformatted)
  foreach(line IN LISTS lines)
    string(REGEX REPLACE ":[0-9]+:[0-9]+: error: .*" "" path "${line}")
    list(APPEND unformatted "${path}")
  endforeach()
  list(REMOVE_DUPLICATES unformatted)
  list(JOIN unformatted "\n  " shown)
  message(FATAL_ERROR
    "not clang-formatted (run: clang-format -i FILE):\n  ${shown}")
endif()
message(STATUS "${count} sources clang-formatted")
