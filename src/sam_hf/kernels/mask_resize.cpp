// Bilinear resizing of mask logits (align_corners=False), bit for bit as ATen's CPU upsample_bilinear2d computes it
// for float32 on x86 CPUs with FMA, several times faster (x86 CPUs with AVX-512 or AVX2):
//
//   source coordinate  c = fma(scale, i + 0.5, -0.5), clamped at 0; i0 = min(floor(c), in - 1), i1 = i0 + 1 below
//                      the last row or column, else i0; w1 = clamp(c - i0, 0, 1), w0 = 1 - w1 (the same index and
//                      weights when in == out: i1 = i0 = i, w0 = 1, w1 = 0), scale = float(1 / scale factor) when
//                      one is given, else float(in) / float(out)
//   per output pixel   h_r = fma(x[r, j0], u0, x[r, j1] * u1) for the two source rows r = i0, i1 of its row,
//                      out = fma(h_i0, w0, h_i1 * w1)
//
// ATen evaluates that formula for every output pixel; here the horizontal step h_r of a source row is computed once
// for all the output rows that read it (the same values), and the vertical step runs on whole rows of 16 lanes. The
// caller can ask for a window of the output only, `rows` x `cols` from (row0, col0) (each pixel is computed the same
// way wherever it sits), and for the binary mask `out > threshold` instead of the logits. sam_hf.processing.bilinear
// checks the result against ATen's once per process before it uses this kernel, and only where ATen itself would take
// that formula (its generic kernel). Built on first use by sam_hf.kernels.loader; inference only.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <immintrin.h>

#include "simd.h"

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <optional>
#include <vector>

using sam_hf_simd::lanes_below;

namespace {

// One axis: output index -> the two source indices and their weights.
struct Axis {
  std::vector<int32_t> low, high;
  std::vector<float> w0, w1;
};

// Outputs first .. first + count - 1 of an axis resized from `in` to `out`.
Axis make_axis(int64_t in, int64_t out, int64_t first, int64_t count, std::optional<double> scale_factor) {
  const float scale = (scale_factor.has_value() && *scale_factor > 0.0) ? static_cast<float>(1.0 / *scale_factor)
                                                                         : static_cast<float>(in) / static_cast<float>(out);
  Axis axis;
  axis.low.resize(count);
  axis.high.resize(count);
  axis.w0.resize(count);
  axis.w1.resize(count);
  for (int64_t k = 0; k < count; ++k) {
    const int64_t i = first + k;
    if (in == out) {  // ATen's copy case
      axis.low[k] = axis.high[k] = static_cast<int32_t>(i);
      axis.w0[k] = 1.0f;
      axis.w1[k] = 0.0f;
      continue;
    }
    float real = std::fma(scale, static_cast<float>(i) + 0.5f, -0.5f);
    if (real < 0.0f) real = 0.0f;
    const int64_t low = std::min(static_cast<int64_t>(std::floor(real)), in - 1);
    const float w1 = std::min(std::max(real - static_cast<float>(low), 0.0f), 1.0f);
    axis.low[k] = static_cast<int32_t>(low);
    axis.high[k] = static_cast<int32_t>(low + (low < in - 1 ? 1 : 0));
    axis.w1[k] = w1;
    axis.w0[k] = 1.0f - w1;
  }
  return axis;
}

// dst[j] = fma(row[low[j]], u0[j], row[high[j]] * u1[j]) for j < cols.
void horizontal(const float* row, const Axis& axis, int64_t cols, float* dst) {
  for (int64_t j = 0; j < cols; j += 16) {
    const mask16 lanes = lanes_below(cols - j);
    const vi16 low = v16_maskz_loadu_epi32(lanes, axis.low.data() + j);
    const vi16 high = v16_maskz_loadu_epi32(lanes, axis.high.data() + j);
    const vf16 a = v16_mask_i32gather_ps(v16_setzero_ps(), lanes, low, row, 4);
    const vf16 b = v16_mask_i32gather_ps(v16_setzero_ps(), lanes, high, row, 4);
    const vf16 u0 = v16_maskz_loadu_ps(lanes, axis.w0.data() + j);
    const vf16 u1 = v16_maskz_loadu_ps(lanes, axis.w1.data() + j);
    v16_mask_storeu_ps(dst + j, lanes, v16_fmadd_ps(a, u0, v16_mul_ps(b, u1)));
  }
}

// The horizontal rows of one plane, two kept (the vertical step reads source rows in non-decreasing order).
struct RowCache {
  const float* plane;
  int64_t stride, cols;
  const Axis* across;
  std::vector<float> data;
  int64_t held[2] = {-1, -1};
  int next = 0;

  const float* get(int64_t r) {
    for (int k = 0; k < 2; ++k)
      if (held[k] == r) return data.data() + k * cols;
    const int k = next;
    next ^= 1;
    horizontal(plane + r * stride, *across, cols, data.data() + k * cols);
    held[k] = r;
    return data.data() + k * cols;
  }
};

void check_source(const torch::Tensor& src) {
  TORCH_CHECK(src.device().is_cpu() && src.scalar_type() == torch::kFloat32, "src must be a float32 CPU tensor");
  TORCH_CHECK(src.dim() == 3 && src.stride(2) == 1, "src must be (N, h, w) with contiguous rows");
  TORCH_CHECK(src.size(1) > 0 && src.size(2) > 0, "src must have at least one row and one column");
  TORCH_CHECK(src.size(1) < (1 << 30) && src.size(2) < (1 << 30), "src is too large");
}

}  // namespace

// src (N, h, w) float32 -> the window rows x cols from (row0, col0) of its bilinear resizing to (out_h, out_w)
// (align_corners=False, scale factors as ATen takes them): float32 logits, or bool `> threshold` when one is given.
torch::Tensor resize(const torch::Tensor& src, int64_t out_h, int64_t out_w, std::optional<double> scale_h,
                     std::optional<double> scale_w, int64_t rows, int64_t cols, std::optional<double> threshold,
                     int64_t row0, int64_t col0) {
  check_source(src);
  TORCH_CHECK(out_h > 0 && out_w > 0, "the output size must be positive");
  TORCH_CHECK(row0 >= 0 && col0 >= 0 && rows >= 0 && cols >= 0 && row0 + rows <= out_h && col0 + cols <= out_w,
              "the window must lie within the output");
  const int64_t planes = src.size(0), in_h = src.size(1), in_w = src.size(2);
  const Axis down = make_axis(in_h, out_h, row0, rows, scale_h);
  const Axis across = make_axis(in_w, out_w, col0, cols, scale_w);
  const bool binary = threshold.has_value();
  torch::Tensor out = torch::empty({planes, rows, cols}, src.options().dtype(binary ? torch::kBool : torch::kFloat32));
  if (planes == 0 || rows == 0 || cols == 0) return out;
  const float* source = src.data_ptr<float>();
  const int64_t plane_stride = src.stride(0), row_stride = src.stride(1);
  const float limit = binary ? static_cast<float>(*threshold) : 0.0f;
  bool* binary_out = binary ? out.data_ptr<bool>() : nullptr;
  float* float_out = binary ? nullptr : out.data_ptr<float>();
  const int64_t block = std::max<int64_t>(1, std::min<int64_t>(rows, (1 << 16) / std::max<int64_t>(cols, 1)));
  const int64_t blocks_per_plane = (rows + block - 1) / block;
  at::parallel_for(0, planes * blocks_per_plane, 1, [&](int64_t begin, int64_t end) {
    RowCache cache{nullptr, row_stride, cols, &across, std::vector<float>(2 * cols)};
    int64_t current = -1;
    for (int64_t task = begin; task < end; ++task) {
      const int64_t n = task / blocks_per_plane, first = (task % blocks_per_plane) * block;
      if (n != current) {
        cache.plane = source + n * plane_stride;
        cache.held[0] = cache.held[1] = -1;
        current = n;
      }
      for (int64_t i = first; i < std::min(rows, first + block); ++i) {
        const float* top = cache.get(down.low[i]);
        const float* bottom = cache.get(down.high[i]);
        const vf16 w0 = v16_set1_ps(down.w0[i]), w1 = v16_set1_ps(down.w1[i]);
        const int64_t offset = (n * rows + i) * cols;
        for (int64_t j = 0; j < cols; j += 16) {
          const mask16 lanes = lanes_below(cols - j);
          const vf16 value = v16_fmadd_ps(v16_maskz_loadu_ps(lanes, top + j), w0,
                                               v16_mul_ps(v16_maskz_loadu_ps(lanes, bottom + j), w1));
          if (binary) {
            const mask16 above = v16_mask_cmp_ps_mask(lanes, value, v16_set1_ps(limit), _CMP_GT_OQ);
            v16_store_flags(binary_out + offset + j, lanes, above);
          } else {
            v16_mask_storeu_ps(float_out + offset + j, lanes, value);
          }
        }
      }
    }
  });
  return out;
}

// The source indices and weight of each output along an axis resized from `in` to `out` (size-based scale), as
// `resize` reads them: (low (out,) int64, high (out,) int64, w1 (out,) float32).
std::vector<torch::Tensor> axis_table(int64_t in, int64_t out) {
  TORCH_CHECK(in > 0 && out > 0 && in < (1 << 30) && out < (1 << 30), "sizes must be positive");
  const Axis axis = make_axis(in, out, 0, out, std::nullopt);
  torch::Tensor low = torch::empty({out}, torch::kInt64), high = torch::empty({out}, torch::kInt64);
  torch::Tensor w1 = torch::empty({out}, torch::kFloat32);
  for (int64_t i = 0; i < out; ++i) {
    low.data_ptr<int64_t>()[i] = axis.low[i];
    high.data_ptr<int64_t>()[i] = axis.high[i];
    w1.data_ptr<float>()[i] = axis.w1[i];
  }
  return {low, high, w1};
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("isa", [] { return std::string(SAM_HF_VEC16_ISA); }, "the instruction set of this build: avx512 or avx2 (vec16.h)");
  m.def("resize", &resize, "ATen's bilinear upsample_bilinear2d (align_corners=False) of float32 planes, bit for bit, "
        "a rows x cols window of the output from (row0, col0), as logits or `> threshold`",
        pybind11::arg("src"), pybind11::arg("out_h"), pybind11::arg("out_w"), pybind11::arg("scale_h"), pybind11::arg("scale_w"),
        pybind11::arg("rows"), pybind11::arg("cols"), pybind11::arg("threshold") = std::nullopt,
        pybind11::arg("row0") = 0, pybind11::arg("col0") = 0);
  m.def("axis_table", &axis_table, "(low, high, w1) per output of an axis resized from `in` to `out`, as resize reads them");
}
