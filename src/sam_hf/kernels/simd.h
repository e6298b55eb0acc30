// Helpers shared by sam_hf's CPU kernels on 16-lane vectors (vec16.h: AVX-512, or AVX2 in two halves), staged next
// to each kernel's source by loader.py.
#pragma once
#include <c10/util/BFloat16.h>
#include <immintrin.h>

#include <cstdint>

#include "vec16.h"

namespace sam_hf_simd {

// exp of 16 floats: 2^n * p(r) with x = n ln2 + r, |r| <= ln2 / 2, Taylor polynomial of degree 6
// (relative error ~2e-7, far below bf16 rounding); x below -87 gives ~0 instead of a denormal.
inline vf16 exp16(vf16 x) {
  x = v16_max_ps(x, v16_set1_ps(-87.0f));
  const vf16 n = v16_roundscale_ps(v16_mul_ps(x, v16_set1_ps(1.44269504088896341f)),
                                   _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  vf16 r = v16_fnmadd_ps(n, v16_set1_ps(0.693359375f), x);  // ln2 split in two for precision
  r = v16_fnmadd_ps(n, v16_set1_ps(-2.12194440e-4f), r);
  vf16 p = v16_set1_ps(1.0f / 720.0f);
  p = v16_fmadd_ps(p, r, v16_set1_ps(1.0f / 120.0f));
  p = v16_fmadd_ps(p, r, v16_set1_ps(1.0f / 24.0f));
  p = v16_fmadd_ps(p, r, v16_set1_ps(1.0f / 6.0f));
  p = v16_fmadd_ps(p, r, v16_set1_ps(0.5f));
  p = v16_fmadd_ps(p, r, v16_set1_ps(1.0f));
  p = v16_fmadd_ps(p, r, v16_set1_ps(1.0f));
  return v16_scalef_ps(p, n);
}

inline mask16 lanes_below(int64_t count) {  // the first min(count, 16) lanes
  return count >= 16 ? static_cast<mask16>(0xFFFF) : static_cast<mask16>((1u << count) - 1);
}
#if defined(__AVX512F__)
// The 16 x 16 block at src (row stride lds) transposed into dst (row stride ldd).
inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
  vf16 r[16], t[16];
  for (int i = 0; i < 16; ++i) r[i] = _mm512_loadu_ps(src + i * lds);
  for (int i = 0; i < 16; i += 2) {  // pairs of rows, 32-bit lanes interleaved
    t[i] = _mm512_unpacklo_ps(r[i], r[i + 1]);
    t[i + 1] = _mm512_unpackhi_ps(r[i], r[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // quads of rows, 64-bit lanes
    r[i] = _mm512_shuffle_ps(t[i], t[i + 2], 0x44);
    r[i + 1] = _mm512_shuffle_ps(t[i], t[i + 2], 0xEE);
    r[i + 2] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0x44);
    r[i + 3] = _mm512_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {  // 128-bit lanes across quads
    t[i] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_f32x4(r[i], r[i + 4], 0xDD);
    t[i + 8] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_f32x4(r[i + 8], r[i + 12], 0xDD);
  }
  for (int i = 0; i < 8; ++i) {
    _mm512_storeu_ps(dst + i * ldd, _mm512_shuffle_f32x4(t[i], t[i + 8], 0x88));
    _mm512_storeu_ps(dst + (i + 8) * ldd, _mm512_shuffle_f32x4(t[i], t[i + 8], 0xDD));
  }
}
#else
// The 16 x 16 block at src (row stride lds) transposed into dst (row stride ldd): four 8 x 8 transposes.
inline void transpose_tile(const float* src, int64_t lds, float* dst, int64_t ldd) {
  for (int i0 = 0; i0 < 16; i0 += 8)
    for (int j0 = 0; j0 < 16; j0 += 8) {
      __m256 r[8], t[8];
      for (int i = 0; i < 8; ++i) r[i] = _mm256_loadu_ps(src + (i0 + i) * lds + j0);
      for (int i = 0; i < 8; i += 2) {  // pairs of rows, 32-bit lanes interleaved
        t[i] = _mm256_unpacklo_ps(r[i], r[i + 1]);
        t[i + 1] = _mm256_unpackhi_ps(r[i], r[i + 1]);
      }
      for (int i = 0; i < 8; i += 4) {  // quads of rows, 64-bit lanes
        r[i] = _mm256_shuffle_ps(t[i], t[i + 2], 0x44);
        r[i + 1] = _mm256_shuffle_ps(t[i], t[i + 2], 0xEE);
        r[i + 2] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0x44);
        r[i + 3] = _mm256_shuffle_ps(t[i + 1], t[i + 3], 0xEE);
      }
      for (int i = 0; i < 4; ++i) {  // 128-bit lanes across the quads
        _mm256_storeu_ps(dst + (j0 + i) * ldd + i0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x20));
        _mm256_storeu_ps(dst + (j0 + i + 4) * ldd + i0, _mm256_permute2f128_ps(r[i], r[i + 4], 0x31));
      }
    }
}
#endif

// dst (cols x rows, row stride ldd) = src (rows x cols, row stride lds) transposed, for any 32-bit elements (floats,
// or pairs of bf16 as uint32_t: the bits are moved, never converted).
template <typename T>
inline void transpose(const T* src, int64_t lds, int64_t rows, int64_t cols, T* dst, int64_t ldd) {
  static_assert(sizeof(T) == 4, "transpose moves 32-bit elements");
  const int64_t full_rows = rows / 16 * 16, full_cols = cols / 16 * 16;
  for (int64_t r0 = 0; r0 < full_rows; r0 += 16)
    for (int64_t c0 = 0; c0 < full_cols; c0 += 16)
      transpose_tile(reinterpret_cast<const float*>(src + r0 * lds + c0), lds, reinterpret_cast<float*>(dst + c0 * ldd + r0), ldd);
  for (int64_t r = 0; r < rows; ++r)  // the edges
    for (int64_t c = r < full_rows ? full_cols : 0; c < cols; ++c) dst[c * ldd + r] = src[r * lds + c];
}

// bf16 by AVX512-BF16's conversion (VCVTNEPS2BF16): to nearest, ties to even, as c10::BFloat16, except that fp32
// denormals (|x| < 1.2e-38) become +-0 and a NaN becomes the quiet NaN 0x7FC0 (sign kept). The kernels are compiled
// with -mavx512bf16 and reach these only on their bf16 paths, taken where `bf16_brgemm_usable()` (brgemm.h: the CPU
// has AVX512-BF16 and oneDNN's bf16 brgemm runs; AVX-512 builds only). One instruction against about nine of integer rounding: the bf16
// decoder 0.1 ms per prompt faster per attention pass and 0.07 in the upscaling (ViT-B, 2 threads, same-process A/B).

#if defined(__AVX512F__)
// The first lanes of x rounded to bf16, stored as 16-bit values at dst.
inline void store_bf16(uint16_t* dst, mask16 lanes, vf16 x) {
  _mm256_mask_storeu_epi16(dst, lanes, reinterpret_cast<__m256i>(_mm512_cvtneps_pbh(x)));
}

// 16 bf16 values (the first `lanes`, the others 0) as floats (exact).
inline vf16 load_bf16(const uint16_t* src, mask16 lanes) {
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(lanes, src)), 16));
}

// 16 pairs (u_i, v_i) rounded to bf16, one 32-bit word each (u_i in the low half): the VNNI layout of two rows.
inline vi16 bf16_pairs(vf16 u, vf16 v) {
  const vi16 both = reinterpret_cast<vi16>(_mm512_cvtne2ps_pbh(v, u));  // words 0-15: u, 16-31: v
  const vi16 order = _mm512_set_epi16(31, 15, 30, 14, 29, 13, 28, 12, 27, 11, 26, 10, 25, 9, 24, 8,
                                         23, 7, 22, 6, 21, 5, 20, 4, 19, 3, 18, 2, 17, 1, 16, 0);
  return _mm512_permutexvar_epi16(order, both);
}

#else  // AVX2 builds: bf16 never routed here (`bf16_brgemm_usable()` says no); correct, scalar, for the build alone

inline void store_bf16(uint16_t* dst, mask16 lanes, vf16 x) {
  alignas(32) float values[16];
  v16_store_ps(values, x);
  for (int j = 0; j < 16; ++j)
    if (lanes >> j & 1) dst[j] = c10::BFloat16(values[j]).x;
}

inline vf16 load_bf16(const uint16_t* src, mask16 lanes) {
  alignas(32) float values[16];
  for (int j = 0; j < 16; ++j) values[j] = (lanes >> j & 1) ? static_cast<float>(c10::BFloat16(src[j], c10::BFloat16::from_bits())) : 0.0f;
  return v16_load_ps(values);
}

inline vi16 bf16_pairs(vf16 u, vf16 v) {
  alignas(32) float first[16], second[16];
  alignas(32) uint32_t words[16];
  v16_store_ps(first, u);
  v16_store_ps(second, v);
  for (int j = 0; j < 16; ++j)
    words[j] = static_cast<uint32_t>(c10::BFloat16(first[j]).x) | (static_cast<uint32_t>(c10::BFloat16(second[j]).x) << 16);
  return {_mm256_load_si256(reinterpret_cast<const __m256i*>(words)), _mm256_load_si256(reinterpret_cast<const __m256i*>(words + 8))};
}
#endif

// 16 values of either dtype as floats, and floats stored as either (bf16: rounded as above): the first `lanes`.
inline vf16 load16(const float* src, mask16 lanes) { return v16_maskz_loadu_ps(lanes, src); }
inline vf16 load16(const c10::BFloat16* src, mask16 lanes) { return load_bf16(reinterpret_cast<const uint16_t*>(src), lanes); }
inline void store16(float* dst, mask16 lanes, vf16 x) { v16_mask_storeu_ps(dst, lanes, x); }
inline void store16(c10::BFloat16* dst, mask16 lanes, vf16 x) { store_bf16(reinterpret_cast<uint16_t*>(dst), lanes, x); }

}  // namespace sam_hf_simd
