# The one library, built from every module's objects (docs/PACKAGING.md):
#   rkv_shared -> librkv.so.<major> (soname from the major version; only RKV_API symbols exported)
#   rkv_static -> librkv.a          (the tools and tests link this one: they also use internals)
# In the install tree and to a superproject they are Rkv::rkv and Rkv::rkv_static.

get_property(_rkv_modules GLOBAL PROPERTY RKV_MODULES)
set(_rkv_objects "")
set(RKV_PUBLIC_INCLUDE_DIRS ${RKV_GENERATED_INCLUDE_DIR})
foreach(m ${_rkv_modules})
  list(APPEND _rkv_objects $<TARGET_OBJECTS:${m}>)
  get_target_property(_dir ${m} SOURCE_DIR)
  list(APPEND RKV_PUBLIC_INCLUDE_DIRS ${_dir}/include)
endforeach()

# What the objects need at link time, listed once for both libraries.
set(RKV_LINK_DEPS Threads::Threads m ${CMAKE_DL_LIBS})
if(RKV_HAVE_CUDA)
  # Static CUDA runtime (RkvDeps.cmake); the nvcc host objects need the C++ runtime too
  # (static-local guards, exception personality), so libstdc++ is linked explicitly: the
  # link then does not depend on which linker driver CMake picks.
  list(APPEND RKV_LINK_DEPS CUDA::cudart_static stdc++)
endif()
if(RKV_HAVE_HWLOC)
  list(APPEND RKV_LINK_DEPS PkgConfig::HWLOC)
endif()
if(RKV_HAVE_MPI)
  list(APPEND RKV_LINK_DEPS MPI::MPI_C)
endif()
if(RKV_HAVE_BLAS)
  list(APPEND RKV_LINK_DEPS rkv_blas_dep)
endif()

# The same needs as plain link items for static consumers outside this build (the CMake
# package's Rkv::rkv_static and rkv.pc's Libs.private): full paths or library names.
set(RKV_STATIC_LINK_ITEMS "")
if(RKV_HAVE_CUDA)
  list(APPEND RKV_STATIC_LINK_ITEMS ${CUDA_cudart_static_LIBRARY} stdc++ rt)
endif()
if(RKV_HAVE_HWLOC)
  list(APPEND RKV_STATIC_LINK_ITEMS ${HWLOC_LINK_LIBRARIES})
endif()
if(RKV_HAVE_MPI)
  list(APPEND RKV_STATIC_LINK_ITEMS ${MPI_C_LIBRARIES})
endif()
if(RKV_HAVE_BLAS)
  list(APPEND RKV_STATIC_LINK_ITEMS ${BLAS_LIBRARIES})
endif()
list(APPEND RKV_STATIC_LINK_ITEMS m ${CMAKE_DL_LIBS} pthread)

if(RKV_HAVE_CUDA)
  set(_rkv_link_language CUDA)
else()
  set(_rkv_link_language C)
endif()

add_library(rkv_shared SHARED ${_rkv_objects})
add_library(rkv_static STATIC ${_rkv_objects})
set_target_properties(rkv_shared PROPERTIES
  OUTPUT_NAME rkv EXPORT_NAME rkv
  VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}
  LINKER_LANGUAGE ${_rkv_link_language}
  LIBRARY_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib
  # Installed copies keep the search path of dependencies outside the system directories.
  INSTALL_RPATH_USE_LINK_PATH ON)
set_target_properties(rkv_static PROPERTIES
  OUTPUT_NAME rkv EXPORT_NAME rkv_static
  LINKER_LANGUAGE ${_rkv_link_language}
  ARCHIVE_OUTPUT_DIRECTORY ${PROJECT_BINARY_DIR}/lib)

foreach(t rkv_shared rkv_static)
  foreach(d ${RKV_PUBLIC_INCLUDE_DIRS})
    target_include_directories(${t} PUBLIC $<BUILD_INTERFACE:${d}>)
  endforeach()
  target_include_directories(${t} PUBLIC $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
endforeach()

target_link_libraries(rkv_shared PRIVATE ${RKV_LINK_DEPS})
# --exclude-libs: the static CUDA runtime's symbols stay inside the library (a program may
# link its own cudart). --no-undefined: every dependency is recorded in the library, so a
# consumer links -lrkv alone (not under sanitizers, whose runtime lives in the executable).
target_link_options(rkv_shared PRIVATE LINKER:--exclude-libs,ALL)
if(NOT RKV_SANITIZE)
  target_link_options(rkv_shared PRIVATE LINKER:--no-undefined)
endif()

# In this build the static library hands its dependencies (and their headers: the tools and
# the tests include cuda_runtime.h, mpi.h, cblas.h) to whoever links it; installed, it names
# the plain link items instead, so the package needs none of this build's imported targets.
foreach(d ${RKV_LINK_DEPS})
  target_link_libraries(rkv_static PUBLIC $<BUILD_INTERFACE:${d}>)
endforeach()
foreach(d ${RKV_STATIC_LINK_ITEMS})
  target_link_libraries(rkv_static INTERFACE $<INSTALL_INTERFACE:${d}>)
endforeach()

add_library(Rkv::rkv ALIAS rkv_shared)
add_library(Rkv::rkv_static ALIAS rkv_static)
