// The default NFNet update of every parameter in one call, for XLA:CPU (see nfnet_jax/sgd_update.py).
//
// For each float32 parameter w with gradient g, momentum m and EMA e, units along the minor axis
// (unit of element i: i % units):
//   g_i <- g_i · min(1, clipping · max(|w_i|, eps) / |g_i|)   (AGC, Eq. 3; none where clipping = 0)
//   g <- g + wd · w;  m <- μ·m + g;  step = g + μ·m (Nesterov) or m;  w <- w − lr·step
//   e <- d·e + (1 − d)·w
// Operands: lr, d (scalars), then w, g, m, e of every leaf; results: w, m, e of every leaf, then
// stats = [Σ g² (before clipping), units clipped]. Unit norms are summed in double. Leaves are
// shared among one thread per core, biggest first.
#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <thread>
#include <vector>

#include <sched.h>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;

namespace {

struct Leaf {
  const float *w, *g, *m, *e;
  float *w_out, *m_out, *e_out;
  int64_t size, units;
  float clipping, wd;
};

struct Totals {
  double g_sq = 0.0;
  int64_t clipped = 0;
};

void UpdateLeaf(const Leaf& x, float lr, float d, float eps, float mu, bool nesterov, Totals& t) {
  const int64_t units = x.units, rows = x.size / units;
  std::vector<double> ww(units, 0.0), gg(units, 0.0);
  for (int64_t r = 0; r < rows; ++r) {
    const float* wr = x.w + r * units;
    const float* gr = x.g + r * units;
    for (int64_t u = 0; u < units; ++u) {
      ww[u] += double(wr[u]) * wr[u];
      gg[u] += double(gr[u]) * gr[u];
    }
  }
  std::vector<float> scale(units, 1.0f);
  for (int64_t u = 0; u < units; ++u) {
    t.g_sq += gg[u];
    const float g_norm = std::sqrt(float(gg[u]));
    const float max_norm = std::max(std::sqrt(float(ww[u])), eps) * x.clipping;
    if (x.clipping > 0 && g_norm > max_norm) {
      scale[u] = max_norm / std::max(g_norm, 1e-6f);
      ++t.clipped;
    }
  }
  const float wd = x.wd;
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t o = r * units;
    for (int64_t u = 0; u < units; ++u) {
      const float gi = x.g[o + u] * scale[u] + wd * x.w[o + u];
      const float mi = mu * x.m[o + u] + gi;
      const float wi = x.w[o + u] - lr * (nesterov ? gi + mu * mi : mi);
      x.m_out[o + u] = mi;
      x.w_out[o + u] = wi;
      x.e_out[o + u] = d * x.e[o + u] + (1.0f - d) * wi;
    }
  }
}

int Cores() {
  cpu_set_t set;
  return sched_getaffinity(0, sizeof(set), &set) == 0 ? std::max(1, CPU_COUNT(&set)) : 1;
}

ffi::Error Update(ffi::RemainingArgs args, ffi::RemainingRets rets, ffi::Span<const int64_t> units,
                  ffi::Span<const float> clipping, ffi::Span<const float> wd, float eps, float mu,
                  int64_t nesterov) {
  const size_t n = units.size();
  if (clipping.size() != n || wd.size() != n || args.size() != 2 + 4 * n || rets.size() != 3 * n + 1) {
    return ffi::Error::InvalidArgument("sgd_update: expected lr, decay, then w, g, m, e per leaf");
  }
  auto scalar = [&](size_t i) { return args.get<ffi::Buffer<ffi::F32>>(i).value().typed_data()[0]; };
  const float lr = scalar(0), d = scalar(1);
  std::vector<Leaf> leaves(n);
  for (size_t i = 0; i < n; ++i) {
    auto in = [&](size_t k) { return args.get<ffi::Buffer<ffi::F32>>(2 + k * n + i); };
    auto out = [&](size_t k) { return rets.get<ffi::Buffer<ffi::F32>>(k * n + i); };
    auto w = in(0), g = in(1), m = in(2), e = in(3);
    auto w2 = out(0), m2 = out(1), e2 = out(2);
    if (w.has_error() || g.has_error() || m.has_error() || e.has_error() || w2.has_error() ||
        m2.has_error() || e2.has_error()) {
      return ffi::Error::InvalidArgument("sgd_update: every operand and result must be float32");
    }
    const int64_t size = w->element_count();
    if (g->element_count() != size || m->element_count() != size || e->element_count() != size ||
        units[i] < 1 || size % units[i]) {
      return ffi::Error::InvalidArgument("sgd_update: w, g, m, e of a leaf differ in size");
    }
    leaves[i] = {w->typed_data(), g->typed_data(), m->typed_data(), e->typed_data(),
                 (*w2)->typed_data(), (*m2)->typed_data(), (*e2)->typed_data(), size, units[i],
                 clipping[i], wd[i]};
  }
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(),
            [&](size_t a, size_t b) { return leaves[a].size > leaves[b].size; });
  std::atomic<size_t> next{0};
  const int workers = std::min<int>(Cores(), std::max<size_t>(n, 1));
  std::vector<Totals> totals(n);  // per leaf, summed in leaf order: the same result every run
  auto work = [&]() {
    for (size_t j; (j = next.fetch_add(1)) < n;) {
      UpdateLeaf(leaves[order[j]], lr, d, eps, mu, nesterov != 0, totals[order[j]]);
    }
  };
  std::vector<std::thread> threads;
  for (int k = 1; k < workers; ++k) threads.emplace_back(work);
  work();
  for (auto& t : threads) t.join();
  Totals all;
  for (const auto& t : totals) {
    all.g_sq += t.g_sq;
    all.clipped += t.clipped;
  }
  auto stats = rets.get<ffi::Buffer<ffi::F32>>(3 * n);
  if (stats.has_error() || (*stats)->element_count() != 2) {
    return ffi::Error::InvalidArgument("sgd_update: stats must be float32[2]");
  }
  (*stats)->typed_data()[0] = float(all.g_sq);
  (*stats)->typed_data()[1] = float(all.clipped);
  return ffi::Error::Success();
}

}  // namespace

XLA_FFI_DEFINE_HANDLER_SYMBOL(NfnetSgdUpdate, Update,
                              ffi::Ffi::Bind()
                                  .RemainingArgs()
                                  .RemainingRets()
                                  .Attr<ffi::Span<const int64_t>>("units")
                                  .Attr<ffi::Span<const float>>("clipping")
                                  .Attr<ffi::Span<const float>>("wd")
                                  .Attr<float>("eps")
                                  .Attr<float>("mu")
                                  .Attr<int64_t>("nesterov"));
