/* The column sweep of GPTQ (arXiv 2210.17323) and SparseGPT (arXiv 2301.00774) inside one
 * lazy-update block, driven by efflm/calib/sweep.py (whose torch loop is the reference).
 *
 * W is one block of the weight, rows x n, row-major; U the block's n x n slice of the upper
 * Cholesky factor of H^-1. For each column i of [a, b), every row r independently:
 *   quantize (bits > 0): q = clamp(round(w / s) + 2^(bits-1)) (symmetric, O == NULL) or
 *                        q = clamp(round((w - o) / s)) (asymmetric); dq its value; where
 *                        mask[r, i] (an exact zero of a pruned model) q = 2^(bits-1), dq = 0;
 *   prune (bits == 0):   dq = 0 where mask[r, i], else w (no error);
 *   e = (w - dq) / U[i, i];  W[r, i:] -= e * U[i, i:];  err[r, i] = e.
 * Rows share nothing but U, so they run in parallel. Built with -ffp-contract=off: every
 * multiply and add rounds as torch's elementwise ops do, and the codes equal the torch loop's.
 */
#include <math.h>
#include <stddef.h>
#include <stdint.h>

void efflm_obs_sweep(float *W, int rows, int n, int a, int b, const float *U, const float *S, const float *O,
                     const uint8_t *mask, int bits, float *codes, float *err) {
    const float half = bits > 0 ? (float)(1 << (bits - 1)) : 0.0f;
    const float top = bits > 0 ? (float)((1 << bits) - 1) : 0.0f;
#pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        float *w = W + (int64_t)r * n;
        for (int i = a; i < b; i++) {
            const int64_t at = (int64_t)r * n + i;
            const float x = w[i];
            float dq;
            if (bits > 0) {
                const float s = S[at];
                float q;
                if (O == NULL) {
                    q = nearbyintf(x / s) + half;
                    q = q < 0.0f ? 0.0f : (q > top ? top : q);
                    dq = (q - half) * s;
                } else {
                    q = nearbyintf((x - O[at]) / s);
                    q = q < 0.0f ? 0.0f : (q > top ? top : q);
                    dq = q * s + O[at];
                }
                if (mask != NULL && mask[at]) {
                    q = half;
                    dq = 0.0f;
                }
                codes[at] = q;
            } else {
                dq = (mask[at]) ? 0.0f : x;
            }
            const float *u = U + (int64_t)i * n;
            const float e = (x - dq) / u[i];
            err[at] = e;
            for (int j = i; j < n; j++) w[j] = fmaf(-e, u[j], w[j]);
            if (bits == 0 && mask[at]) w[i] = 0.0f;
        }
    }
}
