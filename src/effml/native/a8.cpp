// effml's int8-activation GEMV for int4 / int8 weight codes (decode rows, llama.cpp's Q8_0 activations).
//
//   packed = pack_a8(codes, bits, scale, zterm, group)
//       codes (N, K): int4 codes 0..15 (uint8) or int8 codes (-127..127); scale (N, K/group) fp32 per output row and
//       group; zterm the same shape, -scale * zero (int4, whose zero point is a float), or None (int8, symmetric:
//       zero = 0, group = K). Returns (N/16, K/group * (64 + 2 group bits)) uint8: everything the kernel reads.
//   y = gemv_a8(x, packed, bits, group, bias?)
//       x (M, K) fp32, any M (decode rows, a verification, a prefill: up to 8 rows per pass over a weight tile;
//       16 rows and more on amx.cpp's tiles where the CPU has AMX-INT8, bit for bit the same);
//       y[m, n] = sum_g scale[n, g] * sum_{k in g} (code[n, k] - zero[n, g]) * xd[m, k]
//   xd is x rounded to int8 per block of 32 (xd = a_b * xq, a_b = max|x_b| / 127, xq = round(x / a_b)): the
//   weights' arithmetic is exact, the activations carry an int8 rounding (relative error <= 1/254 of the block's
//   largest value), what llama.cpp does for every quantized format. It lets the multiply run as integer dot products:
//   AVX-512 VNNI's vpdpbusd multiplies 64 weight bytes by 4 broadcast activation bytes per instruction (16 output rows
//   x 4 inputs), so an int4 weight costs ~0.1 instruction instead of the ~0.4 of widening it to fp32; a decode step
//   is then bound by reading the weights, not by the arithmetic.
//
// Packed layout: per tile of 16 output rows (interleaved, so each 32-bit lane of a vector is one output row), per
// group of `group` inputs, a 64-byte head and then the group's codes, so a tile is one stream:
//   head, int4: the 16 rows' scales, then their zero terms, as fp16 (32 + 32 bytes; llama.cpp's Q4_1 keeps its two
//         per-group values so: in fp32 they were a third of an int4 layer's bytes at group 32);
//         int8: the 16 rows' scales as fp32 (one group per row: 64 bytes per 16 x K codes)
//   codes, int4: [group/8][16 rows][4 bytes]: byte j of row r holds k = 8o + j (low nibble) and k = 8o + 4 + j (high)
//         int8: [group/4][16 rows][4 bytes]: code + 128 as uint8 (vpdpbusd takes unsigned weights, signed
//         activations; the 128 * sum(xq) this adds is taken off in integers per block)
// The fp16 scale and zero term (round to nearest even) put the int4 weight within 2^-11 |scale * code| + 2^-11 |zterm|
// + 2^-25 of the layer's fp32 dequantized one; pack_a8 refuses a scale outside fp16's normal range [2^-14, 65504] or
// a zero term past 65504 (effml then runs torch's kernel for that layer and says so).
// AVX2 CPUs without VNNI run the same sums with vpmaddubsw + vpmaddwd (tile_simd below); elsewhere a scalar loop
// does the same arithmetic (tests), and effml routes layers here only where a8_isa() names a vector ISA.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "a8.h"
#include "vec.h"

namespace effml_a8 {

// Software prefetch of the weight stream, every 64-byte line twice: into L1 PREFETCH bytes ahead and into L2
// PREFETCH_L2 bytes ahead (0: none). With the L1 prefetch alone the kernel's time was about its DRAM time plus its
// compute time (Intel Xeon VM, AVX-512, int4: SmolLM2's 120 projections at 11-12 GB/s where a plain sum reads 15-18
// and the same layers run at 43 GB/s from L2; likely one core's few L1 fill buffers, held by those prefetches and
// the demand misses alike). The L2 prefetch 8 KiB ahead keeps lines coming while the core computes: decode, alternating
// runs there (results/llm_decode_xeon_l2_prefetch_ab.json), int4 64-68% -> 76-88% of the bound, int8 68-70% ->
// 67-72%; AVX2 build int4 59-70% -> 70-74%, int8 59-64% -> 65-66%. 32 KiB ahead gained less; a plain sum
// (read_sum) gains nothing from it. AMD EPYC (Zen 4): the L1 prefetch 4 KiB ahead was measured (120 projections
// 3.07 ms vs 3.21 at 2 KiB, 3.70 with none); the L2 prefetch is not measured there and not issued.
int PREFETCH = effml_vec::intel() ? 1024 : 4096, PREFETCH_L2 = effml_vec::intel() ? 8192 : 0;

}  // namespace effml_a8

namespace {

using namespace effml_a8;

// gemv_a8 with at least this many rows runs amx.cpp's kernel where there is one (0: never): a8_amx() sets it
int64_t AMX_ROWS = 16;

struct ActBuf {  // the storage behind Rows (a8.h), reused across calls
  std::vector<int8_t> q;
  std::vector<float> a, g;
  std::vector<int32_t> s;
};

// x (M, K) rounded to int8 per block of 32 into buf, with zero rows from M up to `rows` (the AMX kernel reads 16
// rows at a time)
Rows quantize_rows(const float* x, int64_t M, int64_t K, int64_t group, int64_t rows, ActBuf& buf) {
  const int64_t nb = K / BLOCK, per = group / BLOCK, ng = K / group;
  buf.q.resize(rows * K);
  std::fill(buf.q.begin() + M * K, buf.q.end(), int8_t{0});
  buf.a.resize(rows * nb);  // the rows below write theirs; the padding rows are zeros
  buf.s.resize(rows * nb);
  std::fill(buf.a.begin() + M * nb, buf.a.end(), 0.f);
  std::fill(buf.s.begin() + M * nb, buf.s.end(), 0);
  buf.g.assign(rows * ng, 0.f);  // summed into below
  for (int64_t m = 0; m < M; ++m) {
    int8_t* rq = buf.q.data() + m * K;
    float *ra = buf.a.data() + m * nb, *rg = buf.g.data() + m * ng;
    int32_t* rs = buf.s.data() + m * nb;
    for (int64_t b = 0; b < nb; ++b) {
      const float* xb = x + m * K + b * BLOCK;
#if defined(__AVX512F__) && defined(__AVX512BW__)
      // the loop below in vectors, bit for bit: max|x| is exact in any order, and vcvtps2dq rounds to nearest
      // even as nearbyint does in the default rounding mode
      const __m512 x0 = _mm512_loadu_ps(xb), x1 = _mm512_loadu_ps(xb + 16);
      const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
      const float a = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      const __m512 vi = _mm512_set1_ps(inv);
      const __m512i lo = _mm512_set1_epi32(-127), hi = _mm512_set1_epi32(127);
      const __m512i q0 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x0, vi)), lo), hi);
      const __m512i q1 = _mm512_min_epi32(_mm512_max_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(x1, vi)), lo), hi);
      _mm_storeu_si128(reinterpret_cast<__m128i*>(rq + b * BLOCK), _mm512_cvtsepi32_epi8(q0));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(rq + b * BLOCK + 16), _mm512_cvtsepi32_epi8(q1));
      const int32_t s = _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
#elif defined(__AVX2__)
      // the same in 8-lane vectors (one call per decode projection: the scalar loop was ~3% of an int4 step)
      __m256 xs[4];
      __m256 m = _mm256_setzero_ps();
      const __m256 sign = _mm256_set1_ps(-0.f);
      for (int i = 0; i < 4; ++i) {
        xs[i] = _mm256_loadu_ps(xb + 8 * i);
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, xs[i]));
      }
      __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps(m, 1));
      m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
      m4 = _mm_max_ss(m4, _mm_shuffle_ps(m4, m4, 1));
      const float amax = _mm_cvtss_f32(m4);
      const float a = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      const __m256 vi = _mm256_set1_ps(inv);
      const __m256i lo = _mm256_set1_epi32(-127), hi = _mm256_set1_epi32(127);
      __m256i q[4];
      for (int i = 0; i < 4; ++i)
        q[i] = _mm256_min_epi32(_mm256_max_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(xs[i], vi)), lo), hi);
      // packs work within 128-bit lanes: int32 -> int16 -> int8 leaves the 4-byte runs in the order 0 2 4 6 1 3 5 7
      const __m256i b8 = _mm256_packs_epi16(_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3]));
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(rq + b * BLOCK),
                          _mm256_permutevar8x32_epi32(b8, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7)));
      const __m256i t = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
      __m128i t4 = _mm_add_epi32(_mm256_castsi256_si128(t), _mm256_extracti128_si256(t, 1));
      t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0x4E));
      t4 = _mm_add_epi32(t4, _mm_shuffle_epi32(t4, 0xB1));
      const int32_t s = _mm_cvtsi128_si32(t4);
#else
      float amax = 0.f;
      for (int i = 0; i < BLOCK; ++i) amax = std::max(amax, std::fabs(xb[i]));
      const float a = amax / 127.f, inv = amax > 0.f ? 127.f / amax : 0.f;
      int32_t s = 0;
      for (int i = 0; i < BLOCK; ++i) {
        const int v = static_cast<int>(std::nearbyint(xb[i] * inv));
        rq[b * BLOCK + i] = static_cast<int8_t>(std::clamp(v, -127, 127));
        s += rq[b * BLOCK + i];
      }
#endif
      ra[b] = a;
      rs[b] = s;
      rg[b / per] += a * static_cast<float>(s);
    }
  }
  return {buf.q.data(), buf.a.data(), buf.s.data(), buf.g.data(), K, nb, ng};
}

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
#define R_MAX_8 1
constexpr const char* kIsa = "AVX-512 VNNI";
constexpr int R_MAX = 8;  // activation rows per pass over a weight tile (a verification of up to 8 tokens: one pass)

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
constexpr int R_MAX = 4;  // 16 ymm registers: a row takes 2 per half (its int16 sums and its outputs)

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
constexpr int R_MAX = 4;
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
#if R_MAX_8
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

std::string a8_isa() { return kIsa; }

// vpdpbusd's rate on the calling thread, measured as fma_rate is (12 independent chains, about `seconds`):
// int8 multiply-adds per second (64 per instruction); 0 where the build has no AVX-512 VNNI.
double vnni_rate(double seconds) {
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)  // the VNNI kernel's condition
  constexpr int CH = 12, INNER = 1024;
  __m512i acc[CH];
  for (int j = 0; j < CH; ++j) acc[j] = _mm512_set1_epi32(j);
  const __m512i w = _mm512_set1_epi8(3), x = _mm512_set1_epi8(5);
  const double bursts = effml_vec::bursts_per_second(seconds, [&] {
    for (int i = 0; i < INNER; ++i)
      for (int j = 0; j < CH; ++j) acc[j] = _mm512_dpbusd_epi32(acc[j], w, x);
  });
  __m512i t = acc[0];
  for (int j = 1; j < CH; ++j) t = _mm512_add_epi32(t, acc[j]);
  volatile int32_t sink = _mm512_reduce_add_epi32(t);
  (void)sink;
  return bursts * INNER * CH * 64;
#else
  (void)seconds;
  return 0.0;
#endif
}

// The prefetch distances into L1 and into L2 (bytes >= 0 sets one, 0 = none there; set them between calls, not while
// a kernel runs); returns the two in force
std::tuple<int64_t, int64_t> a8_prefetch(int64_t l1, int64_t l2) {
  if (l1 >= 0) PREFETCH = static_cast<int>(l1);
  if (l2 >= 0) PREFETCH_L2 = static_cast<int>(l2);
  return {PREFETCH, PREFETCH_L2};
}

// The fewest rows gemv_a8 hands to the AMX kernel (amx.cpp; 0: never); rows >= 0 sets it (between calls). Returns
// the value in force: 0 where there is no AMX kernel (this build, this CPU or this kernel's permission)
int64_t a8_amx(int64_t rows) {
  if (rows >= 0) AMX_ROWS = rows;
  return amx_ready() ? AMX_ROWS : 0;
}

torch::Tensor pack_a8(const torch::Tensor& codes, int64_t bits, const torch::Tensor& scale,
                      const c10::optional<torch::Tensor>& zterm, int64_t group) {
  TORCH_CHECK(bits == 4 || bits == 8, "pack_a8: bits must be 4 or 8");
  TORCH_CHECK(codes.dim() == 2 && codes.is_contiguous() &&
              codes.scalar_type() == (bits == 4 ? torch::kByte : torch::kChar),
              "pack_a8: codes must be a contiguous (N, K) ", bits == 4 ? "uint8" : "int8", " tensor");
  const int64_t N = codes.size(0), K = codes.size(1);
  TORCH_CHECK(N % TILE == 0 && K % BLOCK == 0, "pack_a8: N must be a multiple of 16 and K of 32, got (", N, ", ", K,
              ")");
  TORCH_CHECK(group > 0 && group % BLOCK == 0 && K % group == 0 && (bits == 4 || group == K), "pack_a8: group ",
              group, " must be a multiple of 32 that divides K = ", K, bits == 8 ? " and equal K for int8 codes" : "");
  const int64_t ng = K / group;
  TORCH_CHECK(scale.scalar_type() == torch::kFloat && scale.is_contiguous() && scale.dim() == 2 &&
              scale.size(0) == N && scale.size(1) == ng, "pack_a8: scale must be a contiguous fp32 (N, K/group) = (",
              N, ", ", ng, ") tensor");
  TORCH_CHECK((bits == 4) == zterm.has_value(), "pack_a8: int4 takes zterm, int8 none");
  if (zterm) TORCH_CHECK(zterm->sizes() == scale.sizes() && zterm->scalar_type() == torch::kFloat &&
                         zterm->is_contiguous(), "pack_a8: zterm must be shaped like scale");
  const int64_t gb = group_bytes(bits, group), step = bits == 4 ? 8 : 4;
  auto out = torch::empty({N / TILE, ng * gb}, codes.options().dtype(torch::kByte));
  uint8_t* o = out.data_ptr<uint8_t>();
  const float* sp = scale.data_ptr<float>();
  const float* zp = zterm ? zterm->data_ptr<float>() : nullptr;
  for (int64_t t = 0; t < N / TILE; ++t)
    for (int64_t g = 0; g < ng; ++g) {
      uint8_t* head = o + (t * ng + g) * gb;
      for (int row = 0; row < TILE; ++row) {
        const int64_t i = (t * TILE + row) * ng + g;
        if (bits == 4) {  // round to nearest even (c10::Half's conversion)
          TORCH_CHECK(sp[i] >= 6.103515625e-05f && sp[i] <= 65504.f && std::fabs(zp[i]) <= 65504.f, "pack_a8: row ",
                      t * TILE + row, " group ", g, ": scale ", sp[i], " / zero term ", zp[i],
                      " outside fp16's range (scale in [2^-14, 65504], |zero term| <= 65504)");
          const uint16_t s = c10::Half(sp[i]).x, z = c10::Half(zp[i]).x;
          std::memcpy(head + 2 * row, &s, 2);
          std::memcpy(head + HEAD / 2 + 2 * row, &z, 2);
        } else {
          std::memcpy(head + 4 * row, sp + i, 4);
        }
      }
      for (int64_t c = 0; c < group / step; ++c)
        for (int row = 0; row < TILE; ++row)
          for (int j = 0; j < 4; ++j) {
            const int64_t n = t * TILE + row, k = g * group + c * step + j;
            uint8_t v;
            if (bits == 4) {
              const uint8_t* p = codes.data_ptr<uint8_t>() + n * K;
              v = static_cast<uint8_t>((p[k] & 15) | ((p[k + 4] & 15) << 4));
            } else {
              v = static_cast<uint8_t>(codes.data_ptr<int8_t>()[n * K + k] + 128);
            }
            head[HEAD + (c * TILE + row) * 4 + j] = v;
          }
    }
  return out;
}

torch::Tensor gemv_a8(const torch::Tensor& x, const torch::Tensor& packed, int64_t bits, int64_t group,
                      const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(),
              "gemv_a8: x must be a contiguous fp32 (M, K) tensor");
  TORCH_CHECK(bits == 4 || bits == 8, "gemv_a8: bits must be 4 or 8");
  const int64_t M = x.size(0), K = x.size(1);
  TORCH_CHECK(group > 0 && group % BLOCK == 0 && K % group == 0, "gemv_a8: group ", group,
              " must be a multiple of 32 that divides K = ", K);
  const int64_t ng = K / group, tile_bytes = ng * group_bytes(bits, group);
  TORCH_CHECK(packed.scalar_type() == torch::kByte && packed.dim() == 2 && packed.is_contiguous() &&
              packed.size(1) == tile_bytes, "gemv_a8: packed must be pack_a8's contiguous (N/16, ", tile_bytes,
              ") uint8 tensor for int", bits, " codes of K = ", K, " in groups of ", group, ", got ", packed.sizes());
  const int64_t N = packed.size(0) * TILE;
  const float* bp = nullptr;
  if (bias) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->is_contiguous() && bias->numel() == N,
                "gemv_a8: bias must be a contiguous fp32 tensor of N entries");
    bp = bias->data_ptr<float>();
  }
  const bool amx = AMX_ROWS > 0 && M >= AMX_ROWS && amx_ready();
  // AMX takes rows 16 at a time; a last group of up to R_MAX rows is one vector pass over each weight tile instead
  // of a tile pass padded with zero rows (40 rows: 32 on the tiles + 8, not 48)
  const int64_t rest = amx && M % TILE <= R_MAX ? M % TILE : 0, M_amx = amx ? M - rest : 0;
  thread_local ActBuf buffer;  // reused across calls: a decode step makes ~120 of them
  const int64_t rows = amx && !rest ? (M + TILE - 1) / TILE * TILE : M;  // zero rows up to the last AMX group
  const Rows acts = quantize_rows(x.data_ptr<float>(), M, K, group, rows, buffer);
  auto y = torch::empty({M, N}, x.options());
  float* yp = y.data_ptr<float>();
  const uint8_t* wp = packed.data_ptr<uint8_t>();
  const int64_t passes = amx ? (M_amx / TILE + (rest > 0)) : (M + R_MAX - 1) / R_MAX;
  at::parallel_for(0, N / TILE, effml_vec::grain_for(tile_bytes * passes), [&](int64_t t0, int64_t t1) {
    if (amx) amx_tiles(static_cast<int>(bits), wp, t0, t1, tile_bytes, group, acts, M_amx, yp, N, bp);
    for (int64_t t = t0; t < t1; ++t) {
      const uint8_t* wt = wp + t * tile_bytes;
      for (int64_t m = M_amx; m < M; m += R_MAX) {  // the tile (16 rows x K codes) stays in L1/L2 between passes
        const int R = static_cast<int>(std::min<int64_t>(R_MAX, M - m));
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
        if (bits == 4)
          tile_rows<4>(R, wt, K, group, acts.from(m), yp + m * N, N, t * TILE, bp);
        else
          tile_rows<8>(R, wt, K, group, acts.from(m), yp + m * N, N, t * TILE, bp);
#else
        tile_scalar(static_cast<int>(bits), wt, K, group, acts.from(m), R, yp + m * N, N, t * TILE, bp);
#endif
      }
    }
  });
  return y;
}
