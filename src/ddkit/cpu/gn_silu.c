/* GroupNorm + SiLU (+ a per-channel shift before the norm, + inverted dropout after the SiLU),
 * forward and backward in two passes over the activations each, fp32, for the CPU.
 *
 * Compiled on first use by ddkit/cpu/gn_silu.py (cc -O3 -march=native -fopenmp
 * -fno-trapping-math -fno-math-errno, which let the loops vectorise) and
 * called through ctypes; the Python side checks shapes, dtypes, layouts and contiguity.
 *
 * Per image n, channel c, pixel p (x laid out [N, C, P] "nchw" or [N, P, C] "nhwc"):
 *   u      = x[n, c, p] + shift[n, c]                    (shift optional)
 *   mu, r  = mean and 1 / sqrt(var + eps) of u over the group of c (C / G channels, all P)
 *   z      = gamma[c] r (u - mu) + beta[c]
 *   y      = z sigmoid(z) * keep(n, c, p) / (1 - p_drop)  (dropout optional)
 * keep(n, c, p) is a counter-based draw: a 32-bit hash of (seed, logical index (n C + c) P + p,
 * below 2^32), kept when its top 24 bits are >= threshold; it is the same in either layout and
 * any thread count.  The forward pass writes it to `keep`, a 16-bit flag per element at the
 * element's own offset, and the backward pass reads it back, which costs less than a second hash.
 * (16 bits rather than 8: GCC vectorises a loop that mixes types for the narrowest one, so with
 * bytes and AVX-512 it takes 64 elements per iteration, which a channels_last row of 32 channels
 * never fills; with 16 bits it takes 32.)
 *
 * Statistics are two-pass (the mean, then squared deviations from it) and gradient sums are
 * taken about the mean: fp32 sums over blocks of pixels (32 rows channels_last, 512 pixels
 * NCHW), the blocks' sums accumulated in double (an image whose fp32 statistics overflow is
 * summed again in double throughout).  The backward pass recomputes z from x and the saved
 * (mu, r): nothing but x, mu, r and the dropout flags is kept between the passes.  Work is split
 * over images; each thread uses its own slice of `scratch` (8 C doubles per thread, from the
 * caller), so there is no limit on C and no large stack frame.
 */
#include <math.h>
#include <omp.h>
#include <stdint.h>
#include <string.h>

/* The dropout multiplier of element i: scale when the top 24 bits of its hash are >= threshold,
 * else 0.  The hash is Wellons' 32-bit "triple32" (three xorshift-multiply rounds) keyed by the
 * seed: its low half enters before the first round, its high half after the second
 * multiplication.  (One keyed round of "lowbias32" is cheaper but leaves draws correlated at
 * power-of-two index lags; tests/test_cpu.py checks this hash for such correlations.) */
static inline float keep_scale(uint32_t s0, uint32_t s1, uint32_t i, uint32_t threshold,
                               float scale) {
  uint32_t h = i ^ s0;
  h ^= h >> 17;
  h *= 0xed5ad4bbU;
  h ^= h >> 11;
  h *= 0xac4c1b51U;
  h ^= s1;
  h ^= h >> 15;
  h *= 0x31848babU;
  h ^= h >> 14;
  return (h >> 8) >= threshold ? scale : 0.0f;
}

/* exp(t) for the sigmoid: Cody-Waite reduction and a degree-6 polynomial (relative error about
 * 2e-7), written out so that the compiler vectorises it.  t is clamped to [-80, 80], so that no
 * lane (GCC evaluates both sides of the clamp) ever divides into a subnormal, which costs a
 * microcode assist per element on x86: the sigmoid saturates at 1 / (1 + e^80) ~ 1.8e-35 instead
 * of underflowing, an absolute error below 1e-33 in SiLU.  NaN stays NaN. */
static inline float exp_f(float t) {
  t = t < -80.0f ? -80.0f : t; /* ternaries, not fmaxf: NaN stays NaN and they vectorise */
  t = t > 80.0f ? 80.0f : t;
  const float k = (t * 1.44269504088896341f + 12582912.0f) - 12582912.0f; /* round(t / ln 2) */
  const float r = (t - k * 0.693145751953125f) - k * 1.428606765330187e-06f;
  float p = 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = ((int32_t)k + 127) << 23;
  float scale;
  memcpy(&scale, &bits, sizeof scale); /* 2^k */
  return p * scale;
}

static inline float sigmoid_f(float z) { return 1.0f / (1.0f + exp_f(-z)); }

/* Channels-last statistics are summed in fp32 over blocks of BLOCK pixels (four rows at a time,
 * so the per-channel sums are not one long dependency chain), each block's sum added in double. */
#define BLOCK 32
/* NCHW rows are summed in fp32 over ROWBLOCK pixels at a time, each block's sum added in double */
#define ROWBLOCK 512
#define ROWBLOCKS(p0, p1, P)                                                                    \
  for (int64_t p0 = 0, p1 = (P) < ROWBLOCK ? (P) : ROWBLOCK; p0 < (P);                          \
       p0 = p1, p1 = (P) - p1 < ROWBLOCK ? (P) : p1 + ROWBLOCK)

/* acc[c] = sum over the n (<= BLOCK) pixel rows x[p, :] of x[p, c] (dev NULL), or of
 * (x[p, c] + dev[c])^2 */
static void block_sums(const float *x, const float *dev, int64_t C, int64_t n, float *acc) {
  memset(acc, 0, sizeof(float) * C);
  int64_t p = 0;
  if (dev) {
    for (; p + 4 <= n; p += 4) {
      const float *r0 = x + p * C, *r1 = r0 + C, *r2 = r1 + C, *r3 = r2 + C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) {
        const float d0 = r0[c] + dev[c], d1 = r1[c] + dev[c], d2 = r2[c] + dev[c],
                    d3 = r3[c] + dev[c];
        acc[c] += (d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3);
      }
    }
    for (; p < n; ++p) {
      const float *r = x + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) acc[c] += (r[c] + dev[c]) * (r[c] + dev[c]);
    }
  } else {
    for (; p + 4 <= n; p += 4) {
      const float *r0 = x + p * C, *r1 = r0 + C, *r2 = r1 + C, *r3 = r2 + C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) acc[c] += (r0[c] + r1[c]) + (r2[c] + r3[c]);
    }
    for (; p < n; ++p) {
      const float *r = x + p * C;
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) acc[c] += r[c];
    }
  }
}

/* s[c] = the sum over pixels of x[c, p] (dev NULL) or of (x[c, p] + dev[c])^2, for one image:
 * in fp32 over blocks of pixels, each block's sum added in double (wide 0), or in double
 * throughout (wide 1).  acc, devf: C floats of scratch. */
static void channel_sums(const float *x, const double *dev, int64_t C, int64_t P, int nhwc,
                         int wide, double *s, float *acc, float *devf) {
  memset(s, 0, sizeof(double) * C);
  if (nhwc && !wide) {
    if (dev)
      for (int64_t c = 0; c < C; ++c) devf[c] = (float)dev[c];
    for (int64_t p0 = 0; p0 < P; p0 += BLOCK) {
      block_sums(x + p0 * C, dev ? devf : NULL, C, (P - p0 < BLOCK ? P - p0 : BLOCK), acc);
#pragma omp simd
      for (int64_t c = 0; c < C; ++c) s[c] += (double)acc[c];
    }
  } else if (nhwc) {
    for (int64_t p = 0; p < P; ++p) {
      const float *row = x + p * C;
      if (dev) {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) {
          const double d = (double)row[c] + dev[c];
          s[c] += d * d;
        }
      } else {
#pragma omp simd
        for (int64_t c = 0; c < C; ++c) s[c] += (double)row[c];
      }
    }
  } else {
    for (int64_t c = 0; c < C; ++c) {
      const float *row = x + c * P;
      const double dc = dev ? dev[c] : 0.0;
      const float dcf = (float)dc;
      double a = 0.0;
      if (wide) {
#pragma omp simd reduction(+ : a)
        for (int64_t p = 0; p < P; ++p) {
          const double d = (double)row[p] + dc;
          a += dev ? d * d : d;
        }
      } else {
        ROWBLOCKS(p0, p1, P) {
          float f = 0.0f;
#pragma omp simd reduction(+ : f)
          for (int64_t p = p0; p < p1; ++p) {
            const float d = row[p] + dcf;
            f += dev ? d * d : d;
          }
          a += (double)f;
        }
      }
      s[c] = a;
    }
  }
}

/* Per image: group statistics of u = x + shift, two-pass (the mean, then squared deviations
 * from it).  Returns 0 when a sum is not finite: fp32 block sums overflow for |u - mu| beyond
 * ~1e19, and the caller then sums again with wide = 1 (double throughout, finite up to |u| ~
 * 1e154; inf or NaN in the image stay so).  s1, dev: C doubles, acc, devf: C floats of scratch. */
static int stats_one(const float *x, const float *sh, int64_t C, int64_t P, int64_t G, int nhwc,
                     float eps, int wide, float *mean, float *rstd, double *s1, double *dev,
                     float *acc, float *devf) {
  const int64_t cg = C / G;
  const double m = (double)(cg * P);
  channel_sums(x, NULL, C, P, nhwc, wide, s1, acc, devf);
  for (int64_t g = 0; g < G; ++g) {
    double a = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) a += s1[c] + (double)sh[c] * (double)P;
    mean[g] = (float)(a / m);
  }
  /* dev[c] = shift_c - mu_g in double: u - mu = x + dev[c] */
  for (int64_t c = 0; c < C; ++c) dev[c] = (double)sh[c] - (double)mean[c / cg];
  channel_sums(x, dev, C, P, nhwc, wide, s1, acc, devf); /* sums of squared deviations */
  int finite = 1;
  for (int64_t g = 0; g < G; ++g) {
    double b = 0.0;
    for (int64_t c = g * cg; c < (g + 1) * cg; ++c) b += s1[c];
    finite &= isfinite(b) && isfinite(mean[g]);
    rstd[g] = (float)(1.0 / sqrt(b / m + (double)eps));
  }
  return finite;
}

/* Per image: z = a[c] x + b[c], d[c] = shift_c - mu (so u - mu = x + d[c]), the shift dense. */
static void affine_one(const float *shift, const float *gamma, const float *beta,
                       const float *mean, const float *rstd, int64_t C, int64_t G, float *a,
                       float *b, float *d) {
  const int64_t cg = C / G;
  for (int64_t c = 0; c < C; ++c) {
    const float mu = mean[c / cg], r = rstd[c / cg];
    d[c] = (shift ? shift[c] : 0.0f) - mu;
    a[c] = r * gamma[c];
    b[c] = beta[c] + a[c] * d[c];
  }
}

/* Forward: writes y; mean, rstd [N, G] out.  shift [N, C] or NULL; threshold 0 = no dropout;
 * seed's low and high halves key the dropout hash; keep (x's size, 16-bit; required for dropout,
 * which is off without it): 1 where an element is kept, else 0; scratch: threads x 8 C doubles. */
void gn_silu_forward(const float *x, const float *shift, const float *gamma, const float *beta,
                     int64_t N, int64_t C, int64_t P, int64_t G, int nhwc, float eps,
                     uint64_t seed, uint32_t threshold, float scale, int threads, double *scratch,
                     float *y, float *mean, float *rstd, uint16_t *keep) {
  const uint32_t s0 = (uint32_t)seed, s1 = (uint32_t)(seed >> 32);
  const int drop = threshold != 0 && keep != NULL;
#pragma omp parallel num_threads(threads)
  {
    double *ws = scratch + (int64_t)omp_get_thread_num() * 8 * C;
    float *a = (float *)(ws + 4 * C), *b = a + C, *d = b + C, *sh = d + C;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float *xn = x + n * C * P;
      float *yn = y + n * C * P;
      uint16_t *kn = keep ? keep + n * C * P : NULL;
      for (int64_t c = 0; c < C; ++c) sh[c] = shift ? shift[n * C + c] : 0.0f;
      float *acc = (float *)(ws + 2 * C), *devf = (float *)(ws + 3 * C);
      if (!stats_one(xn, sh, C, P, G, nhwc, eps, 0, mean + n * G, rstd + n * G, ws, ws + C, acc,
                     devf))
        stats_one(xn, sh, C, P, G, nhwc, eps, 1, mean + n * G, rstd + n * G, ws, ws + C, acc,
                  devf);
      affine_one(sh, gamma, beta, mean + n * G, rstd + n * G, C, G, a, b, d);
      const uint32_t base = (uint32_t)(n * C * P);
      if (nhwc) {
        for (int64_t p = 0; p < P; ++p) {
          const float *row = xn + p * C;
          float *out = yn + p * C;
          const uint32_t i0 = base + (uint32_t)p, step = (uint32_t)P;
          if (drop) {
            uint16_t *kept = kn + p * C;
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const float z = a[c] * row[c] + b[c];
              const float k = keep_scale(s0, s1, i0 + (uint32_t)c * step, threshold, scale);
              out[c] = z * sigmoid_f(z) * k;
              kept[c] = k != 0.0f;
            }
          } else {
#pragma omp simd
            for (int64_t c = 0; c < C; ++c) {
              const float z = a[c] * row[c] + b[c];
              out[c] = z * sigmoid_f(z);
            }
          }
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const float *row = xn + c * P;
          float *out = yn + c * P;
          const float ac = a[c], bc = b[c];
          const uint32_t i0 = base + (uint32_t)(c * P);
          if (drop) {
            uint16_t *kept = kn + c * P;
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) {
              const float z = ac * row[p] + bc;
              const float k = keep_scale(s0, s1, i0 + (uint32_t)p, threshold, scale);
              out[p] = z * sigmoid_f(z) * k;
              kept[p] = k != 0.0f;
            }
          } else {
#pragma omp simd
            for (int64_t p = 0; p < P; ++p) {
              const float z = ac * row[p] + bc;
              out[p] = z * sigmoid_f(z);
            }
          }
        }
      }
    }
  }
}

/* Pass 2 of the backward over one channels_last row of n channels:
 * out[c] = pc[c] dz[c] + qc[c] x[c] + kc[c], and fx[c] += that value.  out may be dz itself (in
 * place, element by element). */
static inline void dx_segment(const float *dz, const float *x, const float *pc, const float *qc,
                              const float *kc, float *fx, float *out, int64_t n) {
#pragma omp simd
  for (int64_t c = 0; c < n; ++c) {
    const float v = pc[c] * dz[c] + qc[c] * x[c] + kc[c];
    fx[c] += v;
    out[c] = v;
  }
}

/* The same over n pixels of one NCHW channel plane, with that channel's coefficients; returns
 * the fp32 sum of the values. */
static inline float dx_plane(const float *dz, const float *x, float pc, float qc, float kc,
                             float *out, int64_t n) {
  float f = 0.0f;
#pragma omp simd reduction(+ : f)
  for (int64_t p = 0; p < n; ++p) {
    const float v = pc * dz[p] + qc * x[p] + kc;
    f += v;
    out[p] = v;
  }
  return f;
}

/* Backward: dx (may not alias dy), per-image dgamma, dbeta [N, C] (summed over N by the caller),
 * dshift [N, C] or NULL (the gradient of the shift, = sum over pixels of dx); keep: the forward's
 * dropout flags, or NULL without dropout (scale multiplies the kept gradients). */
void gn_silu_backward(const float *dy, const float *x, const float *shift, const float *gamma,
                      const float *beta, const float *mean, const float *rstd,
                      const uint16_t *keep, int64_t N, int64_t C, int64_t P, int64_t G, int nhwc,
                      float scale, int threads, double *scratch, float *dx, float *dgamma,
                      float *dbeta, float *dshift) {
  const int drop = keep != NULL;
  const int64_t cg = C / G;
#pragma omp parallel num_threads(threads)
  {
    double *ws = scratch + (int64_t)omp_get_thread_num() * 8 * C;
    double *sdz = ws, *sdzu = ws + C, *sdx = ws + 2 * C;
    /* fp32 sums over a block of BLOCK pixel rows, added into the double sums after each block */
    float *fz = (float *)(ws + 3 * C), *fzu = fz + C, *fx = (float *)(ws + 7 * C);
    float *a = (float *)(ws + 4 * C), *b = a + C, *d = b + C, *pc = d + C, *qc = pc + C,
          *kc = qc + C;
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n) {
      const float *xn = x + n * C * P, *dyn = dy + n * C * P;
      float *dxn = dx + n * C * P;
      const uint16_t *kn = keep ? keep + n * C * P : NULL;
      affine_one(shift ? shift + n * C : NULL, gamma, beta, mean + n * G, rstd + n * G, C, G, a,
                 b, d);
      /* pass 1: dz = dL/dz into dx; per-channel sums of dz and dz (u - mu) */
      if (nhwc) {
        memset(sdz, 0, sizeof(double) * C);
        memset(sdzu, 0, sizeof(double) * C);
        for (int64_t p0 = 0; p0 < P; p0 += BLOCK) {
          const int64_t p1 = P - p0 < BLOCK ? P : p0 + BLOCK;
          memset(fz, 0, sizeof(float) * C);
          memset(fzu, 0, sizeof(float) * C);
          for (int64_t p = p0; p < p1; ++p) {
            const float *row = xn + p * C, *grow = dyn + p * C;
            float *out = dxn + p * C;
            if (drop) {
              const uint16_t *kept = kn + p * C;
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) {
                const float z = a[c] * row[c] + b[c];
                const float s = sigmoid_f(z);
                const float g = grow[c] * (kept[c] ? scale : 0.0f);
                const float dz = g * s * (1.0f + z * (1.0f - s));
                out[c] = dz;
                fz[c] += dz;
                fzu[c] += dz * (row[c] + d[c]);
              }
            } else {
#pragma omp simd
              for (int64_t c = 0; c < C; ++c) {
                const float z = a[c] * row[c] + b[c];
                const float s = sigmoid_f(z);
                const float dz = grow[c] * s * (1.0f + z * (1.0f - s));
                out[c] = dz;
                fz[c] += dz;
                fzu[c] += dz * (row[c] + d[c]);
              }
            }
          }
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) {
            sdz[c] += (double)fz[c];
            sdzu[c] += (double)fzu[c];
          }
        }
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const float *row = xn + c * P, *grow = dyn + c * P;
          float *out = dxn + c * P;
          const uint16_t *kept = drop ? kn + c * P : NULL;
          const float ac = a[c], bc = b[c], dc = d[c];
          double t0 = 0.0, t1 = 0.0;
          ROWBLOCKS(p0, p1, P) {
            float f0 = 0.0f, f1 = 0.0f;
            if (drop) {
#pragma omp simd reduction(+ : f0, f1)
              for (int64_t p = p0; p < p1; ++p) {
                const float z = ac * row[p] + bc;
                const float s = sigmoid_f(z);
                const float g = grow[p] * (kept[p] ? scale : 0.0f);
                const float dz = g * s * (1.0f + z * (1.0f - s));
                out[p] = dz;
                f0 += dz;
                f1 += dz * (row[p] + dc);
              }
            } else {
#pragma omp simd reduction(+ : f0, f1)
              for (int64_t p = p0; p < p1; ++p) {
                const float z = ac * row[p] + bc;
                const float s = sigmoid_f(z);
                const float dz = grow[p] * s * (1.0f + z * (1.0f - s));
                out[p] = dz;
                f0 += dz;
                f1 += dz * (row[p] + dc);
              }
            }
            t0 += (double)f0;
            t1 += (double)f1;
          }
          sdz[c] = t0;
          sdzu[c] = t1;
        }
      }
      /* GroupNorm's backward, xhat = r (u - mu) = r (x + d): dx = r (gamma_c dz - A - xhat B)
       * with A, B the group means of gamma_c dz and gamma_c dz xhat; i.e.
       * dx = pc[c] dz + qc[c] x + kc[c] */
      const double m = (double)(cg * P);
      for (int64_t g = 0; g < G; ++g) {
        const double r = rstd[n * G + g];
        double sa = 0.0, sb = 0.0;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          const double dz_xhat = r * sdzu[c]; /* sum over pixels of dz xhat */
          dgamma[n * C + c] = (float)dz_xhat;
          dbeta[n * C + c] = (float)sdz[c];
          sa += gamma[c] * sdz[c];
          sb += gamma[c] * dz_xhat;
        }
        const double A = sa / m, B = sb / m;
        for (int64_t c = g * cg; c < (g + 1) * cg; ++c) {
          pc[c] = (float)(r * gamma[c]);
          qc[c] = (float)(-r * r * B);
          kc[c] = (float)(-r * A - r * r * B * d[c]);
        }
      }
      /* pass 2: dx = pc dz + qc x + kc, in place over dz; the shift's gradient is the pixel sum
       * of dx */
      if (nhwc) {
        memset(sdx, 0, sizeof(double) * C);
        for (int64_t p0 = 0; p0 < P; p0 += BLOCK) {
          const int64_t p1 = P - p0 < BLOCK ? P : p0 + BLOCK;
          memset(fx, 0, sizeof(float) * C);
          for (int64_t p = p0; p < p1; ++p) {
            dx_segment(dxn + p * C, xn + p * C, pc, qc, kc, fx, dxn + p * C, C);
          }
#pragma omp simd
          for (int64_t c = 0; c < C; ++c) sdx[c] += (double)fx[c];
        }
        if (dshift)
          for (int64_t c = 0; c < C; ++c) dshift[n * C + c] = (float)sdx[c];
      } else {
        for (int64_t c = 0; c < C; ++c) {
          const float *row = xn + c * P;
          float *out = dxn + c * P;
          double t = 0.0;
          ROWBLOCKS(b0, b1, P) {
            t += (double)dx_plane(out + b0, row + b0, pc[c], qc[c], kc[c], out + b0, b1 - b0);
          }
          if (dshift) dshift[n * C + c] = (float)t;
        }
      }
    }
  }
}

/* doubles of scratch per thread that the two functions need */
int64_t gn_silu_scratch_per_thread(int64_t C) { return 8 * C; }
