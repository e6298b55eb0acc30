// The mask decoder's two attentions over the image tokens in fp32 or bf16, each one streaming pass over the HW image
// tokens of a prompt, in blocks of rows that stay in the L2 cache (x86 CPUs with AVX-512 or AVX2; bf16 where oneDNN's bf16
// brgemm runs, AVX512-BF16):
//
//   image_to_tokens: out = LayerNorm(x + softmax_t(a W + b) V)   per image token x (a row of the logit source
//     a: the image side's shared query projection, or x + pe), softmax over each head's T tokens, V the
//     prompt's token values with the output projection folded in. Logits, weights and the update never
//     leave the cache; the LayerNorm is applied to each row while it is there.
//   tokens_to_image: mixed = softmax_x(Q (x + pe)) x   for a prompt's M folded query rows Q against all its
//     image tokens, flash-style (a running max and sum per row, nothing of size M x HW in memory).
//
// The products are ATen's brgemm (oneDNN's ukernel: in fp32 about 90-115 GFLOP/s on one Zen 4 core for these
// shapes against 60-65 for MKL's sgemm there); softmax, LayerNorm and the additions are 16-lane vector code here (vec16.h), in fp32.
// In bf16 the image tokens (residual, output, positional encoding) are bf16 in memory and the products take bf16
// operands (the image tokens as they are; the attention weights and the small per-prompt matrices rounded once,
// in VNNI form where they are the right operand) with fp32 sums; logits, softmax, LayerNorm and the attention
// outputs stay fp32, and each new image token is rounded to bf16 once, as it is stored.
// Built on first use by sam_hf.kernels.loader; inference only (no autograd).
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <immintrin.h>

#include "brgemm.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

using at::BFloat16;
using sam_hf_brgemm::bf16_brgemm_usable;
using sam_hf_brgemm::brgemm_usable;
using sam_hf_brgemm::check_dense;
using sam_hf_brgemm::check_float;
using sam_hf_brgemm::gemm;
using sam_hf_brgemm::pack_vnni;
using sam_hf_brgemm::pack_vnni_transposed;
using sam_hf_brgemm::release;
using sam_hf_brgemm::round_rows;
using sam_hf_simd::exp16;
using sam_hf_simd::lanes_below;
using sam_hf_simd::load16;
using sam_hf_simd::store16;
using sam_hf_simd::transpose;

namespace {

// Image tokens per block: for ViT-B (C = 256, h*T = 56) a block's rows, logits, update and the next attention's
// scratch take about 500 KB in fp32, inside a Zen 4 core's 1 MB L2. Blocks of 128 against 64 (session 14, ViT-B
// decoder, 64 prompts, 2 threads, same process): 7.37 vs 7.49 ms per prompt in bf16 (fewer brgemm calls and
// per-block packing), 12.59 vs 12.73 in fp32.
constexpr int64_t kRows = 128;
static_assert(kRows % 16 == 0, "the per-head form fills whole tiles of 16 rows");
constexpr float kInf = std::numeric_limits<float>::infinity();

template <typename T>
constexpr bool kBf16 = std::is_same_v<T, BFloat16>;

// dst[i] = x[i] + y[i] for n values (in bf16: summed in fp32, rounded once).
template <typename T>
inline void add_rows(const T* x, const T* y, T* dst, int64_t n) {
  for (int64_t c = 0; c < n; c += 16) {
    const mask16 lanes = lanes_below(n - c);
    store16(dst + c, lanes, v16_add_ps(load16(x + c, lanes), load16(y + c, lanes)));
  }
}

inline float reduce(vf16 v) { return v16_reduce_add_ps(v); }

// Softmax over `tokens` vectors of logits x + t * stride (t = 0 ..), lane by lane on `lanes`, in place, after adding
// bias + t * stride when given (-inf masks a token: its weight is exactly zero).
void softmax_lanes(float* x, int64_t stride, int64_t tokens, mask16 lanes, const float* bias) {
  vf16 top = v16_set1_ps(-kInf);
  for (int64_t t = 0; t < tokens; ++t) {
    vf16 v = v16_maskz_loadu_ps(lanes, x + t * stride);
    if (bias != nullptr) {
      v = v16_add_ps(v, v16_maskz_loadu_ps(lanes, bias + t * stride));
      v16_mask_storeu_ps(x + t * stride, lanes, v);
    }
    top = v16_max_ps(top, v);
  }
  vf16 total = v16_setzero_ps();
  for (int64_t t = 0; t < tokens; ++t) {
    const vf16 v = v16_maskz_loadu_ps(lanes, x + t * stride);
    const mask16 live = v16_cmp_ps_mask(v, v16_set1_ps(-kInf), _CMP_NEQ_OQ);
    const vf16 e = v16_maskz_mov_ps(live, exp16(v16_sub_ps(v, top)));
    v16_mask_storeu_ps(x + t * stride, lanes, e);
    total = v16_add_ps(total, e);
  }
  const vf16 inverse = v16_div_ps(v16_set1_ps(1.0f), total);
  for (int64_t t = 0; t < tokens; ++t)
    v16_mask_storeu_ps(x + t * stride, lanes, v16_mul_ps(v16_maskz_loadu_ps(lanes, x + t * stride), inverse));
}

// One row of logits laid out (t, head): softmax over t for every head, in place, after adding `bias`.
// Any number of heads; `softmax_over_tokens_fast` is the fast form.
void softmax_over_tokens(float* row, const float* bias, int64_t tokens, int64_t heads) {
  for (int64_t h0 = 0; h0 < heads; h0 += 16) softmax_lanes(row + h0, heads, tokens, lanes_below(heads - h0), bias + h0);
}

// Swaps lanes i and i ^ d of a 16-lane vector (d = 1, 2, 4 or 8).
inline vf16 swap_lanes(vf16 v, int64_t d) {
  switch (d) {
    case 8: return v16_shuffle_f32x4(v, v, 0x4E);
    case 4: return v16_shuffle_f32x4(v, v, 0xB1);
    case 2: return v16_permute_ps(v, 0x4E);
    default: return v16_permute_ps(v, 0xB1);
  }
}

// The same for a head count that divides 16 (SAM's decoder: 8) and at most 16 * kMaxVectors logits, the row held
// in registers: each 16-lane vector holds 16 / heads tokens' heads, folded together for the max and the sum.
constexpr int64_t kMaxVectors = 16;
void softmax_over_tokens_fast(float* row, const vf16* bias, int64_t n, int64_t heads) {
  const int64_t vectors = (n + 15) / 16;
  const vf16 minus_inf = v16_set1_ps(-kInf);
  vf16 v[kMaxVectors];
  vf16 top = minus_inf;
  for (int64_t i = 0; i < vectors; ++i) {
    v[i] = v16_add_ps(v16_mask_loadu_ps(minus_inf, lanes_below(n - 16 * i), row + 16 * i), bias[i]);  // a missing token is -inf
    top = v16_max_ps(top, v[i]);
  }
  for (int64_t d = heads; d < 16; d *= 2) top = v16_max_ps(top, swap_lanes(top, d));  // every lane: its head's max
  vf16 total = v16_setzero_ps();
  for (int64_t i = 0; i < vectors; ++i) {
    const mask16 live = v16_cmp_ps_mask(v[i], minus_inf, _CMP_NEQ_OQ);
    v[i] = v16_maskz_mov_ps(live, exp16(v16_sub_ps(v[i], top)));
    total = v16_add_ps(total, v[i]);
  }
  for (int64_t d = heads; d < 16; d *= 2) total = v16_add_ps(total, swap_lanes(total, d));
  const vf16 inverse = v16_div_ps(v16_set1_ps(1.0f), total);
  for (int64_t i = 0; i < vectors; ++i) v16_mask_storeu_ps(row + 16 * i, lanes_below(n - 16 * i), v16_mul_ps(v[i], inverse));
}

// Where a tile's logits go: row t * t_stride + h * h_stride for token t and head h, rows `ld` floats apart (the tile's
// 16 lanes at the row's start).
struct TileRows {
  int64_t t_stride, h_stride, ld;
};

// Logits of one tile of 16 image tokens against per-head keys, a chunk of kTokens tokens t0.. at a time: tile (D, 16),
// D channel vectors of the 16 image tokens; keys (T, D), head h on columns [h*w, (h+1)*w); the row of (t, h) in
// `out` (see TileRows) = bias (t, h) (zero without bias) + a_h . k_(t,h) for the 16 image tokens. Only head h's w
// channels meet head h's keys.
template <int kTokens>
void head_logits_chunk(const float* tile, const float* keys, const float* bias, int64_t t0, int64_t heads, int64_t depth, float* out,
                       TileRows layout) {
  const int64_t width = depth / heads;
  for (int64_t h = 0; h < heads; ++h) {
    vf16 acc[kTokens];
    for (int t = 0; t < kTokens; ++t) acc[t] = bias == nullptr ? v16_setzero_ps() : v16_set1_ps(bias[(t0 + t) * heads + h]);
    for (int64_t c = h * width; c < (h + 1) * width; ++c) {
      const vf16 a = v16_loadu_ps(tile + c * 16);
      for (int t = 0; t < kTokens; ++t) acc[t] = v16_fmadd_ps(a, v16_set1_ps(keys[(t0 + t) * depth + c]), acc[t]);
    }
    for (int t = 0; t < kTokens; ++t) v16_storeu_ps(out + ((t0 + t) * layout.t_stride + h * layout.h_stride) * layout.ld, acc[t]);
  }
}

// The logits of a tile for all T tokens, chunks of up to 8 held in registers.
void head_logits(const float* tile, const float* keys, const float* bias, int64_t tokens, int64_t heads, int64_t depth, float* out,
                 TileRows layout) {
  for (int64_t t0 = 0; t0 < tokens; t0 += 8) {
    switch (std::min<int64_t>(8, tokens - t0)) {
      case 8: head_logits_chunk<8>(tile, keys, bias, t0, heads, depth, out, layout); break;
      case 7: head_logits_chunk<7>(tile, keys, bias, t0, heads, depth, out, layout); break;
      case 6: head_logits_chunk<6>(tile, keys, bias, t0, heads, depth, out, layout); break;
      case 5: head_logits_chunk<5>(tile, keys, bias, t0, heads, depth, out, layout); break;
      case 4: head_logits_chunk<4>(tile, keys, bias, t0, heads, depth, out, layout); break;
      case 3: head_logits_chunk<3>(tile, keys, bias, t0, heads, depth, out, layout); break;
      case 2: head_logits_chunk<2>(tile, keys, bias, t0, heads, depth, out, layout); break;
      default: head_logits_chunk<1>(tile, keys, bias, t0, heads, depth, out, layout);
    }
  }
}

// The logits of a tile, rows (t, head), then each head's softmax over its T tokens, lane by lane (-inf logits get
// weight exactly zero) -> out (T*heads, 16).
void head_softmax_tile(const float* tile, const float* keys, const float* bias, int64_t tokens, int64_t heads, int64_t depth, float* out) {
  head_logits(tile, keys, bias, tokens, heads, depth, out, TileRows{heads, 1, 16});
  for (int64_t h = 0; h < heads; ++h) softmax_lanes(out + h * 16, heads * 16, tokens, 0xFFFF, nullptr);
}

// out = LayerNorm(z + residual) * weight + bias over one row of n channels; z is overwritten. residual and out: fp32
// or bf16 (read as floats, the result rounded once). stats, when given: the row's mean and 1 / std.
template <typename T>
void residual_layer_norm(float* z, const T* residual, const float* weight, const float* bias, float eps, T* out, int64_t n,
                         float* stats) {
  vf16 sum = v16_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const mask16 lanes = lanes_below(n - c);
    const vf16 v = v16_add_ps(v16_maskz_loadu_ps(lanes, z + c), load16(residual + c, lanes));
    v16_mask_storeu_ps(z + c, lanes, v);
    sum = v16_add_ps(sum, v);
  }
  const float mean = reduce(sum) / static_cast<float>(n);
  const vf16 vmean = v16_set1_ps(mean);
  vf16 squares = v16_setzero_ps();
  for (int64_t c = 0; c < n; c += 16) {
    const mask16 lanes = lanes_below(n - c);
    const vf16 d = v16_maskz_sub_ps(lanes, v16_maskz_loadu_ps(lanes, z + c), vmean);
    squares = v16_fmadd_ps(d, d, squares);
  }
  const float inverse_std = 1.0f / std::sqrt(reduce(squares) / static_cast<float>(n) + eps);
  if (stats != nullptr) {
    stats[0] = mean;
    stats[1] = inverse_std;
  }
  const vf16 scale = v16_set1_ps(inverse_std);
  for (int64_t c = 0; c < n; c += 16) {
    const mask16 lanes = lanes_below(n - c);
    const vf16 d = v16_mul_ps(v16_sub_ps(v16_maskz_loadu_ps(lanes, z + c), vmean), scale);
    const vf16 y = v16_fmadd_ps(d, v16_maskz_loadu_ps(lanes, weight + c), v16_maskz_loadu_ps(lanes, bias + c));
    store16(out + c, lanes, y);
  }
}

// The sum of kVecs vectors (a power of two) as a tree: log2(kVecs) dependent additions, not kVecs.
template <int kVecs>
inline vf16 tree_sum(vf16* v) {
  if constexpr (kVecs == 1) {
    return v[0];
  } else {
    vf16 half[kVecs / 2];
    for (int i = 0; i < kVecs / 2; ++i) half[i] = v16_add_ps(v[i], v[i + kVecs / 2]);
    return tree_sum<kVecs / 2>(half);
  }
}

// The same for n = 16 * kVecs channels, the row held in registers (the weight and bias preloaded by the caller). The
// sums run as trees: a row's chain of dependent operations, not the instruction count, bounds a LayerNorm this small.
template <int kVecs, typename T>
void residual_layer_norm_fixed(const float* z, const T* residual, const vf16* weight, const vf16* bias, float eps, T* out,
                               float* stats) {
  vf16 v[kVecs], terms[kVecs];
  for (int i = 0; i < kVecs; ++i) terms[i] = v[i] = v16_add_ps(v16_loadu_ps(z + 16 * i), load16(residual + 16 * i, 0xFFFF));
  const float mean_value = reduce(tree_sum<kVecs>(terms)) / (16.0f * kVecs);
  const vf16 mean = v16_set1_ps(mean_value);
  for (int i = 0; i < kVecs; ++i) {
    v[i] = v16_sub_ps(v[i], mean);
    terms[i] = v16_mul_ps(v[i], v[i]);
  }
  const float inverse_std = 1.0f / std::sqrt(reduce(tree_sum<kVecs>(terms)) / (16.0f * kVecs) + eps);
  if (stats != nullptr) {
    stats[0] = mean_value;
    stats[1] = inverse_std;
  }
  const vf16 scale = v16_set1_ps(inverse_std);
  for (int i = 0; i < kVecs; ++i) store16(out + 16 * i, 0xFFFF, v16_fmadd_ps(v16_mul_ps(v[i], scale), weight[i], bias[i]));
}

template <int kVecs, typename T>
void residual_layer_norm_rows_fixed(float* z, const T* residual, const float* weight, const float* bias, float eps, T* out,
                                    int64_t rows, float* stats) {
  vf16 w[kVecs], b[kVecs];
  for (int i = 0; i < kVecs; ++i) {
    w[i] = v16_loadu_ps(weight + 16 * i);
    b[i] = v16_loadu_ps(bias + 16 * i);
  }
  for (int64_t r = 0; r < rows; ++r)
    residual_layer_norm_fixed<kVecs, T>(z + r * 16 * kVecs, residual + r * 16 * kVecs, w, b, eps, out + r * 16 * kVecs,
                                        stats == nullptr ? nullptr : stats + 2 * r);
}

// LayerNorm(z + residual) of `rows` rows of n channels into out, and each row's mean and 1 / std into stats (rows, 2)
// when given; register-resident for n = 32, 64, 128, 256 (SAM's decoder: 256).
template <typename T>
void residual_layer_norm_rows(float* z, const T* residual, const float* weight, const float* bias, float eps, T* out,
                              int64_t rows, int64_t n, float* stats) {
  switch (n) {
    case 256: return residual_layer_norm_rows_fixed<16, T>(z, residual, weight, bias, eps, out, rows, stats);
    case 128: return residual_layer_norm_rows_fixed<8, T>(z, residual, weight, bias, eps, out, rows, stats);
    case 64: return residual_layer_norm_rows_fixed<4, T>(z, residual, weight, bias, eps, out, rows, stats);
    case 32: return residual_layer_norm_rows_fixed<2, T>(z, residual, weight, bias, eps, out, rows, stats);
    default:
      for (int64_t r = 0; r < rows; ++r)
        residual_layer_norm(z + r * n, residual + r * n, weight, bias, eps, out + r * n, n, stats == nullptr ? nullptr : stats + 2 * r);
  }
}

// Running state of one prompt's query rows over a range of image tokens: max and sum of exp per row, weighted sums.
struct Partial {
  std::vector<float> top, total, acc;  // (M), (M), (M, C)
  Partial(int64_t m, int64_t c) : top(m, -kInf), total(m, 0.0f), acc(m * c, 0.0f) {}
};

// Flash-style attention of M query rows q (M, K) to blocks of image tokens: logits q . (k_x + pe_x) (pe optional),
// a running max and sum per row, and the weighted sum of the value rows v_x (width V). Holds its scratch (one per
// thread). Image tokens T: fp32, or bf16 (K even; then the queries, the weights and the block's values are the bf16
// products' operands, the queries and values in VNNI form).
template <typename T>
class Attender {
 public:
  Attender(int64_t m, int64_t key_width, int64_t value_width)
      : m_(m), k_(key_width), v_(value_width), queries_(key_width * m), y_(kRows * key_width), logits_(kRows * m), probs_(m * kRows),
        rounded_probs_(kBf16<T> ? m * (kRows + 1) : 0), values_(kBf16<T> ? (kRows + 1) * value_width : 0) {}

  void set_queries(const float* q, int64_t ldq) {  // (M, K), row stride ldq -> its transpose, the product's right operand
    if constexpr (kBf16<T>) {
      pack_vnni_transposed(q, m_, k_, ldq, queries_.data());
    } else {
      for (int64_t i = 0; i < m_; ++i)
        for (int64_t c = 0; c < k_; ++c) queries_[c * m_ + i] = q[i * ldq + c];
    }
  }

  // `rows` image tokens: keys (rows, K) with row stride ldk, their positional encodings pe (rows, K) contiguous or
  // null, values (rows, V) with row stride ldv.
  void add_block(const T* keys, int64_t ldk, const T* pe, const T* values, int64_t ldv, int64_t rows, Partial& state) {
    if (pe != nullptr) {
      for (int64_t r = 0; r < rows; ++r) add_rows(keys + r * ldk, pe + r * k_, y_.data() + r * k_, k_);
      keys = y_.data();
      ldk = k_;
    }
    gemm(rows, m_, k_, keys, ldk, queries_.data(), m_, logits_.data(), m_, false);  // (rows, M)
    for (int64_t i0 = 0; i0 < m_; i0 += 16) {
      const mask16 lanes = lanes_below(m_ - i0);
      vf16 top = v16_maskz_loadu_ps(lanes, state.top.data() + i0);
      const vf16 old = top;
      for (int64_t r = 0; r < rows; ++r) top = v16_mask_max_ps(top, lanes, top, v16_maskz_loadu_ps(lanes, logits_.data() + r * m_ + i0));
      const vf16 factor = exp16(v16_sub_ps(old, top));  // 0 (to rounding) on the first block
      vf16 total = v16_mul_ps(v16_maskz_loadu_ps(lanes, state.total.data() + i0), factor);
      for (int64_t r = 0; r < rows; ++r) {
        float* l = logits_.data() + r * m_ + i0;
        const vf16 e = exp16(v16_sub_ps(v16_maskz_loadu_ps(lanes, l), top));
        v16_mask_storeu_ps(l, lanes, e);
        total = v16_add_ps(total, e);
      }
      v16_mask_storeu_ps(state.total.data() + i0, lanes, total);
      alignas(64) float scales[16], olds[16], tops[16];
      v16_store_ps(scales, factor);
      v16_store_ps(olds, old);
      v16_store_ps(tops, top);
      v16_mask_storeu_ps(state.top.data() + i0, lanes, top);
      for (int64_t i = i0; i < std::min(m_, i0 + 16); ++i) {
        if (tops[i - i0] == olds[i - i0]) continue;  // this row's max did not move
        float* acc = state.acc.data() + i * v_;
        const vf16 scale = v16_set1_ps(olds[i - i0] == -kInf ? 0.0f : scales[i - i0]);
        for (int64_t c = 0; c < v_; c += 16) {
          const mask16 cl = lanes_below(v_ - c);
          v16_mask_storeu_ps(acc + c, cl, v16_mul_ps(v16_maskz_loadu_ps(cl, acc + c), scale));
        }
      }
    }
    transpose(logits_.data(), m_, rows, m_, probs_.data(), rows);  // (M, rows)
    if constexpr (kBf16<T>) {  // K = rows padded to even: a zero column of weights meets a zero row of values
      const int64_t depth = rows + (rows & 1);
      round_rows(probs_.data(), m_, rows, rows, rounded_probs_.data(), depth);
      pack_vnni(values, rows, v_, ldv, values_.data());
      gemm(m_, v_, depth, rounded_probs_.data(), depth, values_.data(), v_, state.acc.data(), v_, true);
    } else {
      gemm(m_, v_, rows, probs_.data(), rows, values, ldv, state.acc.data(), v_, true);
    }
  }

 private:
  int64_t m_, k_, v_;
  std::vector<T> queries_, y_;
  std::vector<float> logits_, probs_;
  std::vector<BFloat16> rounded_probs_, values_;  // bf16 only
};

// out row t (16 values, row stride ldo) += sum_r p[t][r] values[r] over `rows` rows of 16 values (stride ldv), for
// kCount rows t of weights p (row stride ldp), the sums held in registers.
template <int kCount>
void weighted_rows_chunk(const float* p, int64_t ldp, const float* values, int64_t ldv, int64_t rows, float* out, int64_t ldo) {
  vf16 acc[kCount];
  for (int t = 0; t < kCount; ++t) acc[t] = v16_loadu_ps(out + t * ldo);
  for (int64_t r = 0; r < rows; ++r) {
    const vf16 v = v16_loadu_ps(values + r * ldv);
    for (int t = 0; t < kCount; ++t) acc[t] = v16_fmadd_ps(v16_set1_ps(p[t * ldp + r]), v, acc[t]);
  }
  for (int t = 0; t < kCount; ++t) v16_storeu_ps(out + t * ldo, acc[t]);
}

void weighted_rows(int64_t count, const float* p, int64_t ldp, const float* values, int64_t ldv, int64_t rows, float* out, int64_t ldo) {
  switch (count) {
    case 8: return weighted_rows_chunk<8>(p, ldp, values, ldv, rows, out, ldo);
    case 7: return weighted_rows_chunk<7>(p, ldp, values, ldv, rows, out, ldo);
    case 6: return weighted_rows_chunk<6>(p, ldp, values, ldv, rows, out, ldo);
    case 5: return weighted_rows_chunk<5>(p, ldp, values, ldv, rows, out, ldo);
    case 4: return weighted_rows_chunk<4>(p, ldp, values, ldv, rows, out, ldo);
    case 3: return weighted_rows_chunk<3>(p, ldp, values, ldv, rows, out, ldo);
    case 2: return weighted_rows_chunk<2>(p, ldp, values, ldv, rows, out, ldo);
    default: return weighted_rows_chunk<1>(p, ldp, values, ldv, rows, out, ldo);
  }
}

// The first pass's next attention (tokens -> the new image tokens) in factored form, where the pass's residual is an
// image side x shared by the prompts. Each new image token is y = r (z - mu) * g + b with z = x + sum_j u_j v_j (the
// pass's softmax weights u over its N = T*heads value rows v_j, its LayerNorm's mean mu and 1 / std r, weight g, bias b),
// so for the next attention's query row i = (h, t) (q_i: its head's query, Q_i = q_i W_k,h folded over C channels):
//   logit_i(y + pe) = r (q_i . A_h + u . G_i - mu c_i) + q_i . E_h  (+ Q_i . b, the same for every image token)
// with A = (x * g) W_k^T and E = pe W_k^T shared (per-head columns, D = C' wide), G_i,j = v_j . (g * Q_i), c_i = Q_i . g.
// Its weighted sums, with p the softmax weights over image tokens, are kept as the factors of the value projection:
//   sum p r B_h (B = (x * g) W_v^T, shared), sum p r [u, mu] (N + 1 wide)
// from which the caller forms sum p y W_v,h^T exactly (`modeling/factored_passes.py`, `next_attention_output`). Per
// image token that is about (2 w + 2 N) multiply-adds per query row instead of 2 C against the formed tokens (ViT-B:
// 144 vs 512).
// The factors, logits, softmax and sums are fp32; next to bf16 image tokens (T) the two products with the weights u
// (u . G and sum p r [u, mu]) take bf16 operands, rounded once, as the formed form's products do.
template <typename T>
class FactoredAttender {
 public:
  FactoredAttender(int64_t tokens, int64_t heads, int64_t depth, int64_t rank)
      : t_(tokens), heads_(heads), d_(depth), w_(depth / heads), n_(rank), m_(tokens * heads), width_(depth / heads + rank + 1),
        logits_(m_ * kRows), positions_(m_ * kRows), mixed_(m_ * kRows), joined_(kRows * (rank + 1)), joined_t_((rank + 1) * kRows),
        scale_(kRows), mixing_b_(kBf16<T> ? m_ * even(rank + 1) : 0), joined_b_(kBf16<T> ? even(kRows) * (rank + 1) : 0),
        joined_t_b_(kBf16<T> ? even(rank + 1) * kRows : 0), weights_b_(kBf16<T> ? m_ * even(kRows) : 0) {}

  // This prompt's queries q (T, D) and [G | -c] (M, N + 1), rows (h, t).
  void set_prompt(const float* queries, const float* mixing) {
    queries_ = queries;
    mixing_ = mixing;
    if constexpr (kBf16<T>) round_rows(mixing, m_, n_ + 1, n_ + 1, mixing_b_.data(), even(n_ + 1));
  }

  // One block of `rows` image tokens: their tiles of A and E ((ceil(rows/16), D, 16), as `token_tiles`), rows of B
  // (rows, D), the pass's softmax weights u (rows, N) and LayerNorm statistics (rows, 2: mean, 1 / std).
  void add_block(const float* a_tiles, const float* pe_tiles, const float* values, const float* weights, const float* stats, int64_t rows,
                 Partial& state) {
    const TileRows layout{1, t_, kRows};  // rows (h, t) of the block's logits, a column per image token
    for (int64_t tile = 0; tile * 16 < rows; ++tile) {
      head_logits(a_tiles + tile * d_ * 16, queries_, nullptr, t_, heads_, d_, logits_.data() + tile * 16, layout);
      head_logits(pe_tiles + tile * d_ * 16, queries_, nullptr, t_, heads_, d_, positions_.data() + tile * 16, layout);
    }
    const int64_t k = n_ + 1;
    for (int64_t r = 0; r < rows; ++r) {  // [u, mu] per image token, and 1 / std
      std::copy(weights + r * n_, weights + (r + 1) * n_, joined_.data() + r * k);
      joined_[r * k + n_] = stats[2 * r];
      scale_[r] = stats[2 * r + 1];
    }
    if constexpr (kBf16<T>) {  // u . G_i - mu c_i: (M, rows), K = N + 1 padded to even
      pack_vnni(joined_.data(), rows, k, k, joined_b_.data());  // for the sums below: (rows, N + 1), K = rows
      transpose(joined_.data(), k, rows, k, joined_t_.data(), kRows);  // (N + 1, rows)
      pack_vnni(joined_t_.data(), k, rows, kRows, joined_t_b_.data());
      gemm(m_, rows, even(k), mixing_b_.data(), even(k), joined_t_b_.data(), rows, mixed_.data(), kRows, false);
    } else {
      transpose(joined_.data(), k, rows, k, joined_t_.data(), kRows);  // (N + 1, rows)
      gemm(m_, rows, k, mixing_, k, joined_t_.data(), kRows, mixed_.data(), kRows, false);  // u . G_i - mu c_i: (M, rows)
    }
    for (int64_t i = 0; i < m_; ++i) {
      float* l = logits_.data() + i * kRows;
      const float* e = positions_.data() + i * kRows;
      const float* g = mixed_.data() + i * kRows;
      vf16 top = v16_set1_ps(state.top[i]);
      for (int64_t r = 0; r < rows; r += 16) {
        const mask16 lanes = lanes_below(rows - r);
        const vf16 v = v16_fmadd_ps(v16_loadu_ps(scale_.data() + r), v16_add_ps(v16_loadu_ps(l + r), v16_loadu_ps(g + r)),
                                         v16_loadu_ps(e + r));
        v16_storeu_ps(l + r, v);
        top = v16_mask_max_ps(top, lanes, top, v);
      }
      const float old = state.top[i], now = v16_reduce_max_ps(top);
      const vf16 vnow = v16_set1_ps(now);
      vf16 total = v16_setzero_ps();
      for (int64_t r = 0; r < rows; r += 16) {  // the weights, then times 1 / std: the factors' weights
        const mask16 lanes = lanes_below(rows - r);
        const vf16 p = v16_maskz_mov_ps(lanes, exp16(v16_sub_ps(v16_loadu_ps(l + r), vnow)));
        total = v16_add_ps(total, p);
        v16_storeu_ps(l + r, v16_mul_ps(p, v16_loadu_ps(scale_.data() + r)));
      }
      const float factor = old == -kInf ? 0.0f : std::exp(old - now);
      state.total[i] = state.total[i] * factor + v16_reduce_add_ps(total);
      state.top[i] = now;
      if (factor != 1.0f) {
        float* acc = state.acc.data() + i * width_;
        for (int64_t c = 0; c < width_; ++c) acc[c] *= factor;
      }
    }
    if (w_ == 16) {  // sum p r B_h: a row's 16 values in one vector, up to 8 rows of a head at a time
      for (int64_t h = 0; h < heads_; ++h)
        for (int64_t t0 = 0; t0 < t_; t0 += 8)
          weighted_rows(std::min<int64_t>(8, t_ - t0), logits_.data() + (h * t_ + t0) * kRows, kRows, values + h * 16, d_, rows,
                        state.acc.data() + (h * t_ + t0) * width_, width_);
    } else {
      for (int64_t h = 0; h < heads_; ++h)
        gemm(t_, w_, rows, logits_.data() + h * t_ * kRows, kRows, values + h * w_, d_, state.acc.data() + h * t_ * width_, width_, true);
    }
    if constexpr (kBf16<T>) {  // sum p r [u, mu], K = rows padded to even
      round_rows(logits_.data(), m_, rows, kRows, weights_b_.data(), even(rows));
      gemm(m_, k, even(rows), weights_b_.data(), even(rows), joined_b_.data(), k, state.acc.data() + w_, width_, true);
    } else {
      gemm(m_, k, rows, logits_.data(), kRows, joined_.data(), k, state.acc.data() + w_, width_, true);  // sum p r [u, mu]
    }
  }

 private:
  int64_t t_, heads_, d_, w_, n_, m_, width_;
  const float* queries_ = nullptr;
  const float* mixing_ = nullptr;
  std::vector<float> logits_, positions_, mixed_, joined_, joined_t_, scale_;
  std::vector<BFloat16> mixing_b_, joined_b_, joined_t_b_, weights_b_;  // bf16 only: the products' operands
  static int64_t even(int64_t count) { return count + (count & 1); }
};

// Ranges of blocks per prompt: with fewer prompts than threads, each prompt's image tokens are split into
// ranges whose partial softmax states are merged at the end.
int64_t splits_for(int64_t prompts, int64_t blocks) {
  return std::max<int64_t>(1, std::min(blocks, (at::get_num_threads() + prompts - 1) / prompts));
}

// The attention outputs (P, M, C) from each prompt's `splits` partial states.
at::Tensor merge(const std::vector<Partial>& partials, int64_t prompts, int64_t splits, int64_t m, int64_t channels,
                 const at::TensorOptions& options) {
  at::Tensor out = at::empty({prompts, m, channels}, options);
  float* o = out.data_ptr<float>();
  at::parallel_for(0, prompts, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> weights(splits);
    for (int64_t p = begin; p < end; ++p) {
      for (int64_t i = 0; i < m; ++i) {
        float top = -kInf;
        for (int64_t s = 0; s < splits; ++s) top = std::max(top, partials[p * splits + s].top[i]);
        float total = 0.0f;
        for (int64_t s = 0; s < splits; ++s) {
          const Partial& part = partials[p * splits + s];
          weights[s] = part.top[i] == -kInf ? 0.0f : std::exp(part.top[i] - top);
          total += part.total[i] * weights[s];
        }
        float* row = o + (p * m + i) * channels;
        for (int64_t c = 0; c < channels; ++c) {
          float sum = 0.0f;
          for (int64_t s = 0; s < splits; ++s) sum += partials[p * splits + s].acc[i * channels + c] * weights[s];
          row[c] = sum / total;
        }
      }
    }
  });
  return out;
}

// The image tokens' dtype T of a kernel call (fp32 or bf16), from `residual` or `keys`; with bf16 the channel widths
// the products take as K must be even.
at::ScalarType token_dtype(const at::Tensor& t, const char* name) {
  const at::ScalarType dtype = t.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "decoder_attention: ", name, " must be fp32 or bf16, got ", dtype);
  if (dtype == at::kBFloat16) sam_hf_brgemm::check_bf16_cpu("decoder_attention");
  return dtype;
}

// Rows of n softmax weights (fp32) into `out` (rows, n) in T, each row times its 1 / std (stats: (rows, 2), mean and
// 1 / std) when stats is given: rounded once in bf16.
template <typename T>
void record_weights(const float* weights, int64_t rows, int64_t n, const float* stats, T* out) {
  for (int64_t r = 0; r < rows; ++r) {
    const vf16 scale = v16_set1_ps(stats == nullptr ? 1.0f : stats[2 * r + 1]);
    for (int64_t c = 0; c < n; c += 16) {
      const mask16 lanes = lanes_below(n - c);
      store16(out + r * n + c, lanes, v16_mul_ps(v16_maskz_loadu_ps(lanes, weights + r * n + c), scale));
    }
  }
}

template <typename T>
std::optional<at::Tensor> image_to_tokens_typed(const at::Tensor& residual, const std::optional<at::Tensor>& logit_source,
                                                const at::Tensor& pe, const at::Tensor& logit_weight, const at::Tensor& logit_bias,
                                                int64_t heads, const at::Tensor& values, const at::Tensor& norm_weight,
                                                const at::Tensor& norm_bias, double eps, at::Tensor& out,
                                                const std::optional<at::Tensor>& next_queries, T* weights_out, float* stats_out,
                                                bool scale_weights, const std::vector<at::Tensor>& factored,
                                                const std::vector<at::Tensor>& source_factors) {
  const int64_t sides = residual.size(0), length = residual.size(1), channels = residual.size(2);
  const bool factored_source = !source_factors.empty();  // the logits from the factors of the residual (see image_to_tokens)
  const bool tiled = (logit_source && logit_source->dim() == 4) || factored_source;  // the per-head form
  const int64_t tiles = (length + 15) / 16;
  const int64_t prompts = logit_weight.size(0), n = tiled ? logit_weight.size(1) * heads : logit_weight.size(2);
  const int64_t depth = factored_source ? source_factors[0].size(2) : logit_source ? logit_source->size(2) : channels;
  const float* source_a = factored_source ? source_factors[0].data_ptr<float>() : nullptr;
  const float* source_e = factored_source ? source_factors[1].data_ptr<float>() : nullptr;
  const T* source_weights = factored_source ? source_factors[2].data_ptr<T>() : nullptr;
  const float* source_stats = factored_source ? source_factors[3].data_ptr<float>() : nullptr;
  const int64_t source_rank = factored_source ? source_factors[2].size(2) : 0, source_k = source_rank + 1;
  const int64_t source_per_side = factored_source ? prompts / source_factors[0].size(0) : 1;  // prompts per shared image side
  const int64_t m = next_queries ? next_queries->size(1) : factored.empty() ? 0 : factored[4].size(1);
  // the factored next attention (FactoredAttender): A and E tiles, B rows, queries, [G | -c]
  const float* next_a = factored.empty() ? nullptr : factored[0].data_ptr<float>();
  const float* next_pe = factored.empty() ? nullptr : factored[1].data_ptr<float>();
  const float* next_values = factored.empty() ? nullptr : factored[2].data_ptr<float>();
  const int64_t next_tokens = factored.empty() ? 0 : factored[3].size(1), next_depth = factored.empty() ? 0 : factored[3].size(2);
  const int64_t width = factored.empty() ? channels : next_depth / heads + n + 1;
  const int64_t per_side = prompts / sides, blocks = (length + kRows - 1) / kRows, tokens = n / heads;
  const int64_t splits = splits_for(prompts, blocks), per_split = (blocks + splits - 1) / splits;
  const int64_t n_even = n + (n & 1);  // bf16: the update product's K, padded to even
  std::vector<Partial> partials;
  if (m > 0) {
    partials.reserve(prompts * splits);
    for (int64_t i = 0; i < prompts * splits; ++i) partials.emplace_back(m, width);
  }
  const T* res = residual.data_ptr<T>();
  const float* source = logit_source ? logit_source->data_ptr<float>() : nullptr;
  const T* pos = pe.data_ptr<T>();
  T* dst = out.data_ptr<T>();
  const float feps = static_cast<float>(eps);
  at::parallel_for(0, prompts * splits, 1, [&](int64_t begin, int64_t end) {
    std::vector<T> a_rows(source ? 0 : kRows * channels);
    std::vector<float> logits(kRows * n), update(kRows * channels), tile_logits(tiled ? 16 * n : 0);
    // factored source: the block's factors [r u, r mu] (rows, K), their 1 / std, and a tile's positional logits
    std::vector<float> factors(factored_source ? kRows * source_k : 0), scales(factored_source ? kRows : 0),
        tile_positions(factored_source ? 16 * n : 0);
    // bf16: the block's weights rounded (rows, n_even), and the prompt's values and (per_prompt form) logit weights in VNNI form
    std::vector<BFloat16> weights(kBf16<T> ? kRows * n_even : 0), packed_values(kBf16<T> ? n_even * channels : 0),
        packed_logit_weight(kBf16<T> && !tiled ? depth * n : 0);
    std::optional<Attender<T>> attender;
    if (next_queries) attender.emplace(m, channels, channels);
    std::optional<FactoredAttender<T>> factored_attender;
    std::vector<float> block_stats(factored.empty() ? 0 : 2 * kRows);
    if (!factored.empty()) factored_attender.emplace(next_tokens, heads, next_depth, n);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p = item / splits, split = item % splits, side = p / per_side;
      const float* b = logit_bias.data_ptr<float>() + p * n;
      const float* prompt_values = values.data_ptr<float>() + p * n * channels;
      const float* prompt_logit_weight = logit_weight.data_ptr<float>() + p * (tiled ? tokens : n) * depth;
      if constexpr (kBf16<T>) {
        pack_vnni(prompt_values, n, channels, channels, packed_values.data());
        if (!tiled) pack_vnni(prompt_logit_weight, depth, n, n, packed_logit_weight.data());
      }
      vf16 bias[kMaxVectors];
      const bool fast = 16 % heads == 0 && n <= 16 * kMaxVectors;
      if (fast)
        for (int64_t i = 0; i < (n + 15) / 16; ++i) bias[i] = v16_maskz_loadu_ps(lanes_below(n - 16 * i), b + 16 * i);
      const auto softmax_rows = [&](int64_t rows) {  // each row's softmax over each head's tokens, after the bias, in place
        if (fast) {
          for (int64_t r = 0; r < rows; ++r) softmax_over_tokens_fast(logits.data() + r * n, bias, n, heads);
        } else {
          for (int64_t r = 0; r < rows; ++r) softmax_over_tokens(logits.data() + r * n, b, tokens, heads);
        }
      };
      if (attender) attender->set_queries(next_queries->data_ptr<float>() + p * m * channels, channels);
      if (factored_attender)
        factored_attender->set_prompt(factored[3].data_ptr<float>() + p * next_tokens * next_depth, factored[4].data_ptr<float>() + p * m * (n + 1));
      for (int64_t block = split * per_split; block < std::min(blocks, (split + 1) * per_split); ++block) {
        const int64_t row0 = block * kRows, rows = std::min(kRows, length - row0);
        const T* x = res + (side * length + row0) * channels;
        // the block's weights (rows, N): softmaxed logits, rows (t, head)
        if (factored_source) {  // r (a_h . k) + a_pe,h . k per tile, transposed into the rows, then + [r u, r mu] . G, softmax
          const T* w = source_weights + (p * length + row0) * source_rank;
          const float* st = source_stats + (p * length + row0) * 2;
          for (int64_t r = 0; r < rows; ++r) {
            for (int64_t c = 0; c < source_rank; c += 16) {
              const mask16 lanes = lanes_below(source_rank - c);
              v16_mask_storeu_ps(factors.data() + r * source_k + c, lanes, load16(w + r * source_rank + c, lanes));
            }
            factors[r * source_k + source_rank] = st[2 * r] * st[2 * r + 1];
            scales[r] = st[2 * r + 1];
          }
          for (int64_t tile = 0; tile * 16 < rows; ++tile) {
            const TileRows layout{heads, 1, 16};
            head_logits(source_a + (p / source_per_side * tiles + row0 / 16 + tile) * depth * 16, prompt_logit_weight, nullptr, tokens, heads, depth,
                        tile_logits.data(), layout);
            head_logits(source_e + (row0 / 16 + tile) * depth * 16, prompt_logit_weight, nullptr, tokens, heads, depth,
                        tile_positions.data(), layout);
            const vf16 scale = v16_maskz_loadu_ps(lanes_below(rows - tile * 16), scales.data() + tile * 16);
            for (int64_t j = 0; j < n; ++j)
              v16_storeu_ps(tile_logits.data() + j * 16, v16_fmadd_ps(v16_loadu_ps(tile_logits.data() + j * 16), scale,
                                                                             v16_loadu_ps(tile_positions.data() + j * 16)));
            transpose(tile_logits.data(), 16, n, 16, logits.data() + tile * 16 * n, n);
          }
          gemm(rows, n, source_k, factors.data(), source_k, source_factors[4].data_ptr<float>() + p * source_k * n, n, logits.data(), n, true);
          softmax_rows(rows);
        } else if (tiled) {  // tile by tile (kRows is a multiple of 16), each tile's weights transposed into its rows
          for (int64_t tile = 0; tile * 16 < rows; ++tile) {
            head_softmax_tile(source + (side * tiles + row0 / 16 + tile) * depth * 16, prompt_logit_weight, b, tokens, heads, depth,
                              tile_logits.data());
            transpose(tile_logits.data(), 16, n, 16, logits.data() + tile * 16 * n, n);
          }
        } else {
          if (!source)
            for (int64_t r = 0; r < rows; ++r) add_rows(x + r * channels, pos + (row0 + r) * channels, a_rows.data() + r * channels, channels);
          if constexpr (kBf16<T>) {  // no 3-D logit source in bf16 (checked)
            gemm(rows, n, depth, a_rows.data(), depth, packed_logit_weight.data(), n, logits.data(), n, false);
          } else {
            const float* a = source ? source + (side * length + row0) * depth : a_rows.data();
            gemm(rows, n, depth, a, depth, prompt_logit_weight, n, logits.data(), n, false);
          }
          softmax_rows(rows);
        }
        if constexpr (kBf16<T>) {
          round_rows(logits.data(), rows, n, n, weights.data(), n_even);
          gemm(rows, channels, n_even, weights.data(), n_even, packed_values.data(), channels, update.data(), channels, false);
        } else {
          gemm(rows, channels, n, logits.data(), n, prompt_values, channels, update.data(), channels, false);
        }
        T* y = dst + (p * length + row0) * channels;  // may be x itself: each row is read before it is written
        float* row_stats = stats_out != nullptr ? stats_out + (p * length + row0) * 2 : factored_attender ? block_stats.data() : nullptr;
        residual_layer_norm_rows(update.data(), x, norm_weight.data_ptr<float>(), norm_bias.data_ptr<float>(), feps, y, rows, channels,
                                 row_stats);
        if (weights_out != nullptr)  // the fp32 softmax weights (times the row's 1 / std), rounded once in bf16
          record_weights(logits.data(), rows, n, scale_weights ? stats_out + (p * length + row0) * 2 : nullptr,
                         weights_out + (p * length + row0) * n);
        if (attender) attender->add_block(y, channels, pos + row0 * channels, y, channels, rows, partials[item]);
        if (factored_attender)
          factored_attender->add_block(next_a + (side * tiles + row0 / 16) * next_depth * 16, next_pe + (row0 / 16) * next_depth * 16,
                                       next_values + (side * length + row0) * next_depth, logits.data(), row_stats, rows, partials[item]);
      }
    }
    if constexpr (kBf16<T>) release(weights.data());
  });
  if (m == 0) return std::nullopt;
  return merge(partials, prompts, splits, m, width, out.options().dtype(at::kFloat));
}

// residual (S, L, C); logit_source (S, L, D) or none (then a = residual + pe, D = C); pe (L, C); logit_weight
// (P, D, N) and logit_bias (P, N) with N = T * heads, columns ordered (t, head); values (P, N, C); out (P, L, C),
// which may be `residual` itself when S = P. Prompt p reads side p / (P / S).
// Per-head form: logit_source (S, ceil(L/16), D, 16), tiles of 16 image tokens channel-major (zero past L), and
// logit_weight (P, T, D), per-head keys: logit (t, h) = a_h . k_(t,h) + bias over head h's D / heads channels only
// (the block-diagonal product, heads times fewer multiply-adds than the dense (D, N) form).
// With next_queries (P, M, C): also the next attention of those query rows to the new image tokens, as
// `tokens_to_image(next_queries, out, pe)`, in the same pass while each block of `out` is in cache -> (P, M, C) fp32.
// With `factored` [A tiles (S, ceil(L/16), D', 16), E tiles (ceil(L/16), D', 16), B rows (S, L, D'), queries (P, T', D'),
// mixing (P, M, N + 1)] instead: that attention in factored form (FactoredAttender; M = T' * heads rows (h, t)) ->
// (P, M, D' / heads + N + 1) fp32, per row its weighted sums of r B_h, r u and r mu.
// With `source_factors` [A tiles (S', ceil(L/16), D, 16), E tiles (ceil(L/16), D, 16), weights (P, L, N') in the image
// tokens' dtype, stats (P, L, 2), mixing (P, N' + 1, N)] instead of a logit source, where the residual is the image
// tokens a first pass formed from S' shared sides and recorded (weights r u, stats mu and r): the logits per head from
// those factors, r (A_h . k) + E_h . k + [r u, r mu] . G + bias, with logit_weight the per-head keys (P, T, D)
// (`modeling/factored_passes.py`, `source_operands`).
// residual, pe and out: the image tokens' dtype, fp32 or bf16 (then C even and no 3-D logit_source); the rest fp32.
// With weights_out (P, L, N) in the image tokens' dtype and stats_out (P, L, 2) fp32: each image token's softmax
// weights (from fp32, rounded once in bf16), times its LayerNorm's 1 / std with `scale_weights` (which needs
// stats_out), and that LayerNorm's mean and 1 / std are written there too (what `mask_upscaling.upscale_masks`'s
// folded form reads).
std::optional<at::Tensor> image_to_tokens(const at::Tensor& residual, const std::optional<at::Tensor>& logit_source,
                                          const at::Tensor& pe, const at::Tensor& logit_weight, const at::Tensor& logit_bias,
                                          int64_t heads, const at::Tensor& values, const at::Tensor& norm_weight,
                                          const at::Tensor& norm_bias, double eps, at::Tensor& out,
                                          const std::optional<at::Tensor>& next_queries, const std::optional<at::Tensor>& weights_out,
                                          const std::optional<at::Tensor>& stats_out, bool scale_weights,
                                          const std::optional<std::vector<at::Tensor>>& factored,
                                          const std::optional<std::vector<at::Tensor>>& source_factors) {
  const at::ScalarType dtype = token_dtype(residual, "residual");
  check_dense(residual, "decoder_attention", "residual", 3, dtype);
  check_dense(pe, "decoder_attention", "pe", 2, dtype);
  check_float(logit_weight, "decoder_attention", "logit_weight", 3);
  check_float(logit_bias, "decoder_attention", "logit_bias", 2);
  check_float(values, "decoder_attention", "values", 3);
  check_float(norm_weight, "decoder_attention", "norm_weight", 1);
  check_float(norm_bias, "decoder_attention", "norm_bias", 1);
  check_dense(out, "decoder_attention", "out", 3, dtype);
  const int64_t sides = residual.size(0), length = residual.size(1), channels = residual.size(2);
  const bool tiled = (logit_source && logit_source->dim() == 4) || source_factors;  // the per-head form
  const int64_t tiles = (length + 15) / 16;
  const int64_t prompts = logit_weight.size(0), n = tiled ? logit_weight.size(1) * heads : logit_weight.size(2);
  const int64_t depth = source_factors && !source_factors->empty() ? (*source_factors)[0].size(2) : logit_source ? logit_source->size(2) : channels;
  if (source_factors) {
    TORCH_CHECK(!logit_source, "decoder_attention: logit_source and source_factors are two forms of one logit source: give one");
    TORCH_CHECK(source_factors->size() == 5, "decoder_attention: source_factors must hold 5 tensors (A tiles, E tiles, weights, stats, mixing)");
    const at::Tensor &a = (*source_factors)[0], &e = (*source_factors)[1], &w = (*source_factors)[2], &st = (*source_factors)[3],
                     &g = (*source_factors)[4];
    check_float(a, "decoder_attention", "source A tiles", 4);
    check_float(e, "decoder_attention", "source E tiles", 3);
    check_dense(w, "decoder_attention", "source weights", 3, dtype);
    check_float(st, "decoder_attention", "source stats", 3);
    check_float(g, "decoder_attention", "source mixing", 3);
    TORCH_CHECK(heads > 0 && depth % heads == 0, "decoder_attention: the source A tiles' D must be a multiple of heads");
    TORCH_CHECK(a.size(0) > 0 && prompts % a.size(0) == 0 && a.size(1) == tiles && a.size(3) == 16,
                "decoder_attention: source A tiles must be (S', ceil(L/16), D, 16), S' dividing the prompts");
    TORCH_CHECK(e.size(0) == tiles && e.size(1) == depth && e.size(2) == 16, "decoder_attention: source E tiles must be (ceil(L/16), D, 16)");
    TORCH_CHECK(w.size(0) == prompts && w.size(1) == length, "decoder_attention: source weights must be (P, L, N')");
    TORCH_CHECK(st.size(0) == prompts && st.size(1) == length && st.size(2) == 2, "decoder_attention: source stats must be (P, L, 2)");
    TORCH_CHECK(g.size(0) == prompts && g.size(1) == w.size(2) + 1 && g.size(2) == n, "decoder_attention: source mixing must be (P, N' + 1, N)");
  }
  if (tiled && !source_factors) {
    check_float(*logit_source, "decoder_attention", "logit_source", 4);
    TORCH_CHECK(logit_source->size(0) == sides && logit_source->size(1) == tiles && logit_source->size(3) == 16,
                "decoder_attention: tiled logit_source must be (S, ceil(L/16), D, 16)");
    TORCH_CHECK(heads > 0 && depth % heads == 0, "decoder_attention: the tiled logit_source's D must be a multiple of heads");
  } else if (logit_source) {
    TORCH_CHECK(dtype == at::kFloat, "decoder_attention: a 3-D logit_source takes fp32 image tokens only");
    check_float(*logit_source, "decoder_attention", "logit_source", 3);
    TORCH_CHECK(logit_source->size(0) == sides && logit_source->size(1) == length, "decoder_attention: logit_source must be (S, L, D)");
  }
  TORCH_CHECK(dtype == at::kFloat || channels % 2 == 0, "decoder_attention: bf16 image tokens need an even channel count, got ", channels);
  TORCH_CHECK(prompts % sides == 0, "decoder_attention: prompts must be a multiple of the image sides");
  TORCH_CHECK(heads > 0 && n % heads == 0, "decoder_attention: the logit columns must be T * heads");
  TORCH_CHECK(pe.size(0) == length && pe.size(1) == channels, "decoder_attention: pe must be (L, C)");
  TORCH_CHECK((tiled ? logit_weight.size(2) : logit_weight.size(1)) == depth && logit_bias.size(0) == prompts && logit_bias.size(1) == n,
              "decoder_attention: logit_weight must be (P, D, N), or (P, T, D) with a tiled logit_source, and logit_bias (P, N)");
  TORCH_CHECK(values.size(0) == prompts && values.size(1) == n && values.size(2) == channels, "decoder_attention: values must be (P, N, C)");
  TORCH_CHECK(norm_weight.size(0) == channels && norm_bias.size(0) == channels, "decoder_attention: the norm must have C channels");
  TORCH_CHECK(out.size(0) == prompts && out.size(1) == length && out.size(2) == channels, "decoder_attention: out must be (P, L, C)");
  TORCH_CHECK(sides == prompts || !out.is_same(residual), "decoder_attention: out may be the residual only when each prompt has its own");
  if (next_queries) {
    check_float(*next_queries, "decoder_attention", "next_queries", 3);
    TORCH_CHECK(next_queries->size(0) == prompts && next_queries->size(2) == channels, "decoder_attention: next_queries must be (P, M, C)");
  }
  std::vector<at::Tensor> next;  // the factored next attention's operands, checked
  if (factored) {
    TORCH_CHECK(!next_queries, "decoder_attention: next_queries and factored are two forms of one attention: give one");
    TORCH_CHECK(factored->size() == 5, "decoder_attention: factored must hold 5 tensors (A tiles, E tiles, B rows, queries, mixing)");
    const char* names[5] = {"factored A tiles", "factored E tiles", "factored B rows", "factored queries", "factored mixing"};
    const int64_t dims[5] = {4, 3, 3, 3, 3};
    for (int i = 0; i < 5; ++i) check_float((*factored)[i], "decoder_attention", names[i], dims[i]);
    const at::Tensor &a = (*factored)[0], &e = (*factored)[1], &b = (*factored)[2], &q = (*factored)[3], &g = (*factored)[4];
    const int64_t next_depth = q.size(2);
    TORCH_CHECK(next_depth % heads == 0, "decoder_attention: the factored queries' D must be a multiple of heads");
    TORCH_CHECK(a.size(0) == sides && a.size(1) == tiles && a.size(2) == next_depth && a.size(3) == 16,
                "decoder_attention: factored A tiles must be (S, ceil(L/16), D, 16)");
    TORCH_CHECK(e.size(0) == tiles && e.size(1) == next_depth && e.size(2) == 16, "decoder_attention: factored E tiles must be (ceil(L/16), D, 16)");
    TORCH_CHECK(b.size(0) == sides && b.size(1) == length && b.size(2) == next_depth, "decoder_attention: factored B rows must be (S, L, D)");
    TORCH_CHECK(q.size(0) == prompts, "decoder_attention: factored queries must be (P, T', D)");
    TORCH_CHECK(g.size(0) == prompts && g.size(1) == q.size(1) * heads && g.size(2) == n + 1,
                "decoder_attention: factored mixing must be (P, T' * heads, N + 1)");
    next = *factored;
  }
  float* stats_ptr = nullptr;
  if (weights_out) {
    check_dense(*weights_out, "decoder_attention", "weights_out", 3, dtype);
    TORCH_CHECK(weights_out->size(0) == prompts && weights_out->size(1) == length && weights_out->size(2) == n,
                "decoder_attention: weights_out must be (P, L, N)");
  }
  TORCH_CHECK(!scale_weights || (weights_out && stats_out), "decoder_attention: scale_weights needs weights_out and stats_out");
  if (stats_out) {
    check_float(*stats_out, "decoder_attention", "stats_out", 3);
    TORCH_CHECK(stats_out->size(0) == prompts && stats_out->size(1) == length && stats_out->size(2) == 2,
                "decoder_attention: stats_out must be (P, L, 2)");
    stats_ptr = stats_out->data_ptr<float>();
  }
  if (dtype == at::kBFloat16)
    return image_to_tokens_typed<BFloat16>(residual, logit_source, pe, logit_weight, logit_bias, heads, values, norm_weight, norm_bias, eps,
                                           out, next_queries, weights_out ? weights_out->data_ptr<BFloat16>() : nullptr, stats_ptr,
                                           scale_weights, next, source_factors.value_or(std::vector<at::Tensor>{}));
  return image_to_tokens_typed<float>(residual, logit_source, pe, logit_weight, logit_bias, heads, values, norm_weight, norm_bias, eps, out,
                                      next_queries, weights_out ? weights_out->data_ptr<float>() : nullptr, stats_ptr, scale_weights, next,
                                      source_factors.value_or(std::vector<at::Tensor>{}));
}

template <typename T>
at::Tensor tokens_to_image_typed(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& pe, const std::vector<int64_t>& side_of) {
  const int64_t prompts = queries.size(0), m = queries.size(1), channels = queries.size(2), length = keys.size(1);
  const int64_t blocks = (length + kRows - 1) / kRows;
  const int64_t splits = splits_for(prompts, blocks), per_split = (blocks + splits - 1) / splits;
  std::vector<Partial> partials;
  partials.reserve(prompts * splits);
  for (int64_t i = 0; i < prompts * splits; ++i) partials.emplace_back(m, channels);
  const T* k = keys.data_ptr<T>();
  const T* pos = pe.data_ptr<T>();
  at::parallel_for(0, prompts * splits, 1, [&](int64_t begin, int64_t end) {
    Attender<T> attender(m, channels, channels);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t p = item / splits, split = item % splits;
      attender.set_queries(queries.data_ptr<float>() + p * m * channels, channels);
      const T* side = k + side_of[p] * length * channels;
      for (int64_t block = split * per_split; block < std::min(blocks, (split + 1) * per_split); ++block) {
        const int64_t row0 = block * kRows, rows = std::min(kRows, length - row0);
        const T* x = side + row0 * channels;
        attender.add_block(x, channels, pos + row0 * channels, x, channels, rows, partials[item]);
      }
    }
    if constexpr (kBf16<T>) release(k);
  });
  return merge(partials, prompts, splits, m, channels, queries.options());
}

// queries (P, M, C) fp32, keys (S, L, C) and pe (L, C) fp32 or bf16 (then C even) -> (P, M, C) fp32: row i of prompt p
// is sum_x softmax_x(q_i . (x + pe_x)) x over the image tokens x of its side: side_index[p] when given ((P,) int64),
// else p / (P / S).
at::Tensor tokens_to_image(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& pe,
                           const std::optional<at::Tensor>& side_index) {
  const at::ScalarType dtype = token_dtype(keys, "keys");
  check_float(queries, "decoder_attention", "queries", 3);
  check_dense(keys, "decoder_attention", "keys", 3, dtype);
  check_dense(pe, "decoder_attention", "pe", 2, dtype);
  const int64_t prompts = queries.size(0), channels = queries.size(2);
  const int64_t sides = keys.size(0), length = keys.size(1);
  TORCH_CHECK(keys.size(2) == channels && pe.size(0) == length && pe.size(1) == channels,
              "decoder_attention: keys must be (S, L, C) and pe (L, C) with the queries' C");
  TORCH_CHECK(dtype == at::kFloat || channels % 2 == 0, "decoder_attention: bf16 image tokens need an even channel count, got ", channels);
  std::vector<int64_t> side_of(prompts);
  if (side_index) {
    TORCH_CHECK(side_index->scalar_type() == at::kLong && side_index->dim() == 1 && side_index->size(0) == prompts,
                "decoder_attention: side_index must be (P,) int64");
    const at::Tensor index = side_index->contiguous();
    for (int64_t p = 0; p < prompts; ++p) {
      side_of[p] = index.data_ptr<int64_t>()[p];
      TORCH_CHECK(side_of[p] >= 0 && side_of[p] < sides, "decoder_attention: side_index values must be in [0, S)");
    }
  } else {
    TORCH_CHECK(prompts % sides == 0, "decoder_attention: prompts must be a multiple of the image sides");
    for (int64_t p = 0; p < prompts; ++p) side_of[p] = p / (prompts / sides);
  }
  if (dtype == at::kBFloat16) return tokens_to_image_typed<BFloat16>(queries, keys, pe, side_of);
  return tokens_to_image_typed<float>(queries, keys, pe, side_of);
}

template <typename T>
at::Tensor head_attention_typed(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& values) {
  const int64_t sides = queries.size(0), heads = queries.size(1), m = queries.size(2), width = queries.size(3);
  const int64_t length = keys.size(1);
  const int64_t groups = sides * heads, blocks = (length + kRows - 1) / kRows;
  const int64_t splits = splits_for(groups, blocks), per_split = (blocks + splits - 1) / splits;
  std::vector<Partial> partials;
  partials.reserve(groups * splits);
  for (int64_t i = 0; i < groups * splits; ++i) partials.emplace_back(m, width);
  const int64_t ld = heads * width;
  at::parallel_for(0, groups * splits, 1, [&](int64_t begin, int64_t end) {
    Attender<T> attender(m, width, width);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t group = item / splits, split = item % splits, side = group / heads, head = group % heads;
      attender.set_queries(queries.data_ptr<float>() + group * m * width, width);
      const T* k = keys.data_ptr<T>() + side * length * ld + head * width;
      const T* v = values.data_ptr<T>() + side * length * ld + head * width;
      for (int64_t block = split * per_split; block < std::min(blocks, (split + 1) * per_split); ++block) {
        const int64_t row0 = block * kRows, rows = std::min(kRows, length - row0);
        attender.add_block(k + row0 * ld, ld, nullptr, v + row0 * ld, ld, rows, partials[item]);
      }
    }
    if constexpr (kBf16<T>) release(keys.data_ptr<T>());
  });
  return merge(partials, groups, splits, m, width, queries.options()).view({sides, heads, m, width});
}

// Multi-head attention of query rows to projected image tokens shared by them: queries (S, h, M, d) (scaled) fp32,
// keys and values (S, L, h*d) fp32 or bf16 (then d even) with head j in columns [j*d, (j+1)*d) -> (S, h, M, d) fp32,
// softmax over the L tokens. The decoder's first token -> image attention, where one image side's projections serve
// all its prompts' rows (M = P*T), without logits or weights of size M x L in memory.
at::Tensor head_attention(const at::Tensor& queries, const at::Tensor& keys, const at::Tensor& values) {
  const at::ScalarType dtype = token_dtype(keys, "keys");
  check_float(queries, "decoder_attention", "queries", 4);
  check_dense(keys, "decoder_attention", "keys", 3, dtype);
  check_dense(values, "decoder_attention", "values", 3, dtype);
  const int64_t sides = queries.size(0), heads = queries.size(1), width = queries.size(3);
  TORCH_CHECK(keys.size(0) == sides && keys.size(2) == heads * width && values.sizes() == keys.sizes(),
              "decoder_attention: keys and values must be (S, L, h*d) for queries (S, h, M, d)");
  TORCH_CHECK(dtype == at::kFloat || width % 2 == 0, "decoder_attention: bf16 keys need an even head width, got ", width);
  if (dtype == at::kBFloat16) return head_attention_typed<BFloat16>(queries, keys, values);
  return head_attention_typed<float>(queries, keys, values);
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("isa", [] { return std::string(SAM_HF_VEC16_ISA); }, "the instruction set of this build: avx512 or avx2 (vec16.h)");
  module.def("brgemm_usable", &brgemm_usable, "whether ATen's fp32 brgemm serves this CPU");
  module.def("bf16_usable", &bf16_brgemm_usable, "whether ATen's bf16 brgemm serves this CPU (then the attentions take bf16 image tokens)");
  module.def("image_to_tokens", &image_to_tokens, "image tokens attend to a prompt's tokens, residual and LayerNorm fused",
             pybind11::arg("residual"), pybind11::arg("logit_source"), pybind11::arg("pe"), pybind11::arg("logit_weight"),
             pybind11::arg("logit_bias"), pybind11::arg("heads"), pybind11::arg("values"), pybind11::arg("norm_weight"),
             pybind11::arg("norm_bias"), pybind11::arg("eps"), pybind11::arg("out"), pybind11::arg("next_queries") = pybind11::none(),
             pybind11::arg("weights_out") = pybind11::none(), pybind11::arg("stats_out") = pybind11::none(),
             pybind11::arg("scale_weights") = false, pybind11::arg("factored") = pybind11::none(),
             pybind11::arg("source_factors") = pybind11::none());
  module.def("head_attention", &head_attention, "query rows attend per head to projected image tokens they share (flash-style)",
             pybind11::arg("queries"), pybind11::arg("keys"), pybind11::arg("values"));
  module.def("tokens_to_image", &tokens_to_image, "a prompt's folded query rows attend to its image tokens (flash-style)",
             pybind11::arg("queries"), pybind11::arg("keys"), pybind11::arg("pe"), pybind11::arg("side_index") = pybind11::none());
}
