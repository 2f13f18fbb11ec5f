/* efflm's fused decode step: every decoder layer of a Llama-style model for the T new tokens of
 * each of B sequences, in one call (AVX2 + FMA + F16C, OpenMP on torch's thread pool): one-token
 * decode, batched decode, prefill and speculative verification alike.
 *
 * Per layer: RMSNorm -> q/k/v (one pass over their rows, the normed input quantized to int8
 * once and shared) -> RoPE -> the new key/value written into the static cache -> attention
 * over the valid, causal slots -> o_proj -> residual -> RMSNorm -> gate/up (shared input) -> SiLU * up
 * -> down_proj -> residual. The cache is fp32 or int8 (codes + one fp16 scale per token and head,
 * dequantized inside attention). Linear weights may be packed 4-bit blocks (q4_blocks.h), int8
 * rows with one scale each, or dense fp32/bf16. The residual stream is fp32; with `bf16` set,
 * every value is rounded to bf16 exactly where efflm's reference path (inference/engine.py)
 * holds it in bf16, so the two paths compute the same numbers up to summation order. Every
 * token is computed in the same order whatever B and T are (q4_blocks.h), so a token's result
 * does not depend on the tokens that share its step.
 * Compiled with -ffp-contract=off so each multiply and add rounds as torch's elementwise ops do.
 */
#include "q4_blocks.h"

enum { DENSE_F32 = 0, DENSE_BF16 = 1, Q4 = 4, Q8 = 8 };
enum { PAR_ROWS = 8 };  /* per-token loops (norms, quantization, RoPE, residuals) go parallel from this many rows */

typedef struct {
    int kind, N, K, group;
    const void *w;          /* [N, K] f32/bf16, [N, K/2] q4 blocks, or [N, K] int8 */
    const uint16_t *s, *z;  /* fp16 scales [N, K/group] (q8: [N]); offsets or NULL */
    float half;             /* q4 asymmetric grids: offset + half * scale */
    const float *bias;      /* [N] or NULL */
} efflm_lin;

typedef struct {
    efflm_lin lin[7];       /* q, k, v, o, gate, up, down */
    const float *norm1, *norm2;
    float eps1, eps2;
} efflm_layer;

typedef struct {
    int L, B, T, D, Hq, H, Dh, I, S, bf16;  /* T new tokens per sequence; I: the widest MLP of any layer */
    float scale;
    float *x;               /* [B * T, D] residual stream, in and out */
    const float *cos, *sin; /* [B * T, Dh] */
    void *kc, *vc;          /* [L, cache_b, H, S, Dh]: fp32, or int8 codes with kv_int8 */
    const uint8_t *valid;   /* [B, H, S]: slots that hold a real token (this step's included) */
    int slot;               /* the first new token's slot; token t attends over slots [0, slot + t] */
    int kv_int8;            /* the int8 cache: codes in kc/vc, one fp16 scale per token and head */
    uint16_t *ks, *vs;      /* [L, B, H, S] scales (kv_int8 only) */
    int cache_b;            /* sequences the cache tensors hold (>= B: a step over the first B of them) */
} efflm_step;

/* Cache row (token s of one head) as fp32: fp32 rows as they are, int8 rows dequantized here,
 * inside attention (code * scale: exact in fp32, the same values the reference path reads). */
static inline const float *cache_row(const efflm_step *st, const void *base, const uint16_t *scales, size_t row,
                                     float *buf) {
    int Dh = st->Dh;
    if (!st->kv_int8) return (const float *)base + row * Dh;
    const int8_t *c = (const int8_t *)base + row * Dh;
    float sc = _cvtsh_ss(scales[row]);
    for (int j = 0; j < Dh; j++) buf[j] = (float)c[j] * sc;
    return buf;
}

/* Write one token's key or value (one head) into cache row `row`; the int8 cache quantizes it as
 * kv_int8.quantize_int8 does: s = fp16(max|x| / 127, at least 1e-8), code = round-half-even(x / s). */
static inline void cache_write(const efflm_step *st, void *base, uint16_t *scales, size_t row, const float *x) {
    int Dh = st->Dh;
    if (!st->kv_int8) {
        for (int j = 0; j < Dh; j++) ((float *)base)[row * Dh + j] = x[j];
        return;
    }
    float amax = 0.0f;
    for (int j = 0; j < Dh; j++) amax = fmaxf(amax, fabsf(x[j]));
    float s = amax / 127.0f;
    if (s < 1e-8f) s = 1e-8f;
    uint16_t h = _cvtss_sh(s, _MM_FROUND_TO_NEAREST_INT);
    float sf = _cvtsh_ss(h);
    scales[row] = h;
    int8_t *c = (int8_t *)base + row * Dh;
    for (int j = 0; j < Dh; j++) {
        float r = nearbyintf(x[j] / sf);
        c[j] = (int8_t)(r > 127.0f ? 127.0f : (r < -127.0f ? -127.0f : r));
    }
}

static inline float rnd(float v, int bf16) { return bf16 ? round_bf16(v) : v; }

/* Eight bf16 roundings (nearest even) at once. */
static inline __m256 rnd8(__m256 v, int bf16) {
    if (!bf16) return v;
    __m256i u = _mm256_castps_si256(v);
    __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    u = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7FFF)));
    return _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32((int)0xFFFF0000u)));
}

/* exp of eight floats (Cephes' expf: range reduction by ln 2 in two parts, a degree-5 polynomial,
 * about 1 ulp, as the SIMD exp torch's CPU kernels use); inputs clamped to +-88.38. */
static inline __m256 exp8(__m256 x) {
    x = _mm256_max_ps(_mm256_min_ps(x, _mm256_set1_ps(88.3762626647949f)), _mm256_set1_ps(-88.3762626647949f));
    __m256 fx = _mm256_floor_ps(_mm256_add_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                              _mm256_set1_ps(0.5f)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(0.693359375f)));
    x = _mm256_sub_ps(x, _mm256_mul_ps(fx, _mm256_set1_ps(-2.12194440e-4f)));
    __m256 y = _mm256_set1_ps(1.9875691500e-4f);
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.3981999507e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(8.3334519073e-3f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(4.1665795894e-2f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(1.6666665459e-1f));
    y = _mm256_fmadd_ps(y, x, _mm256_set1_ps(5.0000001201e-1f));
    y = _mm256_add_ps(_mm256_fmadd_ps(y, _mm256_mul_ps(x, x), x), _mm256_set1_ps(1.0f));
    __m256i e = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvttps_epi32(fx), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(y, _mm256_castsi256_ps(e));
}

static inline float dot_f32(const float *w, const float *x, int K) {
    __m256 a0 = _mm256_setzero_ps(), a1 = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        a0 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k), _mm256_loadu_ps(x + k), a0);
        a1 = _mm256_fmadd_ps(_mm256_loadu_ps(w + k + 8), _mm256_loadu_ps(x + k + 8), a1);
    }
    float t = hsum8(_mm256_add_ps(a0, a1));
    for (; k < K; k++) t += w[k] * x[k];
    return t;
}

/* One dense row (fp32 or bf16 weights) against T <= 4 float rows x + t K: each 16 weights loaded
 * (and widened) once for all of them; every row summed in dot_f32's order whatever T is. */
static inline __attribute__((always_inline)) void dense_rows_t(const void *w, int bf16w, const float *x, int K,
                                                               const int T, float *y) {
    __m256 a0[4], a1[4];
    for (int t = 0; t < T; t++) a0[t] = a1[t] = _mm256_setzero_ps();
    int k = 0;
    for (; k + 16 <= K; k += 16) {
        __m256 w0 = load8(w, bf16w, k), w1 = load8(w, bf16w, k + 8);
        for (int t = 0; t < T; t++) {
            a0[t] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(x + (size_t)t * K + k), a0[t]);
            a1[t] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(x + (size_t)t * K + k + 8), a1[t]);
        }
    }
    for (int t = 0; t < T; t++) {
        float v = hsum8(_mm256_add_ps(a0[t], a1[t]));
        for (int j = k; j < K; j++) {
            union { uint32_t u; float f; } c = {(uint32_t)((const uint16_t *)w)[j] << 16};
            v += (bf16w ? c.f : ((const float *)w)[j]) * x[(size_t)t * K + j];
        }
        y[t] = v;
    }
}

static inline void dense_rows(const void *w, int bf16w, const float *x, int K, int T, float *y) {
    switch (T) {
    case 1: dense_rows_t(w, bf16w, x, K, 1, y); break;
    case 2: dense_rows_t(w, bf16w, x, K, 2, y); break;
    case 3: dense_rows_t(w, bf16w, x, K, 3, y); break;
    default: dense_rows_t(w, bf16w, x, K, 4, y); break;
    }
}

/* The input of a group of Linears: float rows, and their int8 blocks for the quantized kinds. */
typedef struct {
    const float *x;
    int8_t *q;
    float *d, *dsum;
    int K;
} act_t;

static void quantize_act(act_t *a, int B) {
    int nb = a->K / 32;
    #pragma omp parallel for schedule(static) if (B >= PAR_ROWS)
    for (int b = 0; b < B; b++)
        quantize_row(a->x, 0, (size_t)b * a->K, a->K, a->q + (size_t)b * a->K, a->d + (size_t)b * nb,
                     a->dsum + (size_t)b * nb);
}

/* Row n of a Linear for every sequence b < B: v[b]. A quantized row's blocks are unpacked once
 * per four sequences. */
static inline void lin_rows(const efflm_lin *l, int n, const act_t *a, int B, float *v) {
    int K = l->K, nb = K / 32;
    for (int b = 0; b < B; b += 4) {
        int T = B - b < 4 ? B - b : 4;
        const int8_t *q = a->q + (size_t)b * K;
        const float *d = a->d + (size_t)b * nb, *dsum = a->dsum + (size_t)b * nb;
        if (l->kind == Q4) {
            int G = K / l->group;
            row_q4((const uint8_t *)l->w + (size_t)n * (K / 2), l->s + (size_t)n * G, l->z ? l->z + (size_t)n * G : NULL,
                   l->group / 32, nb, l->half, T, q, d, dsum, K, v + b, 1);
        } else if (l->kind == Q8) {
            row_q8((const int8_t *)l->w + (size_t)n * K, nb, T, q, d, K, v + b, 1);
            for (int t = 0; t < T; t++) v[b + t] *= _cvtsh_ss(l->s[n]);
        } else {
            int bw = l->kind == DENSE_BF16;
            dense_rows((const char *)l->w + (size_t)n * K * (bw ? 2 : 4), bw, a->x + (size_t)b * K, K, T, v + b);
        }
    }
}

/* The rows b0.. of an input. */
static inline act_t act_at(const act_t *a, int b0) {
    int nb = a->K / 32;
    act_t r = {a->x + (size_t)b0 * a->K, a->q + (size_t)b0 * a->K, a->d + (size_t)b0 * nb, a->dsum + (size_t)b0 * nb,
               a->K};
    return r;
}

static inline int quantized(const efflm_lin *l) { return l->kind == Q4 || l->kind == Q8; }

/* A Linear's output value as the reference path holds it: a packed kernel rounds its product to
 * bf16 before the bias is added; a dense bf16 Linear rounds once, bias included. */
static inline float finish(const efflm_lin *l, int n, float v, int bf16) {
    if (l->bias) v = quantized(l) ? rnd(v, bf16) + l->bias[n] : v + l->bias[n];
    return rnd(v, bf16);
}

enum { CHUNK = 64 };  /* rows of tokens per call of lin_rows */

/* y_j[b, n] = lin_j(x[b]) for up to three Linears reading the same input, one parallel loop over all rows. */
static void linears(const efflm_lin *const *ls, int nl, act_t *a, float *const *ys, int B, int bf16) {
    int quant = 0, rows = 0, off[4];
    for (int j = 0; j < nl; j++) {
        quant |= quantized(ls[j]);
        off[j] = rows;
        rows += ls[j]->N;
    }
    off[nl] = rows;
    if (quant) quantize_act(a, B);
    #pragma omp parallel for schedule(static)
    for (int r = 0; r < rows; r++) {
        int j = 0;
        while (r >= off[j + 1]) j++;
        const efflm_lin *l = ls[j];
        int n = r - off[j];
        float vals[CHUNK];
        for (int b0 = 0; b0 < B; b0 += CHUNK) {
            int m = B - b0 < CHUNK ? B - b0 : CHUNK;
            act_t sub = act_at(a, b0);
            lin_rows(l, n, &sub, m, vals);
            for (int t = 0; t < m; t++) ys[j][(size_t)(b0 + t) * l->N + n] = finish(l, n, vals[t], bf16);
        }
    }
}

/* out[b, n] = silu(gate(x[b])[n]) * up(x[b])[n]: gate and up rows together, eight rows at a time so
 * that SiLU runs on vectors in the same loop. */
static void gate_up(const efflm_lin *g, const efflm_lin *u, act_t *a, float *out, int B, int bf16) {
    int N = g->N;
    if (quantized(g) || quantized(u)) quantize_act(a, B);
    #pragma omp parallel for schedule(static)
    for (int n0 = 0; n0 < N; n0 += 8) {
        int rows = N - n0 < 8 ? N - n0 : 8;
        float gv[8][CHUNK], uv[8][CHUNK];
        for (int b0 = 0; b0 < B; b0 += CHUNK) {
            int m = B - b0 < CHUNK ? B - b0 : CHUNK;
            act_t sub = act_at(a, b0);
            for (int r = 0; r < rows; r++) {
                lin_rows(g, n0 + r, &sub, m, gv[r]);
                lin_rows(u, n0 + r, &sub, m, uv[r]);
            }
            for (int t = 0; t < m; t++) {
                float gg[8] = {0}, uu[8] = {0}, y[8];
                for (int r = 0; r < rows; r++) {
                    gg[r] = finish(g, n0 + r, gv[r][t], bf16);
                    uu[r] = finish(u, n0 + r, uv[r][t], bf16);
                }
                __m256 G = _mm256_loadu_ps(gg);
                __m256 act = rnd8(_mm256_div_ps(G, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), G)))), bf16);
                _mm256_storeu_ps(y, rnd8(_mm256_mul_ps(act, _mm256_loadu_ps(uu)), bf16));
                for (int r = 0; r < rows; r++) out[(size_t)(b0 + t) * N + n0 + r] = y[r];
            }
        }
    }
}

static void rms_norm(const float *x, const float *w, float eps, int B, int D, float *out, int bf16) {
    #pragma omp parallel for schedule(static) if (B >= PAR_ROWS)
    for (int b = 0; b < B; b++) {
        const float *xb = x + (size_t)b * D;
        float ss = 0.0f;
        for (int i = 0; i < D; i++) ss += xb[i] * xb[i];
        float r = 1.0f / sqrtf(ss / (float)D + eps);
        for (int i = 0; i < D; i++) out[(size_t)b * D + i] = rnd(xb[i] * r * w[i], bf16);  /* one rounding, as torch does */
    }
}

/* x [Dh] rotated in place by cos/sin [Dh] (HF Llama's half-split convention). */
static void rope(float *x, const float *c, const float *s, int Dh) {
    int h = Dh / 2;
    float t[512];
    for (int j = 0; j < Dh; j++) t[j] = x[j];
    for (int j = 0; j < Dh; j++) {
        float rot = j < h ? -t[j + h] : t[j - h];
        float a = t[j] * c[j], bb = rot * s[j];
        x[j] = a + bb;
    }
}

/* Softmax attention of each query row over its valid slots. The valid slots' scores are first
 * gathered into a dense list, so the softmax's vector sums and the weighted sum of values run in
 * the same order however the slots lie in the cache: a row with invalid slots between its own
 * (a splice gap, speculative drafts rejected) gets the bits of the same row stored contiguously. */
static void attend(const efflm_step *st, int layer, const float *q, float *out) {
    int B = st->B, T = st->T, Hq = st->Hq, H = st->H, Dh = st->Dh, S = st->S, G = Hq / H;
    #pragma omp parallel
    {
        float *sc = malloc(sizeof(float) * (size_t)S), buf[512];
        int *at = malloc(sizeof(int) * (size_t)S);
        #pragma omp for schedule(static)
        for (int rh = 0; rh < B * T * Hq; rh++) {
            int r = rh / Hq, hq = rh % Hq, b = r / T, kvh = hq / G, n = st->slot + r % T + 1;
            const float *qv = q + (size_t)r * Hq * Dh + (size_t)hq * Dh;
            size_t row0 = (((size_t)layer * st->cache_b + b) * H + kvh) * S;  /* cache row of slot 0 */
            const uint8_t *ok = st->valid + ((size_t)b * H + kvh) * S;
            float mx = -INFINITY, sum;
            int m = 0;
            for (int s = 0; s < n; s++) {
                if (!(ok[s] || s == n - 1)) continue;  /* valid slots, and always its own (a pad query: no NaN) */
                at[m] = s;
                sc[m] = dot_f32(cache_row(st, st->kc, st->ks, row0 + s, buf), qv, Dh) * st->scale;
                if (sc[m] > mx) mx = sc[m];
                m++;
            }
            __m256 mx8 = _mm256_set1_ps(mx), sum8 = _mm256_setzero_ps();
            int c = 0;
            for (; c + 8 <= m; c += 8) {
                __m256 e = exp8(_mm256_sub_ps(_mm256_loadu_ps(sc + c), mx8));
                _mm256_storeu_ps(sc + c, e);
                sum8 = _mm256_add_ps(sum8, e);
            }
            if (c < m) {  /* the tail, padded with zeros */
                float v8[8];
                for (int j = 0; j < 8; j++) v8[j] = c + j < m ? sc[c + j] : -INFINITY;
                __m256 v = _mm256_loadu_ps(v8), e = exp8(_mm256_sub_ps(v, mx8));
                e = _mm256_andnot_ps(_mm256_cmp_ps(v, _mm256_set1_ps(-INFINITY), _CMP_EQ_OQ), e);
                _mm256_storeu_ps(v8, e);
                for (int j = 0; c + j < m; j++) sc[c + j] = v8[j];
                sum8 = _mm256_add_ps(sum8, e);
            }
            sum = hsum8(sum8);
            float *o = out + (size_t)r * Hq * Dh + (size_t)hq * Dh;
            for (int j = 0; j < Dh; j++) o[j] = 0.0f;
            for (c = 0; c < m; c++) {
                if (sc[c] == 0.0f) continue;
                float w = sc[c] / sum;
                const float *vs = cache_row(st, st->vc, st->vs, row0 + at[c], buf);
                for (int j = 0; j < Dh; j++) o[j] += w * vs[j];
            }
            for (int j = 0; j < Dh; j++) o[j] = rnd(o[j], st->bf16);
        }
        free(sc);
        free(at);
    }
}

void efflm_decode_layers(const efflm_layer *layers, const efflm_step *st) {
    int B = st->B * st->T, D = st->D, Hq = st->Hq, H = st->H, Dh = st->Dh, I = st->I, S = st->S, bf = st->bf16;
    /* from here on B counts rows: every new token of every sequence */
    int wide = D > I ? D : I;
    if (Hq * Dh > wide) wide = Hq * Dh;
    float *h = malloc(sizeof(float) * (size_t)B * wide);
    float *q = malloc(sizeof(float) * (size_t)B * Hq * Dh), *att = malloc(sizeof(float) * (size_t)B * Hq * Dh);
    float *k = malloc(sizeof(float) * (size_t)B * H * Dh), *v = malloc(sizeof(float) * (size_t)B * H * Dh);
    float *gate = malloc(sizeof(float) * (size_t)B * I);  /* silu(gate) * up */
    float *y = malloc(sizeof(float) * (size_t)B * D);
    int8_t *q8 = malloc((size_t)B * wide);
    float *d = malloc(sizeof(float) * (size_t)B * (wide / 32 + 1) * 2), *dsum = d + (size_t)B * (wide / 32 + 1);
    for (int li = 0; li < st->L; li++) {
        const efflm_layer *ly = layers + li;
        const efflm_lin *qkv[3] = {&ly->lin[0], &ly->lin[1], &ly->lin[2]};
        rms_norm(st->x, ly->norm1, ly->eps1, B, D, h, bf);
        act_t a = {h, q8, d, dsum, D};
        float *outs[3] = {q, k, v};
        linears(qkv, 3, &a, outs, B, bf);
        #pragma omp parallel for schedule(static) if (B >= PAR_ROWS)
        for (int r = 0; r < B; r++) {
            const float *c = st->cos + (size_t)r * Dh, *s = st->sin + (size_t)r * Dh;
            for (int hh = 0; hh < Hq; hh++) rope(q + ((size_t)r * Hq + hh) * Dh, c, s, Dh);
            for (int hh = 0; hh < H; hh++) {
                float *kk = k + ((size_t)r * H + hh) * Dh;
                rope(kk, c, s, Dh);
                size_t row = (((size_t)li * st->cache_b + r / st->T) * H + hh) * S + st->slot + r % st->T;
                cache_write(st, st->kc, st->ks, row, kk);
                cache_write(st, st->vc, st->vs, row, v + ((size_t)r * H + hh) * Dh);
            }
        }
        attend(st, li, q, att);
        const efflm_lin *o[1] = {&ly->lin[3]};
        act_t ao = {att, q8, d, dsum, Hq * Dh};
        float *yo[1] = {y};
        linears(o, 1, &ao, yo, B, bf);
        #pragma omp parallel for schedule(static) if (B >= PAR_ROWS)
        for (size_t i = 0; i < (size_t)B * D; i++) st->x[i] = rnd(st->x[i] + y[i], bf);
        rms_norm(st->x, ly->norm2, ly->eps2, B, D, h, bf);
        int Il = ly->lin[4].N;  /* a structured-pruned layer may be narrower than I */
        act_t am = {h, q8, d, dsum, D};
        gate_up(&ly->lin[4], &ly->lin[5], &am, gate, B, bf);
        const efflm_lin *dn[1] = {&ly->lin[6]};
        act_t ad = {gate, q8, d, dsum, Il};
        linears(dn, 1, &ad, yo, B, bf);
        #pragma omp parallel for schedule(static) if (B >= PAR_ROWS)
        for (size_t i = 0; i < (size_t)B * D; i++) st->x[i] = rnd(st->x[i] + y[i], bf);
    }
    free(h); free(q); free(att); free(k); free(v); free(gate); free(y); free(q8); free(d);
}
