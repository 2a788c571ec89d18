/* Gaussian RBF basis expansion and its backward for kan_zoo.layers.bases.rbf, one pass over the input.

   B_f = exp(-(z_f z_f)), z_f = (x - mu_f) inv_width, in RBFBasis.expand_into's order of operations; the
   backward reads the kept B_f where the caller has them, else recomputes them (exp_<suffix> of
   vector_math.h, within 1.2 ulp in tests). Loaded by kan_zoo.layers.kernels.native_kernels (ctypes); the caller
   checks every shape, stride and dtype. Input (rows = n * groups, inner), contiguous. */
#define TILE 256

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
