/* The block arithmetic shared by efflm's CPU kernels (q4_cpu.c: the matmuls; decode_cpu.c: the
 * fused decode step): activation quantization to int8 per block of 32 (llama.cpp's Q8_0) and the
 * 4-bit block dot products. Included, not linked: every function is static inline.
 */
#ifndef EFFLM_Q4_BLOCKS_H
#define EFFLM_Q4_BLOCKS_H
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}

static inline __m256 load8(const void *x, int bf16, size_t i) {
    if (!bf16) return _mm256_loadu_ps((const float *)x + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline uint16_t to_bf16(float v) {   /* round to nearest even (finite inputs) */
    union { float f; uint32_t u; } c = {v};
    return (uint16_t)((c.u + 0x7FFF + ((c.u >> 16) & 1)) >> 16);
}

static inline float round_bf16(float v) {
    union { uint32_t u; float f; } c = {(uint32_t)to_bf16(v) << 16};
    return c.f;
}

static inline void store1(void *y, int bf16, size_t i, float v) {
    if (!bf16) ((float *)y)[i] = v;
    else ((uint16_t *)y)[i] = to_bf16(v);
}

/* x [K] (fp32 or bf16) -> q [K] int8, per-32 scales d [K/32] and d * sum(q) per block. */
static inline void quantize_row(const void *x, int bf16, size_t off, int K, int8_t *q, float *d, float *dsum) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    const __m256i perm = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    for (int b = 0; b < K / 32; b++) {
        __m256 v[4], mx = _mm256_setzero_ps();
        for (int i = 0; i < 4; i++) {
            v[i] = load8(x, bf16, off + (size_t)b * 32 + i * 8);
            mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, v[i]));
        }
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(mx), _mm256_extractf128_ps(mx, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        m4 = _mm_max_ss(m4, _mm_movehdup_ps(m4));
        float amax = _mm_cvtss_f32(m4), scale = amax / 127.0f, inv = amax > 0 ? 127.0f / amax : 0.0f;
        __m256 iv = _mm256_set1_ps(inv);
        __m256i n[4];
        for (int i = 0; i < 4; i++) n[i] = _mm256_cvtps_epi32(_mm256_round_ps(_mm256_mul_ps(v[i], iv), _MM_ROUND_NEAREST));
        __m256i s32 = _mm256_add_epi32(_mm256_add_epi32(n[0], n[1]), _mm256_add_epi32(n[2], n[3]));
        __m256 sf = _mm256_cvtepi32_ps(s32);
        __m256i p = _mm256_packs_epi16(_mm256_packs_epi32(n[0], n[1]), _mm256_packs_epi32(n[2], n[3]));
        _mm256_storeu_si256((__m256i *)(q + b * 32), _mm256_permutevar8x32_epi32(p, perm));
        d[b] = scale;
        dsum[b] = scale * hsum8(sf);
    }
}

/* An odd last block, 16 bytes in llama.cpp's Q4_0 order -> its 32 codes as unsigned bytes 0..15. */
static inline __m256i unpack_q4(const uint8_t *w) {
    const __m128i low = _mm_set1_epi8(0x0F);
    __m128i raw = _mm_loadu_si128((const __m128i *)w);
    return _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low), _mm_and_si128(raw, low));
}

/* sum_i c_i * q_i over one block as 8 float partial sums: unsigned codes times signed int8
 * (maddubs: 2 * 15 * 127 fits int16, no saturation). The -8 of the code offset is applied
 * once per block through the activation block's sum (dsum), not per element. */
static inline __m256 dot_u4(__m256i c, const int8_t *q) {
    __m256i p = _mm256_maddubs_epi16(c, _mm256_loadu_si256((const __m256i *)q));
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p, _mm256_set1_epi16(1)));
}

enum { MAXB = 512 };  /* blocks per row handled on the stack (K <= 16384) */

/* What a row's block loop needs besides the codes: the block scales s_b as floats (sf), the
 * offsets o_b (of, asymmetric grids), s_b d_tb for each activation row t (sd) and the offset term
 * cor_t = sum_b o_b dsum_tb. */
static inline __attribute__((always_inline)) void q4_prologue(const uint16_t *s, const uint16_t *z, int bpg, int nb,
                                                               float half, const int T, const float *d,
                                                               const float *dsum, float *sf, float *of,
                                                               float (*sd)[MAXB], float *cor) {
    int b = 0;
    if (bpg == 1)
        for (; b + 8 <= nb; b += 8) _mm256_storeu_ps(sf + b, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(s + b))));
    for (; b < nb; b++) sf[b] = _cvtsh_ss(s[b / bpg]);
    const float *o = sf;  /* symmetric: o_b = -8 s_b, the -8 applied to the sum (exact) */
    if (z) {
        for (b = 0; b < nb; b++) of[b] = (_cvtsh_ss(z[b / bpg]) + half * sf[b]) - 8.0f * sf[b];
        o = of;
    }
    for (int t = 0; t < T; t++) {
        const float *dt = d + (size_t)t * nb, *st = dsum + (size_t)t * nb;
        __m256 c8 = _mm256_setzero_ps();
        float tail = 0.0f;
        for (b = 0; b + 8 <= nb; b += 8) {
            _mm256_storeu_ps(sd[t] + b, _mm256_mul_ps(_mm256_loadu_ps(sf + b), _mm256_loadu_ps(dt + b)));
            c8 = _mm256_fmadd_ps(_mm256_loadu_ps(o + b), _mm256_loadu_ps(st + b), c8);
        }
        for (; b < nb; b++) {
            sd[t][b] = sf[b] * dt[b];
            tail += o[b] * st[b];
        }
        cor[t] = (hsum8(c8) + tail) * (z ? 1.0f : -8.0f);
    }
}

/* One 4-bit row against T <= 4 int8 activation rows (row t at q + t K, d/dsum + t nb):
 *   y_t = sum_b s_b d_tb (c_b . q_tb) + sum_b o_b dsum_tb,  o_b = -8 s_b (+ z_b + half s_b)
 * Weights come in pairs of blocks (c_kernels.to_blocks): one 32-byte load and two masks give both
 * blocks' codes, each pair unpacked once for all T rows. The scale products s_b d_tb and the offset
 * term are computed 8 blocks at a time before the loop. Each row is summed in the same order
 * whatever T is, so a token's result does not depend on its neighbours (batched decode equals
 * solo decode; a speculative verification equals one-token steps). y[t * ys] = row t's output. */
static inline __attribute__((always_inline)) void row_q4_t(const uint8_t *w, const uint16_t *s, const uint16_t *z,
                                                            int bpg, int nb, float half, const int T, const int8_t *q,
                                                            const float *d, const float *dsum, int K, float *y,
                                                            size_t ys) {
    float sf[MAXB], of[MAXB], sd[4][MAXB], cor[4];
    q4_prologue(s, z, bpg, nb, half, T, d, dsum, sf, of, sd, cor);
    int b;
    const __m256i m = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1);
    __m256 a0[4], a1[4];
    for (int t = 0; t < T; t++) a0[t] = a1[t] = _mm256_setzero_ps();
    int pairs = nb / 2 * 2;
    for (b = 0; b < pairs; b += 2) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(w + (size_t)b * 16));
        __m256i c0 = _mm256_and_si256(v, m), c1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        for (int t = 0; t < T; t++) {
            const int8_t *qt = q + (size_t)t * K + (size_t)b * 32;
            __m256i p0 = _mm256_madd_epi16(_mm256_maddubs_epi16(c0, _mm256_loadu_si256((const __m256i *)qt)), ones);
            __m256i p1 = _mm256_madd_epi16(_mm256_maddubs_epi16(c1, _mm256_loadu_si256((const __m256i *)(qt + 32))), ones);
            a0[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd[t] + b), _mm256_cvtepi32_ps(p0), a0[t]);
            a1[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd[t] + b + 1), _mm256_cvtepi32_ps(p1), a1[t]);
        }
    }
    if (nb % 2) {
        __m256i c = unpack_q4(w + (size_t)pairs * 16);
        for (int t = 0; t < T; t++)
            a0[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd[t] + pairs), dot_u4(c, q + (size_t)t * K + (size_t)pairs * 32),
                                    a0[t]);
    }
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(_mm256_add_ps(a0[t], a1[t])) + cor[t];
}

extern int efflm_vnni;  /* 1: row_q4 runs the AVX-512 VNNI kernel (q4_cpu.c: efflm_use_vnni) */
#include "q4_avx512.h"

/* row_q4_t with T a compile-time constant (its loops over T unrolled, accumulators in registers);
 * the AVX-512 VNNI kernel instead where it was chosen at load (same bits). */
static inline void row_q4(const uint8_t *w, const uint16_t *s, const uint16_t *z, int bpg, int nb, float half, int T,
                          const int8_t *q, const float *d, const float *dsum, int K, float *y, size_t ys) {
    if (efflm_vnni) {
        row_q4_vnni(w, s, z, bpg, nb, half, T, q, d, dsum, K, y, ys);
        return;
    }
    switch (T) {
    case 1: row_q4_t(w, s, z, bpg, nb, half, 1, q, d, dsum, K, y, ys); break;
    case 2: row_q4_t(w, s, z, bpg, nb, half, 2, q, d, dsum, K, y, ys); break;
    case 3: row_q4_t(w, s, z, bpg, nb, half, 3, q, d, dsum, K, y, ys); break;
    default: row_q4_t(w, s, z, bpg, nb, half, 4, q, d, dsum, K, y, ys); break;
    }
}

/* One int8 row (per-channel scale applied by the caller) against T <= 4 activation rows:
 * sum_b d_b * (w_b . q_b), |w| computed once per block for all of them. */
static inline __attribute__((always_inline)) void row_q8_t(const int8_t *w, int nb, const int T, const int8_t *q,
                                                            const float *d, int K, float *y, size_t ys) {
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 acc[4] = {_mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps(), _mm256_setzero_ps()};
    for (int b = 0; b < nb; b++) {
        __m256i wv = _mm256_loadu_si256((const __m256i *)(w + b * 32)), aw = _mm256_sign_epi8(wv, wv);
        for (int t = 0; t < T; t++) {
            __m256i xv = _mm256_loadu_si256((const __m256i *)(q + (size_t)t * K + b * 32));
            __m256i p = _mm256_madd_epi16(_mm256_maddubs_epi16(aw, _mm256_sign_epi8(xv, wv)), ones);
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d[t * nb + b]), _mm256_cvtepi32_ps(p), acc[t]);
        }
    }
    for (int t = 0; t < T; t++) y[t * ys] = hsum8(acc[t]);
}

static inline void row_q8(const int8_t *w, int nb, int T, const int8_t *q, const float *d, int K, float *y, size_t ys) {
    switch (T) {
    case 1: row_q8_t(w, nb, 1, q, d, K, y, ys); break;
    case 2: row_q8_t(w, nb, 2, q, d, K, y, ys); break;
    case 3: row_q8_t(w, nb, 3, q, d, K, y, ys); break;
    default: row_q8_t(w, nb, 4, q, d, K, y, ys); break;
    }
}

#endif
