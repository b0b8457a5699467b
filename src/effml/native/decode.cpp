// effml's fused decode-step ops for the Llama-family decoder (fp32, one sequence, a few tokens per call).
//
// A decode step of a small model is ~30 layers x ~170 aten dispatches (norms, RoPE, the cache write, SDPA, SiLU),
// each a few microseconds: on a CPU that is as long as reading the int8 weights. These three ops do the same
// arithmetic as effml.llm.model's modules in one call each:
//   rms_norm(x, w, eps)                 x (T, C) -> x * rsqrt(mean(x^2) + eps) * w
//   attend(qkv, cos, sin, kc, vc, pos0, H, Hkv)
//       qkv (T, (H + 2 Hkv) hd): q heads, k heads, v heads (the fused wqkv output); cos, sin (T, hd) for positions
//       pos0..pos0+T-1 (rotate-half RoPE); kc, vc (Hkv, max_len, hd) this layer's cache: k (rotated) and v written
//       at pos0+t, then query t attends causally to positions 0..pos0+t (grouped-query: head h reads KV head
//       h / (H / Hkv)). Returns (T, H hd).
//   silu_mul(gu) gu (T, 2F) -> silu(gu[:, :F]) * gu[:, F:]
//   decode_layers_rows(x, norms, eps, projections, k, v, cos, sin, tables, seq, pos, H, Hkv, qk_norms, qk_eps)
//       every block of the decoder in one call (no Python between the kernels) for the new tokens of one or
//       several sequences (attend_rows below): per layer norm -> QKV -> (Qwen3's per-head q/k RMSNorm, when
//       qk_norms holds 2 weights a layer) -> attend -> output projection + residual ->
//       norm -> gate/up -> silu_mul -> down + residual. A projection is
//       (0, w, scale?, bias?, 0): effml's GEMV (int8 codes with scale, bf16 or fp32 w), or (1, packed, scales
//       and zeros, None, group): torch's int4 kernel on bf16 rows, or a8.cpp's int8-activation GEMV: (2, packed,
//       None, None, group) for int4 codes, (3, packed, None, bias?, K) for int8 codes (pack_a8's tensor holds the
//       scales), or (4, tiles, None, bias?, N): tiles.cpp's gemv_tiles on fp32 / bf16 weights, any number of rows.
#include <torch/extension.h>
#include <cstdint>
#include <tuple>
#include <algorithm>
#include <cmath>
#include <cstring>
#include <immintrin.h>
#include <vector>

namespace {

void check_f32(const torch::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == torch::kFloat && t.is_contiguous() && t.device().is_cpu(),
              what, " must be a contiguous fp32 CPU tensor");
}

inline void rope(const float* x, const float* c, const float* s, float* out, int64_t hd) {
  const int64_t half = hd / 2;
  for (int64_t i = 0; i < half; ++i) {
    const float a = x[i], b = x[i + half];
    out[i] = a * c[i] - b * s[i];
    out[i + half] = b * c[i + half] + a * s[i + half];
  }
}

// exp for the softmax and SiLU: Cody-Waite range reduction and Cephes expf's degree-6 polynomial (relative error
// ~1e-7), plain arithmetic so the `omp simd` loops below vectorize it (std::exp is a scalar libm call, 10-20 ns:
// with it the attention over 90 cached positions took 15 us per layer, half of it in exp).
inline float vexp(float x) {
  x = std::min(std::max(x, -87.f), 88.f);
  const float n = std::nearbyint(x * 1.44269504088896341f);
  const float r = (x - n * 0.693359375f) + n * 2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  p = p * r * r + r + 1.f;
  const int32_t e = (static_cast<int32_t>(n) + 127) << 23;
  float two_n;
  std::memcpy(&two_n, &e, 4);
  return p * two_n;
}

inline float dot(const float* a, const float* b, int64_t n) {
  float acc = 0.f;
#pragma omp simd reduction(+ : acc)
  for (int64_t i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

// x's hd values RMS-normalised and scaled by w into out: one row of rms_norm, and Qwen3's per-head q/k norm with
// the same arithmetic (so the generic path's numbers); x itself when w is nullptr (no norm)
inline const float* head_norm(const float* x, const float* w, float eps, float* out, int64_t hd) {
  if (w == nullptr) return x;
  const float r = 1.f / std::sqrt(dot(x, x, hd) / static_cast<float>(hd) + eps);
#pragma omp simd
  for (int64_t i = 0; i < hd; ++i) out[i] = x[i] * r * w[i];
  return out;
}

// One query head over S cached positions: softmax(q K^T * scale) V into out (hd). K(j) / V(j): position j's key and
// value rows (a contiguous cache, or a paged one's blocks). HD > 0: the head size as a compile-time constant (64,
// 128: the loops unroll into whole vectors), 0: hd at run time.
#if defined(__AVX512F__)
// 16 vectors -> one vector of their 16 horizontal sums (in order), 45 shuffles/adds instead of 16 full reductions.
inline __m512 sum16(const __m512* v) {
  __m512 s[8], t[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit chunk: [a0+a2, b0+b2, a1+a3, b1+b3]
    s[i] = _mm512_add_ps(_mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]), _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per chunk: the chunk sums of 4 source vectors
    const __m512d a = _mm512_castps_pd(s[2 * i]), b = _mm512_castps_pd(s[2 * i + 1]);
    t[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
  }
  const __m512 v0 = _mm512_add_ps(_mm512_shuffle_f32x4(t[0], t[1], 0x88), _mm512_shuffle_f32x4(t[0], t[1], 0xDD));
  const __m512 v1 = _mm512_add_ps(_mm512_shuffle_f32x4(t[2], t[3], 0x88), _mm512_shuffle_f32x4(t[2], t[3], 0xDD));
  return _mm512_add_ps(_mm512_shuffle_f32x4(v0, v1, 0x88), _mm512_shuffle_f32x4(v0, v1, 0xDD));
}

// q . K(j) for 64- or 128-wide heads (HD / 16 vectors): 16 positions at a time, their partial vectors summed
// together (sum16).
template <int HD, class KRow>
void scores(const float* q, KRow K, int64_t S, float scale, float* p) {
  constexpr int NV = HD / 16;
  __m512 qv[NV];
  for (int i = 0; i < NV; ++i) qv[i] = _mm512_loadu_ps(q + 16 * i);
  const auto part = [&](const float* k) {
    __m512 acc = _mm512_mul_ps(qv[0], _mm512_loadu_ps(k));
    for (int i = 1; i < NV; ++i) acc = _mm512_fmadd_ps(qv[i], _mm512_loadu_ps(k + 16 * i), acc);
    return acc;
  };
  int64_t j = 0;
  for (; j + 16 <= S; j += 16) {
    __m512 v[16];
    for (int u = 0; u < 16; ++u) v[u] = part(K(j + u));
    _mm512_storeu_ps(p + j, _mm512_mul_ps(sum16(v), _mm512_set1_ps(scale)));
  }
  for (; j < S; ++j) p[j] = _mm512_reduce_add_ps(part(K(j))) * scale;
}
#endif

template <int HD, class KRow, class VRow>
void head(const float* q, KRow K, VRow V, int64_t S, float scale, float* p, float* out, int64_t hd) {
  const int64_t d = HD > 0 ? HD : hd;
  float mx = -INFINITY;
#if defined(__AVX512F__)
  if (HD == 64 || HD == 128) {
    scores<HD == 128 ? 128 : 64>(q, K, S, scale, p);
    for (int64_t j = 0; j < S; ++j) mx = std::max(mx, p[j]);
  } else
#endif
  for (int64_t j = 0; j < S; ++j) {
    const float* kj = K(j);
    float acc = 0.f;
#pragma omp simd reduction(+ : acc)
    for (int64_t i = 0; i < d; ++i) acc += q[i] * kj[i];
    p[j] = acc * scale;
    mx = std::max(mx, p[j]);
  }
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t j = 0; j < S; ++j) {
    p[j] = vexp(p[j] - mx);
    sum += p[j];
  }
  const float inv = 1.f / sum;
#if defined(__AVX512F__)
  if (HD == 64 || HD == 128) {  // the outputs stay in HD / 16 registers over all positions
    constexpr int NV = HD == 128 ? 8 : 4;
    __m512 o[NV];
    for (int i = 0; i < NV; ++i) o[i] = _mm512_setzero_ps();
    for (int64_t j = 0; j < S; ++j) {
      const __m512 pj = _mm512_set1_ps(p[j] * inv);
      const float* vj = V(j);
      for (int i = 0; i < NV; ++i) o[i] = _mm512_fmadd_ps(pj, _mm512_loadu_ps(vj + 16 * i), o[i]);
    }
    for (int i = 0; i < NV; ++i) _mm512_storeu_ps(out + 16 * i, o[i]);
    return;
  }
#endif
  std::fill_n(out, d, 0.f);
  for (int64_t j = 0; j < S; ++j) {
    const float pj = p[j] * inv;
    const float* vj = V(j);
#pragma omp simd
    for (int64_t i = 0; i < d; ++i) out[i] += pj * vj[i];
  }
}

template <class KRow, class VRow>
void any_head(const float* q, KRow K, VRow V, int64_t S, float scale, float* p, float* out, int64_t hd) {
  if (hd == 64)
    head<64>(q, K, V, S, scale, p, out, hd);
  else if (hd == 128)
    head<128>(q, K, V, S, scale, p, out, hd);
  else
    head<0>(q, K, V, S, scale, p, out, hd);
}

}  // namespace

torch::Tensor rms_norm(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  check_f32(x, "rms_norm: x");
  check_f32(w, "rms_norm: weight");
  const int64_t C = w.numel();
  TORCH_CHECK(x.size(-1) == C, "rms_norm: x's last dimension must equal the weight's size");
  auto y = torch::empty_like(x);
  const float* xp = x.data_ptr<float>();
  const float* wp = w.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t t = 0, T = x.numel() / C; t < T; ++t) head_norm(xp + t * C, wp, static_cast<float>(eps), yp + t * C, C);
  return y;
}

// Qwen3's per-head RMSNorm of q and k before RoPE (one weight of hd values each), or none (nullptr)
struct QKNorm {
  const float* q = nullptr;
  const float* k = nullptr;
  float eps = 0.f;
};

torch::Tensor attend_idx(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                         torch::Tensor kc, torch::Tensor vc, const c10::optional<torch::Tensor>& tables,
                         const int64_t* seq, const int64_t* pos, int64_t H, int64_t Hkv, QKNorm qk = {},
                         std::vector<int64_t>* rows = nullptr);

// One sequence: attend_rows' loop over a one-row contiguous cache (the same sums, so the same bits).
torch::Tensor attend(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin, torch::Tensor kc,
                     torch::Tensor vc, int64_t pos0, int64_t H, int64_t Hkv) {
  TORCH_CHECK(kc.dim() == 3 && vc.sizes() == kc.sizes() && kc.size(0) == Hkv && H % Hkv == 0,
              "attend: caches must be (Hkv, max_len, hd) and H a multiple of Hkv");
  const int64_t width = (H + 2 * Hkv) * kc.size(2);
  TORCH_CHECK(qkv.size(-1) == width, "attend: qkv's last dimension must be (H + 2 Hkv) * hd");
  const int64_t T = qkv.numel() / width;
  TORCH_CHECK(pos0 >= 0 && pos0 + T <= kc.size(1), "attend: positions past the cache's max_len");
  std::vector<int64_t> seq(T, 0), pos(T);
  for (int64_t t = 0; t < T; ++t) pos[t] = pos0 + t;
  return attend_idx(qkv, cos, sin, kc.unsqueeze(0), vc.unsqueeze(0), c10::nullopt, seq.data(), pos.data(), H, Hkv);
}

torch::Tensor silu_mul(const torch::Tensor& gu) {
  check_f32(gu, "silu_mul: input");
  const int64_t F2 = gu.size(-1), F = F2 / 2, T = gu.numel() / F2;
  TORCH_CHECK(F2 % 2 == 0, "silu_mul: the last dimension must be even (gate and up side by side)");
  auto sizes = gu.sizes().vec();
  sizes.back() = F;
  auto y = torch::empty(sizes, gu.options());
  const float* g = gu.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  for (int64_t t = 0; t < T; ++t) {
    const float* gr = g + t * F2;
    float* yr = yp + t * F;
#pragma omp simd
    for (int64_t i = 0; i < F; ++i) yr[i] = gr[i] / (1.f + vexp(-gr[i])) * gr[F + i];
  }
  return y;
}

torch::Tensor gemv(const torch::Tensor& x, const torch::Tensor& w, const c10::optional<torch::Tensor>& scale,
                   const c10::optional<torch::Tensor>& bias);
torch::Tensor gemv_a8(const torch::Tensor& x, const torch::Tensor& packed, int64_t bits, int64_t group,
                      const c10::optional<torch::Tensor>& bias);
torch::Tensor gemv_tiles(const torch::Tensor& x, const torch::Tensor& tiles, int64_t N,
                         const c10::optional<torch::Tensor>& bias);

using Proj = std::tuple<int64_t, torch::Tensor, c10::optional<torch::Tensor>, c10::optional<torch::Tensor>, int64_t>;

namespace {

// fp32 <-> bf16 for the few rows torch's int4 kernel takes: plain loops (round to nearest even; the values here are
// finite activations), cheaper than a dispatched .to() per projection (240 per SmolLM2 step).
torch::Tensor to_bf16(const torch::Tensor& x) {
  auto out = torch::empty(x.sizes(), x.options().dtype(torch::kBFloat16));
  const uint32_t* in = reinterpret_cast<const uint32_t*>(x.data_ptr<float>());
  uint16_t* o = reinterpret_cast<uint16_t*>(out.data_ptr());
  for (int64_t i = 0, n = x.numel(); i < n; ++i) {
    const uint32_t u = in[i];
    o[i] = static_cast<uint16_t>((u + 0x7FFFu + ((u >> 16) & 1u)) >> 16);
  }
  return out;
}

torch::Tensor to_fp32(const torch::Tensor& y) {
  auto out = torch::empty(y.sizes(), y.options().dtype(torch::kFloat));
  const uint16_t* in = reinterpret_cast<const uint16_t*>(y.data_ptr());
  uint32_t* o = reinterpret_cast<uint32_t*>(out.data_ptr<float>());
  for (int64_t i = 0, n = y.numel(); i < n; ++i) o[i] = static_cast<uint32_t>(in[i]) << 16;
  return out;
}

// x += y for the residual stream (both contiguous fp32 of the same size): a plain loop, not a dispatched add_ (60
// per SmolLM2 step at ~1.5 us of dispatch each)
void add_into(torch::Tensor& x, const torch::Tensor& y) {
  TORCH_CHECK(y.scalar_type() == torch::kFloat && y.is_contiguous() && y.numel() == x.numel(),
              "decode_layers_rows: a projection's output does not match the residual stream");
  float* xp = x.data_ptr<float>();
  const float* yp = y.data_ptr<float>();
#pragma omp simd
  for (int64_t i = 0; i < x.numel(); ++i) xp[i] += yp[i];
}

torch::Tensor project(const Proj& p, const torch::Tensor& x) {
  const int64_t kind = std::get<0>(p);
  if (kind == 0) return gemv(x, std::get<1>(p), std::get<2>(p), std::get<3>(p));
  if (kind == 2) return gemv_a8(x, std::get<1>(p), 4, std::get<4>(p), c10::nullopt);
  if (kind == 3) return gemv_a8(x, std::get<1>(p), 8, std::get<4>(p), std::get<3>(p));
  // (4, tiles, None, bias, N): gemv_tiles for any number of rows (a prefill's in blocks of 8 over each group of
  // tiles held in L2)
  if (kind == 4) return gemv_tiles(x, std::get<1>(p), std::get<4>(p), std::get<3>(p));
  TORCH_CHECK(kind == 1 && std::get<2>(p).has_value(), "decode_layers_rows: projection kind must be 0 to 4");
  const auto y = at::_weight_int4pack_mm_for_cpu(to_bf16(x), std::get<1>(p), std::get<4>(p), *std::get<2>(p));
  TORCH_CHECK(y.scalar_type() == torch::kBFloat16 && y.is_contiguous(), "decode_layers_rows: int4 kernel output");
  return to_fp32(y);
}

}  // namespace

// Several sequences in one pass (continuous batching; chunked prefill): token t of T belongs to sequence seq[t] at
// position pos[t]. The cache is contiguous, k (B, Hkv, max_len, hd) with sequence s in row s (tables None), or
// paged, a pool k (Hkv, N, bs, hd) holding sequence s's positions in the blocks tables[s] (S, nb) (effml.llm's
// PagedCache layout). Every new token's K/V is written first, then each token attends to its own sequence's
// positions 0..pos[t]: the same numbers as `attend` gives each sequence alone.
torch::Tensor attend_rows(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                          torch::Tensor kc, torch::Tensor vc, const c10::optional<torch::Tensor>& tables,
                          const torch::Tensor& seq, const torch::Tensor& pos, int64_t H, int64_t Hkv) {
  const int64_t T = qkv.size(-1) > 0 ? qkv.numel() / qkv.size(-1) : 0;
  TORCH_CHECK(seq.scalar_type() == torch::kLong && pos.scalar_type() == torch::kLong && seq.is_contiguous() &&
              pos.is_contiguous() && seq.numel() == T && pos.numel() == T,
              "attend_rows: seq and pos must be contiguous int64 tensors of T entries");
  return attend_idx(qkv, cos, sin, kc, vc, tables, seq.data_ptr<int64_t>(), pos.data_ptr<int64_t>(), H, Hkv);
}

// attend_rows with the tokens' sequences and positions as plain arrays of T entries (validated against the cache).
torch::Tensor attend_idx(const torch::Tensor& qkv, const torch::Tensor& cos, const torch::Tensor& sin,
                         torch::Tensor kc, torch::Tensor vc, const c10::optional<torch::Tensor>& tables,
                         const int64_t* sp, const int64_t* pp, int64_t H, int64_t Hkv, QKNorm qk,
                         std::vector<int64_t>* rows) {
  check_f32(qkv, "attend_rows: qkv");
  check_f32(cos, "attend_rows: cos");
  check_f32(sin, "attend_rows: sin");
  check_f32(kc, "attend_rows: k cache");
  check_f32(vc, "attend_rows: v cache");
  const bool paged = tables.has_value();
  TORCH_CHECK(kc.dim() == 4 && vc.sizes() == kc.sizes() && kc.size(paged ? 0 : 1) == Hkv && H % Hkv == 0,
              "attend_rows: caches must be (B, Hkv, max_len, hd) or a paged pool (Hkv, N, bs, hd)");
  const int64_t hd = kc.size(3), rep = H / Hkv, width = (H + 2 * Hkv) * hd;
  TORCH_CHECK(qkv.size(-1) == width, "attend_rows: qkv's last dimension must be (H + 2 Hkv) * hd");
  const int64_t T = qkv.numel() / width;
  TORCH_CHECK(cos.numel() == T * hd && sin.numel() == T * hd, "attend_rows: cos/sin must be (T, hd)");
  const int64_t* tb = nullptr;
  int64_t nseq, nb = 0, bs = 0, max_len = 0, nblocks = 0;
  if (paged) {
    TORCH_CHECK(tables->scalar_type() == torch::kLong && tables->dim() == 2 && tables->is_contiguous(),
                "attend_rows: tables must be a contiguous int64 (S, nb) tensor");
    tb = tables->data_ptr<int64_t>();
    nseq = tables->size(0), nb = tables->size(1), bs = kc.size(2), nblocks = kc.size(1);
  } else {
    nseq = kc.size(0), max_len = kc.size(2);
  }
  int64_t longest = 0;
  for (int64_t t = 0; t < T; ++t) {
    TORCH_CHECK(sp[t] >= 0 && sp[t] < nseq && pp[t] >= 0 && (paged ? pp[t] / bs < nb : pp[t] < max_len),
                "attend_rows: token ", t, " (sequence ", sp[t], ", position ", pp[t], ") is outside the cache");
    if (paged)
      for (int64_t b = 0; b <= pp[t] / bs; ++b)
        TORCH_CHECK(tb[sp[t] * nb + b] >= 0 && tb[sp[t] * nb + b] < nblocks, "attend_rows: block table entry");
    longest = std::max(longest, pp[t] + 1);
  }
  // paged: each sequence's position -> the float offset of its row for KV head 0 (a division and a table lookup
  // per position), once per call, not at every head's read of every position; once per step when the caller keeps
  // `rows` across the layers (decode_layers_rows: every layer has the same tables and positions)
  std::vector<int64_t> own;
  std::vector<int64_t>& row0 = rows ? *rows : own;
  if (paged && row0.empty()) {
    row0.assign(nseq * longest, 0);
    for (int64_t s = 0; s < nseq; ++s)
      for (int64_t p = 0; p < longest && p / bs < nb; ++p)
        row0[s * longest + p] = (tb[s * nb + p / bs] * bs + p % bs) * hd;
  }
  TORCH_CHECK(!paged || static_cast<int64_t>(row0.size()) == nseq * longest, "attend_rows: stale row offsets");
  const int64_t* r0 = row0.data();
  const int64_t head_stride = paged ? nblocks * bs * hd : max_len * hd;  // from KV head j to j + 1
  const auto at = [=](int64_t s, int64_t j, int64_t p) {  // float offset of (sequence, KV head, position)
    return paged ? r0[s * longest + p] + j * head_stride : ((s * Hkv + j) * max_len + p) * hd;
  };
  auto y = torch::empty({T, H * hd}, qkv.options());
  const float* in = qkv.data_ptr<float>();
  float* kp = kc.data_ptr<float>();
  float* vp = vc.data_ptr<float>();
  float* yp = y.data_ptr<float>();
  std::vector<float> normed(hd);
  for (int64_t t = 0; t < T; ++t) {  // the new keys (normed, rotated) and values into their slots
    const float* row = in + t * width;
    for (int64_t j = 0; j < Hkv; ++j) {
      rope(head_norm(row + (H + j) * hd, qk.k, qk.eps, normed.data(), hd), cos.data_ptr<float>() + t * hd,
           sin.data_ptr<float>() + t * hd, kp + at(sp[t], j, pp[t]), hd);
      std::copy_n(row + (H + Hkv + j) * hd, hd, vp + at(sp[t], j, pp[t]));
    }
  }
  const float scale = 1.f / std::sqrt(static_cast<float>(hd));
  std::vector<float> q(hd), p(longest);
  for (int64_t t = 0; t < T; ++t) {
    const float* row = in + t * width;
    const int64_t s = sp[t];
    for (int64_t h = 0; h < H; ++h) {
      rope(head_norm(row + h * hd, qk.q, qk.eps, normed.data(), hd), cos.data_ptr<float>() + t * hd,
           sin.data_ptr<float>() + t * hd, q.data(), hd);
      const int64_t j = h / rep;
      any_head(q.data(), [&](int64_t x) { return kp + at(s, j, x); }, [&](int64_t x) { return vp + at(s, j, x); },
               pp[t] + 1, scale, p.data(), yp + t * H * hd + h * hd, hd);
    }
  }
  return y;
}

torch::Tensor decode_layers_rows(torch::Tensor x, const std::vector<torch::Tensor>& norms,
                                 const std::vector<double>& eps, const std::vector<Proj>& projs,
                                 const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& cos,
                                 const torch::Tensor& sin, const c10::optional<torch::Tensor>& tables,
                                 const torch::Tensor& seq, const torch::Tensor& pos, int64_t H, int64_t Hkv,
                                 const std::vector<torch::Tensor>& qk_norms, double qk_eps) {
  const int64_t L = k.size(0), T = x.size(0);
  TORCH_CHECK(static_cast<int64_t>(norms.size()) == 2 * L && static_cast<int64_t>(eps.size()) == 2 * L &&
              static_cast<int64_t>(projs.size()) == 4 * L && v.size(0) == L,
              "decode_layers_rows: 2 norms, 2 eps and 4 projections per layer, caches of L layers");
  TORCH_CHECK(qk_norms.empty() || static_cast<int64_t>(qk_norms.size()) == 2 * L,
              "decode_layers_rows: qk_norms must be empty or 2 per layer (q_norm, k_norm)");
  for (const auto& w : qk_norms) {
    check_f32(w, "decode_layers_rows: a q/k norm weight");
    TORCH_CHECK(w.numel() == k.size(-1), "decode_layers_rows: q/k norm weights must have head_dim values");
  }
  TORCH_CHECK(seq.scalar_type() == torch::kLong && pos.scalar_type() == torch::kLong && seq.is_contiguous() &&
              pos.is_contiguous() && seq.numel() == T && pos.numel() == T,
              "decode_layers_rows: seq and pos must be contiguous int64 tensors of one entry per row of x");
  x = x.clone(at::MemoryFormat::Contiguous);  // the residual stream, added to in place (add_into)
  std::vector<int64_t> rows;  // a paged cache's row offsets: computed at layer 0, the same for every layer
  for (int64_t l = 0; l < L; ++l) {
    auto h = rms_norm(x, norms[2 * l], eps[2 * l]);
    QKNorm qk;
    if (!qk_norms.empty())
      qk = {qk_norms[2 * l].data_ptr<float>(), qk_norms[2 * l + 1].data_ptr<float>(), static_cast<float>(qk_eps)};
    auto y = attend_idx(project(projs[4 * l], h), cos, sin, k.select(0, l), v.select(0, l), tables,
                        seq.data_ptr<int64_t>(), pos.data_ptr<int64_t>(), H, Hkv, qk, &rows);
    add_into(x, project(projs[4 * l + 1], y));
    h = rms_norm(x, norms[2 * l + 1], eps[2 * l + 1]);
    add_into(x, project(projs[4 * l + 3], silu_mul(project(projs[4 * l + 2], h))));
  }
  return x;
}
