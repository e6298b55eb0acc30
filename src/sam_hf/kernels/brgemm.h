// Products on ATen's brgemm (oneDNN's ukernel) for sam_hf's CPU kernels, fp32 and bf16, and their input checks.
#pragma once
#include <torch/extension.h>
#include <ATen/native/CPUBlas.h>

#include <cstdint>
#include <exception>
#include <vector>

namespace sam_hf_brgemm {

// C (M x N, row stride ldc) (+)= A (M x K, lda) B (K x N, ldb), all row-major fp32.
inline void gemm(int64_t m, int64_t n, int64_t k, const float* a, int64_t lda, const float* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, false);
}

// The same with bf16 operands and fp32 C: A row-major, B in VNNI form, the (K, N) matrix as [K / 2][N][2] (pairs of
// rows interleaved, K even; ldb counts columns, as for a row-major B of N columns).
inline void gemm(int64_t m, int64_t n, int64_t k, const at::BFloat16* a, int64_t lda, const at::BFloat16* b, int64_t ldb, float* c,
                 int64_t ldc, bool accumulate) {
  at::native::cpublas::brgemm(m, n, k, lda, ldb, ldc, accumulate, a, b, c, true);
}

// Ends a thread's run of bf16 products (oneDNN's AMX tiles are released; nothing to do without AMX).
inline void release(const float*) {}
inline void release(const at::BFloat16*) { at::native::cpublas::brgemm_release(true); }

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

// Whether its bf16 brgemm with VNNI-packed B serves this CPU (oneDNN's ukernel, which needs at least AVX512-BF16):
// the same product in bf16.
inline bool bf16_brgemm_usable() {
  try {
    const at::BFloat16 a[4] = {at::BFloat16(1.0f), at::BFloat16(2.0f), at::BFloat16(3.0f), at::BFloat16(4.0f)};
    std::vector<at::BFloat16> b(2 * 16);  // VNNI: b[2 * j + k] = B[k][j], B[0][j] = j, B[1][j] = 1
    for (int j = 0; j < 16; ++j) {
      b[2 * j] = at::BFloat16(static_cast<float>(j));
      b[2 * j + 1] = at::BFloat16(1.0f);
    }
    float c[2 * 16];
    gemm(2, 16, 2, a, 2, b.data(), 16, c, 16, false);
    release(a);
    for (int j = 0; j < 16; ++j)
      if (c[j] != j + 2.0f || c[16 + j] != 3.0f * j + 4.0f) return false;
    return true;
  } catch (const std::exception&) {
    return false;
  }
}

// `t` must be a contiguous CPU tensor of `dtype` with `dim` dimensions; the error names the kernel and the argument.
inline void check_dense(const at::Tensor& t, const char* kernel, const char* name, int64_t dim, at::ScalarType dtype) {
  TORCH_CHECK(t.scalar_type() == dtype && t.device().is_cpu() && t.is_contiguous() && t.dim() == dim, kernel, ": ", name,
              " must be a contiguous ", dtype == at::kBFloat16 ? "bf16" : dtype == at::kFloat ? "fp32" : c10::toString(dtype),
              " CPU tensor with ", dim, " dimensions, got ", t.scalar_type(), " ", t.sizes(), t.is_contiguous() ? "" : " (not contiguous)");
}

inline void check_float(const at::Tensor& t, const char* kernel, const char* name, int64_t dim) {
  check_dense(t, kernel, name, dim, at::kFloat);
}

}  // namespace sam_hf_brgemm
