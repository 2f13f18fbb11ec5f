/* efflm's lookup-table matmul for LUTLinear (SqueezeLLM's non-uniform codes), AVX2.
 *
 * y[M, N] = x[M, K] · Wᵀ,  W[n, k] = lut[n][code(n, k)] (+ CSR corrections)
 * codes: `bits` (2..4) bits each, 8 codes in `bits` bytes, code j at bit offset bits·j
 * (efflm.nn.codes.pack_bits); lut: 2^bits fp16 per row; sparse: int32 row pointers,
 * int16 columns, fp16 values (sp_rows NULL: none).
 * Per 8 weights: one 32-bit load, a variable shift and mask give the 8 codes, and one (3-bit
 * and below) or two (4-bit) in-register table permutes give their values — the table never
 * leaves the registers. Up to 4 rows of x share each dequantized vector. Rows of W in parallel.
 */
#include <immintrin.h>
#include <stdint.h>

static inline float hsum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* One row of W against up to 4 rows of x; BITS is a compile-time constant at each call site,
   so the code load is a fixed number of byte loads. */
static inline __attribute__((always_inline)) void row_dot(const int BITS, const uint8_t *row, int groups,
                                                          __m256 lo, __m256 hi, const float *xr, int K, int mb,
                                                          float *out) {
    const __m256i shifts = _mm256_setr_epi32(0, BITS, 2 * BITS, 3 * BITS, 4 * BITS, 5 * BITS, 6 * BITS, 7 * BITS);
    const __m256i mask = _mm256_set1_epi32((1 << BITS) - 1), seven = _mm256_set1_epi32(7);
    __m256 a0 = _mm256_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
    for (int g = 0; g < groups; g++) {
        const uint8_t *b = row + (size_t)g * BITS;
        uint32_t word = b[0] | (uint32_t)b[1] << 8;
        if (BITS > 2) word |= (uint32_t)b[2] << 16;
        if (BITS > 3) word |= (uint32_t)b[3] << 24;
        const __m256i idx = _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32((int)word), shifts), mask);
        __m256 w = _mm256_permutevar8x32_ps(lo, idx);
        if (BITS > 3)
            w = _mm256_blendv_ps(w, _mm256_permutevar8x32_ps(hi, idx), _mm256_castsi256_ps(_mm256_cmpgt_epi32(idx, seven)));
        const float *xg = xr + g * 8;
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(xg), w, a0);
        if (mb > 1) a1 = _mm256_fmadd_ps(_mm256_loadu_ps(xg + K), w, a1);
        if (mb > 2) a2 = _mm256_fmadd_ps(_mm256_loadu_ps(xg + 2 * (size_t)K), w, a2);
        if (mb > 3) a3 = _mm256_fmadd_ps(_mm256_loadu_ps(xg + 3 * (size_t)K), w, a3);
    }
    out[0] = hsum(a0), out[1] = hsum(a1), out[2] = hsum(a2), out[3] = hsum(a3);
}

void efflm_lut_gemm(const float *x, int M, int K, const uint8_t *packed, int bits, const uint16_t *lut,
                    const int32_t *sp_rows, const int16_t *sp_cols, const uint16_t *sp_vals, int N, float *y) {
    const int T = 1 << bits, row_bytes = K / 8 * bits, groups = K / 8;
#pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float tbl[16] __attribute__((aligned(32))) = {0};
        for (int t = 0; t < T; t++) tbl[t] = _cvtsh_ss(lut[(size_t)n * T + t]);
        const __m256 lo = _mm256_load_ps(tbl), hi = _mm256_load_ps(tbl + 8);
        const uint8_t *row = packed + (size_t)n * row_bytes;
        for (int m0 = 0; m0 < M; m0 += 4) {
            const int mb = M - m0 < 4 ? M - m0 : 4;
            const float *xr = x + (size_t)m0 * K;
            float acc[4];
            if (bits == 2) row_dot(2, row, groups, lo, hi, xr, K, mb, acc);
            else if (bits == 3) row_dot(3, row, groups, lo, hi, xr, K, mb, acc);
            else row_dot(4, row, groups, lo, hi, xr, K, mb, acc);
            for (int i = 0; i < mb; i++) {
                float s = acc[i];
                if (sp_rows)
                    for (int j = sp_rows[n]; j < sp_rows[n + 1]; j++)
                        s += _cvtsh_ss(sp_vals[j]) * xr[(size_t)i * K + sp_cols[j]];
                y[(size_t)(m0 + i) * N + n] = s;
            }
        }
    }
}
