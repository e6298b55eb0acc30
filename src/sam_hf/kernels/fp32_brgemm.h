// fp32 products on ATen's brgemm (oneDNN's ukernel) for sam_hf's fp32 CPU kernels, and their input checks.
#pragma once
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>

#include <cstdint>
#include <exception>

namespace sam_hf_fp32 {

// C (M x N, row stride ldc) (+)= A (M x K, lda) B (K x N, ldb), all row-major fp32.
inline void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, false);
}

// Whether ATen's fp32 brgemm serves this CPU: one tiny product checked against its known result.
inline bool brgemm_usable() {
  try {
    const float a[4] = {1.0f, 2.0f, 3.0f, 4.0f};  // (2, 2)
    float b[2 * 16], c[2 * 16];
    for (int j = 0; j < 16; ++j) {
      b[j] = static_cast<float>(j);
      b[16 + j] = 1.0f;
    }
    gemm(2, 16, 2, a, 2, b, 16, c, 16, false);
    for (int j = 0; j < 16; ++j)
      if (c[j] != j + 2.0f || c[16 + j] != 3.0f * j + 4.0f) return false;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// `t` must be a contiguous fp32 CPU tensor with `dim` dimensions; the error names the kernel and the argument.
inline void check_float(const at::Tensor& t, const char* kernel, const char* name, int64_t dim) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu() && t.is_contiguous() && t.dim() == dim, kernel, ": ",
              name, " must be a contiguous fp32 CPU tensor with ", dim, " dimensions, got ", t.scalar_type(), " ", t.sizes(),
              t.is_contiguous() ? "" : " (not contiguous)");
}

}  // namespace sam_hf_fp32
