// Native CPU kernels of the XLA backend, called through jax.ffi.
//
// The same function as gaussjax._xla (and gaussjax.constants): each Gaussian
// is given by its mean (x, y) and its shape (alpha, r, beta), with radius²
//   q = (alpha dx)² + (beta (dy - r dx))²,  dx = px - mx, dy = py - my,
// and weight w = max(exp(-q / 2) - cutoff, 0) * scale at pixel centres
// (j + 0.5, i + 0.5); the forward writes images [H, W, C], the backward
// reads its cotangent channels-first [C, H, W]. Every Gaussian is visited on
// the exact bounding box of its support, row by row on the exact span of the
// ellipse q <= cutoff_q (plus one pixel against rounding), clipped to the
// image.
// Deterministic for any number of threads: the forward splits the image into
// bands of rows and adds Gaussians to each pixel in index order; the backward
// computes each Gaussian's gradient on its own. A batch (leading dimensions,
// from jax.vmap) runs its images in parallel, one thread per image, each
// image computed exactly as alone.
//
// Built by gaussjax/_native.py with the jax.ffi headers (jax.ffi.include_dir()).

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <thread>
#include <vector>

#include "xla/ffi/api/ffi.h"

#if defined(__AVX512F__)
#include <immintrin.h>
#endif

namespace ffi = xla::ffi;

namespace {

// Colour channels a Gaussian may have (gaussjax._native.MAX_CHANNELS).
constexpr int64_t kMaxChannels = 16;

// exp(x) for x <= 0 to about 2 ulp, written so that the compiler vectorises
// it (libm's expf is a scalar call): round to nearest by truncating y - 1/2
// (y <= 0; no add-and-subtract trick, which reassociation would remove),
// Cody-Waite reduction, degree-7 Taylor polynomial on |r| <= ln2/2, and the
// exponent put in with integer arithmetic. Below -87 it returns ~0 (1e-38).
inline float ExpNonPositive(float x) {
  x = std::max(x, -87.0f);
  const int32_t k = int32_t(x * 1.44269504f - 0.5f);
  const float n = float(k);
  const float r = (x - n * 0.693145752f) - n * 1.42860677e-6f;
  float p = 1.0f / 5040.0f;
  p = p * r + 1.0f / 720.0f;
  p = p * r + 1.0f / 120.0f;
  p = p * r + 1.0f / 24.0f;
  p = p * r + 1.0f / 6.0f;
  p = p * r + 0.5f;
  p = p * r + 1.0f;
  p = p * r + 1.0f;
  const int32_t bits = (k + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return p * scale;
}

// Pixels per row segment (the stack buffers of one row).
constexpr int64_t kRow = 1024;

struct Params {
  const float* means;   // [N, 2]
  const float* shapes;  // [N, 3] (alpha, r, beta)
  const float* colors;  // [N, C]
  int64_t n, channels, height, width;
  float cutoff, scale, cutoff_q;
};

// Rows [y0, y1] of the support box; y0 > y1 when empty or non-finite.
void RowRange(const Params& p, float my, float alpha, float r, float beta, int64_t* y0,
              int64_t* y1) {
  // Syy = (r / alpha)² + 1 / beta²; one pixel of margin against rounding.
  const double syy = double(r) * r / (double(alpha) * alpha) + 1.0 / (double(beta) * beta);
  const double ry = std::sqrt(p.cutoff_q * syy) + 1.0;
  if (!(std::isfinite(ry) && std::isfinite(my))) {
    *y0 = 0;
    *y1 = -1;
    return;
  }
  *y0 = int64_t(std::max(std::ceil(my - ry - 0.5), 0.0));
  *y1 = int64_t(std::min(std::floor(my + ry - 0.5), double(p.height - 1)));
}

// Columns [x0, x1] of row dy where q <= cutoff_q (plus one pixel of margin):
// q = alpha² dx² + beta² (dy - r dx)² is a quadratic in dx.
void ColumnRange(const Params& p, float mx, float dy, float alpha, float r, float beta,
                 int64_t* x0, int64_t* x1) {
  const double b2 = double(beta) * beta;
  const double qa = double(alpha) * alpha + b2 * r * r;
  const double qb = -2.0 * b2 * r * dy;
  const double qc = b2 * dy * dy - p.cutoff_q;
  const double disc = qb * qb - 4.0 * qa * qc;
  *x0 = 0;
  *x1 = -1;
  if (!(disc >= 0.0) || !std::isfinite(mx)) return;
  const double root = std::sqrt(disc);
  const double lo = mx + (-qb - root) / (2.0 * qa) - 1.0;
  const double hi = mx + (-qb + root) / (2.0 * qa) + 1.0;
  if (!(std::isfinite(lo) && std::isfinite(hi))) return;
  *x0 = int64_t(std::max(std::ceil(lo - 0.5), 0.0));
  *x1 = int64_t(std::min(std::floor(hi - 0.5), double(p.width - 1)));
}

// Visits the support of one Gaussian in rows [y0, y1] as spans of at most
// kRow pixels: fn(y, dy, x0, len, dx0), dy and dx0 the offsets of the first
// pixel centre of the span from the mean. The backward's; the forward
// computes the same spans a band at a time (ColumnRanges, same arithmetic)
// and cuts them the same way, so both visit exactly the same pixels.
template <typename F>
inline void ForEachSpan(const Params& p, float mx, float my, float alpha, float r, float beta,
                        int64_t y0, int64_t y1, F&& fn) {
  for (int64_t y = y0; y <= y1; ++y) {
    const float dy = (float(y) + 0.5f) - my;
    int64_t x0, x1;
    ColumnRange(p, mx, dy, alpha, r, beta, &x0, &x1);
    for (; x0 <= x1; x0 += kRow) {
      fn(y, dy, x0, int32_t(std::min(x1 - x0 + 1, kRow)), (float(x0) + 0.5f) - mx);
    }
  }
}

// exp(-q / 2) at offset (dx, dy): q = (alpha dx)² + (beta (dy - r dx))².
inline float Falloff(float alpha, float r, float beta, float dx, float dy) {
  const float u = alpha * dx;
  const float v = beta * (dy - r * dx);
  return ExpNonPositive(-0.5f * (u * u + v * v));
}

// The weight of a Gaussian at falloff e: max(e - cutoff, 0) * scale, the
// reference's formula (header), in one place for the forward and both backwards.
inline float Weight(const Params& p, float e) {
  return std::max(e - p.cutoff, 0.0f) * p.scale;
}

// Threads for a call: the machine's cores, at most 8 (and 1 for small work).
// The work of a call grows with the Gaussians and with the pixels they cover:
// n + H·W / 16 counts both (a few thousand Gaussians on a Kodak-size image
// are worth several threads; a tiny test image is not).
int64_t Work(int64_t n, int64_t height, int64_t width) { return n + height * width / 16; }

int64_t NumThreads(int64_t work) {
  const int64_t cores = std::max<int64_t>(1, std::thread::hardware_concurrency());
  return work < 4096 ? 1 : std::min<int64_t>(cores, 8);
}

template <typename F>
void RunThreads(int64_t count, F&& fn) {
  std::vector<std::thread> threads;
  for (int64_t t = 1; t < count; ++t) threads.emplace_back(fn, t);
  fn(0);
  for (auto& thread : threads) thread.join();
}

// The forward, per image: the rows are cut into bands of kBand rows, and the
// threads take bands from a shared counter (equal work for uneven images).
// Each band adds its Gaussians in index order into a band buffer (in cache),
// then writes it out as [H, W, C]; so every pixel sums the same terms in the
// same order as any other split, whatever the threads, and as the previous
// one-band-per-thread kernel did (bit-identical images).
constexpr int64_t kBand = 16;
// Pixels of one vector block of the forward's span loop: an AVX-512
// register. Each block is a long chain of dependent operations (the exp);
// wide blocks keep more of them in flight (measured on Zen 4, which runs
// 512-bit operations as two 256-bit halves: 16 lanes 10 % faster than 8,
// though spans are short, tens of pixels, and the last block of each is
// partly empty).
constexpr int32_t kLanes = 16;
typedef float Block __attribute__((vector_size(4 * kLanes)));
// The forward's pixel loops may use 512-bit vectors (GCC's default tuning
// stops at 256); the backward keeps the default, so its sums are unchanged.
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__) && __GNUC__ >= 8
#define WIDE __attribute__((target("prefer-vector-width=512")))
#else
#define WIDE
#endif

// Columns [x0[j], x1[j]] of rows ya + j, j < kBand: ColumnRange for
// a band's rows at once, written branch-free so that it vectorises (the same
// double arithmetic, so the same spans; bounds clamped to [0, W] and
// [-1, W - 1] before the integer conversion).
inline void ColumnRanges(const Params& p, float mx, float my, float alpha, float r, float beta,
                         int64_t ya, double* x0, double* x1) {
  const double b2 = double(beta) * beta;
  const double qa = double(alpha) * alpha + b2 * r * r;
  const double last = double(p.width - 1);
  const bool mx_ok = std::isfinite(mx);
  // All double (GCC 12 vectorises no loop here that mixes element sizes).
  double dys[kBand];
  for (int32_t j = 0; j < kBand; ++j) dys[j] = (float(int32_t(ya) + j) + 0.5f) - my;
  for (int32_t j = 0; j < kBand; ++j) {
    const double dy = dys[j];
    const double qb = -2.0 * b2 * r * dy;
    const double qc = b2 * dy * dy - p.cutoff_q;
    const double disc = qb * qb - 4.0 * qa * qc;
    bool ok = disc >= 0.0 && mx_ok;
    const double root = std::sqrt(ok ? disc : 0.0);
    const double lo = mx + (-qb - root) / (2.0 * qa) - 1.0;
    const double hi = mx + (-qb + root) / (2.0 * qa) + 1.0;
    ok = ok && std::isfinite(lo) && std::isfinite(hi);
    x0[j] = ok ? std::min(std::max(std::ceil(lo - 0.5), 0.0), last + 1.0) : 0.0;
    x1[j] = ok ? std::max(std::min(std::floor(hi - 0.5), last), -1.0) : -1.0;
  }
}

// Adds weight times colour on pixels [0, len) of one row of a band buffer
// (`row` is channel 0, channels `stride` apart); dx0, dy: offsets of the
// first pixel centre from the mean. Whole blocks of kLanes pixels, the last
// one masked, so no pixel runs the scalar exp of a loop's remainder.
// kChannels: the channels, or 0 for p.channels (known ones unroll).
template <int64_t kChannels>
WIDE inline void AddSpan(const Params& p, const float* c, float alpha, float r, float beta, float dy,
                    float dx0, int32_t len, float* row, int64_t stride) {
  const int64_t channels = kChannels ? kChannels : p.channels;
  for (int32_t b = 0; b < len; b += kLanes) {
    float w[kLanes];
    for (int32_t i = 0; i < kLanes; ++i) {
      const float e = Falloff(alpha, r, beta, dx0 + float(b + i), dy);
      w[i] = Weight(p, e);
    }
    const int32_t m = len - b;
#if defined(__AVX512F__)
    // Every block as one masked vector per channel: no branch on whether it
    // is the last one (a scalar loop there costs as much as the block's exp).
    const __mmask16 mask = __mmask16(m >= kLanes ? 0xffff : (1u << m) - 1);
    const __m512 wv = _mm512_loadu_ps(w);
    for (int64_t ch = 0; ch < channels; ++ch) {
      float* px = row + ch * stride + b;
      const __m512 sum = _mm512_fmadd_ps(wv, _mm512_set1_ps(c[ch]), _mm512_maskz_loadu_ps(mask, px));
      _mm512_mask_storeu_ps(px, mask, sum);
    }
#else
    if (m >= kLanes) {
      // As one vector per channel (GCC otherwise does this block lane by lane).
      Block wv;
      std::memcpy(&wv, w, sizeof(wv));
      for (int64_t ch = 0; ch < channels; ++ch) {
        float* px = row + ch * stride + b;
        Block sum;
        std::memcpy(&sum, px, sizeof(sum));
        sum += wv * c[ch];
        std::memcpy(px, &sum, sizeof(sum));
      }
    } else {
      for (int64_t ch = 0; ch < channels; ++ch) {
        float* px = row + ch * stride + b;
        const float cc = c[ch];
        for (int32_t i = 0; i < m; ++i) px[i] += w[i] * cc;
      }
    }
#endif
  }
}

// Adds the Gaussians that touch rows [band0, band1), in index order, on the
// band buffer buf [kBand, C, stride]: members[0, count) when given, else all
// of them, skipping those whose row range (`rows`) misses the band.
template <int64_t kChannels>
WIDE void SplatBand(const Params& p, const int32_t* members, int64_t count, const int32_t* rows,
                    int64_t band0, int64_t band1, float* buf, int64_t stride) {
  double x0[kBand], x1[kBand];
  if (members == nullptr) count = p.n;
  for (int64_t e = 0; e < count; ++e) {
    const int64_t k = members ? members[e] : e;
    if (rows[2 * k] >= band1 || rows[2 * k + 1] < band0) continue;
    const float mx = p.means[2 * k], my = p.means[2 * k + 1];
    const float alpha = p.shapes[3 * k], r = p.shapes[3 * k + 1], beta = p.shapes[3 * k + 2];
    const float* c = p.colors + k * p.channels;
    const int64_t ya = std::max<int64_t>(rows[2 * k], band0);
    const int64_t yb = std::min<int64_t>(rows[2 * k + 1], band1 - 1);
    ColumnRanges(p, mx, my, alpha, r, beta, ya, x0, x1);
    for (int64_t y = ya; y <= yb; ++y) {
      const float dy = (float(y) + 0.5f) - my;
      float* row = buf + (y - band0) * p.channels * stride;
      // Spans of at most kRow pixels, as ForEachSpan cuts them (the same
      // offsets dx0, so the same weights as the backward's).
      const int64_t xb = int64_t(x1[y - ya]);
      for (int64_t xa = int64_t(x0[y - ya]); xa <= xb; xa += kRow) {
        const int32_t len = int32_t(std::min<int64_t>(xb - xa + 1, kRow));
        AddSpan<kChannels>(p, c, alpha, r, beta, dy, (float(xa) + 0.5f) - mx, len, row + xa,
                           stride);
      }
    }
  }
}

// Renders image p into out [H, W, C] with `threads` threads.
void ForwardImage(const Params& p, int64_t threads, float* out) {
  const int64_t bands = (p.height + kBand - 1) / kBand;
  // Row range of every Gaussian, and per band the Gaussians that touch it,
  // in index order (counting sort; the counts from differences, in O(N +
  // bands)). Lists of more than kMaxMembers entries (huge Gaussians on a tall
  // image) are not built: then each band scans all the Gaussians.
  constexpr int64_t kMaxMembers = int64_t(1) << 24;
  std::vector<int32_t> rows(2 * p.n);
  std::vector<int64_t> start(bands + 2, 0);
  for (int64_t k = 0; k < p.n; ++k) {
    int64_t y0, y1;
    RowRange(p, p.means[2 * k + 1], p.shapes[3 * k], p.shapes[3 * k + 1], p.shapes[3 * k + 2],
             &y0, &y1);
    rows[2 * k] = int32_t(y0);
    rows[2 * k + 1] = int32_t(y1);
    if (y0 <= y1) {
      ++start[y0 / kBand + 1];
      --start[y1 / kBand + 2];
    }
  }
  for (int64_t b = 1; b <= bands; ++b) start[b + 1] += start[b];  // counts per band
  for (int64_t b = 0; b < bands; ++b) start[b + 1] += start[b];   // offsets
  const bool listed = start[bands] <= kMaxMembers;
  std::vector<int32_t> members(listed ? start[bands] : 0);
  if (listed) {
    std::vector<int64_t> fill(start.begin(), start.begin() + bands);
    for (int64_t k = 0; k < p.n; ++k) {
      if (rows[2 * k] > rows[2 * k + 1]) continue;
      for (int64_t b = rows[2 * k] / kBand; b <= rows[2 * k + 1] / kBand; ++b) {
        members[fill[b]++] = int32_t(k);
      }
    }
  }
  // Band buffer [kBand, C, stride]: the channels of a row follow each other,
  // `stride` (the width rounded up to 16 floats, plus 16) apart, so that the
  // channels of a pixel are never a multiple of 4 KiB apart (loads that alias
  // a pending store that way can stall).
  // Rows of a buffer: a band's, or the image's when it has fewer (at most
  // one buffer per band, so they never take more memory than the image).
  const int64_t stride = (p.width + 15) / 16 * 16 + 16;
  const int64_t band_size = std::min(kBand, p.height) * p.channels * stride;
  std::unique_ptr<float[]> buffers(new float[threads * band_size]);  // each band clears its own
  std::atomic<int64_t> next{0};
  RunThreads(threads, [&](int64_t t) {
    float* buf = buffers.get() + t * band_size;
    for (int64_t band = next++; band < bands; band = next++) {
      const int64_t band0 = band * kBand, band1 = std::min(band0 + kBand, p.height);
      std::fill(buf, buf + band_size, 0.0f);
      const int32_t* list = listed ? members.data() + start[band] : nullptr;
      const int64_t count = start[band + 1] - start[band];
      if (p.channels == 3) {
        SplatBand<3>(p, list, count, rows.data(), band0, band1, buf, stride);
      } else if (p.channels == 1) {
        SplatBand<1>(p, list, count, rows.data(), band0, band1, buf, stride);
      } else {
        SplatBand<0>(p, list, count, rows.data(), band0, band1, buf, stride);
      }
      // [rows, C, W] -> [rows, W, C].
      for (int64_t y = band0; y < band1; ++y) {
        float* o = out + y * p.width * p.channels;
        const float* src = buf + (y - band0) * p.channels * stride;
        if (p.channels == 3) {  // the common case, unrolled so that it vectorises
          const float *s0 = src, *s1 = src + stride, *s2 = src + 2 * stride;
          for (int64_t x = 0; x < p.width; ++x) {
            o[3 * x] = s0[x];
            o[3 * x + 1] = s1[x];
            o[3 * x + 2] = s2[x];
          }
        } else {
          for (int64_t x = 0; x < p.width; ++x) {
            for (int64_t ch = 0; ch < p.channels; ++ch) o[x * p.channels + ch] = src[ch * stride + x];
          }
        }
      }
    }
  });
}

// Gradients of Gaussians k = first, first + stride, ... from g [C, H, W].
void BackwardSome(const Params& p, int64_t first, int64_t stride, const float* g, float* dm,
                  float* ds, float* dc) {
  float row_w[kRow], row_e[kRow], row_g[kRow];
  for (int64_t k = first; k < p.n; k += stride) {
    const float mx = p.means[2 * k], my = p.means[2 * k + 1];
    const float alpha = p.shapes[3 * k], r = p.shapes[3 * k + 1], beta = p.shapes[3 * k + 2];
    const float* c = p.colors + k * p.channels;
    double acc_c[kMaxChannels] = {0};
    double s_x = 0, s_t = 0, s_xx = 0, s_tx = 0, s_tt = 0;
    int64_t y0, y1;
    RowRange(p, my, alpha, r, beta, &y0, &y1);
    ForEachSpan(p, mx, my, alpha, r, beta, y0, y1,
                [&](int64_t y, float dy, int64_t x0, int32_t len, float dx0) {
      // Weights, dw/dq and d(loss)/dw of one span; each loop vectorises.
      for (int32_t i = 0; i < len; ++i) {
        const float e = Falloff(alpha, r, beta, dx0 + float(i), dy);
        const bool inside = e > p.cutoff;
        row_w[i] = Weight(p, e);
        row_e[i] = inside ? e * (-0.5f * p.scale) : 0.0f;
        row_g[i] = 0.0f;
      }
      for (int64_t ch = 0; ch < p.channels; ++ch) {
        const float* gp = g + (ch * p.height + y) * p.width + x0;
        const float cc = c[ch];
        float acc = 0.0f;
        for (int32_t i = 0; i < len; ++i) {
          acc += row_w[i] * gp[i];
          row_g[i] += cc * gp[i];
        }
        acc_c[ch] += acc;
      }
      float r_x = 0, r_t = 0, r_xx = 0, r_tx = 0, r_tt = 0;
      for (int32_t i = 0; i < len; ++i) {
        const float dx = dx0 + float(i);
        const float t = dy - r * dx;
        const float d_q = row_g[i] * row_e[i];
        r_x += d_q * dx;
        r_t += d_q * t;
        r_xx += d_q * dx * dx;
        r_tx += d_q * t * dx;
        r_tt += d_q * t * t;
      }
      s_x += r_x;
      s_t += r_t;
      s_xx += r_xx;
      s_tx += r_tx;
      s_tt += r_tt;
    });
    const double beta2 = double(beta) * beta;
    dm[2 * k] = float(-2.0 * alpha * alpha * s_x + 2.0 * beta2 * r * s_t);
    dm[2 * k + 1] = float(-2.0 * beta2 * s_t);
    ds[3 * k] = float(2.0 * alpha * s_xx);
    ds[3 * k + 1] = float(-2.0 * beta2 * s_tx);
    ds[3 * k + 2] = float(2.0 * beta * s_tt);
    for (int64_t ch = 0; ch < p.channels; ++ch) dc[k * p.channels + ch] = float(acc_c[ch]);
  }
}

// The colour part of BackwardSome alone (the transpose of the render in its
// colours, for callers that differentiate the colours only): the same spans,
// weights and sums, so dc equals BackwardSome's, at about the cost of a
// forward instead of a backward.
void ColorGradSome(const Params& p, int64_t first, int64_t stride, const float* g, float* dc) {
  float row_w[kRow];
  for (int64_t k = first; k < p.n; k += stride) {
    const float mx = p.means[2 * k], my = p.means[2 * k + 1];
    const float alpha = p.shapes[3 * k], r = p.shapes[3 * k + 1], beta = p.shapes[3 * k + 2];
    double acc_c[kMaxChannels] = {0};
    int64_t y0, y1;
    RowRange(p, my, alpha, r, beta, &y0, &y1);
    ForEachSpan(p, mx, my, alpha, r, beta, y0, y1,
                [&](int64_t y, float dy, int64_t x0, int32_t len, float dx0) {
      for (int32_t i = 0; i < len; ++i) {
        const float e = Falloff(alpha, r, beta, dx0 + float(i), dy);
        row_w[i] = Weight(p, e);
      }
      for (int64_t ch = 0; ch < p.channels; ++ch) {
        const float* gp = g + (ch * p.height + y) * p.width + x0;
        float acc = 0.0f;
        for (int32_t i = 0; i < len; ++i) acc += row_w[i] * gp[i];
        acc_c[ch] += acc;
      }
    });
    for (int64_t ch = 0; ch < p.channels; ++ch) dc[k * p.channels + ch] = float(acc_c[ch]);
  }
}

// Leading batch dimensions of an FFI buffer whose last `inner` dimensions are
// one image's (jax.ffi's vmap_method="broadcast_all" adds them under vmap).
int64_t BatchOf(ffi::Span<const int64_t> dims, int64_t inner) {
  int64_t batch = 1;
  for (int64_t d = 0; d + inner < int64_t(dims.size()); ++d) batch *= dims[d];
  return batch;
}

// Runs fn(b, inner_threads) for every image b of a batch. One image: the
// threads it gets alone (`alone_threads`). Several: up to one thread per core
// (at most 8), each taking whole images from a shared counter; an image that
// would use several threads alone shares the remaining cores. Either way each
// image is computed exactly as alone (the kernels do not depend on the number
// of threads), so a batch is bit-identical per image.
template <typename F>
void ForEachImage(int64_t batch, int64_t alone_threads, F&& fn) {
  if (batch == 1) {
    fn(0, alone_threads);
    return;
  }
  const int64_t cores = std::min<int64_t>(std::max<int64_t>(1, std::thread::hardware_concurrency()), 8);
  const int64_t threads = std::min<int64_t>(cores, batch);
  const int64_t inner = std::max<int64_t>(1, std::min(alone_threads, cores / threads));
  std::atomic<int64_t> next{0};
  RunThreads(threads, [&](int64_t) {
    for (int64_t b = next++; b < batch; b = next++) fn(b, inner);
  });
}

// One call's sizes: `batch` images (leading dimensions added by vmap) of
// `channels` x `height` x `width`, each with `n` Gaussians.
struct CallShape {
  int64_t batch, n, channels, height, width;
  bool batched_constants;  // one row of constants per image
};

CallShape ShapeOf(ffi::Span<const int64_t> image_dims, ffi::Buffer<ffi::F32>& means,
                  ffi::Buffer<ffi::F32>& constants, bool channels_last) {
  const int64_t rank = image_dims.size();
  const int64_t batch = BatchOf(image_dims, 3);
  const int64_t* d = image_dims.begin() + (rank - 3);
  return CallShape{batch, means.dimensions()[means.dimensions().size() - 2],
                   channels_last ? d[2] : d[0], channels_last ? d[0] : d[1],
                   channels_last ? d[1] : d[2],
                   BatchOf(constants.dimensions(), 1) == batch && batch > 1};
}

// The Params of image b of a call.
Params ImageParams(const CallShape& c, ffi::Buffer<ffi::F32>& means, ffi::Buffer<ffi::F32>& shapes,
                   ffi::Buffer<ffi::F32>& colors, ffi::Buffer<ffi::F32>& constants, int64_t b) {
  const float* k = constants.typed_data() + (c.batched_constants ? 3 * b : 0);
  return Params{means.typed_data() + b * c.n * 2, shapes.typed_data() + b * c.n * 3,
                colors.typed_data() + b * c.n * c.channels, c.n, c.channels, c.height, c.width,
                k[0], k[1], k[2]};
}

ffi::Error SplatForward(ffi::Buffer<ffi::F32> means, ffi::Buffer<ffi::F32> shapes,
                        ffi::Buffer<ffi::F32> colors, ffi::Buffer<ffi::F32> constants,
                        ffi::ResultBuffer<ffi::F32> image) {
  const CallShape c = ShapeOf(image->dimensions(), means, constants, /*channels_last=*/true);
  if (c.channels > kMaxChannels) return ffi::Error::InvalidArgument("too many channels");
  const int64_t pixels = c.channels * c.height * c.width;
  const int64_t alone = std::min(NumThreads(Work(c.n, c.height, c.width)),
                                 (c.height + kBand - 1) / kBand);
  ForEachImage(c.batch, alone, [&](int64_t b, int64_t threads) {
    ForwardImage(ImageParams(c, means, shapes, colors, constants, b), threads,
                 image->typed_data() + b * pixels);
  });
  return ffi::Error::Success();
}

ffi::Error SplatBackward(ffi::Buffer<ffi::F32> means, ffi::Buffer<ffi::F32> shapes,
                         ffi::Buffer<ffi::F32> colors, ffi::Buffer<ffi::F32> constants,
                         ffi::Buffer<ffi::F32> cotangent, ffi::ResultBuffer<ffi::F32> d_means,
                         ffi::ResultBuffer<ffi::F32> d_shapes,
                         ffi::ResultBuffer<ffi::F32> d_colors) {
  const CallShape c = ShapeOf(cotangent.dimensions(), means, constants, /*channels_last=*/false);
  if (c.channels > kMaxChannels) return ffi::Error::InvalidArgument("too many channels");
  // Each Gaussian's gradient is computed by one thread on its own.
  ForEachImage(c.batch, NumThreads(Work(c.n, c.height, c.width)), [&](int64_t b, int64_t threads) {
    const Params p = ImageParams(c, means, shapes, colors, constants, b);
    const float* g = cotangent.typed_data() + b * c.channels * c.height * c.width;
    float* dm = d_means->typed_data() + b * c.n * 2;
    float* ds = d_shapes->typed_data() + b * c.n * 3;
    float* dc = d_colors->typed_data() + b * c.n * c.channels;
    RunThreads(threads, [&](int64_t t) { BackwardSome(p, t, threads, g, dm, ds, dc); });
  });
  return ffi::Error::Success();
}

ffi::Error SplatColorGrad(ffi::Buffer<ffi::F32> means, ffi::Buffer<ffi::F32> shapes,
                          ffi::Buffer<ffi::F32> constants, ffi::Buffer<ffi::F32> cotangent,
                          ffi::ResultBuffer<ffi::F32> d_colors) {
  const CallShape c = ShapeOf(cotangent.dimensions(), means, constants, /*channels_last=*/false);
  if (c.channels > kMaxChannels) return ffi::Error::InvalidArgument("too many channels");
  ForEachImage(c.batch, NumThreads(Work(c.n, c.height, c.width)), [&](int64_t b, int64_t threads) {
    const float* k = constants.typed_data() + (c.batched_constants ? 3 * b : 0);
    const Params p{means.typed_data() + b * c.n * 2, shapes.typed_data() + b * c.n * 3, nullptr,
                   c.n, c.channels, c.height, c.width, k[0], k[1], k[2]};
    const float* g = cotangent.typed_data() + b * c.channels * c.height * c.width;
    float* dc = d_colors->typed_data() + b * c.n * c.channels;
    RunThreads(threads, [&](int64_t t) { ColorGradSome(p, t, threads, g, dc); });
  });
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(GaussjaxSplatColorGrad, SplatColorGrad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GaussjaxSplatForward, SplatForward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());

XLA_FFI_DEFINE_HANDLER_SYMBOL(GaussjaxSplatBackward, SplatBackward,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Arg<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>()
                                  .Ret<ffi::Buffer<ffi::F32>>());
