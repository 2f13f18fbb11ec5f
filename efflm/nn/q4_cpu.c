/* efflm's 4-bit x 8-bit CPU matmul (AVX2 + FMA + F16C, OpenMP).
 *
 * y[m, n] = sum_k x[m, k] * w[n, k], with w[n, k] = (c[n, k] - 8) * s[n, g] + z[n, g]
 * (c: 4-bit code, g = k / group_size, z = 0 for symmetric grids). Weights are stored per
 * output row in blocks of 32 inputs, 16 bytes each: byte j holds code j in its low nibble
 * and code j + 16 in its high nibble (llama.cpp's Q4_0 block order). Activations are
 * quantized on the fly to int8 per block of 32 (scale = max|x| / 127, llama.cpp's Q8_0), so
 * each block's dot product is exact integer arithmetic: maddubs on |w| and sign(w)*x, then
 * one FMA with the product of the two scales. The zero term uses the block's sum of x.
 * Output rows are split across the OpenMP threads of the process (torch's own pool: this
 * library is loaded after torch and resolves to the same libgomp).
 */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <stdlib.h>

static inline float hsum8(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_hadd_ps(s, s);
    s = _mm_hadd_ps(s, s);
    return _mm_cvtss_f32(s);
}

static inline __m256 load8(const void *x, int bf16, size_t i) {
    if (!bf16) return _mm256_loadu_ps((const float *)x + i);
    __m128i h = _mm_loadu_si128((const __m128i *)((const uint16_t *)x + i));
    return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
}

static inline void store1(void *y, int bf16, size_t i, float v) {
    if (!bf16) { ((float *)y)[i] = v; return; }
    union { float f; uint32_t u; } c = {v};
    ((uint16_t *)y)[i] = (uint16_t)((c.u + 0x7FFF + ((c.u >> 16) & 1)) >> 16);   /* round to nearest even */
}

/* x [K] (fp32 or bf16) -> q [K] int8, per-32 scales d [K/32] and d * sum(q) per block. */
static void quantize_row(const void *x, int bf16, size_t off, int K, int8_t *q, float *d, float *dsum) {
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

static inline __m256 block_dot(const uint8_t *w, const int8_t *q) {
    const __m128i low = _mm_set1_epi8(0x0F);
    __m128i raw = _mm_loadu_si128((const __m128i *)w);
    __m256i c = _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16(raw, 4), low), _mm_and_si128(raw, low));
    __m256i wv = _mm256_sub_epi8(c, _mm256_set1_epi8(8));
    __m256i xv = _mm256_loadu_si256((const __m256i *)q);
    __m256i prod = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)),
                                     _mm256_set1_epi16(1));
    return _mm256_cvtepi32_ps(prod);
}

static inline float dot_row(const uint8_t *w, const uint16_t *s, const uint16_t *z, int bpg, int nb,
                            const int8_t *q, const float *d, const float *dsum, float half) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float zacc = 0.0f;
    int b = 0;
    for (; b + 1 < nb; b += 2) {   /* two blocks per step: two independent accumulators */
        float s0 = _cvtsh_ss(s[b / bpg]), s1 = _cvtsh_ss(s[(b + 1) / bpg]);
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(s0 * d[b]), block_dot(w + b * 16, q + b * 32), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_set1_ps(s1 * d[b + 1]), block_dot(w + (b + 1) * 16, q + (b + 1) * 32), acc1);
    }
    for (; b < nb; b++)
        acc0 = _mm256_fmadd_ps(_mm256_set1_ps(_cvtsh_ss(s[b / bpg]) * d[b]), block_dot(w + b * 16, q + b * 32), acc0);
    if (z)
        for (b = 0; b < nb; b++) zacc += (_cvtsh_ss(z[b / bpg]) + half * _cvtsh_ss(s[b / bpg])) * dsum[b];
    return hsum8(_mm256_add_ps(acc0, acc1)) + zacc;
}

/* x [M, K] and y [M, N] fp32 or bf16 (the flags), w [N, K/2] blocks, s/z [N, K/group] fp16 (z may be NULL). */
void efflm_q4_gemm(const void *x, int bf16, int M, int K, const uint8_t *w, const uint16_t *s, const uint16_t *z,
                   float half, int N, int group, void *y) {
    int nb = K / 32, bpg = group / 32, G = K / group;
    int8_t *q = (int8_t *)malloc((size_t)M * K);
    float *d = (float *)malloc(sizeof(float) * (size_t)M * nb * 2);
    float *dsum = d + (size_t)M * nb;
    #pragma omp parallel for schedule(static) if (M > 1)
    for (int m = 0; m < M; m++) quantize_row(x, bf16, (size_t)m * K, K, q + (size_t)m * K, d + (size_t)m * nb, dsum + (size_t)m * nb);
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const uint8_t *wn = w + (size_t)n * (K / 2);
        const uint16_t *sn = s + (size_t)n * G, *zn = z ? z + (size_t)n * G : NULL;
        for (int m = 0; m < M; m++)
            store1(y, bf16, (size_t)m * N + n, dot_row(wn, sn, zn, bpg, nb, q + (size_t)m * K, d + (size_t)m * nb,
                                                       dsum + (size_t)m * nb, half));
    }
    free(q);
    free(d);
}

/* 8-bit weights, one fp16 scale per output row (symmetric, per channel): y = s[n] * sum_b d_b * (w_b . q_b). */
void efflm_q8_gemm(const void *x, int bf16, int M, int K, const int8_t *w, const uint16_t *s, int N, void *y) {
    int nb = K / 32;
    int8_t *q = (int8_t *)malloc((size_t)M * K);
    float *d = (float *)malloc(sizeof(float) * (size_t)M * nb * 2);
    float *dsum = d + (size_t)M * nb;
    for (int m = 0; m < M; m++) quantize_row(x, bf16, (size_t)m * K, K, q + (size_t)m * K, d + (size_t)m * nb, dsum + (size_t)m * nb);
    const __m256i ones = _mm256_set1_epi16(1);
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        const int8_t *wn = w + (size_t)n * K;
        float sn = _cvtsh_ss(s[n]);
        for (int m = 0; m < M; m++) {
            const int8_t *qm = q + (size_t)m * K;
            const float *dm = d + (size_t)m * nb;
            __m256 acc = _mm256_setzero_ps();
            for (int b = 0; b < nb; b++) {
                __m256i wv = _mm256_loadu_si256((const __m256i *)(wn + b * 32));
                __m256i xv = _mm256_loadu_si256((const __m256i *)(qm + b * 32));
                __m256i prod = _mm256_madd_epi16(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)), ones);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(dm[b]), _mm256_cvtepi32_ps(prod), acc);
            }
            store1(y, bf16, (size_t)m * N + n, sn * hsum8(acc));
        }
    }
    free(q);
    free(d);
}
