/* Private accessors of the query window for other librkv modules (eviction checks the shape
 * of a window before reading it). Not installed. */
#ifndef RKV_QWINDOW_INTERNAL_H
#define RKV_QWINDOW_INTERNAL_H

#include <rkv/qwindow.h>

/* The configuration in force (max_seqs default filled in). */
const rkv_qwindow_config *rkvi_qwindow_config(const rkv_qwindow *w);

#endif /* RKV_QWINDOW_INTERNAL_H */
