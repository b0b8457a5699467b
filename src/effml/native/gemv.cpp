// effml's GEMV for decode rows: y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] (+ bias[n]).
//
// x: (M, K) fp32 activations; w: (N, K) row-major, one row per output, stored as int8 codes (with scale: (N,) fp32,
// weight-only int8), bf16 or fp32 (no scale). Built for the CPU it runs on (-march=native): AVX-512 (16 lanes) or
// AVX2 (8 lanes), scalar otherwise, the width chosen per weight dtype (below). For a decode step (M = 1) or a
// short verification/batch (M <= 16) the cost is reading the weights: each weight row is loaded from memory once,
// widened to fp32 in registers (int8: sign-extend and convert; bf16: a 16-bit shift) and multiplied into up to
// R_MAX activation rows, so the kernel runs at memory bandwidth; the activations stay fp32 (no activation
// rounding: exact weight-only arithmetic).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <tuple>
#include <vector>

#include "vec.h"

namespace {

constexpr int R_MAX = 8;  // activation rows per pass over a weight row

// Vector widths (vec.h's traits: V16 AVX-512, V8 AVX2 + FMA, V1 scalar). Each weight dtype takes the width that
// measured fastest (SmolLM2 decode, AMD Zen 4, 1 thread): int8 and bf16 the widest (16 lanes: 110.9 / 79.3 tok/s vs
// 64.2 / 65.7 with 8), fp32 8 lanes (45.8 vs 40.7 tok/s: a plain fp32 GEMV is bound by the read, and Zen 4 splits
// 512-bit operations in two).
using effml_vec::V1;
#if defined(__AVX2__) && defined(__FMA__)
using effml_vec::V8;
#endif
#if defined(__AVX512F__)
using effml_vec::V16;
const char* kIsa = "AVX-512; fp32 weights AVX2";
#elif defined(__AVX2__) && defined(__FMA__)
const char* kIsa = "AVX2";
#else
const char* kIsa = "scalar";
#endif
using effml_vec::Wide;
#if defined(__AVX2__) && defined(__FMA__)
using Narrow = V8;
#else
using Narrow = Wide;
#endif

template <typename T> struct WidthFor { using V = Wide; };  // int8 codes, bf16
template <> struct WidthFor<float> { using V = Narrow; };

inline float scalar(int8_t v) { return static_cast<float>(v); }
inline float scalar(float v) { return v; }
inline float scalar(uint16_t v) { return V1::widen(&v); }

template <typename T, int R>
void rows(const float* x, int64_t K, const T* w, const float* scale, const float* bias, float* y, int64_t N,
          int64_t n0, int64_t n1) {
  using V = typename WidthFor<T>::V;
  const int64_t kv = K - K % V::W;
  for (int64_t n = n0; n < n1; ++n) {
    const T* wr = w + n * K;
    typename V::v acc[R];
    for (int r = 0; r < R; ++r) acc[r] = V::zero();
    for (int64_t k = 0; k < kv; k += V::W) {
      const typename V::v wv = V::widen(wr + k);
      for (int r = 0; r < R; ++r) acc[r] = V::fma(V::load(x + r * K + k), wv, acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      float t = V::sum(acc[r]);
      for (int64_t k = kv; k < K; ++k) t += x[r * K + k] * scalar(wr[k]);
      y[r * N + n] = (scale ? scale[n] * t : t) + (bias ? bias[n] : 0.f);
    }
  }
}

template <typename T>
using RowsFn = void (*)(const float*, int64_t, const T*, const float*, const float*, float*, int64_t, int64_t,
                        int64_t);
template <typename T>
constexpr RowsFn<T> kRows[R_MAX] = {rows<T, 1>, rows<T, 2>, rows<T, 3>, rows<T, 4>,
                                    rows<T, 5>, rows<T, 6>, rows<T, 7>, rows<T, 8>};

template <typename T>
void run(const float* xp, int64_t M, int64_t K, const T* wp, const float* sp, const float* bp, float* yp, int64_t N) {
  const int64_t row_bytes = K * static_cast<int64_t>(sizeof(T)) * ((M + R_MAX - 1) / R_MAX);
  at::parallel_for(0, N, std::max<int64_t>(64, effml_vec::grain_for(row_bytes)), [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; m += R_MAX) {
      const int64_t r = std::min<int64_t>(R_MAX, M - m);
      kRows<T>[r - 1](xp + m * K, K, wp, sp, bp, yp + m * N, N, n0, n1);
    }
  });
}

}  // namespace

torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& scale,
                   const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(),
              "gemv: x must be a contiguous fp32 (M, K) tensor");
  const auto wt = w.scalar_type();
  TORCH_CHECK(w.dim() == 2 && w.is_contiguous() && w.size(1) == x.size(1) &&
              (wt == torch::kChar || wt == torch::kBFloat16 || wt == torch::kFloat),
              "gemv: w must be a contiguous int8, bf16 or fp32 (N, K) tensor with K = x.size(1)");
  TORCH_CHECK((wt == torch::kChar) == scale.has_value(), "gemv: int8 weights need a scale, bf16/fp32 take none");
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  const float* sp = nullptr;
  if (scale.has_value()) {
    TORCH_CHECK(scale->scalar_type() == torch::kFloat && scale->is_contiguous() && scale->numel() == N,
                "gemv: scale must be a contiguous fp32 tensor of N entries");
    sp = scale->data_ptr<float>();
  }
  const float* bp = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->is_contiguous() && bias->numel() == N,
                "gemv: bias must be a contiguous fp32 tensor of N entries");
    bp = bias->data_ptr<float>();
  }
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  if (wt == torch::kChar)
    run(xp, M, K, w.data_ptr<int8_t>(), sp, bp, yp, N);
  else if (wt == torch::kBFloat16)
    run(xp, M, K, reinterpret_cast<const uint16_t*>(w.data_ptr()), sp, bp, yp, N);
  else
    run(xp, M, K, w.data_ptr<float>(), sp, bp, yp, N);
  return y;
}

std::string isa() { return kIsa; }

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps);
torch::Tensor attend(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor kc,
                     torch::Tensor vc, int64_t pos0, int64_t H, int64_t Hkv);
torch::Tensor silu_mul(const torch::Tensor& gu);
using Proj = std::tuple<int64_t, torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, int64_t>;

std::string a8_isa();
std::tuple<int64_t, int64_t> a8_prefetch(int64_t l1, int64_t l2);
int64_t a8_amx(int64_t rows);
torch::Tensor pack_a8(const torch::Tensor& codes, int64_t bits, const torch::Tensor& scale,
                      const c10::optional<torch::Tensor>& zterm, int64_t group);
torch::Tensor gemv_a8(const torch::Tensor& x, const torch::Tensor& packed, int64_t bits, int64_t group,
                      const c10::optional<torch::Tensor>& bias);

torch::Tensor huge(const torch::Tensor& t);
std::vector<torch::Tensor> arena(const std::vector<torch::Tensor>& ts, bool copy);
torch::Tensor pack_tiles(const torch::Tensor& w);
torch::Tensor gemv_tiles(const torch::Tensor& x, const torch::Tensor& tiles, int64_t N,
                         const c10::optional<torch::Tensor>& bias);
std::string tiles_isa();
int64_t tiles_width();
std::tuple<int64_t, int64_t> tiles_prefetch(int64_t l1, int64_t l2);
double read_sum(const torch::Tensor& t);
double fma_rate(double seconds);
double vnni_rate(double seconds);

torch::Tensor attend_rows(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                          torch::Tensor kc, torch::Tensor vc, const c10::optional<torch::Tensor>& tables,
                          const torch::Tensor& seq, const torch::Tensor& pos, int64_t H, int64_t Hkv);
torch::Tensor decode_layers_rows(torch::Tensor x, const std::vector<torch::Tensor>& norms,
                                 const std::vector<double>& eps, const std::vector<Proj>& projs,
                                 const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& cos,
                                 const torch::Tensor& sin, const c10::optional<torch::Tensor>& tables,
                                 const torch::Tensor& seq, const torch::Tensor& pos, int64_t H, int64_t Hkv,
                                 const std::vector<torch::Tensor>& qk_norms, double qk_eps);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("gemv", &gemv, "y = (x @ w.T) [* scale] + bias: w int8 (with scale), bf16 or fp32; x fp32, M <= 16 rows");
  m.def("isa", &isa, "the vector ISA this build uses");
  m.def("a8_isa", &a8_isa, "gemv_a8's vector ISA: 'AVX-512 VNNI', 'AVX2', or '' (a scalar reference loop)");
  m.def("a8_prefetch", &a8_prefetch, "gemv_a8's software prefetch distances into L1 and L2 in bytes: set one (>= 0; "
        "0 = none), leave it (-1); returns both", py::arg("l1") = -1, py::arg("l2") = -1);
  m.def("a8_amx", &a8_amx, "the fewest rows gemv_a8 hands to its AMX kernel (amx.cpp): set it (>= 0; 0 = never), "
        "leave it (-1); returns it, 0 where this build, CPU or OS gives no AMX", py::arg("rows") = -1);
  m.def("pack_a8", &pack_a8, "int4 / int8 codes (N, K), their scales (and zero terms) into gemv_a8's layout (a8.cpp)");
  m.def("gemv_a8", &gemv_a8, "int4/int8 codes x int8-rounded activations (per 32), any number of rows (a8.cpp)");
  m.def("huge", &huge, "a contiguous copy in memory advised for 2 MiB pages (tiles.cpp)");
  m.def("arena", &arena, "contiguous copies of tensors back to back in one region advised for 2 MiB pages "
        "(copy=False: unwritten views shaped like them; tiles.cpp)", py::arg("ts"), py::arg("copy") = true);
  m.def("pack_tiles", &pack_tiles,
        "fp32/bf16 (N, K) into gemv_tiles' layout (ceil(N/W), K, W), W = tiles_width() outputs interleaved "
        "(tiles.cpp)");
  m.def("gemv_tiles", &gemv_tiles, "y = x @ w.T + bias from pack_tiles' layout, any number of rows (tiles.cpp)");
  m.def("tiles_isa", &tiles_isa, "gemv_tiles' vector ISA (tiles.cpp)");
  m.def("tiles_prefetch", &tiles_prefetch, "gemv_tiles' software prefetch distances into L1 and L2 in bytes: set one "
        "(>= 0; 0 = none), leave it (-1); returns both", py::arg("l1") = -1, py::arg("l2") = -1);
  m.def("read_sum", &read_sum, "sum of a contiguous fp32 tensor read as gemv_tiles reads weights (tiles.cpp)");
  m.def("tiles_width", &tiles_width, "outputs interleaved in pack_tiles' layout: 32 on AVX-512, 16 otherwise");
  m.def("fma_rate", &fma_rate, "fp32 multiply-adds per second of this build's widest FMA, one thread, measured for "
        "about `seconds` (tiles.cpp)");
  m.def("vnni_rate", &vnni_rate, "int8 multiply-adds per second of vpdpbusd, one thread, measured; 0 without "
        "AVX-512 VNNI (a8.cpp)");
  m.def("rms_norm", &rms_norm, "x * rsqrt(mean(x^2) + eps) * w over the last dimension (decode.cpp)");
  m.def("attend", &attend, "RoPE q/k, write k/v into the layer's cache, causal GQA attention (decode.cpp)");
  m.def("silu_mul", &silu_mul, "silu(gate) * up of a fused gate/up output (decode.cpp)");
  m.def("attend_rows", &attend_rows, "attend for tokens of several sequences, contiguous or paged cache (decode.cpp)");
  m.def("decode_layers_rows", &decode_layers_rows, "every decoder block for the new tokens of one or several sequences in one call (decode.cpp)");
}
