# Block-manager tool tests (included by tests/CMakeLists.txt):
#  - every replay/<name>.txt script runs through `rkv replay` and must print exactly
#    replay/<name>.json and exit with the status in replay/<name>.rc (0 when absent)
#    (blockmgr_replay_<name>);
#  - a short `rkv stress` run with the full invariant walk after every op;
#  - a tiny `rkv bench blockmgr` run (smoke test: options, table, exit status).
file(GLOB RKV_BM_REPLAYS CONFIGURE_DEPENDS ${CMAKE_CURRENT_LIST_DIR}/replay/*.txt)
foreach(script ${RKV_BM_REPLAYS})
  get_filename_component(name ${script} NAME_WE)
  add_test(NAME blockmgr_replay_${name}
           COMMAND ${CMAKE_COMMAND} -DRKV=$<TARGET_FILE:rkv> -DSCRIPT=${script}
                   -DEXPECTED=${CMAKE_CURRENT_LIST_DIR}/replay/${name}.json
                   -P ${CMAKE_CURRENT_LIST_DIR}/replay_compare.cmake)
  set_tests_properties(blockmgr_replay_${name} PROPERTIES TIMEOUT 60 SKIP_RETURN_CODE 77
                       LABELS "unit;blockmgr")
endforeach()

add_test(NAME blockmgr_stress_check_every_op
         COMMAND $<TARGET_FILE:rkv> stress --ops 30000 --seed 3 --check-every 1)
set_tests_properties(blockmgr_stress_check_every_op PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
                     LABELS "unit;blockmgr")

add_test(NAME blockmgr_stress_odd_shape
         COMMAND $<TARGET_FILE:rkv> stress --ops 100000 --seed 4 --blocks 97 --layers 3
                 --kv-heads 1 --block-size 3 --max-seqs 9 --max-append 17 --check-every 100)
set_tests_properties(blockmgr_stress_odd_shape PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
                     LABELS "unit;blockmgr")

# Prefix cache on: template requests sharing cached groups, inserts, protection, clears, and
# compactions that keep (or break) protected prefixes, against the shadow's prefix model.
add_test(NAME blockmgr_stress_prefix
         COMMAND $<TARGET_FILE:rkv> stress --prefix-cache --ops 300000 --seed 5 --blocks 96
                 --layers 2 --kv-heads 2 --block-size 2 --max-seqs 12 --max-append 9
                 --check-every 10)
set_tests_properties(blockmgr_stress_prefix PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
                     LABELS "unit;blockmgr")

add_test(NAME blockmgr_bench_smoke
         COMMAND $<TARGET_FILE:rkv> bench blockmgr --layers 2 --kv-heads 2 --batch 8 --steps 64
                 --budget 64 --buffer 16 --reps 2)
set_tests_properties(blockmgr_bench_smoke PROPERTIES TIMEOUT 120 SKIP_RETURN_CODE 77
                     LABELS "unit;blockmgr")
