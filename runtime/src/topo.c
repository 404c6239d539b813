/* Machine topology snapshot, placement, thread binding and NUMA-bound host memory. The only
 * file that includes hwloc.h: hwloc fills a plain-array snapshot once at create, and every
 * query and the placement work on that snapshot, so they behave the same for this machine,
 * for synthetic topologies and for the no-hwloc fallback (one node of sysconf CPUs). Only
 * binding and bound allocation go back to hwloc, and only for this machine. */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include <rkv/topo.h>

#include "rkv_internal.h"

#ifdef RKV_HAVE_HWLOC
#include <hwloc.h>
#endif
#ifdef RKV_HAVE_CUDA
#include <cuda_runtime.h>
#endif

struct rkv_topo {
  rkv_topo_source source;
  bool has_alloc;
  bool has_logger;
  rkv_allocator alloc;
  rkv_logger logger;
  uint32_t n_packages, n_numa, n_cores, n_pus, n_gpus;
  rkv_topo_numa *numa;     /* [n_numa] */
  rkv_topo_core *cores;    /* [n_cores] */
  rkv_topo_gpu *gpus;      /* [n_gpus] */
  uint32_t *numa_core_off; /* [n_numa + 1] */
  uint32_t *numa_core_idx; /* [n_cores], grouped by node */
#ifdef RKV_HAVE_HWLOC
  hwloc_topology_t hw;        /* NULL for the fallback */
  hwloc_obj_type_t core_type; /* CORE, or PU when the machine reports no cores */
#endif
  char err[RKV_ERRBUF];
};

static const rkv_allocator *talloc(const rkv_topo *t) {
  return t->has_alloc ? &t->alloc : NULL;
}
static const rkv_logger *tlog(const rkv_topo *t) {
  return t->has_logger ? &t->logger : NULL;
}

static rkv_status alloc_arrays(rkv_topo *t) {
  const rkv_allocator *a = talloc(t);
  t->numa = rkvi_calloc(a, (t->n_numa ? t->n_numa : 1) * sizeof(rkv_topo_numa), 8);
  t->cores = rkvi_calloc(a, (t->n_cores ? t->n_cores : 1) * sizeof(rkv_topo_core), 8);
  t->gpus = rkvi_calloc(a, (t->n_gpus ? t->n_gpus : 1) * sizeof(rkv_topo_gpu), 8);
  t->numa_core_off = rkvi_calloc(a, (t->n_numa + 1) * sizeof(uint32_t), 8);
  t->numa_core_idx = rkvi_calloc(a, (t->n_cores ? t->n_cores : 1) * sizeof(uint32_t), 8);
  if (!t->numa || !t->cores || !t->gpus || !t->numa_core_off || !t->numa_core_idx)
    return rkvi_fail(t->err, RKV_ERR_NO_MEMORY, "rkv_topo_create: out of host memory");
  return RKV_OK;
}

/* Per-node core lists and counts, from each core's node. */
static void index_cores(rkv_topo *t) {
  for (uint32_t j = 0; j < t->n_numa; j++) t->numa[j].num_cores = t->numa[j].num_pus = 0;
  for (uint32_t i = 0; i < t->n_cores; i++) {
    t->numa[t->cores[i].numa].num_cores++;
    t->numa[t->cores[i].numa].num_pus += t->cores[i].num_pus;
  }
  t->numa_core_off[0] = 0;
  for (uint32_t j = 0; j < t->n_numa; j++)
    t->numa_core_off[j + 1] = t->numa_core_off[j] + t->numa[j].num_cores;
  for (uint32_t j = 0; j < t->n_numa; j++) {
    uint32_t k = t->numa_core_off[j];
    for (uint32_t i = 0; i < t->n_cores; i++)
      if ((uint32_t)t->cores[i].numa == j) t->numa_core_idx[k++] = i;
  }
}

static rkv_status load_fallback(rkv_topo *t) {
  long n = sysconf(_SC_NPROCESSORS_ONLN);
  t->source = RKV_TOPO_SOURCE_FALLBACK;
  t->n_packages = 1;
  t->n_numa = 1;
  t->n_cores = t->n_pus = n > 0 ? (uint32_t)n : 1;
  t->n_gpus = 0;
  RKV_TRY(alloc_arrays(t));
  t->numa[0].os_index = 0;
  t->numa[0].cpu_node = 0;
  for (uint32_t i = 0; i < t->n_cores; i++) {
    t->cores[i].os_index = (int32_t)i;
    t->cores[i].package = 0;
    t->cores[i].numa = 0;
    t->cores[i].first_pu = (int32_t)i;
    t->cores[i].num_pus = 1;
  }
  index_cores(t);
  return RKV_OK;
}

/* Parses "dddd:bb:dd.f" or "bb:dd.f" (hex). */
static bool parse_busid(const char *s, unsigned *dom, unsigned *bus, unsigned *dev, unsigned *fn) {
  if (!s) return false;
  if (sscanf(s, "%x:%x:%x.%x", dom, bus, dev, fn) == 4) return true;
  *dom = 0;
  return sscanf(s, "%x:%x.%x", bus, dev, fn) == 3;
}

#if defined(RKV_HAVE_CUDA) && defined(RKV_HAVE_HWLOC)
/* Matches CUDA ordinals to the listed GPUs by bus id; no driver means no matches. Only the
 * hwloc loader lists GPUs, so without hwloc there is nothing to match (and no caller). */
static void match_cuda_devices(rkv_topo *t) {
  int n = 0;
  if (cudaGetDeviceCount(&n) != cudaSuccess) {
    (void)cudaGetLastError();
    return;
  }
  for (int d = 0; d < n; d++) {
    char id[32];
    unsigned a, b, c, e;
    if (cudaDeviceGetPCIBusId(id, (int)sizeof id, d) != cudaSuccess) continue;
    if (!parse_busid(id, &a, &b, &c, &e)) continue;
    int32_t g = rkv_topo_find_gpu(t, id);
    if (g >= 0) t->gpus[g].cuda_device = d;
  }
}
#endif

#ifdef RKV_HAVE_HWLOC
static bool is_nvidia_gpu(hwloc_obj_t o) {
  return o->attr && o->attr->pcidev.vendor_id == 0x10de && (o->attr->pcidev.class_id >> 8) == 0x03;
}

/* The first NUMA node (logical order) whose cpuset intersects `set`, or -1. Several nodes
 * can share one cpuset (DDR + HBM or CXL memory of one package): the first is the ordinary
 * one. */
static int32_t node_of_cpuset(rkv_topo *t, hwloc_const_cpuset_t set) {
  for (uint32_t j = 0; j < t->n_numa; j++) {
    hwloc_obj_t nd = hwloc_get_obj_by_type(t->hw, HWLOC_OBJ_NUMANODE, j);
    if (nd && nd->cpuset && hwloc_bitmap_intersects(nd->cpuset, set)) return (int32_t)j;
  }
  return -1;
}

/* The node a device hanging below `set` is local to: the first intersecting node, provided
 * every intersecting node has the same cores (else the device sits above several sockets and
 * is local to none: -1). Needs cpu_node filled in. */
static int32_t device_node(rkv_topo *t, hwloc_const_cpuset_t set) {
  int32_t first = node_of_cpuset(t, set);
  if (first < 0) return -1;
  for (uint32_t j = 0; j < t->n_numa; j++) {
    hwloc_obj_t nd = hwloc_get_obj_by_type(t->hw, HWLOC_OBJ_NUMANODE, j);
    if (nd && nd->cpuset && hwloc_bitmap_intersects(nd->cpuset, set) &&
        t->numa[j].cpu_node != t->numa[first].cpu_node)
      return -1;
  }
  return first;
}

static rkv_status load_hwloc(rkv_topo *t, const rkv_topo_config *cfg) {
  if (hwloc_topology_init(&t->hw) != 0) {
    t->hw = NULL;
    return rkvi_fail(t->err, RKV_ERR_NO_MEMORY, "rkv_topo_create: hwloc_topology_init failed");
  }
  if (cfg->synthetic) {
    if (hwloc_topology_set_synthetic(t->hw, cfg->synthetic) != 0)
      return rkvi_fail(t->err, RKV_ERR_FORMAT,
                       "rkv_topo_create: hwloc rejected synthetic topology \"%s\"", cfg->synthetic);
    t->source = RKV_TOPO_SOURCE_SYNTHETIC;
  } else if (cfg->xml_path) {
    if (hwloc_topology_set_xml(t->hw, cfg->xml_path) != 0)
      return rkvi_fail(t->err, RKV_ERR_FORMAT, "rkv_topo_create: hwloc cannot use XML file %s: %s",
                       cfg->xml_path, strerror(errno));
    hwloc_topology_set_io_types_filter(t->hw, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    t->source = RKV_TOPO_SOURCE_XML;
  } else {
    if (cfg->detect_gpus)
      hwloc_topology_set_io_types_filter(t->hw, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    t->source = RKV_TOPO_SOURCE_HWLOC;
  }
  if (hwloc_topology_load(t->hw) != 0)
    return rkvi_fail(t->err, t->source == RKV_TOPO_SOURCE_XML ? RKV_ERR_FORMAT : RKV_ERR_IO,
                     "rkv_topo_create: hwloc_topology_load%s%s failed: %s",
                     cfg->xml_path ? " of " : "", cfg->xml_path ? cfg->xml_path : "",
                     strerror(errno));

  int np = hwloc_get_nbobjs_by_type(t->hw, HWLOC_OBJ_PACKAGE);
  int nn = hwloc_get_nbobjs_by_type(t->hw, HWLOC_OBJ_NUMANODE);
  int nc = hwloc_get_nbobjs_by_type(t->hw, HWLOC_OBJ_CORE);
  int nu = hwloc_get_nbobjs_by_type(t->hw, HWLOC_OBJ_PU);
  t->core_type = nc > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
  if (nc <= 0) nc = nu;
  if (nn <= 0 || nc <= 0)
    return rkvi_fail(t->err, RKV_ERR_FORMAT,
                     "rkv_topo_create: topology has %d NUMA nodes and %d cores", nn, nc);
  t->n_packages = np > 0 ? (uint32_t)np : 1;
  t->n_numa = (uint32_t)nn;
  t->n_cores = (uint32_t)nc;
  t->n_pus = nu > 0 ? (uint32_t)nu : (uint32_t)nc;
  t->n_gpus = 0;
  bool gpus = cfg->detect_gpus && t->source != RKV_TOPO_SOURCE_SYNTHETIC;
  if (gpus) {
    for (hwloc_obj_t o = hwloc_get_next_pcidev(t->hw, NULL); o; o = hwloc_get_next_pcidev(t->hw, o))
      if (is_nvidia_gpu(o)) t->n_gpus++;
  }
  RKV_TRY(alloc_arrays(t));

  for (uint32_t j = 0; j < t->n_numa; j++) {
    hwloc_obj_t nd = hwloc_get_obj_by_type(t->hw, HWLOC_OBJ_NUMANODE, j);
    t->numa[j].os_index = (int32_t)nd->os_index;
    t->numa[j].memory_bytes = nd->attr ? nd->attr->numanode.local_memory : 0;
  }
  for (uint32_t i = 0; i < t->n_cores; i++) {
    hwloc_obj_t o = hwloc_get_obj_by_type(t->hw, t->core_type, i);
    hwloc_obj_t pk = hwloc_get_ancestor_obj_by_type(t->hw, HWLOC_OBJ_PACKAGE, o);
    int32_t node = node_of_cpuset(t, o->cpuset);
    int pus = hwloc_get_nbobjs_inside_cpuset_by_type(t->hw, o->cpuset, HWLOC_OBJ_PU);
    t->cores[i].os_index = (int32_t)o->os_index;
    t->cores[i].package = pk ? (int32_t)pk->logical_index : -1;
    t->cores[i].numa = node >= 0 ? node : 0;
    t->cores[i].first_pu = hwloc_bitmap_first(o->cpuset);
    t->cores[i].num_pus = pus > 0 ? (uint32_t)pus : 1;
  }
  index_cores(t);
  /* Memory-only nodes: the node owning the first core inside their cpuset. */
  for (uint32_t j = 0; j < t->n_numa; j++) {
    hwloc_obj_t nd = hwloc_get_obj_by_type(t->hw, HWLOC_OBJ_NUMANODE, j);
    t->numa[j].cpu_node = -1;
    if (t->numa[j].num_cores > 0) {
      t->numa[j].cpu_node = (int32_t)j;
    } else if (nd->cpuset && !hwloc_bitmap_iszero(nd->cpuset)) {
      hwloc_obj_t c =
          hwloc_get_next_obj_inside_cpuset_by_type(t->hw, nd->cpuset, t->core_type, NULL);
      if (c) t->numa[j].cpu_node = t->cores[c->logical_index].numa;
    }
  }

  uint32_t g = 0;
  if (t->n_gpus) {
    for (hwloc_obj_t o = hwloc_get_next_pcidev(t->hw, NULL); o && g < t->n_gpus;
         o = hwloc_get_next_pcidev(t->hw, o)) {
      if (!is_nvidia_gpu(o)) continue;
      rkv_topo_gpu *gp = &t->gpus[g++];
      const struct hwloc_pcidev_attr_s *pa = &o->attr->pcidev;
      snprintf(gp->pci_bus_id, sizeof gp->pci_bus_id, "%04x:%02x:%02x.%01x",
               (unsigned)pa->domain & 0xffffu, (unsigned)pa->bus, (unsigned)pa->dev,
               (unsigned)pa->func & 0xfu);
      gp->vendor_id = pa->vendor_id;
      gp->device_id = pa->device_id;
      gp->cuda_device = -1;
      hwloc_obj_t anc = hwloc_get_non_io_ancestor_obj(t->hw, o);
      gp->numa = anc && anc->cpuset ? device_node(t, anc->cpuset) : -1;
      int lc = anc && anc->cpuset
                   ? hwloc_get_nbobjs_inside_cpuset_by_type(t->hw, anc->cpuset, t->core_type)
                   : 0;
      gp->num_local_cores = lc > 0 ? (uint32_t)lc : 0;
    }
  }
#ifdef RKV_HAVE_CUDA
  if (t->n_gpus && t->source == RKV_TOPO_SOURCE_HWLOC) match_cuda_devices(t);
#endif
  return RKV_OK;
}
#endif /* RKV_HAVE_HWLOC */

static void topo_free(rkv_topo *t) {
  const rkv_allocator *a = talloc(t);
#ifdef RKV_HAVE_HWLOC
  if (t->hw) hwloc_topology_destroy(t->hw);
#endif
  rkvi_free(a, t->numa, (t->n_numa ? t->n_numa : 1) * sizeof(rkv_topo_numa));
  rkvi_free(a, t->cores, (t->n_cores ? t->n_cores : 1) * sizeof(rkv_topo_core));
  rkvi_free(a, t->gpus, (t->n_gpus ? t->n_gpus : 1) * sizeof(rkv_topo_gpu));
  rkvi_free(a, t->numa_core_off, (t->n_numa + 1) * sizeof(uint32_t));
  rkvi_free(a, t->numa_core_idx, (t->n_cores ? t->n_cores : 1) * sizeof(uint32_t));
  rkv_allocator copy = t->alloc;
  rkvi_free(t->has_alloc ? &copy : NULL, t, sizeof(*t));
}

rkv_status rkv_topo_create(const rkv_topo_config *cfg, rkv_topo **out, char *err_out,
                           size_t err_len) {
  static const rkv_topo_config kDefault = RKV_TOPO_CONFIG_INIT;
  if (err_out && err_len) err_out[0] = '\0';
  if (!out) return RKV_ERR_INVALID_ARG;
  *out = NULL;
  if (!cfg) cfg = &kDefault;
  if (cfg->struct_size < sizeof(rkv_topo_config)) {
    if (err_out && err_len)
      snprintf(err_out, err_len, "rkv_topo_create: struct_size %u < %zu", cfg->struct_size,
               sizeof(rkv_topo_config));
    return RKV_ERR_INVALID_ARG;
  }
  if (cfg->synthetic && cfg->xml_path) {
    if (err_out && err_len)
      snprintf(err_out, err_len, "rkv_topo_create: give synthetic or xml_path, not both");
    return RKV_ERR_INVALID_ARG;
  }
  rkv_topo *t = rkvi_calloc(cfg->allocator, sizeof(*t), _Alignof(max_align_t));
  if (!t) return RKV_ERR_NO_MEMORY;
  if (cfg->allocator) t->alloc = *cfg->allocator, t->has_alloc = true;
  if (cfg->logger) t->logger = *cfg->logger, t->has_logger = true;
  rkv_status ret;
#ifdef RKV_HAVE_HWLOC
  ret = load_hwloc(t, cfg);
  if (ret != RKV_OK && ret != RKV_ERR_NO_MEMORY && !cfg->synthetic && !cfg->xml_path) {
    /* hwloc could not read this machine (odd container, missing /sys): carry on with the
     * plain view rather than refuse to run. */
    rkvi_log(tlog(t), RKV_LOG_WARN, "topo: %s; using one NUMA node of online CPUs", t->err);
    if (t->hw) hwloc_topology_destroy(t->hw);
    t->hw = NULL;
    t->err[0] = '\0';
    ret = load_fallback(t);
  }
#else
  if (cfg->synthetic || cfg->xml_path)
    ret = rkvi_fail(t->err, RKV_ERR_UNSUPPORTED,
                    "rkv_topo_create: synthetic and XML topologies need hwloc (not in this build)");
  else
    ret = load_fallback(t);
  if (ret == RKV_OK)
    rkvi_log(tlog(t), RKV_LOG_INFO,
             "topo: built without hwloc: one NUMA node of %u CPUs, no GPU locality, no binding",
             t->n_cores);
#endif
  if (ret == RKV_OK) ret = rkv_topo_check(t);
  if (ret != RKV_OK) {
    if (err_out && err_len) snprintf(err_out, err_len, "%s", t->err);
    topo_free(t);
    return ret;
  }
  rkvi_log(tlog(t), RKV_LOG_DEBUG,
           "topo (%s): %u packages, %u NUMA nodes, %u cores, %u PUs, "
           "%u GPUs",
           rkv_topo_source_name(t->source), t->n_packages, t->n_numa, t->n_cores, t->n_pus,
           t->n_gpus);
  *out = t;
  return RKV_OK;
}

void rkv_topo_destroy(rkv_topo *t) {
  if (t) topo_free(t);
}

const char *rkv_topo_last_error(const rkv_topo *t) {
  return t ? t->err : "NULL topology";
}
rkv_topo_source rkv_topo_get_source(const rkv_topo *t) {
  return t ? t->source : RKV_TOPO_SOURCE_FALLBACK;
}
const char *rkv_topo_source_name(rkv_topo_source s) {
  switch (s) {
    case RKV_TOPO_SOURCE_HWLOC:
      return "hwloc";
    case RKV_TOPO_SOURCE_SYNTHETIC:
      return "synthetic";
    case RKV_TOPO_SOURCE_XML:
      return "xml";
    case RKV_TOPO_SOURCE_FALLBACK:
      return "fallback";
  }
  return "invalid";
}

uint32_t rkv_topo_num_packages(const rkv_topo *t) {
  return t ? t->n_packages : 0;
}
uint32_t rkv_topo_num_numa(const rkv_topo *t) {
  return t ? t->n_numa : 0;
}
uint32_t rkv_topo_num_cores(const rkv_topo *t) {
  return t ? t->n_cores : 0;
}
uint32_t rkv_topo_num_pus(const rkv_topo *t) {
  return t ? t->n_pus : 0;
}
uint32_t rkv_topo_num_gpus(const rkv_topo *t) {
  return t ? t->n_gpus : 0;
}

const rkv_topo_numa *rkv_topo_get_numa(const rkv_topo *t, uint32_t i) {
  return t && i < t->n_numa ? &t->numa[i] : NULL;
}
const rkv_topo_core *rkv_topo_get_core(const rkv_topo *t, uint32_t i) {
  return t && i < t->n_cores ? &t->cores[i] : NULL;
}
const rkv_topo_gpu *rkv_topo_get_gpu(const rkv_topo *t, uint32_t i) {
  return t && i < t->n_gpus ? &t->gpus[i] : NULL;
}

const uint32_t *rkv_topo_numa_cores(const rkv_topo *t, uint32_t numa, uint32_t *count) {
  if (!t || numa >= t->n_numa) {
    if (count) *count = 0;
    return NULL;
  }
  if (count) *count = t->numa_core_off[numa + 1] - t->numa_core_off[numa];
  return t->numa_core_idx + t->numa_core_off[numa];
}

int32_t rkv_topo_find_gpu(const rkv_topo *t, const char *pci_bus_id) {
  unsigned d0, b0, v0, f0, d1, b1, v1, f1;
  if (!t || !parse_busid(pci_bus_id, &d0, &b0, &v0, &f0)) return -1;
  for (uint32_t g = 0; g < t->n_gpus; g++) {
    if (!parse_busid(t->gpus[g].pci_bus_id, &d1, &b1, &v1, &f1)) continue;
    if (d0 == d1 && b0 == b1 && v0 == v1 && f0 == f1) return (int32_t)g;
  }
  return -1;
}

rkv_status rkv_topo_check(const rkv_topo *t) {
  if (!t) return RKV_ERR_INVALID_ARG;
  char *err = ((rkv_topo *)t)->err; /* the error text is the handle's only mutable part */
  if (t->n_numa == 0 || t->n_cores == 0)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "topo: %u nodes, %u cores", t->n_numa, t->n_cores);
  uint32_t sum = 0, pus = 0;
  for (uint32_t j = 0; j < t->n_numa; j++) {
    uint32_t n = t->numa_core_off[j + 1] - t->numa_core_off[j];
    if (n != t->numa[j].num_cores)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "topo: node %u lists %u cores, counts %u", j, n,
                       t->numa[j].num_cores);
    for (uint32_t k = t->numa_core_off[j]; k < t->numa_core_off[j + 1]; k++) {
      uint32_t c = t->numa_core_idx[k];
      if (c >= t->n_cores || (uint32_t)t->cores[c].numa != j ||
          (k > t->numa_core_off[j] && c <= t->numa_core_idx[k - 1]))
        return rkvi_fail(err, RKV_ERR_CORRUPT, "topo: node %u core list entry %u bad", j, k);
    }
    int32_t cn = t->numa[j].cpu_node;
    if ((n > 0 && cn != (int32_t)j) || cn < -1 || cn >= (int32_t)t->n_numa ||
        (cn >= 0 && t->numa[cn].num_cores == 0))
      return rkvi_fail(err, RKV_ERR_CORRUPT, "topo: node %u cpu_node %d", j, (int)cn);
    sum += n;
    pus += t->numa[j].num_pus;
  }
  if (sum != t->n_cores)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "topo: nodes hold %u cores of %u", sum, t->n_cores);
  if (pus > t->n_pus)
    return rkvi_fail(err, RKV_ERR_CORRUPT, "topo: cores hold %u PUs of %u", pus, t->n_pus);
  for (uint32_t g = 0; g < t->n_gpus; g++)
    if (t->gpus[g].numa < -1 || t->gpus[g].numa >= (int32_t)t->n_numa)
      return rkvi_fail(err, RKV_ERR_CORRUPT, "topo: GPU %u on node %d", g, (int)t->gpus[g].numa);
  return RKV_OK;
}

/* ---- placement -------------------------------------------------------------------------- */

const char *rkv_topo_place_reason_name(rkv_topo_place_reason r) {
  switch (r) {
    case RKV_TOPO_PLACE_GPU_LOCAL:
      return "gpu-local";
    case RKV_TOPO_PLACE_BALANCED:
      return "balanced";
    case RKV_TOPO_PLACE_NO_LOCAL_CORES:
      return "gpu-node-has-no-cores";
  }
  return "invalid";
}

/* Ranks among out[0..n) already using node j (for memory or for cores). */
static uint32_t node_load(const rkv_topo_placement *out, uint32_t n, int32_t j, bool cores) {
  uint32_t k = 0;
  for (uint32_t q = 0; q < n; q++) k += (cores ? out[q].core_numa : out[q].numa) == j;
  return k;
}

/* The node with cores that has the fewest users among out[0..n) (ties: lowest index). */
static int32_t least_loaded(const rkv_topo *t, const rkv_topo_placement *out, uint32_t n,
                            bool cores) {
  int32_t best = -1;
  uint32_t best_load = UINT32_MAX;
  for (uint32_t j = 0; j < t->n_numa; j++) {
    if (t->numa[j].num_cores == 0) continue;
    uint32_t l = node_load(out, n, (int32_t)j, cores);
    if (l < best_load) best = (int32_t)j, best_load = l;
  }
  return best;
}

rkv_status rkv_topo_place(const rkv_topo *t, uint32_t n_ranks, const int32_t *gpu_numa,
                          rkv_topo_placement *out) {
  if (!t || !out || n_ranks == 0) return RKV_ERR_INVALID_ARG;
  char *err = ((rkv_topo *)t)->err;
  if (gpu_numa) {
    for (uint32_t r = 0; r < n_ranks; r++)
      if (gpu_numa[r] < -1 || gpu_numa[r] >= (int32_t)t->n_numa)
        return rkvi_fail(err, RKV_ERR_INVALID_ARG,
                         "rkv_topo_place: rank %u GPU on NUMA node %d, topology has %u nodes", r,
                         (int)gpu_numa[r], t->n_numa);
  }
  /* Pass 1: ranks whose GPU locality is known; -1 marks the rest as unplaced. */
  for (uint32_t r = 0; r < n_ranks; r++) {
    int32_t j = gpu_numa ? gpu_numa[r] : -1;
    out[r].numa = j;
    out[r].core_numa = -1;
    out[r].reason = j >= 0 ? RKV_TOPO_PLACE_GPU_LOCAL : RKV_TOPO_PLACE_BALANCED;
  }
  /* Pass 2: the others to the least-loaded node (counting every rank placed so far). */
  for (uint32_t r = 0; r < n_ranks; r++) {
    if (out[r].numa >= 0) continue;
    out[r].numa = least_loaded(t, out, n_ranks, false);
  }
  /* Pass 3: the node whose cores the thread uses; a core-less node uses the cores local to
   * it (its cpu_node), or when none are, the least-loaded node's (by core users so far). */
  for (uint32_t r = 0; r < n_ranks; r++) {
    const rkv_topo_numa *nd = &t->numa[out[r].numa];
    if (nd->num_cores > 0) {
      out[r].core_numa = out[r].numa;
    } else {
      out[r].core_numa = nd->cpu_node >= 0 ? nd->cpu_node : least_loaded(t, out, r, true);
      out[r].reason = RKV_TOPO_PLACE_NO_LOCAL_CORES;
    }
  }
  /* Pass 4: contiguous core slices per node, in rank order. */
  for (uint32_t r = 0; r < n_ranks; r++) {
    uint32_t m = node_load(out, n_ranks, out[r].core_numa, true);
    uint32_t i = node_load(out, r, out[r].core_numa, true);
    uint32_t c = t->numa[out[r].core_numa].num_cores;
    if (c >= m) {
      out[r].core_first = (uint32_t)((uint64_t)i * c / m);
      out[r].core_count = (uint32_t)((uint64_t)(i + 1) * c / m) - out[r].core_first;
    } else {
      out[r].core_first = i % c;
      out[r].core_count = 1;
    }
  }
  return RKV_OK;
}

/* ---- binding and bound memory ----------------------------------------------------------- */

rkv_status rkv_topo_bind_thread(rkv_topo *t, const rkv_topo_placement *p) {
  if (!t || !p || p->core_numa < 0 || (uint32_t)p->core_numa >= t->n_numa)
    return RKV_ERR_INVALID_ARG;
  uint32_t n = 0;
  const uint32_t *cores = rkv_topo_numa_cores(t, (uint32_t)p->core_numa, &n);
  if (p->core_count == 0 || p->core_first + p->core_count > n)
    return rkvi_fail(t->err, RKV_ERR_INVALID_ARG, "rkv_topo_bind_thread: slice %u+%u of %u cores",
                     p->core_first, p->core_count, n);
  if (t->source != RKV_TOPO_SOURCE_HWLOC)
    return rkvi_fail(t->err, RKV_ERR_UNSUPPORTED,
                     "rkv_topo_bind_thread: %s topology is not "
                     "this machine's (or hwloc is missing): not binding",
                     rkv_topo_source_name(t->source));
#ifdef RKV_HAVE_HWLOC
  hwloc_bitmap_t set = hwloc_bitmap_alloc();
  if (!set) return rkvi_fail(t->err, RKV_ERR_NO_MEMORY, "rkv_topo_bind_thread: out of memory");
  for (uint32_t k = p->core_first; k < p->core_first + p->core_count; k++) {
    hwloc_obj_t o = hwloc_get_obj_by_type(t->hw, t->core_type, cores[k]);
    if (o && o->cpuset) hwloc_bitmap_or(set, set, o->cpuset);
  }
  int rc = hwloc_set_cpubind(t->hw, set, HWLOC_CPUBIND_THREAD);
  int e = errno;
  char buf[128] = "";
  hwloc_bitmap_list_snprintf(buf, sizeof buf, set);
  hwloc_bitmap_free(set);
  if (rc != 0)
    return rkvi_fail(t->err, RKV_ERR_IO, "rkv_topo_bind_thread: binding to PUs %s failed: %s", buf,
                     strerror(e));
  rkvi_log(tlog(t), RKV_LOG_INFO, "topo: thread bound to PUs %s (NUMA node %d)", buf,
           (int)p->core_numa);
  return RKV_OK;
#else
  (void)cores;
  return RKV_ERR_UNSUPPORTED;
#endif
}

#define RKV_TOPO_PAGE 4096u

rkv_status rkv_topo_host_alloc(rkv_topo *t, int32_t numa, size_t size, uint32_t flags,
                               rkv_host_buffer *out) {
  if (!t || !out || size == 0 || numa < -1 || numa >= (int32_t)t->n_numa)
    return t ? rkvi_fail(t->err, RKV_ERR_INVALID_ARG, "rkv_topo_host_alloc: node %d, size %zu",
                         (int)numa, size)
             : RKV_ERR_INVALID_ARG;
  rkv_host_buffer b = {NULL, size, -1, false, false};
  const char *why = "no node requested";
#ifdef RKV_HAVE_HWLOC
  if (numa >= 0 && t->source == RKV_TOPO_SOURCE_HWLOC) {
    hwloc_obj_t nd = hwloc_get_obj_by_type(t->hw, HWLOC_OBJ_NUMANODE, (unsigned)numa);
    /* STRICT: memory that hwloc could not bind must not be reported as bound. */
    b.ptr = nd ? hwloc_alloc_membind(t->hw, size, nd->nodeset, HWLOC_MEMBIND_BIND,
                                     HWLOC_MEMBIND_BYNODESET | HWLOC_MEMBIND_STRICT)
               : NULL;
    if (b.ptr) {
      b.bound = true;
      b.numa = numa;
    } else {
      why = strerror(errno);
    }
  } else if (numa >= 0) {
    why = "the topology is not this machine's";
  }
#else
  if (numa >= 0) why = "built without hwloc";
#endif
  if (!b.ptr) {
    b.ptr = rkvi_alloc(talloc(t), size, RKV_TOPO_PAGE);
    if (!b.ptr) return rkvi_fail(t->err, RKV_ERR_NO_MEMORY, "rkv_topo_host_alloc: %zu bytes", size);
    if (numa >= 0)
      rkvi_log(tlog(t), RKV_LOG_INFO, "topo: %zu-byte host buffer not bound to NUMA node %d: %s",
               size, (int)numa, why);
  }
  /* Touching every page here also places them (first touch) under the binding. */
  memset(b.ptr, 0, size);
#ifdef RKV_HAVE_CUDA
  if (flags & RKV_TOPO_HOST_PIN) {
    cudaError_t e = cudaHostRegister(b.ptr, size, cudaHostRegisterDefault);
    if (e == cudaSuccess) {
      b.pinned = true;
    } else {
      (void)cudaGetLastError();
      rkvi_log(tlog(t), RKV_LOG_INFO, "topo: cudaHostRegister of %zu bytes failed: %s", size,
               cudaGetErrorString(e));
    }
  }
#else
  (void)flags;
#endif
  *out = b;
  return RKV_OK;
}

void rkv_topo_host_free(rkv_topo *t, rkv_host_buffer *buf) {
  if (!t || !buf || !buf->ptr) return;
#ifdef RKV_HAVE_CUDA
  if (buf->pinned) cudaHostUnregister(buf->ptr);
#endif
#ifdef RKV_HAVE_HWLOC
  if (buf->bound) {
    hwloc_free(t->hw, buf->ptr, buf->size);
    memset(buf, 0, sizeof *buf);
    return;
  }
#endif
  rkvi_free(talloc(t), buf->ptr, buf->size);
  memset(buf, 0, sizeof *buf);
}
