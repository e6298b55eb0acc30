// 16-lane fp32 (and int32) vectors for sam_hf's CPU kernels, on AVX-512 or on AVX2 (staged next to each kernel by
// loader.py). The kernels are written against the names below: `v16_x` is AVX-512's `_mm512_x` (the same arguments,
// the same lanes), `vf16` / `vi16` / `mask16` are `__m512` / `__m512i` / `__mmask16`.
//
//   AVX-512 builds (-mavx512f ...): the names are those intrinsics (macros), so the instructions are the ones written.
//   AVX2 builds (-mavx2 -mfma, the kernels' `avx2` builds, loader.py): a vector is two 8-lane halves and a mask 16 bits;
//   each operation gives the same lanes as the AVX-512 one (to rounding in the reductions, whose order differs, and
//   scalef, exact for the exponents the kernels pass). Only the operations the kernels use, with the immediates they
//   use, exist here; another immediate stops the build (a static_assert).
//
// The kernels' bf16 paths stay AVX-512 only (they need AVX512-BF16): an AVX2 build compiles them on scalar helpers
// (simd.h) and never routes bf16 to them (`bf16_brgemm_usable()` says no).
#pragma once
#include <immintrin.h>

#include <cstdint>

#if defined(__AVX512F__)

#define SAM_HF_VEC16_ISA "avx512"
using vf16 = __m512;
using vi16 = __m512i;
using mask16 = __mmask16;
using mask32 = __mmask32;

#define v16_add_ps _mm512_add_ps
#define v16_sub_ps _mm512_sub_ps
#define v16_mul_ps _mm512_mul_ps
#define v16_div_ps _mm512_div_ps
#define v16_fmadd_ps _mm512_fmadd_ps
#define v16_fnmadd_ps _mm512_fnmadd_ps
#define v16_max_ps _mm512_max_ps
#define v16_min_ps _mm512_min_ps
#define v16_sqrt_ps _mm512_sqrt_ps
#define v16_set1_ps _mm512_set1_ps
#define v16_setzero_ps _mm512_setzero_ps
#define v16_loadu_ps _mm512_loadu_ps
#define v16_load_ps _mm512_load_ps
#define v16_storeu_ps _mm512_storeu_ps
#define v16_store_ps _mm512_store_ps
#define v16_maskz_loadu_ps _mm512_maskz_loadu_ps
#define v16_mask_loadu_ps _mm512_mask_loadu_ps
#define v16_mask_storeu_ps _mm512_mask_storeu_ps
#define v16_maskz_mov_ps _mm512_maskz_mov_ps
#define v16_mask_max_ps _mm512_mask_max_ps
#define v16_maskz_sub_ps _mm512_maskz_sub_ps
#define v16_cmp_ps_mask _mm512_cmp_ps_mask
#define v16_mask_cmp_ps_mask _mm512_mask_cmp_ps_mask
#define v16_reduce_add_ps _mm512_reduce_add_ps
#define v16_reduce_max_ps _mm512_reduce_max_ps
#define v16_roundscale_ps _mm512_roundscale_ps
#define v16_scalef_ps _mm512_scalef_ps
#define v16_shuffle_f32x4 _mm512_shuffle_f32x4
#define v16_permute_ps _mm512_permute_ps
#define v16_permutexvar_ps _mm512_permutexvar_ps
#define v16_permutex2var_ps _mm512_permutex2var_ps
#define v16_setr_epi32 _mm512_setr_epi32
#define v16_maskz_loadu_epi32 _mm512_maskz_loadu_epi32
#define v16_mask_i32gather_ps _mm512_mask_i32gather_ps
#define v16_cvttps_epi32 _mm512_cvttps_epi32
#define v16_storeu_si512 _mm512_storeu_si512

// 1 at dst[j] for the lanes j of `lanes` in `above`, 0 for the other lanes of `lanes` (bytes).
inline void v16_store_flags(void* dst, mask16 lanes, mask16 above) { _mm_mask_storeu_epi8(dst, lanes, _mm_maskz_set1_epi8(above, 1)); }

#elif defined(__AVX2__) && defined(__FMA__)

#define SAM_HF_VEC16_ISA "avx2"
struct vf16 {
  __m256 lo, hi;  // lanes 0-7, 8-15
};
struct vi16 {
  __m256i lo, hi;
};
using mask16 = uint16_t;
using mask32 = uint32_t;

namespace sam_hf_vec16 {
// The 8 lanes of a mask's bits as all-ones / zero 32-bit lanes.
inline __m256i lane_mask(unsigned bits) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  return _mm256_cmpeq_epi32(_mm256_and_si256(_mm256_set1_epi32(static_cast<int>(bits & 0xFF)), bit), bit);
}
inline __m256 lane_mask_ps(unsigned bits) { return _mm256_castsi256_ps(lane_mask(bits)); }
inline mask16 bits_of(__m256 lo, __m256 hi) {
  return static_cast<mask16>(_mm256_movemask_ps(lo) | (_mm256_movemask_ps(hi) << 8));
}
// a[i] for i in idx (bits 0-3) from a 16-lane table, per half.
inline __m256 lookup16(const vf16& table, __m256i idx) {
  const __m256 low = _mm256_permutevar8x32_ps(table.lo, idx), high = _mm256_permutevar8x32_ps(table.hi, idx);
  return _mm256_blendv_ps(low, high, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));  // bit 3 -> sign
}
inline __m256 lookup32(const vf16& a, __m256i idx, const vf16& b) {  // bit 4 picks b
  return _mm256_blendv_ps(lookup16(a, idx), lookup16(b, idx), _mm256_castsi256_ps(_mm256_slli_epi32(idx, 27)));
}
inline float hsum8(__m256 v) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_add_ss(x, _mm_movehdup_ps(x)));
}
inline float hmax8(__m256 v) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  return _mm_cvtss_f32(_mm_max_ss(x, _mm_movehdup_ps(x)));
}
}  // namespace sam_hf_vec16

#define SAM_HF_V16_BINARY(name, op)                                                   \
  inline vf16 v16_##name(vf16 a, vf16 b) { return {op(a.lo, b.lo), op(a.hi, b.hi)}; }
SAM_HF_V16_BINARY(add_ps, _mm256_add_ps)
SAM_HF_V16_BINARY(sub_ps, _mm256_sub_ps)
SAM_HF_V16_BINARY(mul_ps, _mm256_mul_ps)
SAM_HF_V16_BINARY(div_ps, _mm256_div_ps)
SAM_HF_V16_BINARY(max_ps, _mm256_max_ps)
SAM_HF_V16_BINARY(min_ps, _mm256_min_ps)
#undef SAM_HF_V16_BINARY

inline vf16 v16_fmadd_ps(vf16 a, vf16 b, vf16 c) { return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)}; }
inline vf16 v16_fnmadd_ps(vf16 a, vf16 b, vf16 c) { return {_mm256_fnmadd_ps(a.lo, b.lo, c.lo), _mm256_fnmadd_ps(a.hi, b.hi, c.hi)}; }
inline vf16 v16_sqrt_ps(vf16 a) { return {_mm256_sqrt_ps(a.lo), _mm256_sqrt_ps(a.hi)}; }
inline vf16 v16_set1_ps(float x) { return {_mm256_set1_ps(x), _mm256_set1_ps(x)}; }
inline vf16 v16_setzero_ps() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
inline vf16 v16_loadu_ps(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
inline vf16 v16_load_ps(const float* p) { return {_mm256_load_ps(p), _mm256_load_ps(p + 8)}; }
inline void v16_storeu_ps(float* p, vf16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
inline void v16_store_ps(float* p, vf16 a) {
  _mm256_store_ps(p, a.lo);
  _mm256_store_ps(p + 8, a.hi);
}
// masked loads read nothing outside their lanes (the tails of rows end where the rows end)
inline vf16 v16_maskz_loadu_ps(mask16 k, const float* p) {
  if (k == 0xFFFF) return v16_loadu_ps(p);
  using sam_hf_vec16::lane_mask;
  return {_mm256_maskload_ps(p, lane_mask(k)), (k >> 8) ? _mm256_maskload_ps(p + 8, lane_mask(k >> 8)) : _mm256_setzero_ps()};
}
inline vf16 v16_mask_loadu_ps(vf16 src, mask16 k, const float* p) {
  using sam_hf_vec16::lane_mask_ps;
  const vf16 x = v16_maskz_loadu_ps(k, p);
  return {_mm256_blendv_ps(src.lo, x.lo, lane_mask_ps(k)), _mm256_blendv_ps(src.hi, x.hi, lane_mask_ps(k >> 8))};
}
inline void v16_mask_storeu_ps(float* p, mask16 k, vf16 a) {
  if (k == 0xFFFF) return v16_storeu_ps(p, a);
  using sam_hf_vec16::lane_mask;
  _mm256_maskstore_ps(p, lane_mask(k), a.lo);
  if (k >> 8) _mm256_maskstore_ps(p + 8, lane_mask(k >> 8), a.hi);
}
inline vf16 v16_maskz_mov_ps(mask16 k, vf16 a) {
  using sam_hf_vec16::lane_mask_ps;
  return {_mm256_and_ps(a.lo, lane_mask_ps(k)), _mm256_and_ps(a.hi, lane_mask_ps(k >> 8))};
}
inline vf16 v16_mask_max_ps(vf16 src, mask16 k, vf16 a, vf16 b) {
  using sam_hf_vec16::lane_mask_ps;
  return {_mm256_blendv_ps(src.lo, _mm256_max_ps(a.lo, b.lo), lane_mask_ps(k)),
          _mm256_blendv_ps(src.hi, _mm256_max_ps(a.hi, b.hi), lane_mask_ps(k >> 8))};
}
inline vf16 v16_maskz_sub_ps(mask16 k, vf16 a, vf16 b) { return v16_maskz_mov_ps(k, v16_sub_ps(a, b)); }
// the comparisons the kernels make: not equal (ordered, quiet) and greater than (ordered, quiet)
inline mask16 v16_cmp_ps_mask(vf16 a, vf16 b, const int predicate) {
  if (predicate == _CMP_NEQ_OQ) return sam_hf_vec16::bits_of(_mm256_cmp_ps(a.lo, b.lo, _CMP_NEQ_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_NEQ_OQ));
  if (predicate == _CMP_GT_OQ) return sam_hf_vec16::bits_of(_mm256_cmp_ps(a.lo, b.lo, _CMP_GT_OQ), _mm256_cmp_ps(a.hi, b.hi, _CMP_GT_OQ));
  __builtin_trap();  // not reached: the kernels pass only these two
}
inline mask16 v16_mask_cmp_ps_mask(mask16 k, vf16 a, vf16 b, const int predicate) { return k & v16_cmp_ps_mask(a, b, predicate); }
inline float v16_reduce_add_ps(vf16 a) { return sam_hf_vec16::hsum8(_mm256_add_ps(a.lo, a.hi)); }
inline float v16_reduce_max_ps(vf16 a) { return sam_hf_vec16::hmax8(_mm256_max_ps(a.lo, a.hi)); }
// rounding to an integral value: to nearest (even) or down, the two modes the kernels use
inline vf16 v16_roundscale_ps(vf16 a, const int mode) {
  if (mode == (_MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC))
    return {_mm256_round_ps(a.lo, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), _mm256_round_ps(a.hi, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)};
  if (mode == (_MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC))
    return {_mm256_round_ps(a.lo, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC), _mm256_round_ps(a.hi, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC)};
  __builtin_trap();
}
// a * 2^n for integral n, n clamped to [-126, 128] (exact for a normal result; 2^128 gives inf, as scalef overflows)
inline vf16 v16_scalef_ps(vf16 a, vf16 n) {
  auto half = [](__m256 x, __m256 e) {
    e = _mm256_min_ps(_mm256_max_ps(e, _mm256_set1_ps(-126.0f)), _mm256_set1_ps(128.0f));
    const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(e), _mm256_set1_epi32(127)), 23);
    return _mm256_mul_ps(x, _mm256_castsi256_ps(bits));
  };
  return {half(a.lo, n.lo), half(a.hi, n.hi)};
}
// quarters (a[i0], a[i1], b[i2], b[i3]) for the two immediates the kernels pass (with a = b: 0x4E swaps the halves,
// 0xB1 the quarters within each half)
inline vf16 v16_shuffle_f32x4(vf16 a, vf16 b, const int imm) {
  if (imm == 0x4E) return {a.hi, b.lo};  // quarters (a2, a3, b0, b1)
  if (imm == 0xB1) return {_mm256_permute2f128_ps(a.lo, a.lo, 0x01), _mm256_permute2f128_ps(b.hi, b.hi, 0x01)};
  __builtin_trap();
}
inline vf16 v16_permute_ps(vf16 a, const int imm) {  // within each 128-bit quarter, as _mm256_permute_ps
  if (imm == 0x4E) return {_mm256_permute_ps(a.lo, 0x4E), _mm256_permute_ps(a.hi, 0x4E)};
  if (imm == 0xB1) return {_mm256_permute_ps(a.lo, 0xB1), _mm256_permute_ps(a.hi, 0xB1)};
  __builtin_trap();
}
inline vf16 v16_permutexvar_ps(vi16 idx, vf16 a) { return {sam_hf_vec16::lookup16(a, idx.lo), sam_hf_vec16::lookup16(a, idx.hi)}; }
inline vf16 v16_permutex2var_ps(vf16 a, vi16 idx, vf16 b) { return {sam_hf_vec16::lookup32(a, idx.lo, b), sam_hf_vec16::lookup32(a, idx.hi, b)}; }
inline vi16 v16_setr_epi32(int e0, int e1, int e2, int e3, int e4, int e5, int e6, int e7, int e8, int e9, int e10, int e11,
                           int e12, int e13, int e14, int e15) {
  return {_mm256_setr_epi32(e0, e1, e2, e3, e4, e5, e6, e7), _mm256_setr_epi32(e8, e9, e10, e11, e12, e13, e14, e15)};
}
inline vi16 v16_maskz_loadu_epi32(mask16 k, const void* p) {
  const int* q = static_cast<const int*>(p);
  using sam_hf_vec16::lane_mask;
  return {_mm256_maskload_epi32(q, lane_mask(k)), (k >> 8) ? _mm256_maskload_epi32(q + 8, lane_mask(k >> 8)) : _mm256_setzero_si256()};
}
// base[idx] (4-byte elements: scale is 4 at every call) in the lanes of k, src elsewhere
inline vf16 v16_mask_i32gather_ps(vf16 src, mask16 k, vi16 idx, const void* base, const int scale) {
  if (scale != 4) __builtin_trap();
  const float* table = static_cast<const float*>(base);
  using sam_hf_vec16::lane_mask_ps;
  return {_mm256_mask_i32gather_ps(src.lo, table, idx.lo, lane_mask_ps(k), 4),
          _mm256_mask_i32gather_ps(src.hi, table, idx.hi, lane_mask_ps(k >> 8), 4)};
}
inline vi16 v16_cvttps_epi32(vf16 a) { return {_mm256_cvttps_epi32(a.lo), _mm256_cvttps_epi32(a.hi)}; }
inline void v16_storeu_si512(void* p, vi16 a) {
  __m256i* q = static_cast<__m256i*>(p);
  _mm256_storeu_si256(q, a.lo);
  _mm256_storeu_si256(q + 1, a.hi);
}
inline void v16_store_flags(void* dst, mask16 lanes, mask16 above) {
  uint8_t* bytes = static_cast<uint8_t*>(dst);
  if (lanes == 0xFFFF) {  // 8 bits -> 8 bytes of 0 / 1 by table, two 8-byte stores
    static const struct Spread {
      uint64_t bytes[256];
      Spread() {
        for (int b = 0; b < 256; ++b) {
          bytes[b] = 0;
          for (int j = 0; j < 8; ++j) bytes[b] |= static_cast<uint64_t>(b >> j & 1) << (8 * j);
        }
      }
    } spread;
    const uint64_t low = spread.bytes[above & 0xFF], high = spread.bytes[above >> 8];
    __builtin_memcpy(bytes, &low, 8);
    __builtin_memcpy(bytes + 8, &high, 8);
    return;
  }
  for (int j = 0; j < 16; ++j)
    if (lanes >> j & 1) bytes[j] = static_cast<uint8_t>(above >> j & 1);
}

#else
#error "sam_hf's kernels need AVX-512 (-mavx512f) or AVX2 with FMA (-mavx2 -mfma)"
#endif
