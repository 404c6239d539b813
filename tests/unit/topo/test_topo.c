/* Topology snapshot and rank placement on hwloc synthetic topologies (2 and 4 NUMA nodes,
 * GPU locality given explicitly since synthetic topologies have no PCI devices), GPU discovery
 * and locality from an hwloc XML fixture with PCI devices, plus a smoke
 * test on this machine (snapshot, binding, NUMA-bound host memory). Without hwloc the
 * synthetic cases are skipped and the fallback snapshot is tested instead. */
#include <rkv/topo.h>

#include "rkv_test.h"

/* Every node's cores are covered by its ranks' slices exactly once when it has at least as
 * many cores as ranks; every slice lies inside its node. */
static void expect_disjoint_cover(const rkv_topo *t, const rkv_topo_placement *p, uint32_t n) {
  for (uint32_t j = 0; j < rkv_topo_num_numa(t); j++) {
    uint32_t nc = 0, users = 0;
    rkv_topo_numa_cores(t, j, &nc);
    uint32_t hits[256] = {0};
    for (uint32_t r = 0; r < n; r++) {
      if (p[r].core_numa != (int32_t)j) continue;
      users++;
      EXPECT(p[r].core_count >= 1);
      EXPECT(p[r].core_first + p[r].core_count <= nc);
      for (uint32_t k = p[r].core_first; k < p[r].core_first + p[r].core_count && k < 256; k++)
        hits[k]++;
    }
    if (users == 0 || nc < users) continue;
    for (uint32_t k = 0; k < nc && k < 256; k++) EXPECT_EQ_INT(hits[k], 1);
  }
}

static rkv_topo *synth(const char *desc) {
  rkv_topo_config cfg = RKV_TOPO_CONFIG_INIT;
  cfg.synthetic = desc;
  rkv_topo *t = NULL;
  char err[256];
  rkv_status s = rkv_topo_create(&cfg, &t, err, sizeof err);
  if (s != RKV_OK) fprintf(stderr, "synthetic \"%s\": %s: %s\n", desc, rkv_status_name(s), err);
  EXPECT_OK(s);
  return t;
}

static void test_four_nodes(void) {
  rkv_topo *t = synth("pack:2 numa:2 core:4 pu:2");
  if (!t) return;
  EXPECT_EQ_INT(rkv_topo_get_source(t), RKV_TOPO_SOURCE_SYNTHETIC);
  EXPECT_EQ_INT(rkv_topo_num_packages(t), 2);
  EXPECT_EQ_INT(rkv_topo_num_numa(t), 4);
  EXPECT_EQ_INT(rkv_topo_num_cores(t), 16);
  EXPECT_EQ_INT(rkv_topo_num_pus(t), 32);
  EXPECT_EQ_INT(rkv_topo_num_gpus(t), 0);
  EXPECT_OK(rkv_topo_check(t));
  for (uint32_t j = 0; j < 4; j++) {
    uint32_t n = 0;
    const uint32_t *cores = rkv_topo_numa_cores(t, j, &n);
    EXPECT_EQ_INT(n, 4);
    EXPECT_EQ_INT(rkv_topo_get_numa(t, j)->num_pus, 8);
    for (uint32_t k = 0; cores && k < n; k++) {
      EXPECT_EQ_INT(cores[k], 4 * j + k);
      const rkv_topo_core *c = rkv_topo_get_core(t, cores[k]);
      EXPECT_EQ_INT(c->package, j / 2);
      EXPECT_EQ_INT(c->num_pus, 2);
    }
  }
  EXPECT(rkv_topo_get_numa(t, 4) == NULL);
  EXPECT(rkv_topo_get_core(t, 16) == NULL);
  EXPECT(rkv_topo_get_gpu(t, 0) == NULL);
  EXPECT(rkv_topo_numa_cores(t, 4, NULL) == NULL);
  EXPECT_EQ_INT(rkv_topo_find_gpu(t, "0000:3b:00.0"), -1);

  rkv_topo_placement p[8];
  /* One rank per GPU, GPU r local to node r: rank r gets node r and all its cores. */
  const int32_t fwd[4] = {0, 1, 2, 3}, rev[4] = {3, 2, 1, 0};
  EXPECT_OK(rkv_topo_place(t, 4, fwd, p));
  for (uint32_t r = 0; r < 4; r++) {
    EXPECT_EQ_INT(p[r].numa, r);
    EXPECT_EQ_INT(p[r].core_numa, r);
    EXPECT_EQ_INT(p[r].core_first, 0);
    EXPECT_EQ_INT(p[r].core_count, 4);
    EXPECT_EQ_INT(p[r].reason, RKV_TOPO_PLACE_GPU_LOCAL);
  }
  EXPECT_OK(rkv_topo_place(t, 4, rev, p));
  for (uint32_t r = 0; r < 4; r++) EXPECT_EQ_INT(p[r].numa, 3 - r);
  expect_disjoint_cover(t, p, 4);

  /* Unknown locality: balanced over the nodes, then two ranks per node share its cores. */
  EXPECT_OK(rkv_topo_place(t, 8, NULL, p));
  for (uint32_t r = 0; r < 8; r++) {
    EXPECT_EQ_INT(p[r].numa, r % 4);
    EXPECT_EQ_INT(p[r].reason, RKV_TOPO_PLACE_BALANCED);
    EXPECT_EQ_INT(p[r].core_count, 2);
    EXPECT_EQ_INT(p[r].core_first, r < 4 ? 0 : 2);
  }
  expect_disjoint_cover(t, p, 8);

  /* Two GPUs on node 1 (a common PCIe switch): both ranks there, cores halved. */
  const int32_t same[2] = {1, 1};
  EXPECT_OK(rkv_topo_place(t, 2, same, p));
  EXPECT_EQ_INT(p[0].numa, 1);
  EXPECT_EQ_INT(p[1].numa, 1);
  EXPECT_EQ_INT(p[0].core_first, 0);
  EXPECT_EQ_INT(p[0].core_count, 2);
  EXPECT_EQ_INT(p[1].core_first, 2);
  EXPECT_EQ_INT(p[1].core_count, 2);

  /* Mixed: known ranks claim their nodes first; unknown ones fill the emptiest. */
  const int32_t mixed[4] = {-1, 2, -1, 0};
  EXPECT_OK(rkv_topo_place(t, 4, mixed, p));
  EXPECT_EQ_INT(p[0].numa, 1);
  EXPECT_EQ_INT(p[1].numa, 2);
  EXPECT_EQ_INT(p[2].numa, 3);
  EXPECT_EQ_INT(p[3].numa, 0);
  EXPECT_EQ_INT(p[0].reason, RKV_TOPO_PLACE_BALANCED);
  EXPECT_EQ_INT(p[1].reason, RKV_TOPO_PLACE_GPU_LOCAL);

  /* Bad input changes nothing. */
  const int32_t bad[2] = {0, 4};
  p[0].numa = 77;
  EXPECT_STATUS(rkv_topo_place(t, 2, bad, p), RKV_ERR_INVALID_ARG);
  EXPECT_EQ_INT(p[0].numa, 77);
  EXPECT(strstr(rkv_topo_last_error(t), "node 4") != NULL);
  EXPECT_STATUS(rkv_topo_place(t, 0, NULL, p), RKV_ERR_INVALID_ARG);

  /* A synthetic topology is not this machine: no binding, and memory is plain. */
  EXPECT_OK(rkv_topo_place(t, 1, fwd + 2, p));
  EXPECT_STATUS(rkv_topo_bind_thread(t, p), RKV_ERR_UNSUPPORTED);
  rkv_host_buffer b;
  EXPECT_OK(rkv_topo_host_alloc(t, 2, 1 << 20, RKV_TOPO_HOST_PIN, &b));
  EXPECT(b.ptr != NULL);
  EXPECT(!b.bound);
  EXPECT(!b.pinned || rkv_build_has_cuda());
  EXPECT_EQ_INT(b.numa, -1);
  EXPECT_EQ_INT(((unsigned char *)b.ptr)[12345], 0);
  EXPECT_EQ_INT((uintptr_t)b.ptr % 4096, 0);
  rkv_topo_host_free(t, &b);
  EXPECT(b.ptr == NULL);
  EXPECT_STATUS(rkv_topo_host_alloc(t, 4, 64, 0, &b), RKV_ERR_INVALID_ARG);
  EXPECT_STATUS(rkv_topo_host_alloc(t, 0, 0, 0, &b), RKV_ERR_INVALID_ARG);
  rkv_topo_destroy(t);
}

static void test_two_nodes(void) {
  rkv_topo *t = synth("numa:2 core:8 pu:1");
  if (!t) return;
  EXPECT_EQ_INT(rkv_topo_num_numa(t), 2);
  EXPECT_EQ_INT(rkv_topo_num_cores(t), 16);
  rkv_topo_placement p[6];
  const int32_t gpus[2] = {1, 0};
  EXPECT_OK(rkv_topo_place(t, 2, gpus, p));
  EXPECT_EQ_INT(p[0].numa, 1);
  EXPECT_EQ_INT(p[1].numa, 0);
  EXPECT_EQ_INT(p[0].core_count, 8);
  const int32_t four[4] = {0, 0, 1, 1};
  EXPECT_OK(rkv_topo_place(t, 4, four, p));
  EXPECT_EQ_INT(p[0].core_first, 0);
  EXPECT_EQ_INT(p[1].core_first, 4);
  EXPECT_EQ_INT(p[2].numa, 1);
  EXPECT_EQ_INT(p[3].core_first, 4);
  expect_disjoint_cover(t, p, 4);
  /* Uneven split: 3 ranks on 8 cores -> 2, 3, 3 (floor boundaries), still a cover. */
  const int32_t three[3] = {0, 0, 0};
  EXPECT_OK(rkv_topo_place(t, 3, three, p));
  EXPECT_EQ_INT(p[0].core_count + p[1].core_count + p[2].core_count, 8);
  expect_disjoint_cover(t, p, 3);
  rkv_topo_destroy(t);

  /* More ranks than cores: each still gets one core (shared). */
  t = synth("numa:2 core:1 pu:1");
  if (!t) return;
  EXPECT_OK(rkv_topo_place(t, 6, NULL, p));
  for (uint32_t r = 0; r < 6; r++) {
    EXPECT_EQ_INT(p[r].core_count, 1);
    EXPECT_EQ_INT(p[r].core_first, 0);
    EXPECT_EQ_INT(p[r].numa, r % 2);
  }
  rkv_topo_destroy(t);
}

/* Two memory nodes per package (DDR + HBM/CXL style): the second has no cores of its own, so
 * a GPU local to it keeps its swap pool there and borrows its package's cores. */
static void test_memory_only_nodes(void) {
  rkv_topo *t = synth("pack:2 [numa] [numa] core:2 pu:1");
  if (!t) return;
  EXPECT_EQ_INT(rkv_topo_num_numa(t), 4);
  EXPECT_EQ_INT(rkv_topo_num_cores(t), 4);
  EXPECT_OK(rkv_topo_check(t));
  const int32_t want_cores[4] = {2, 0, 2, 0}, want_cpu_node[4] = {0, 0, 2, 2};
  for (uint32_t j = 0; j < 4; j++) {
    EXPECT_EQ_INT(rkv_topo_get_numa(t, j)->num_cores, want_cores[j]);
    EXPECT_EQ_INT(rkv_topo_get_numa(t, j)->cpu_node, want_cpu_node[j]);
  }
  EXPECT_EQ_INT(rkv_topo_get_core(t, 3)->numa, 2);
  rkv_topo_placement p[3];
  const int32_t gpus[3] = {1, 3, 2};
  EXPECT_OK(rkv_topo_place(t, 3, gpus, p));
  EXPECT_EQ_INT(p[0].numa, 1);
  EXPECT_EQ_INT(p[0].core_numa, 0);
  EXPECT_EQ_INT(p[0].reason, RKV_TOPO_PLACE_NO_LOCAL_CORES);
  EXPECT_EQ_INT(p[0].core_count, 2);
  EXPECT_EQ_INT(p[1].numa, 3);
  EXPECT_EQ_INT(p[1].core_numa, 2);
  EXPECT_EQ_INT(p[2].numa, 2);
  EXPECT_EQ_INT(p[2].reason, RKV_TOPO_PLACE_GPU_LOCAL);
  EXPECT_EQ_INT(p[1].core_count + p[2].core_count, 2); /* node 2's two cores, shared out */
  expect_disjoint_cover(t, p, 3);
  /* Balanced ranks never land on a memory-only node. */
  EXPECT_OK(rkv_topo_place(t, 3, NULL, p));
  for (uint32_t r = 0; r < 3; r++) EXPECT(p[r].numa == 0 || p[r].numa == 2);
  rkv_topo_destroy(t);
}

/* GPU discovery and locality from an hwloc XML fixture (two sockets, four NVIDIA GPUs: two on
 * socket 0, one on socket 1, one above both; plus a NIC and an NVSwitch that are not GPUs). */
static void test_xml_gpus(void) {
  rkv_topo_config cfg = RKV_TOPO_CONFIG_INIT;
  cfg.xml_path = RKV_SOURCE_DIR "/tests/unit/topo/two_socket_4gpu.xml";
  rkv_topo *t = NULL;
  char err[256];
  rkv_status s = rkv_topo_create(&cfg, &t, err, sizeof err);
  if (s != RKV_OK) fprintf(stderr, "xml: %s: %s\n", rkv_status_name(s), err);
  EXPECT_OK(s);
  if (!t) return;
  EXPECT_EQ_INT(rkv_topo_get_source(t), RKV_TOPO_SOURCE_XML);
  EXPECT_EQ_INT(rkv_topo_num_numa(t), 2);
  EXPECT_EQ_INT(rkv_topo_num_cores(t), 8);
  EXPECT_EQ_INT(rkv_topo_num_gpus(t), 4);
  EXPECT_OK(rkv_topo_check(t));
  const char *ids[4] = {"0000:1b:00.0", "0000:3b:00.0", "0000:9b:00.0", "0000:cb:00.0"};
  const int32_t nodes[4] = {0, 0, 1, -1};
  const uint32_t local[4] = {4, 4, 4, 8};
  int32_t gpu_numa[4];
  for (uint32_t g = 0; g < 4 && g < rkv_topo_num_gpus(t); g++) {
    const rkv_topo_gpu *gp = rkv_topo_get_gpu(t, g);
    EXPECT_STREQ(gp->pci_bus_id, ids[g]);
    EXPECT_EQ_INT(gp->vendor_id, 0x10de);
    EXPECT_EQ_INT(gp->device_id, 0x2330);
    EXPECT_EQ_INT(gp->numa, nodes[g]);
    EXPECT_EQ_INT(gp->num_local_cores, local[g]);
    EXPECT_EQ_INT(gp->cuda_device, -1); /* XML: not this machine's devices */
    gpu_numa[g] = gp->numa;
  }
  /* Bus ids match case-insensitively and without the domain; the NIC is not a GPU. */
  EXPECT_EQ_INT(rkv_topo_find_gpu(t, "3B:00.0"), 1);
  EXPECT_EQ_INT(rkv_topo_find_gpu(t, "0000:9B:00.0"), 2);
  EXPECT_EQ_INT(rkv_topo_find_gpu(t, "0000:2a:00.0"), -1);
  EXPECT_EQ_INT(rkv_topo_find_gpu(t, "0000:9c:00.0"), -1);
  EXPECT_EQ_INT(rkv_topo_find_gpu(t, "garbage"), -1);

  /* Rank r drives GPU r: two ranks share socket 0's cores, the GPU above both sockets goes
   * to the emptier socket. */
  rkv_topo_placement p[4];
  EXPECT_OK(rkv_topo_place(t, 4, gpu_numa, p));
  EXPECT_EQ_INT(p[0].numa, 0);
  EXPECT_EQ_INT(p[1].numa, 0);
  EXPECT_EQ_INT(p[2].numa, 1);
  EXPECT_EQ_INT(p[3].numa, 1);
  EXPECT_EQ_INT(p[3].reason, RKV_TOPO_PLACE_BALANCED);
  EXPECT_EQ_INT(p[0].core_count, 2);
  EXPECT_EQ_INT(p[1].core_first, 2);
  expect_disjoint_cover(t, p, 4);
  EXPECT_STATUS(rkv_topo_bind_thread(t, &p[0]), RKV_ERR_UNSUPPORTED);
  rkv_topo_destroy(t);

  cfg.xml_path = RKV_SOURCE_DIR "/tests/unit/topo/no_such_file.xml";
  EXPECT_STATUS(rkv_topo_create(&cfg, &t, err, sizeof err), RKV_ERR_FORMAT);
  EXPECT(strstr(err, "no_such_file") != NULL);
  cfg.synthetic = "pack:2";
  EXPECT_STATUS(rkv_topo_create(&cfg, &t, err, sizeof err), RKV_ERR_INVALID_ARG);
}

static void test_bad_synthetic(void) {
  rkv_topo_config cfg = RKV_TOPO_CONFIG_INIT;
  cfg.synthetic = "bogus:3 gizmo";
  rkv_topo *t = (rkv_topo *)1;
  char err[256];
  EXPECT_STATUS(rkv_topo_create(&cfg, &t, err, sizeof err), RKV_ERR_FORMAT);
  EXPECT(t == NULL);
  EXPECT(strstr(err, "bogus") != NULL);
  cfg.struct_size = 3;
  EXPECT_STATUS(rkv_topo_create(&cfg, &t, err, sizeof err), RKV_ERR_INVALID_ARG);
}

typedef struct counting {
  long live;
} counting;
static void *count_alloc(void *ctx, size_t size, size_t align) {
  void *p = NULL;
  if (posix_memalign(&p, align < sizeof(void *) ? sizeof(void *) : align, size) != 0) return NULL;
  ((counting *)ctx)->live++;
  return p;
}
static void count_free(void *ctx, void *p, size_t size) {
  (void)size;
  ((counting *)ctx)->live--;
  free(p);
}

static void test_this_machine(void) {
  counting k = {0};
  rkv_allocator a = {count_alloc, count_free, &k};
  rkv_topo_config cfg = RKV_TOPO_CONFIG_INIT;
  cfg.allocator = &a;
  rkv_topo *t = NULL;
  char err[256];
  EXPECT_OK(rkv_topo_create(&cfg, &t, err, sizeof err));
  if (!t) return;
  EXPECT(rkv_topo_get_source(t) ==
             (rkv_build_has_hwloc() ? RKV_TOPO_SOURCE_HWLOC : RKV_TOPO_SOURCE_FALLBACK) ||
         rkv_topo_get_source(t) == RKV_TOPO_SOURCE_FALLBACK);
  EXPECT(rkv_topo_num_numa(t) >= 1);
  EXPECT(rkv_topo_num_cores(t) >= 1);
  EXPECT(rkv_topo_num_pus(t) >= rkv_topo_num_cores(t));
  EXPECT_OK(rkv_topo_check(t));
  for (uint32_t g = 0; g < rkv_topo_num_gpus(t); g++) {
    const rkv_topo_gpu *gp = rkv_topo_get_gpu(t, g);
    EXPECT_EQ_INT(rkv_topo_find_gpu(t, gp->pci_bus_id), g);
    EXPECT_EQ_INT(gp->vendor_id, 0x10de);
  }
  rkv_topo_placement p;
  EXPECT_OK(rkv_topo_place(t, 1, NULL, &p));
  rkv_status s = rkv_topo_bind_thread(t, &p);
  printf("this machine: %s, %u NUMA, %u cores, %u GPUs; bind: %s %s\n",
         rkv_topo_source_name(rkv_topo_get_source(t)), rkv_topo_num_numa(t), rkv_topo_num_cores(t),
         rkv_topo_num_gpus(t), rkv_status_name(s), s == RKV_OK ? "" : rkv_topo_last_error(t));
  if (rkv_topo_get_source(t) == RKV_TOPO_SOURCE_HWLOC)
    EXPECT(s == RKV_OK || s == RKV_ERR_IO); /* a container may forbid binding */
  else
    EXPECT_STATUS(s, RKV_ERR_UNSUPPORTED);
  rkv_host_buffer b;
  EXPECT_OK(rkv_topo_host_alloc(t, 0, 3 << 20, 0, &b));
  EXPECT(b.ptr != NULL);
  EXPECT(!b.bound || b.numa == 0);
  printf("host buffer on node 0: bound %d\n", (int)b.bound);
  rkv_topo_host_free(t, &b);
  rkv_topo_destroy(t);
  EXPECT_EQ_INT(k.live, 0);
}

int main(void) {
  if (rkv_build_has_hwloc()) {
    test_four_nodes();
    test_two_nodes();
    test_memory_only_nodes();
    test_xml_gpus();
    test_bad_synthetic();
  } else {
    fprintf(stderr, "no hwloc in this build: synthetic topology cases skipped\n");
  }
  test_this_machine();
  return rkv_test_finish();
}
