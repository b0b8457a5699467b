// effml's float GEMV for a few rows at once (a speculative verification, a batch of decode rows) and for many (a
// prefill), and the memory its weights live in.
//
//   tiles = pack_tiles(w)            w (N, K) fp32 or bf16 -> (ceil(N/WIDTH), K, WIDTH), WIDTH output rows interleaved
//                                    (bf16 on AVX-512 / AVX2: in pairs, see PAIRED)
//   y = gemv_tiles(x, tiles, N, bias?)  x (M, K) fp32, any M: y (M, N) = x @ w.T + bias
//   tiles_width()                    WIDTH: 32 on AVX-512 (two vectors of 16), 16 on AVX2 and scalar builds
//   tiles_prefetch(l1, l2) / read_sum(t)  the software prefetch distances; a sum read as the passes read
//   h = huge(t)                      a contiguous copy of t in memory the kernel asks to back with 2 MiB pages
//   views = arena(ts, copy=True)     contiguous copies of all of ts, back to back in one such region
//
// Why a second layout beside gemv.cpp's row-major one: with rows of w, each output is a dot product, and R
// activation rows mean R loads per weight vector (8 rows of SmolLM2's fp32 head cost 3.4x one row, measured). With
// WIDTH outputs interleaved, one vector of w holds 16 outputs' weights for one k, and each activation row contributes
// one broadcast scalar: up to 12 rows x 2 vectors = 24 accumulators in registers, 2 weight loads + 12 broadcasts
// per 48 multiply-adds, no horizontal sums. A pass over one group reads ONE sequential stream (each k's WIDTH weights
// are one 128-byte run on AVX-512): with the 16-wide tiles read two at a time (two streams K * 64 bytes apart), 5
// rows cost 1.21x one row and 8 rows 1.42x over SmolLM2's fp32 projections and head; with one stream 0.96x and 1.20x
// (AMD Zen 4, 1 thread, huge pages, measured side by side), and one row 4% less. 12 rows a pass instead of 8:
// 9 and 10 rows in one pass at 1.35x and 1.50x one row (1.56x and ~1.7x as 8 + 1 and 8 + 2).
//
// huge(): with 4 KiB pages a decode step's weight stream takes a TLB miss and restarts the hardware prefetcher every
// 4 KiB; with transparent huge pages (Linux `madvise` mode, the default on many distributions) one 2 MiB page holds
// the stream. Measured on the same machine: one fp32 row of the head at 33 GB/s instead of 24. The pages are a hint
// (`madvise(MADV_HUGEPAGE)`); where the kernel gives ordinary pages the numbers are the same as a torch tensor's.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <array>
#include <utility>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <type_traits>
#include <tuple>
#include <vector>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "vec.h"

namespace {

constexpr size_t HUGE_PAGE = size_t{2} << 20;

// Rows per pass, and the group width (outputs interleaved) = vectors per group x lanes, per ISA: AVX-512 has 32
// vector registers (12 rows x 2 vectors = 24 accumulators + 2 weights), AVX2 16 (6 rows x 2 vectors = 12
// accumulators + 2 weights + 1 broadcast). One or two rows take two groups per pass (FEW), whose few accumulator
// chains would otherwise wait on the FMA latency (4 cycles) instead of the weight stream (bf16 decode: 68 vs 82
// tok/s on SmolLM2 with twice the vectors per pass for one row). More rows than a pass takes go in near-equal
// blocks (below): 16 rows as 8 + 8 cost 2.27x one row on AVX-512, as 12 + 4 2.60x; AVX2 9 rows as 5 + 4 2.04x, as
// 6 + 3 2.24x (SmolLM2's fp32 projections and head, 1 thread, Zen 4).
#if defined(__AVX512F__)
constexpr int R_MAX = 12, VG = 2, FEW = 2;
const char* kIsa = "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int R_MAX = 6, VG = 2, FEW = 2;
const char* kIsa = "AVX2";
#else
constexpr int R_MAX = 4, VG = 16, FEW = 1;
const char* kIsa = "scalar";
#endif
using Vec = effml_vec::Wide;
using vec = Vec::v;
constexpr int LANES = Vec::W;
constexpr int WIDTH = VG * LANES;  // outputs per group: 32 (AVX-512), 16 (AVX2, scalar)
// bf16 tiles of the vector builds hold each k's WIDTH weights in pairs: 32-bit lane i = (output i, output LANES + i),
// so one load and a shift / a mask give both vectors (Vec::widen_pairs), where zero-extending each half is a
// cross-lane shuffle (one port on Intel). With four groups a pass for one row (run), a 512 x 576 bf16 layer in L2,
// one row, side by side: 44.7 -> 58.0 GB/s on AVX2, 59.2 -> 73.9 on AVX-512 (Xeon VM). fp32 tiles (and the scalar
// build's) are in order.
template <typename W>
constexpr bool PAIRED = std::is_same_v<W, uint16_t> && VG == 2;

// Software prefetch, bytes ahead of the weight stream, shared by a pass's streams (per CPU vendor, measured on
// SmolLM2's fp32 projections and head, 1 thread, huge pages). Intel Xeon (AVX-512, 15.8 GB/s one-thread read): one
// row 0.89x the time without it, 5 / 8 rows 0.74x / 0.72x, a 40-row prefill 0.84x; bf16 8 rows 0.60x (768-3072 B
// all helped; 2048 best overall). AMD Zen 4: no gain measured, none issued (its hardware prefetcher already kept
// one row at 30 GB/s). A second prefetch of every line into L2 (prefetcht2, TILES_PREFETCH_L2 bytes ahead, as
// gemv_a8 issues): decode on the same Xeon, alternating runs (results/llm_decode_xeon_tiles_l2_prefetch_ab.json),
// 8 KiB ahead: AVX2 build fp32 77-78% -> 84-91% of the bound, bf16 69-71% -> 72-75% (the AVX2 pass issues twice
// the instructions per byte of the AVX-512 one); AVX-512 fp32 77-83% -> 75-80%, bf16 71-74% -> 70-74%, no gain:
// issued by the AVX2 build on Intel only. tiles_prefetch() sets both.
int TILES_PREFETCH = effml_vec::intel() ? 2048 : 0;
#if defined(__AVX2__) && !defined(__AVX512F__)
int TILES_PREFETCH_L2 = effml_vec::intel() ? 8192 : 0;
#else
int TILES_PREFETCH_L2 = 0;
#endif

// Groups g0 .. g0+P-1 (P <= 2 FEW) for R activation rows. Outputs past N (the last group's zero padding) are not
// written.
template <typename W, int R, int P>
void pass(const float* x, int64_t K, const W* w, const float* bias, float* y, int64_t N, int64_t g0) {
  vec acc[P * VG][R];
  for (int j = 0; j < P * VG; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = Vec::zero();
  const W* wg = w + g0 * K * WIDTH;
  const int64_t pf = TILES_PREFETCH / P / static_cast<int64_t>(sizeof(W));  // per stream: P streams share it
  const int64_t pf2 = TILES_PREFETCH_L2 / P / static_cast<int64_t>(sizeof(W));
  for (int64_t k = 0; k < K; ++k) {
    if (pf > 0)
      for (int p = 0; p < P; ++p)
        for (int64_t b = 0; b < static_cast<int64_t>(WIDTH * sizeof(W)); b += 64)
          _mm_prefetch(reinterpret_cast<const char*>(wg + (p * K + k) * WIDTH + pf) + b, _MM_HINT_T0);
    if (pf2 > 0)
      for (int p = 0; p < P; ++p)
        for (int64_t b = 0; b < static_cast<int64_t>(WIDTH * sizeof(W)); b += 64)
          _mm_prefetch(reinterpret_cast<const char*>(wg + (p * K + k) * WIDTH + pf2) + b, _MM_HINT_T2);
    vec wv[P * VG];
    for (int p = 0; p < P; ++p) {
      if constexpr (PAIRED<W>)
        Vec::widen_pairs(wg + (p * K + k) * WIDTH, wv[p * VG], wv[p * VG + 1]);
      else
        for (int v = 0; v < VG; ++v) wv[p * VG + v] = Vec::widen(wg + (p * K + k) * WIDTH + v * LANES);
    }
    for (int r = 0; r < R; ++r) {
      const vec xb = Vec::set1(x[r * K + k]);
      for (int j = 0; j < P * VG; ++j) acc[j][r] = Vec::fma(xb, wv[j], acc[j][r]);
    }
  }
  alignas(64) float out[WIDTH];
  for (int p = 0; p < P; ++p) {
    const int64_t n0 = (g0 + p) * WIDTH, n = std::min<int64_t>(WIDTH, N - n0);
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < VG; ++v) Vec::store(out + v * LANES, acc[p * VG + v][r]);
      float* yr = y + r * N + n0;
      for (int64_t i = 0; i < n; ++i) yr[i] = out[i] + (bias ? bias[n0 + i] : 0.f);
    }
  }
}

template <typename W>
using PassFn = void (*)(const float*, int64_t, const W*, const float*, float*, int64_t, int64_t);

template <typename W, int P, int... R>
constexpr auto table(std::integer_sequence<int, R...>) {
  return std::array<PassFn<W>, sizeof...(R)>{pass<W, R + 1, P>...};
}

template <typename W>
void run(const float* x, int64_t M, int64_t K, const W* w, const float* bias, float* y, int64_t N) {
  static constexpr auto wide = table<W, 1>(std::make_integer_sequence<int, R_MAX>{});
  static constexpr auto few = table<W, FEW>(std::make_integer_sequence<int, 2>{});
  // one row of bf16 weights: twice FEW groups a pass. Its FMA chains (2 per group) wait on the FMA latency, and a
  // bf16 weight vector is half the bytes of an fp32 one: with FEW groups, 1 row of a 512 x 576 layer in L2 ran at
  // 45 GB/s on AVX2 (fp32: 110), below what the kernel needs to keep up with DRAM
  constexpr int FEW1 = sizeof(W) == 2 ? 2 * FEW : FEW;
  static constexpr PassFn<W> one = pass<W, 1, FEW1>;
  const int64_t groups = (N + WIDTH - 1) / WIDTH, C = M == 1 ? FEW1 : FEW;
  // Chunks of C groups outer, blocks of at most R_MAX rows inner: more than R_MAX rows (a verification of 9-16 tokens,
  // a prefill) read a chunk's weights from memory once and from L2 for the blocks after the first (2 groups of 32 at
  // K = 1536: 384 KiB), instead of one whole pass over the weights per block; the FMA units then set the rate.
  // (Prefetching the next chunk into L2 during those blocks measured no faster at 16-80 rows and up to 1.7x slower
  // at 9-12: the hardware prefetcher already runs ahead.) Each row's sums are the same in any block and any pass.
  if (M == 0) return;  // no rows (a chunked-prefill step where no prompt ends: the head gets none)
  const int64_t blocks = (M + R_MAX - 1) / R_MAX;
  const int64_t base = M / blocks, extra = M % blocks;
  const int64_t chunk_bytes = C * K * WIDTH * static_cast<int64_t>(sizeof(W)) * blocks;  // read once per block
  at::parallel_for(0, (groups + C - 1) / C, effml_vec::grain_for(chunk_bytes), [&](int64_t c0, int64_t c1) {
    for (int64_t c = c0; c < c1; ++c) {
      const int64_t g1 = std::min((c + 1) * C, groups);
      for (int64_t b = 0, m = 0; b < blocks; ++b) {
        const int64_t r = base + (b < extra ? 1 : 0);
        const float* xm = x + m * K;
        float* ym = y + m * N;
        int64_t g = c * C;  // the widest pass that fits the chunk's groups left, then narrower ones
        if (r == 1 && FEW1 != FEW)
          for (; g + FEW1 <= g1; g += FEW1) one(xm, K, w, bias, ym, N, g);
        if (r <= 2)
          for (; g + FEW <= g1; g += FEW) few[r - 1](xm, K, w, bias, ym, N, g);
        for (; g < g1; ++g) wide[r - 1](xm, K, w, bias, ym, N, g);
        m += r;
      }
    }
  });
}

// EFFML_HUGE_PAGES=0: ordinary pages (to measure what the pages change)
bool huge_pages_on() {
  const char* off = std::getenv("EFFML_HUGE_PAGES");
  return !(off != nullptr && std::strcmp(off, "0") == 0);
}

// `bytes` (rounded up to whole pages) aligned to and, with `big`, advised for 2 MiB pages; freed with std::free
void* region(size_t bytes, bool big, const char* who) {
  const size_t align = big ? HUGE_PAGE : 4096, cap = std::max<size_t>((bytes + align - 1) / align * align, align);
  void* p = std::aligned_alloc(align, cap);
  TORCH_CHECK(p != nullptr, who, ": could not allocate ", cap, " bytes");
#ifdef __linux__
  if (big) madvise(p, cap, MADV_HUGEPAGE);  // before the first touch: faulted in as 2 MiB pages where THP allows
#endif
  return p;
}

}  // namespace

torch::Tensor huge(const torch::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu(), "huge: a CPU tensor is needed, got one on ", t.device());
  const auto c = t.contiguous();
  const size_t bytes = c.nbytes();
  if (bytes < HUGE_PAGE || !huge_pages_on()) return c.clone();
  void* p = region(bytes, true, "huge");
  std::memcpy(p, c.data_ptr(), bytes);
  return torch::from_blob(p, c.sizes(), [](void* q) { std::free(q); }, c.options());
}

// One region for every weight a decode step reads, laid out in the order it reads them: a projection of a small
// model (SmolLM2's int4 wo: 166 KB of codes) is far below a 2 MiB page, so huge() alone leaves it in ordinary pages,
// and 360 separate buffers per step mean as many cold starts of the hardware prefetcher. Back to back, one stream
// runs on from one projection into the next (and gemv_a8's prefetch 4 KiB ahead reaches into it). Each copy starts
// on a 64-byte line; the region is freed when the last view of it goes. copy=false: views shaped like ts, not yet
// written (the pages are only faulted in when the caller fills them: filling one and dropping its original at a
// time keeps the peak near one copy of the weights instead of two).
std::vector<torch::Tensor> arena(const std::vector<torch::Tensor>& ts, bool copy) {
  constexpr size_t LINE = 64;
  std::vector<torch::Tensor> cs;
  std::vector<size_t> at;
  size_t total = 0;
  for (const auto& t : ts) {
    TORCH_CHECK(t.device().is_cpu(), "arena: CPU tensors are needed, got one on ", t.device());
    cs.push_back(copy ? t.contiguous() : t);
    at.push_back(total);
    total += (cs.back().nbytes() + LINE - 1) / LINE * LINE;
  }
  void* p = region(total, huge_pages_on(), "arena");
  std::shared_ptr<void> owner(p, [](void* q) { std::free(q); });
  std::vector<torch::Tensor> out;
  for (size_t i = 0; i < cs.size(); ++i) {
    char* dst = static_cast<char*>(p) + at[i];
    if (copy) std::memcpy(dst, cs[i].data_ptr(), cs[i].nbytes());
    out.push_back(torch::from_blob(dst, cs[i].sizes(), [owner](void*) {}, cs[i].options()));
  }
  return out;
}

torch::Tensor pack_tiles(const torch::Tensor& w) {
  TORCH_CHECK(w.dim() == 2 && (w.scalar_type() == torch::kFloat || w.scalar_type() == torch::kBFloat16),
              "pack_tiles: w must be an fp32 or bf16 (N, K) tensor");
  const int64_t N = w.size(0), K = w.size(1), G = (N + WIDTH - 1) / WIDTH;
  auto p = torch::zeros({G * WIDTH, K}, w.options().device(torch::kCPU));
  p.narrow(0, 0, N).copy_(w);
  auto t = p.view({G, WIDTH, K}).transpose(1, 2);  // (G, K, WIDTH): tiles[g][k][j] = w[WIDTH g + j][k]
  if (PAIRED<uint16_t> && w.scalar_type() == torch::kBFloat16)  // pairs: [g][k][2i + h] = w[WIDTH g + LANES h + i][k]
    t = t.reshape({G, K, VG, LANES}).transpose(2, 3).reshape({G, K, WIDTH});
  return huge(t);
}

torch::Tensor gemv_tiles(const torch::Tensor& x, const torch::Tensor& tiles, int64_t N,
                         const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous() && x.device().is_cpu() &&
                  tiles.device().is_cpu(),
              "gemv_tiles: x must be a contiguous fp32 (M, K) CPU tensor, and the tiles on the CPU");
  const auto wt = tiles.scalar_type();
  TORCH_CHECK(tiles.dim() == 3 && tiles.size(2) == WIDTH && tiles.is_contiguous() &&
                  (wt == torch::kFloat || wt == torch::kBFloat16),
              "gemv_tiles: tiles must be pack_tiles' contiguous (ceil(N/", WIDTH, "), K, ", WIDTH,
              ") fp32 or bf16 tensor");
  TORCH_CHECK(tiles.size(1) == x.size(1), "gemv_tiles: x has ", x.size(1), " columns, the tiles K = ", tiles.size(1));
  TORCH_CHECK(N > (tiles.size(0) - 1) * WIDTH && N <= tiles.size(0) * WIDTH,
              "gemv_tiles: N = ", N, " does not match ", tiles.size(0), " tiles of ", WIDTH, " rows");
  TORCH_CHECK(reinterpret_cast<uintptr_t>(tiles.data_ptr()) % 64 == 0, "gemv_tiles: tiles must be 64-byte aligned");
  const float* bp = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->is_contiguous() && bias->numel() == N,
                "gemv_tiles: bias must be a contiguous fp32 tensor of N = ", N, " entries");
    bp = bias->data_ptr<float>();
  }
  const int64_t M = x.size(0), K = x.size(1);
  auto y = torch::empty({M, N}, x.options());
  if (wt == torch::kFloat)
    run(x.data_ptr<float>(), M, K, tiles.data_ptr<float>(), bp, y.data_ptr<float>(), N);
  else
    run(x.data_ptr<float>(), M, K, reinterpret_cast<const uint16_t*>(tiles.data_ptr()), bp, y.data_ptr<float>(), N);
  return y;
}

std::string tiles_isa() { return kIsa; }

int64_t tiles_width() { return WIDTH; }
std::tuple<int64_t, int64_t> tiles_prefetch(int64_t l1, int64_t l2) {
  if (l1 >= 0) TILES_PREFETCH = static_cast<int>(l1);
  if (l2 >= 0) TILES_PREFETCH_L2 = static_cast<int>(l2);
  return {TILES_PREFETCH, TILES_PREFETCH_L2};
}

// The sum of a contiguous fp32 tensor read as a pass reads its weights (vector loads, the same L1 prefetch; no L2
// prefetch, with which this plain read ran 8-10% slower on the Xeon VM): the rate one core's weight stream can
// reach, beside torch's sum, for the decode roofline's bandwidth.
double read_sum(const torch::Tensor& t) {
  TORCH_CHECK(t.device().is_cpu() && t.scalar_type() == torch::kFloat && t.is_contiguous(),
              "read_sum: t must be a contiguous fp32 CPU tensor");
  const float* p = t.data_ptr<float>();
  const int64_t n = t.numel(), step = 4 * LANES, pf = TILES_PREFETCH / 4;
  vec acc[4] = {Vec::zero(), Vec::zero(), Vec::zero(), Vec::zero()};
  const vec one = Vec::set1(1.0f);
  int64_t i = 0;
  for (; i + step <= n; i += step) {
    if (pf > 0)
      for (int64_t b = 0; b < step; b += 16) _mm_prefetch(reinterpret_cast<const char*>(p + i + pf + b), _MM_HINT_T0);
    for (int j = 0; j < 4; ++j) acc[j] = Vec::fma(Vec::load(p + i + j * LANES), one, acc[j]);
  }
  double total = 0;
  for (int j = 0; j < 4; ++j) total += Vec::sum(acc[j]);
  for (; i < n; ++i) total += p[i];
  return total;
}

// The FMA units' rate on the calling thread, measured: 12 independent chains of this build's widest fp32 FMA for
// about `seconds` (more chains than the FMA latency x pipes, so throughput, not latency, sets it). Returns
// multiply-adds per second (lanes x instructions): the compute roof gemv_tiles' prefill rows are held against.
double fma_rate(double seconds) {
  constexpr int CH = 12, INNER = 1024;
  // the operands through volatiles: with constants, the scalar build (plain float a * b + c, no intrinsics) had the
  // whole loop evaluated at compile time and timed an empty burst (484 G "FMAs" a second)
  volatile float a0 = 0.9999999f, b0 = 1e-7f, c0 = 1.0f;
  vec acc[CH];
  for (int j = 0; j < CH; ++j) acc[j] = Vec::set1(c0 + 1e-3f * j);
  const vec a = Vec::set1(a0), b = Vec::set1(b0);
  const double bursts = effml_vec::bursts_per_second(seconds, [&] {
    for (int i = 0; i < INNER; ++i)
      for (int j = 0; j < CH; ++j) acc[j] = Vec::fma(acc[j], a, b);
  });
  float keep = 0;
  for (int j = 0; j < CH; ++j) keep += Vec::sum(acc[j]);
  volatile float sink = keep;  // the chains' results are used: none of the work is dead
  (void)sink;
  return bursts * INNER * CH * LANES;
}
