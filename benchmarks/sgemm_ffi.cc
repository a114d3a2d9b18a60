// A prototype, for measurement only (benchmarks/compare_step.py --variants blas): an XLA FFI
// handler computing a batched row-major f32 matmul with a BLAS's Fortran sgemm (scipy's
// OpenBLAS, whose address compare_step passes in), split into row blocks over XLA's own
// intra-op thread pool with the BLAS at one thread per call, so that it neither waits on
// nor competes with XLA's threads. (The BLAS on its own threads was slower still.)
#include <dlfcn.h>

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <memory>
#include <thread>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

using Sgemm = void (*)(const char*, const char*, const int*, const int*, const int*,
                       const float*, const float*, const int*, const float*, const int*,
                       const float*, float*, const int*);
using SetThreadsLocal = int (*)(int);
static Sgemm sgemm = nullptr;
static SetThreadsLocal set_threads_local = nullptr;

extern "C" int mtl_set_sgemm(void* fn) {
  sgemm = reinterpret_cast<Sgemm>(fn);
  Dl_info info;
  if (dladdr(fn, &info) && info.dli_fname) {
    void* handle = dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);
    if (handle) set_threads_local = reinterpret_cast<SetThreadsLocal>(
        dlsym(handle, "openblas_set_num_threads_local"));
  }
  return set_threads_local != nullptr;
}

namespace {

struct Job {
  const float *a, *b;
  float* c;
  int64_t rank, m, n, k, pieces, rows_per_piece, total;
  bool trans_a, trans_b;
  std::atomic<int64_t> next{0}, done{0};
  int64_t a_dims[8], b_dims[8], c_dims[8];

  void Run(int64_t task) {
    int64_t idx = task / pieces, piece = task % pieces;
    int64_t rem = idx, a_off = 0, b_off = 0, a_stride = 1, b_stride = 1;
    for (int64_t i = rank - 3; i >= 0; --i) {
      int64_t j = rem % c_dims[i];
      rem /= c_dims[i];
      if (a_dims[i] != 1) a_off += j * a_stride;
      if (b_dims[i] != 1) b_off += j * b_stride;
      a_stride *= a_dims[i];
      b_stride *= b_dims[i];
    }
    int64_t a_size = a_dims[rank - 2] * a_dims[rank - 1];
    int64_t b_size = b_dims[rank - 2] * b_dims[rank - 1];
    int64_t row0 = piece * rows_per_piece, rows = std::min(rows_per_piece, m - row0);
    if (rows <= 0) return;
    int lda = static_cast<int>(a_dims[rank - 1]), ldb = static_cast<int>(b_dims[rank - 1]);
    int ldc = static_cast<int>(n), mi = static_cast<int>(rows), ni = static_cast<int>(n),
        ki = static_cast<int>(k);
    // Rows row0.. of op(A): row-major A [m, k] starts at row0 * lda; A^T (stored [k, m])
    // starts at column row0.
    const float* ap = a + a_off * a_size + (trans_a ? row0 : row0 * lda);
    const float* bp = b + b_off * b_size;
    float* cp = c + idx * m * n + row0 * n;
    const float one = 1.0f, zero = 0.0f;
    const char ta = trans_a ? 'T' : 'N', tb = trans_b ? 'T' : 'N';
    if (set_threads_local) set_threads_local(1);
    // Row-major C = op(A) op(B) is column-major C^T = op(B)^T op(A)^T.
    sgemm(&tb, &ta, &ni, &mi, &ki, &one, bp, &ldb, ap, &lda, &zero, cp, &ldc);
  }

  void Work() {
    for (int64_t t; (t = next.fetch_add(1)) < total;) {
      Run(t);
      done.fetch_add(1);
    }
  }
};

ffi::Error Matmul(ffi::ThreadPool pool, ffi::Buffer<ffi::F32> a, ffi::Buffer<ffi::F32> b,
                  ffi::ResultBuffer<ffi::F32> c, bool trans_a, bool trans_b) {
  if (sgemm == nullptr) return ffi::Error::Internal("mtl_jax sgemm: no BLAS set");
  auto ad = a.dimensions(), bd = b.dimensions(), cd = c->dimensions();
  int64_t rank = cd.size();
  if (static_cast<int64_t>(ad.size()) != rank || static_cast<int64_t>(bd.size()) != rank ||
      rank < 2 || rank > 8)
    return ffi::Error::InvalidArgument("mtl_jax sgemm: operands of different rank");
  auto job = std::make_shared<Job>();
  for (int64_t i = 0; i < rank; ++i) {
    job->a_dims[i] = ad[i];
    job->b_dims[i] = bd[i];
    job->c_dims[i] = cd[i];
  }
  job->a = a.typed_data();
  job->b = b.typed_data();
  job->c = c->typed_data();  // Helpers touch the buffers only while the handler waits.
  job->rank = rank;
  job->m = cd[rank - 2];
  job->n = cd[rank - 1];
  job->k = trans_a ? ad[rank - 2] : ad[rank - 1];
  job->trans_a = trans_a;
  job->trans_b = trans_b;
  int64_t batch = 1;
  for (int64_t i = 0; i + 2 < rank; ++i) batch *= cd[i];
  int64_t threads = std::max<int64_t>(1, pool.num_threads());
  // Enough pieces to balance the threads; rows in multiples of 32.
  int64_t pieces = std::max<int64_t>(1, (2 * threads + batch - 1) / batch);
  int64_t rows = (job->m + pieces - 1) / pieces;
  rows = std::max<int64_t>(32, (rows + 31) / 32 * 32);
  job->rows_per_piece = rows;
  job->pieces = (job->m + rows - 1) / rows;
  job->total = batch * job->pieces;
  for (int64_t t = 1; t < std::min(threads, job->total); ++t) pool.Schedule([job] { job->Work(); });
  job->Work();
  // Only pieces a helper has claimed and is running are left: no waiting on a busy pool.
  while (job->done.load() < job->total) std::this_thread::yield();
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(MtlSgemm, Matmul,
                              ffi::Ffi::Bind()
                                  .Ctx<ffi::ThreadPool>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Attr<bool>("trans_a")
                                  .Attr<bool>("trans_b"));
