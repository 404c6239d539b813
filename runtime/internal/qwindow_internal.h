/* Private accessors of the query window for other librkv modules (eviction checks the shape
 * of a window before reading it, the executor which sequences hold one). Not installed. */
#ifndef RKV_QWINDOW_INTERNAL_H
#define RKV_QWINDOW_INTERNAL_H

#include <rkv/qwindow.h>

/* The configuration in force (max_seqs default filled in). */
const rkv_qwindow_config *rkvi_qwindow_config(const rkv_qwindow *w);
/* Whether seq has a window, and how many sequences have one (the executor's plan checks). */
bool rkvi_qwindow_has(const rkv_qwindow *w, int64_t seq);
uint32_t rkvi_qwindow_live(const rkv_qwindow *w);

#endif /* RKV_QWINDOW_INTERNAL_H */
