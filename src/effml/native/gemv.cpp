// effml's weight-only int8 GEMV: y[m, n] = scale[n] * sum_k x[m, k] * w[n, k] (+ bias[n]).
//
// x: (M, K) fp32 activations, w: (N, K) int8 codes (row-major, one row per output), scale: (N,) fp32.
// Built for the CPU it runs on (-march=native): AVX-512 (16 lanes) or AVX2 (8 lanes), scalar otherwise.
// For a decode step (M = 1) or a short verification/batch (M <= 16) the cost is reading the weights: each
// weight row is loaded from memory once, widened int8 -> fp32 in registers and multiplied into up to R_MAX
// activation rows, so the kernel runs at memory bandwidth instead of converting the codes to bf16 first
// (torch's _weight_int8pack_mm) and the activations stay fp32 (no activation rounding: exact weight-only).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>
#include <algorithm>
#include <cstdint>

namespace {

constexpr int R_MAX = 8;  // activation rows per pass over a weight row

#if defined(__AVX512F__)
constexpr int W = 16;
using vf = __m512;
inline vf vzero() { return _mm512_setzero_ps(); }
inline vf vload(const float* p) { return _mm512_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm512_fmadd_ps(a, b, c); }
inline float vsum(vf a) { return _mm512_reduce_add_ps(a); }
inline vf widen(const int8_t* p) {  // 16 int8 -> 16 fp32
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
const char* kIsa = "AVX-512";
#elif defined(__AVX2__) && defined(__FMA__)
constexpr int W = 8;
using vf = __m256;
inline vf vzero() { return _mm256_setzero_ps(); }
inline vf vload(const float* p) { return _mm256_loadu_ps(p); }
inline vf vfma(vf a, vf b, vf c) { return _mm256_fmadd_ps(a, b, c); }
inline float vsum(vf a) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
  return _mm_cvtss_f32(s);
}
inline vf widen(const int8_t* p) {  // 8 int8 -> 8 fp32
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
const char* kIsa = "AVX2";
#else
constexpr int W = 1;
using vf = float;
inline vf vzero() { return 0.f; }
inline vf vload(const float* p) { return *p; }
inline vf vfma(vf a, vf b, vf c) { return a * b + c; }
inline float vsum(vf a) { return a; }
inline vf widen(const int8_t* p) { return static_cast<float>(*p); }
const char* kIsa = "scalar";
#endif

template <int R>
void rows(const float* x, int64_t K, const int8_t* w, const float* scale, const float* bias, float* y, int64_t N,
          int64_t n0, int64_t n1) {
  const int64_t kv = K - K % W;
  for (int64_t n = n0; n < n1; ++n) {
    const int8_t* wr = w + n * K;
    vf acc[R];
    for (int r = 0; r < R; ++r) acc[r] = vzero();
    for (int64_t k = 0; k < kv; k += W) {
      const vf wv = widen(wr + k);
      for (int r = 0; r < R; ++r) acc[r] = vfma(vload(x + r * K + k), wv, acc[r]);
    }
    for (int r = 0; r < R; ++r) {
      float t = vsum(acc[r]);
      for (int64_t k = kv; k < K; ++k) t += x[r * K + k] * static_cast<float>(wr[k]);
      y[r * N + n] = scale[n] * t + (bias ? bias[n] : 0.f);
    }
  }
}

using RowsFn = void (*)(const float*, int64_t, const int8_t*, const float*, const float*, float*, int64_t, int64_t,
                        int64_t);
const RowsFn kRows[R_MAX] = {rows<1>, rows<2>, rows<3>, rows<4>, rows<5>, rows<6>, rows<7>, rows<8>};

}  // namespace

torch::Tensor int8_gemv(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& scale,
                        const c10::optional<torch::Tensor>& bias) {
  TORCH_CHECK(x.dim() == 2 && x.scalar_type() == torch::kFloat && x.is_contiguous(),
              "int8_gemv: x must be a contiguous fp32 (M, K) tensor");
  TORCH_CHECK(w.dim() == 2 && w.scalar_type() == torch::kChar && w.is_contiguous() && w.size(1) == x.size(1),
              "int8_gemv: w must be a contiguous int8 (N, K) tensor with K = x.size(1)");
  TORCH_CHECK(scale.scalar_type() == torch::kFloat && scale.is_contiguous() && scale.numel() == w.size(0),
              "int8_gemv: scale must be a contiguous fp32 tensor of N entries");
  const float* bp = nullptr;
  if (bias.has_value()) {
    TORCH_CHECK(bias->scalar_type() == torch::kFloat && bias->is_contiguous() && bias->numel() == w.size(0),
                "int8_gemv: bias must be a contiguous fp32 tensor of N entries");
    bp = bias->data_ptr<float>();
  }
  const int64_t M = x.size(0), K = x.size(1), N = w.size(0);
  auto y = torch::empty({M, N}, x.options());
  const float* xp = x.data_ptr<float>();
  const int8_t* wp = w.data_ptr<int8_t>();
  const float* sp = scale.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, N, 64, [&](int64_t n0, int64_t n1) {
    for (int64_t m = 0; m < M; m += R_MAX) {
      const int64_t r = std::min<int64_t>(R_MAX, M - m);
      kRows[r - 1](xp + m * K, K, wp, sp, bp, yp + m * N, N, n0, n1);
    }
  });
  return y;
}

std::string isa() { return kIsa; }

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps);
torch::Tensor attend(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor kc,
                     torch::Tensor vc, int64_t pos0, int64_t H, int64_t Hkv);
torch::Tensor silu_mul(const torch::Tensor& gu);

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("int8_gemv", &int8_gemv, "y = (x @ w.T) * scale + bias for int8 w, fp32 x (weight-only int8)");
  m.def("isa", &isa, "the vector ISA this build uses");
  m.def("rms_norm", &rms_norm, "x * rsqrt(mean(x^2) + eps) * w over the last dimension (decode.cpp)");
  m.def("attend", &attend, "RoPE q/k, write k/v into the layer's cache, causal GQA attention (decode.cpp)");
  m.def("silu_mul", &silu_mul, "silu(gate) * up of a fused gate/up output (decode.cpp)");
}
