// gemv_a8's vector kernels (a8.cpp says what gemv_a8 computes and how the weights are packed): R <= R_MAX rows of
// rounded activations times one packed weight tile of 16 output rows, y[r, n0 .. n0+15]. AVX-512 VNNI: vpdpbusd
// multiplies 64 weight bytes by 4 broadcast activation bytes (16 output rows x 4 inputs) per instruction, up to 8
// rows per pass; AVX2 without VNNI: the same sums with vpmaddubsw + vpmaddwd, 4 rows per pass; elsewhere a scalar
// loop with the same arithmetic (tests; effml routes layers to gemv_a8 only where a8_isa() names a vector ISA).
// Every kernel takes the same integer sums and the same float steps in the same order, so their outputs (and
// amx.cpp's) are bit-identical.
#include <torch/extension.h>
#include <immintrin.h>
#include <algorithm>
#include <cstdint>
#include <cstring>

#include "a8.h"
#include "vec.h"

namespace effml_a8 {

namespace {

inline float fp16_at(const uint8_t* p, int i) {  // the i-th fp16 of a head, widened exactly
  uint16_t u;
  std::memcpy(&u, p + 2 * i, 2);
  return static_cast<float>(c10::Half(u, c10::Half::from_bits()));
}

// Scalar reference: the same sums in the same order of integer / float steps as the vector kernel below.
void tile_scalar(int bits, const uint8_t* wt, int64_t K, int64_t group, const Rows& x, int R, float* y, int64_t N,
                 int64_t n0, const float* bias) {
  const int64_t ng = K / group, per = group / BLOCK, step = bits == 4 ? 8 : 4, gb = group_bytes(bits, group);
  for (int r = 0; r < R; ++r) {
    const int8_t* q = x.q + r * K;
    const float *a = x.a + r * x.nb, *gs = x.g + r * ng;
    const int32_t* bs = x.s + r * x.nb;
    for (int row = 0; row < TILE; ++row) {
      float out = 0.f;
      for (int64_t g = 0; g < ng; ++g) {
        const uint8_t* head = wt + g * gb;
        const uint8_t* codes = head + HEAD;
        float s;
        if (bits == 4) {
          s = fp16_at(head, row);
        } else {
          std::memcpy(&s, head + 4 * row, 4);
        }
        for (int64_t b = g * per; b < (g + 1) * per; ++b) {
          int32_t acc = 0;
          for (int64_t k = b * BLOCK; k < (b + 1) * BLOCK; k += step) {
            const uint8_t* wb = codes + ((k - g * group) / step) * 64 + row * 4;
            for (int j = 0; j < 4; ++j) {
              if (bits == 4) {
                acc += (wb[j] & 15) * q[k + j] + (wb[j] >> 4) * q[k + 4 + j];
              } else {
                acc += wb[j] * q[k + j];
              }
            }
          }
          if (bits == 8) acc -= 128 * bs[b];
          out = std::fma(static_cast<float>(acc), s * a[b], out);
        }
        if (bits == 4) out = std::fma(fp16_at(head, TILE + row), gs[g], out);
      }
      y[r * N + n0 + row] = out + (bias ? bias[n0 + row] : 0.f);
    }
  }
}

#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
constexpr const char* kIsa = "AVX-512 VNNI";

template <int BITS, int R>
void tile_simd(const uint8_t* wt, int64_t K, int64_t group, const Rows& x, float* y, int64_t N, int64_t n0,
               const float* bias) {
  const int64_t ng = K / group, per = group / BLOCK, gb = group_bytes(BITS, group);
  const __m512i low = _mm512_set1_epi8(0x0F);
  // the rows' arrays once, in registers or on the stack: not through each std::vector in the inner loop
  const int8_t* qp[R];
  const float *ap[R], *gp[R];
  const int32_t* sp[R];
  for (int r = 0; r < R; ++r) qp[r] = x.q + r * K, ap[r] = x.a + r * x.nb, gp[r] = x.g + r * ng, sp[r] = x.s + r * x.nb;
  // accumulator chains per row: vpdpbusd's latency (4 cycles) over one dependent chain per row would bound one or
  // two rows; 4 chains for one row, 2 for two, the rows' own chains interleave beyond that
  constexpr int NA = R == 1 ? 4 : R == 2 ? 2 : 1;
  __m512 out[R];
  for (int r = 0; r < R; ++r) out[r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < ng; ++g) {
    const uint8_t* head = wt + g * gb;
    prefetch_line(head);
    const __m512 s = head_scales(BITS, head);
    for (int64_t b = g * per; b < (g + 1) * per; ++b) {
      __m512i acc[R][NA];
      for (int r = 0; r < R; ++r)
        for (int a = 0; a < NA; ++a) acc[r][a] = _mm512_setzero_si512();
      const int64_t k0 = b * BLOCK;
      const uint8_t* cb = head + HEAD + (k0 - g * group) * BITS * 2;  // the block's codes: 16 rows x 32 inputs
      if (BITS == 4) {
        for (int o = 0; o < BLOCK / 8; ++o) {
          const __m512i v = _mm512_loadu_si512(cb + o * 64);
          prefetch_line(cb + o * 64);
          const __m512i lo = _mm512_and_si512(v, low), hi = _mm512_and_si512(_mm512_srli_epi16(v, 4), low);
          for (int r = 0; r < R; ++r) {
            const int8_t* q = qp[r] + k0 + 8 * o;
            __m512i& a0 = acc[r][(2 * o) % NA];
            a0 = _mm512_dpbusd_epi32(a0, lo, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q)));
            __m512i& a1 = acc[r][(2 * o + 1) % NA];
            a1 = _mm512_dpbusd_epi32(a1, hi, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q + 4)));
          }
        }
      } else {
        for (int o = 0; o < BLOCK / 4; o += 2) {
          const __m512i v = _mm512_loadu_si512(cb + o * 64);
          const __m512i v2 = _mm512_loadu_si512(cb + (o + 1) * 64);
          prefetch_line(cb + o * 64);
          prefetch_line(cb + (o + 1) * 64);
          for (int r = 0; r < R; ++r) {
            const int8_t* q = qp[r] + k0 + 4 * o;
            __m512i& a0 = acc[r][o % NA];
            a0 = _mm512_dpbusd_epi32(a0, v, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q)));
            __m512i& a1 = acc[r][(o + 1) % NA];
            a1 = _mm512_dpbusd_epi32(a1, v2, _mm512_set1_epi32(*reinterpret_cast<const int32_t*>(q + 4)));
          }
        }
        for (int r = 0; r < R; ++r) acc[r][0] = _mm512_sub_epi32(acc[r][0], _mm512_set1_epi32(128 * sp[r][b]));
      }
      // out += acc * (a_b * s), no float accumulator per group beside out: with one, 8 rows' state (3 vectors a
      // row) was spilled to the stack, a store-to-load round trip on every accumulator chain
      for (int r = 0; r < R; ++r) {
        for (int a = 1; a < NA; ++a) acc[r][0] = _mm512_add_epi32(acc[r][0], acc[r][a]);
        out[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][0]), _mm512_mul_ps(s, _mm512_set1_ps(ap[r][b])), out[r]);
      }
    }
    if (BITS == 4) {
      const __m512 z = head_zterms(head);
      for (int r = 0; r < R; ++r) out[r] = _mm512_fmadd_ps(z, _mm512_set1_ps(gp[r][g]), out[r]);
    }
  }
  const __m512 bv = bias ? _mm512_loadu_ps(bias + n0) : _mm512_setzero_ps();
  for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + r * N + n0, _mm512_add_ps(out[r], bv));
}

#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)  // every AVX2 CPU has F16C (fp16 <-> fp32)
constexpr const char* kIsa = "AVX2";

// AVX2 (no VNNI): 8 rows per 256-bit vector, so a 16-row tile in two halves (bytes 0-31 / 32-63 of each 64-byte
// step). u8 x s8 -> int16 pairs (vpmaddubsw) -> int32 (vpmaddwd with ones). int4: |15 * 127 * 2| fits int16, so
// the low and high nibbles' pairs are added in int16 before widening. int8: the codes are taken back to signed
// (xor 0x80) and multiplied as |w| x sign(w) * x (llama.cpp's trick: 127 * 127 * 2 fits int16, where the +128
// unsigned codes would saturate), so no 128 * sum(xq) correction.
template <int BITS, int R>
void tile_simd(const uint8_t* wt, int64_t K, int64_t group, const Rows& x, float* y, int64_t N, int64_t n0,
               const float* bias) {
  const int64_t ng = K / group, per = group / BLOCK, gb = group_bytes(BITS, group);
  const __m256i low = _mm256_set1_epi8(0x0F), ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(-128);
  // halves per pass: both for one or two rows (two independent chains per row, each broadcast serves both halves);
  // one at a time for more rows, whose state would not fit 16 registers twice
  constexpr int H = R <= 2 ? 2 : 1;
  for (int h0 = 0; h0 < 2; h0 += H) {
    __m256 out[R][H];
    for (int r = 0; r < R; ++r)
      for (int h = 0; h < H; ++h) out[r][h] = _mm256_setzero_ps();
    for (int64_t g = 0; g < ng; ++g) {
      const uint8_t* head = wt + g * gb;
      if (h0 == 0) prefetch_line(head);
      __m256 s[H];
      for (int h = 0; h < H; ++h)
        s[h] = BITS == 4 ? _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(head + (h0 + h) * 16)))
                         : _mm256_loadu_ps(reinterpret_cast<const float*>(head) + (h0 + h) * 8);
      for (int64_t b = g * per; b < (g + 1) * per; ++b) {
        __m256i acc[R][H];
        const int64_t k0 = b * BLOCK;
        const uint8_t* cb = head + HEAD + (k0 - g * group) * BITS * 2;  // the block's codes: 16 rows x 32 inputs
        if (BITS == 4) {
          // the block's products summed in int16 and widened once: each int16 lane adds 2 nibble pairs per step
          // over 4 steps, |sum| <= 4 * 2 * 2 * 15 * 127 = 30480 < 32767, so the sum is exact
          __m256i p16[R][H];
          for (int r = 0; r < R; ++r)
            for (int h = 0; h < H; ++h) p16[r][h] = _mm256_setzero_si256();
          for (int o = 0; o < BLOCK / 8; ++o) {
            __m256i lo[H], hi[H];
            if (h0 == 0)  // the first pass over the tile's halves reads it from memory; the second from L1/L2
              prefetch_line(cb + o * 64);
            for (int h = 0; h < H; ++h) {
              const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cb + o * 64 + (h0 + h) * 32));
              lo[h] = _mm256_and_si256(v, low);
              hi[h] = _mm256_and_si256(_mm256_srli_epi16(v, 4), low);
            }
            for (int r = 0; r < R; ++r) {
              const int8_t* q = x.q + r * K + k0 + 8 * o;
              const __m256i xl = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(q));
              const __m256i xh = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(q + 4));
              for (int h = 0; h < H; ++h)
                p16[r][h] = _mm256_add_epi16(p16[r][h], _mm256_add_epi16(_mm256_maddubs_epi16(lo[h], xl),
                                                                         _mm256_maddubs_epi16(hi[h], xh)));
            }
          }
          for (int r = 0; r < R; ++r)
            for (int h = 0; h < H; ++h) acc[r][h] = _mm256_madd_epi16(p16[r][h], ones);
        } else {
          for (int r = 0; r < R; ++r)
            for (int h = 0; h < H; ++h) acc[r][h] = _mm256_setzero_si256();
          for (int o = 0; o < BLOCK / 4; ++o) {
            __m256i v[H], a[H];
            if (h0 == 0)
              prefetch_line(cb + o * 64);
            for (int h = 0; h < H; ++h) {
              v[h] = _mm256_xor_si256(
                  _mm256_loadu_si256(reinterpret_cast<const __m256i*>(cb + o * 64 + (h0 + h) * 32)), flip);
              a[h] = _mm256_sign_epi8(v[h], v[h]);  // |w|
            }
            for (int r = 0; r < R; ++r) {
              const __m256i xb = _mm256_set1_epi32(*reinterpret_cast<const int32_t*>(x.q + r * K + k0 + 4 * o));
              for (int h = 0; h < H; ++h)
                acc[r][h] = _mm256_add_epi32(
                    acc[r][h], _mm256_madd_epi16(_mm256_maddubs_epi16(a[h], _mm256_sign_epi8(xb, v[h])), ones));
            }
          }
        }
        for (int r = 0; r < R; ++r) {  // out += acc * (a_b * s), as the AVX-512 kernel
          const __m256 ab = _mm256_set1_ps(x.a[r * x.nb + b]);
          for (int h = 0; h < H; ++h)
            out[r][h] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r][h]), _mm256_mul_ps(s[h], ab), out[r][h]);
        }
      }
      if (BITS == 4) {
        for (int h = 0; h < H; ++h) {
          const __m256 z =
              _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(head + HEAD / 2 + (h0 + h) * 16)));
          for (int r = 0; r < R; ++r) out[r][h] = _mm256_fmadd_ps(z, _mm256_set1_ps(x.g[r * ng + g]), out[r][h]);
        }
      }
    }
    for (int h = 0; h < H; ++h) {
      const __m256 bv = bias ? _mm256_loadu_ps(bias + n0 + (h0 + h) * 8) : _mm256_setzero_ps();
      for (int r = 0; r < R; ++r) _mm256_storeu_ps(y + r * N + n0 + (h0 + h) * 8, _mm256_add_ps(out[r][h], bv));
    }
  }
}
#else
constexpr const char* kIsa = "";
#endif

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
template <int BITS>
void tile_rows(int R, const uint8_t* wt, int64_t K, int64_t group, const Rows& x, float* y, int64_t N, int64_t n0,
               const float* bias) {
  switch (R) {
    case 1: return tile_simd<BITS, 1>(wt, K, group, x, y, N, n0, bias);
    case 2: return tile_simd<BITS, 2>(wt, K, group, x, y, N, n0, bias);
    case 3: return tile_simd<BITS, 3>(wt, K, group, x, y, N, n0, bias);
    case 4: return tile_simd<BITS, 4>(wt, K, group, x, y, N, n0, bias);
#if EFFML_A8_R_MAX == 8
    case 5: return tile_simd<BITS, 5>(wt, K, group, x, y, N, n0, bias);
    case 6: return tile_simd<BITS, 6>(wt, K, group, x, y, N, n0, bias);
    case 7: return tile_simd<BITS, 7>(wt, K, group, x, y, N, n0, bias);
    default: return tile_simd<BITS, 8>(wt, K, group, x, y, N, n0, bias);
#else
    default: return tile_simd<BITS, 4>(wt, K, group, x, y, N, n0, bias);
#endif
  }
}
#endif

}  // namespace

const char* vector_isa() { return kIsa; }

void vector_tiles(int bits, const uint8_t* wp, int64_t t0, int64_t t1, int64_t tile_bytes, int64_t group,
                  const Rows& x, int64_t m0, int64_t M, float* y, int64_t N, const float* bias) {
  const int64_t K = x.K;
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* wt = wp + t * tile_bytes;
    for (int64_t m = m0; m < M; m += R_MAX) {  // the tile (16 rows x K codes) stays in L1/L2 between passes
      const int R = static_cast<int>(std::min<int64_t>(R_MAX, M - m));
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
      if (bits == 4)
        tile_rows<4>(R, wt, K, group, x.from(m), y + m * N, N, t * TILE, bias);
      else
        tile_rows<8>(R, wt, K, group, x.from(m), y + m * N, N, t * TILE, bias);
#else
      tile_scalar(bits, wt, K, group, x.from(m), R, y + m * N, N, t * TILE, bias);
#endif
    }
  }
}

}  // namespace effml_a8
