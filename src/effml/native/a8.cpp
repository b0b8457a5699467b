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
// AVX2 CPUs without VNNI run the same sums with vpmaddubsw + vpmaddwd; elsewhere a scalar loop does the same
// arithmetic (tests), and effml routes layers here only where a8_isa() names a vector ISA. The kernels are in
// a8_rows.cpp (vector and scalar) and amx.cpp (AMX tiles); this file packs, rounds the activations and dispatches.
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

}  // namespace

std::string a8_isa() { return vector_isa(); }

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
    if (M_amx > 0) amx_tiles(static_cast<int>(bits), wp, t0, t1, tile_bytes, group, acts, M_amx, yp, N, bp);
    if (M_amx < M) vector_tiles(static_cast<int>(bits), wp, t0, t1, tile_bytes, group, acts, M_amx, M, yp, N, bp);
  });
  return y;
}
