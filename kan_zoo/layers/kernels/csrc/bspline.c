/* B-spline basis expansion and its backward for kan_zoo.layers.bases.bspline, one pass over the input.

   The same Cox-de Boor steps as BSplineBasis._levels and expand_backward (eager), in the same order, on
   any increasing knots: each tile of TILE input elements runs the whole triangle in a small scratch that
   stays in L1, instead of one pass over memory per step. Loaded by kan_zoo.layers.kernels.native_kernels (ctypes);
   the caller checks every shape, stride and dtype. Compiled for float (f32) and double (f64). */
#include <stdint.h>
#include <stdlib.h>

#define TILE 128

/* Comparisons are written so that NaN passes through as in torch (clamp and relu keep NaN): `x < 0 ? 0 : x`.

   Level 1 of the triangle for every hat j: max(0, min(D_j / (g_{j+1} - g_j), -D_{j+2} / (g_{j+2} - g_{j+1}))),
   then levels 2..level in place,
   B_{j,k} = (D_j B_{j,k-1}) / (g_{j+k} - g_j) - D_{j+k+1} B_{j+1,k-1} / (g_{j+k+1} - g_{j+1}).
   D is (knots, TILE) with D_j = t - g_j; B gets (knots - 1 - level, TILE), or, where ``out`` is given, the last
   level goes to out + j * ostride instead (no copy pass). */
#define DEFINE_LEVELS(T, SUF)                                                                                  \
    static void levels_##SUF(const T* restrict t, int64_t len, const double* g, int64_t knots, int64_t level,    \
                             T* restrict D, T* restrict B, T* out, int64_t ostride) {                                  \
        for (int64_t j = 0; j < knots; ++j) {                                                                   \
            const T gj = (T)g[j];                                                                               \
            T* restrict d = D + j * TILE;                                                                       \
            for (int64_t i = 0; i < len; ++i) d[i] = t[i] - gj;                                                 \
        }                                                                                                       \
        for (int64_t j = 0; j + 2 < knots; ++j) {                                                               \
            const T left = (T)(1.0 / (g[j + 1] - g[j])), right = (T)(-1.0 / (g[j + 2] - g[j + 1]));            \
            const T *restrict dl = D + j * TILE, *restrict dr = D + (j + 2) * TILE;                             \
            T* restrict b = (level == 1 && out) ? out + j * ostride : B + j * TILE;                             \
            for (int64_t i = 0; i < len; ++i) {                                                                 \
                T x = dl[i] * left, y = dr[i] * right;                                                          \
                x = y < x ? y : x;                                                                              \
                b[i] = x < 0 ? 0 : x;                                                                           \
            }                                                                                                   \
        }                                                                                                       \
        for (int64_t k = 2; k <= level; ++k) {                                                                  \
            for (int64_t j = 0; j + 1 + k < knots; ++j) {                                                       \
                const T left = (T)(1.0 / (g[j + k] - g[j])), right = (T)(-1.0 / (g[j + k + 1] - g[j + 1]));     \
                const T *restrict dl = D + j * TILE, *restrict dr = D + (j + k + 1) * TILE;                     \
                const T *restrict here = B + j * TILE, *restrict next = B + (j + 1) * TILE;                     \
                T* restrict b = (k == level && out) ? out + j * ostride : B + j * TILE;                         \
                for (int64_t i = 0; i < len; ++i) b[i] = dl[i] * here[i] * left + right * dr[i] * next[i];      \
            }                                                                                                   \
        }                                                                                                       \
    }

/* out (n, groups, functions, inner) at strides (osn, osg, osf, 1) <- the degree-``degree`` functions of
   t (n * groups, inner), contiguous. functions = knots - 1 - degree, degree >= 1. */
#define DEFINE_EXPAND(T, SUF)                                                                                  \
    int bspline_expand_##SUF(const T* t, T* out, int64_t n, int64_t groups, int64_t inner, int64_t osn,          \
                             int64_t osg, int64_t osf, const double* g, int64_t knots, int64_t degree,          \
                             int64_t threads) {                                                                 \
        const int64_t tiles = (inner + TILE - 1) / TILE;                                                  \
        int failed = 0;                                                                                         \
        _Pragma("omp parallel num_threads(threads) reduction(|: failed)")                                       \
        {                                                                                                       \
            T* scratch = malloc(sizeof(T) * TILE * (2 * knots));                                                \
            if (!scratch) failed = 1;                                                                           \
            _Pragma("omp for schedule(static)")                                                                 \
            for (int64_t w = 0; w < n * groups * tiles; ++w) {                                                  \
                if (!scratch) continue;                                                                         \
                const int64_t tile = w % tiles, row = w / tiles, start = tile * TILE;                           \
                const int64_t len = inner - start < TILE ? inner - start : TILE;                                \
                T *D = scratch, *B = scratch + knots * TILE;                                                    \
                T* o = out + (row / groups) * osn + (row % groups) * osg + start;                               \
                levels_##SUF(t + row * inner + start, len, g, knots, degree, D, B, o, osf);                     \
            }                                                                                                   \
            free(scratch);                                                                                      \
        }                                                                                                       \
        return failed;                                                                                          \
    }

/* grad_t (n * groups, inner) <- sum_i dL/dB_i dB_{i,S}/dt, dL/dB (n, groups, functions, inner) at strides
   (gsn, gsg, gsf, 1); dB_{i,S}/dt = S / (g_{i+S} - g_i) B_{i,S-1} - S / (g_{i+S+1} - g_{i+1}) B_{i+1,S-1}.
   degree >= 1 (degree 1: B_{j,0} is the cell indicator, (t >= g_j) - (t >= g_{j+1})). */
#define DEFINE_BACKWARD(T, SUF)                                                                                \
    int bspline_backward_##SUF(const T* t, const T* grad_out, T* grad_t, int64_t n, int64_t groups,              \
                               int64_t inner, int64_t gsn, int64_t gsg, int64_t gsf, const double* g,           \
                               int64_t knots, int64_t degree, int64_t threads) {                                \
        const int64_t functions = knots - 1 - degree, tiles = (inner + TILE - 1) / TILE;                        \
        const double s = (double)degree;                                                                        \
        int failed = 0;                                                                                         \
        _Pragma("omp parallel num_threads(threads) reduction(|: failed)")                                       \
        {                                                                                                       \
            T* scratch = malloc(sizeof(T) * TILE * (2 * knots + 1));                                            \
            if (!scratch) failed = 1;                                                                           \
            _Pragma("omp for schedule(static)")                                                                 \
            for (int64_t w = 0; w < n * groups * tiles; ++w) {                                                  \
                if (!scratch) continue;                                                                         \
                const int64_t tile = w % tiles, row = w / tiles, start = tile * TILE;                           \
                const int64_t len = inner - start < TILE ? inner - start : TILE;                                \
                const T* x = t + row * inner + start;                                                           \
                T *D = scratch, *B = scratch + knots * TILE, *acc = B + knots * TILE;        \
                if (degree == 1) {                                                                              \
                    for (int64_t j = 0; j + 1 < knots; ++j) {                                                   \
                        const T lo = (T)g[j], hi = (T)g[j + 1];                                                 \
                        for (int64_t i = 0; i < len; ++i)                                                       \
                            B[j * TILE + i] = (T)(x[i] >= lo) - (T)(x[i] >= hi);                                \
                    }                                                                                           \
                } else {                                                                                        \
                    levels_##SUF(x, len, g, knots, degree - 1, D, B, NULL, 0);                                         \
                }                                                                                               \
                for (int64_t i = 0; i < len; ++i) acc[i] = 0;                                                   \
                const T* go = grad_out + (row / groups) * gsn + (row % groups) * gsg + start;                   \
                for (int64_t f = 0; f < functions; ++f) {                                                       \
                    const T up = (T)(s / (g[f + degree] - g[f])), down = (T)(-s / (g[f + degree + 1] - g[f + 1])); \
                    const T *restrict b = B + f * TILE, *restrict next = B + (f + 1) * TILE;                    \
                    const T* restrict gf = go + f * gsf;                                                        \
                    for (int64_t i = 0; i < len; ++i) acc[i] += (next[i] * down + up * b[i]) * gf[i];           \
                }                                                                                               \
                T* gt = grad_t + row * inner + start;                                                           \
                for (int64_t i = 0; i < len; ++i) gt[i] = acc[i];                                               \
            }                                                                                                   \
            free(scratch);                                                                                      \
        }                                                                                                       \
        return failed;                                                                                          \
    }

DEFINE_LEVELS(float, f32)
DEFINE_LEVELS(double, f64)
DEFINE_EXPAND(float, f32)
DEFINE_EXPAND(double, f64)
DEFINE_BACKWARD(float, f32)
DEFINE_BACKWARD(double, f64)
