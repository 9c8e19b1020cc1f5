// tinylora/adapters/tiny_lora.hpp: TinyLoRA (Morris et al. 2026, "Learning to Reason in 13 Parameters").
//
//   W ~ U diag(S) V^T              truncated SVD of the frozen weight, rank r (paper: r = 2)
//   M = sum_{k=1..u} v_k P_k       P: (u, r, r) fixed random per module, v: (u) trainable
//   Delta W = s U diag(S) M V^T    (Paper convention; see conventions.hpp for the others)
//   y = W x + L (s M) (R x)        the fused path: an r-dimensional bottleneck, Delta W never formed
//
// Gradient (K = s M, a = R x, c = L^T g):  dL/dv_k = s <c a^T, P_k>_F,  dL/dx += R^T K^T c.
// Tying: a group of modules shares one v (the slots), each module keeps its own P.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include <xtensor/xtensor.hpp>

#include "tinylora/adapters/concepts.hpp"
#include "tinylora/adapters/conventions.hpp"
#include "tinylora/adapters/low_rank_core.hpp"
#include "tinylora/adapters/options.hpp"
#include "tinylora/core/rng.hpp"
#include "tinylora/core/tensor.hpp"
#include "tinylora/linalg/svd.hpp"

namespace tinylora::adapters {

template <TinyLoraConvention Convention = Paper>
struct TinyLora {
  using convention = Convention;
  static constexpr std::string_view name = [] {
    if constexpr (std::is_same_v<Convention, Paper>) return std::string_view{"tinylora-paper"};
    else if constexpr (std::is_same_v<Convention, Reference>) return std::string_view{"tinylora-reference"};
    else if constexpr (std::is_same_v<Convention, Peft>) return std::string_view{"tinylora-peft"};
    else return std::string_view{"tinylora-fork"};
  }();
  static constexpr bool slots_depend_on_shape = false;

  Index r = 2;                                  // frozen SVD rank
  Index u = 1;                                  // trainable scalars per tie group
  float alpha = Convention::kDefaultAlpha;      // used by conventions that scale (Reference, Fork)
  Init init = Convention::kDefaultInit;         // v-init
  std::uint64_t seed = 0;                       // keys P (per module) and v-init (per group)
  linalg::SvdMethod svd = linalg::SvdMethod::Automatic;

  Index slots(ModuleInfo const&) const { return u; }
  float scale() const { return Convention::scale(alpha, r, u); }

  /// The kind from run-time options (u = the first of o.u_choices; unset fields keep the defaults).
  static TinyLora configure(AdapterOptions const& o) {
    TinyLora k;
    if (o.has_r()) k.r = o.r;
    if (o.has_alpha()) k.alpha = o.alpha;
    k.u = o.u_choices.front();
    k.seed = o.seed;
    k.svd = o.svd;
    return k;
  }
  /// The budget planner's knob: one kind per u in o.u_choices (the trainable count is G u).
  static std::vector<TinyLora> candidates(AdapterOptions const& o) {
    std::vector<TinyLora> out;
    for (Index each : o.u_choices) {
      TinyLora k = configure(o);
      k.u = each;
      out.push_back(k);
    }
    return out;
  }
  /// Every value that changes Delta W, recorded in result files.
  std::string describe() const {
    return detail::concat("r=", r, " u=", u, " alpha=", exact(alpha), " init=", init.describe(), " seed=", seed,
                          " svd=", svd_method_name(svd));
  }

  void init_slots(ModuleInfo const&, Index group, std::span<float> out) const { init.fill(out, seed, group); }

  /// P for module i: P[k](a, b) = projection_std(r) * normal(seed, stream (kProjection, i), index k r^2 + a r + b).
  xt::xtensor<float, 3> projections(Index module_index) const {
    xt::xtensor<float, 3> proj({static_cast<std::size_t>(u), static_cast<std::size_t>(r), static_cast<std::size_t>(r)});
    CounterRng const rng(seed, streams::of(streams::kProjection, static_cast<std::uint64_t>(module_index)));
    float const stddev = Convention::projection_std(r);
    for (std::size_t j = 0; j < proj.size(); ++j) proj.data()[j] = stddev * rng.normal(j);
    return proj;
  }

  template <class B, class P>
  class Module {
   public:
    using weight_type = typename P::weight_type;

    Module(TinyLora const& kind, ConstMatrixView<float> W, Index module_index)
        : svd_(linalg::svd_truncated(W, kind.r, kind.svd, {.seed = kind.seed})),
          P_(kind.projections(module_index)),
          s_(kind.scale()),
          u_(kind.u),
          r_(kind.r) {
      SplitFactors const f = Convention::split(svd_.U, svd_.S, svd_.V);
      core_ = LowRankCore<B, P>(f.L, f.R);
      set_slots(std::vector<float>(static_cast<std::size_t>(u_), 0.0f));
    }

    Index n_slots() const { return u_; }

    /// K = s sum_k v_k P_k, built on the host (r x r) and uploaded once per theta change.
    void set_slots(std::span<float const> v) {
      TINYLORA_CHECK(static_cast<Index>(v.size()) == u_, "TinyLora::Module::set_slots(): expected u = ", u_,
                     " values, got ", v.size());
      v_.assign(v.begin(), v.end());
      core_.set_K(mixing_matrix());
    }

    void apply(ConstMatrixView<float> X, MatrixView<float> Y) const { core_.apply(X, Y); }
    void backward(ConstMatrixView<float> X, ConstMatrixView<float> dY, MatrixView<float> dX) {
      core_.backward(X, dY, dX);
    }

    /// dL/dv_k = s <dK, P_k>_F.
    void accumulate_slot_gradient(std::span<float> grad) const {
      TINYLORA_CHECK(static_cast<Index>(grad.size()) == u_, "TinyLora::Module::accumulate_slot_gradient(): expected ",
                     u_, " values, got ", grad.size());
      std::vector<float> const dK = core_.dK();  // (r, r)
      for (Index k = 0; k < u_; ++k) {
        double acc = 0;
        for (Index j = 0; j < r_ * r_; ++j) acc += double{dK[j]} * P_.data()[k * r_ * r_ + j];
        grad[k] += s_ * static_cast<float>(acc);
      }
    }
    void zero_grad() { core_.zero_grad(); }

    HostMatrix delta_w() const { return core_.delta_w(); }
    void merge(MatrixView<weight_type> W) const { core_.add_to(W, 1.0f); }
    void unmerge(MatrixView<weight_type> W) const { core_.add_to(W, -1.0f); }

    /// Replace P (u, r, r), e.g. with PEFT's saved projections for exact parity.
    void set_projection(xt::xtensor<float, 3> const& projection) {
      auto const& shape = projection.shape();
      TINYLORA_CHECK(shape[0] == static_cast<std::size_t>(u_) && shape[1] == static_cast<std::size_t>(r_) &&
                         shape[2] == static_cast<std::size_t>(r_),
                     "TinyLora::Module::set_projection(): expected P of shape (", u_, ", ", r_, ", ", r_, "), got (",
                     shape[0], ", ", shape[1], ", ", shape[2], ")");
      P_ = projection;
      core_.set_K(mixing_matrix());
    }

    /// Replace the frozen factors: Delta W = L (s M) R with L: (d_out, r), R: (r, d_in), e.g. PEFT's
    /// saved B = U sqrt(S) and A = sqrt(S) V^T for exact parity (singular vectors are defined only up
    /// to sign, so importing them is the only way to reproduce another implementation bit for bit).
    void set_factors(HostMatrix const& L, HostMatrix const& R) {
      TINYLORA_CHECK(L.rows() == core_.d_out() && L.cols() == r_ && R.rows() == r_ && R.cols() == core_.d_in(),
                     "TinyLora::Module::set_factors(): expected L (", core_.d_out(), ", ", r_, ") and R (", r_, ", ",
                     core_.d_in(), "), got L (", L.rows(), ", ", L.cols(), ") and R (", R.rows(), ", ", R.cols(), ")");
      core_ = LowRankCore<B, P>(L, R);
      core_.set_K(mixing_matrix());
    }

    /// M = sum_k v_k P_k (without s), row-major (r, r).
    std::vector<float> M() const {
      std::vector<float> m(static_cast<std::size_t>(r_ * r_), 0.0f);
      for (Index k = 0; k < u_; ++k)
        for (Index j = 0; j < r_ * r_; ++j) m[j] += v_[k] * P_.data()[k * r_ * r_ + j];
      return m;
    }

    linalg::TruncatedSvd const& svd() const { return svd_; }
    xt::xtensor<float, 3> const& projection() const { return P_; }
    std::vector<float> const& v() const { return v_; }
    float scale() const { return s_; }
    LowRankCore<B, P> const& core() const { return core_; }

   private:
    std::vector<float> mixing_matrix() const {
      std::vector<float> K = M();
      for (float& x : K) x *= s_;
      return K;
    }

    linalg::TruncatedSvd svd_;
    xt::xtensor<float, 3> P_;  // (u, r, r)
    float s_;
    Index u_, r_;
    std::vector<float> v_;     // (u) current slots
    LowRankCore<B, P> core_;
  };

  template <class B, class P>
  Module<B, P> make_module(ConstMatrixView<float> W, ModuleInfo const&, Index module_index) const {
    return Module<B, P>(*this, W, module_index);
  }
};

template <class A>
inline constexpr bool is_tiny_lora = false;
template <TinyLoraConvention C>
inline constexpr bool is_tiny_lora<TinyLora<C>> = true;
/// A TinyLoRA kind, of any convention.
template <class A>
concept IsTinyLora = is_tiny_lora<A>;

}  // namespace tinylora::adapters
