// The mask decoder's upscaling and hypernetwork product in fp32, one grid row of one prompt at a time in cache
// (x86 CPUs with AVX-512):
//
//   masks[m] = hyper[m] . GELU(conv2(GELU(LayerNorm(conv1(x)))))
//
// conv1 and conv2 are 2x2 stride-2 transposed convolutions: each image token becomes 2x2 pixels of C/4 channels,
// each of those 2x2 pixels of C/8 channels, so every output pixel depends on one image token only. Everything runs
// channel-major (channels as rows, pixels as columns): the LayerNorm, both GELUs and the hypernetwork product are
// then plain vertical vector arithmetic, and the pixels come out in the mask's raster order by interleaving
// columns. The two convolutions are ATen's fp32 brgemm (oneDNN's ukernel). Grid rows of all prompts are spread over
// the threads; each writes its own 4 rows of every mask. Built on first use by sam_hf.kernels.loader; inference only.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "fp32_brgemm.h"
#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

using sam_hf_fp32::brgemm_usable;
using sam_hf_fp32::check_float;
using sam_hf_fp32::gemm;
using sam_hf_simd::exp16;
using sam_hf_simd::lanes_below;
using sam_hf_simd::transpose;

namespace {

constexpr int64_t kMaxMasks = 8;

// erf of 16 floats: Abramowitz and Stegun 7.1.26 (absolute error below 1.5e-7), the form PyTorch's vectorised CPU
// erf uses; 1 / (1 + p|x|) by a reciprocal estimate and one Newton step.
inline __m512 erf16(__m512 x) {
  const __m512 ax = _mm512_abs_ps(x);
  const __m512 d = _mm512_fmadd_ps(ax, _mm512_set1_ps(0.3275911f), _mm512_set1_ps(1.0f));
  __m512 t = _mm512_rcp14_ps(d);
  t = _mm512_mul_ps(t, _mm512_fnmadd_ps(d, t, _mm512_set1_ps(2.0f)));
  __m512 p = _mm512_set1_ps(1.061405429f);
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-1.453152027f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(1.421413741f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(-0.284496736f));
  p = _mm512_fmadd_ps(p, t, _mm512_set1_ps(0.254829592f));
  p = _mm512_mul_ps(p, t);
  const __m512 y = _mm512_fnmadd_ps(p, exp16(_mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), ax), ax)), _mm512_set1_ps(1.0f));
  return _mm512_or_ps(y, _mm512_and_ps(x, _mm512_set1_ps(-0.0f)));  // erf is odd: x's sign
}

// GELU (the erf form, as F.gelu) of 16 floats.
inline __m512 gelu16(__m512 x) {
  const __m512 half = _mm512_mul_ps(x, _mm512_set1_ps(0.5f));
  return _mm512_fmadd_ps(half, erf16(_mm512_mul_ps(x, _mm512_set1_ps(0.70710678118654752f))), half);
}

// (lo, hi) = the lanes of u and v interleaved: u0 v0 u1 v1 ... u15 v15.
inline void interleave(__m512 u, __m512 v, __m512& lo, __m512& hi) {
  const __m512i low = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i high = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  lo = _mm512_permutex2var_ps(u, low, v);
  hi = _mm512_permutex2var_ps(u, high, v);
}

struct Weights {
  const float* conv1;   // (C, C): rows (a, b, C/4), columns the input channels
  const float* bias1;   // (C)
  const float* norm_w;  // (C/4)
  const float* norm_b;  // (C/4)
  float eps;
  const float* conv2;   // (2, C/4, C/4): per output row offset c, rows (d, C/8), columns C/4
  const float* bias2;   // (2, C/4)
};

// One grid row `i` of one prompt: tokens x (g, C), hypernetwork weights (M, C/8) -> rows 4i .. 4i + 3 of its M
// masks in out (M, 4g, 4g). Scratch: xt (C, G), up (C, G), mid (2, C/4, 2G), fine (C/4, 2G), G = g rounded up to 16.
void upscale_row(const float* x, const float* hyper, int64_t masks, int64_t grid, int64_t channels, int64_t i, const Weights& w,
                 float* out, float* xt, float* up, float* mid, float* fine) {
  const int64_t quarter = channels / 4, eighth = channels / 8, width = (grid + 15) / 16 * 16, side = 4 * grid;
  transpose(x, channels, grid, channels, xt, width);                             // (C, g): columns are tokens j
  gemm(channels, width, channels, w.conv1, channels, xt, width, up, width, false);  // (C = [a, b, C/4], G)
  // LayerNorm over the C/4 channels of each (a, b, j), then GELU, into mid[a] with columns 2j + b
  for (int64_t a = 0; a < 2; ++a)
    for (int64_t j0 = 0; j0 < width; j0 += 16) {
      __m512 mean[2], scale[2];
      for (int64_t b = 0; b < 2; ++b) {
        const float* rows = up + (2 * a + b) * quarter * width + j0;
        const float* bias = w.bias1 + (2 * a + b) * quarter;
        __m512 sum = _mm512_setzero_ps();
        for (int64_t c = 0; c < quarter; ++c) sum = _mm512_add_ps(sum, _mm512_add_ps(_mm512_loadu_ps(rows + c * width), _mm512_set1_ps(bias[c])));
        mean[b] = _mm512_div_ps(sum, _mm512_set1_ps(static_cast<float>(quarter)));
        __m512 squares = _mm512_setzero_ps();
        for (int64_t c = 0; c < quarter; ++c) {
          const __m512 d = _mm512_sub_ps(_mm512_add_ps(_mm512_loadu_ps(rows + c * width), _mm512_set1_ps(bias[c])), mean[b]);
          squares = _mm512_fmadd_ps(d, d, squares);
        }
        const __m512 variance = _mm512_div_ps(squares, _mm512_set1_ps(static_cast<float>(quarter)));
        scale[b] = _mm512_div_ps(_mm512_set1_ps(1.0f), _mm512_sqrt_ps(_mm512_add_ps(variance, _mm512_set1_ps(w.eps))));
      }
      for (int64_t c = 0; c < quarter; ++c) {
        __m512 y[2];
        for (int64_t b = 0; b < 2; ++b) {
          const __m512 v = _mm512_add_ps(_mm512_loadu_ps(up + ((2 * a + b) * quarter + c) * width + j0), _mm512_set1_ps(w.bias1[(2 * a + b) * quarter + c]));
          const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(v, mean[b]), scale[b]);
          y[b] = gelu16(_mm512_fmadd_ps(normed, _mm512_set1_ps(w.norm_w[c]), _mm512_set1_ps(w.norm_b[c])));
        }
        __m512 lo, hi;
        interleave(y[0], y[1], lo, hi);
        float* row = mid + (a * quarter + c) * 2 * width + 2 * j0;
        _mm512_storeu_ps(row, lo);
        _mm512_storeu_ps(row + 16, hi);
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
        __m512 acc[kMaxMasks][2];
        for (int64_t m = 0; m < masks; ++m) acc[m][0] = acc[m][1] = _mm512_setzero_ps();
        for (int64_t d = 0; d < 2; ++d)
          for (int64_t k = 0; k < eighth; ++k) {
            const int64_t r = d * eighth + k;
            const __m512 f = gelu16(_mm512_add_ps(_mm512_loadu_ps(fine + r * 2 * width + q0), _mm512_set1_ps(bias[r])));
            for (int64_t m = 0; m < masks; ++m) acc[m][d] = _mm512_fmadd_ps(_mm512_set1_ps(hyper[m * eighth + k]), f, acc[m][d]);
          }
        const int64_t columns = std::min<int64_t>(32, side - 2 * q0);
        for (int64_t m = 0; m < masks; ++m) {
          __m512 lo, hi;
          interleave(acc[m][0], acc[m][1], lo, hi);
          float* row = out + (m * side + 4 * i + 2 * a + c) * side + 2 * q0;
          _mm512_mask_storeu_ps(row, lanes_below(columns), lo);
          if (columns > 16) _mm512_mask_storeu_ps(row + 16, lanes_below(columns - 16), hi);
        }
      }
    }
}

// image (S, g*g, C); index (n) int64 or none (then n = S, prompt k reads image k); hyper (n, M, C/8); conv1 (C, C),
// bias1 (C); norm_weight, norm_bias (C/4); conv2 (2, C/4, C/4), bias2 (2, C/4); out (n, M, 4g, 4g).
void upscale_masks(const at::Tensor& image, const std::optional<at::Tensor>& index, const at::Tensor& hyper,
                   const at::Tensor& conv1, const at::Tensor& bias1, const at::Tensor& norm_weight, const at::Tensor& norm_bias,
                   double eps, const at::Tensor& conv2, const at::Tensor& bias2, at::Tensor& out) {
  check_float(image, "mask_upscaling", "image", 3);
  check_float(hyper, "mask_upscaling", "hyper", 3);
  check_float(conv1, "mask_upscaling", "conv1", 2);
  check_float(bias1, "mask_upscaling", "bias1", 1);
  check_float(norm_weight, "mask_upscaling", "norm_weight", 1);
  check_float(norm_bias, "mask_upscaling", "norm_bias", 1);
  check_float(conv2, "mask_upscaling", "conv2", 3);
  check_float(bias2, "mask_upscaling", "bias2", 2);
  check_float(out, "mask_upscaling", "out", 4);
  const int64_t sources = image.size(0), length = image.size(1), channels = image.size(2);
  const int64_t grid = static_cast<int64_t>(std::llround(std::sqrt(static_cast<double>(length))));
  const int64_t prompts = hyper.size(0), masks = hyper.size(1), quarter = channels / 4, eighth = channels / 8;
  TORCH_CHECK(grid * grid == length, "mask_upscaling: image must hold g * g tokens, got ", length);
  TORCH_CHECK(channels % 8 == 0 && hyper.size(2) == eighth, "mask_upscaling: hyper must be (n, M, C / 8) with C a multiple of 8");
  TORCH_CHECK(masks >= 1 && masks <= kMaxMasks, "mask_upscaling: at most ", kMaxMasks, " masks per prompt, got ", masks);
  TORCH_CHECK(conv1.size(0) == channels && conv1.size(1) == channels && bias1.size(0) == channels, "mask_upscaling: conv1 must be (C, C), bias1 (C)");
  TORCH_CHECK(norm_weight.size(0) == quarter && norm_bias.size(0) == quarter, "mask_upscaling: the norm must have C / 4 channels");
  TORCH_CHECK(conv2.size(0) == 2 && conv2.size(1) == quarter && conv2.size(2) == quarter && bias2.size(0) == 2 && bias2.size(1) == quarter,
              "mask_upscaling: conv2 must be (2, C / 4, C / 4), bias2 (2, C / 4)");
  TORCH_CHECK(out.size(0) == prompts && out.size(1) == masks && out.size(2) == 4 * grid && out.size(3) == 4 * grid,
              "mask_upscaling: out must be (n, M, 4g, 4g)");
  const int64_t* picks = nullptr;
  if (index) {
    TORCH_CHECK(index->scalar_type() == at::kLong && index->dim() == 1 && index->is_contiguous() && index->size(0) == prompts,
                "mask_upscaling: index must be a contiguous int64 vector of n entries");
    picks = index->data_ptr<int64_t>();
    for (int64_t k = 0; k < prompts; ++k) TORCH_CHECK(picks[k] >= 0 && picks[k] < sources, "mask_upscaling: index out of range");
  } else {
    TORCH_CHECK(sources == prompts, "mask_upscaling: without index, image and hyper must have the same first size");
  }
  const Weights w{conv1.data_ptr<float>(), bias1.data_ptr<float>(), norm_weight.data_ptr<float>(), norm_bias.data_ptr<float>(),
                  static_cast<float>(eps), conv2.data_ptr<float>(), bias2.data_ptr<float>()};
  const float* x = image.data_ptr<float>();
  const float* h = hyper.data_ptr<float>();
  float* o = out.data_ptr<float>();
  const int64_t width = (grid + 15) / 16 * 16;
  at::parallel_for(0, prompts * grid, 1, [&](int64_t begin, int64_t end) {
    // zero-filled scratch: padding columns stay finite (computed, never stored)
    std::vector<float> xt(channels * width, 0.0f), up(channels * width), mid(2 * quarter * 2 * width), fine(quarter * 2 * width);
    for (int64_t task = begin; task < end; ++task) {
      const int64_t k = task / grid, i = task % grid, source = picks ? picks[k] : k;
      upscale_row(x + (source * length + i * grid) * channels, h + k * masks * eighth, masks, grid, channels, i, w,
                  o + k * masks * 16 * length, xt.data(), up.data(), mid.data(), fine.data());
    }
  });
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("upscale_masks", &upscale_masks, "masks = hyper . GELU(conv2(GELU(LayerNorm(conv1(image))))) in fp32");
  m.def("brgemm_usable", &brgemm_usable, "whether ATen's fp32 brgemm serves this CPU");
}
