/* Gaussian RBF basis expansion and its backward for kan_zoo.layers.bases.rbf, one pass over the input.

   B_f = exp(-(z_f z_f)), z_f = (x - mu_f) inv_width, in RBFBasis.expand_into's order of operations; the
   backward reads the kept B_f where the caller has them, else recomputes them. exp is evaluated here
   (exp_<suffix> below, within 1 ulp of the correctly rounded value in tests) so that the loops vectorize
   without -ffast-math. Loaded by kan_zoo.layers.native_kernels (ctypes); the caller checks every shape,
   stride and dtype. Input (rows = n * groups, inner), contiguous. */
#include <stdint.h>
#include <string.h>

#define TILE 256

/* exp(y) = 2^k exp(r), k = round(y / ln 2) (by the add-and-subtract-a-magic-number rounding, which the
   compiler keeps without -ffast-math), r = y - k ln 2 in two parts (Cody-Waite), exp(r) by its Taylor
   polynomial (|r| <= ln(2) / 2: the first omitted term is below 0.1 ulp), 2^k as two normal factors so
   that results in the subnormal range round once, as exp does. */
static inline float exp_f32(float y) {
    y = y < -104.0f ? -104.0f : (y > 88.8f ? 88.8f : y);
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    const float k = (y * 1.44269504088896341f + magic) - magic;
    float r = y - k * 0.693145751953125f;
    r = r - k * 1.42860682030941723e-6f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    const int32_t ki = (int32_t)k, k1 = ki / 2, k2 = ki - k1;
    const int32_t b1 = (k1 + 127) << 23, b2 = (k2 + 127) << 23;
    float s1, s2;
    memcpy(&s1, &b1, 4);
    memcpy(&s2, &b2, 4);
    return p * s1 * s2;
}

static inline double exp_f64(double y) {
    y = y < -746.0 ? -746.0 : (y > 709.8 ? 709.8 : y);
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    const double k = (y * 1.4426950408889634074 + magic) - magic;
    double r = y - k * 0.693147180369123816490;
    r = r - k * 1.90821492927058770002e-10;
    double p = 1.0 / 6227020800.0; /* 1 / 13! */
    p = p * r + 1.0 / 479001600.0;
    p = p * r + 1.0 / 39916800.0;
    p = p * r + 1.0 / 3628800.0;
    p = p * r + 1.0 / 362880.0;
    p = p * r + 1.0 / 40320.0;
    p = p * r + 1.0 / 5040.0;
    p = p * r + 1.0 / 720.0;
    p = p * r + 1.0 / 120.0;
    p = p * r + 1.0 / 24.0;
    p = p * r + 1.0 / 6.0;
    p = p * r + 0.5;
    p = p * r + 1.0;
    p = p * r + 1.0;
    const int32_t ki = (int32_t)k, k1 = ki / 2, k2 = ki - k1;
    const int64_t b1 = (int64_t)(k1 + 1023) << 52, b2 = (int64_t)(k2 + 1023) << 52;
    double s1, s2;
    memcpy(&s1, &b1, 8);
    memcpy(&s2, &b2, 8);
    return p * s1 * s2;
}

/* out (n, groups, functions, inner) at strides (osn, osg, osf, 1); centres (functions,); inv_width (1,). */
#define DEFINE_EXPAND(T, SUF)                                                                                  \
    int rbf_expand_##SUF(const T* t, T* out, int64_t n, int64_t groups, int64_t inner, int64_t osn,              \
                         int64_t osg, int64_t osf, const T* centres, int64_t functions, const T* inv_width,      \
                         int64_t threads) {                                                                     \
        const int64_t tiles = (inner + TILE - 1) / TILE;                                                        \
        const T inv = *inv_width;                                                                               \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                       \
        for (int64_t w = 0; w < n * groups * tiles; ++w) {                                                      \
            const int64_t tile = w % tiles, row = w / tiles, start = tile * TILE;                               \
            const int64_t len = inner - start < TILE ? inner - start : TILE;                                    \
            const T* restrict x = t + row * inner + start;                                                      \
            T* o = out + (row / groups) * osn + (row % groups) * osg + start;                                   \
            for (int64_t f = 0; f < functions; ++f) {                                                           \
                const T mu = centres[f];                                                                        \
                T* restrict of = o + f * osf;                                                                   \
                for (int64_t i = 0; i < len; ++i) {                                                             \
                    const T z = (x[i] - mu) * inv;                                                              \
                    of[i] = exp_##SUF(-(z * z));                                                                \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        return 0;                                                                                               \
    }

/* grad_t = -2 inv_width sum_f B_f z_f dL/dB_f; dL/dB (n, groups, functions, inner) at strides (gsn, gsg,
   gsf, 1); functions: the kept B_f in the same layout (strides fsn, fsg, fsf), or NULL to recompute them. */
#define DEFINE_BACKWARD(T, SUF)                                                                                \
    int rbf_backward_##SUF(const T* t, const T* grad_out, const T* kept, T* grad_t, int64_t n, int64_t groups,   \
                           int64_t inner, int64_t gsn, int64_t gsg, int64_t gsf, int64_t fsn, int64_t fsg,       \
                           int64_t fsf, const T* centres, int64_t functions, const T* inv_width,                \
                           int64_t use_kept, int64_t threads) {                                                 \
        const int64_t tiles = (inner + TILE - 1) / TILE;                                                        \
        const T inv = *inv_width, scale = (T)(-2.0 * (double)inv);                                              \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                       \
        for (int64_t w = 0; w < n * groups * tiles; ++w) {                                                      \
            const int64_t tile = w % tiles, row = w / tiles, start = tile * TILE;                               \
            const int64_t len = inner - start < TILE ? inner - start : TILE;                                    \
            const int64_t b = row / groups, g = row % groups;                                                   \
            const T* restrict x = t + row * inner + start;                                                      \
            const T* go = grad_out + b * gsn + g * gsg + start;                                                 \
            const T* ke = use_kept ? kept + b * fsn + g * fsg + start : 0;                                      \
            T acc[TILE];                                                                                        \
            for (int64_t i = 0; i < len; ++i) acc[i] = 0;                                                       \
            for (int64_t f = 0; f < functions; ++f) {                                                           \
                const T mu = centres[f];                                                                        \
                const T* restrict gf = go + f * gsf;                                                            \
                if (use_kept) {                                                                                 \
                    const T* restrict kf = ke + f * fsf;                                                        \
                    for (int64_t i = 0; i < len; ++i) acc[i] = acc[i] + kf[i] * ((x[i] - mu) * inv) * gf[i];    \
                } else {                                                                                        \
                    for (int64_t i = 0; i < len; ++i) {                                                         \
                        const T z = (x[i] - mu) * inv;                                                          \
                        acc[i] = acc[i] + exp_##SUF(-(z * z)) * z * gf[i];                                      \
                    }                                                                                           \
                }                                                                                               \
            }                                                                                                   \
            T* restrict gt = grad_t + row * inner + start;                                                      \
            for (int64_t i = 0; i < len; ++i) gt[i] = acc[i] * scale;                                           \
        }                                                                                                       \
        return 0;                                                                                               \
    }

/* exp alone, for the accuracy test: out[i] = exp(y[i]). */
#define DEFINE_EXP(T, SUF)                                                                                     \
    int rbf_exp_##SUF(const T* y, T* out, int64_t count) {                                                      \
        for (int64_t i = 0; i < count; ++i) out[i] = exp_##SUF(y[i]);                                           \
        return 0;                                                                                               \
    }

DEFINE_EXPAND(float, f32)
DEFINE_EXPAND(double, f64)
DEFINE_BACKWARD(float, f32)
DEFINE_BACKWARD(double, f64)
DEFINE_EXP(float, f32)
DEFINE_EXP(double, f64)
