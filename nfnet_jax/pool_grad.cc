// The gradient of a SAME-padded max pool in one pass, for XLA:CPU (see nfnet_jax/pool_grad.py).
//
// x: [N, H, W, C] (the pool's input), dy: [N, OH, OW, C]; dx: like x. Window (y, x) reads padded
// rows s·y + i, columns s·x + j (i, j < window; padding is -inf, so never a maximum); its dy goes
// to its first maximal input, taps row-major, as lax.reduce_window's gradient does. Overlapping
// windows' shares are summed in float, last window first: in float32 the very sums of
// layers.max_pool_grad_xla, bit for bit. float32 or bfloat16 (x, dy, dx alike).
// Images are shared among one thread per core.
#include <algorithm>
#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <type_traits>
#include <vector>

#include <sched.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

using bf16 = uint16_t;  // bfloat16's bits

inline float Load(const float* p, int64_t i) { return p[i]; }
inline float Load(const bf16* p, int64_t i) {
  uint32_t bits = static_cast<uint32_t>(p[i]) << 16;
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}

inline bf16 ToBf16(float v) {  // rounds to nearest even, as XLA's convert
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return static_cast<bf16>((bits >> 16) | 0x40);  // NaN
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return static_cast<bf16>(bits >> 16);
}

struct Geometry {
  int64_t n, h, w, c, oh, ow, window, stride, pt, pl;
};

// Where tap n's values v beat the best so far (strictly: the first maximum wins), take them.
// Branch-free and not inlined, so that it vectorizes.
template <typename T>
__attribute__((noinline)) void Take(const T* __restrict v, int32_t n, int64_t c,
                                    float* __restrict best, int32_t* __restrict tap) {
  for (int64_t k = 0; k < c; ++k) {
    const float x = Load(v, k), b = best[k];
    const int32_t more = -static_cast<int32_t>(x > b);
    tap[k] = (tap[k] & ~more) | (n & more);
    best[k] = x > b ? x : b;
  }
}

// One image: x [H, W, C], dy [OH, OW, C]; adds each window's dy to its winner in acc [H, W, C].
template <typename T>
void ImageGrad(const Geometry& g, const T* x, const T* dy, float* acc) {
  const int64_t c = g.c;
  std::vector<float> best(c);
  std::vector<int32_t> tap(c);
  std::vector<int64_t> at;  // offsets of the window's taps inside the image, row-major
  for (int64_t oy = g.oh - 1; oy >= 0; --oy) {  // last window first: see the top of the file
    for (int64_t ox = g.ow - 1; ox >= 0; --ox) {
      at.clear();
      for (int64_t i = 0; i < g.window; ++i) {
        const int64_t r = oy * g.stride + i - g.pt;
        for (int64_t j = 0; j < g.window; ++j) {
          const int64_t col = ox * g.stride + j - g.pl;
          if (r >= 0 && r < g.h && col >= 0 && col < g.w) at.push_back((r * g.w + col) * c);
        }
      }
      for (int64_t k = 0; k < c; ++k) best[k] = Load(x + at[0], k);
      std::fill(tap.begin(), tap.end(), 0);
      for (int32_t n = 1; n < static_cast<int32_t>(at.size()); ++n) {
        Take(x + at[n], n, c, best.data(), tap.data());
      }
      const T* d = dy + (oy * g.ow + ox) * c;
      for (int64_t k = 0; k < c; ++k) acc[at[tap[k]] + k] += Load(d, k);
    }
  }
}

int Cores() {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
}

template <typename T>
void PoolGrad(const Geometry& g, const T* x, const T* dy, T* dx) {
  const int64_t image = g.h * g.w * g.c, out = g.oh * g.ow * g.c;
  std::atomic<int64_t> next{0};
  auto work = [&]() {
    std::vector<float> acc(std::is_same<T, float>::value ? 0 : image);
    for (int64_t b; (b = next.fetch_add(1)) < g.n;) {
      float* a = std::is_same<T, float>::value ? reinterpret_cast<float*>(dx + b * image) : acc.data();
      std::fill(a, a + image, 0.0f);
      ImageGrad(g, x + b * image, dy + b * out, a);
      if (!std::is_same<T, float>::value) {
        for (int64_t i = 0; i < image; ++i) reinterpret_cast<bf16*>(dx)[b * image + i] = ToBf16(a[i]);
      }
    }
  };
  const int workers = static_cast<int>(std::min<int64_t>(Cores(), g.n));
  std::vector<std::thread> threads;
  for (int k = 1; k < workers; ++k) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
}

ffi::Error Grad(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dx, int64_t window,
                int64_t stride, int64_t pt, int64_t pl) {
  const auto type = x.element_type();
  if (type != dy.element_type() || type != dx->element_type() ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16)) {
    return ffi::Error::InvalidArgument("max pool grad: operands must all be float32 or bfloat16");
  }
  auto xd = x.dimensions(), yd = dy.dimensions();
  if (xd.size() != 4 || yd.size() != 4 || xd[0] != yd[0] || xd[3] != yd[3]) {
    return ffi::Error::InvalidArgument("max pool grad: expected NHWC x and dy of one batch and depth");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], yd[1], yd[2], window, stride, pt, pl};
  if (type == ffi::DataType::F32) {
    PoolGrad(g, static_cast<const float*>(x.untyped_data()), static_cast<const float*>(dy.untyped_data()),
             static_cast<float*>(dx->untyped_data()));
  } else {
    PoolGrad(g, static_cast<const bf16*>(x.untyped_data()), static_cast<const bf16*>(dy.untyped_data()),
             static_cast<bf16*>(dx->untyped_data()));
  }
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NfnetMaxPoolGrad, Grad,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("window")
                                  .Attr<int64_t>("stride")
                                  .Attr<int64_t>("pt")
                                  .Attr<int64_t>("pl"));
