# Fuzz targets reach tool code (the replay command, the trace reader, the safetensors and .npy
# parsers, the shadow model) through the rkv_toolkit target every test links
# (tests/CMakeLists.txt): no tool source is compiled into a test.
