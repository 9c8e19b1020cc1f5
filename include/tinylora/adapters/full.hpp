// tinylora/adapters/full.hpp: full fine-tuning as an adapter: a dense trainable Delta W (d_out, d_in),
// zero at start. The upper end of the paper's Table 1; its "fused" apply is the plain product.
//   y = W x + Delta W x,   dDelta W += g x^T,   dx += Delta W^T g.
#pragma once

#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tinylora/adapters/concepts.hpp"
#include "tinylora/adapters/options.hpp"
#include "tinylora/core/error.hpp"

namespace tinylora::adapters {

struct Full {
  static constexpr std::string_view name = "full";
  static constexpr bool slots_depend_on_shape = true;

  Index slots(ModuleInfo const& m) const { return m.d_out * m.d_in; }

  static Full configure(AdapterOptions const&) { return {}; }
  static std::vector<Full> candidates(AdapterOptions const& o) { return {configure(o)}; }
  std::string describe() const { return "dense"; }
  void init_slots(ModuleInfo const&, Index, std::span<float> out) const {
    for (float& x : out) x = 0.0f;
  }

  template <class B, class P>
  class Module {
   public:
    using weight_type = typename P::weight_type;

    explicit Module(ConstMatrixView<float> W)
        : d_out_(W.rows), d_in_(W.cols), D_(B::template zeros<float>(W.rows * W.cols)),
          dD_(B::template zeros<float>(W.rows * W.cols)) {}

    Index n_slots() const { return d_out_ * d_in_; }
    /// slots = Delta W, row-major (d_out, d_in).
    void set_slots(std::span<float const> slots) {
      TINYLORA_CHECK(static_cast<Index>(slots.size()) == n_slots(), "Full::Module::set_slots(): expected ",
                     n_slots(), " values, got ", slots.size());
      D_ = B::upload(slots);
    }
    void apply(ConstMatrixView<float> X, MatrixView<float> Y) const { B::gemm(Op::N, Op::T, 1.0f, X, D(), 1.0f, Y); }
    void backward(ConstMatrixView<float> X, ConstMatrixView<float> dY, MatrixView<float> dX) {
      B::gemm(Op::T, Op::N, 1.0f, dY, X, 1.0f, MatrixView<float>{B::data(dD_), d_out_, d_in_});
      if (dX.data != nullptr) B::gemm(Op::N, Op::N, 1.0f, dY, D(), 1.0f, dX);
    }
    void accumulate_slot_gradient(std::span<float> grad) const {
      TINYLORA_CHECK(static_cast<Index>(grad.size()) == n_slots(), "Full::Module::accumulate_slot_gradient(): expected ",
                     n_slots(), " values, got ", grad.size());
      std::vector<float> const dD = B::download(dD_);
      for (std::size_t j = 0; j < dD.size(); ++j) grad[j] += dD[j];
    }
    void zero_grad() { B::fill(MatrixView<float>{B::data(dD_), d_out_, d_in_}, 0.0f); }
    HostMatrix delta_w() const {
      auto const host = B::download(D_);
      return Eigen::Map<HostMatrix const>(host.data(), d_out_, d_in_);
    }
    void merge(MatrixView<weight_type> W) const { B::add(1.0f, D(), W); }
    void unmerge(MatrixView<weight_type> W) const { B::add(-1.0f, D(), W); }

   private:
    ConstMatrixView<float> D() const { return {B::data(D_), d_out_, d_in_}; }
    Index d_out_, d_in_;
    typename B::template Buffer<float> D_;   // (d_out, d_in)
    typename B::template Buffer<float> dD_;  // (d_out, d_in)
  };

  template <class B, class P>
  Module<B, P> make_module(ConstMatrixView<float> W, ModuleInfo const&, Index) const {
    return Module<B, P>(W);
  }
};

}  // namespace tinylora::adapters
