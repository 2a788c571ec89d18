/* The wavelet node's chunk work (kan_zoo.layers.kernels.fused_wavelet) for the wavelets with a closed form here,
   one pass over the chunk: psi(z) with z = x inv_scale + shift for every (output o, input j) pair of the
   chunk, and in backward also dL/dz = dL/dpsi psi'(z) reduced as the node needs it. The same operations,
   in the same order, as the eager chunk functions of kan_zoo.layers.bases.wavelet (exp_<suffix> from
   vector_math.h). Loaded by kan_zoo.layers.kernels.native_kernels (ctypes); the caller checks shapes, strides and
   dtypes.

   Chunk layout: columns (inputs, positions) with rows col_stride apart (a slice of the node's (C, N * spatial)
   input); inv_scale and shift (outputs, inputs), contiguous; psi and dL/dpsi (outputs, inputs, positions),
   contiguous. kind: 0 mexican hat, A (z^2 - 1) e^(-z^2 / 2); 1 derivative of Gaussian, -z e^(-z^2 / 2). */
#define TILE 256
#define MEXICAN_HAT 0
#define DOG 1

#define DEFINE_PSI(T, SUF)                                                                                     \
    int wavelet_psi_##SUF(const T* columns, int64_t col_stride, const T* inv_scale, const T* shift,             \
                          int64_t outputs, int64_t inputs, int64_t positions, T* psi, int64_t kind,             \
                          const T* amplitude, int64_t threads) {                                                \
        const T a = *amplitude;                                                                                 \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                       \
        for (int64_t row = 0; row < outputs * inputs; ++row) {                                                  \
            const T* restrict x = columns + (row % inputs) * col_stride;                                        \
            const T s = inv_scale[row], b = shift[row];                                                         \
            T* restrict out = psi + row * positions;                                                            \
            if (kind == MEXICAN_HAT) {                                                                          \
                for (int64_t p = 0; p < positions; ++p) {                                                       \
                    const T z = x[p] * s + b, q = z * z;                                                        \
                    out[p] = (q - 1) * exp_##SUF(q * (T)-0.5) * a;                                              \
                }                                                                                               \
            } else {                                                                                            \
                for (int64_t p = 0; p < positions; ++p) {                                                       \
                    const T z = x[p] * s + b;                                                                   \
                    out[p] = -(z * exp_##SUF(z * z * (T)-0.5));                                                 \
                }                                                                                               \
            }                                                                                                   \
        }                                                                                                       \
        return 0;                                                                                               \
    }

/* psi as above, and with g = dL/dz = dL/dpsi psi'(z): sum_p g and sum_p g z per (o, j), accumulated in
   double into sum_g and sum_gz (outputs, inputs), and grad_columns (inputs, positions), contiguous,
   = sum_o g inv_scale. Parallel over the inputs, so that each thread owns its rows of every output. */
#define DEFINE_PSI_BACKWARD(T, SUF)                                                                            \
    int wavelet_psi_backward_##SUF(const T* columns, int64_t col_stride, const T* inv_scale, const T* shift,    \
                                   const T* grad_psi, int64_t outputs, int64_t inputs, int64_t positions,       \
                                   T* psi, double* sum_g, double* sum_gz, T* grad_columns, int64_t kind,        \
                                   const T* amplitude, int64_t threads) {                                       \
        const T a = *amplitude;                                                                                 \
        _Pragma("omp parallel for num_threads(threads) schedule(static)")                                       \
        for (int64_t j = 0; j < inputs; ++j) {                                                                  \
            const T* restrict x = columns + j * col_stride;                                                     \
            for (int64_t start = 0; start < positions; start += TILE) {                                         \
                const int64_t len = positions - start < TILE ? positions - start : TILE;                        \
                T acc[TILE];                                                                                    \
                for (int64_t p = 0; p < len; ++p) acc[p] = 0;                                                   \
                for (int64_t o = 0; o < outputs; ++o) {                                                         \
                    const int64_t row = o * inputs + j;                                                         \
                    const T s = inv_scale[row], b = shift[row];                                                 \
                    const T* restrict gp = grad_psi + row * positions + start;                                  \
                    T* restrict out = psi + row * positions + start;                                            \
                    T g_sum = 0, gz_sum = 0;                                                                    \
                    _Pragma("omp simd reduction(+: g_sum, gz_sum)")                                             \
                    for (int64_t p = 0; p < len; ++p) {                                                         \
                        const T z = x[start + p] * s + b, q = z * z, e = exp_##SUF(q * (T)-0.5);                \
                        T value, slope;                                                                         \
                        if (kind == MEXICAN_HAT) {                                                              \
                            value = (q - 1) * e * a;                                                            \
                            slope = (3 - q) * z * e * a;                                                        \
                        } else {                                                                                \
                            value = -(z * e);                                                                   \
                            slope = (q - 1) * e;                                                                \
                        }                                                                                       \
                        out[p] = value;                                                                         \
                        const T g = gp[p] * slope;                                                              \
                        g_sum += g;                                                                             \
                        gz_sum += z * g;                                                                        \
                        acc[p] = acc[p] + g * s;                                                                \
                    }                                                                                           \
                    sum_g[row] += g_sum;                                                                        \
                    sum_gz[row] += gz_sum;                                                                      \
                }                                                                                               \
                for (int64_t p = 0; p < len; ++p) grad_columns[j * positions + start + p] = acc[p];             \
            }                                                                                                   \
        }                                                                                                       \
        return 0;                                                                                               \
    }

DEFINE_PSI(float, f32)
DEFINE_PSI(double, f64)
DEFINE_PSI_BACKWARD(float, f32)
DEFINE_PSI_BACKWARD(double, f64)
