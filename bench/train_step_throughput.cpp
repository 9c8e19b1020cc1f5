// bench/train_step_throughput: one TinyLoRA training step's forward + backward on a real model:
// b = 13 trainable scalars (tiling, as the paper's 13-parameter run), n_batch x n_seq tokens all
// supervised, tokens/s beside the forward-only loss on the same batch, and the process's peak RSS.
// Usage: train_step_throughput MODEL.gguf [repeats] [n_batch] [n_seq]
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <vector>

#include "bench_support.hpp"
#include "tinylora/adapters/tiny_lora.hpp"
#include "tinylora/backend/cpu/cpu.hpp"
#include "tinylora/model/adapted.hpp"
#include "tinylora/optim/optimizers.hpp"
#include "tinylora/precision/policies.hpp"

using namespace tinylora;
using Clock = std::chrono::steady_clock;
using Kind = adapters::TinyLora<adapters::Paper>;

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: %s MODEL.gguf [repeats] [n_batch] [n_seq]\n", argv[0]);
    return 2;
  }
  int const repeats = argc > 2 ? std::atoi(argv[2]) : 3;
  Index const n_batch = argc > 3 ? std::atoi(argv[3]) : 4, n_seq = argc > 4 ? std::atoi(argv[4]) : 512;
  std::printf("CPU: %s [%s], compiled for [%s]; GEMM: %s\n", backend::cpu::cpu_isa().model.c_str(),
              backend::cpu::cpu_isa().flags().c_str(), backend::cpu::compiled_isa().c_str(),
              backend::cpu::blas_kernel().describe().c_str());
  auto net = model::Decoder<backend::Cpu, precision::Fp32>::load(argv[1]);
  auto const t0 = Clock::now();
  model::AdaptedModel<Recipe<Kind, tying::Tiling, precision::Fp32, optim::AdamW, backend::Cpu>> adapted(net, model::AdapterSpec::of_budget(13));
  double const setup = std::chrono::duration<double>(Clock::now() - t0).count();
  std::vector<float> theta(static_cast<std::size_t>(adapted.count()), 0.01f);
  adapted.set_theta(theta);
  model::PackedBatch batch;
  std::vector<std::int32_t> seq(static_cast<std::size_t>(n_seq));
  for (std::size_t i = 0; i < seq.size(); ++i) seq[i] = static_cast<std::int32_t>((i * 7919) % (net.config().vocab - 200) + 100);
  for (Index s = 0; s < n_batch; ++s) batch.add(seq);
  std::vector<std::uint8_t> mask(static_cast<std::size_t>(batch.n_tokens()), 1);
  auto median = [&](auto&& f) { return bench::median_seconds(repeats, f); };
  double const fwd = median([&] { (void)net.loss(batch, mask); });
  double const step = median([&] { (void)adapted.loss_and_gradient(batch, mask); });
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  double const tokens = static_cast<double>(batch.n_tokens());
  std::printf("TinyLoRA b=%td (u=%td, %s, %td groups) on %td modules; adapter setup (exact SVDs) %.1f s\n", adapted.count(),
              adapted.plan().kind.u, adapted.plan().tie.describe().c_str(), adapted.plan().n_groups,
              static_cast<Index>(adapted.adapter_set().n_modules()), setup);
  std::printf("forward (loss) %td x %td: %.3f s, %.0f tok/s\n", n_batch, n_seq, fwd, tokens / fwd);
  std::printf("forward + backward (loss and dL/dtheta): %.3f s, %.0f tok/s (%.2f x the forward)\n", step, tokens / step,
              step / fwd);
  std::printf("peak RSS %.0f MiB\n", static_cast<double>(usage.ru_maxrss) / 1024.0);
  return 0;
}
