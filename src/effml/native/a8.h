// What gemv_a8's parts share (a8.cpp: packing, rounding the activations, the entry point; a8_rows.cpp: the AVX-512
// VNNI / AVX2 / scalar kernels; amx.cpp: AMX tiles for prefill rows): the packed layout's sizes, the activation rows
// rounded to int8, the software prefetch of the weight stream, and the kernels' entry points.
#pragma once

#include <immintrin.h>
#include <cstdint>

namespace effml_a8 {

constexpr int TILE = 16, BLOCK = 32, HEAD = 64;  // HEAD: a group's scales (and zero terms) ahead of its codes

// The bytes of one group in the packed layout: its head and 16 rows x group codes
inline int64_t group_bytes(int64_t bits, int64_t group) { return HEAD + TILE * group * bits / 8; }

// Activation rows rounded to int8 per block of 32 (a8.cpp's quantize_rows), row-major: row m's int8 values at
// q + m * K, its block scales a_b at a + m * nb, the blocks' sums of q at s + m * nb, and per weight group the sum
// of its rounded values (a_b * sum q) at g + m * ng
struct Rows {
  const int8_t* q;
  const float* a;
  const int32_t* s;
  const float* g;
  int64_t K, nb, ng;
  Rows from(int64_t m) const { return {q + m * K, a + m * nb, s + m * nb, g + m * ng, K, nb, ng}; }
};

// Software prefetch of the weight stream (a8.cpp says why two levels): into L1 PREFETCH bytes ahead, into L2
// PREFETCH_L2 bytes ahead (0: none)
extern int PREFETCH, PREFETCH_L2;

inline void prefetch_line(const uint8_t* p) {
  _mm_prefetch(reinterpret_cast<const char*>(p + PREFETCH), _MM_HINT_T0);
  if (PREFETCH_L2 > 0) _mm_prefetch(reinterpret_cast<const char*>(p + PREFETCH_L2), _MM_HINT_T2);
}

#if defined(__AVX512F__)
// A group head's 16 scales (int4: fp16, widened exactly; int8: fp32) and its 16 zero terms (int4 only), one per
// output row of the tile: what the AVX-512 kernel and the AMX kernel both read, so both apply the same values
inline __m512 head_scales(int bits, const uint8_t* head) {
  return bits == 4 ? _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(head)))
                   : _mm512_loadu_ps(reinterpret_cast<const float*>(head));
}
inline __m512 head_zterms(const uint8_t* head) {
  return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(head + HEAD / 2)));
}
#endif

// a8_rows.cpp: the vector kernels. R_MAX rows per pass over a weight tile (AVX-512: a verification of up to 8
// tokens in one pass; AVX2: 16 ymm registers, a row takes 2 per half, its int16 sums and its outputs).
// vector_tiles(): y for weight tiles [t0, t1) and rows [m0, M) of x, R_MAX rows per pass over each tile;
// vector_isa(): which kernel ("AVX-512 VNNI", "AVX2", or "" for the scalar loop).
#if defined(__AVX512F__) && defined(__AVX512VNNI__) && defined(__AVX512BW__)
#define EFFML_A8_R_MAX 8  // a macro too: a8_rows.cpp's #if picks its row-count cases by it
#else
#define EFFML_A8_R_MAX 4
#endif
constexpr int R_MAX = EFFML_A8_R_MAX;
const char* vector_isa();
void vector_tiles(int bits, const uint8_t* wp, int64_t t0, int64_t t1, int64_t tile_bytes, int64_t group,
                  const Rows& x, int64_t m0, int64_t M, float* y, int64_t N, const float* bias);

// amx.cpp. amx_ready(): this build has the AMX kernel, the CPU has AMX-INT8 and Linux granted this process the tile
// state (asked once). amx_tiles(): y for weight tiles [t0, t1) and rows [0, M) of x, which holds zero rows up to a
// multiple of 16; every output bit-identical to a8_rows.cpp's kernels (the same integer sums, the same float steps).
bool amx_ready();
void amx_tiles(int bits, const uint8_t* wp, int64_t t0, int64_t t1, int64_t tile_bytes, int64_t group,
               const Rows& x, int64_t M, float* y, int64_t N, const float* bias);

}  // namespace effml_a8
