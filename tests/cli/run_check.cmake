# Runs one twinstep command and checks its exit code and output (CTest via cmake -P; no shell needed).
# -DCMD="twinstep@@args..." -DEXPECT_RC=N [-DEXPECT_MATCHES="re1@@re2"] [-DEXPECT_LINES=N problem lines]
# [-DJSON_FILE=path]
# [-DJSON_PROCESSES=N: the file is Chrome trace JSON with exactly N process_name events (checked with python3)]
# Lists arrive joined with "@@" (a ";" would not survive add_test's quoting).
string(REPLACE "@@" ";" CMD "${CMD}")
string(REPLACE "@@" ";" EXPECT_MATCHES "${EXPECT_MATCHES}")
execute_process(COMMAND ${CMD} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
set(all "${out}${err}")
if(NOT rc EQUAL EXPECT_RC)
  message(FATAL_ERROR "exit code ${rc}, expected ${EXPECT_RC}; output:\n${all}")
endif()
foreach(re IN LISTS EXPECT_MATCHES)
  if(NOT all MATCHES "${re}")
    message(FATAL_ERROR "output does not match '${re}':\n${all}")
  endif()
endforeach()
if(DEFINED EXPECT_LINES)
  string(REGEX MATCHALL "\n  op [0-9]+ " lines "${all}")
  list(LENGTH lines n)
  if(NOT n EQUAL EXPECT_LINES)
    message(FATAL_ERROR "expected ${EXPECT_LINES} problem lines, got ${n}:\n${all}")
  endif()
endif()
if(all MATCHES "internal error|Assertion|Segmentation|terminate called")
  message(FATAL_ERROR "crash-like output:\n${all}")
endif()
if(DEFINED JSON_FILE)
  execute_process(COMMAND python3 -c
    "import json,sys; d=json.load(open(sys.argv[1])); p={e['pid'] for e in d['traceEvents'] if e.get('ph')=='M' and e.get('name')=='process_name'}; x=[e for e in d['traceEvents'] if e.get('ph')=='X']; assert all(e['pid'] in p for e in x); print(len(p))"
    ${JSON_FILE} RESULT_VARIABLE prc OUTPUT_VARIABLE pout ERROR_VARIABLE perr OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT prc EQUAL 0)
    message(FATAL_ERROR "${JSON_FILE} is not valid Chrome trace JSON: ${perr}")
  endif()
  if(NOT pout EQUAL JSON_PROCESSES)
    message(FATAL_ERROR "${JSON_FILE}: ${pout} processes, expected ${JSON_PROCESSES}")
  endif()
endif()
