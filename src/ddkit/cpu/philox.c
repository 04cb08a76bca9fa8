/* ddkit's counter-based Gaussian noise for the CPU: Philox4x32-10 (Salmon, Moraes, Dror and Shaw
 * 2011) and the Box-Muller transform in float32.
 *
 * The definition is the plain-PyTorch reference in ddkit/noise.py; this file computes the same
 * bits, faster.  Compiled on first use by ddkit/cpu/philox.py with -ffp-contract=off (and no
 * -ffast-math), so no multiply-add is fused and every operation rounds as the reference's
 * separate PyTorch ops do; tests/test_noise.py checks the two agree bit for bit.
 *
 * Element i of a draw comes from block b = i / 4: Philox4x32-10 of the counter
 * (b mod 2^32, b / 2^32, stream mod 2^32, stream / 2^32) under the key (seed mod 2^32,
 * seed / 2^32) gives four words r0..r3; (r0, r1) make elements 4b and 4b + 1, (r2, r3) elements
 * 4b + 2 and 4b + 3.  Any element depends only on (seed, stream, i): the same numbers come out
 * with any thread count and any split of the work.
 *
 * A pair of words (a, c) becomes two normals by Box-Muller:
 *   u1 = (a >> 8) + 1 over 2^24, in (0, 1]; u2 = (c >> 8) over 2^24, in [0, 1);
 *   r = sqrt(-2 ln u1); (z0, z1) = r (cos 2 pi u2, sin 2 pi u2).
 * ln u1 splits the integer k = (a >> 8) + 1 into m 2^e (m in [sqrt(1/2), sqrt 2)) and sums
 * (e - 24) ln 2 and 2 atanh((m - 1) / (m + 1)) (a series in the square of that ratio, to the 9th
 * power).  The angle is reduced exactly to y = 2 pi (u2 - j / 4), |y| <= pi / 4, whose sine and
 * cosine are Taylor polynomials (to y^9 and y^10), rotated by j quarter turns.  The constants come
 * from the caller (noise.py's COEFFICIENTS), so the two implementations share one table.
 */
#include <omp.h>
#include <stdint.h>
#include <string.h>

#define M0 0xD2511F53u
#define M1 0xCD9E8D57u
#define W0 0x9E3779B9u
#define W1 0xBB67AE85u

/* indices into the constants table */
enum { SQRT2, HALF, LN2_HI, LN2_LO, L9, L7, L5, L3, L1, ANGLE, S9, S7, S5, S3, C10, C8, C6, C4,
       C2, ONE, MINUS_TWO, N_CONST };

/* Two standard normals from each pair of 32-bit words (a[i], c[i]), as noise.py's _box_muller
 * computes them. */
static void box_muller(const uint32_t *restrict a, const uint32_t *restrict c, int64_t count,
                       const float *restrict K, float *restrict z0, float *restrict z1) {
  const float sqrt2 = K[SQRT2], half = K[HALF], ln2_hi = K[LN2_HI], ln2_lo = K[LN2_LO];
  const float l9 = K[L9], l7 = K[L7], l5 = K[L5], l3 = K[L3], l1 = K[L1], angle = K[ANGLE];
  const float s9 = K[S9], s7 = K[S7], s5 = K[S5], s3 = K[S3];
  const float c10 = K[C10], c8 = K[C8], c6 = K[C6], c4 = K[C4], c2 = K[C2];
  const float one = K[ONE], minus_two = K[MINUS_TWO];
  for (int64_t i = 0; i < count; ++i) {
    const float k = (float)(int32_t)((a[i] >> 8) + 1u); /* exact: at most 2^24 */
    uint32_t bits;
    memcpy(&bits, &k, sizeof bits);
    const int32_t e0 = (int32_t)(bits >> 23) - 127;
    const uint32_t mbits = (bits & 0x7fffffu) | 0x3f800000u;
    float m0;
    memcpy(&m0, &mbits, sizeof m0);
    const int big = m0 > sqrt2;
    const float m = big ? m0 * half : m0;
    const int32_t e = big ? e0 + 1 : e0;
    const float s = (m - one) / (m + one);
    const float q = s * s;
    float p = l9;
    p = p * q + l7;
    p = p * q + l5;
    p = p * q + l3;
    p = p * q + l1;
    const float fe = (float)(e - 24);
    const float ln_u = fe * ln2_hi + (fe * ln2_lo + s * p);
    const float r = __builtin_sqrtf(ln_u * minus_two);

    const int32_t kc = (int32_t)(c[i] >> 8);
    const int32_t j = (kc + (1 << 21)) >> 22; /* nearest quarter turn, 0..4 */
    const float y = (float)(kc - j * (1 << 22)) * angle;
    const float y2 = y * y;
    float sp = s9;
    sp = sp * y2 + s7;
    sp = sp * y2 + s5;
    sp = sp * y2 + s3;
    const float sn = y + (y * y2) * sp;
    float cp = c10;
    cp = cp * y2 + c8;
    cp = cp * y2 + c6;
    cp = cp * y2 + c4;
    cp = cp * y2 + c2;
    const float cs = one + y2 * cp;
    const int32_t quarter = j & 3; /* (cos, sin) of y + quarter pi / 2 */
    const int swap = quarter & 1, neg_cos = quarter == 1 || quarter == 2, neg_sin = quarter >= 2;
    const float cos_a = swap ? sn : cs, sin_a = swap ? cs : sn;
    z0[i] = r * (neg_cos ? -cos_a : cos_a);
    z1[i] = r * (neg_sin ? -sin_a : sin_a);
  }
}

#define TILE 256 /* blocks per tile: each stage is a loop the compiler vectorises */

/* w[0..3][b] = Philox4x32-10 of the counter (first + b, s0, s1) under the key (k0, k1), for
 * b < count <= TILE; the block number wraps past 2^64 - 1, as the counter does.  The ten rounds
 * each run over the whole tile, one word array at a time. */
static void philox_tile(uint32_t w[4][TILE], uint64_t first, int64_t count, uint32_t k0,
                        uint32_t k1, uint32_t s0, uint32_t s1) {
  for (int64_t b = 0; b < count; ++b) {
    const uint64_t i = first + (uint64_t)b;
    w[0][b] = (uint32_t)i;
    w[1][b] = (uint32_t)(i >> 32);
    w[2][b] = s0;
    w[3][b] = s1;
  }
  for (int r = 0; r < 10; ++r) {
    const uint32_t r0 = k0 + (uint32_t)r * W0, r1 = k1 + (uint32_t)r * W1;
    for (int64_t b = 0; b < count; ++b) {
      const uint64_t p0 = (uint64_t)M0 * w[0][b], p1 = (uint64_t)M1 * w[2][b];
      const uint32_t n0 = (uint32_t)(p1 >> 32) ^ w[1][b] ^ r0;
      const uint32_t n2 = (uint32_t)(p0 >> 32) ^ w[3][b] ^ r1;
      w[1][b] = (uint32_t)p1;
      w[3][b] = (uint32_t)p0;
      w[0][b] = n0;
      w[2][b] = n2;
    }
  }
}

/* Elements [4 first, 4 (first + count)) of the draw into out (count <= TILE). */
static void tile(float *out, int64_t first, int64_t count, uint32_t k0, uint32_t k1, uint32_t s0,
                 uint32_t s1, const float *K, float std, int apply_std) {
  uint32_t w[4][TILE];
  float z[4][TILE];
  philox_tile(w, (uint64_t)first, count, k0, k1, s0, s1);
  box_muller(w[0], w[1], count, K, z[0], z[1]);
  box_muller(w[2], w[3], count, K, z[2], z[3]);
  for (int64_t b = 0; b < count; ++b)
    for (int i = 0; i < 4; ++i) out[4 * b + i] = apply_std ? z[i][b] * std : z[i][b];
}

/* out[0:n] = std * N(0, 1) noise of (seed, stream), elements numbered from 0. */
void philox_normal(float *out, int64_t n, uint64_t seed, uint64_t stream, float std,
                   const float *constants, int threads) {
  float K[N_CONST];
  memcpy(K, constants, sizeof K);
  const uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  const uint32_t s0 = (uint32_t)stream, s1 = (uint32_t)(stream >> 32);
  const int64_t full = n / 4, tiles = (full + TILE - 1) / TILE;
  const int apply_std = std != 1.0f;
#pragma omp parallel for schedule(static) num_threads(threads) if (tiles >= 16)
  for (int64_t t = 0; t < tiles; ++t) {
    const int64_t first = t * TILE, count = full - first < TILE ? full - first : TILE;
    tile(out + 4 * first, first, count, k0, k1, s0, s1, K, std, apply_std);
  }
  if (n > 4 * full) { /* the last, partial block */
    float rest[4];
    tile(rest, full, 1, k0, k1, s0, s1, K, std, apply_std);
    for (int64_t i = 4 * full; i < n; ++i) out[i] = rest[i - 4 * full];
  }
}

/* out[0:4 n_blocks] = the raw words of blocks first .. first + n_blocks - 1 under the counter's
 * upper words (c2, c3), by the same code as the draws (for the tests). */
void philox_words(uint32_t *out, uint64_t first, int64_t n_blocks, uint32_t c2, uint32_t c3,
                  uint64_t key) {
  uint32_t w[4][TILE];
  for (int64_t done = 0; done < n_blocks; done += TILE) {
    const int64_t count = n_blocks - done < TILE ? n_blocks - done : TILE;
    philox_tile(w, first + (uint64_t)done, count, (uint32_t)key, (uint32_t)(key >> 32), c2, c3);
    for (int64_t b = 0; b < count; ++b)
      for (int i = 0; i < 4; ++i) out[4 * (done + b) + i] = w[i][b];
  }
}
