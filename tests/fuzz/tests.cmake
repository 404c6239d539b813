# Fuzz targets that compile tool sources in (tools/rkv/*.c) need the tool's include paths,
# the generated rt_commands.h among them; the same for the libFuzzer build (fuzz_<name>) and
# the corpus replay driver every other build makes (fuzz_<name>_replay).
foreach(t fuzz_script fuzz_trace fuzz_safetensors)
  foreach(suffix "" "_replay")
    if(TARGET ${t}${suffix})
      target_include_directories(${t}${suffix} PRIVATE ${PROJECT_BINARY_DIR}/tools
                                 ${PROJECT_SOURCE_DIR}/tools/rkv)
    endif()
  endforeach()
endforeach()
