/* librkv machine topology and placement for tensor-parallel ranks.
 *
 * A topology handle is a plain snapshot of the machine (packages, NUMA nodes, cores, GPUs with
 * their PCI bus id and local NUMA node) taken through hwloc, or from an hwloc synthetic
 * description ("pack:2 numa:2 core:4 pu:2") for tests and what-if runs. Placement is a pure
 * function of that snapshot: each local rank gets the NUMA node its GPU hangs off (the host
 * swap pool goes there) and a disjoint slice of that node's cores (the scheduler thread binds
 * there, before NCCL initialises so NCCL's own threads inherit a local mask).
 * Without hwloc the snapshot is one NUMA node holding every online CPU, no GPUs, and binding is
 * unsupported; a log line says so. The handle is read-only after create (thread-safe reads). */
#ifndef RKV_TOPO_H
#define RKV_TOPO_H

#include <rkv/runtime.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct rkv_topo rkv_topo;

typedef enum rkv_topo_source {
  RKV_TOPO_SOURCE_HWLOC = 0,     /* this machine, through hwloc */
  RKV_TOPO_SOURCE_SYNTHETIC = 1, /* an hwloc synthetic description: not this machine */
  RKV_TOPO_SOURCE_FALLBACK = 2,  /* no hwloc: one NUMA node of sysconf CPUs */
  RKV_TOPO_SOURCE_XML = 3        /* an hwloc XML file (lstopo --of xml): not this machine */
} rkv_topo_source;

#define RKV_TOPO_CONFIG_VERSION 1
typedef struct rkv_topo_config {
  uint32_t struct_size; /* sizeof(rkv_topo_config) */
  /* hwloc synthetic description; NULL = this machine. Read at create. */
  const char *synthetic;
  /* hwloc XML export of a machine with its PCI devices (`lstopo --of xml`: another machine's
   * map, or a test fixture); NULL = none. Read at create. */
  const char *xml_path;
  bool detect_gpus;               /* list NVIDIA PCI devices (3D / VGA controllers); default true */
  const rkv_allocator *allocator; /* copied; NULL = libc */
  const rkv_logger *logger;       /* copied; NULL = silent */
} rkv_topo_config;
#define RKV_TOPO_CONFIG_INIT \
  { sizeof(rkv_topo_config), NULL, NULL, true, NULL, NULL }

typedef struct rkv_topo_numa {
  int32_t os_index;      /* the kernel's node number */
  uint64_t memory_bytes; /* local memory (0 when unknown) */
  uint32_t num_cores;
  uint32_t num_pus;
  int32_t cpu_node; /* node whose cores are local to this one: itself when it has cores; for a
                       memory-only node (HBM, CXL) the node owning the cores of its cpuset;
                       -1 when no core is local */
} rkv_topo_numa;

typedef struct rkv_topo_core {
  int32_t os_index;
  int32_t package;  /* logical package index, -1 unknown */
  int32_t numa;     /* logical NUMA node index */
  int32_t first_pu; /* os index of its first hardware thread */
  uint32_t num_pus;
} rkv_topo_core;

typedef struct rkv_topo_gpu {
  char pci_bus_id[16]; /* "0000:3b:00.0" (lower-case hex) */
  uint16_t vendor_id;
  uint16_t device_id;
  int32_t numa;        /* logical NUMA node it is local to; -1 = not local to one node */
  int32_t cuda_device; /* CUDA ordinal with the same bus id, -1 when unknown */
  uint32_t num_local_cores;
} rkv_topo_gpu;

/* Loads the topology. Returns RKV_ERR_INVALID_ARG (bad config, or both synthetic and xml_path),
 * RKV_ERR_UNSUPPORTED (synthetic / XML without hwloc), RKV_ERR_FORMAT (hwloc rejected the
 * synthetic string or the XML file: reason in err_out), RKV_ERR_NO_MEMORY. *out = NULL on failure;
 * err_out (may be NULL) gets the reason. */
RKV_API rkv_status rkv_topo_create(const rkv_topo_config *cfg, rkv_topo **out, char *err_out,
                                   size_t err_len);
RKV_API void rkv_topo_destroy(rkv_topo *t);
RKV_API const char *rkv_topo_last_error(const rkv_topo *t);
RKV_API rkv_topo_source rkv_topo_get_source(const rkv_topo *t);
/* "hwloc" / "synthetic" / "fallback" / "xml". */
RKV_API const char *rkv_topo_source_name(rkv_topo_source s);

RKV_API uint32_t rkv_topo_num_packages(const rkv_topo *t);
RKV_API uint32_t rkv_topo_num_numa(const rkv_topo *t);
RKV_API uint32_t rkv_topo_num_cores(const rkv_topo *t);
RKV_API uint32_t rkv_topo_num_pus(const rkv_topo *t);
RKV_API uint32_t rkv_topo_num_gpus(const rkv_topo *t);
/* Borrowed pointers valid for the handle's lifetime; NULL when i is out of range. */
RKV_API const rkv_topo_numa *rkv_topo_get_numa(const rkv_topo *t, uint32_t i);
RKV_API const rkv_topo_core *rkv_topo_get_core(const rkv_topo *t, uint32_t i);
RKV_API const rkv_topo_gpu *rkv_topo_get_gpu(const rkv_topo *t, uint32_t i);
/* Logical core indices of NUMA node `numa`, ascending: [*count]. NULL when out of range. */
RKV_API const uint32_t *rkv_topo_numa_cores(const rkv_topo *t, uint32_t numa, uint32_t *count);
/* Index of the GPU whose PCI bus id matches (case-insensitive, the "0000:" domain optional),
 * or -1. */
RKV_API int32_t rkv_topo_find_gpu(const rkv_topo *t, const char *pci_bus_id);

/* Invariant walker: cores per node add up, each core's node lists it, GPU nodes in range.
 * RKV_OK or RKV_ERR_CORRUPT (details in the last error). O(cores + gpus). */
RKV_API rkv_status rkv_topo_check(const rkv_topo *t);

/* ---- Placement -------------------------------------------------------------------------- */

typedef enum rkv_topo_place_reason {
  RKV_TOPO_PLACE_GPU_LOCAL = 0,     /* the node the rank's GPU is local to */
  RKV_TOPO_PLACE_BALANCED = 1,      /* no GPU locality given: least-loaded node */
  RKV_TOPO_PLACE_NO_LOCAL_CORES = 2 /* GPU node has no cores: memory there, cores of its
                                       cpu_node (or the least-used node when it has none) */
} rkv_topo_place_reason;

typedef struct rkv_topo_placement {
  int32_t numa;      /* logical NUMA node for the host swap pool */
  int32_t core_numa; /* logical node whose cores the thread uses (== numa unless no cores) */
  /* The thread's cores: slice [core_first, core_first + core_count) of
   * rkv_topo_numa_cores(core_numa); disjoint between ranks unless a node has fewer cores than
   * the ranks using it. */
  uint32_t core_first;
  uint32_t core_count;
  rkv_topo_place_reason reason;
} rkv_topo_placement;

/* Places n_ranks local ranks. gpu_numa[r] (may be NULL = all -1) is the logical NUMA node rank
 * r's GPU is local to, or -1 when unknown / no GPU (e.g. rkv_topo_get_gpu(t, g)->numa for the
 * GPU rank r drives). Ranks with a known node go there; the others go, in rank order, to the
 * node with the fewest ranks so far (ties: lowest index) among nodes with cores. Each node's
 * cores are then split into contiguous slices among its ranks in rank order. Deterministic:
 * every rank computes the same answer from the same inputs. RKV_ERR_INVALID_ARG for an
 * out-of-range node or n_ranks == 0. O(n_ranks * numa + cores). */
RKV_API rkv_status rkv_topo_place(const rkv_topo *t, uint32_t n_ranks, const int32_t *gpu_numa,
                                  rkv_topo_placement *out /* [n_ranks] */);
RKV_API const char *rkv_topo_place_reason_name(rkv_topo_place_reason r);

/* Binds the calling thread to the PUs of the placement's cores. RKV_ERR_UNSUPPORTED for
 * synthetic, XML or fallback topologies, RKV_ERR_IO when the OS refuses (details in last error). */
RKV_API rkv_status rkv_topo_bind_thread(rkv_topo *t, const rkv_topo_placement *p);

/* Host memory for the swap pool, on one NUMA node and (CUDA builds with a device) pinned. */
typedef struct rkv_host_buffer {
  void *ptr;
  size_t size;
  int32_t numa; /* node it is bound to, -1 when not bound */
  bool bound;   /* memory bound to `numa` by hwloc */
  bool pinned;  /* page-locked with cudaHostRegister */
} rkv_host_buffer;

#define RKV_TOPO_HOST_PIN 1u /* try cudaHostRegister (ignored without CUDA / device) */

/* Allocates size bytes (zeroed, page aligned) bound to NUMA node `numa` when the topology is
 * this machine's and hwloc can bind; otherwise plain memory with bound = false and an INFO log
 * line saying why. Binding or pinning failing is not an error; only running out of memory is
 * (RKV_ERR_NO_MEMORY). RKV_ERR_INVALID_ARG for a bad node or size 0. */
RKV_API rkv_status rkv_topo_host_alloc(rkv_topo *t, int32_t numa, size_t size, uint32_t flags,
                                       rkv_host_buffer *out);
/* Frees a buffer from rkv_topo_host_alloc (unpins first); accepts a zeroed buffer. */
RKV_API void rkv_topo_host_free(rkv_topo *t, rkv_host_buffer *buf);

#ifdef __cplusplus
}
#endif
#endif /* RKV_TOPO_H */
