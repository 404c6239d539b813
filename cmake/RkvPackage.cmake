# Install tree, pkg-config file, CMake package and the CPack (.deb) configuration
# (docs/PACKAGING.md). Everything installed is relocatable: the .pc file and the CMake files
# find the prefix from their own location, so `cmake --install --prefix` anywhere works.
include(CMakePackageConfigHelpers)

set(RKV_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/Rkv)
set(RKV_INSTALL_PKGCONFIGDIR ${CMAKE_INSTALL_LIBDIR}/pkgconfig)

# Which optional parts are built in: TRUE/FALSE for RkvConfig.cmake, yes/no for rkv.pc.
foreach(c CUDA NCCL HWLOC MPI BLAS)
  if(RKV_HAVE_${c})
    set(RKV_PKG_HAVE_${c} TRUE)
    set(RKV_PC_HAVE_${c} yes)
  else()
    set(RKV_PKG_HAVE_${c} FALSE)
    set(RKV_PC_HAVE_${c} no)
  endif()
endforeach()

# ---- Libraries, tool, headers ----------------------------------------------------------------
install(TARGETS rkv_shared rkv_static EXPORT RkvTargets
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
set_target_properties(rkv PROPERTIES INSTALL_RPATH_USE_LINK_PATH ON)
install(TARGETS rkv RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
# Every module's public headers (whatever <module>/include/rkv holds) plus the generated one.
foreach(d ${RKV_PUBLIC_INCLUDE_DIRS})
  install(DIRECTORY ${d}/rkv DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} FILES_MATCHING PATTERN "*.h")
endforeach()
install(FILES ${PROJECT_SOURCE_DIR}/LICENSE ${PROJECT_SOURCE_DIR}/docs/PACKAGING.md
        DESTINATION ${CMAKE_INSTALL_DOCDIR})
# The Python bindings (pure Python over librkv.so; docs/PYTHON.md), where Debian's python3 looks.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/tools/python/librkv DESTINATION lib/python3/dist-packages
        FILES_MATCHING PATTERN "*.py" PATTERN "__pycache__" EXCLUDE)

# ---- pkg-config ------------------------------------------------------------------------------
# Libs.private turns RKV_STATIC_LINK_ITEMS into -L/-l flags (-L only outside the linker's own
# directories). Nothing goes into Requires.private: pkg-config resolves those packages for
# --cflags too, so a shared-only consumer would need e.g. hwloc's .pc file installed.
set(_rkv_pc_private "")
foreach(item ${RKV_STATIC_LINK_ITEMS})
  if(IS_ABSOLUTE "${item}")
    get_filename_component(_dir "${item}" DIRECTORY)
    get_filename_component(_name "${item}" NAME)
    string(REGEX REPLACE "^lib" "" _name "${_name}")
    string(REGEX REPLACE "\\.(a|so)(\\.[0-9.]*)?$" "" _name "${_name}")
    list(FIND CMAKE_C_IMPLICIT_LINK_DIRECTORIES "${_dir}" _implicit)
    if(_implicit LESS 0)
      list(APPEND _rkv_pc_private "-L${_dir}")
    endif()
    list(APPEND _rkv_pc_private "-l${_name}")
  else()
    list(APPEND _rkv_pc_private "-l${item}")
  endif()
endforeach()
list(REMOVE_DUPLICATES _rkv_pc_private)
list(JOIN _rkv_pc_private " " RKV_PC_LIBS_PRIVATE)
# The prefix relative to the .pc file's directory (${pcfiledir}, pkg-config and pkgconf).
file(RELATIVE_PATH RKV_PC_PREFIX_FROM_PCDIR /prefix/${RKV_INSTALL_PKGCONFIGDIR} /prefix)
string(REGEX REPLACE "/$" "" RKV_PC_PREFIX_FROM_PCDIR "${RKV_PC_PREFIX_FROM_PCDIR}")
configure_file(${PROJECT_SOURCE_DIR}/cmake/rkv.pc.in ${PROJECT_BINARY_DIR}/rkv.pc @ONLY)
install(FILES ${PROJECT_BINARY_DIR}/rkv.pc DESTINATION ${RKV_INSTALL_PKGCONFIGDIR})

# ---- CMake package: find_package(Rkv 0.2 REQUIRED [COMPONENTS cuda nccl hwloc mpi blas]) -------
install(EXPORT RkvTargets NAMESPACE Rkv:: FILE RkvTargets.cmake DESTINATION ${RKV_INSTALL_CMAKEDIR})
configure_package_config_file(${PROJECT_SOURCE_DIR}/cmake/RkvConfig.cmake.in
  ${PROJECT_BINARY_DIR}/RkvConfig.cmake INSTALL_DESTINATION ${RKV_INSTALL_CMAKEDIR})
# 0.x: the same major version, at least the requested minor (semantic versioning).
write_basic_package_version_file(${PROJECT_BINARY_DIR}/RkvConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMajorVersion)
install(FILES ${PROJECT_BINARY_DIR}/RkvConfig.cmake ${PROJECT_BINARY_DIR}/RkvConfigVersion.cmake
        DESTINATION ${RKV_INSTALL_CMAKEDIR})

# ---- CPack: `cpack -G DEB` (or TGZ) from the build directory ---------------------------------
set(CPACK_PACKAGE_NAME librkv)
set(CPACK_PACKAGE_VENDOR librkv)
set(CPACK_PACKAGE_CONTACT "librkv maintainers")
set(CPACK_PACKAGE_VERSION ${PROJECT_VERSION})
set(CPACK_PACKAGE_DESCRIPTION_SUMMARY
    "Paged KV-cache block manager with R-KV eviction and a continuous-batching scheduler")
set(CPACK_RESOURCE_FILE_LICENSE ${PROJECT_SOURCE_DIR}/LICENSE)
set(CPACK_PACKAGING_INSTALL_PREFIX /usr)
set(CPACK_DEBIAN_FILE_NAME DEB-DEFAULT)
# Debug information stays in the build tree (install strips the library and the tool).
set(CPACK_STRIP_FILES ON)
set(CPACK_DEBIAN_PACKAGE_SECTION libdevel)
# A shlibs file and the ldconfig trigger for librkv.so.<major>.
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS ON)
set(CPACK_DEBIAN_PACKAGE_GENERATE_SHLIBS_POLICY ">=")
# Depends: from the libraries librkv.so and rkv really load (hwloc, OpenBLAS, Open MPI,
# libstdc++ ...), where dpkg-shlibdeps (dpkg-dev) is there to compute them.
find_program(RKV_DPKG_SHLIBDEPS dpkg-shlibdeps)
if(RKV_DPKG_SHLIBDEPS)
  set(CPACK_DEBIAN_PACKAGE_SHLIBDEPS ON)
endif()
set(CPACK_SOURCE_IGNORE_FILES "/build/;/\\\\.git/")
include(CPack)
