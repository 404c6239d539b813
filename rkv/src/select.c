/* Selection of one compression step: the top-k candidates by score with the house tie rule
 * (equal scores: the lower cache position wins; NaN ranks below everything), plus the window,
 * returned as ascending positions. A bounded min-heap keeps it O(n log k) with no allocation
 * and no library sort (glibc's qsort may allocate). */
#include <math.h>

#include "evict_internal.h"

/* True when candidate a ranks strictly above candidate b. */
static inline bool ranks_above(const double *z, int32_t a, int32_t b) {
  double za = isnan(z[a]) ? -INFINITY : z[a];
  double zb = isnan(z[b]) ? -INFINITY : z[b];
  return za > zb || (za == zb && a < b);
}

/* Min-heap by rank: heap[0] is the weakest kept candidate. */
static void sift_down(const double *z, int32_t *heap, int32_t size, int32_t i) {
  for (;;) {
    int32_t l = 2 * i + 1, r = l + 1, m = i;
    if (l < size && ranks_above(z, heap[m], heap[l])) m = l;
    if (r < size && ranks_above(z, heap[m], heap[r])) m = r;
    if (m == i) return;
    int32_t t = heap[i];
    heap[i] = heap[m];
    heap[m] = t;
    i = m;
  }
}

static void sift_up(const double *z, int32_t *heap, int32_t i) {
  while (i > 0) {
    int32_t parent = (i - 1) / 2;
    if (!ranks_above(z, heap[parent], heap[i])) return;
    int32_t t = heap[i];
    heap[i] = heap[parent];
    heap[parent] = t;
    i = parent;
  }
}

void rkvi_select_top(const double *z, int32_t n_cand, int32_t k, int32_t n, int32_t *heap,
                     uint8_t *mark, int32_t *keep) {
  if (k > n_cand) k = n_cand;
  int32_t size = 0;
  if (k > 0) {
    for (int32_t j = 0; j < n_cand; j++) {
      if (size < k) {
        heap[size] = j;
        sift_up(z, heap, size);
        size++;
      } else if (ranks_above(z, j, heap[0])) {
        heap[0] = j;
        sift_down(z, heap, size, 0);
      }
    }
  }
  for (int32_t j = 0; j < n; j++) mark[j] = j >= n_cand;
  for (int32_t i = 0; i < size; i++) mark[heap[i]] = 1;
  int32_t m = 0;
  for (int32_t j = 0; j < n; j++)
    if (mark[j]) keep[m++] = j;
}
