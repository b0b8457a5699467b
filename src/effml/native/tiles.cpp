// effml's float GEMV for a few rows at once (a speculative verification, a batch of decode rows) and for many (a
// prefill), and the memory its weights live in.
//
//   tiles = pack_tiles(w)            w (N, K) fp32 or bf16 -> (ceil(N/16), K, 16), 16 output rows interleaved
//   y = gemv_tiles(x, tiles, N, bias?)  x (M, K) fp32, any M: y (M, N) = x @ w.T + bias
//   h = huge(t)                      a contiguous copy of t in memory the kernel asks to back with 2 MiB pages
//   views = arena(ts, copy=True)     contiguous copies of all of ts, back to back in one such region
//
// Why a second layout beside gemv.cpp's row-major one: with rows of w, each output is a dot product, and R
// activation rows mean R loads per weight vector (8 rows of SmolLM2's fp32 head cost 3.4x one row, measured). With
// 16 outputs interleaved, one vector of w holds 16 outputs' weights for one k, and each activation row contributes
// one broadcast scalar: up to 8 rows x 2 tiles = 16 accumulators in registers, 2 weight loads + 8 broadcasts per
// 32 multiply-adds, a single sequential weight stream, no horizontal sums. On AMD Zen 4 (1 thread, huge pages)
// 5 rows then cost 1.1-1.5x one row on SmolLM2's shapes instead of 1.5-3.4x.
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
#include <vector>
#ifdef __linux__
#include <sys/mman.h>
#endif

#include "vec.h"

namespace {

constexpr int TILE = 16;
constexpr size_t HUGE_PAGE = size_t{2} << 20;

// Rows per pass and tiles per group, per ISA: AVX-512 has 32 vector registers (8 rows x 2 tiles = 16
// accumulators), AVX2 16 (4 rows x 1 tile of 2 vectors = 8 accumulators + 2 weights + 1 broadcast).
#if defined(__AVX512F__)
constexpr int R_MAX = 8, NT = 2, NT_FEW = 4;
const char* kIsa = "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int R_MAX = 4, NT = 1, NT_FEW = 2;
const char* kIsa = "AVX2";
#else
constexpr int R_MAX = 4, NT = 1, NT_FEW = 1;
const char* kIsa = "scalar";
#endif
using Vec = effml_vec::Wide;
using vec = Vec::v;
constexpr int LANES = Vec::W;
constexpr int V = TILE / LANES;  // vectors per tile row

// Tiles t0 .. t0+T-1 (T <= NT) for R activation rows. Outputs past N (the last tile's zero padding) are not written.
template <typename W, int R, int T>
void pass(const float* x, int64_t K, const W* w, const float* bias, float* y, int64_t N, int64_t t0) {
  vec acc[T * V][R];
  for (int j = 0; j < T * V; ++j)
    for (int r = 0; r < R; ++r) acc[j][r] = Vec::zero();
  const W* wt = w + t0 * K * TILE;
  for (int64_t k = 0; k < K; ++k) {
    vec wv[T * V];
    for (int t = 0; t < T; ++t)
      for (int v = 0; v < V; ++v) wv[t * V + v] = Vec::widen(wt + (t * K + k) * TILE + v * LANES);
    for (int r = 0; r < R; ++r) {
      const vec xb = Vec::set1(x[r * K + k]);
      for (int j = 0; j < T * V; ++j) acc[j][r] = Vec::fma(xb, wv[j], acc[j][r]);
    }
  }
  alignas(64) float out[TILE];
  for (int t = 0; t < T; ++t) {
    const int64_t n0 = (t0 + t) * TILE, n = std::min<int64_t>(TILE, N - n0);
    for (int r = 0; r < R; ++r) {
      for (int v = 0; v < V; ++v) Vec::store(out + v * LANES, acc[t * V + v][r]);
      float* yr = y + r * N + n0;
      for (int64_t i = 0; i < n; ++i) yr[i] = out[i] + (bias ? bias[n0 + i] : 0.f);
    }
  }
}

template <typename W>
using PassFn = void (*)(const float*, int64_t, const W*, const float*, float*, int64_t, int64_t);

template <typename W, int T, int... R>
constexpr auto table(std::integer_sequence<int, R...>) {
  return std::array<PassFn<W>, sizeof...(R)>{pass<W, R + 1, T>...};
}

// Rows per pass R (up to R_MAX) over groups of tiles: NT tiles, or NT_FEW for one or two rows, whose few
// accumulator chains would otherwise wait on the FMA latency (4 cycles) instead of the weight stream (bf16 decode:
// 68 vs 82 tok/s on SmolLM2 with 2 tiles per pass for one row).
template <typename W>
void run(const float* x, int64_t M, int64_t K, const W* w, const float* bias, float* y, int64_t N) {
  static constexpr auto wide = table<W, NT>(std::make_integer_sequence<int, R_MAX>{});
  static constexpr auto few = table<W, NT_FEW>(std::make_integer_sequence<int, 2>{});
  static constexpr auto one = table<W, 1>(std::make_integer_sequence<int, R_MAX>{});
  const int64_t tiles = (N + TILE - 1) / TILE;
  // Groups of CHUNK tiles outer, blocks of R_MAX rows inner: more than R_MAX rows (a verification of 9-16 tokens, a
  // prefill) read a group's weights from memory once and from L2 for the blocks after the first (CHUNK tiles of
  // K = 1536: 384 KiB), instead of one whole pass over the weights per block; the FMA units then set the rate.
  // Each row's sums are the same in any block.
  constexpr int64_t CHUNK = NT_FEW > NT ? NT_FEW : NT;
  static_assert(CHUNK % NT == 0 && CHUNK % NT_FEW == 0, "a chunk holds whole groups of either width");
  at::parallel_for(0, tiles, 16, [&](int64_t t0, int64_t t1) {
    for (int64_t c = t0; c < t1; c += CHUNK) {
      const int64_t c1 = std::min(c + CHUNK, t1);
      for (int64_t m = 0; m < M; m += R_MAX) {
        const int64_t r = std::min<int64_t>(R_MAX, M - m);
        const int64_t nt = r <= 2 ? NT_FEW : NT;
        const auto fn = r <= 2 ? few[r - 1] : wide[r - 1];
        int64_t t = c;
        for (; t + nt <= c1; t += nt) fn(x + m * K, K, w, bias, y + m * N, N, t);
        for (; t < c1; ++t) one[r - 1](x + m * K, K, w, bias, y + m * N, N, t);
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
  const int64_t N = w.size(0), K = w.size(1), T = (N + TILE - 1) / TILE;
  auto p = torch::zeros({T * TILE, K}, w.options().device(torch::kCPU));
  p.narrow(0, 0, N).copy_(w);
  return huge(p.view({T, TILE, K}).transpose(1, 2));  // (T, K, 16)
}

torch::Tensor gemv_tiles(const torch::Tensor& x, const torch::Tensor& tiles, int64_t N,
                         const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous() && x.device().is_cpu() &&
                  tiles.device().is_cpu(),
              "gemv_tiles: x must be a contiguous fp32 (M, K) CPU tensor, and the tiles on the CPU");
  const auto wt = tiles.scalar_type();
  TORCH_CHECK(tiles.dim() == 3 && tiles.size(2) == TILE && tiles.is_contiguous() &&
                  (wt == torch::kFloat || wt == torch::kBFloat16),
              "gemv_tiles: tiles must be pack_tiles' contiguous (ceil(N/16), K, 16) fp32 or bf16 tensor");
  TORCH_CHECK(tiles.size(1) == x.size(1), "gemv_tiles: x has ", x.size(1), " columns, the tiles K = ", tiles.size(1));
  TORCH_CHECK(N > (tiles.size(0) - 1) * TILE && N <= tiles.size(0) * TILE,
              "gemv_tiles: N = ", N, " does not match ", tiles.size(0), " tiles of 16 rows");
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

// The FMA units' rate on the calling thread, measured: 12 independent chains of this build's widest fp32 FMA for
// about `seconds` (more chains than the FMA latency x pipes, so throughput, not latency, sets it). Returns
// multiply-adds per second (lanes x instructions): the compute roof gemv_tiles' prefill rows are held against.
double fma_rate(double seconds) {
  constexpr int CH = 12, INNER = 1024;
  vec acc[CH];
  for (int j = 0; j < CH; ++j) acc[j] = Vec::set1(1.0f + 1e-3f * j);
  const vec a = Vec::set1(0.9999999f), b = Vec::set1(1e-7f);
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
