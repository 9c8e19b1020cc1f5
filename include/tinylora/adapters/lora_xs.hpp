// tinylora/adapters/lora_xs.hpp: LoRA-XS (Balazy et al. 2024), TinyLoRA's parent.
//   W ~ U diag(S) V^T (rank r),   Delta W = U diag(S) R V^T,   R: (r, r) trainable (r^2 slots per module).
// It runs on the same fused bottleneck as TinyLoRA with K = R.
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tinylora/adapters/concepts.hpp"
#include "tinylora/adapters/init.hpp"
#include "tinylora/adapters/low_rank_core.hpp"
#include "tinylora/adapters/options.hpp"
#include "tinylora/linalg/svd.hpp"

namespace tinylora::adapters {

struct LoraXs {
  static constexpr std::string_view name = "lora-xs";
  static constexpr bool slots_depend_on_shape = false;

  Index r = 2;
  Init init = Init::normal(1e-5f);  // the LoRA-XS paper's small Gaussian
  std::uint64_t seed = 0;
  linalg::SvdMethod svd = linalg::SvdMethod::Automatic;

  Index slots(ModuleInfo const&) const { return r * r; }

  static LoraXs configure(AdapterOptions const& o) {
    LoraXs k;
    if (o.has_r()) k.r = o.r;
    k.seed = o.seed;
    k.svd = o.svd;
    return k;
  }
  /// No budget knob besides the tie setting: r is the frozen rank, an axis of its own.
  static std::vector<LoraXs> candidates(AdapterOptions const& o) { return {configure(o)}; }
  std::string describe() const {
    return detail::concat("r=", r, " init=", init.describe(), " seed=", seed, " svd=", svd_method_name(svd));
  }
  void init_slots(ModuleInfo const&, Index group, std::span<float> out) const { init.fill(out, seed, group); }

  template <class B, class P>
  class Module {
   public:
    using weight_type = typename P::weight_type;

    Module(LoraXs const& kind, ConstMatrixView<float> W) : r_(kind.r) {
      linalg::TruncatedSvd const f = linalg::svd_truncated(W, kind.r, kind.svd, {.seed = kind.seed});
      core_ = LowRankCore<B, P>(f.U * f.S.asDiagonal(), f.V.transpose());
      set_slots(std::vector<float>(static_cast<std::size_t>(r_ * r_), 0.0f));
    }

    Index n_slots() const { return r_ * r_; }
    /// slots = R, row-major (r, r).
    void set_slots(std::span<float const> R) {
      TINYLORA_CHECK(static_cast<Index>(R.size()) == r_ * r_, "LoraXs::Module::set_slots(): expected r^2 = ",
                     r_ * r_, " values, got ", R.size());
      core_.set_K(R);
    }
    void apply(ConstMatrixView<float> X, MatrixView<float> Y) const { core_.apply(X, Y); }
    void backward(ConstMatrixView<float> X, ConstMatrixView<float> dY, MatrixView<float> dX) {
      core_.backward(X, dY, dX);
    }
    /// dL/dR = dK.
    void accumulate_slot_gradient(std::span<float> grad) const {
      TINYLORA_CHECK(static_cast<Index>(grad.size()) == r_ * r_,
                     "LoraXs::Module::accumulate_slot_gradient(): expected ", r_ * r_, " values, got ", grad.size());
      std::vector<float> const dK = core_.dK();
      for (std::size_t j = 0; j < dK.size(); ++j) grad[j] += dK[j];
    }
    void zero_grad() { core_.zero_grad(); }
    HostMatrix delta_w() const { return core_.delta_w(); }
    void merge(MatrixView<weight_type> W) const { core_.add_to(W, 1.0f); }
    void unmerge(MatrixView<weight_type> W) const { core_.add_to(W, -1.0f); }

   private:
    Index r_;
    LowRankCore<B, P> core_;
  };

  template <class B, class P>
  Module<B, P> make_module(ConstMatrixView<float> W, ModuleInfo const&, Index) const {
    return Module<B, P>(*this, W);
  }
};

}  // namespace tinylora::adapters
