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
#include "q4_blocks.h"

int efflm_vnni = 0;

/* Choose the 4-bit row kernel: AVX-512 VNNI when ``allow`` and the CPU has it, else AVX2.
 * Returns the choice (1: VNNI). */
int efflm_use_vnni(int allow) {
    __builtin_cpu_init();
    efflm_vnni = allow && __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx512vl") &&
                 __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq");
    return efflm_vnni;
}

/* x [M, K] and y [M, N] fp32 or bf16 (the flags), w [N, K/2] blocks, s/z [N, K/group] fp16 (z may be NULL).
 * Each weight block is unpacked once per four activation rows (prefill, batched decode). */
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
        float out[4];
        for (int m = 0; m < M; m += 4) {
            int T = M - m < 4 ? M - m : 4;
            row_q4(wn, sn, zn, bpg, nb, half, T, q + (size_t)m * K, d + (size_t)m * nb, dsum + (size_t)m * nb, K, out, 1);
            for (int t = 0; t < T; t++) store1(y, bf16, (size_t)(m + t) * N + n, out[t]);
        }
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
    #pragma omp parallel for schedule(static) if (M > 1)
    for (int m = 0; m < M; m++) quantize_row(x, bf16, (size_t)m * K, K, q + (size_t)m * K, d + (size_t)m * nb, dsum + (size_t)m * nb);
    #pragma omp parallel for schedule(static)
    for (int n = 0; n < N; n++) {
        float sn = _cvtsh_ss(s[n]), out[4];
        for (int m = 0; m < M; m += 4) {
            int T = M - m < 4 ? M - m : 4;
            row_q8(w + (size_t)n * K, nb, T, q + (size_t)m * K, d + (size_t)m * nb, K, out, 1);
            for (int t = 0; t < T; t++) store1(y, bf16, (size_t)(m + t) * N + n, sn * out[t]);
        }
    }
    free(q);
    free(d);
}
