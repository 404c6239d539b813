/* `rkv topo`: prints the machine map a tensor-parallel run would use — packages, NUMA nodes,
 * cores, NVIDIA GPUs with their PCI bus id and local NUMA node — and the placement chosen for
 * each local rank (NUMA node of its host swap pool, cores its scheduler thread binds to).
 * --synthetic takes an hwloc synthetic description so placements can be checked for machines
 * one does not have; --gpu-numa gives GPU locality explicitly (synthetic topologies have no
 * PCI devices). Text by default, --json for scripts. */
#include "rkv_tool.h"

#include <stdlib.h>
#include <string.h>

#include <rkv/topo.h>

const char rt_cmd_topo_summary[] = "print NUMA nodes, cores, GPUs and the TP rank placement";

#define TOPO_MAX_RANKS 1024

static void usage(void) {
  printf(
      "usage: rkv topo [--synthetic DESC | --xml FILE] [--ranks N] [--gpu-numa K0,K1,...] "
      "[--json]\n"
      "  Prints the machine map (NUMA nodes, cores, GPUs and their locality) and the placement\n"
      "  of N local tensor-parallel ranks: the NUMA node for each rank's host swap pool and the\n"
      "  cores its scheduler thread binds to (disjoint slices of that node's cores).\n"
      "  --synthetic DESC   an hwloc synthetic topology instead of this machine, e.g.\n"
      "                     \"pack:2 numa:2 core:4 pu:2\" (4 NUMA nodes, 16 cores)\n"
      "  --xml FILE         an hwloc XML export (lstopo --of xml) of some machine, with its\n"
      "                     GPUs: shows the placement that machine would get\n"
      "  --ranks N          local ranks to place (default: one per GPU found, else 1)\n"
      "  --gpu-numa LIST    NUMA node each rank's GPU is local to (-1 = unknown); its length\n"
      "                     sets N when --ranks is absent. Default: the GPUs' own locality.\n"
      "  --json             one JSON object on stdout\n"
      "  --bind             bind this thread to rank 0's cores (this machine only) and report\n"
      "  --alloc BYTES      allocate a host swap buffer on rank 0's node (pinned when CUDA is\n"
      "                     usable) and report whether it was bound / pinned; exit 1 when\n"
      "                     the allocation fails (at most 2^40 bytes)\n"
      "  --verbose          library log lines on stderr\n");
}

/* Prints ascending integers as ranges: "0-3,8,10-11". */
static void print_ranges(const int64_t *v, uint32_t n) {
  for (uint32_t i = 0; i < n;) {
    uint32_t j = i;
    while (j + 1 < n && v[j + 1] == v[j] + 1) j++;
    printf(i ? ",%lld" : "%lld", (long long)v[i]);
    if (j > i) printf("-%lld", (long long)v[j]);
    i = j + 1;
  }
  if (n == 0) printf("none");
}

static void print_json_list(const int64_t *v, uint32_t n) {
  printf("[");
  for (uint32_t i = 0; i < n; i++) printf(i ? ", %lld" : "%lld", (long long)v[i]);
  printf("]");
}

/* PU os indices of a placement's core slice, into buf; returns the count. */
static uint32_t slice_pus(const rkv_topo *t, const rkv_topo_placement *p, int64_t *buf,
                          uint32_t cap, bool pus) {
  uint32_t nc = 0, n = 0;
  const uint32_t *cores = rkv_topo_numa_cores(t, (uint32_t)p->core_numa, &nc);
  for (uint32_t k = p->core_first; cores && k < p->core_first + p->core_count && k < nc; k++) {
    const rkv_topo_core *c = rkv_topo_get_core(t, cores[k]);
    if (!pus) {
      if (n < cap) buf[n++] = cores[k];
      continue;
    }
    for (uint32_t u = 0; u < c->num_pus && n < cap; u++) buf[n++] = c->first_pu + (int64_t)u;
  }
  return n;
}

static void json_str(const char *s) {
  putchar('"');
  for (; s && *s; s++) {
    if (*s == '"' || *s == '\\') putchar('\\');
    putchar(*s);
  }
  putchar('"');
}

/* --gpu-numa K0,K1,...: one NUMA node (or -1) per rank into out[TOPO_MAX_RANKS]. The list is
 * split in place of a copy that every path frees; false after naming the option. */
static bool parse_gpu_list(const char *list, int64_t max_node, int32_t *out, uint32_t *n) {
  *n = 0;
  /* 6 characters per entry ("-1," or a node number) is more than any real list needs. */
  if (!rt_check_list("topo", "--gpu-numa", list, TOPO_MAX_RANKS, 6 * TOPO_MAX_RANKS)) return false;
  char *dup = strdup(list), *save = NULL;
  if (!dup) {
    fprintf(stderr, "rkv topo: --gpu-numa: out of memory\n");
    return false;
  }
  bool ok = true;
  for (char *tok = strtok_r(dup, ",", &save); tok && ok; tok = strtok_r(NULL, ",", &save)) {
    int64_t v = 0;
    ok = rt_parse_i64("topo", "--gpu-numa", tok, -1, max_node, &v);
    if (ok) out[(*n)++] = (int32_t)v;
  }
  free(dup);
  return ok;
}

int rt_cmd_topo(int argc, char **argv) {
  const char *synthetic = NULL, *gpu_list = NULL, *xml = NULL;
  bool json = false, verbose = false, bind = false;
  int64_t ranks = 0;
  uint64_t alloc_bytes = 0;
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i];
    if (strcmp(a, "--help") == 0 || strcmp(a, "-h") == 0) {
      usage();
      return 0;
    } else if (strcmp(a, "--json") == 0) {
      json = true;
    } else if (strcmp(a, "--verbose") == 0) {
      verbose = true;
    } else if (strcmp(a, "--bind") == 0) {
      bind = true;
    } else if (strcmp(a, "--alloc") == 0) {
      const char *v = rt_optval("topo", argc, argv, &i);
      if (!v || !rt_parse_u64("topo", "--alloc", v, 1, UINT64_C(1) << 40, &alloc_bytes)) return 2;
    } else if (strcmp(a, "--synthetic") == 0) {
      if (!(synthetic = rt_optval("topo", argc, argv, &i))) return 2;
    } else if (strcmp(a, "--xml") == 0) {
      if (!(xml = rt_optval("topo", argc, argv, &i))) return 2;
    } else if (strcmp(a, "--gpu-numa") == 0) {
      if (!(gpu_list = rt_optval("topo", argc, argv, &i))) return 2;
    } else if (strcmp(a, "--ranks") == 0) {
      const char *v = rt_optval("topo", argc, argv, &i);
      if (!v || !rt_parse_i64("topo", "--ranks", v, 1, TOPO_MAX_RANKS, &ranks)) return 2;
    } else {
      fprintf(stderr, "rkv topo: unknown option '%s' (see rkv topo --help)\n", a);
      return 2;
    }
  }

  rkv_logger lg = rt_stderr_logger(RKV_LOG_INFO);
  rkv_topo_config cfg = RKV_TOPO_CONFIG_INIT;
  cfg.synthetic = synthetic;
  cfg.xml_path = xml;
  cfg.logger = verbose ? &lg : NULL;
  rkv_topo *t = NULL;
  char err[256];
  rkv_status s = rkv_topo_create(&cfg, &t, err, sizeof err);
  if (s != RKV_OK) {
    fprintf(stderr, "rkv topo: %s (%s)\n", err[0] ? err : rkv_status_str(s), rkv_status_name(s));
    return 1;
  }

  int32_t *gpu_numa = calloc(TOPO_MAX_RANKS, sizeof(int32_t));
  rkv_topo_placement *place = calloc(TOPO_MAX_RANKS, sizeof(rkv_topo_placement));
  const uint32_t cap = 1u << 16;
  int64_t *buf = calloc(cap, sizeof(int64_t));
  int ret = 1;
  if (!gpu_numa || !place || !buf) {
    fprintf(stderr, "rkv topo: out of memory\n");
    goto out;
  }
  uint32_t n_list = 0;
  if (gpu_list && !parse_gpu_list(gpu_list, (int64_t)rkv_topo_num_numa(t) - 1, gpu_numa, &n_list)) {
    ret = 2;
    goto out;
  }
  uint32_t ngpu = rkv_topo_num_gpus(t);
  uint32_t n = ranks ? (uint32_t)ranks : n_list ? n_list : ngpu ? ngpu : 1;
  for (uint32_t r = n_list; r < n; r++) {
    /* Without a list, rank r drives GPU r (the usual local-rank -> device mapping). */
    const rkv_topo_gpu *g = gpu_list ? NULL : rkv_topo_get_gpu(t, r);
    gpu_numa[r] = g ? g->numa : -1;
  }
  s = rkv_topo_place(t, n, gpu_numa, place);
  if (s != RKV_OK) {
    fprintf(stderr, "rkv topo: placement failed: %s\n", rkv_topo_last_error(t));
    goto out;
  }

  /* Actions on this machine for rank 0, reported with the map. */
  char bind_msg[320] = "", alloc_msg[320] = "";
  if (bind) {
    rkv_status bs = rkv_topo_bind_thread(t, &place[0]);
    snprintf(bind_msg, sizeof bind_msg, "%s%s%s", rkv_status_name(bs), bs ? ": " : "",
             bs ? rkv_topo_last_error(t) : "");
  }
  bool alloc_failed = false;
  if (alloc_bytes) {
    /* Zeroed: rkv_topo_host_alloc leaves *out untouched when it fails, and freeing stack
     * garbage crashed release builds. Only a buffer that was allocated is freed. */
    rkv_host_buffer hb = {0};
    rkv_status as =
        rkv_topo_host_alloc(t, place[0].numa, (size_t)alloc_bytes, RKV_TOPO_HOST_PIN, &hb);
    if (as == RKV_OK) {
      snprintf(alloc_msg, sizeof alloc_msg, "%llu bytes for NUMA node %d: bound %s, pinned %s",
               (unsigned long long)alloc_bytes, (int)place[0].numa, hb.bound ? "yes" : "no",
               hb.pinned ? "yes" : "no");
      rkv_topo_host_free(t, &hb);
    } else {
      snprintf(alloc_msg, sizeof alloc_msg, "%s: %s", rkv_status_name(as), rkv_topo_last_error(t));
      alloc_failed = true;
    }
  }

  uint32_t nn = rkv_topo_num_numa(t);
  if (json) {
    printf("{\"source\": \"%s\", \"synthetic\": ", rkv_topo_source_name(rkv_topo_get_source(t)));
    if (synthetic)
      json_str(synthetic);
    else
      printf("null");
    printf(", \"xml\": ");
    if (xml)
      json_str(xml);
    else
      printf("null");
    printf(", \"packages\": %u, \"num_cores\": %u, \"num_pus\": %u,\n \"numa_nodes\": [",
           rkv_topo_num_packages(t), rkv_topo_num_cores(t), rkv_topo_num_pus(t));
    for (uint32_t j = 0; j < nn; j++) {
      const rkv_topo_numa *nd = rkv_topo_get_numa(t, j);
      uint32_t nc = 0;
      const uint32_t *cores = rkv_topo_numa_cores(t, j, &nc);
      for (uint32_t k = 0; k < nc && k < cap; k++) buf[k] = cores[k];
      printf(
          "%s\n  {\"index\": %u, \"os_index\": %d, \"memory_bytes\": %llu, \"pus\": %u, "
          "\"cpu_node\": %d, \"cores\": ",
          j ? "," : "", j, (int)nd->os_index, (unsigned long long)nd->memory_bytes, nd->num_pus,
          (int)nd->cpu_node);
      print_json_list(buf, nc < cap ? nc : cap);
      printf("}");
    }
    printf("],\n \"gpus\": [");
    for (uint32_t g = 0; g < ngpu; g++) {
      const rkv_topo_gpu *gp = rkv_topo_get_gpu(t, g);
      printf(
          "%s\n  {\"index\": %u, \"pci_bus_id\": \"%s\", \"vendor_id\": %u, \"device_id\": %u, "
          "\"numa\": %d, \"cuda_device\": %d, \"local_cores\": %u}",
          g ? "," : "", g, gp->pci_bus_id, gp->vendor_id, gp->device_id, (int)gp->numa,
          (int)gp->cuda_device, gp->num_local_cores);
    }
    printf("],\n \"placement\": [");
    for (uint32_t r = 0; r < n; r++) {
      const rkv_topo_placement *p = &place[r];
      printf(
          "%s\n  {\"rank\": %u, \"gpu_numa\": %d, \"numa\": %d, \"core_numa\": %d, "
          "\"reason\": \"%s\", \"cores\": ",
          r ? "," : "", r, (int)gpu_numa[r], (int)p->numa, (int)p->core_numa,
          rkv_topo_place_reason_name(p->reason));
      print_json_list(buf, slice_pus(t, p, buf, cap, false));
      printf(", \"pus\": ");
      print_json_list(buf, slice_pus(t, p, buf, cap, true));
      printf("}");
    }
    printf("]");
    if (bind) {
      printf(",\n \"bind\": ");
      json_str(bind_msg);
    }
    if (alloc_bytes) {
      printf(",\n \"alloc\": ");
      json_str(alloc_msg);
    }
    printf("}\n");
  } else {
    const char *what = synthetic ? synthetic : xml;
    printf("topology: %s%s%s%s\n", rkv_topo_source_name(rkv_topo_get_source(t)),
           what ? " \"" : " (this machine)", what ? what : "", what ? "\"" : "");
    printf("packages %u, NUMA nodes %u, cores %u, PUs %u, NVIDIA GPUs %u\n",
           rkv_topo_num_packages(t), nn, rkv_topo_num_cores(t), rkv_topo_num_pus(t), ngpu);
    for (uint32_t j = 0; j < nn; j++) {
      const rkv_topo_numa *nd = rkv_topo_get_numa(t, j);
      uint32_t nc = 0;
      const uint32_t *cores = rkv_topo_numa_cores(t, j, &nc);
      for (uint32_t k = 0; k < nc && k < cap; k++) buf[k] = cores[k];
      printf("  NUMA node %u (os %d): %.1f GiB, %u cores, %u PUs; cores ", j, (int)nd->os_index,
             (double)nd->memory_bytes / (1024.0 * 1024.0 * 1024.0), nd->num_cores, nd->num_pus);
      print_ranges(buf, nc < cap ? nc : cap);
      if (nc == 0 && nd->cpu_node >= 0)
        printf(" (memory only; its cores are node %d's)", (int)nd->cpu_node);
      printf("\n");
    }
    for (uint32_t g = 0; g < ngpu; g++) {
      const rkv_topo_gpu *gp = rkv_topo_get_gpu(t, g);
      printf("  GPU %u: %s [%04x:%04x]", g, gp->pci_bus_id, gp->vendor_id, gp->device_id);
      if (gp->cuda_device >= 0) printf(" cuda:%d", (int)gp->cuda_device);
      if (gp->numa >= 0)
        printf(", local to NUMA node %d (%u local cores)\n", (int)gp->numa, gp->num_local_cores);
      else
        printf(", not local to a single NUMA node\n");
    }
    printf("placement of %u local rank%s:\n", n, n == 1 ? "" : "s");
    for (uint32_t r = 0; r < n; r++) {
      const rkv_topo_placement *p = &place[r];
      printf("  rank %u: swap pool on NUMA node %d; scheduler thread on cores ", r, (int)p->numa);
      print_ranges(buf, slice_pus(t, p, buf, cap, false));
      printf(" (PUs ");
      print_ranges(buf, slice_pus(t, p, buf, cap, true));
      printf(") of node %d [%s", (int)p->core_numa, rkv_topo_place_reason_name(p->reason));
      if (gpu_numa[r] >= 0) printf(", GPU on node %d", (int)gpu_numa[r]);
      printf("]\n");
    }
    if (bind) printf("bind rank 0's cores: %s\n", bind_msg);
    if (alloc_bytes) printf("host swap buffer: %s\n", alloc_msg);
    if (rkv_topo_get_source(t) == RKV_TOPO_SOURCE_FALLBACK)
      printf("note: built without hwloc (or hwloc failed): one NUMA node, no binding\n");
  }
  /* The map is still printed, but the action that was asked for did not happen. */
  if (alloc_failed)
    fprintf(stderr, "rkv topo: --alloc %llu: %s\n", (unsigned long long)alloc_bytes, alloc_msg);
  ret = alloc_failed ? 1 : 0;
out:
  free(gpu_numa);
  free(place);
  free(buf);
  rkv_topo_destroy(t);
  return ret;
}
