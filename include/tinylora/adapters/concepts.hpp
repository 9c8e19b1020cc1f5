// tinylora/adapters/concepts.hpp: the AdapterKind axis.
// An adapter kind is a cheap hyper-parameter object (r, u, alpha, seed...); for a given backend and
// precision it builds one Module per adapted linear, holding that module's frozen state. The
// trainable scalars ("slots") live outside, in the flat theta the tie strategy lays out.
#pragma once

#include <concepts>
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tinylora/adapters/options.hpp"
#include "tinylora/core/host_matrix.hpp"
#include "tinylora/core/module.hpp"
#include "tinylora/core/tensor.hpp"

namespace tinylora::adapters {

/// AdapterModule<M>: the per-module state built by an adapter kind. `X`: (n_tok, d_in) inputs,
/// `Y`: (n_tok, d_out) outputs, `dY` their gradient, `dX` (n_tok, d_in) input gradient, all views of
/// backend memory; `slots`: this module's trainable values (its tie group's slice of theta, already
/// rounded to the precision's theta_type); `grad`: a host span of n_slots() floats; `W` a view of the
/// frozen weight (d_out, d_in) in the precision's weight_type.
///
/// | expression                      | returns      | semantics                                                         |
/// |---------------------------------|--------------|-------------------------------------------------------------------|
/// | `m.n_slots()`                   | `Index`      | trainable scalars this module reads                               |
/// | `m.set_slots(slots)`            | `void`       | the module's Delta W becomes the one these slots define           |
/// | `m.apply(X, Y)`                 | `void`       | Y += X Delta W^T, without forming Delta W (except `Full`)         |
/// | `m.backward(X, dY, dX)`         | `void`       | dX += dY Delta W (skipped when dX.data is null); accumulates dL/dslots |
/// | `m.accumulate_slot_gradient(grad)` | `void`    | grad += dL/dslots accumulated since the last zero_grad()          |
/// | `m.zero_grad()`                 | `void`       | forget the accumulated slot gradient                              |
/// | `m.delta_w()`                   | `HostMatrix` | the explicit (d_out, d_in) Delta W (tests, merge, inspection)     |
/// | `m.merge(W)` / `m.unmerge(W)`   | `void`       | W += Delta W / W -= Delta W, rounded to W's storage type          |
template <class M>
concept AdapterModule = requires(M m, M const cm, ConstMatrixView<float> X, MatrixView<float> Y,
                                 std::span<float const> slots, std::span<float> grad,
                                 MatrixView<typename M::weight_type> W) {
  typename M::weight_type;
  { cm.n_slots() } -> std::same_as<Index>;
  m.set_slots(slots);
  cm.apply(X, Y);
  m.backward(X, X, Y);
  m.accumulate_slot_gradient(grad);
  m.zero_grad();
  { cm.delta_w() } -> std::same_as<HostMatrix>;
  cm.merge(W);
  cm.unmerge(W);
};

/// AdapterKind<A, B, P>: `a` an adapter kind, `info` a module, `W` a host (d_out, d_in) view of its
/// frozen weight in float, `i` the module's index in model order, `g` a tie group's index, `out` a host
/// span of a.slots(info) floats.
///
/// | expression                               | returns            | semantics                                              |
/// |------------------------------------------|--------------------|--------------------------------------------------------|
/// | `A::name`                                | `std::string_view` | recorded in result files ("tinylora-paper", "lora", ...) |
/// | `A::slots_depend_on_shape`               | `bool`             | true when a module's slot count depends on (d_out, d_in): such adapters can only be tied among same-shaped modules |
/// | `a.slots(info)`                          | `Index`            | trainable scalars one module (or one tie group) needs  |
/// | `a.template make_module<B, P>(W, info, i)` | `A::Module<B, P>` | frozen state: SVD factors, projections, ...; an AdapterModule |
/// | `a.init_slots(info, g, out)`             | `void`             | the initial value of group g's slots (the convention's v-init) |
/// | `A::configure(o)`                        | `A`                | the kind from run-time AdapterOptions `o`; fields it lacks or `o` leaves unset keep the kind's defaults |
/// | `A::candidates(o)`                       | `std::vector<A>`   | every setting of the kind's budget knob (TinyLoRA: one per u in o.u_choices), fewest slots first |
/// | `a.describe()`                           | `std::string`      | every value that changes Delta W ("r=2 u=1 alpha=1 init=zeros seed=0 svd=automatic"), recorded in result files |
template <class A, class B, class P>
concept AdapterKind = requires(A const a, ModuleInfo const& info, ConstMatrixView<float> W, Index i,
                               std::span<float> out, AdapterOptions const& o) {
  { A::name } -> std::convertible_to<std::string_view>;
  { A::slots_depend_on_shape } -> std::convertible_to<bool>;
  { A::configure(o) } -> std::same_as<A>;
  { A::candidates(o) } -> std::same_as<std::vector<A>>;
  { a.describe() } -> std::same_as<std::string>;
  { a.slots(info) } -> std::same_as<Index>;
  { a.template make_module<B, P>(W, info, i) } -> AdapterModule;
  a.init_slots(info, i, out);
};

}  // namespace tinylora::adapters
