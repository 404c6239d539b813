/* Placeholder translation unit for a module that has no sources yet (see RkvWarnings.cmake). */
typedef int rkv_empty_module_t;
