// 00_adapter_anatomy: TinyLoRA taken apart on one matrix, then the budget table of whole models.
// Prints, step by step, the truncated SVD of W, the projections P, v, M = sum_k v_k P_k, Delta W,
// the check that the fused path equals the merged weight, and the parameter count; then, for the
// module lists of Qwen2.5-7B (196), Qwen2.5-3B (252), Llama-3-8B (224) and SmolLM2-135M (210), the
// planner's (u, n_tie, groups, count, bytes) for a range of budgets. Everything goes to HDF5 too.
//   build/release/experiments/00_adapter_anatomy --convention peft --u 2 --out results/anatomy.h5
#include <Eigen/Core>

#include <chrono>
#include <iomanip>
#include <iostream>

#include "common/cli.hpp"
#include "tinylora/io/hdf5.hpp"
#include "tinylora/tinylora.hpp"

using namespace tinylora;
// ---- the ablation block: one line per policy axis ------------------------------------------------
using Backend = backend::Cpu;
using Precision = precision::Fp32;
using Conventions = TypeList<adapters::Paper, adapters::Reference, adapters::Peft, adapters::Fork>;
using Ties = TypeList<tying::Tiling, tying::Structured>;

struct Options {
  Index d_out = 576, d_in = 576, r = 2, u = 1, n_tok = 8;
  std::uint64_t seed = 0;
  float v = 0.01f;
  std::string convention = "paper", out = "results/00_adapter_anatomy.h5";
  std::vector<Index> budgets{1, 2, 13, 49, 120, 196};
};

template <class C>
void anatomy(Options const& o, io::ResultFile& file) {
  std::cout << std::setprecision(5);
  CounterRng const rng(o.seed, streams::of(streams::kTest, 0));
  HostMatrix W(o.d_out, o.d_in);  // (d_out, d_in) ~ N(0, 0.02^2), like a freshly initialized projection
  for (Index j = 0; j < W.size(); ++j) W.data()[j] = 0.02f * rng.normal(static_cast<std::uint64_t>(j));
  std::cout << "1. W: (" << o.d_out << ", " << o.d_in << "), ||W||_F = " << W.norm() << "\n";

  adapters::TinyLora<C> kind{.r = o.r, .u = o.u, .seed = o.seed};
  auto const t0 = std::chrono::steady_clock::now();
  typename adapters::TinyLora<C>::template Module<Backend, Precision> m(kind, view_of(W), 0);
  double const ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
  auto const& f = m.svd();
  std::cout << "2. truncated SVD (rank " << o.r << ", " << ms << " ms): S = " << f.S.transpose()
            << "\n   sign convention: the largest-|.| entry of each column of U is positive\n   U[0:3] =\n"
            << f.U.topRows(3) << "\n   V[0:3] =\n" << f.V.topRows(3) << "\n";
  std::cout << "3. P (" << o.u << ", " << o.r << ", " << o.r << "), std " << C::projection_std(o.r) << ":\n";
  for (Index k = 0; k < o.u; ++k)
    std::cout << "   P_" << k << " = " << Eigen::Map<HostMatrix const>(&m.projection()(k, 0, 0), o.r, o.r) << "\n";
  m.set_slots(std::vector<float>(static_cast<std::size_t>(o.u), o.v));
  auto const M = m.M();
  std::cout << "4. v = " << o.v << " (all " << o.u << "); convention '" << C::name << "' scale s = " << m.scale()
            << "\n5. M = sum_k v_k P_k =\n" << Eigen::Map<HostMatrix const>(M.data(), o.r, o.r) << "\n";
  HostMatrix const dW = m.delta_w();
  Eigen::JacobiSVD<Eigen::MatrixXf> rank_check(dW);
  std::cout << "6. Delta W: ||Delta W||_F = " << dW.norm() << " (" << dW.norm() / W.norm()
            << " of ||W||), top singular values " << rank_check.singularValues().head(std::min<Index>(4, o.r + 2)).transpose()
            << " (rank <= r)\n";
  HostMatrix X(o.n_tok, o.d_in);  // (n_tok, d_in)
  for (Index j = 0; j < X.size(); ++j) X.data()[j] = rng.normal(static_cast<std::uint64_t>(W.size() + j));
  HostMatrix Y = X * W.transpose();  // (n_tok, d_out): base, then the fused low-rank path
  m.apply(view_of(X), view_of(Y));
  HostMatrix Wm = W;
  m.merge(view_of(Wm));
  double const diff = (Y - X * Wm.transpose()).cwiseAbs().maxCoeff();
  std::cout << "7. fused X W^T + L K (R X) vs merged X (W + Delta W)^T: max |difference| = " << diff << "\n";
  std::cout << "8. trainable: " << o.u << " scalars = " << 4 * o.u << " B fp32, " << 2 * o.u << " B bf16/fp16;"
            << " frozen factors " << o.r * (o.d_out + o.d_in + 1) + o.u * o.r * o.r << " floats\n\n";
  file.write("anatomy/W", std::vector<float>(W.data(), W.data() + W.size()));
  file.write("anatomy/U", std::vector<float>(f.U.data(), f.U.data() + f.U.size()));
  file.write("anatomy/S", std::vector<float>(f.S.data(), f.S.data() + f.S.size()));
  file.write("anatomy/V", std::vector<float>(f.V.data(), f.V.data() + f.V.size()));
  file.write("anatomy/P", m.projection());
  file.write("anatomy/M", M);
  file.write("anatomy/delta_w", std::vector<float>(dW.data(), dW.data() + dW.size()));
  file.set_attr("/anatomy", "fused_vs_merged_max_abs", diff);
  file.set_attr("/anatomy", "convention", std::string(C::name));
  file.set_attr("/anatomy", "scale", double{m.scale()});
}

void budget_table(Options const& o, io::ResultFile& file) {
  std::pair<char const*, DecoderShape> const models[] = {{"Qwen2.5-7B", shapes::kQwen25_7B},
                                                         {"Qwen2.5-3B", shapes::kQwen25_3B},
                                                         {"Llama-3-8B", shapes::kLlama3_8B},
                                                         {"SmolLM2-135M", shapes::kSmolLM2_135M}};
  std::vector<std::string> model_col, tie_col, setting_col;
  std::vector<std::int64_t> modules_col, budget_col, u_col, groups_col, count_col;
  std::cout << std::left << std::setw(14) << "model" << std::setw(9) << "modules" << std::setw(12) << "tie"
            << std::setw(8) << "budget" << std::setw(4) << "u" << std::setw(20) << "setting" << std::setw(8) << "groups"
            << std::setw(8) << "count" << "bytes fp32/bf16/fp16\n";
  for (auto const& [model, shape] : models) {
    ModuleList const modules = decoder_modules(shape);
    for (Index b : o.budgets)
      for_each_type(Ties{}, [&]<class T>() {
        adapters::AdapterOptions ao;
        ao.u_choices = {1, 2, 4};
        auto const p = adapters::plan_adapter<adapters::TinyLora<>, T>(ao, modules, b);
        std::cout << std::setw(14) << model << std::setw(9) << modules.size() << std::setw(12) << T::name << std::setw(8)
                  << b << std::setw(4) << p.kind.u << std::setw(20) << p.tie.describe() << std::setw(8) << p.n_groups
                  << std::setw(8) << p.count << 4 * p.count << "/" << 2 * p.count << "/" << 2 * p.count << "\n";
        model_col.push_back(model), tie_col.push_back(std::string(T::name)), setting_col.push_back(p.tie.describe());
        modules_col.push_back(static_cast<std::int64_t>(modules.size())), budget_col.push_back(b), u_col.push_back(p.kind.u);
        groups_col.push_back(p.n_groups), count_col.push_back(p.count);
      });
  }
  file.write_strings("budget/model", model_col);
  file.write_strings("budget/tie", tie_col);
  file.write_strings("budget/setting", setting_col);
  file.write("budget/modules", modules_col);
  file.write("budget/target", budget_col);
  file.write("budget/u", u_col);
  file.write("budget/groups", groups_col);
  file.write("budget/count", count_col);
}

int main(int argc, char** argv) {
  return cli::guarded_main("00_adapter_anatomy", [&] {
    Options o;
    cli::po::options_description desc("options");
    desc.add_options()("d-out", cli::po::value(&o.d_out)->default_value(o.d_out), "rows of W (SmolLM2 q_proj: 576)")(
        "d-in", cli::po::value(&o.d_in)->default_value(o.d_in), "columns of W")(
        "rank,r", cli::po::value(&o.r)->default_value(o.r), "frozen SVD rank r")(
        "u", cli::po::value(&o.u)->default_value(o.u), "trainable scalars per tie group")(
        "v", cli::po::value(&o.v)->default_value(o.v), "value given to every v_k for the demonstration")(
        "convention", cli::po::value(&o.convention)->default_value(o.convention), "paper | reference | peft | fork")(
        "seed", cli::po::value(&o.seed)->default_value(o.seed), "seed of W, P and X")(
        "budgets", cli::po::value(&o.budgets)->multitoken()->default_value(o.budgets, "1 2 13 49 120 196"),
        "target budgets b for the table")("out", cli::po::value(&o.out)->default_value(o.out), "HDF5 output file");
    if (!cli::parse(argc, argv, desc, "00_adapter_anatomy: TinyLoRA step by step on one matrix, and budget tables"))
      return 0;
    TINYLORA_CHECK(o.r >= 1 && o.u >= 1 && o.d_out >= o.r && o.d_in >= o.r, "00_adapter_anatomy: need 1 <= r <= min(d_out, d_in) and u >= 1");
    std::filesystem::create_directories(std::filesystem::absolute(o.out).parent_path());
    auto file = io::ResultFile::create(o.out);
    file.set_attr("/", "experiment", "00_adapter_anatomy");
    file.set_attr("/", "seed", static_cast<std::int64_t>(o.seed));
    file.set_attr("/", "precision", std::string(Precision::name));
    cli::record_platform(file);
    file.set_attr("/", "backend", std::string(Backend::name));
    bool matched = false;
    for_each_type(Conventions{}, [&]<class C>() {
      if (o.convention == C::name) matched = true, anatomy<C>(o, file);
    });
    TINYLORA_CHECK(matched, "00_adapter_anatomy: unknown convention '", o.convention,
                   "' (expected paper, reference, peft or fork)");
    budget_table(o, file);
    file.finalize();
    std::cout << "\nwrote " << o.out << "\n";
    return 0;
  });
}
