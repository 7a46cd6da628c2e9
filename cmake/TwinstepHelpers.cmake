# One way to declare a module (abseil's absl_cc_library); warnings and sanitizers on an INTERFACE target.
add_library(twinstep_options INTERFACE)
target_compile_options(twinstep_options INTERFACE
  "$<$<COMPILE_LANGUAGE:CXX>:-Wall;-Wextra;-Wpedantic;-Wshadow>"
  "$<$<AND:$<COMPILE_LANGUAGE:CXX>,$<BOOL:${TWINSTEP_WERROR}>>:-Werror>")
# GCC 12 at -O3 reports -Wrestrict false positives inside libstdc++'s std::string concatenation (GCC PR 105329):
# keep them visible but not fatal there.
if(CMAKE_CXX_COMPILER_ID STREQUAL "GNU" AND CMAKE_CXX_COMPILER_VERSION VERSION_LESS 13)
  target_compile_options(twinstep_options INTERFACE "$<$<COMPILE_LANGUAGE:CXX>:-Wno-error=restrict>")
endif()
if(TWINSTEP_SANITIZE)   # host C++ only; nvcc never sees these flags
  target_compile_options(twinstep_options INTERFACE
    "$<$<COMPILE_LANGUAGE:CXX>:-fsanitize=${TWINSTEP_SANITIZE};-fno-omit-frame-pointer;-fno-sanitize-recover=all>")
  target_link_options(twinstep_options INTERFACE "-fsanitize=${TWINSTEP_SANITIZE}")
endif()

# twinstep_add_module(NAME schedule SOURCES ... DEPS twinstep::common PRIVATE_DEPS ...)
function(twinstep_add_module)
  cmake_parse_arguments(M "" "NAME" "SOURCES;DEPS;PRIVATE_DEPS" ${ARGN})
  add_library(twinstep_${M_NAME} STATIC ${M_SOURCES})
  add_library(twinstep::${M_NAME} ALIAS twinstep_${M_NAME})
  target_include_directories(twinstep_${M_NAME} PUBLIC ${PROJECT_SOURCE_DIR})
  target_link_libraries(twinstep_${M_NAME} PUBLIC ${M_DEPS} twinstep_options PRIVATE ${M_PRIVATE_DEPS})
endfunction()

# Catch2 v3 (Ubuntu 24.04, GPU machines) or v2 (Debian 12). Provides twinstep_catch_main, which links the
# framework and its main(); tests include "tests/catch.hpp", which picks the right header.
find_package(Catch2 3 QUIET)
if(Catch2_FOUND)
  add_library(twinstep_catch_main INTERFACE)
  target_link_libraries(twinstep_catch_main INTERFACE Catch2::Catch2WithMain)
  target_compile_definitions(twinstep_catch_main INTERFACE TWINSTEP_CATCH3=1)
  set(TWINSTEP_CATCH_VERSION 3)
else()
  find_package(Catch2 2.13 QUIET)
  if(Catch2_FOUND)
    add_library(twinstep_catch_main STATIC ${PROJECT_SOURCE_DIR}/tests/catch_main.cpp)
    target_link_libraries(twinstep_catch_main PUBLIC Catch2::Catch2)
    set(TWINSTEP_CATCH_VERSION 2)
  endif()
endif()
if(Catch2_FOUND)
  include(Catch OPTIONAL RESULT_VARIABLE _catch_module)
endif()

# twinstep_add_test(NAME schedule_tests SOURCES ... DEPS ... [LABELS gpu])
# One executable per module; each TEST_CASE becomes a ctest test (catch_discover_tests).
function(twinstep_add_test)
  cmake_parse_arguments(T "" "NAME" "SOURCES;DEPS;LABELS" ${ARGN})
  if(NOT TARGET twinstep_catch_main)
    message(FATAL_ERROR "Catch2 (v2.13 or v3) not found: apt-get install catch2")
  endif()
  add_executable(${T_NAME} ${T_SOURCES})
  target_include_directories(${T_NAME} PRIVATE ${PROJECT_SOURCE_DIR})
  target_link_libraries(${T_NAME} PRIVATE ${T_DEPS} twinstep::test_support twinstep_catch_main twinstep_options)
  target_compile_definitions(${T_NAME} PRIVATE TWINSTEP_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  set(_labels ${T_LABELS})
  if(NOT _labels)
    set(_labels unit)
  endif()
  # A ctest entry that matches no test case must fail instead of passing silently (a ';' in a TEST_CASE name cuts
  # its ctest filter, and such tests never ran): Catch2 v2 spells the warning NoTests, v3 UnmatchedTestSpec (v3
  # rejects NoTests, so every ctest entry failed on the GPU machines' Catch2 3.4).
  if(TWINSTEP_CATCH_VERSION EQUAL 3)
    set(_unmatched UnmatchedTestSpec)
  else()
    set(_unmatched NoTests)
  endif()
  catch_discover_tests(${T_NAME} EXTRA_ARGS -w ${_unmatched} PROPERTIES LABELS "${_labels}" WORKING_DIRECTORY
                       ${PROJECT_BINARY_DIR})
endfunction()
