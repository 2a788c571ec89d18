/* Vectorizable math shared by the C kernels of kan_zoo.layers.kernels.native_kernels, which compiles it in front of
   every library's source. The C library's exp does not vectorize without -ffast-math, whose other
   liberties (reassociation, no NaN or infinity) the kernels do not want. */
#include <stdint.h>
#include <string.h>

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
