// PEFT parity (an independent implementation): with the Peft convention, PEFT's saved A, B and P
// loaded into each module and PEFT's v, tinylora reproduces PEFT's logits and masked loss (1e-4) and
// the gradient of every v group (1e-3) on the tiny Llama and Qwen2 models, for several u and
// weight_tying values, and on SmolLM2-135M-Instruct (when the real model is present) through
// interop::import_peft_adapter of PEFT's saved folders: 13 tied groups of u = 1 over all 210 projections,
// and u = 4 with weight_tying 0.5 on q_proj/v_proj. Fixtures: tests/reference/make_fixtures.py
// (peft 0.21.2, TinyLoraConfig r = 2).
#include <doctest/doctest.h>

#include <cmath>
#include <string>

#include "../fixture_batch.hpp"
#include "../model_support.hpp"
#include "../support.hpp"
#include "tinylora/adapters/adapters.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/interop/peft_adapter.hpp"
#include "tinylora/io/safetensors_writer.hpp"
#include "tinylora/io/safetensors.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/precision/policies.hpp"

using namespace tinylora;
using Model = model::Decoder<backend::Cpu, precision::Fp32>;
using Kind = adapters::TinyLora<adapters::Peft>;

namespace {
void check_case(std::string const& model_name, std::string const& case_name, Index u, double weight_tying) {
  INFO("model " << model_name << ", case " << case_name);
  auto const dir = test::source_dir() / "tests/reference/fixtures";
  auto net = Model::load_hf(dir / model_name);
  Kind kind;
  kind.u = u;
  kind.svd = linalg::SvdMethod::Exact;
  model::AdaptedModel<Recipe<Kind, tying::PeftRatio, precision::Fp32, optim::AdamW, backend::Cpu>> adapted(net, kind, tying::PeftRatio{weight_tying});
  auto const f = io::SafetensorsFile::open(dir / ("model_" + model_name + "_tinylora_" + case_name + ".safetensors"));
  auto& set = adapted.adapter_set();
  // PEFT's frozen factors and projections, module by module.
  for (Index i = 0; i < set.n_modules(); ++i) {
    auto const& m = set.modules()[static_cast<std::size_t>(i)];
    std::string const key = "adapter.base_model.model." + m.name + ".tinylora_";
    auto const A = f.read<float>(key + "A", {2, m.d_in});   // (r, d_in) = sqrt(S) V^T
    auto const B = f.read<float>(key + "B", {m.d_out, 2});  // (d_out, r) = U sqrt(S)
    auto const P = f.read<float>(key + "P", {u, 2, 2});     // (u, r, r)
    set.module(i).set_factors(Eigen::Map<HostMatrix const>(B.data(), m.d_out, 2), Eigen::Map<HostMatrix const>(A.data(), 2, m.d_in));
    xt::xtensor<float, 3> proj({static_cast<std::size_t>(u), 2, 2});
    std::copy(P.begin(), P.end(), proj.begin());
    set.module(i).set_projection(proj);
  }
  // Our tie groups are PEFT's: same formula over the same module order.
  std::vector<float> theta;
  for (Index g = 0; g < set.n_groups(); ++g) {
    auto const v = f.read<float>("v." + std::to_string(g), {u});
    theta.insert(theta.end(), v.begin(), v.end());
  }
  REQUIRE(static_cast<Index>(theta.size()) == adapted.count());
  adapted.set_theta(theta);
  // The fixture's padded batch, packed.
  auto const [batch, supervised, where] = test::pack_fixture_batch(f);
  auto const want = f.read<float>("logits");  // (n_batch, n_seq, V)
  HostMatrix const got = net.logits(batch);
  double const worst = test::worst_relative_logit_difference(got, want, where);
  MESSAGE("worst logit difference (relative to the row's largest) " << worst);
  CHECK(worst <= 1e-4);
  auto const [loss, grad] = adapted.loss_and_gradient(batch, supervised);
  CHECK(loss.mean() == doctest::Approx(f.read<float>("loss")[0]).epsilon(1e-4));
  std::vector<float> want_grad;
  for (Index g = 0; g < set.n_groups(); ++g) {
    auto const v = f.read<float>("v_grad." + std::to_string(g), {u});
    want_grad.insert(want_grad.end(), v.begin(), v.end());
  }
  double max_g = 0;
  for (float x : want_grad) max_g = std::max(max_g, double(std::abs(x)));
  TINYLORA_CHECK_CLOSE(grad, want_grad, 1e-3, 1e-3 * max_g);
}

/// SmolLM2: the fixture keeps logits of vocabulary entries 0..255, the top 8 and the logsumexp per
/// position; each is compared relative to the position's largest logit.
void check_smollm2_case(Model& net, std::string const& case_name, Index n_groups) {
  INFO("SmolLM2 case " << case_name);
  auto const dir = test::source_dir() / "tests/reference/fixtures";
  auto const adapted = interop::import_peft_adapter(dir / "smollm2" / ("peft_tinylora_" + case_name), net);
  auto const f = io::SafetensorsFile::open(dir / ("model_smollm2_tinylora_" + case_name + ".safetensors"));
  auto const& set = adapted->adapter_set();
  REQUIRE(set.n_groups() == n_groups);
  std::vector<float> want_theta, want_grad;
  for (Index g = 0; g < n_groups; ++g) {
    auto const v = f.read<float>("v." + std::to_string(g));
    auto const dv = f.read<float>("v_grad." + std::to_string(g));
    want_theta.insert(want_theta.end(), v.begin(), v.end());
    want_grad.insert(want_grad.end(), dv.begin(), dv.end());
  }
  CHECK(adapted->theta() == want_theta);
  auto const [batch, supervised, where] = test::pack_fixture_batch(f);
  HostMatrix const got = net.logits(batch);  // (n, V)
  auto const head = f.read<float>("logits_head");     // (n_batch, n_seq, 256)
  auto const top_ids = f.read<std::int32_t>("top8_ids");
  auto const top = f.read<float>("top8_logits");      // (n_batch, n_seq, 8)
  auto const lse = f.read<float>("logsumexp");        // (n_batch, n_seq)
  Index const n_head = f.tensor("logits_head").shape.at(2);
  double worst = 0, worst_lse = 0;
  for (Index r = 0; r < got.rows(); ++r) {
    auto const w = static_cast<std::size_t>(where[static_cast<std::size_t>(r)]);
    double const scale = std::max(1.0, double(std::abs(top[w * 8])));
    for (Index j = 0; j < n_head; ++j)
      worst = std::max(worst, std::abs(got(r, j) - head[w * static_cast<std::size_t>(n_head) + static_cast<std::size_t>(j)]) / scale);
    for (std::size_t k = 0; k < 8; ++k)
      worst = std::max(worst, std::abs(got(r, top_ids[w * 8 + k]) - top[w * 8 + k]) / scale);
    double const m = got.row(r).maxCoeff();
    double sum = 0;
    for (Index j = 0; j < got.cols(); ++j) sum += std::exp(double(got(r, j)) - m);
    worst_lse = std::max(worst_lse, std::abs(m + std::log(sum) - lse[w]) / scale);
  }
  MESSAGE("SmolLM2 " << case_name << ": worst logit difference (relative to the row's largest) " << worst
                     << ", worst logsumexp difference " << worst_lse);
  CHECK(worst <= 1e-4);
  CHECK(worst_lse <= 1e-4);
  auto const [loss, grad] = adapted->loss_and_gradient(batch, supervised);
  MESSAGE("SmolLM2 " << case_name << ": loss " << loss.mean() << " (PEFT " << f.read<float>("loss")[0] << ")");
  CHECK(loss.mean() == doctest::Approx(f.read<float>("loss")[0]).epsilon(1e-4));
  double max_g = 0, worst_g = 0;
  for (float x : want_grad) max_g = std::max(max_g, double(std::abs(x)));
  for (std::size_t i = 0; i < grad.size() && i < want_grad.size(); ++i)
    worst_g = std::max(worst_g, double(std::abs(grad[i] - want_grad[i])) / max_g);
  MESSAGE("SmolLM2 " << case_name << ": worst v-gradient difference (relative to the largest) " << worst_g);
  TINYLORA_CHECK_CLOSE(grad, want_grad, 1e-3, 1e-3 * max_g);
}
}  // namespace

TEST_CASE("PEFT TinyLoRA parity on the tiny Llama: u = 1 untied, u = 4 weight_tying 0.5, u = 2 fully tied") {
  check_case("tiny_llama", "u1_wt0p0", 1, 0.0);
  check_case("tiny_llama", "u4_wt0p5", 4, 0.5);
  check_case("tiny_llama", "u2_wt1p0", 2, 1.0);
}

TEST_CASE("PEFT TinyLoRA parity on the tiny Qwen2: u = 3 untied, u = 2 weight_tying 0.75") {
  check_case("tiny_qwen2", "u3_wt0p0", 3, 0.0);
  check_case("tiny_qwen2", "u2_wt0p75", 2, 0.75);
}

TEST_CASE("PEFT TinyLoRA parity on SmolLM2-135M-Instruct: 13 groups of u = 1 over all 210 projections; u = 4 on q/v") {
  auto const path = test::real_model_path();
  if (!path) return;
  auto net = Model::load_gguf(*path);
  check_smollm2_case(net, "u1_wt0p938", 13);
  check_smollm2_case(net, "u4_wt0p5_qv", 30);
}
