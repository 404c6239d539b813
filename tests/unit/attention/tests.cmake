# Smoke runs of `rkv bench attention` on tiny shapes (3 timed calls, no claims about speed):
# keep the benchmark's setup, workspace sizing, decode/prefill and reporting paths working.
add_test(NAME attention_bench_smoke
         COMMAND $<TARGET_FILE:rkv> bench attention --batch 2,3 --ctx 40 --q-heads 8 --kv-heads 2
                 --dtype f16 --min-time 0 --scores)
add_test(NAME attention_bench_prefill_smoke
         COMMAND $<TARGET_FILE:rkv> bench attention --batch 2 --ctx 70 --q-heads 4 --kv-heads 4
                 --head-dim 64 --prefill 20 --min-time 0)
set_tests_properties(attention_bench_smoke attention_bench_prefill_smoke PROPERTIES
                     SKIP_RETURN_CODE 77 TIMEOUT 60 LABELS "unit;attention")
