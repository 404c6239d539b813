# Packaging (docs/PACKAGING.md), each a few seconds:
#  install_exports            librkv.so: soname librkv.so.<major>, only rkv_ symbols exported,
#                             every RKV_API function of the public headers exported, no CUDA
#                             library among its NEEDED entries
#  install_consumer_pkgconfig install into a fresh prefix; tests/install/consumer/consumer.c
#                             built there with plain cc and `pkg-config rkv` (shared and static),
#                             run; ldd: librkv from the prefix, no CUDA library; and the
#                             executor's toy engine loop (docs/examples/toy_engine.c) built
#                             and served there (swap and fork-optimistic workloads)
#  install_consumer_cmake     the same through find_package(Rkv) (Rkv::rkv, Rkv::rkv_static),
#                             and find_package failing for a newer major version and for a
#                             component that was not built
#  install_deb                cpack -G DEB: the package lists the libraries, headers, rkv.pc,
#                             the CMake files and the tool
# They skip (77) only where a tool they need is missing (pkg-config, dpkg-deb, binutils, ldd).
set(_inst ${CMAKE_CURRENT_LIST_DIR})
set(_inst_work ${PROJECT_BINARY_DIR}/tests/install)
get_target_property(_inst_soname rkv_shared SOVERSION)

# Components the consumer must find (those built in) and ones that must fail (one not built,
# when there is one, and an unknown name).
set(_inst_have "")
set(_inst_absent "")
foreach(c cuda nccl hwloc mpi blas)
  string(TOUPPER ${c} _uc)
  if(RKV_HAVE_${_uc})
    list(APPEND _inst_have ${c})
  elseif(NOT _inst_absent)
    list(APPEND _inst_absent ${c})
  endif()
endforeach()
list(APPEND _inst_absent frobnicate)

# The consumer is built like the library: same compiler, and the sanitizer flags under
# RKV_SANITIZE (an instrumented librkv needs an instrumented program).
set(_inst_flags "")
if(RKV_SANITIZE)
  set(_inst_flags "-fsanitize=address,undefined -fno-sanitize-recover=all")
endif()
set(_inst_env CMAKE=${CMAKE_COMMAND} CC=${CMAKE_C_COMPILER} "RKV_CONSUMER_FLAGS=${_inst_flags}"
    RKV_SOURCE_DIR=${PROJECT_SOURCE_DIR})

add_test(NAME install_exports
         COMMAND sh ${_inst}/check_exports.sh $<TARGET_FILE:rkv_shared> librkv.so.${_inst_soname}
                 ${RKV_PUBLIC_INCLUDE_DIRS})
add_test(NAME install_consumer_pkgconfig
         COMMAND sh ${_inst}/check_consumer.sh pkgconfig ${PROJECT_BINARY_DIR} ${_inst_work}/pkgconfig)
add_test(NAME install_consumer_cmake
         COMMAND sh ${_inst}/check_consumer.sh cmake ${PROJECT_BINARY_DIR} ${_inst_work}/cmake
                 "${_inst_have}" "${_inst_absent}")
add_test(NAME install_deb
         COMMAND sh ${_inst}/check_deb.sh ${PROJECT_BINARY_DIR} ${_inst_work}/deb ${PROJECT_VERSION}
                 librkv.so.${_inst_soname})
set_tests_properties(install_exports install_consumer_pkgconfig install_consumer_cmake install_deb
                     PROPERTIES SKIP_RETURN_CODE 77 TIMEOUT 120 LABELS "integration;install")
set_tests_properties(install_consumer_pkgconfig install_consumer_cmake PROPERTIES
                     ENVIRONMENT "${_inst_env}")
set_tests_properties(install_deb PROPERTIES ENVIRONMENT "CPACK=${CMAKE_CPACK_COMMAND}")
