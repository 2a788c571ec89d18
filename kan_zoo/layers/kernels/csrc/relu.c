/* ReLU-KAN basis expansion and its backward for kan_zoo.layers.bases.relu, one pass over the input.

   B_f = ((r relu(x - a_cf)) relu(b_cf - x))^2 with per-channel phases a, b (ReLUBasis.expand_into, the
   same order of operations); the backward also reduces the phase gradients in the same pass. Loaded by
   kan_zoo.layers.kernels.native_kernels (ctypes); the caller checks every shape, stride and dtype. Compiled for
   float (f32) and double (f64). The input is (rows = n * channels, spatial), contiguous; a row's channel
   is row % channels. */
#include <stdint.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#define THREAD_ID omp_get_thread_num()
#else
#define THREAD_ID 0
#endif

#define TILE 256

/* relu as `x < 0 ? 0 : x`, so that NaN passes through as in torch.relu. */

/* out (n, groups, functions, channels / groups, spatial) at strides (osn, osg, osf, spatial, 1). low and
   high are (channels, functions), contiguous. */
#define DEFINE_EXPAND(T, SUF)                                                                                  \
    int relu_expand_##SUF(const T* t, T* out, int64_t n, int64_t groups, int64_t channels, int64_t spatial,      \
                          int64_t osn, int64_t osg, int64_t osf, const T* low, const T* high, int64_t functions,  \
                          const T* scale, int64_t threads) {                                                    \
        const int64_t per_group = channels / groups, tiles = (spatial + TILE - 1) / TILE;                       \
        const T r = *scale;                                                                                     \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                       \
        for (int64_t w = 0; w < n * channels * tiles; ++w) {                                                    \
            const int64_t tile = w % tiles, row = w / tiles, start = tile * TILE;                               \
            const int64_t len = spatial - start < TILE ? spatial - start : TILE;                                \
            const int64_t b = row / channels, c = row % channels, g = c / per_group;                            \
            const T* restrict x = t + row * spatial + start;                                                    \
            T* o = out + b * osn + g * osg + (c % per_group) * spatial + start;                                 \
            for (int64_t f = 0; f < functions; ++f) {                                                           \
                const T a = low[c * functions + f], e = high[c * functions + f];                                \
                T* restrict of = o + f * osf;                                                                   \
                for (int64_t i = 0; i < len; ++i) {                                                             \
                    T p = x[i] - a, q = e - x[i];                                                               \
                    p = p < 0 ? 0 : p;                                                                          \
                    q = q < 0 ? 0 : q;                                                                          \
                    const T bell = p * r * q;                                                                   \
                    of[i] = bell * bell;                                                                        \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        return 0;                                                                                               \
    }

/* With P = relu(x - a), Q = relu(b - x), h = P Q dL/dB: grad_t = sum_f (h Q - h P) (times 2 r^2 by the
   caller), and per (channel, function) the sums of h Q and h P over the batch and positions, accumulated
   in double into sums (threads, 2, channels, functions), zeroed by the caller: each thread its own slice
   (static schedule: the same work per thread every call), which the caller adds up in order, so that the
   result does not depend on which thread finishes first. */
#define DEFINE_BACKWARD(T, SUF)                                                                                \
    int relu_backward_##SUF(const T* t, const T* grad_out, T* grad_t, int64_t n, int64_t groups,                 \
                            int64_t channels, int64_t spatial, int64_t gsn, int64_t gsg, int64_t gsf,            \
                            const T* low, const T* high, int64_t functions, double* sums, int64_t threads) {    \
        const int64_t per_group = channels / groups, tiles = (spatial + TILE - 1) / TILE;                       \
        _Pragma("omp parallel num_threads(threads)")                                                            \
        {                                                                                                       \
            double* mine = sums + THREAD_ID * 2 * channels * functions; /* this thread's h Q, then h P sums */  \
            _Pragma("omp for schedule(static)")                                                                 \
            for (int64_t w = 0; w < n * channels * tiles; ++w) {                                                \
                const int64_t tile = w % tiles, row = w / tiles, start = tile * TILE;                           \
                const int64_t len = spatial - start < TILE ? spatial - start : TILE;                            \
                const int64_t b = row / channels, c = row % channels, g = c / per_group;                        \
                const T* restrict x = t + row * spatial + start;                                                \
                const T* go = grad_out + b * gsn + g * gsg + (c % per_group) * spatial + start;                 \
                T acc[TILE];                                                                                    \
                for (int64_t i = 0; i < len; ++i) acc[i] = 0;                                                   \
                for (int64_t f = 0; f < functions; ++f) {                                                       \
                    const T a = low[c * functions + f], e = high[c * functions + f];                            \
                    const T* restrict gf = go + f * gsf;                                                        \
                    T sq = 0, sp = 0;                                                                           \
                    _Pragma("omp simd reduction(+: sq, sp)")                                                    \
                    for (int64_t i = 0; i < len; ++i) {                                                         \
                        T p = x[i] - a, q = e - x[i];                                                           \
                        p = p < 0 ? 0 : p;                                                                      \
                        q = q < 0 ? 0 : q;                                                                      \
                        const T h = p * q * gf[i], hq = q * h, hp = p * h;                                      \
                        acc[i] = acc[i] + hq - hp;                                                              \
                        sq += hq;                                                                               \
                        sp += hp;                                                                               \
                    }                                                                                           \
                    mine[c * functions + f] += sq;                                                              \
                    mine[(channels + c) * functions + f] += sp;                                                 \
                }                                                                                               \
                memcpy(grad_t + row * spatial + start, acc, sizeof(T) * len);                                   \
            }                                                                                                   \
        }                                                                                                       \
        return 0;                                                                                               \
    }

DEFINE_EXPAND(float, f32)
DEFINE_EXPAND(double, f64)
DEFINE_BACKWARD(float, f32)
DEFINE_BACKWARD(double, f64)
