// tinylora/adapters/lora.hpp: LoRA (Hu et al. 2021).
//   Delta W = s B A,   A: (r, d_in) trainable, B: (d_out, r) trainable, zero at start,  s = alpha / r.
// Slots of a module: A row-major, then B row-major: r (d_in + d_out) scalars.
// Gradient (a = A x, c = B^T g):  dB += s g a^T,  dA += s c x^T,  dx += s A^T c.
#pragma once

#include <cmath>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tinylora/adapters/concepts.hpp"
#include "tinylora/adapters/init.hpp"
#include "tinylora/adapters/options.hpp"
#include "tinylora/core/error.hpp"

namespace tinylora::adapters {

struct Lora {
  static constexpr std::string_view name = "lora";
  static constexpr bool slots_depend_on_shape = true;

  Index r = 8;
  float alpha = 16.0f;
  std::uint64_t seed = 0;

  Index slots(ModuleInfo const& m) const { return r * (m.d_in + m.d_out); }
  float scale() const { return alpha / static_cast<float>(r); }

  static Lora configure(AdapterOptions const& o) {
    Lora k;
    if (o.has_r()) k.r = o.r;
    if (o.has_alpha()) k.alpha = o.alpha;
    k.seed = o.seed;
    return k;
  }
  static std::vector<Lora> candidates(AdapterOptions const& o) { return {configure(o)}; }
  std::string describe() const { return detail::concat("r=", r, " alpha=", exact(alpha), " seed=", seed); }

  /// A ~ U(-1/sqrt(d_in), 1/sqrt(d_in)) (Kaiming-uniform with a = sqrt(5), as PEFT), B = 0.
  void init_slots(ModuleInfo const& m, Index group, std::span<float> out) const {
    TINYLORA_CHECK(static_cast<Index>(out.size()) == slots(m), "Lora::init_slots(): expected ", slots(m),
                   " values, got ", out.size());
    float const bound = 1.0f / std::sqrt(static_cast<float>(m.d_in));
    Init::uniform(bound).fill(out.first(static_cast<std::size_t>(r * m.d_in)), seed, group);
    for (std::size_t j = static_cast<std::size_t>(r * m.d_in); j < out.size(); ++j) out[j] = 0.0f;
  }

  template <class B, class P>
  class Module {
   public:
    using weight_type = typename P::weight_type;

    Module(Lora const& kind, ConstMatrixView<float> W)
        : d_out_(W.rows), d_in_(W.cols), r_(kind.r), s_(kind.scale()),
          A_(B::template zeros<float>(r_ * d_in_)), B_(B::template zeros<float>(d_out_ * r_)),
          dA_(B::template zeros<float>(r_ * d_in_)), dB_(B::template zeros<float>(d_out_ * r_)) {}

    Index n_slots() const { return r_ * (d_in_ + d_out_); }

    void set_slots(std::span<float const> slots) {
      TINYLORA_CHECK(static_cast<Index>(slots.size()) == n_slots(), "Lora::Module::set_slots(): expected ",
                     n_slots(), " values, got ", slots.size());
      A_ = B::upload(slots.first(static_cast<std::size_t>(r_ * d_in_)));
      B_ = B::upload(slots.subspan(static_cast<std::size_t>(r_ * d_in_)));
    }

    void apply(ConstMatrixView<float> X, MatrixView<float> Y) const {
      Index const n = X.rows;
      auto a = B::template zeros<float>(n * r_);  // (n, r)  a = X A^T
      B::gemm(Op::N, Op::T, 1.0f, X, A(), 0.0f, view(a, n, r_));
      B::gemm(Op::N, Op::T, s_, cview(a, n, r_), Bm(), 1.0f, Y);  // Y += s a B^T
    }

    void backward(ConstMatrixView<float> X, ConstMatrixView<float> dY, MatrixView<float> dX) {
      Index const n = X.rows;
      auto a = B::template zeros<float>(n * r_);  // (n, r)  a = X A^T
      auto c = B::template zeros<float>(n * r_);  // (n, r)  c = dY B
      B::gemm(Op::N, Op::T, 1.0f, X, A(), 0.0f, view(a, n, r_));
      B::gemm(Op::N, Op::N, 1.0f, dY, Bm(), 0.0f, view(c, n, r_));
      B::gemm(Op::T, Op::N, s_, dY, cview(a, n, r_), 1.0f, view(dB_, d_out_, r_));  // dB += s dY^T a
      B::gemm(Op::T, Op::N, s_, cview(c, n, r_), X, 1.0f, view(dA_, r_, d_in_));    // dA += s c^T X
      if (dX.data != nullptr) B::gemm(Op::N, Op::N, s_, cview(c, n, r_), A(), 1.0f, dX);  // dX += s c A
    }

    void accumulate_slot_gradient(std::span<float> grad) const {
      TINYLORA_CHECK(static_cast<Index>(grad.size()) == n_slots(), "Lora::Module::accumulate_slot_gradient(): expected ",
                     n_slots(), " values, got ", grad.size());
      std::vector<float> const dA = B::download(dA_), dB = B::download(dB_);
      for (std::size_t j = 0; j < dA.size(); ++j) grad[j] += dA[j];
      for (std::size_t j = 0; j < dB.size(); ++j) grad[dA.size() + j] += dB[j];
    }
    void zero_grad() {
      B::fill(view(dA_, r_, d_in_), 0.0f);
      B::fill(view(dB_, d_out_, r_), 0.0f);
    }

    HostMatrix delta_w() const {
      auto const host = B::download(delta_w_buffer());
      return Eigen::Map<HostMatrix const>(host.data(), d_out_, d_in_);
    }
    void merge(MatrixView<weight_type> W) const { B::add(1.0f, cview(delta_w_buffer(), d_out_, d_in_), W); }
    void unmerge(MatrixView<weight_type> W) const { B::add(-1.0f, cview(delta_w_buffer(), d_out_, d_in_), W); }

   private:
    typename B::template Buffer<float> delta_w_buffer() const {
      auto dW = B::template zeros<float>(d_out_ * d_in_);  // (d_out, d_in) = s B A
      B::gemm(Op::N, Op::N, s_, Bm(), A(), 0.0f, view(dW, d_out_, d_in_));
      return dW;
    }
    ConstMatrixView<float> A() const { return {B::data(A_), r_, d_in_}; }
    ConstMatrixView<float> Bm() const { return {B::data(B_), d_out_, r_}; }
    template <class Buf>
    static MatrixView<float> view(Buf& b, Index rows, Index cols) { return {B::data(b), rows, cols}; }
    template <class Buf>
    static ConstMatrixView<float> cview(Buf const& b, Index rows, Index cols) { return {B::data(b), rows, cols}; }

    Index d_out_, d_in_, r_;
    float s_;
    typename B::template Buffer<float> A_;   // (r, d_in)
    typename B::template Buffer<float> B_;   // (d_out, r)
    typename B::template Buffer<float> dA_;  // (r, d_in)
    typename B::template Buffer<float> dB_;  // (d_out, r)
  };

  template <class B, class P>
  Module<B, P> make_module(ConstMatrixView<float> W, ModuleInfo const&, Index) const {
    return Module<B, P>(*this, W);
  }
};

}  // namespace tinylora::adapters
