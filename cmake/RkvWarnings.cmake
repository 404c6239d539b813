# Warnings, sanitizers and the per-module helper.
set(RKV_C_WARNINGS -Wall -Wextra -Wpedantic -Wshadow -Wstrict-prototypes -Wmissing-prototypes
    -Wno-unused-parameter)
if(RKV_WERROR)
  list(APPEND RKV_C_WARNINGS -Werror)
endif()
if(RKV_SANITIZE AND RKV_TSAN)
  # ThreadSanitizer (the tsan preset): the tests whose code runs threads (CPU attention
  # workers, thread-local TP ranks). Everything else RKV_SANITIZE implies (no BLAS, tests that
  # preload a sanitizer runtime skipped) holds too.
  add_compile_options(-fsanitize=thread -fno-omit-frame-pointer)
  add_link_options(-fsanitize=thread)
elseif(RKV_SANITIZE)
  add_compile_options(-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer)
  add_link_options(-fsanitize=address,undefined -fno-sanitize-recover=all)
endif()
if(RKV_FUZZ)
  # Coverage feedback from the library too, not only from the harnesses: every C object is
  # instrumented (the fuzz targets then link libFuzzer itself with -fsanitize=fuzzer).
  add_compile_options($<$<COMPILE_LANGUAGE:C>:-fsanitize=fuzzer-no-link>)
  add_link_options(-fsanitize=fuzzer-no-link)
endif()

# rkv_add_module(NAME SOURCES... [DEPS ...] [CUDA_SOURCES ...])
# An object library rkv_<name>: public headers in <module>/include, private in <module>/src.
# Modules are compile units only; their objects all go into the one library, librkv.so.<major>
# and librkv.a (cmake/RkvLibrary.cmake), which the tools and tests link. DEPS are other modules
# (for their public headers: a module sees only the headers of the modules it depends on, which
# is what keeps the layering) or imported targets that provide headers; what the library links
# is listed once, in RkvLibrary.cmake.
function(rkv_add_module name)
  cmake_parse_arguments(M "" "" "SOURCES;DEPS;CUDA_SOURCES;PRIVATE_DEPS" ${ARGN})
  set(srcs ${M_SOURCES})
  if(RKV_HAVE_CUDA)
    list(APPEND srcs ${M_CUDA_SOURCES})
  endif()
  if(NOT srcs)
    # A module whose sources are still being written: keep the target so dependents build.
    set(srcs ${PROJECT_SOURCE_DIR}/cmake/empty_module.c)
  endif()
  add_library(rkv_${name} OBJECT ${srcs})
  target_include_directories(rkv_${name} PUBLIC ${CMAKE_CURRENT_SOURCE_DIR}/include
                             PRIVATE ${CMAKE_CURRENT_SOURCE_DIR}/src ${PROJECT_SOURCE_DIR}/runtime/internal)
  target_compile_options(rkv_${name} PRIVATE $<$<COMPILE_LANGUAGE:C>:${RKV_C_WARNINGS}>)
  target_compile_definitions(rkv_${name} PRIVATE RKV_DEBUG=${RKV_DEBUG} $<$<BOOL:${RKV_HAVE_CUDA}>:RKV_HAVE_CUDA=1>)
  target_link_libraries(rkv_${name} PUBLIC ${M_DEPS} PRIVATE ${M_PRIVATE_DEPS})
  if(RKV_HAVE_CUDA AND M_CUDA_SOURCES)
    target_link_libraries(rkv_${name} PRIVATE CUDA::cudart_static)
    target_compile_options(rkv_${name} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo --expt-relaxed-constexpr>)
  endif()
  set_property(GLOBAL APPEND PROPERTY RKV_MODULES rkv_${name})
endfunction()
