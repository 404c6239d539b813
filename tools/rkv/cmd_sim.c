/* `rkv sim`: the serving simulator. Drives the scheduler, the block manager, eviction and
 * (with --compute cpu) the attention kernels over a synthetic model of a given shape, for
 * several eviction policies on the same workload, and compares them: KV memory, batch,
 * preemptions, throughput on this backend and modelled on a named GPU, and where the time
 * went. Table on stdout (or JSON), an SVG plot, progress on stderr. docs/SIMULATOR.md. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "rkv_tool.h"
#include "sim.h"

const char rt_cmd_sim_summary[] =
    "serving simulator: compare eviction policies (KV memory, batch, throughput)";

static void usage(FILE *f) {
  fputs(
      "usage: rkv sim [options]\n"
      "Simulates continuous-batching serving with R-KV-style eviction and compares policies.\n\n"
      "model:\n"
      "  --model tiny|llama-8b|qwen-14b   shape preset (default tiny: 2 layers, 4 q / 2 kv heads,"
      " d 64)\n"
      "  --layers N --q-heads N --kv-heads N --head-dim N   explicit shape (overrides)\n"
      "  --params-b X        parameters in billions for the cost model (default: preset/estimate)\n"
      "  --dtype bf16|f16|f32  KV element type (default bf16; f32 for tiny)\n"
      "  --block-size N      tokens per block (default 16)\n"
      "  --pool-gib X | --pool-blocks N   KV pool (default tiny 1024 blocks, others 64 GiB)\n"
      "workload:\n"
      "  --workload azure-conv|azure-code|poisson|fixed   (default azure-conv)\n"
      "  --trace FILE        CSV with TIMESTAMP,ContextTokens,GeneratedTokens\n"
      "  --requests N        (default tiny 32, others 256)\n"
      "  --rate R            poisson arrivals per second (default 4)\n"
      "  --span S            rescale trace arrivals to S seconds (0 = as recorded;"
      " default tiny 0.05)\n"
      "  --prompt-len N      prompt of poisson/fixed requests (default 128)\n"
      "  --prompt-cap N      clip trace prompts (default tiny 128, others 0 = none)\n"
      "  --gen reasoning|trace|fixed      generation lengths (default reasoning)\n"
      "  --gen-preset math500|aime24      reasoning mean/cap from the R-KV paper (2979/16K,"
      " 15536/32K)\n"
      "  --gen-mean X --gen-sigma X --gen-cap N   lognormal before clipping"
      " (default tiny 768/0.8/2048)\n"
      "  --gen-len N         fixed generation length (implies --gen fixed)\n"
      "  --seed N            (default 1)\n"
      "  --prefixes K        shared-prefix workload: every prompt starts with one of K system\n"
      "                      prompts (0 = none, the default)\n"
      "  --prefix-len LO-HI  system prompt lengths in tokens (default 1024-4096)\n"
      "eviction and scheduling:\n"
      "  --policy LIST       comma list of full,rkv,snapkv,streaming,h2o (default"
      " full,rkv,snapkv,streaming)\n"
      "  --budget B --buffer N --window A   (default tiny 128/64/8, others 1024/128/8)\n"
      "  --admission reserve|optimistic   (default reserve)\n"
      "  --preempt recompute|swap         (default recompute)\n"
      "  --host-gib X        host swap pool (default 0; 4 x the pool's blocks with swap)\n"
      "  --max-batched-tokens N --max-seqs N --max-prefill-chunk N\n"
      "  --prefix-cache on|off   share cached system-prompt blocks between requests (default\n"
      "                      off); the report gives prefill tokens computed and the hit rate\n"
      "  --prefix-rule protect|copy   what compression may do to a shared prefix: protect it\n"
      "                      (the budget counts the rest; default) or copy it first (evictable)\n"
      "  --cache-lookahead N admit, of the first N waiting requests, the one with the most\n"
      "                      cached prompt blocks (SGLang's lpm, windowed; 0 = arrival order,\n"
      "                      the default; needs --prefix-cache on)\n"
      "  --overlap on|off    overlap scheduling: plan step N+1 while step N runs (default off);\n"
      "                      the report gives the host planning time it hid per step\n"
      "  --granularity stream|layer|kvhead|sequence   which streams of a sequence share one\n"
      "                      kept set (docs/EVICTION.md; default stream). --compute cpu runs\n"
      "                      rkv_evict_seq; none cuts uniformly (no effect); cuda/emu aggregate\n"
      "                      each group's scores in the batched launch\n",
      f);
  fputs(
      "compute and output:\n"
      "  --compute none|cpu|cuda   none: block accounting only, timed by the cost model\n"
      "                      (default cpu for tiny, none otherwise); emu: the cuda engine on\n"
      "                      an emulated device with the CPU kernels (tests without a GPU)\n"
      "  --gpu h100|a100|h200      GPU of the roofline cost model (default h100)\n"
      "  --threads N         CPU kernel threads (0 = all cores)\n"
      "  --steps N           stop each policy after N steps\n"
      "  --check             rkv_sched_check after every step (slow)\n"
      "  --json              JSON on stdout instead of the table\n"
      "  --plot FILE.svg     KV memory and running batch over time per policy\n"
      "  --quiet             no progress on stderr\n"
      "tensor parallelism (docs/TP.md; --pool-* are per rank):\n"
      "  --tp N              N ranks, each with kv_heads / N kv heads (whole GQA groups), its\n"
      "                      own block manager and pool; one step sync per step\n"
      "  --tp-launch auto|threads|mpi   threads: N threads over an in-process communicator;\n"
      "                      mpi: one rank per process (mpirun -np N rkv sim ...); auto "
      "(default):\n"
      "                      mpi when mpirun started several ranks, else threads\n"
      "  --tp-timeout SEC    deadline of every collective (default 60)\n"
      "  --tp-rank-blocks-scale R:F   rank R's memory holds F x the pool (test heterogeneity)\n"
      "  --tp-inject-divergence STEP  rank 1 perturbs its plan hash of step STEP (test)\n"
      "  --tp-die STEP       rank 1 dies at step STEP without a word (test)\n"
      "  --tp-no-pool-min    skip the start-up MIN of pool sizes: each rank keeps its own\n"
      "                      pool and the per-step free-block MIN alone keeps the plans\n"
      "                      equal (test)\n"
      "  --tp-bind           bind each rank's thread to its cores (rkv_topo_place)\n",
      f);
}

static bool parse_policies(const char *s, sim_opts *o) {
  char buf[256];
  if (!rt_check_list("sim", "--policy", s, MAX_POLICIES, sizeof buf - 1)) return false;
  snprintf(buf, sizeof buf, "%s", s);
  o->n_policies = 0;
  for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
    rkv_evict_policy p;
    if (rkv_evict_policy_parse(tok, &p) != RKV_OK) {
      fprintf(stderr,
              "rkv sim: bad value for --policy: unknown policy '%s' (full, rkv, snapkv, "
              "streaming, h2o)\n",
              tok);
      return false;
    }
    o->policies[o->n_policies++] = p;
  }
  return true;
}

static void set_defaults(sim_opts *o, const char *model) {
  memset(o, 0, sizeof *o);
  bool tiny = strcmp(model, "tiny") == 0;
  o->model_name = model;
  o->dtype = tiny ? RKV_DTYPE_F32 : RKV_DTYPE_BF16;
  o->block_size = 16;
  o->pool_blocks = tiny ? 1024 : 0;
  o->pool_gib = tiny ? 0.0 : 64.0;
  o->wl.kind = "azure-conv";
  o->wl.n = tiny ? 32 : 256;
  o->wl.rate = 4.0;
  o->wl.span = tiny ? 0.05 : 0.0;
  o->wl.gen = "reasoning";
  o->wl.gen_mean = tiny ? 768 : 2979;
  o->wl.gen_sigma = 0.8;
  o->wl.gen_cap = tiny ? 2048 : 16384;
  o->wl.prompt_len = 128;
  o->wl.prompt_cap = tiny ? 128 : 0;
  o->wl.seed = 1;
  o->wl.prefix_lo = 1024;
  o->wl.prefix_hi = 4096;
  o->prefix_rule = RKV_SCHED_PREFIX_PROTECT;
  o->policies[0] = RKV_EVICT_FULL;
  o->policies[1] = RKV_EVICT_RKV;
  o->policies[2] = RKV_EVICT_SNAPKV;
  o->policies[3] = RKV_EVICT_STREAMING;
  o->n_policies = 4;
  rkv_evict_params ev = RKV_EVICT_PARAMS_INIT;
  o->ev = ev;
  o->ev.budget = tiny ? 128 : 1024;
  o->ev.buffer = tiny ? 64 : 128;
  o->admission = RKV_SCHED_RESERVE;
  o->preempt = RKV_SCHED_PREEMPT_RECOMPUTE;
  o->max_batched_tokens = tiny ? 2048 : 8192;
  o->max_seqs = tiny ? 64 : 1024;
  o->compute = tiny ? SIM_COMPUTE_CPU : SIM_COMPUTE_NONE;
  o->gpu = sim_gpu_find("h100");
  o->host_gib = -1.0;
  o->tp.inject_step = -1;
  o->tp.die_step = -1;
  o->tp.scale_rank = -1;
  o->tp.scale = 1.0;
  o->tp.timeout_s = 60.0;
}

static double kv_block_bytes(const sim_opts *o);

static bool parse_args(int argc, char **argv, sim_opts *o) {
  const char *model = "tiny";
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--model") == 0 && i + 1 < argc) model = argv[i + 1];
  set_defaults(o, model);
  if (!sim_model_preset(model, &o->model)) {
    fprintf(stderr, "rkv sim: bad value for --model: '%s' (tiny, llama-8b, qwen-14b)\n", model);
    return false;
  }
  double params_b = 0.0;
  bool shape_set = false;
  const char *C = "sim";
  for (int i = 1; i < argc; i++) {
    const char *a = argv[i], *v;
    uint64_t u;
    double f;
#define VAL() \
  if (!(v = rt_optval(C, argc, argv, &i))) return false
#define U64(lo, hi, dst)                                      \
  do {                                                        \
    VAL();                                                    \
    if (!rt_parse_u64(C, a, v, (lo), (hi), &u)) return false; \
    dst = u;                                                  \
  } while (0)
#define F64(lo, hi, dst)                                      \
  do {                                                        \
    VAL();                                                    \
    if (!rt_parse_f64(C, a, v, (lo), (hi), &f)) return false; \
    dst = f;                                                  \
  } while (0)
    if (strcmp(a, "--model") == 0) {
      VAL();
    } else if (strcmp(a, "--layers") == 0) {
      U64(1, 1024, o->model.layers);
      shape_set = true;
    } else if (strcmp(a, "--q-heads") == 0) {
      U64(1, 1024, o->model.q_heads);
      shape_set = true;
    } else if (strcmp(a, "--kv-heads") == 0) {
      U64(1, 1024, o->model.kv_heads);
      shape_set = true;
    } else if (strcmp(a, "--head-dim") == 0) {
      U64(1, 4096, o->model.head_dim);
      shape_set = true;
    } else if (strcmp(a, "--params-b") == 0) {
      F64(1e-6, 1e5, params_b);
    } else if (strcmp(a, "--dtype") == 0) {
      VAL();
      if (rkv_dtype_parse(v, &o->dtype) != RKV_OK) {
        fprintf(stderr, "rkv sim: bad --dtype '%s'\n", v);
        return false;
      }
    } else if (strcmp(a, "--block-size") == 0) {
      U64(1, 1024, o->block_size);
    } else if (strcmp(a, "--pool-gib") == 0) {
      F64(1e-6, 1e6, o->pool_gib);
      o->pool_blocks = 0;
    } else if (strcmp(a, "--pool-blocks") == 0) {
      U64(1, (1u << 31) - 1, o->pool_blocks);
      o->pool_gib = 0.0;
    } else if (strcmp(a, "--host-gib") == 0) {
      F64(0, 1e6, o->host_gib);
    } else if (strcmp(a, "--workload") == 0) {
      VAL();
      o->wl.kind = v;
    } else if (strcmp(a, "--trace") == 0) {
      VAL();
      o->wl.trace = v;
    } else if (strcmp(a, "--requests") == 0) {
      U64(1, 10000000, o->wl.n);
    } else if (strcmp(a, "--rate") == 0) {
      F64(1e-9, 1e9, o->wl.rate);
    } else if (strcmp(a, "--span") == 0) {
      F64(0, 1e9, o->wl.span);
    } else if (strcmp(a, "--prompt-len") == 0) {
      U64(1, 1u << 30, o->wl.prompt_len);
    } else if (strcmp(a, "--prompt-cap") == 0) {
      U64(0, 1u << 30, o->wl.prompt_cap);
    } else if (strcmp(a, "--gen") == 0) {
      VAL();
      o->wl.gen = v;
    } else if (strcmp(a, "--gen-preset") == 0) {
      VAL();
      if (strcmp(v, "math500") == 0) {
        o->wl.gen_mean = 2979;
        o->wl.gen_cap = 16384;
      } else if (strcmp(v, "aime24") == 0) {
        o->wl.gen_mean = 15536;
        o->wl.gen_cap = 32768;
        o->wl.gen_sigma = 0.5;
      } else {
        fprintf(stderr, "rkv sim: unknown --gen-preset '%s' (math500, aime24)\n", v);
        return false;
      }
    } else if (strcmp(a, "--gen-mean") == 0) {
      F64(1, 1e9, o->wl.gen_mean);
    } else if (strcmp(a, "--gen-sigma") == 0) {
      F64(0, 10, o->wl.gen_sigma);
    } else if (strcmp(a, "--gen-cap") == 0) {
      U64(1, 1u << 30, o->wl.gen_cap);
    } else if (strcmp(a, "--gen-len") == 0) {
      U64(1, 1u << 30, o->wl.gen_fixed);
      o->wl.gen = "fixed";
      if (o->wl.gen_cap < o->wl.gen_fixed) o->wl.gen_cap = o->wl.gen_fixed;
    } else if (strcmp(a, "--seed") == 0) {
      U64(0, UINT64_MAX, o->wl.seed);
    } else if (strcmp(a, "--policy") == 0) {
      VAL();
      if (!parse_policies(v, o)) return false;
    } else if (strcmp(a, "--budget") == 0) {
      U64(2, 1u << 30, o->ev.budget);
    } else if (strcmp(a, "--buffer") == 0) {
      U64(1, 1u << 30, o->ev.buffer);
    } else if (strcmp(a, "--window") == 0) {
      U64(1, 1u << 20, o->ev.window);
    } else if (strcmp(a, "--prefixes") == 0) {
      U64(0, 1u << 20, o->wl.n_prefixes);
    } else if (strcmp(a, "--prefix-len") == 0) {
      VAL();
      long long lo, hi;
      char extra;
      if (sscanf(v, "%lld-%lld%c", &lo, &hi, &extra) != 2 || lo < 1 || hi < lo || hi > (1 << 24)) {
        fprintf(stderr, "rkv sim: bad --prefix-len '%s' (LO-HI, 1 <= LO <= HI <= 16777216)\n", v);
        return false;
      }
      o->wl.prefix_lo = lo;
      o->wl.prefix_hi = hi;
    } else if (strcmp(a, "--prefix-cache") == 0) {
      VAL();
      if (strcmp(v, "on") && strcmp(v, "off")) {
        fprintf(stderr, "rkv sim: bad --prefix-cache '%s' (on, off)\n", v);
        return false;
      }
      o->prefix_cache = strcmp(v, "on") == 0;
    } else if (strcmp(a, "--overlap") == 0) {
      VAL();
      if (strcmp(v, "on") && strcmp(v, "off")) {
        fprintf(stderr, "rkv sim: bad --overlap '%s' (on, off)\n", v);
        return false;
      }
      o->overlap = strcmp(v, "on") == 0;
    } else if (strcmp(a, "--granularity") == 0) {
      VAL();
      if (rkv_evict_granularity_parse(v, &o->granularity) != RKV_OK) {
        fprintf(stderr, "rkv sim: bad --granularity '%s' (stream, layer, kvhead, sequence)\n", v);
        return false;
      }
    } else if (strcmp(a, "--cache-lookahead") == 0) {
      U64(0, 65536, o->cache_lookahead);
    } else if (strcmp(a, "--prefix-rule") == 0) {
      VAL();
      if (strcmp(v, "protect") == 0) {
        o->prefix_rule = RKV_SCHED_PREFIX_PROTECT;
      } else if (strcmp(v, "copy") == 0) {
        o->prefix_rule = RKV_SCHED_PREFIX_COPY;
      } else {
        fprintf(stderr, "rkv sim: bad --prefix-rule '%s' (protect, copy)\n", v);
        return false;
      }
    } else if (strcmp(a, "--admission") == 0) {
      VAL();
      if (strcmp(v, "reserve") == 0)
        o->admission = RKV_SCHED_RESERVE;
      else if (strcmp(v, "optimistic") == 0)
        o->admission = RKV_SCHED_OPTIMISTIC;
      else {
        fprintf(stderr, "rkv sim: bad --admission '%s' (reserve, optimistic)\n", v);
        return false;
      }
    } else if (strcmp(a, "--preempt") == 0) {
      VAL();
      if (strcmp(v, "recompute") == 0)
        o->preempt = RKV_SCHED_PREEMPT_RECOMPUTE;
      else if (strcmp(v, "swap") == 0)
        o->preempt = RKV_SCHED_PREEMPT_SWAP;
      else {
        fprintf(stderr, "rkv sim: bad --preempt '%s' (recompute, swap)\n", v);
        return false;
      }
    } else if (strcmp(a, "--max-batched-tokens") == 0) {
      U64(1, 1u << 30, o->max_batched_tokens);
    } else if (strcmp(a, "--max-seqs") == 0) {
      U64(1, 1u << 20, o->max_seqs);
    } else if (strcmp(a, "--max-prefill-chunk") == 0) {
      U64(0, 1u << 30, o->max_prefill_chunk);
    } else if (strcmp(a, "--compute") == 0) {
      VAL();
      if (strcmp(v, "none") == 0)
        o->compute = SIM_COMPUTE_NONE;
      else if (strcmp(v, "cpu") == 0)
        o->compute = SIM_COMPUTE_CPU;
      else if (strcmp(v, "cuda") == 0)
        o->compute = SIM_COMPUTE_CUDA;
      else if (strcmp(v, "emu") == 0)
        o->compute = SIM_COMPUTE_EMU;
      else {
        fprintf(stderr, "rkv sim: bad --compute '%s' (none, cpu, cuda, emu)\n", v);
        return false;
      }
    } else if (strcmp(a, "--gpu") == 0) {
      VAL();
      if (!(o->gpu = sim_gpu_find(v))) {
        fprintf(stderr, "rkv sim: unknown --gpu '%s' (h100, a100, h200)\n", v);
        return false;
      }
    } else if (strcmp(a, "--threads") == 0) {
      U64(0, 1024, o->threads);
    } else if (strcmp(a, "--steps") == 0) {
      U64(1, UINT64_MAX, o->max_steps);
    } else if (strcmp(a, "--check") == 0) {
      o->check = true;
    } else if (strcmp(a, "--json") == 0) {
      o->json = true;
    } else if (strcmp(a, "--quiet") == 0) {
      o->quiet = true;
    } else if (strcmp(a, "--plot") == 0) {
      VAL();
      o->plot = v;
    } else if (strcmp(a, "--tp") == 0) {
      U64(1, SIM_TP_MAX_RANKS, o->tp.tp);
    } else if (strcmp(a, "--tp-launch") == 0) {
      VAL();
      if (strcmp(v, "threads") == 0)
        o->tp.launch = SIM_TP_THREADS;
      else if (strcmp(v, "mpi") == 0)
        o->tp.launch = SIM_TP_MPI;
      else if (strcmp(v, "auto") == 0)
        o->tp.launch = SIM_TP_AUTO;
      else {
        fprintf(stderr, "rkv sim: bad --tp-launch '%s' (auto, threads, mpi)\n", v);
        return false;
      }
    } else if (strcmp(a, "--tp-inject-divergence") == 0) {
      U64(0, INT64_MAX, o->tp.inject_step);
    } else if (strcmp(a, "--tp-die") == 0) {
      U64(0, INT64_MAX, o->tp.die_step);
    } else if (strcmp(a, "--tp-rank-blocks-scale") == 0) {
      VAL();
      char *colon = NULL;
      long rk = strtol(v, &colon, 10);
      char *end = NULL;
      double fs = colon && *colon == ':' ? strtod(colon + 1, &end) : 0.0;
      if (!colon || *colon != ':' || colon == v || rk < 0 || rk >= SIM_TP_MAX_RANKS || !end ||
          *end || !(fs > 0.0 && fs <= 1e3)) {
        fprintf(stderr, "rkv sim: bad --tp-rank-blocks-scale '%s' (RANK:FACTOR, e.g. 1:0.5)\n", v);
        return false;
      }
      o->tp.scale_rank = (int32_t)rk;
      o->tp.scale = fs;
    } else if (strcmp(a, "--tp-timeout") == 0) {
      F64(0.01, 1e6, o->tp.timeout_s);
    } else if (strcmp(a, "--tp-bind") == 0) {
      o->tp.bind = true;
    } else if (strcmp(a, "--tp-no-pool-min") == 0) {
      o->tp.no_pool_min = true;
    } else {
      fprintf(stderr, "rkv sim: unknown option '%s' (rkv sim --help)\n", a);
      return false;
    }
#undef VAL
#undef U64
#undef F64
  }
  if (o->model.q_heads % o->model.kv_heads) {
    fprintf(stderr, "rkv sim: q heads (%u) must be a multiple of kv heads (%u)\n", o->model.q_heads,
            o->model.kv_heads);
    return false;
  }
  if (shape_set) {
    snprintf(o->model.name, sizeof o->model.name, "custom");
    o->model.params = sim_model_params_estimate(&o->model);
  }
  if (params_b > 0) o->model.params = params_b * 1e9;
  if (strcmp(o->wl.gen, "fixed") == 0 && !o->wl.gen_fixed) {
    fprintf(stderr, "rkv sim: --gen fixed needs --gen-len N\n");
    return false;
  }
  /* The swap pool is host_gib / block bytes blocks in a uint32 (and the scheduler takes at
   * most 2^30): bound it here, where the option is named, not by a cast at run time. */
  const double host_max_blocks = (double)(1u << 30);
  if (o->host_gib >= 0 && o->host_gib * 1073741824.0 / kv_block_bytes(o) > host_max_blocks) {
    fprintf(stderr,
            "rkv sim: bad value for --host-gib: %g GiB is more than the %.0f-block host pool "
            "limit (%g GiB for this block shape)\n",
            o->host_gib, host_max_blocks, host_max_blocks * kv_block_bytes(o) / 1073741824.0);
    return false;
  }
  char err[256];
  o->ev.sinks = o->ev.sinks < o->ev.budget ? o->ev.sinks : 0;
  if (rkv_evict_params_validate(&o->ev, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv sim: eviction parameters: %s\n", err);
    return false;
  }
  return true;
}

static double kv_block_bytes(const sim_opts *o) {
  return (double)o->block_size * o->model.head_dim * 2.0 * (double)rkv_dtype_size(o->dtype);
}

static bool tl_push(sim_result *r, float t, uint32_t used, uint32_t running) {
  if (r->tl_n == r->tl_cap) {
    size_t nc = r->tl_cap ? r->tl_cap * 2 : 1024;
    sim_sample *n = realloc(r->tl, nc * sizeof *n);
    if (!n) return false;
    r->tl = n;
    r->tl_cap = nc;
  }
  r->tl[r->tl_n++] = (sim_sample){t, used, running};
  return true;
}

/* Block hashes of every system prompt of a shared-prefix workload, [prefixes][*n_hashes]
 * (each prompt's full blocks, the rest zero). */
static bool prefix_hashes(const sim_opts *o, uint64_t **out, uint32_t *n_hashes) {
  *out = NULL;
  *n_hashes = 0;
  if (!o->wl.n_prefixes) return true;
  const uint32_t per = (uint32_t)(o->wl.prefix_hi / o->block_size) + 1;
  uint64_t *h = calloc((size_t)o->wl.n_prefixes * per, sizeof *h);
  if (!h) {
    fprintf(stderr, "rkv sim: out of memory for the system prompts' hashes\n");
    return false;
  }
  for (uint32_t k = 0; k < o->wl.n_prefixes; k++)
    sim_prefix_hashes(o->wl.seed, (int32_t)k, sim_system_prompt_len(&o->wl, k), o->block_size,
                      h + (size_t)k * per, per);
  *out = h;
  *n_hashes = per;
  return true;
}

/* One policy run's loop state, shared by the plans it makes. */
typedef struct sim_loop {
  const sim_opts *o;
  const sim_req *reqs;
  uint32_t n;
  rkv_evict_policy pol;
  rkv_sched *s;
  rkv_blockmgr *bm;
  sim_tp_rank *tp;
  sim_result *res;
  const double *arrival;
  uint8_t *admitted;      /* [n] admitted once: its queue wait is counted */
  const uint64_t *hashes; /* [prefixes][n_hashes] */
  uint32_t n_hashes;
  uint32_t next;               /* first request not added yet */
  double clock;                /* modelled seconds */
  uint64_t planned, prev_hash; /* plans made so far, hash of the latest (TP) */
} sim_loop;

/* Adds the requests that have arrived by the modelled clock, then plans a step: *secs = the
 * wall time of rkv_sched_step. Latencies of the ids it reports finished end now, and so do the
 * queue waits of those it admits for the first time. */
static bool sim_plan(sim_loop *L, const rkv_sched_plan **out, double *secs) {
  const sim_opts *o = L->o;
  if (L->tp && !sim_tp_sync(L->tp, L->s, L->planned, L->prev_hash, rkv_blockmgr_free_blocks(L->bm)))
    return false;
  double ts = rt_now();
  while (L->next < L->n && L->reqs[L->next].arrival <= L->clock) {
    const sim_req *q = &L->reqs[L->next];
    rkv_sched_request rq = {q->id, q->prompt, q->gen, 0, q->arrival, NULL};
    rkv_status st = rkv_sched_add_request(L->s, &rq);
    if (st == RKV_ERR_CAPACITY) {
      L->res->rejected++;
      if (L->res->rejected == 1 && !o->quiet)
        fprintf(stderr, "\nrkv sim: %s: %s (counted as rejected)\n", rkv_evict_policy_name(L->pol),
                rkv_sched_last_error(L->s));
    } else if (st != RKV_OK) {
      fprintf(stderr, "rkv sim: add_request: %s\n", rkv_sched_last_error(L->s));
      return false;
    } else if (q->sys >= 0 && L->n_hashes) {
      /* the system prompt's full blocks, which its requests may share */
      const uint32_t nb = (uint32_t)(q->sys_len / o->block_size);
      st = rkv_sched_set_prefix(L->s, q->id, L->hashes + (size_t)q->sys * L->n_hashes,
                                nb < L->n_hashes ? nb : L->n_hashes);
      if (st != RKV_OK) {
        fprintf(stderr, "rkv sim: set_prefix: %s\n", rkv_sched_last_error(L->s));
        return false;
      }
    }
    L->next++;
  }
  const double t_step = rt_now();
  const rkv_status st = rkv_sched_step(L->s, out);
  const double now = rt_now();
  *secs = now - t_step;
  L->res->plan_wall += *secs;
  L->res->sched_wall += now - ts;
  if (st != RKV_OK) {
    fprintf(stderr, "rkv sim: step: %s\n", rkv_sched_last_error(L->s));
    return false;
  }
  const rkv_sched_plan *p = *out;
  if (L->tp) L->prev_hash = sim_tp_plan_hash(L->tp, L->planned, p);
  L->planned++;
  for (uint32_t i = 0; i < p->n_finished; i++) {
    int64_t id = p->finished[i];
    double lat = L->clock - (id >= 0 && id < L->n ? L->arrival[id] : L->clock);
    L->res->lat_sum += lat;
    L->res->lat_max = lat > L->res->lat_max ? lat : L->res->lat_max;
    L->res->lat_n++;
  }
  for (uint32_t i = 0; i < p->n_started; i++) {
    const int64_t id = p->started[i];
    if (id < 0 || id >= L->n || L->admitted[id]) continue;
    L->admitted[id] = 1;
    const double wait = L->clock - L->arrival[id];
    L->res->wait_sum += wait;
    L->res->wait_max = wait > L->res->wait_max ? wait : L->res->wait_max;
    L->res->wait_n++;
  }
  return true;
}

bool sim_run_policy(const sim_opts *o, const sim_req *reqs, uint32_t n, rkv_evict_policy pol,
                    sim_tp_rank *tp, sim_result *res) {
  memset(res, 0, sizeof *res);
  res->policy = pol;
  double bb = kv_block_bytes(o);
  uint64_t blocks = o->pool_blocks ? o->pool_blocks : (uint64_t)(o->pool_gib * 1073741824.0 / bb);
  /* a TP rank holds kv_heads / tp heads (whole GQA groups) and pays 1/tp of the weights */
  sim_model shard = o->model;
  if (tp) {
    if (tp->rank == tp->o->scale_rank) blocks = (uint64_t)((double)blocks * tp->o->scale);
    if (blocks < 1) blocks = 1;
    shard.kv_heads /= (uint32_t)tp->size;
    shard.q_heads /= (uint32_t)tp->size;
    shard.params /= tp->size;
  }
  if (blocks < 1 || blocks >= (1ull << 31) / o->block_size) {
    fprintf(stderr, "rkv sim: pool of %llu blocks is out of range\n", (unsigned long long)blocks);
    if (tp) rkv_comm_abort(tp->comm, 2);
    return false;
  }
  res->pool_blocks = blocks;
  if (tp) {
    tp->st.pool_blocks = blocks;
    if (!sim_tp_pool_min(tp, blocks, &blocks)) return false;
    tp->st.usable_blocks = blocks;
  }
  res->block_bytes = bb;
  uint32_t host_blocks = 0;
  if (o->preempt == RKV_SCHED_PREEMPT_SWAP)
    host_blocks = o->host_gib >= 0 ? (uint32_t)(o->host_gib * 1073741824.0 / bb)
                                   : (uint32_t)(blocks * 4 < (1u << 30) ? blocks * 4 : (1u << 30));
  rkv_blockmgr_config bc = RKV_BLOCKMGR_CONFIG_INIT;
  bc.num_blocks = (uint32_t)blocks;
  bc.block_size = o->block_size;
  bc.num_layers = o->model.layers;
  bc.num_kv_heads = shard.kv_heads;
  bc.head_dim = o->model.head_dim;
  bc.dtype = o->dtype;
  bc.max_seqs = o->max_seqs;
  bc.prefix_cache = o->prefix_cache;
  rkv_blockmgr *bm = NULL;
  rkv_sched *s = NULL;
  sim_engine *eng = NULL;
  rkv_sched_output *outs = NULL;
  double *arrival = NULL;
  uint8_t *admitted = NULL;
  uint64_t *hashes = NULL; /* [prefixes][n_hashes] */
  uint32_t n_hashes = 0;
  bool ok = false;
  rkv_status st = rkv_blockmgr_create(&bc, &bm);
  if (st != RKV_OK) {
    fprintf(stderr, "rkv sim: block manager: %s\n", rkv_status_str(st));
    goto done;
  }
  rkv_sched_config sc = RKV_SCHED_CONFIG_INIT;
  sc.max_batched_tokens = o->max_batched_tokens;
  sc.max_seqs = o->max_seqs;
  sc.max_prefill_chunk = o->max_prefill_chunk;
  sc.admission = o->admission;
  sc.preempt = o->preempt;
  sc.host_blocks = host_blocks;
  sc.evict = o->ev;
  sc.evict.policy = pol;
  sc.check_every_step = o->check;
  sc.prefix_cache = o->prefix_cache;
  sc.prefix_rule = o->prefix_rule;
  sc.overlap = o->overlap;
  sc.cache_lookahead = o->cache_lookahead;
  char err[256];
  if (rkv_sched_create(&sc, bm, &s, err, sizeof err) != RKV_OK) {
    fprintf(stderr, "rkv sim: scheduler: %s\n", err);
    goto done;
  }
  if (!sim_engine_create(o->compute, &shard, bm, &sc.evict, o->granularity, host_blocks,
                         o->max_seqs, o->wl.seed, reqs, n, o->threads, &eng))
    goto done;
  outs = calloc(o->max_seqs + 1, sizeof *outs);
  arrival = calloc(n + 1, sizeof *arrival);
  admitted = calloc(n + 1, 1);
  if (!outs || !arrival || !admitted || !prefix_hashes(o, &hashes, &n_hashes)) goto done;
  for (uint32_t i = 0; i < n; i++)
    if (reqs[i].id >= 0 && reqs[i].id < n) arrival[reqs[i].id] = reqs[i].arrival;
  rt_progress prog;
  rt_progress_init(&prog, 1.0);
  char label[64];
  snprintf(label, sizeof label, "sim %s", rkv_evict_policy_name(pol));
  sim_loop L = {o, reqs, n, pol, s, bm, tp, res, arrival, admitted, hashes, n_hashes, 0, 0.0, 0, 0};
  double w0 = rt_now();
  double clock_host = 0.0; /* the modelled clock with the scheduler's host time on it */
  size_t kv_elem = rkv_dtype_size(o->dtype);
  const rkv_sched_plan *p = NULL; /* the plan to run (made ahead under --overlap) */
  bool made_ahead = false;
  for (;;) {
    double plan_s = 0.0;
    if (!p) { /* made with nothing in flight: its planning is on the critical path */
      if (!sim_plan(&L, &p, &plan_s)) goto done;
      clock_host += plan_s;
      made_ahead = false;
    }
    if (!sim_engine_launch(eng, p, outs)) goto done;
    /* overlap: the next plan is made while this one runs (it sees the arrivals so far) */
    const rkv_sched_plan *ahead = NULL;
    double ahead_s = 0.0;
    if (o->overlap && p->n_seqs && !(o->max_steps && res->steps + 1 >= o->max_steps) &&
        !sim_plan(&L, &ahead, &ahead_s))
      goto done;
    if (!sim_engine_finish(eng, p, outs)) goto done;
    /* every plan goes to the engine, empty ones too: they carry finished ids and swaps */
    if (!p->n_seqs) {
      double ts = rt_now();
      rkv_sched_report(s, NULL, 0);
      res->sched_wall += rt_now() - ts;
      p = NULL;
      /* made ahead, it could not use what the plan in flight frees: plan again now */
      if (made_ahead) continue;
      rkv_sched_metrics mt;
      rkv_sched_get_metrics(s, &mt);
      if (L.next < n) {
        if (mt.num_running + mt.num_waiting + mt.num_swapped == 0 ||
            reqs[L.next].arrival > L.clock) {
          L.clock = L.clock > reqs[L.next].arrival ? L.clock : reqs[L.next].arrival;
          clock_host = clock_host > L.clock ? clock_host : L.clock;
          continue;
        }
      }
      if (mt.num_running + mt.num_waiting + mt.num_swapped == 0) {
        res->complete = true;
        break;
      }
      fprintf(stderr,
              "rkv sim: %s: no progress with %u waiting, %u swapped and nothing running (%u of "
              "%u blocks used)\n",
              rkv_evict_policy_name(pol), mt.num_waiting, mt.num_swapped, mt.used_blocks,
              mt.total_blocks);
      goto done;
    }
    sim_cost cost;
    sim_cost_step(&shard, o->gpu, kv_elem, p, &cost);
    double ts = rt_now();
    st = rkv_sched_report(s, outs, p->n_seqs);
    const double report_s = rt_now() - ts;
    res->sched_wall += report_s;
    res->report_wall += report_s;
    if (st != RKV_OK) {
      fprintf(stderr, "rkv sim: report: %s\n", rkv_sched_last_error(s));
      goto done;
    }
    /* the host's planning of the next step runs beside this one's device time */
    const double overlapped = ahead ? (ahead_s < cost.total ? ahead_s : cost.total) : 0.0;
    clock_host += cost.total + (ahead ? ahead_s - overlapped : 0.0) + report_s;
    res->hidden_host += overlapped;
    rkv_sched_metrics mt;
    rkv_sched_get_metrics(s, &mt);
    /* memory held during this step: after its appends, before its compressions' frees are
     * visible to the next one (the report has applied them, so add them back) */
    uint32_t used = mt.used_blocks;
    uint32_t freed = 0;
    for (uint32_t i = 0; i < p->n_seqs; i++) freed += outs[i].blocks_freed;
    uint32_t held = used + freed;
    if (held > res->peak_blocks) res->peak_blocks = held;
    res->mean_blocks += (double)held * cost.total;
    if (p->n_seqs > res->max_running) res->max_running = p->n_seqs;
    L.clock += cost.total;
    res->model_evict += cost.evict;
    res->model_attn_flops += cost.attn_flops;
    res->model_evict_flops += cost.evict_flops;
    res->steps++;
    if (!tl_push(res, (float)L.clock, held, p->n_seqs)) goto done;
    if (!o->quiet) rt_progress_update(&prog, label, mt.num_finished, n, false);
    p = ahead;
    made_ahead = ahead != NULL;
    if (o->max_steps && res->steps >= o->max_steps) break;
  }
  /* the last plan is checked too: every rank leaves the loop at the same step only if the
   * plans agreed, and this sync proves it */
  if (tp && !sim_tp_sync(tp, s, L.planned, L.prev_hash, rkv_blockmgr_free_blocks(bm))) goto done;
  if (!o->quiet) {
    rkv_sched_metrics mt;
    rkv_sched_get_metrics(s, &mt);
    rt_progress_update(&prog, label, mt.num_finished, n, true);
  }
  res->wall = rt_now() - w0;
  res->model_time = L.clock;
  res->model_time_host = clock_host;
  res->mean_blocks = L.clock > 0 ? res->mean_blocks / L.clock : 0.0;
  rkv_sched_get_metrics(s, &res->m);
  res->prefix.struct_size = sizeof res->prefix;
  (void)rkv_sched_get_prefix_stats(s, &res->prefix);
  res->cache.struct_size = sizeof res->cache;
  (void)rkv_blockmgr_prefix_stats(bm, &res->cache);
  res->et = *sim_engine_get_times(eng);
  if (o->check && rkv_sched_check(s) != RKV_OK) {
    fprintf(stderr, "rkv sim: check: %s\n", rkv_sched_last_error(s));
    goto done;
  }
  if (tp) {
    tp->st.peak_blocks = res->peak_blocks;
    tp->st.max_running = res->max_running;
    tp->st.preemptions = res->m.num_preemptions;
    tp->st.steps = res->steps;
  }
  ok = true;
done:
  /* a rank that fails on its own (not in a collective) must not leave the others waiting */
  if (!ok && tp && !tp->handled && !rkv_comm_is_failed(tp->comm)) rkv_comm_abort(tp->comm, 1);
  free(outs);
  free(arrival);
  free(admitted);
  free(hashes);
  sim_engine_destroy(eng);
  rkv_sched_destroy(s);
  rkv_blockmgr_destroy(bm);
  return ok;
}

/* ---- output ----------------------------------------------------------------------------- */

static double gib(double blocks, double bb) {
  return blocks * bb / 1073741824.0;
}

static const char *compute_name(sim_compute c) {
  static const char *const names[] = {"none", "cpu", "cuda", "emu"};
  return names[c];
}

/* Per-rank memory and agreement under --tp: one row per policy and rank. */
static void print_tp(const sim_result *r, uint32_t np, double unit) {
  const sim_tp_stats *t0 = &r[0].tp;
  printf(
      "\ntensor parallelism: %d ranks (%s), %u kv / %u q heads per rank, step sync (MIN of free "
      "blocks + plan hash) every step\n",
      (int)t0->size, t0->launch, t0->kv_heads_per_rank, t0->q_heads_per_rank);
  printf("%-10s %4s %10s %10s %10s %9s %7s %6s %7s %16s %8s %8s %7s\n", "policy", "rank",
         "pool_blk", "usable_blk", "peak_blk", unit > 1 ? "peakKV_MB" : "peakKV_GB", "maxbat",
         "preem", "steps", "plan_digest", "syncs", "sync_us", "max_ms");
  for (uint32_t i = 0; i < np; i++) {
    const sim_tp_stats *t = &r[i].tp;
    bool agree = true;
    for (int32_t k = 0; k < t->size; k++) {
      const sim_tp_rank_stats *x = &t->rank[k];
      agree &= x->digest == t->rank[0].digest && x->steps == t->rank[0].steps;
      printf("%-10s %4d %10llu %10llu %10llu %9.3f %7llu %6llu %7llu %016llx %8llu %8.2f %7.2f\n",
             rkv_evict_policy_name(r[i].policy), (int)k, (unsigned long long)x->pool_blocks,
             (unsigned long long)x->usable_blocks, (unsigned long long)x->peak_blocks,
             gib((double)x->peak_blocks, r[i].block_bytes) * unit,
             (unsigned long long)x->max_running, (unsigned long long)x->preemptions,
             (unsigned long long)x->steps, (unsigned long long)x->digest,
             (unsigned long long)x->syncs, x->syncs ? 1e6 * x->sync_s / (double)x->syncs : 0.0,
             1e3 * x->sync_max_s);
    }
    printf("tp %s: plan digests %s on all %d ranks\n", rkv_evict_policy_name(r[i].policy),
           agree ? "agree" : "DIFFER", (int)t->size);
  }
  printf(
      "tp columns: pool_blk = blocks this rank's memory holds; usable_blk = after the start-up "
      "MIN over ranks; peak_blk / peakKV = this rank's shard; plan_digest = hash chain of every "
      "step plan; sync_us = mean wall time of one step sync, max_ms = slowest\n");
}

static void print_table(const sim_opts *o, const sim_result *r, uint32_t np, uint32_t n_req) {
  const sim_model *m = &o->model;
  printf("rkv sim: model %s (%u layers, %u q / %u kv heads, d %u, %.2fB params), KV %s, block %u\n",
         m->name, m->layers, m->q_heads, m->kv_heads, m->head_dim, m->params / 1e9,
         rkv_dtype_name(o->dtype), o->block_size);
  printf(
      "pool %llu blocks = %.3f GiB; workload %s, %u requests, gen %s; B=%d buffer=%d "
      "window=%d; admission %s, preempt %s; compute %s, cost model %s\n\n",
      (unsigned long long)r[0].pool_blocks, gib((double)r[0].pool_blocks, r[0].block_bytes),
      o->wl.trace ? o->wl.trace : o->wl.kind, n_req, o->wl.gen, o->ev.budget, o->ev.buffer,
      o->ev.window, rkv_sched_admission_name(o->admission), rkv_sched_preempt_mode_name(o->preempt),
      compute_name(o->compute), o->gpu->name);
  /* MiB for pools under 1 GiB (the tiny preset), GiB otherwise */
  bool mib = gib((double)r[0].pool_blocks, r[0].block_bytes) < 1.0;
  double unit = mib ? 1024.0 : 1.0;
  printf("%-10s %9s %9s %7s %6s %8s %4s %9s %10s %10s %10s %8s %8s %8s %8s\n", "policy",
         mib ? "peakKV_MB" : "peakKV_GB", mib ? "meanKV_MB" : "meanKV_GB", "maxbat", "preem",
         "finished", "rej", "gen_tok", "model_s", "model_t/s", "host_t/s", "evict_s", "attn_s",
         "sched_s", "synth_s");
  for (uint32_t i = 0; i < np; i++) {
    const sim_result *x = &r[i];
    double gen = (double)x->m.generation_tokens;
    printf(
        "%-10s %9.3f %9.3f %7u %6llu %5llu/%-3u %4llu %9llu %10.3f %10.1f %10.1f %8.2f %8.2f %8.2f "
        "%8.2f\n",
        rkv_evict_policy_name(x->policy), gib(x->peak_blocks, x->block_bytes) * unit,
        gib(x->mean_blocks, x->block_bytes) * unit, x->max_running,
        (unsigned long long)x->m.num_preemptions, (unsigned long long)x->m.num_finished, n_req,
        (unsigned long long)x->rejected, (unsigned long long)x->m.generation_tokens, x->model_time,
        x->model_time > 0 ? gen / x->model_time : 0.0, x->wall > 0 ? gen / x->wall : 0.0,
        x->et.evict, x->et.attn, x->sched_wall, x->et.kv_synth);
  }
  const sim_result *full = NULL;
  for (uint32_t i = 0; i < np; i++)
    if (r[i].policy == RKV_EVICT_FULL) full = &r[i];
  if (full && full->max_running && np > 1) {
    printf("\nvs full:");
    for (uint32_t i = 0; i < np; i++)
      if (&r[i] != full)
        printf("  %s batch %.2fx, model tok/s %.2fx, peak KV %.2fx;",
               rkv_evict_policy_name(r[i].policy), (double)r[i].max_running / full->max_running,
               (full->model_time > 0 && r[i].model_time > 0)
                   ? ((double)r[i].m.generation_tokens / r[i].model_time) /
                         ((double)full->m.generation_tokens / full->model_time)
                   : 0.0,
               full->peak_blocks ? (double)r[i].peak_blocks / full->peak_blocks : 0.0);
    printf("\n");
  }
  if (o->wl.n_prefixes) {
    printf(
        "shared prefixes: %u system prompts of %lld-%lld tokens, prefix cache %s, rule %s, "
        "lookahead %u:",
        o->wl.n_prefixes, (long long)o->wl.prefix_lo, (long long)o->wl.prefix_hi,
        o->prefix_cache ? "on" : "off",
        o->prefix_rule == RKV_SCHED_PREFIX_COPY ? "copy" : "protect", o->cache_lookahead);
    for (uint32_t i = 0; i < np; i++)
      printf(
          "  %s prefill %llu tok, hit %.1f%%, %llu admitted ahead, wait mean %.1f s max "
          "%.1f s;",
          rkv_evict_policy_name(r[i].policy), (unsigned long long)r[i].m.prompt_tokens,
          r[i].prefix.hashed_tokens
              ? 100.0 * (double)r[i].prefix.hit_tokens / (double)r[i].prefix.hashed_tokens
              : 0.0,
          (unsigned long long)r[i].prefix.admissions_ahead,
          r[i].wait_n ? r[i].wait_sum / (double)r[i].wait_n : 0.0, r[i].wait_max);
    printf("\n");
  }
  printf("scheduler host time (%s): ", o->overlap ? "overlap on" : "overlap off");
  for (uint32_t i = 0; i < np; i++) {
    const sim_result *x = &r[i];
    const double steps = x->steps ? (double)x->steps : 1.0;
    printf(
        " %s plan %.1f us + report %.1f us per step, hidden %.1f us, model tok/s with host "
        "%.1f;",
        rkv_evict_policy_name(x->policy), 1e6 * x->plan_wall / steps, 1e6 * x->report_wall / steps,
        1e6 * x->hidden_host / steps,
        x->model_time_host > 0 ? (double)x->m.generation_tokens / x->model_time_host : 0.0);
  }
  printf("\n");
  bool any_dup = false;
  for (uint32_t i = 0; i < np; i++) any_dup |= r[i].et.keys_after > 0;
  if (any_dup) {
    printf(
        "redundancy: near-duplicate keys (cosine > 0.5) per key in layer 0, kv head 0, "
        "before -> after each compression:");
    for (uint32_t i = 0; i < np; i++)
      if (r[i].et.keys_after)
        printf("  %s %.2f -> %.2f;", rkv_evict_policy_name(r[i].policy),
               (double)r[i].et.dup_before / r[i].et.keys_before,
               (double)r[i].et.dup_after / r[i].et.keys_after);
    printf("\n");
  }
  if (r[0].tp.size > 0) print_tp(r, np, unit);
  for (uint32_t i = 0; i < np; i++)
    if (!r[i].complete)
      printf("note: %s stopped after %llu steps (--steps) before every request finished\n",
             rkv_evict_policy_name(r[i].policy), (unsigned long long)r[i].steps);
  printf(
      "columns: KV in %s; maxbat = most sequences in one step; rej = requests that can never "
      "fit the pool; model_* = roofline on %s; host_t/s = generated tokens per wall second on "
      "this machine; evict/attn/sched/synth_s = wall seconds in eviction, KV write + "
      "attention, scheduler step + report, K/V synthesis\n",
      mib ? "MiB" : "GiB", o->gpu->name);
}

static void print_json(const sim_opts *o, const sim_result *r, uint32_t np, uint32_t n_req) {
  const sim_model *m = &o->model;
  printf(
      "{\n  \"model\": {\"name\": \"%s\", \"layers\": %u, \"q_heads\": %u, \"kv_heads\": %u, "
      "\"head_dim\": %u, \"params\": %.6g},\n",
      m->name, m->layers, m->q_heads, m->kv_heads, m->head_dim, m->params);
  printf(
      "  \"config\": {\"dtype\": \"%s\", \"block_size\": %u, \"pool_blocks\": %llu, "
      "\"pool_gib\": %.6g, \"workload\": \"%s\", \"requests\": %u, \"gen\": \"%s\", "
      "\"budget\": %d, \"buffer\": %d, \"window\": %d, \"admission\": \"%s\", "
      "\"preempt\": \"%s\", \"compute\": \"%s\", \"gpu\": \"%s\", \"seed\": %llu, "
      "\"prefixes\": %u, \"prefix_len\": [%lld, %lld], \"prefix_cache\": %s, "
      "\"prefix_rule\": \"%s\", \"cache_lookahead\": %u, \"overlap\": %s, "
      "\"granularity\": \"%s\"},\n",
      rkv_dtype_name(o->dtype), o->block_size, (unsigned long long)r[0].pool_blocks,
      gib((double)r[0].pool_blocks, r[0].block_bytes), o->wl.trace ? o->wl.trace : o->wl.kind,
      n_req, o->wl.gen, o->ev.budget, o->ev.buffer, o->ev.window,
      rkv_sched_admission_name(o->admission), rkv_sched_preempt_mode_name(o->preempt),
      compute_name(o->compute), o->gpu->name, (unsigned long long)o->wl.seed, o->wl.n_prefixes,
      (long long)o->wl.prefix_lo, (long long)o->wl.prefix_hi, o->prefix_cache ? "true" : "false",
      o->prefix_rule == RKV_SCHED_PREFIX_COPY ? "copy" : "protect", o->cache_lookahead,
      o->overlap ? "true" : "false", rkv_evict_granularity_name(o->granularity));
  printf("  \"policies\": [\n");
  for (uint32_t i = 0; i < np; i++) {
    const sim_result *x = &r[i];
    double gen = (double)x->m.generation_tokens;
    printf(
        "    {\"policy\": \"%s\", \"complete\": %s, \"steps\": %llu, \"peak_kv_gib\": %.6g, "
        "\"mean_kv_gib\": %.6g, \"peak_blocks\": %u, \"max_batch\": %u, \"max_running\": %u, "
        "\"preemptions\": %llu, \"finished\": %llu, \"rejected\": %llu, "
        "\"generation_tokens\": %llu, \"prompt_tokens\": %llu, \"compressions\": %llu, "
        "\"evicted_tokens\": %llu, \"compaction_freed_blocks\": %llu, "
        "\"model_seconds\": %.6g, \"model_tokens_per_s\": %.6g, \"model_evict_seconds\": %.6g, "
        "\"mean_latency_s\": %.6g, \"max_latency_s\": %.6g, \"mean_wait_s\": %.6g, "
        "\"max_wait_s\": %.6g, "
        "\"wall_seconds\": %.6g, \"host_tokens_per_s\": %.6g, \"evict_seconds\": %.6g, "
        "\"attention_seconds\": %.6g, \"sched_seconds\": %.6g, \"synth_seconds\": %.6g, "
        "\"swap_seconds\": %.6g, \"dup_before\": %.6g, \"dup_after\": %.6g, "
        "\"prefix_hashed_tokens\": %llu, \"prefix_hit_tokens\": %llu, "
        "\"prefix_admissions\": %llu, \"prefix_admissions_hit\": %llu, "
        "\"prefix_admissions_ahead\": %llu, "
        "\"prefix_groups_inserted\": %llu, \"prefix_groups_reclaimed\": %llu, "
        "\"prefix_groups_invalidated\": %llu, "
        "\"plan_seconds\": %.6g, \"report_seconds\": %.6g, \"hidden_host_seconds\": %.6g, "
        "\"model_seconds_with_host\": %.6g, \"model_tokens_per_s_with_host\": %.6g}%s\n",
        rkv_evict_policy_name(x->policy), x->complete ? "true" : "false",
        (unsigned long long)x->steps, gib(x->peak_blocks, x->block_bytes),
        gib(x->mean_blocks, x->block_bytes), x->peak_blocks, x->max_running, x->m.max_running,
        (unsigned long long)x->m.num_preemptions, (unsigned long long)x->m.num_finished,
        (unsigned long long)x->rejected, (unsigned long long)x->m.generation_tokens,
        (unsigned long long)x->m.prompt_tokens, (unsigned long long)x->m.compressions,
        (unsigned long long)x->m.evicted_tokens, (unsigned long long)x->m.compaction_freed_blocks,
        x->model_time, x->model_time > 0 ? gen / x->model_time : 0.0, x->model_evict,
        x->lat_n ? x->lat_sum / (double)x->lat_n : 0.0, x->lat_max,
        x->wait_n ? x->wait_sum / (double)x->wait_n : 0.0, x->wait_max, x->wall,
        x->wall > 0 ? gen / x->wall : 0.0, x->et.evict, x->et.attn, x->sched_wall, x->et.kv_synth,
        x->et.swap, x->et.keys_before ? (double)x->et.dup_before / x->et.keys_before : 0.0,
        x->et.keys_after ? (double)x->et.dup_after / x->et.keys_after : 0.0,
        (unsigned long long)x->prefix.hashed_tokens, (unsigned long long)x->prefix.hit_tokens,
        (unsigned long long)x->prefix.admissions, (unsigned long long)x->prefix.admissions_hit,
        (unsigned long long)x->prefix.admissions_ahead, (unsigned long long)x->cache.inserted,
        (unsigned long long)x->cache.reclaimed, (unsigned long long)x->cache.invalidated,
        x->plan_wall, x->report_wall, x->hidden_host, x->model_time_host,
        x->model_time_host > 0 ? gen / x->model_time_host : 0.0, i + 1 < np ? "," : "");
  }
  printf("  ]");
  if (r[0].tp.size > 0) {
    printf(
        ",\n  \"tp\": {\"size\": %d, \"launch\": \"%s\", \"kv_heads_per_rank\": %u, \"ranks\": [\n",
        (int)r[0].tp.size, r[0].tp.launch, r[0].tp.kv_heads_per_rank);
    for (uint32_t i = 0; i < np; i++)
      for (int32_t k = 0; k < r[i].tp.size; k++) {
        const sim_tp_rank_stats *x = &r[i].tp.rank[k];
        printf(
            "    {\"policy\": \"%s\", \"rank\": %d, \"pool_blocks\": %llu, \"usable_blocks\": "
            "%llu, \"peak_blocks\": %llu, \"peak_kv_gib\": %.6g, \"max_batch\": %llu, "
            "\"preemptions\": %llu, \"steps\": %llu, \"plan_digest\": \"%016llx\", "
            "\"syncs\": %llu, \"sync_seconds\": %.6g, \"sync_max_seconds\": %.6g}%s\n",
            rkv_evict_policy_name(r[i].policy), (int)k, (unsigned long long)x->pool_blocks,
            (unsigned long long)x->usable_blocks, (unsigned long long)x->peak_blocks,
            gib((double)x->peak_blocks, r[i].block_bytes), (unsigned long long)x->max_running,
            (unsigned long long)x->preemptions, (unsigned long long)x->steps,
            (unsigned long long)x->digest, (unsigned long long)x->syncs, x->sync_s, x->sync_max_s,
            (i + 1 < np || k + 1 < r[i].tp.size) ? "," : "");
      }
    printf("  ]}");
  }
  printf("\n}\n");
}

static bool write_svg(const char *path, const sim_opts *o, const sim_result *r, uint32_t np) {
  FILE *f = fopen(path, "w");
  if (!f) {
    fprintf(stderr, "rkv sim: cannot write '%s'\n", path);
    return false;
  }
  static const char *colors[] = {"#1f77b4", "#d62728", "#2ca02c", "#ff7f0e",
                                 "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"};
  const double W = 960, H = 640, L = 80, R = 170, T = 50, gap = 60;
  const double ph = (H - T - gap - 50) / 2.0, pw = W - L - R;
  double tmax = 0, kmax = 0, bmax = 0;
  bool mib = np && gib((double)r[0].pool_blocks, r[0].block_bytes) < 1.0;
  double unit = mib ? 1024.0 : 1.0;
  for (uint32_t i = 0; i < np; i++) {
    tmax = r[i].model_time > tmax ? r[i].model_time : tmax;
    for (size_t k = 0; k < r[i].tl_n; k++) {
      double g = gib(r[i].tl[k].used_blocks, r[i].block_bytes) * unit;
      kmax = g > kmax ? g : kmax;
      bmax = r[i].tl[k].running > bmax ? r[i].tl[k].running : bmax;
    }
  }
  if (tmax <= 0) tmax = 1;
  if (kmax <= 0) kmax = 1;
  if (bmax <= 0) bmax = 1;
  fprintf(f,
          "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%.0f\" height=\"%.0f\" "
          "font-family=\"sans-serif\" font-size=\"12\">\n"
          "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
          "<text x=\"%.0f\" y=\"24\" font-size=\"15\">rkv sim: %s, %s, B=%d, modelled time on "
          "%s</text>\n",
          W, H, L, o->model.name, o->wl.trace ? "trace" : o->wl.kind, o->ev.budget, o->gpu->name);
  for (int panel = 0; panel < 2; panel++) {
    double y0 = T + panel * (ph + gap), ymax = panel ? bmax : kmax;
    fprintf(f,
            "<rect x=\"%.1f\" y=\"%.1f\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" "
            "stroke=\"#333\"/>\n",
            L, y0, pw, ph);
    fprintf(f,
            "<text x=\"%.1f\" y=\"%.1f\" transform=\"rotate(-90 %.1f %.1f)\" "
            "text-anchor=\"middle\">%s</text>\n",
            L - 55, y0 + ph / 2, L - 55, y0 + ph / 2,
            panel ? "running sequences"
            : mib ? "KV memory (MiB)"
                  : "KV memory (GiB)");
    for (int k = 0; k <= 4; k++) {
      double yv = ymax * k / 4, yy = y0 + ph - ph * k / 4;
      fprintf(f, "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>\n", L, yy,
              L + pw, yy);
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\">%.*f</text>\n", L - 6, yy + 4,
              panel ? 0 : 2, yv);
      double xv = tmax * k / 4, xx = L + pw * k / 4;
      fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%.3g s</text>\n", xx,
              y0 + ph + 16, xv);
    }
    for (uint32_t i = 0; i < np; i++) {
      size_t stride = r[i].tl_n / 2000 + 1;
      fprintf(f, "<polyline fill=\"none\" stroke=\"%s\" stroke-width=\"1.5\" points=\"",
              colors[i % 8]);
      for (size_t k = 0; k < r[i].tl_n; k += stride) {
        double v =
            panel ? r[i].tl[k].running : gib(r[i].tl[k].used_blocks, r[i].block_bytes) * unit;
        fprintf(f, "%.1f,%.1f ", L + pw * r[i].tl[k].t / tmax, y0 + ph - ph * v / ymax);
      }
      fprintf(f, "\"/>\n");
    }
  }
  for (uint32_t i = 0; i < np; i++) {
    double y = T + 10 + 20 * i;
    fprintf(f,
            "<line x1=\"%.1f\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"%s\" "
            "stroke-width=\"3\"/><text x=\"%.1f\" y=\"%.1f\">%s</text>\n",
            L + pw + 15, y, L + pw + 40, y, colors[i % 8], L + pw + 46, y + 4,
            rkv_evict_policy_name(r[i].policy));
  }
  fprintf(f, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">modelled time</text>\n</svg>\n",
          L + pw / 2, H - 10);
  bool ok = fclose(f) == 0;
  if (!ok) fprintf(stderr, "rkv sim: error writing '%s'\n", path);
  return ok;
}

bool sim_report(const sim_opts *o, const sim_result *r, uint32_t np, uint32_t n_req) {
  if (o->json)
    print_json(o, r, np, n_req);
  else
    print_table(o, r, np, n_req);
  fflush(stdout);
  return !o->plot || write_svg(o->plot, o, r, np);
}

int rt_cmd_sim(int argc, char **argv) {
  for (int i = 1; i < argc; i++)
    if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
      usage(stdout);
      return 0;
    }
  sim_opts o;
  if (!parse_args(argc, argv, &o)) return 2;
  sim_req *reqs = NULL;
  uint32_t n = 0;
  if (!sim_workload_build(&o.wl, &reqs, &n)) return 2;
  if (o.tp.tp > 1 || o.tp.launch == SIM_TP_MPI ||
      (o.tp.launch == SIM_TP_AUTO && sim_tp_env_world_size() > 1)) {
    int trc = sim_tp_main(&o, reqs, n);
    free(reqs);
    return trc;
  }
  sim_result res[MAX_POLICIES];
  memset(res, 0, sizeof res);
  int rc = 0;
  uint32_t done = 0;
  for (uint32_t i = 0; i < o.n_policies; i++, done++) {
    if (!sim_run_policy(&o, reqs, n, o.policies[i], NULL, &res[i])) {
      rc = 1;
      break;
    }
  }
  if (rc == 0 && !sim_report(&o, res, done, n)) rc = 1;
  for (uint32_t i = 0; i < MAX_POLICIES; i++) free(res[i].tl);
  free(reqs);
  return rc;
}
