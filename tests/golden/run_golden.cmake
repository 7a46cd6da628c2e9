# Runs the real `twinstep` binary and compares its standard output byte for byte with a committed golden file
# (CTest via cmake -P; no shell needed). On a mismatch it prints a unified diff and how to regenerate.
# -DTWINSTEP=path -DSOURCE_DIR=dir (commands run there, so paths in arguments are relative to it)
# -DSTEPS="args@@args%%args@@args": commands run in order; the last one's stdout is the output compared
# [-DHASH_FILES="path@@path"]: files the commands wrote, whose SHA-256 is appended to the output ("sha256 NAME: HEX"),
# so that a large output (a lowered schedule's JSON) is compared byte for byte without committing it
# -DGOLDEN=path -DACTUAL=path (where the output is written). With TWINSTEP_UPDATE_GOLDEN=1 in the environment it
# rewrites GOLDEN instead of comparing (tests/golden/regen.sh).
# Lists arrive joined with "@@" (arguments) and "%%" (commands): a ";" would not survive add_test's quoting.
string(REPLACE "%%" ";" steps "${STEPS}")
foreach(step IN LISTS steps)
  string(REPLACE "@@" ";" args "${step}")
  execute_process(COMMAND ${TWINSTEP} ${args} WORKING_DIRECTORY ${SOURCE_DIR}
                  RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    string(REPLACE ";" " " shown "${args}")
    message(FATAL_ERROR "twinstep ${shown}: exit code ${rc}\n${out}${err}")
  endif()
endforeach()
string(REPLACE "@@" ";" hash_files "${HASH_FILES}")
foreach(f IN LISTS hash_files)
  file(SHA256 ${f} digest)
  get_filename_component(name ${f} NAME)
  string(APPEND out "sha256 ${name}: ${digest}\n")
endforeach()
file(WRITE ${ACTUAL} "${out}")
if("$ENV{TWINSTEP_UPDATE_GOLDEN}" STREQUAL "1")
  file(WRITE ${GOLDEN} "${out}")
  message(STATUS "rewrote ${GOLDEN}")
  return()
endif()
if(NOT EXISTS ${GOLDEN})
  message(FATAL_ERROR "${GOLDEN} does not exist; create it with tests/golden/regen.sh <build dir>")
endif()
execute_process(COMMAND ${CMAKE_COMMAND} -E compare_files ${GOLDEN} ${ACTUAL} RESULT_VARIABLE same)
if(NOT same EQUAL 0)
  # The diff goes straight to the test's output (a FATAL_ERROR message would re-wrap it).
  find_program(DIFF diff)
  if(DIFF)
    execute_process(COMMAND ${DIFF} -u --label golden --label this-build ${GOLDEN} ${ACTUAL})
  else()
    execute_process(COMMAND ${CMAKE_COMMAND} -E cat ${GOLDEN} ${ACTUAL})
  endif()
  message(FATAL_ERROR "output differs from ${GOLDEN} (diff above: golden, then this build). If the change is "
                      "intended, regenerate with tests/golden/regen.sh <build dir> and review the diff.")
endif()
