// oneDNN convolutions and matrix products for XLA:CPU, called through the XLA FFI (see
// nfnet_jax/onednn.py).
//
// Three conv handlers, one per pass of y = conv(x, w): forward, input gradient, weight gradient.
// x, dx: [N, H, W, C]; w, dw: [KH, KW, C / G, O] (HWIO, groups outermost in O); y, dy: [N, OH, OW, O].
// One matmul handler: c [M, N] = op(a) op(b), op transposing where asked (what a matrix product's
// gradients need). float32 or bfloat16 (all operands of a call alike). Primitives are built once per geometry and
// cached; each call brings its own scratchpad, so concurrent calls (pmap devices) are safe.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include <oneapi/dnnl/dnnl.hpp>

#include "xla/ffi/api/ffi.h"

namespace ffi = xla::ffi;
using dnnl::memory;

namespace {

enum Pass : int64_t { kForward = 0, kInputGrad = 1, kWeightGrad = 2 };

// One oneDNN call at a time: each already uses every core (OpenMP), and two at once (XLA runs
// independent ops concurrently) would put two OpenMP teams on the same cores.
std::mutex& ExecutionMutex() {
  static std::mutex mu;
  return mu;
}

dnnl::engine& Engine() {
  static dnnl::engine engine(dnnl::engine::kind::cpu, 0);
  return engine;
}

// A convolution's primitive for one pass, with the reorders between our weight layout and its own.
struct Plan {
  dnnl::primitive conv;
  memory::desc x, y, w_user, w_conv, scratch;
  bool reorder_w = false;
  dnnl::reorder w_reorder;  // w_user -> w_conv (forward, input grad) or back (weight grad)
  std::string impl;         // oneDNN's name of the kernel, e.g. brgconv:avx512_core_amx_bf16
};

struct Geometry {
  int64_t n, h, w, c, kh, kw, o, oh, ow, groups, sh, sw, pt, pb, pl, pr;
  memory::data_type dt;
  std::vector<int64_t> key(Pass pass) const {
    return {pass, n, h, w, c, kh, kw, o, oh, ow, groups, sh, sw, pt, pb, pl, pr,
            static_cast<int64_t>(dt)};
  }
};

std::unique_ptr<Plan> MakePlan(const Geometry& g, Pass pass) {
  auto& eng = Engine();
  auto plan = std::make_unique<Plan>();
  using tag = memory::format_tag;
  plan->x = memory::desc({g.n, g.c, g.h, g.w}, g.dt, tag::nhwc);
  plan->y = memory::desc({g.n, g.o, g.oh, g.ow}, g.dt, tag::nhwc);
  memory::dims w_dims = g.groups > 1
      ? memory::dims{g.groups, g.o / g.groups, g.c / g.groups, g.kh, g.kw}
      : memory::dims{g.o, g.c, g.kh, g.kw};
  plan->w_user = memory::desc(w_dims, g.dt, g.groups > 1 ? tag::hwigo : tag::hwio);
  memory::desc w_any(w_dims, g.dt, tag::any);
  memory::dims strides{g.sh, g.sw}, pad_l{g.pt, g.pl}, pad_r{g.pb, g.pr};
  dnnl::primitive_attr attr;
  attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
  const auto alg = dnnl::algorithm::convolution_direct;
  const auto prop = pass == kForward ? dnnl::prop_kind::forward_inference
                                     : dnnl::prop_kind::forward_training;
#if DNNL_VERSION_MAJOR >= 3
  dnnl::convolution_forward::primitive_desc fwd(eng, prop, alg, plan->x, w_any, plan->y, strides,
                                                pad_l, pad_r, attr);
#else
  dnnl::convolution_forward::primitive_desc fwd(
      {prop, alg, plan->x, w_any, plan->y, strides, pad_l, pad_r}, attr, eng);
#endif
  if (pass == kForward) {
    plan->w_conv = fwd.weights_desc();
    plan->scratch = fwd.scratchpad_desc();
    plan->impl = fwd.impl_info_str();
    plan->conv = dnnl::convolution_forward(fwd);
  } else if (pass == kInputGrad) {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_backward_data::primitive_desc bwd(eng, alg, plan->x, w_any, plan->y, strides,
                                                        pad_l, pad_r, fwd, attr);
#else
    dnnl::convolution_backward_data::primitive_desc bwd(
        {alg, plan->x, w_any, plan->y, strides, pad_l, pad_r}, attr, eng, fwd);
#endif
    plan->w_conv = bwd.weights_desc();
    plan->scratch = bwd.scratchpad_desc();
    plan->impl = bwd.impl_info_str();
    plan->conv = dnnl::convolution_backward_data(bwd);
  } else {
#if DNNL_VERSION_MAJOR >= 3
    dnnl::convolution_backward_weights::primitive_desc bwd(eng, alg, plan->x, w_any, plan->y,
                                                           strides, pad_l, pad_r, fwd, attr);
#else
    dnnl::convolution_backward_weights::primitive_desc bwd(
        {alg, plan->x, w_any, plan->y, strides, pad_l, pad_r}, attr, eng, fwd);
#endif
    plan->w_conv = bwd.diff_weights_desc();
    plan->scratch = bwd.scratchpad_desc();
    plan->impl = bwd.impl_info_str();
    plan->conv = dnnl::convolution_backward_weights(bwd);
  }
  plan->reorder_w = plan->w_conv != plan->w_user;
  if (plan->reorder_w) {
    plan->w_reorder = pass == kWeightGrad
        ? dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->w_conv, eng, plan->w_user))
        : dnnl::reorder(dnnl::reorder::primitive_desc(eng, plan->w_user, eng, plan->w_conv));
  }
  return plan;
}

const Plan& GetPlan(const Geometry& g, Pass pass) {
  static std::mutex mu;
  static std::map<std::vector<int64_t>, std::unique_ptr<Plan>> cache;
  std::lock_guard<std::mutex> lock(mu);
  auto& slot = cache[g.key(pass)];
  if (!slot) slot = MakePlan(g, pass);
  return *slot;
}

// Per-thread, 64-byte aligned scratch memory that only grows: calls on one thread run one at a
// time, and reusing the pages spares each call the kernel's zeroing of fresh ones.
struct Buffer {
  void* data = nullptr;
  size_t size = 0;
  void* get(size_t n) {
    if (n > size) {
      std::free(data);
      size = (n + 4095) / 4096 * 4096;
      data = std::aligned_alloc(64, size);
    }
    return data;
  }
  ~Buffer() { std::free(data); }
};

ffi::Error Run(Pass pass, ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::AnyBuffer y, int64_t sh,
               int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  // x, w, y name the forward's operands; one of them is the result, per pass.
  const auto type = x.element_type();
  if (type != w.element_type() || type != y.element_type() ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16)) {
    return ffi::Error::InvalidArgument("onednn conv: operands must all be float32 or bfloat16");
  }
  auto xd = x.dimensions(), wd = w.dimensions(), yd = y.dimensions();
  if (xd.size() != 4 || wd.size() != 4 || yd.size() != 4) {
    return ffi::Error::InvalidArgument("onednn conv: expected 4-D NHWC / HWIO operands");
  }
  Geometry g{xd[0], xd[1], xd[2], xd[3], wd[0], wd[1], wd[3], yd[1], yd[2], groups,
             sh, sw, pt, pb, pl, pr,
             type == ffi::DataType::F32 ? memory::data_type::f32 : memory::data_type::bf16};
  try {
    const Plan& plan = GetPlan(g, pass);
    auto& eng = Engine();
    dnnl::stream stream(eng);
    std::lock_guard<std::mutex> running(ExecutionMutex());
    memory xm(plan.x, eng, x.untyped_data()), ym(plan.y, eng, y.untyped_data());
    memory wm(plan.w_user, eng, w.untyped_data());
    thread_local Buffer scratch, w_tmp;
    memory sm(plan.scratch, eng, scratch.get(plan.scratch.get_size()));
    memory wc = wm;
    if (plan.reorder_w) {
      wc = memory(plan.w_conv, eng, w_tmp.get(plan.w_conv.get_size()));
      if (pass != kWeightGrad) plan.w_reorder.execute(stream, wm, wc);
    }
    if (pass == kForward) {
      plan.conv.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_WEIGHTS, wc}, {DNNL_ARG_DST, ym},
                                 {DNNL_ARG_SCRATCHPAD, sm}});
    } else if (pass == kInputGrad) {
      plan.conv.execute(stream, {{DNNL_ARG_DIFF_SRC, xm}, {DNNL_ARG_WEIGHTS, wc},
                                 {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, sm}});
    } else {
      plan.conv.execute(stream, {{DNNL_ARG_SRC, xm}, {DNNL_ARG_DIFF_WEIGHTS, wc},
                                 {DNNL_ARG_DIFF_DST, ym}, {DNNL_ARG_SCRATCHPAD, sm}});
      if (plan.reorder_w) plan.w_reorder.execute(stream, wc, wm);
    }
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn conv: ") + e.what());
  }
  return ffi::Error::Success();
}

ffi::Error Forward(ffi::AnyBuffer x, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> y, int64_t sh,
                   int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr, int64_t groups) {
  return Run(kForward, x, w, *y, sh, sw, pt, pb, pl, pr, groups);
}

ffi::Error InputGrad(ffi::AnyBuffer dy, ffi::AnyBuffer w, ffi::Result<ffi::AnyBuffer> dx,
                     int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                     int64_t groups) {
  return Run(kInputGrad, *dx, w, dy, sh, sw, pt, pb, pl, pr, groups);
}

ffi::Error WeightGrad(ffi::AnyBuffer x, ffi::AnyBuffer dy, ffi::Result<ffi::AnyBuffer> dw,
                      int64_t sh, int64_t sw, int64_t pt, int64_t pb, int64_t pl, int64_t pr,
                      int64_t groups) {
  return Run(kWeightGrad, x, *dw, dy, sh, sw, pt, pb, pl, pr, groups);
}

// c [M, N] = op(a) · op(b): a is [M, K] ([K, M] if transpose_a), b [K, N] ([N, K] if transpose_b).
ffi::Error Matmul(ffi::AnyBuffer a, ffi::AnyBuffer b, ffi::Result<ffi::AnyBuffer> c,
                  int64_t transpose_a, int64_t transpose_b) {
  const auto type = a.element_type();
  if (type != b.element_type() || type != c->element_type() ||
      (type != ffi::DataType::F32 && type != ffi::DataType::BF16)) {
    return ffi::Error::InvalidArgument("onednn matmul: operands must all be float32 or bfloat16");
  }
  auto ad = a.dimensions(), bd = b.dimensions();
  if (ad.size() != 2 || bd.size() != 2) {
    return ffi::Error::InvalidArgument("onednn matmul: expected 2-D operands");
  }
  const int64_t m = transpose_a ? ad[1] : ad[0], k = transpose_a ? ad[0] : ad[1];
  const int64_t n = transpose_b ? bd[0] : bd[1];
  const auto dt = type == ffi::DataType::F32 ? memory::data_type::f32 : memory::data_type::bf16;
  try {
    static std::mutex mu;
    static std::map<std::vector<int64_t>, std::unique_ptr<std::pair<dnnl::matmul, memory::desc>>> cache;
    std::pair<dnnl::matmul, memory::desc>* plan;
    {
      std::lock_guard<std::mutex> lock(mu);
      auto& slot = cache[{m, k, n, transpose_a, transpose_b, static_cast<int64_t>(dt)}];
      if (!slot) {
        using tag = memory::format_tag;
        memory::desc a_md({m, k}, dt, transpose_a ? tag::ba : tag::ab);
        memory::desc b_md({k, n}, dt, transpose_b ? tag::ba : tag::ab);
        memory::desc c_md({m, n}, dt, tag::ab);
        dnnl::primitive_attr attr;
        attr.set_scratchpad_mode(dnnl::scratchpad_mode::user);
#if DNNL_VERSION_MAJOR >= 3
        dnnl::matmul::primitive_desc pd(Engine(), a_md, b_md, c_md, attr);
#else
        dnnl::matmul::primitive_desc pd({a_md, b_md, c_md}, attr, Engine());
#endif
        slot = std::make_unique<std::pair<dnnl::matmul, memory::desc>>(dnnl::matmul(pd),
                                                                       pd.scratchpad_desc());
      }
      plan = slot.get();
    }
    using tag = memory::format_tag;
    auto& eng = Engine();
    dnnl::stream stream(eng);
    thread_local Buffer scratch;
    std::lock_guard<std::mutex> running(ExecutionMutex());
    memory am({{m, k}, dt, transpose_a ? tag::ba : tag::ab}, eng, a.untyped_data());
    memory bm({{k, n}, dt, transpose_b ? tag::ba : tag::ab}, eng, b.untyped_data());
    memory cm({{m, n}, dt, tag::ab}, eng, c->untyped_data());
    memory sm(plan->second, eng, scratch.get(plan->second.get_size()));
    plan->first.execute(stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm},
                                 {DNNL_ARG_SCRATCHPAD, sm}});
    stream.wait();
  } catch (const dnnl::error& e) {
    return ffi::Error::Internal(std::string("onednn matmul: ") + e.what());
  }
  return ffi::Error::Success();
}

}  // namespace

// The kernel oneDNN picks for a 3×3, 64-channel conv's forward pass in float32 (bf16 = 0) or
// bfloat16 (bf16 = 1), written to out; returns 0, or -1 where it has none (the message in out).
extern "C" int NfnetConvKernelName(int bf16, char* out, int size) {
  Geometry g{8, 16, 16, 64, 3, 3, 64, 16, 16, 1, 1, 1, 1, 1, 1, 1,
             bf16 ? memory::data_type::bf16 : memory::data_type::f32};
  std::string name;
  int rc = 0;
  try {
    name = GetPlan(g, kForward).impl;
  } catch (const dnnl::error& e) {
    name = e.what();
    rc = -1;
  }
  snprintf(out, size, "%s", name.c_str());
  return rc;
}

#define NFNET_CONV_BINDING()                                                           \
  ffi::Ffi::Bind().Arg<ffi::AnyBuffer>().Arg<ffi::AnyBuffer>().Ret<ffi::AnyBuffer>()   \
      .Attr<int64_t>("sh").Attr<int64_t>("sw").Attr<int64_t>("pt").Attr<int64_t>("pb") \
      .Attr<int64_t>("pl").Attr<int64_t>("pr").Attr<int64_t>("groups")

XLA_FFI_DEFINE_HANDLER_SYMBOL(NfnetConvForward, Forward, NFNET_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(NfnetConvInputGrad, InputGrad, NFNET_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(NfnetConvWeightGrad, WeightGrad, NFNET_CONV_BINDING());
XLA_FFI_DEFINE_HANDLER_SYMBOL(NfnetMatmul, Matmul,
                              ffi::Ffi::Bind()
                                  .Arg<ffi::AnyBuffer>()
                                  .Arg<ffi::AnyBuffer>()
                                  .Ret<ffi::AnyBuffer>()
                                  .Attr<int64_t>("transpose_a")
                                  .Attr<int64_t>("transpose_b"));
