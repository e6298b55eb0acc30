// The mask decoder's upscaling and hypernetwork product in fp32 or bf16, one grid row of one prompt at a time in
// cache (x86 CPUs with AVX-512 or AVX2; bf16 where oneDNN's bf16 brgemm runs, AVX512-BF16):
//
//   masks[m] = hyper[m] . GELU(conv2(GELU(LayerNorm(conv1(x)))))
//
// conv1 and conv2 are 2x2 stride-2 transposed convolutions: each image token becomes 2x2 pixels of C/4 channels,
// each of those 2x2 pixels of C/8 channels, so every output pixel depends on one image token only. Everything runs
// channel-major (channels as rows, pixels as columns): the LayerNorm, both GELUs and the hypernetwork product are
// then plain vertical vector arithmetic, and the pixels come out in the mask's raster order by interleaving
// columns. The two convolutions are ATen's brgemm (oneDNN's ukernel). In bf16 only the products' operands are bf16
// (the image tokens, the convolutions' weights and the first convolution's activations, rounded once as the second
// reads them); their sums, the LayerNorm, both GELUs and the hypernetwork product run in fp32, and the masks are
// rounded to bf16 once at the end. Grid rows of all prompts are spread over the threads; each writes its own 4 rows
// of every mask. Built on first use by sam_hf.kernels.loader; inference only.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "brgemm.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <type_traits>
#include <vector>

using at::BFloat16;
using sam_hf_brgemm::bf16_brgemm_usable;
using sam_hf_brgemm::brgemm_usable;
using sam_hf_brgemm::check_dense;
using sam_hf_brgemm::check_float;
using sam_hf_brgemm::gemm;
using sam_hf_brgemm::release;
using sam_hf_simd::bf16_pairs;
using sam_hf_simd::lanes_below;
using sam_hf_simd::store16;
using sam_hf_simd::transpose;

namespace {

constexpr int64_t kMaxMasks = 8;

// GELU (the erf form, as F.gelu) by a table: x Phi(x), the normal CDF Phi as a polynomial of degree D - 1 in each of
// N equal intervals of [-6, 6], interpolating Phi at D Chebyshev points of the interval; Phi is taken as 0 left of
// -6 (the first coefficient is set to 0: F.gelu's -0 there, and NaN for -inf) and as its value at 6, 1 in fp32, right
// of it. The coefficients are found in double once per process. Error of the GELU over [-8, 8]: N = 32, D = 5 3.7e-7
// (fp32 rounding; PyTorch's vectorised erf, Abramowitz-Stegun 7.1.26 with an exponential, is no closer), D = 4 3.6e-6
// (for bf16, whose activations and masks are rounded to 2^-9 relative); N = 8, D = 8 (AVX2 builds) 4.8e-7 against
// N = 32, D = 5's 4.5e-7 in the same check. An evaluation is a few arithmetic instructions and one lane permute per
// coefficient (two-table on AVX-512: 32 intervals in two registers; one 8-lane register per half on AVX2, so 8
// intervals): on AVX-512 about half the time of the exponential form at D = 5 (Zen 4, 16 floats in cache: 3.6 against
// 7.2 ns; D = 4 2.9 ns, against 4.9 for the polynomial-and-reciprocal erf the bf16 path used before).
constexpr double kGeluRange = 6.0;
#if defined(__AVX512F__)
constexpr int kGeluIntervals = 32;
#else
constexpr int kGeluIntervals = 8;
#endif

template <int D>
struct GeluCoefficients {
  float c[D][kGeluIntervals];  // c[k][i]: the coefficient of t^k in interval i, t in [0, 1) across it

  GeluCoefficients() {
    const double width = 2 * kGeluRange / kGeluIntervals;
    for (int i = 0; i < kGeluIntervals; ++i) {
      double a[D][D + 1];  // the Vandermonde system at the Chebyshev points, solved by Gauss-Jordan with pivoting
      for (int r = 0; r < D; ++r) {
        const double t = 0.5 - 0.5 * std::cos((2 * r + 1) * M_PI / (2 * D));
        for (int k = 0; k < D; ++k) a[r][k] = std::pow(t, k);
        a[r][D] = 0.5 * std::erfc(-(-kGeluRange + width * (i + t)) / std::sqrt(2.0));
      }
      for (int k = 0; k < D; ++k) {
        int pivot = k;
        for (int r = k + 1; r < D; ++r)
          if (std::fabs(a[r][k]) > std::fabs(a[pivot][k])) pivot = r;
        for (int j = 0; j <= D; ++j) std::swap(a[k][j], a[pivot][j]);
        for (int r = 0; r < D; ++r) {
          if (r == k) continue;
          const double f = a[r][k] / a[k][k];
          for (int j = 0; j <= D; ++j) a[r][j] -= f * a[k][j];
        }
      }
      for (int k = 0; k < D; ++k) c[k][i] = static_cast<float>(a[k][D] / a[k][k]);
    }
    c[0][0] = 0.0f;  // Phi(-6) = 1e-9: exactly 0 left of the table
  }
};

// The table of degree D - 1 held in registers for a loop of GELUs.
template <int D>
class Gelu {
 public:
  Gelu() {
    static const GeluCoefficients<D> table;  // built once, thread-safely
    for (int k = 0; k < D; ++k) {
#if defined(__AVX512F__)
      low_[k] = v16_loadu_ps(table.c[k]);  // intervals 0-15
      high_[k] = v16_loadu_ps(table.c[k] + 16);  // 16-31
#else
      table_[k] = _mm256_loadu_ps(table.c[k]);
#endif
    }
  }

  vf16 operator()(vf16 x) const {
    constexpr float scale = kGeluIntervals / (2 * kGeluRange);
    vf16 u = v16_fmadd_ps(x, v16_set1_ps(scale), v16_set1_ps(kGeluIntervals / 2.0f));  // intervals from -6
    u = v16_min_ps(v16_max_ps(u, v16_setzero_ps()), v16_set1_ps(kGeluIntervals - 1e-4f));  // NaN -> 0
    const vf16 start = v16_roundscale_ps(u, _MM_FROUND_TO_NEG_INF | _MM_FROUND_NO_EXC);
    const vf16 t = v16_sub_ps(u, start);
    const vi16 interval = v16_cvttps_epi32(start);
#if defined(__AVX512F__)
    vf16 phi = v16_permutex2var_ps(low_[D - 1], interval, high_[D - 1]);
    for (int k = D - 2; k >= 0; --k) phi = v16_fmadd_ps(phi, t, v16_permutex2var_ps(low_[k], interval, high_[k]));
#else
    vf16 phi = {_mm256_permutevar8x32_ps(table_[D - 1], interval.lo), _mm256_permutevar8x32_ps(table_[D - 1], interval.hi)};
    for (int k = D - 2; k >= 0; --k)
      phi = v16_fmadd_ps(phi, t, {_mm256_permutevar8x32_ps(table_[k], interval.lo), _mm256_permutevar8x32_ps(table_[k], interval.hi)});
#endif
    return v16_mul_ps(x, phi);  // NaN stays NaN
  }

 private:
#if defined(__AVX512F__)
  vf16 low_[D], high_[D];
#else
  __m256 table_[D];
#endif
};

// The GELU of each path: fp32 keeps F.gelu's accuracy, bf16 takes the cubic (AVX-512 builds; AVX2 builds take fp32
// only, at degree 7 on their 8 intervals).
#if defined(__AVX512F__)
template <typename T>
using GeluFor = Gelu<std::is_same_v<T, float> ? 5 : 4>;
#else
template <typename T>
using GeluFor = Gelu<8>;
#endif

// (lo, hi) = the lanes of u and v interleaved: u0 v0 u1 v1 ... u15 v15.
inline void interleave(vf16 u, vf16 v, vf16& lo, vf16& hi) {
  const vi16 low = v16_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const vi16 high = v16_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  lo = v16_permutex2var_ps(u, low, v);
  hi = v16_permutex2var_ps(u, high, v);
}

template <typename T>
struct Weights {
  const T* conv1;       // (C, C): rows (a, b, C/4), columns the input channels
  const float* bias1;   // (C)
  const float* norm_w;  // (C/4)
  const float* norm_b;  // (C/4)
  float eps;
  const T* conv2;       // (2, C/4, C/4): per output row offset c, rows (d, C/8), columns C/4
  const float* bias2;   // (2, C/4)
};

// The grid row's tokens x (g, C) as the first product's right operand xt (C, G), columns the tokens: transposed in
// fp32; in bf16 the VNNI form (C/2, G, 2), the same transpose of (g, C/2) 32-bit words (pairs of channels).
void pack_tokens(const float* x, int64_t grid, int64_t channels, int64_t width, float* xt) {
  transpose(x, channels, grid, channels, xt, width);
}
void pack_tokens(const BFloat16* x, int64_t grid, int64_t channels, int64_t width, BFloat16* xt) {
  transpose(reinterpret_cast<const uint32_t*>(x), channels / 2, grid, channels / 2, reinterpret_cast<uint32_t*>(xt), width);
}

// Channels c and c + 1 of the second product's right operand mid[a] (C/4, 2G), 32 columns from `column`: rows of
// floats, or in bf16 the VNNI form (C/8, 2G, 2) whose word (c / 2, q) holds channels c, c + 1 of column q.
void store_mid(float* mid, int64_t c, int64_t columns, int64_t column, const vf16 (&lo)[2], const vf16 (&hi)[2]) {
  for (int64_t k = 0; k < 2; ++k) {
    v16_storeu_ps(mid + (c + k) * columns + column, lo[k]);
    v16_storeu_ps(mid + (c + k) * columns + column + 16, hi[k]);
  }
}
void store_mid(BFloat16* mid, int64_t c, int64_t columns, int64_t column, const vf16 (&lo)[2], const vf16 (&hi)[2]) {
  uint32_t* words = reinterpret_cast<uint32_t*>(mid) + (c / 2) * columns + column;
  v16_storeu_si512(words, bf16_pairs(lo[0], lo[1]));
  v16_storeu_si512(words + 16, bf16_pairs(hi[0], hi[1]));
}

// The first convolution of one grid row: tokens x (g, C) -> up (C = [a, b, C/4], G) without its bias, G = g rounded up
// to 16. Scratch xt (C, G) (`pack_tokens`).
template <typename T>
void convolve_row(const T* x, int64_t grid, int64_t channels, const Weights<T>& w, T* xt, float* up) {
  const int64_t width = (grid + 15) / 16 * 16;
  pack_tokens(x, grid, channels, width, xt);
  gemm(channels, width, channels, w.conv1, channels, xt, width, up, width, false);
}

// The first convolution's output folded through the decoder's last two image -> token attentions (see
// `upscale_masks_folded`), for source prompt s: per image token x with softmax weights w1, w2 (N each) and LayerNorm
// statistics (m1, r1), (m2, r2) of those two attentions,
//   up_x = r2 [r1 (shared_x + w1 V1' - m1 a1) + e1 + w2 V2' - m2 a2]   (its bias, e2, is added as the conv's bias);
// the bracket is made here, and `upscale_row` multiplies each column by r2 as it reads it.
template <typename T>
struct Fold {
  const float* shared;  // (g, C, G): the shared image side's product (x0 M^T), per grid row channel-major (zero past g)
  const T* mix;         // (S, C, 2N): per prompt [V1' | V2'], channels as rows (the product's left operand)
  const T* first;       // (S, L, N): r1 w1, as the attention kernel records it
  const T* second;      // (S, L, N): w2
  const float* stats1;  // (S, L, 2): m1, r1
  const float* stats2;  // (S, L, 2): m2, r2
  const float* terms;   // (3, C): a1, e1, a2
  int64_t n;
};

// `Fold` for grid row i of source prompt `source` -> up (C, G), the bracket above, and column_scale (G): r2 per column
// (zero past g). Scratch: rows (g, 2N) and operand (2N, G), zero past g. The product's right operand is the (g, 2N)
// token rows [r1 w1 | w2] transposed: in fp32 a transpose of floats; in bf16 its VNNI form [N][G][2] is the transpose
// of the rows' (g, N) 32-bit words (pairs of neighbouring values), so no 16-bit interleaving is needed.
template <typename T>
void folded_row(const Fold<T>& f, int64_t source, int64_t length, int64_t grid, int64_t channels, int64_t i, T* rows, T* operand,
                float* up, float* column_scale) {
  const int64_t n = f.n, width = (grid + 15) / 16 * 16, row0 = i * grid;
  const T* first = f.first + (source * length + row0) * n;
  const T* second = f.second + (source * length + row0) * n;
  const float* stats1 = f.stats1 + (source * length + row0) * 2;
  const float* stats2 = f.stats2 + (source * length + row0) * 2;
  for (int64_t j = 0; j < grid; ++j) {
    std::copy(first + j * n, first + (j + 1) * n, rows + j * 2 * n);
    std::copy(second + j * n, second + (j + 1) * n, rows + j * 2 * n + n);
  }
  if constexpr (std::is_same_v<T, BFloat16>) {
    transpose(reinterpret_cast<const uint32_t*>(rows), n, grid, n, reinterpret_cast<uint32_t*>(operand), width);
  } else {
    transpose(rows, 2 * n, grid, 2 * n, operand, width);
  }
  const float* shared_t = f.shared + i * channels * width;
  const float *a1 = f.terms, *e1 = f.terms + channels, *a2 = f.terms + 2 * channels;
  for (int64_t j0 = 0; j0 < width; j0 += 16) {
    alignas(64) float m1[16] = {}, r1[16] = {}, m2[16] = {}, live[16] = {};  // zero past g: those columns come out zero
    for (int64_t j = j0; j < std::min(grid, j0 + 16); ++j) {
      m1[j - j0] = stats1[2 * j];
      r1[j - j0] = stats1[2 * j + 1];
      m2[j - j0] = stats2[2 * j];
      live[j - j0] = 1.0f;
      column_scale[j] = stats2[2 * j + 1];
    }
    for (int64_t j = std::max(grid, j0); j < j0 + 16; ++j) column_scale[j] = 0.0f;
    const vf16 first_scale = v16_load_ps(r1), ones = v16_load_ps(live);
    const vf16 first_shift = v16_sub_ps(v16_setzero_ps(), v16_mul_ps(first_scale, v16_load_ps(m1)));
    const vf16 second_shift = v16_sub_ps(v16_setzero_ps(), v16_load_ps(m2));
    for (int64_t c = 0; c < channels; ++c) {
      vf16 v = v16_mul_ps(first_scale, v16_loadu_ps(shared_t + c * width + j0));
      v = v16_fmadd_ps(first_shift, v16_set1_ps(a1[c]), v);
      v = v16_fmadd_ps(ones, v16_set1_ps(e1[c]), v);
      v16_storeu_ps(up + c * width + j0, v16_fmadd_ps(second_shift, v16_set1_ps(a2[c]), v));
    }
  }
  gemm(channels, width, 2 * n, f.mix + source * channels * 2 * n, 2 * n, operand, width, up, width, true);
}

// One grid row `i` of one prompt from its first convolution's output up (C, G) (`convolve_row` or `folded_row`, the
// bias not added, each column j to be multiplied by column_scale[j]: ones, or the fold's r2), hypernetwork weights
// (M, C/8) -> rows 4i .. 4i + 3 of its M masks in out (M, 4g, 4g). Scratch: mid (2, C/4, 2G) (`store_mid`), fine
// (C/4, 2G).
template <typename T>
void upscale_row(const float* up, const float* column_scale, const float* hyper, int64_t masks, int64_t grid, int64_t channels, int64_t i,
                 const Weights<T>& w, T* out, T* mid, float* fine) {
  const int64_t quarter = channels / 4, eighth = channels / 8, width = (grid + 15) / 16 * 16, side = 4 * grid;
  const GeluFor<T> gelu;
  // LayerNorm over the C/4 channels of each (a, b, j), then GELU, into mid[a] with columns 2j + b
  for (int64_t a = 0; a < 2; ++a)
    for (int64_t j0 = 0; j0 < width; j0 += 16) {
      vf16 mean[2], scale[2];
      const vf16 columns = v16_loadu_ps(column_scale + j0);
      for (int64_t b = 0; b < 2; ++b) {
        const float* rows = up + (2 * a + b) * quarter * width + j0;
        const float* bias = w.bias1 + (2 * a + b) * quarter;
        vf16 sum = v16_setzero_ps();
        for (int64_t c = 0; c < quarter; ++c) sum = v16_add_ps(sum, v16_fmadd_ps(v16_loadu_ps(rows + c * width), columns, v16_set1_ps(bias[c])));
        mean[b] = v16_div_ps(sum, v16_set1_ps(static_cast<float>(quarter)));
        vf16 squares = v16_setzero_ps();
        for (int64_t c = 0; c < quarter; ++c) {
          const vf16 d = v16_sub_ps(v16_fmadd_ps(v16_loadu_ps(rows + c * width), columns, v16_set1_ps(bias[c])), mean[b]);
          squares = v16_fmadd_ps(d, d, squares);
        }
        const vf16 variance = v16_div_ps(squares, v16_set1_ps(static_cast<float>(quarter)));
        scale[b] = v16_div_ps(v16_set1_ps(1.0f), v16_sqrt_ps(v16_add_ps(variance, v16_set1_ps(w.eps))));
      }
      for (int64_t c = 0; c < quarter; c += 2) {  // channel pairs (C/4 is even): bf16's VNNI words hold two channels
        vf16 lo[2], hi[2];
        for (int64_t k = 0; k < 2; ++k) {
          vf16 y[2];
          for (int64_t b = 0; b < 2; ++b) {
            const int64_t r = (2 * a + b) * quarter + c + k;
            const vf16 v = v16_fmadd_ps(v16_loadu_ps(up + r * width + j0), columns, v16_set1_ps(w.bias1[r]));
            const vf16 normed = v16_mul_ps(v16_sub_ps(v, mean[b]), scale[b]);
            y[b] = gelu(v16_fmadd_ps(normed, v16_set1_ps(w.norm_w[c + k]), v16_set1_ps(w.norm_b[c + k])));
          }
          interleave(y[0], y[1], lo[k], hi[k]);
        }
        store_mid(mid + a * quarter * 2 * width, c, 2 * width, 2 * j0, lo, hi);
      }
    }
  // second convolution per (a, c), GELU and the hypernetwork product: mask row 4i + 2a + c, column 2q + d for the
  // column q = 2j + b of mid and the second convolution's column offset d
  for (int64_t a = 0; a < 2; ++a)
    for (int64_t c = 0; c < 2; ++c) {
      gemm(quarter, 2 * width, quarter, w.conv2 + c * quarter * quarter, quarter, mid + a * quarter * 2 * width, 2 * width, fine,
           2 * width, false);  // (C/4 = [d, C/8], 2G)
      const float* bias = w.bias2 + c * quarter;
      for (int64_t q0 = 0; q0 < 2 * grid; q0 += 16) {
        vf16 acc[kMaxMasks][2];
        for (int64_t m = 0; m < masks; ++m) acc[m][0] = acc[m][1] = v16_setzero_ps();
        for (int64_t d = 0; d < 2; ++d)
          for (int64_t k = 0; k < eighth; ++k) {
            const int64_t r = d * eighth + k;
            const vf16 f = gelu(v16_add_ps(v16_loadu_ps(fine + r * 2 * width + q0), v16_set1_ps(bias[r])));
            for (int64_t m = 0; m < masks; ++m) acc[m][d] = v16_fmadd_ps(v16_set1_ps(hyper[m * eighth + k]), f, acc[m][d]);
          }
        const int64_t columns = std::min<int64_t>(32, side - 2 * q0);
        for (int64_t m = 0; m < masks; ++m) {
          vf16 lo, hi;
          interleave(acc[m][0], acc[m][1], lo, hi);
          T* row = out + (m * side + 4 * i + 2 * a + c) * side + 2 * q0;
          store16(row, lanes_below(columns), lo);
          if (columns > 16) store16(row + 16, lanes_below(columns - 16), hi);
        }
      }
    }
}

// All masks: prompt k's first convolution from image tokens x (S, L, C) of source picks[k] (or k), or `fold`.
template <typename T>
void upscale_all(const T* x, int64_t length, int64_t channels, const int64_t* picks, const at::Tensor& hyper, const Weights<T>& w,
                 const Fold<T>* fold, at::Tensor& out) {
  const int64_t prompts = hyper.size(0), masks = hyper.size(1);
  const int64_t grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(length))));
  const int64_t quarter = channels / 4, eighth = channels / 8, width = (grid + 15) / 16 * 16, n = fold ? fold->n : 0;
  const float* h = hyper.data_ptr<float>();
  T* o = out.data_ptr<T>();
  at::parallel_for(0, prompts * grid, 1, [&](int64_t begin, int64_t end) {
    // zero-filled scratch: padding columns stay finite (computed, never stored)
    std::vector<T> xt(fold ? 0 : channels * width, T(0.0f)), mid(2 * quarter * 2 * width), rows(grid * 2 * n), operand(2 * n * width, T(0.0f));
    std::vector<float> up(channels * width), fine(quarter * 2 * width), column_scale(width, 1.0f);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task / grid, i = task % grid, source = picks ? picks[k] : k;
      if (fold) {
        folded_row(*fold, source, length, grid, channels, i, rows.data(), operand.data(), up.data(), column_scale.data());
      } else {
        convolve_row(x + (source * length + i * grid) * channels, grid, channels, w, xt.data(), up.data());
      }
      upscale_row<T>(up.data(), column_scale.data(), h + k * masks * eighth, masks, grid, channels, i, w, o + k * masks * 16 * length,
                     mid.data(), fine.data());
    }
    release(mid.data());
  });
}

// The checks both entry points share: hyper (n, M, C/8) fp32, norm_weight, norm_bias (C/4) fp32, conv2 (2, C/4, C/4) in
// `dtype`, bias2 (2, C/4) fp32, out (n, M, 4g, 4g) in `dtype`, index (n) int64 into `sources` or none (then n = sources).
// Returns index's data or null.
const int64_t* check_common(int64_t sources, int64_t length, int64_t channels, at::ScalarType dtype, const std::optional<at::Tensor>& index,
                            const at::Tensor& hyper, const at::Tensor& norm_weight, const at::Tensor& norm_bias, const at::Tensor& conv2,
                            const at::Tensor& bias2, const at::Tensor& out) {
  check_float(hyper, "mask_upscaling", "hyper", 3);
  check_float(norm_weight, "mask_upscaling", "norm_weight", 1);
  check_float(norm_bias, "mask_upscaling", "norm_bias", 1);
  check_dense(conv2, "mask_upscaling", "conv2", 3, dtype);
  check_float(bias2, "mask_upscaling", "bias2", 2);
  check_dense(out, "mask_upscaling", "out", 4, dtype);
  const int64_t grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(length))));
  const int64_t prompts = hyper.size(0), masks = hyper.size(1), quarter = channels / 4, eighth = channels / 8;
  TORCH_CHECK(grid * grid == length, "mask_upscaling: image must hold g * g tokens, got ", length);
  TORCH_CHECK(channels % 8 == 0 && hyper.size(2) == eighth, "mask_upscaling: hyper must be (n, M, C / 8) with C a multiple of 8");
  TORCH_CHECK(masks >= 1 && masks <= kMaxMasks, "mask_upscaling: at most ", kMaxMasks, " masks per prompt, got ", masks);
  TORCH_CHECK(norm_weight.size(0) == quarter && norm_bias.size(0) == quarter, "mask_upscaling: the norm must have C / 4 channels");
  TORCH_CHECK(conv2.size(0) == 2 && conv2.size(1) == quarter && conv2.size(2) == quarter && bias2.size(0) == 2 && bias2.size(1) == quarter,
              "mask_upscaling: conv2 must be (2, C / 4, C / 4), bias2 (2, C / 4)");
  TORCH_CHECK(out.size(0) == prompts && out.size(1) == masks && out.size(2) == 4 * grid && out.size(3) == 4 * grid,
              "mask_upscaling: out must be (n, M, 4g, 4g)");
  if (!index) {
    TORCH_CHECK(sources == prompts, "mask_upscaling: without index, image and hyper must have the same first size");
    return nullptr;
  }
  TORCH_CHECK(index->scalar_type() == at::kLong && index->dim() == 1 && index->is_contiguous() && index->size(0) == prompts,
              "mask_upscaling: index must be a contiguous int64 vector of n entries");
  const int64_t* picks = index->data_ptr<int64_t>();
  for (int64_t k = 0; k < prompts; ++k) TORCH_CHECK(picks[k] >= 0 && picks[k] < sources, "mask_upscaling: index out of range");
  return picks;
}

template <typename T>
Weights<T> weights_of(const std::optional<at::Tensor>& conv1, const at::Tensor& bias1, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                      double eps, const at::Tensor& conv2, const at::Tensor& bias2) {
  return Weights<T>{conv1 ? conv1->data_ptr<T>() : nullptr, bias1.data_ptr<float>(), norm_weight.data_ptr<float>(), norm_bias.data_ptr<float>(),
                    static_cast<float>(eps), conv2.data_ptr<T>(), bias2.data_ptr<float>()};
}

// image (S, g*g, C); index (n) int64 or none (then n = S, prompt k reads image k); hyper (n, M, C/8) fp32; conv1 (C, C),
// bias1 (C) fp32; norm_weight, norm_bias (C/4) fp32; conv2 (2, C/4, C/4), bias2 (2, C/4) fp32; out (n, M, 4g, 4g).
// image, conv1, conv2 and out share one dtype: fp32, or bf16 where `bf16_usable()`.
void upscale_masks(const at::Tensor& image, const std::optional<at::Tensor>& index, const at::Tensor& hyper,
                   const at::Tensor& conv1, const at::Tensor& bias1, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                   double eps, const at::Tensor& conv2, const at::Tensor& bias2, at::Tensor& out) {
  const at::ScalarType dtype = image.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "mask_upscaling: image must be fp32 or bf16, got ", dtype);
  check_dense(image, "mask_upscaling", "image", 3, dtype);
  check_dense(conv1, "mask_upscaling", "conv1", 2, dtype);
  check_float(bias1, "mask_upscaling", "bias1", 1);
  const int64_t sources = image.size(0), length = image.size(1), channels = image.size(2);
  const int64_t* picks = check_common(sources, length, channels, dtype, index, hyper, norm_weight, norm_bias, conv2, bias2, out);
  TORCH_CHECK(conv1.size(0) == channels && conv1.size(1) == channels && bias1.size(0) == channels, "mask_upscaling: conv1 must be (C, C), bias1 (C)");
  if (dtype == at::kBFloat16) {
    sam_hf_brgemm::check_bf16_cpu("mask_upscaling");
    upscale_all(image.data_ptr<BFloat16>(), length, channels, picks, hyper,
                weights_of<BFloat16>(conv1, bias1, norm_weight, norm_bias, eps, conv2, bias2), static_cast<const Fold<BFloat16>*>(nullptr), out);
  } else {
    upscale_all(image.data_ptr<float>(), length, channels, picks, hyper, weights_of<float>(conv1, bias1, norm_weight, norm_bias, eps, conv2, bias2),
                static_cast<const Fold<float>*>(nullptr), out);
  }
}

// The same masks with the first convolution folded through the decoder's last two image -> token attentions (`Fold`):
// shared (g, C, G) fp32, the shared image side x0 times M^T per grid row, channel-major, zero past g (G = g rounded up
// to 16), M = W1 diag(g2 g1) (W1 the first convolution as (C, C), g1,
// g2 the two attentions' LayerNorm weights); mix (S, C, 2N) per source prompt, [V1 M^T | V2 (W1 diag(g2))^T]
// transposed (V1, V2 the attentions' values with their output projection folded in); first, second (S, L, N), the
// attentions' softmax weights per image token, the first's times its LayerNorm's 1 / std (r1 w1 and w2, as
// `decoder_attention.image_to_tokens` records them with and without `scale_weights`); stats1, stats2 (S, L, 2) fp32,
// their LayerNorms' mean and 1 / std (m1, r1 and m2, r2); terms (3, C) fp32: a1 = W1 (g2 g1), e1 = W1 (g2 b1), a2 =
// W1 g2; bias1 (C) fp32 = W1 b2 + the first convolution's bias. Per token 2N + C products and additions of C-vectors
// instead of the C x C convolution. index, hyper, the norm, conv2, bias2 and out as in `upscale_masks`; mix, first,
// second, conv2 and out in one dtype, fp32 or bf16.
void upscale_masks_folded(const std::optional<at::Tensor>& index, const at::Tensor& hyper, const at::Tensor& shared, const at::Tensor& mix,
                          const at::Tensor& first, const at::Tensor& second, const at::Tensor& stats1, const at::Tensor& stats2,
                          const at::Tensor& terms,
                          const at::Tensor& bias1, const at::Tensor& norm_weight, const at::Tensor& norm_bias, double eps,
                          const at::Tensor& conv2, const at::Tensor& bias2, at::Tensor& out) {
  const at::ScalarType dtype = mix.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16, "mask_upscaling: mix must be fp32 or bf16, got ", dtype);
  check_dense(mix, "mask_upscaling", "mix", 3, dtype);
  check_dense(first, "mask_upscaling", "first", 3, dtype);
  check_dense(second, "mask_upscaling", "second", 3, dtype);
  check_float(stats1, "mask_upscaling", "stats1", 3);
  check_float(stats2, "mask_upscaling", "stats2", 3);
  check_float(terms, "mask_upscaling", "terms", 2);
  check_float(bias1, "mask_upscaling", "bias1", 1);
  check_float(shared, "mask_upscaling", "shared", 3);
  const int64_t sources = mix.size(0), channels = mix.size(1), length = first.size(1), n = first.size(2);
  const int64_t grid = shared.size(0);
  const int64_t* picks = check_common(sources, length, channels, dtype, index, hyper, norm_weight, norm_bias, conv2, bias2, out);
  TORCH_CHECK(grid * grid == length && shared.size(1) == channels && shared.size(2) == (grid + 15) / 16 * 16 && mix.size(2) == 2 * n &&
                  bias1.size(0) == channels && terms.size(0) == 3 && terms.size(1) == channels,
              "mask_upscaling: shared must be (g, C, G), mix (S, C, 2N), bias1 (C), terms (3, C)");
  TORCH_CHECK(first.sizes() == second.sizes() && first.size(0) == sources && first.size(1) == length && stats1.sizes() == stats2.sizes() &&
                  stats1.size(0) == sources && stats1.size(1) == length && stats1.size(2) == 2,
              "mask_upscaling: first and second must be (S, L, N), stats1 and stats2 (S, L, 2)");
  if (dtype == at::kBFloat16) {
    sam_hf_brgemm::check_bf16_cpu("mask_upscaling");
    const Fold<BFloat16> fold{shared.data_ptr<float>(), mix.data_ptr<BFloat16>(), first.data_ptr<BFloat16>(), second.data_ptr<BFloat16>(),
                              stats1.data_ptr<float>(), stats2.data_ptr<float>(), terms.data_ptr<float>(), n};
    upscale_all<BFloat16>(nullptr, length, channels, picks, hyper, weights_of<BFloat16>(std::nullopt, bias1, norm_weight, norm_bias, eps, conv2, bias2),
                          &fold, out);
  } else {
    const Fold<float> fold{shared.data_ptr<float>(), mix.data_ptr<float>(), first.data_ptr<float>(), second.data_ptr<float>(),
                           stats1.data_ptr<float>(), stats2.data_ptr<float>(), terms.data_ptr<float>(), n};
    upscale_all<float>(nullptr, length, channels, picks, hyper, weights_of<float>(std::nullopt, bias1, norm_weight, norm_bias, eps, conv2, bias2),
                       &fold, out);
  }
}

// x (any shape) fp32 -> GELU(x) fp32 as the kernel computes it: its fp32 table, or with `bf16_path` the bf16 path's
// (before the rounding to bf16). For tests.
at::Tensor gelu(const at::Tensor& x, bool bf16_path) {
  TORCH_CHECK(x.scalar_type() == at::kFloat && x.is_contiguous(), "mask_upscaling: gelu takes a contiguous fp32 tensor");
  at::Tensor out = at::empty_like(x);
  const float* src = x.data_ptr<float>();
  float* dst = out.data_ptr<float>();
  const auto apply = [&](const auto& f) {
    for (int64_t i = 0; i < x.numel(); i += 16) {
      const mask16 lanes = lanes_below(x.numel() - i);
      v16_mask_storeu_ps(dst + i, lanes, f(v16_maskz_loadu_ps(lanes, src + i)));
    }
  };
  if (bf16_path) {
    apply(GeluFor<BFloat16>());
  } else {
    apply(GeluFor<float>());
  }
  return out;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("isa", [] { return std::string(SAM_HF_VEC16_ISA); }, "the instruction set of this build: avx512 or avx2 (vec16.h)");
  m.def("upscale_masks", &upscale_masks, "masks = hyper . GELU(conv2(GELU(LayerNorm(conv1(image))))) in fp32 or bf16");
  m.def("upscale_masks_folded", &upscale_masks_folded, "upscale_masks with conv1(image) folded through the decoder's last two attentions");
  m.def("gelu", &gelu, "the kernel's GELU of an fp32 tensor (its fp32 path, or its bf16 path's before rounding), for tests",
        pybind11::arg("x"), pybind11::arg("bf16_path") = false);
  m.def("brgemm_usable", &brgemm_usable, "whether ATen's fp32 brgemm serves this CPU");
  m.def("bf16_usable", &bf16_brgemm_usable, "whether ATen's bf16 brgemm serves this CPU (then upscale_masks takes bf16)");
}
