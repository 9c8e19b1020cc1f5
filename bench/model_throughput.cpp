// bench/model_throughput: SmolLM2-135M-Instruct (or any GGUF decoder) in fp32 on this machine:
// tokens/s of loss evaluation (n_batch x n_seq tokens), of batched decoding at batch 1 and 32, and
// the machine's fp32 GEMM rate measured by the same binary, so each figure can be read against the
// roofline. Usage: model_throughput MODEL.gguf [repeats]
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <numeric>
#include <vector>

#include "bench_support.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/model/generate.hpp"
#include "tinylora/precision/policies.hpp"

using namespace tinylora;
using Clock = std::chrono::steady_clock;

using bench::median_seconds;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.gguf [repeats]\n", argv[0]);
    return 2;
  }
  int const repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  auto const m = model::Decoder<backend::Cpu, precision::Fp32>::load_gguf(argv[1]);
  auto const& c = m.config();
  std::printf("CPU: %s [%s], compiled for [%s]; GEMM: %s\n", backend::cpu::cpu_isa().model.c_str(),
              backend::cpu::cpu_isa().flags().c_str(), backend::cpu::compiled_isa().c_str(),
              backend::cpu::blas_kernel().describe().c_str());
  // fp32 GEMM rate on the model's largest projection shape: (2048, d) x (d, f).
  HostMatrix const X = HostMatrix::Random(2048, c.hidden), Wt = HostMatrix::Random(c.intermediate, c.hidden);
  HostMatrix Y(2048, c.intermediate);
  double const g = median_seconds(repeats, [&] {
    backend::Cpu::gemm(Op::N, Op::T, 1.0f, view_of(X), view_of(Wt), 0.0f, view_of(Y));
  });
  double const gflops = 2.0 * 2048 * static_cast<double>(c.hidden * c.intermediate) / g / 1e9;
  // Parameters touched per token (projections + LM head): the forward costs 2 flops per parameter
  // per token plus attention.
  double params = static_cast<double>(c.vocab * c.hidden);
  for (int l = 0; l < c.n_layers; ++l)
    params += static_cast<double>(2 * c.hidden * c.q_dim() + 2 * c.hidden * c.kv_dim() + 3 * c.hidden * c.intermediate);
  std::printf("fp32 GEMM (2048x%td x %tdx%td): %.1f GFLOP/s\n", c.hidden, c.hidden, c.intermediate, gflops);

  // Loss evaluation: 4 x 512 tokens, every token supervised (the LM head runs at every row).
  model::PackedBatch batch;
  std::vector<std::int32_t> seq(512);
  for (std::size_t i = 0; i < seq.size(); ++i) seq[i] = static_cast<std::int32_t>((i * 7919) % (c.vocab - 200) + 100);
  for (int s = 0; s < 4; ++s) batch.add(seq);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(batch.n_tokens()), 1);
  double const tl = median_seconds(repeats, [&] { (void)m.loss(batch, mask); });
  double const loss_tps = static_cast<double>(batch.n_tokens()) / tl;
  std::printf("loss evaluation 4 x 512: %.3f s, %.0f tok/s, %.1f GFLOP/s (%.0f%% of GEMM)\n", tl, loss_tps,
              loss_tps * 2 * params / 1e9, 100 * loss_tps * 2 * params / 1e9 / gflops);

  // Decoding: a 32-token prompt, then 64 new tokens per sequence (greedy, no stop). The token loop's
  // rate is (63 n tokens) / (t(64 new) - t(1 new)): the prefill and the first token cancel out.
  for (Index n : {Index{1}, Index{32}}) {
    std::vector<std::vector<std::int32_t>> prompts(static_cast<std::size_t>(n), std::vector<std::int32_t>(seq.begin(), seq.begin() + 32));
    model::GenerationOptions o;
    o.sampling.greedy = true;
    o.max_new_tokens = 1;
    double const t1 = median_seconds(repeats, [&] { (void)model::generate(m, prompts, o); });
    o.max_new_tokens = 64;
    double const t = median_seconds(repeats, [&] { (void)model::generate(m, prompts, o); });
    double const tps = static_cast<double>(n * o.max_new_tokens) / t;
    double const loop_tps = static_cast<double>(n * (o.max_new_tokens - 1)) / (t - t1);
    std::printf("decode batch %td (32-token prompt + 64 new): %.3f s, %.0f generated tok/s end to end; token loop "
                "%.0f tok/s, %.1f GFLOP/s (%.0f%% of GEMM); prefill + first token %.3f s\n",
                n, t, tps, loop_tps, loop_tps * 2 * params / 1e9, 100 * loop_tps * 2 * params / 1e9 / gflops, t1);
  }
  return 0;
}
