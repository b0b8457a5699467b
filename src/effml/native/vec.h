// Vector traits shared by effml's float kernels (gemv.cpp, tiles.cpp): V16 (AVX-512), V8 (AVX2 + FMA), V1
// (scalar), each with the same operations (zero, set1, load, store, fma, sum, and widen: int8 / bf16 / fp32 weights
// to fp32 lanes), and Wide, the widest this build has; bursts_per_second, the timing loop of the measured compute
// roofs (tiles.cpp, a8.cpp); intel(), the vendor the prefetch distances are chosen by.
#pragma once
#include <immintrin.h>
#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>

namespace effml_vec {

struct V1 {
  static constexpr int W = 1;
  using v = float;
  static v zero() { return 0.f; }
  static v set1(float a) { return a; }
  static void store(float* p, v a) { *p = a; }
  static v load(const float* p) { return *p; }
  static v fma(v a, v b, v c) { return a * b + c; }
  static float sum(v a) { return a; }
  static v widen(const int8_t* p) { return static_cast<float>(*p); }
  static v widen(const uint16_t* p) {
    const uint32_t u = static_cast<uint32_t>(*p) << 16;
    float f;
    std::memcpy(&f, &u, 4);
    return f;
  }
  static v widen(const float* p) { return *p; }
  static void widen_pairs(const uint16_t* p, v& lo, v& hi) { lo = widen(p), hi = widen(p + 1); }  // as V8's, W = 1
};

#if defined(__AVX2__) && defined(__FMA__)
struct V8 {
  static constexpr int W = 8;
  using v = __m256;
  static v zero() { return _mm256_setzero_ps(); }
  static v set1(float a) { return _mm256_set1_ps(a); }
  static void store(float* p, v a) { _mm256_storeu_ps(p, a); }
  static v load(const float* p) { return _mm256_loadu_ps(p); }
  static v fma(v a, v b, v c) { return _mm256_fmadd_ps(a, b, c); }
  static float sum(v a) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
    return _mm_cvtss_f32(s);
  }
  static v widen(const int8_t* p) {  // 8 int8 -> 8 fp32
    return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
  }
  static v widen(const uint16_t* p) {  // 8 bf16 -> 8 fp32 (the bf16 bits are the fp32's upper half)
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))), 16));
  }
  static v widen(const float* p) { return _mm256_loadu_ps(p); }
  // 16 bf16 in pairs (32-bit lane i: value i in its low half, value 8 + i in its high half) -> 2 x 8 fp32: one load
  // and one operation per vector, where widen() takes a load, a cross-lane zero-extension and a shift
  static void widen_pairs(const uint16_t* p, v& lo, v& hi) {
    const __m256i u = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
    lo = _mm256_castsi256_ps(_mm256_slli_epi32(u, 16));
    hi = _mm256_castsi256_ps(_mm256_and_si256(u, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
};
#endif

#if defined(__AVX512F__)
struct V16 {
  static constexpr int W = 16;
  using v = __m512;
  static v zero() { return _mm512_setzero_ps(); }
  static v set1(float a) { return _mm512_set1_ps(a); }
  static void store(float* p, v a) { _mm512_storeu_ps(p, a); }
  static v load(const float* p) { return _mm512_loadu_ps(p); }
  static v fma(v a, v b, v c) { return _mm512_fmadd_ps(a, b, c); }
  static float sum(v a) { return _mm512_reduce_add_ps(a); }
  static v widen(const int8_t* p) {  // 16 int8 -> 16 fp32
    return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
  }
  static v widen(const uint16_t* p) {  // 16 bf16 -> 16 fp32
    return _mm512_castsi512_ps(
        _mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))), 16));
  }
  static v widen(const float* p) { return _mm512_loadu_ps(p); }
  static void widen_pairs(const uint16_t* p, v& lo, v& hi) {  // 32 bf16 in pairs (as V8's) -> 2 x 16 fp32
    const __m512i u = _mm512_loadu_si512(p);
    lo = _mm512_castsi512_ps(_mm512_slli_epi32(u, 16));
    hi = _mm512_castsi512_ps(_mm512_and_si512(u, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
  }
};
#endif

// Calls of `burst` per second, `burst` run again and again for about `seconds`: the timing loop of the measured
// compute roofs (tiles.cpp's fma_rate, a8.cpp's vnni_rate), each burst long enough that the clock reads are noise.
template <typename F>
double bursts_per_second(double seconds, F&& burst) {
  int64_t n = 0;
  const auto t0 = std::chrono::steady_clock::now();
  double dt = 0;
  do {
    burst();
    ++n;
    dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  } while (dt < seconds);
  return static_cast<double>(n) / dt;
}

#if defined(__AVX512F__)
using Wide = V16;
#elif defined(__AVX2__) && defined(__FMA__)
using Wide = V8;
#else
using Wide = V1;
#endif

// The grain for at::parallel_for over units of `unit_bytes` of weights each: a thread is handed at least 256 KiB
// (~14 us of reading at one core's 18 GB/s), so a call is split only where the split outruns handing work to a
// worker. A worker that sleeps between calls takes ~50 us to wake (OMP_WAIT_POLICY=PASSIVE): SmolLM2 int4 with
// 2 threads and every projection split decoded at 81 tok/s against 155 on one thread; the CLI lets workers spin
// ~30 us first (GOMP_SPINCOUNT), which a decode step's back-to-back calls stay within.
inline int64_t grain_for(int64_t unit_bytes) {
  constexpr int64_t MIN_BYTES = int64_t{1} << 18;
  // no rows (0 bytes): a grain past any range, so no split and no division by zero
  return unit_bytes >= MIN_BYTES ? 1 : (MIN_BYTES + unit_bytes - 1) / std::max<int64_t>(unit_bytes, 1);
}

// Whether this is an Intel CPU: the software prefetch distances (tiles.cpp, a8.cpp) were measured per vendor
inline bool intel() {
  __builtin_cpu_init();  // a static initializer may run before libgcc's CPU data is filled in
  return __builtin_cpu_is("intel");
}

}  // namespace effml_vec
