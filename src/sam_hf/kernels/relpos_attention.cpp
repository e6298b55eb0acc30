// Attention with SAM's decomposed relative positions in fp32 on x86 CPUs with AVX-512 or AVX2, and in bf16 where they
// have AVX512-BF16 (AMX or not):
//   out = softmax(scale * q k^T + rel_h[q, key_row] + rel_w[q, key_col]) v
// computed flash-style (online softmax over key blocks, nothing of size L x L in memory) with the two
// relative-position terms added to each block of logits while it is in cache. The matmuls are ATen's
// brgemm (oneDNN, bf16 x bf16 -> fp32: AMX tiles where the CPU has them, else AVX512-BF16 dot products; fp32
// x fp32 -> fp32); the bias, softmax and bf16 rounding are 16-lane vector code here (vec16.h). In fp32 the probabilities stay fp32
// (no rounding anywhere but the products' own).
// Compared with SDPA on query/key widened by the one-hot relative-position columns, the matmuls keep the
// head width (64 instead of 192 for ViT global attention). Built on first use by sam_hf.kernels.loader.
#include <torch/extension.h>
#include <ATen/Parallel.h>
#include <ATen/native/CPUBlas.h>
#include <immintrin.h>

#include "brgemm.h"
#include "simd.h"

using sam_hf_simd::exp16;
using sam_hf_simd::lanes_below;
using sam_hf_simd::store16;

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <optional>
#include <type_traits>
#include <vector>

using at::BFloat16;

namespace {

// Block sizes measured on ViT-B (one core of an AMX Xeon): 256 x 256 beat 64 x 512 by 15% on global
// attention (126 vs 146 ms) and windows (21 vs 25 ms); logits, probabilities and accumulators stay in L2.
constexpr int64_t kMaxBlockKeys = 256;  // keys per block: whole key rows, at most this many (one row if wider)
constexpr int64_t kMaxBlockQueries = 256;
// After a row's first key block, its logits are exponentiated against the running max in the same pass
// that adds the terms (no second pass over the block), unless the block's own max exceeds the running
// max by more than this: then the block is redone in two passes with a new max. exp(16) ~ 9e6 is far
// from overflowing fp32 or bf16; the normalisation divides it out exactly as before.
constexpr float kLazyRescaleMargin = 16.0f;

// brgemm's B operand in VNNI form: the (K, N) matrix as [ceil(K / 2)][N][2] (pairs along K interleaved).
// From `rows` rows of `cols` bf16 values (row stride ld) that form B itself (K = rows), odd K zero-padded.
void pack_rows(const BFloat16* src, int64_t rows, int64_t cols, int64_t ld, BFloat16* dst) {
  for (int64_t r = 0; r < rows; r += 2) {
    BFloat16* out = dst + r * cols;
    const BFloat16* a = src + r * ld;
    if (r + 1 < rows) {
      const BFloat16* b = a + ld;
      for (int64_t c = 0; c < cols; ++c) {
        out[2 * c] = a[c];
        out[2 * c + 1] = b[c];
      }
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        out[2 * c] = a[c];
        out[2 * c + 1] = BFloat16(0.0f);
      }
    }
  }
}

// The same for B = src^T (K = cols, N = rows), cols even: each pair of columns of a source row is one
// 32-bit word of the output, so this is a transpose of (rows, cols / 2) 32-bit words.
void pack_transposed(const BFloat16* src, int64_t rows, int64_t cols, int64_t ld, BFloat16* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    const BFloat16* row = src + r * ld;
    for (int64_t w = 0; w < cols / 2; ++w) std::memcpy(dst + (w * rows + r) * 2, row + 2 * w, 4);
  }
}

// fp32 forms: B as rows (a copy of the block) and B = src^T (a transpose), no interleaving.
void pack_rows(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
  for (int64_t r = 0; r < rows; ++r) std::memcpy(dst + r * cols, src + r * ld, cols * sizeof(float));
}

void pack_transposed(const float* src, int64_t rows, int64_t cols, int64_t ld, float* dst) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) dst[c * rows + r] = src[r * ld + c];
}

}  // namespace

// Row `y, x` of a (G, H, W, K) relative-position term (bf16 or fp32, last dim contiguous) as K floats.
template <typename T>
void load_terms(const torch::Tensor& terms, int64_t g, int64_t y, int64_t x, float* dst) {
  const T* src = terms.const_data_ptr<T>() + g * terms.stride(0) + y * terms.stride(1) + x * terms.stride(2);
  for (int64_t k = 0; k < terms.size(3); ++k) dst[k] = static_cast<float>(src[k]);
}

void load_terms(const torch::Tensor& terms, int64_t g, int64_t y, int64_t x, float* dst) {
  if (terms.scalar_type() == at::kBFloat16) {
    load_terms<BFloat16>(terms, g, y, x, dst);
  } else {
    load_terms<float>(terms, g, y, x, dst);
  }
}

// Pointer to row 0 of group g = (b, n) of a (B, N, L, D) tensor of any strides.
inline int64_t group_offset(const torch::Tensor& t, int64_t g) {
  return (g / t.size(1)) * t.stride(0) + (g % t.size(1)) * t.stride(2 - 1);
}

template <typename T>
torch::Tensor relpos_attention_typed(torch::Tensor query, torch::Tensor key, torch::Tensor value, torch::Tensor rel_h,
                                     torch::Tensor rel_w, double scale, std::optional<torch::Tensor> out_arg);

// query/key/value (B, N, L, D) bf16 or fp32, all one dtype (batch, heads, tokens, head width), L = H * W, D even,
// the last dim contiguous, other strides free (views into a fused qkv output welcome); rel_h (B * N, H, W, H)
// and rel_w (B * N, H, W, W), bf16 or float32, last dim contiguous: the row and column terms of query (y, x).
// The result goes to `out` (B, N, L, D) in query's dtype, of any strides with the last dim contiguous, or a new
// tensor.
torch::Tensor relpos_attention(torch::Tensor query, torch::Tensor key, torch::Tensor value, torch::Tensor rel_h,
                               torch::Tensor rel_w, double scale, std::optional<torch::Tensor> out_arg) {
  const auto dtype = query.scalar_type();
  TORCH_CHECK((dtype == at::kBFloat16 || dtype == at::kFloat) && key.scalar_type() == dtype && value.scalar_type() == dtype,
              "relpos_attention: query, key and value must be all bfloat16 or all float32");
  if (dtype == at::kFloat) return relpos_attention_typed<float>(query, key, value, rel_h, rel_w, scale, out_arg);
  sam_hf_brgemm::check_bf16_cpu("relpos_attention");
  return relpos_attention_typed<BFloat16>(query, key, value, rel_h, rel_w, scale, out_arg);
}

template <typename T>
torch::Tensor relpos_attention_typed(torch::Tensor query, torch::Tensor key, torch::Tensor value, torch::Tensor rel_h,
                                     torch::Tensor rel_w, double scale, std::optional<torch::Tensor> out_arg) {
  constexpr bool kVnni = std::is_same_v<T, BFloat16>;
  TORCH_CHECK(query.dim() == 4 && key.sizes() == query.sizes() && value.sizes() == query.sizes(),
              "relpos_attention: query, key and value must be (B, N, L, D) of one shape");
  TORCH_CHECK(query.stride(3) == 1 && key.stride(3) == 1 && value.stride(3) == 1,
              "relpos_attention: the last dimension of query, key and value must be contiguous");
  const int64_t G = query.size(0) * query.size(1), L = query.size(2), D = query.size(3);
  torch::Tensor out = out_arg.has_value() ? *out_arg : at::empty(query.sizes(), query.options());
  TORCH_CHECK(out.sizes() == query.sizes() && out.scalar_type() == query.scalar_type() && out.stride(3) == 1,
              "relpos_attention: out must have the query's dtype and shape, with the last dimension contiguous");
  TORCH_CHECK(rel_h.dim() == 4 && rel_w.dim() == 4, "relpos_attention: rel_h and rel_w must be (G, H, W, H) and (G, H, W, W)");
  const int64_t height = rel_h.size(1), width = rel_h.size(2);
  TORCH_CHECK(rel_h.size(0) == G && rel_h.size(3) == height && rel_w.size(0) == G && rel_w.size(1) == height &&
                  rel_w.size(2) == width && rel_w.size(3) == width,
              "relpos_attention: rel_h and rel_w must be (G, H, W, H) and (G, H, W, W)");
  TORCH_CHECK(L == height * width, "relpos_attention: L must equal H * W");
  TORCH_CHECK(D % 2 == 0, "relpos_attention: the head width must be even");
  for (const auto& terms : {rel_h, rel_w}) {
    TORCH_CHECK(terms.scalar_type() == at::kBFloat16 || terms.scalar_type() == at::kFloat,
                "relpos_attention: rel_h and rel_w must be bfloat16 or float32");
    TORCH_CHECK(terms.stride(3) == 1, "relpos_attention: the last dimension of rel_h and rel_w must be contiguous");
  }

  const int64_t rows_per_block = std::max<int64_t>(1, std::min<int64_t>(height, kMaxBlockKeys / width));
  const int64_t block_n = rows_per_block * width;  // blocks start at whole key rows
  const int64_t n_blocks = (L + block_n - 1) / block_n;
  const int64_t block_n_pad = block_n + (kVnni ? block_n % 2 : 0);
  const int64_t m_blocks = (L + kMaxBlockQueries - 1) / kMaxBlockQueries;
  const int64_t block_m = (L + m_blocks - 1) / m_blocks;  // balanced query blocks
  // key index within a block -> its row within the block and its column (gathers for unaligned widths)
  std::vector<int32_t> key_row_of(block_n), key_col_of(block_n);
  for (int64_t i = 0; i < block_n; ++i) {
    key_row_of[i] = static_cast<int32_t>(i / width);
    key_col_of[i] = static_cast<int32_t>(i % width);
  }
  // how the two terms are spread over a block of logits: whole 16-lane vectors per key row (W % 16 == 0),
  // lane permutes of one register per term (H, W <= 16: ViT windows), else gathers
  const bool aligned_width = width % 16 == 0;
  const bool small_grid = !aligned_width && height <= 16 && width <= 16;

  auto keys_packed = at::empty({G, n_blocks, D * block_n}, query.options());  // K^T blocks (VNNI in bf16)
  auto values_packed = at::empty({G, n_blocks, block_n_pad * D}, query.options());  // V blocks (VNNI in bf16)
  const T* q_ptr = query.const_data_ptr<T>();
  const T* k_ptr = key.const_data_ptr<T>();
  const T* v_ptr = value.const_data_ptr<T>();
  T* kp_ptr = keys_packed.data_ptr<T>();
  T* vp_ptr = values_packed.data_ptr<T>();
  T* o_ptr = out.data_ptr<T>();
  const int64_t q_l = query.stride(2), k_l = key.stride(2), v_l = value.stride(2), o_l = out.stride(2);

  at::parallel_for(0, G * n_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int64_t g = i / n_blocks, n0 = (i % n_blocks) * block_n, n = std::min(block_n, L - n0);
      pack_transposed(k_ptr + group_offset(key, g) + n0 * k_l, n, D, k_l, kp_ptr + i * D * block_n);
      pack_rows(v_ptr + group_offset(value, g) + n0 * v_l, n, D, v_l, vp_ptr + i * block_n_pad * D);
    }
  });

  const vf16 vscale = v16_set1_ps(static_cast<float>(scale));
  const float neg_inf = -std::numeric_limits<float>::infinity();
  at::parallel_for(0, G * m_blocks, 1, [&](int64_t begin, int64_t end) {
    std::vector<float> logits(block_m * block_n), acc(block_m * D), row_max(block_m), row_sum(block_m);
    std::vector<float> terms_h(block_m * height + 16, 0.0f), terms_w(block_m * width + 16, 0.0f);  // fp32 copies
    std::vector<T> probs(block_m * block_n_pad, T(0.0f));
    for (int64_t task = begin; task < end; ++task) {
      const int64_t g = task / m_blocks, m0 = (task % m_blocks) * block_m, m = std::min(block_m, L - m0);
      const T* q = q_ptr + group_offset(query, g) + m0 * q_l;
      std::fill(row_max.begin(), row_max.end(), neg_inf);
      std::fill(row_sum.begin(), row_sum.end(), 0.0f);
      std::fill(acc.begin(), acc.end(), 0.0f);
      for (int64_t r = 0; r < m; ++r) {
        const int64_t token = m0 + r;
        load_terms(rel_h, g, token / width, token % width, terms_h.data() + r * height);
        load_terms(rel_w, g, token / width, token % width, terms_w.data() + r * width);
      }
      for (int64_t j = 0; j < n_blocks; ++j) {
        const int64_t n0 = j * block_n, n = std::min(block_n, L - n0), n_pad = n + (kVnni ? n % 2 : 0);
        // logits (m, n) = q k^T, fp32
        at::native::cpublas::brgemm(m, n, D, q_l, n, block_n, false, q, kp_ptr + (g * n_blocks + j) * D * block_n,
                                    logits.data(), kVnni);
        for (int64_t r = 0; r < m; ++r) {
          float* s = logits.data() + r * block_n;
          const float* rh = terms_h.data() + r * height + n0 / width;  // this block's key rows
          const float* rw = terms_w.data() + r * width;
          T* p = probs.data() + r * block_n_pad;
          if (aligned_width && j > 0) {  // one pass against the running max (see kLazyRescaleMargin)
            const vf16 vref = v16_set1_ps(row_max[r]);
            vf16 vmax = v16_set1_ps(neg_inf), vsum = v16_setzero_ps();
            for (int64_t kr = 0; kr < n / width; ++kr) {
              const float* srow = s + kr * width;
              const vf16 vh = v16_set1_ps(rh[kr]);
              for (int64_t c = 0; c < width; c += 16) {
                const vf16 x = v16_fmadd_ps(v16_loadu_ps(srow + c), vscale, v16_add_ps(v16_loadu_ps(rw + c), vh));
                vmax = v16_max_ps(vmax, x);
                const vf16 e = exp16(v16_sub_ps(x, vref));
                vsum = v16_add_ps(vsum, e);
                store16(p + kr * width + c, static_cast<mask16>(0xFFFF), e);
              }
            }
            if (v16_reduce_max_ps(vmax) <= row_max[r] + kLazyRescaleMargin) {
              row_sum[r] += v16_reduce_add_ps(vsum);
              if (n_pad > n) p[n] = T(0.0f);
              continue;
            }
          }
          vf16 vmax = v16_set1_ps(neg_inf);
          if (aligned_width) {
            for (int64_t kr = 0; kr < n / width; ++kr) {
              float* srow = s + kr * width;
              const vf16 vh = v16_set1_ps(rh[kr]);
              for (int64_t c = 0; c < width; c += 16) {
                const vf16 x = v16_fmadd_ps(v16_loadu_ps(srow + c), vscale, v16_add_ps(v16_loadu_ps(rw + c), vh));
                v16_storeu_ps(srow + c, x);
                vmax = v16_max_ps(vmax, x);
              }
            }
          } else if (small_grid) {
            const vf16 table_h = v16_maskz_loadu_ps(lanes_below(height), rh);
            const vf16 table_w = v16_maskz_loadu_ps(lanes_below(width), rw);
            for (int64_t c = 0; c < n; c += 16) {
              const mask16 lanes = lanes_below(n - c);
              const vi16 rows = v16_maskz_loadu_epi32(lanes, key_row_of.data() + c);
              const vi16 cols = v16_maskz_loadu_epi32(lanes, key_col_of.data() + c);
              const vf16 bias = v16_add_ps(v16_permutexvar_ps(rows, table_h), v16_permutexvar_ps(cols, table_w));
              const vf16 x = v16_fmadd_ps(v16_maskz_loadu_ps(lanes, s + c), vscale, bias);
              v16_mask_storeu_ps(s + c, lanes, x);
              vmax = v16_mask_max_ps(vmax, lanes, vmax, x);
            }
          } else {
            for (int64_t c = 0; c < n; c += 16) {
              const mask16 lanes = lanes_below(n - c);
              const vi16 rows = v16_maskz_loadu_epi32(lanes, key_row_of.data() + c);
              const vi16 cols = v16_maskz_loadu_epi32(lanes, key_col_of.data() + c);
              const vf16 bias = v16_add_ps(v16_mask_i32gather_ps(v16_setzero_ps(), lanes, rows, rh, 4),
                                                v16_mask_i32gather_ps(v16_setzero_ps(), lanes, cols, rw, 4));
              const vf16 x = v16_fmadd_ps(v16_maskz_loadu_ps(lanes, s + c), vscale, bias);
              v16_mask_storeu_ps(s + c, lanes, x);
              vmax = v16_mask_max_ps(vmax, lanes, vmax, x);
            }
          }
          const float new_max = std::max(row_max[r], v16_reduce_max_ps(vmax));
          const float correction = std::exp(row_max[r] - new_max);  // 0 on the first block
          row_max[r] = new_max;
          // p = exp(logits - max), in bf16 rounded for the second matmul, summed in fp32
          const vf16 vnew_max = v16_set1_ps(new_max);
          vf16 vsum = v16_setzero_ps();
          for (int64_t c = 0; c < n; c += 16) {
            const mask16 lanes = lanes_below(n - c);
            const vf16 e = v16_maskz_mov_ps(lanes, exp16(v16_sub_ps(v16_maskz_loadu_ps(lanes, s + c), vnew_max)));
            vsum = v16_add_ps(vsum, e);
            store16(p + c, lanes, e);
          }
          if (n_pad > n) p[n] = T(0.0f);
          row_sum[r] = row_sum[r] * correction + v16_reduce_add_ps(vsum);
          if (correction != 1.0f) {
            float* a = acc.data() + r * D;
            for (int64_t d = 0; d < D; ++d) a[d] *= correction;
          }
        }
        // acc (m, D) += p v
        at::native::cpublas::brgemm(m, D, n_pad, block_n_pad, D, D, true, probs.data(),
                                    vp_ptr + (g * n_blocks + j) * block_n_pad * D, acc.data(), kVnni);
      }
      for (int64_t r = 0; r < m; ++r) {
        const float inverse = 1.0f / row_sum[r];
        const float* a = acc.data() + r * D;
        T* o = o_ptr + group_offset(out, g) + (m0 + r) * o_l;
        for (int64_t d = 0; d < D; ++d) o[d] = T(a[d] * inverse);
      }
    }
    at::native::cpublas::brgemm_release(kVnni);
  });
  return out;
}

PYBIND11_MODULE(TORCH_EXTENSION_NAME, module) {
  module.def("isa", [] { return std::string(SAM_HF_VEC16_ISA); }, "the instruction set of this build: avx512 or avx2 (vec16.h)");
  // the loader's check (fp32 products) and `kernel_for`'s (bf16 ones: AVX512-BF16, which the bf16 path's rounding uses)
  module.def("brgemm_usable", &sam_hf_brgemm::brgemm_usable, "whether ATen's fp32 brgemm serves this CPU");
  module.def("bf16_usable", &sam_hf_brgemm::bf16_brgemm_usable, "whether oneDNN's bf16 brgemm serves this CPU (then it takes bf16)");
  module.def("relpos_attention", &relpos_attention, "bf16 or fp32 flash attention with decomposed relative positions",
             pybind11::arg("query"), pybind11::arg("key"), pybind11::arg("value"), pybind11::arg("rel_h"),
             pybind11::arg("rel_w"), pybind11::arg("scale"), pybind11::arg("out") = pybind11::none());
}
