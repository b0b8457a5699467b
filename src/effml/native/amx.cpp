// gemv_a8's kernel for prefill rows on CPUs with AMX-INT8 (Intel Xeon since Sapphire Rapids): the same product as
// a8_rows.cpp's kernels, y[m, n] = sum_g scale[n, g] * sum_{k in g} (code[n, k] - zero[n, g]) * xd[m, k], with its
// integer dot products on the tile unit. One TDPBSSD multiplies 16 activation rows x 32 inputs (tile A, int8, read
// straight from the rounded rows) by 32 inputs x 16 output rows (tile B, the codes as signed bytes): 8192
// multiply-adds, where vpdpbusd does 64. Tile B is pack_a8's layout as it stands: a 64-byte step of 16 rows x 4
// inputs is one row of B (int4: the low nibbles are inputs 8o..8o+3, the high ones 8o+4..8o+7, so a block of 32
// inputs unpacks to B's 8 rows in order; int8: the codes + 128 with the top bit flipped back).
// The rest stays on the vector units and is a8_rows.cpp's arithmetic step for step: per block of 32 the exact integer
// sum, converted, times (scale * a_b), added to the row's output by one fma, and per group the zero term's fma, in
// the same order, so every output is bit-identical to the VNNI / AVX2 / scalar kernels' (tests/native/test_a8.py).
// Blocks are pipelined: block b's product runs on one of two sets of A/B tiles into one of four C tiles while
// block b-2's C is stored and the vector units take block b-4's sums out of memory (tiles are not renamed: with one
// set, each store waited for the product just issued; a profile of 40 rows put a third of the kernel's samples on
// it, and the pipeline gained 5-10% on 16-128 rows), and a weight tile is unpacked once into an L1 buffer for all
// passes of 16 rows over it. The tile work and the vector work do not overlap on the Xeon measured: each alone
// runs at about twice the kernel's rate, so the per-row vector steps bound what AMX gains in this number format.
// Linux hands the tile state to a process that asks (arch_prctl ARCH_REQ_XCOMP_PERM); effml asks on first use
// and runs a8_rows.cpp's kernels where it is refused.
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <stdexcept>
#include <vector>

#include "a8.h"

namespace effml_a8 {

#if defined(__AMX_TILE__) && defined(__AMX_INT8__) && defined(__AVX512F__) && defined(__AVX512BW__)

namespace {

constexpr long ARCH_REQ_XCOMP_PERM = 0x1023, XFEATURE_XTILEDATA = 18;  // <asm/prctl.h>, Linux >= 5.16

struct alignas(64) TileConfig {  // ldtilecfg's 64 bytes, palette 1
  uint8_t palette = 1, start_row = 0, reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
};

// Tiles: two sets of A (0, 3: 16 activation rows x 32 int8) and B (1, 4: 8 rows of 16 outputs x 4 inputs), four
// C (2, 5, 6, 7: 16 x 16 int32)
TileConfig config() {
  TileConfig c;
  for (int t : {0, 3}) c.rows[t] = TILE, c.colsb[t] = BLOCK;
  for (int t : {1, 4}) c.rows[t] = BLOCK / 4, c.colsb[t] = 64;
  for (int t : {2, 5, 6, 7}) c.rows[t] = TILE, c.colsb[t] = 64;
  return c;
}

// C = A x B for one block (the tile intrinsics take their tile numbers as literals: a macro, not a template)
#define EFFML_AMX_PRODUCT(A, B, C, a, stride, b) \
  do {                                           \
    _tile_loadd(A, a, stride);                   \
    _tile_loadd(B, b, 64);                       \
    _tile_zero(C);                               \
    _tile_dpbssd(C, A, B);                       \
  } while (0)

// Block d's C tile (d % 4) into its slot of the ring of sums
inline void store(int64_t d, int32_t (*sums)[TILE * TILE]) {
  int32_t* c = sums[d & 3];
  switch (d & 3) {
    case 0: _tile_stored(2, c, TILE * 4); break;
    case 1: _tile_stored(5, c, TILE * 4); break;
    case 2: _tile_stored(6, c, TILE * 4); break;
    default: _tile_stored(7, c, TILE * 4);
  }
}

// A weight tile's codes as tile B's rows, 512 bytes per block of 32 inputs, every line prefetched as a8_rows.cpp does
void unpack(int bits, const uint8_t* wt, int64_t K, int64_t group, uint8_t* out) {
  const int64_t per = group / BLOCK, gb = group_bytes(bits, group);
  const __m512i low = _mm512_set1_epi8(0x0F), flip = _mm512_set1_epi8(-128);
  for (int64_t b = 0; b < K / BLOCK; ++b) {
    const int64_t g = b / per;
    const uint8_t* head = wt + g * gb;
    if (b % per == 0) prefetch_line(head);
    const uint8_t* cb = head + HEAD + (b * BLOCK - g * group) * bits * 2;
    uint8_t* ob = out + b * 512;
    for (int o = 0; o < bits; ++o) {  // int4: 4 lines to 8 rows; int8: 8 lines to 8 rows
      const __m512i v = _mm512_loadu_si512(cb + o * 64);
      prefetch_line(cb + o * 64);
      if (bits == 4) {
        _mm512_store_si512(ob + 2 * o * 64, _mm512_and_si512(v, low));
        _mm512_store_si512(ob + (2 * o + 1) * 64, _mm512_and_si512(_mm512_srli_epi16(v, 4), low));
      } else {
        _mm512_store_si512(ob + o * 64, _mm512_xor_si512(v, flip));
      }
    }
  }
}

}  // namespace

bool amx_ready() {
  static const bool ok = syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
  return ok;
}

void amx_tiles(int bits, const uint8_t* wp, int64_t t0, int64_t t1, int64_t tile_bytes, int64_t group,
               const Rows& x, int64_t M, float* y, int64_t N, const float* bias) {
  const int64_t K = x.K, nb = x.nb, per = group / BLOCK, gb = group_bytes(bits, group);
  thread_local std::vector<uint8_t> bbuf;  // tile B for every block of a weight tile
  bbuf.resize(nb * 512 + 64);
  uint8_t* bb = bbuf.data() + (64 - reinterpret_cast<uintptr_t>(bbuf.data()) % 64) % 64;  // 64-byte aligned
  alignas(64) int32_t sums[4][TILE * TILE];  // the sums of blocks b-2 .. b-4
  const TileConfig cfg = config();
  _tile_loadconfig(&cfg);  // per call: the tile configuration is the calling thread's
  for (int64_t t = t0; t < t1; ++t) {
    const uint8_t* wt = wp + t * tile_bytes;
    unpack(bits, wt, K, group, bb);
    for (int64_t m0 = 0; m0 < M; m0 += TILE) {
      const Rows r0 = x.from(m0);
      __m512 out[TILE];  // 16 rows' outputs in registers (rows past M: zeros in, not stored)
      for (int r = 0; r < TILE; ++r) out[r] = _mm512_setzero_ps();
      auto take = [&](int64_t b) {  // out += sums of block b * (scale * a_b), then the group's zero term
        const int64_t g = b / per;
        const uint8_t* head = wt + g * gb;
        const __m512 s = head_scales(bits, head);
        const int32_t* c = sums[b & 3];
        for (int r = 0; r < TILE; ++r) {
          const __m512 v = _mm512_cvtepi32_ps(_mm512_load_si512(c + r * TILE));
          out[r] = _mm512_fmadd_ps(v, _mm512_mul_ps(s, _mm512_set1_ps(r0.a[r * nb + b])), out[r]);
        }
        if (bits == 4 && b % per == per - 1) {
          const __m512 z = head_zterms(head);
          for (int r = 0; r < TILE; ++r) out[r] = _mm512_fmadd_ps(z, _mm512_set1_ps(r0.g[r * x.ng + g]), out[r]);
        }
      };
      // Block b's product on the tile set b % 2 (A, B = 0, 1 or 3, 4) into the C tile b % 4 (2, 5, 6, 7), and
      // block b-2's C stored only now: tiles are not renamed, so storing a product at once (or reusing its tiles
      // for the next block) waits out the product's whole latency; two blocks behind, it is long done. The
      // vector units take block b-4's sums out of memory, stored one block earlier.
      for (int64_t b = 0; b < nb; ++b) {
        const int8_t* qa = r0.q + b * BLOCK;
        const uint8_t* qb = bb + b * 512;
        switch (b & 3) {
          case 0: EFFML_AMX_PRODUCT(0, 1, 2, qa, K, qb); break;
          case 1: EFFML_AMX_PRODUCT(3, 4, 5, qa, K, qb); break;
          case 2: EFFML_AMX_PRODUCT(0, 1, 6, qa, K, qb); break;
          default: EFFML_AMX_PRODUCT(3, 4, 7, qa, K, qb);
        }
        if (b >= 2) store(b - 2, sums);
        if (b >= 4) take(b - 4);
      }
      for (int64_t d = std::max<int64_t>(nb - 2, 0); d < nb; ++d) store(d, sums);
      for (int64_t d = std::max<int64_t>(nb - 4, 0); d < nb; ++d) take(d);
      const __m512 bv = bias ? _mm512_loadu_ps(bias + t * TILE) : _mm512_setzero_ps();
      const int R = static_cast<int>(std::min<int64_t>(TILE, M - m0));
      for (int r = 0; r < R; ++r) _mm512_storeu_ps(y + (m0 + r) * N + t * TILE, _mm512_add_ps(out[r], bv));
    }
  }
  _tile_release();
}

#else  // no AMX in this build (-march without it): gemv_a8 never calls amx_tiles

bool amx_ready() { return false; }

void amx_tiles(int, const uint8_t*, int64_t, int64_t, int64_t, int64_t, const Rows&, int64_t, float*, int64_t,
               const float*) {
  throw std::logic_error("amx_tiles: this build has no AMX kernel (gemv_a8 asks amx_ready() first)");
}

#endif

}  // namespace effml_a8
