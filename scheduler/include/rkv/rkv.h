/* librkv umbrella header: includes every public header. It lives with the top module
 * (scheduler) because a program that uses everything links every module; include the
 * individual headers to depend on less. */
#ifndef RKV_RKV_H
#define RKV_RKV_H

#include <rkv/attention.h>
#include <rkv/attention_cuda.h>
#include <rkv/blockmgr.h>
#include <rkv/buffer.h>
#include <rkv/buffer_emu.h>
#include <rkv/comm.h>
#include <rkv/evict.h>
#include <rkv/evict_cuda.h>
#include <rkv/evictor.h>
#include <rkv/executor.h>
#include <rkv/qwindow.h>
#include <rkv/runtime.h>
#include <rkv/scheduler.h>
#include <rkv/topo.h>

#endif /* RKV_RKV_H */
