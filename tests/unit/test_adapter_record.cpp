// The factory and the run-file record: for every adapter kind, the budget planner's count is the
// count the adapter creates; an adapter rebuilt from the record a result file holds has the same
// Delta W in every module, bit for bit; a record that does not match (another model, another
// module list, another kind setting) is refused with a message naming the difference.
#include <doctest/doctest.h>

#include "../adapter_matrix.hpp"
#include "../support.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/model/adapter_record.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/policies.hpp"
#include "tinylora/precision/policies.hpp"

using namespace tinylora;

namespace {
using Net = model::Decoder<backend::Cpu, precision::Fp32>;
std::filesystem::path tiny() { return test::source_dir() / "tests/reference/fixtures/tiny_llama"; }
}  // namespace

TEST_CASE("every adapter kind plans, builds, records and rebuilds exactly") {
  auto const seed = test::seed(71);
  auto net = Net::load(tiny());
  auto const dir = test::scratch_dir("adapter_record");
  for_each_type(policies::AdapterKinds{}, [&]<class A>() {
    using T = std::conditional_t<A::slots_depend_on_shape, tying::Structured, tying::Tiling>;
    using R = Recipe<A, T, precision::Fp32, optim::AdamW, backend::Cpu>;
    INFO("recipe " << R::describe() << ", seed " << seed);
    auto spec = model::AdapterSpec::of_budget(A::slots_depend_on_shape ? 20000 : 3);
    spec.options.seed = seed;
    spec.options.u_choices = {1, 2};
    spec.targets.types = {"q_proj", "v_proj", "up_proj"};
    model::AdaptedModel<R> adapted(net, spec);
    CHECK(adapted.count() == adapted.plan().count);
    CHECK(static_cast<Index>(adapted.adapter_set().initial_theta().size()) == adapted.plan().count);
    // 6 modules (2 layers x q, v, up): TinyLoRA reaches b = 3 with u = 1, n_tie = 2; LoRA-XS (r^2 = 4
    // slots per group) comes nearest with one group.
    if constexpr (adapters::IsTinyLora<A>) CHECK(adapted.count() == 3);
    if constexpr (std::is_same_v<A, adapters::LoraXs>) CHECK(adapted.count() == 4);
    std::vector<float> theta(static_cast<std::size_t>(adapted.count()));
    auto const v = test::normal_vector(theta.size(), seed, 1);
    for (std::size_t k = 0; k < theta.size(); ++k) theta[k] = 0.01f * v[k];
    adapted.set_theta(theta);

    auto const path = dir / (std::string(A::name) + ".h5");
    std::filesystem::remove(path);
    {
      auto file = io::ResultFile::open_or_create_resumable(path);
      model::record_or_check_adapter(file, adapted, "model-hash");
      file.finalize();
    }
    auto const file = io::ResultFile::open(path, io::ResultFile::Mode::ReadOnly);
    auto const rec = model::read_adapter_record(file);
    CHECK(rec.recipe == R::describe());
    CHECK(rec.spec.options.seed == seed);
    CHECK(rec.spec.targets.types == spec.targets.types);
    CHECK(rec.count == adapted.count());
    {
      model::AdaptedModel<R> rebuilt(net, rec.spec);
      CHECK_NOTHROW(model::check_same_adapter(rec, model::adapter_record(rebuilt, "model-hash"), "test"));
      rebuilt.set_theta(theta);
      for (Index i = 0; i < adapted.adapter_set().n_modules(); ++i) {
        HostMatrix const a = adapted.adapter_set().module(i).delta_w(), b = rebuilt.adapter_set().module(i).delta_w();
        CHECK(a.cwiseEqual(b).all());
      }
      CHECK_THROWS_WITH_AS(model::check_same_adapter(rec, model::adapter_record(rebuilt, "other-hash"), "test"),
                           doctest::Contains("Hint: pass the --model the run was trained with"), Error);
    }
    {  // another module list
      auto other = rec.spec;
      other.targets.types = {"q_proj", "v_proj"};
      model::AdaptedModel<R> rebuilt(net, other);
      CHECK_THROWS_WITH_AS(model::check_same_adapter(rec, model::adapter_record(rebuilt, "model-hash"), "test"),
                           doctest::Contains("the run recorded"), Error);
    }
    {  // another seed: for the kinds with frozen random or SVD state the setting differs
      auto other = rec.spec;
      other.options.seed = seed + 1;
      model::AdaptedModel<R> rebuilt(net, other);
      if constexpr (!std::is_same_v<A, adapters::Full>)
        CHECK_THROWS_WITH_AS(model::check_same_adapter(rec, model::adapter_record(rebuilt, "model-hash"), "test"),
                             doctest::Contains("kind setting"), Error);
    }
  });
}

TEST_CASE("the planner counts shape-dependent kinds per group, not G x slots") {
  ModuleList const modules = decoder_modules(shapes::kSmolLM2_135M);
  adapters::AdapterOptions o;
  o.r = 1;
  auto const lora = adapters::plan_adapter<adapters::Lora, tying::Structured>(o, modules, 1);
  // Structured, n_tie = 30 (every layer of a type in one group): one group per type, r (d_in + d_out) each.
  Index want = 0;
  for (auto const& m : modules)
    if (m.layer == 0) want += m.d_in + m.d_out;
  CHECK(lora.n_groups == 7);
  CHECK(lora.count == want);
  auto const xs = adapters::plan_adapter<adapters::LoraXs, tying::Tiling>(o, modules, 13);
  CHECK(xs.count == 13);  // r = 1: one slot per group
  o.r = 2;
  auto const xs2 = adapters::plan_adapter<adapters::LoraXs, tying::Tiling>(o, modules, 13);
  CHECK(xs2.count % 4 == 0);
  CHECK(std::abs(xs2.count - 13) <= 2);
  CHECK_THROWS_WITH_AS((adapters::plan_adapter<adapters::Lora, tying::Structured>(o, ModuleList{}, 13)),
                       doctest::Contains("module list is empty"), Error);
}
