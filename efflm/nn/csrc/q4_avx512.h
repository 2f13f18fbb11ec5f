/* The 4-bit row kernel on AVX-512 VNNI (Ice Lake, Zen 4 and later), chosen at load where the CPU
 * has it (efflm_use_vnni); the AVX2 kernel (row_q4_t in q4_blocks.h) stays the reference and the
 * fallback. One 512-bit register holds a pair of blocks: the pair's 32 bytes broadcast to both
 * halves, the upper half shifted by a nibble, give both blocks' codes; one vpdpbusd per pair and
 * activation row replaces two maddubs + madd. Each 32-bit lane sums the same four products as the
 * AVX2 kernel's, and lanes 0-7 / 8-15 accumulate the pair's first / second block exactly as its
 * two accumulators do, so both kernels give the same bits.
 */
#ifndef EFFLM_Q4_AVX512_H
#define EFFLM_Q4_AVX512_H

#define EFFLM_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx2,fma,f16c")))

static inline __attribute__((always_inline)) EFFLM_AVX512 void row_q4_vnni_t(
    const uint8_t *w, const uint16_t *s, const uint16_t *z, int bpg, int nb, float half, const int T, const int8_t *q,
    const float *d, const float *dsum, int K, float *y, size_t ys) {
    float sf[MAXB], of[MAXB], sd[4][MAXB], cor[4];
    q4_prologue(s, z, bpg, nb, half, T, d, dsum, sf, of, sd, cor);
    const __m256i m = _mm256_set1_epi8(0x0F), zero = _mm256_setzero_si256();
    __m256 a0[4], a1[4];
    for (int t = 0; t < T; t++) a0[t] = a1[t] = _mm256_setzero_ps();
    int pairs = nb / 2 * 2, b;
    for (b = 0; b < pairs; b += 2) {
        __m256i v = _mm256_loadu_si256((const __m256i *)(w + (size_t)b * 16));
        __m256i c0 = _mm256_and_si256(v, m), c1 = _mm256_and_si256(_mm256_srli_epi16(v, 4), m);
        for (int t = 0; t < T; t++) {
            const int8_t *qt = q + (size_t)t * K + (size_t)b * 32;
            __m256i p0 = _mm256_dpbusd_epi32(zero, c0, _mm256_loadu_si256((const __m256i *)qt));
            __m256i p1 = _mm256_dpbusd_epi32(zero, c1, _mm256_loadu_si256((const __m256i *)(qt + 32)));
            a0[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd[t] + b), _mm256_cvtepi32_ps(p0), a0[t]);
            a1[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd[t] + b + 1), _mm256_cvtepi32_ps(p1), a1[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        if (nb % 2)
            a0[t] = _mm256_fmadd_ps(_mm256_broadcast_ss(sd[t] + pairs),
                                    dot_u4(unpack_q4(w + (size_t)pairs * 16), q + (size_t)t * K + (size_t)pairs * 32), a0[t]);
        y[t * ys] = hsum8(_mm256_add_ps(a0[t], a1[t])) + cor[t];
    }
}

static __attribute__((noinline)) EFFLM_AVX512 void row_q4_vnni(const uint8_t *w, const uint16_t *s, const uint16_t *z,
                                                               int bpg, int nb, float half, int T, const int8_t *q,
                                                               const float *d, const float *dsum, int K, float *y,
                                                               size_t ys) {
    switch (T) {
    case 1: row_q4_vnni_t(w, s, z, bpg, nb, half, 1, q, d, dsum, K, y, ys); break;
    case 2: row_q4_vnni_t(w, s, z, bpg, nb, half, 2, q, d, dsum, K, y, ys); break;
    case 3: row_q4_vnni_t(w, s, z, bpg, nb, half, 3, q, d, dsum, K, y, ys); break;
    default: row_q4_vnni_t(w, s, z, bpg, nb, half, 4, q, d, dsum, K, y, ys); break;
    }
}

#endif
