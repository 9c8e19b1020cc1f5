// The CPU backend's BLAS-kernel check (backend/cpu/blas_kernel.hpp): OpenBLAS's core names mapped to
// the instruction sets they need, the kernel chosen for a CPU, and the check itself: a forced fallback
// (OpenBLAS's SSE3 "Prescott" kernel on an AVX2 or AVX-512 CPU, as a CPU model newer than OpenBLAS's
// table gets) is detected, switched to this CPU's kernel, and the GEMMs it then runs are right.
//
// CTest runs this binary twice: as is, and as test_blas_kernel_forced_prescott with
// OPENBLAS_CORETYPE=Prescott in its environment, so OpenBLAS itself falls back when it loads and
// the process-wide check (blas_kernel()) must fire before the first GEMM.
#include <doctest/doctest.h>

#include <cstdlib>
#include <string>
#include <vector>

#include "../support.hpp"
#include "tinylora/backend/cpu/blas_kernel.hpp"
#include "tinylora/backend/cpu/cpu.hpp"

using namespace tinylora;
using namespace tinylora::backend::cpu;
using backend::Cpu;

namespace {

/// Cpu::gemm on (m, n, k) = (64, 48, 96) against a double triple loop: the BLAS path (m, n >= 8).
double gemm_relative_error(std::uint64_t seed) {
  Index const m = 64, n = 48, k = 96;
  auto const a = test::normal_vector(static_cast<std::size_t>(m * k), seed, 1);
  auto const b = test::normal_vector(static_cast<std::size_t>(k * n), seed, 2);
  std::vector<float> c(static_cast<std::size_t>(m * n), 0.0f);
  Cpu::gemm(Op::N, Op::T, 1.0f, ConstMatrixView<float>{a.data(), m, k}, ConstMatrixView<float>{b.data(), n, k}, 0.0f,
            MatrixView<float>{c.data(), m, n});
  double worst = 0;
  for (Index i = 0; i < m; ++i)
    for (Index j = 0; j < n; ++j) {
      double want = 0;
      for (Index p = 0; p < k; ++p) want += double(a[std::size_t(i * k + p)]) * double(b[std::size_t(j * k + p)]);
      worst = std::max(worst, std::abs(double(c[std::size_t(i * n + j)]) - want) / (1.0 + std::abs(want)));
    }
  return worst;
}

}  // namespace

TEST_CASE("OpenBLAS core names map to the instruction set their kernels need") {
  CHECK(kernel_isa_level("Prescott") == IsaLevel::Sse);
  CHECK(kernel_isa_level("Core2") == IsaLevel::Sse);
  CHECK(kernel_isa_level("Nehalem") == IsaLevel::Sse);
  CHECK(kernel_isa_level("Opteron(SSE3)") == IsaLevel::Sse);
  CHECK(kernel_isa_level("Sandybridge") == IsaLevel::Avx);
  CHECK(kernel_isa_level("Excavator") == IsaLevel::Avx);
  CHECK(kernel_isa_level("Haswell") == IsaLevel::Avx2);
  CHECK(kernel_isa_level("ZEN") == IsaLevel::Avx2);
  CHECK(kernel_isa_level("SkylakeX") == IsaLevel::Avx512);
  CHECK(kernel_isa_level("Cooperlake") == IsaLevel::Avx512);
  CHECK(kernel_isa_level("SapphireRapids") == IsaLevel::Avx512);
  // A core this table does not know (a newer OpenBLAS) is never judged, so never replaced.
  CHECK_FALSE(kernel_isa_level("Zen5").has_value());
}

TEST_CASE("the kernel chosen for a CPU is the best its instruction sets and vendor run") {
  CpuIsa c;
  c.vendor = "intel";
  CHECK(c.level() == IsaLevel::Sse);
  CHECK(best_kernel_for(c) == "Prescott");
  c.avx = true;
  CHECK(best_kernel_for(c) == "Sandybridge");
  c.avx2 = true;
  CHECK(c.level() == IsaLevel::Avx);  // AVX2 without FMA is not x86-64-v3
  c.fma = true;
  CHECK(best_kernel_for(c) == "Haswell");
  c.vendor = "amd";
  CHECK(best_kernel_for(c) == "Zen");
  c.avx512f = c.avx512bw = c.avx512vl = true;
  CHECK(c.level() == IsaLevel::Avx2);  // no AVX512DQ: not x86-64-v4
  c.avx512dq = true;
  CHECK(best_kernel_for(c) == "SkylakeX");
  c.avx512bf16 = true;
  CHECK(best_kernel_for(c) == "Cooperlake");
  CHECK(c.flags() == "avx avx2 fma avx512f avx512bw avx512vl avx512dq avx512_bf16");
}

TEST_CASE("/proc/cpuinfo's flags give the CPU's level (the two AVX-512 CPUs of issue 22, and an AVX2 one)") {
  // Abridged from lscpu / /proc/cpuinfo of the machines named in the issue (first processor only).
  std::string const xeon =
      "processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\nmodel\t\t: 207\n"
      "model name\t: Intel(R) Xeon(R) Processor\nflags\t\t: fpu sse sse2 ssse3 fma sse4_1 sse4_2 avx f16c avx2 "
      "bmi1 bmi2 avx512f avx512dq avx512cd avx512bw avx512vl avx512_vnni\n\nprocessor\t: 1\nflags\t\t: fpu\n";
  CpuIsa const x = parse_cpuinfo(xeon);
  CHECK(x.model == "Intel(R) Xeon(R) Processor");
  CHECK(x.vendor == "intel");
  CHECK(x.level() == IsaLevel::Avx512);
  CHECK(x.avx512vnni);
  CHECK_FALSE(x.avx512bf16);
  CHECK(best_kernel_for(x) == "SkylakeX");
  std::string const zen4 =
      "vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 9R14\nflags\t\t: sse sse2 avx avx2 fma avx512f avx512dq "
      "avx512cd avx512bw avx512vl avx512_bf16 avx512_vnni\n";
  CpuIsa const z = parse_cpuinfo(zen4);
  CHECK(z.vendor == "amd");
  CHECK(z.avx512bf16);
  CHECK(best_kernel_for(z) == "Cooperlake");
  // "avx512f" must not be read from "avx512fp16", nor "avx" from "avx2" alone.
  CpuIsa const partial = parse_cpuinfo("vendor_id\t: AuthenticAMD\nflags\t\t: sse2 avx2 avx512fp16 fma\n");
  CHECK_FALSE(partial.avx);
  CHECK_FALSE(partial.avx512f);
  CHECK(partial.level() == IsaLevel::Avx2);
  CHECK(parse_cpuinfo("").model == "unknown");
}

TEST_CASE("at startup the BLAS runs a kernel for this CPU's instruction set") {
  CpuIsa const& cpu = cpu_isa();
  BlasKernel const& k = blas_kernel();
  MESSAGE("CPU: " << cpu.model << " [" << cpu.flags() << "], compiled for [" << compiled_isa() << "]");
  MESSAGE("GEMM: " << k.describe());
  char const* const forced = std::getenv("OPENBLAS_CORETYPE");
#if defined(TINYLORA_HAS_OPENBLAS)
  if (forced != nullptr && std::string(forced) == "Prescott" && cpu.level() > IsaLevel::Sse) {
    // OpenBLAS loaded with its SSE3 kernel on this better CPU: the detection must have fired.
    CHECK(k.chosen == "Prescott");
    CHECK(k.fallback);
    CHECK(k.action == "switched");
    CHECK(k.message.find("Prescott") != std::string::npos);
  }
  if (blas_kernel_mode() == "auto" && k.use_blas) {
    auto const level = kernel_isa_level(k.running);
    REQUIRE(level.has_value());
    CHECK(*level == cpu.level());
    CHECK(lower(openblas_get_corename()) == lower(k.running));
  }
#else
  (void)forced;
  CHECK_FALSE(k.use_blas);
#endif
  CHECK(gemm_relative_error(test::seed(11)) < 1e-5);
}

#if defined(TINYLORA_HAS_OPENBLAS)
TEST_CASE("a forced fallback to OpenBLAS's SSE3 kernel is detected and switched back") {
  CpuIsa const& cpu = cpu_isa();
  if (cpu.level() == IsaLevel::Sse) {
    MESSAGE("skipped: this CPU has no AVX, so Prescott is its kernel");
    return;
  }
  std::string const best = best_kernel_for(cpu);
  auto const seed = test::seed(12);

  // Force the fallback in this process, as OpenBLAS does on a CPU model it does not know.
  REQUIRE(reselect_openblas_kernel("Prescott") == "Prescott");
  CHECK(gemm_relative_error(seed) < 1e-5);  // the SSE3 kernel is slow, not wrong

  SUBCASE("auto: detected and switched to this CPU's kernel") {
    BlasKernel const k = check_blas_kernel(cpu, "auto");
    CHECK(k.chosen == "Prescott");
    CHECK(k.fallback);
    CHECK(k.action == "switched");
    CHECK(k.running == best);
    CHECK(k.use_blas);
    CHECK(lower(openblas_get_corename()) == lower(best));
    CHECK(k.message.find(std::string("switched it to its ").append(best)) != std::string::npos);
    CHECK(k.describe().find("chosen: Prescott, switched") != std::string::npos);
    CHECK(gemm_relative_error(seed) < 1e-5);
  }
  SUBCASE("keep: detected, reported, left alone") {
    BlasKernel const k = check_blas_kernel(cpu, "keep");
    CHECK(k.fallback);
    CHECK(k.action == "kept");
    CHECK(k.running == "Prescott");
    CHECK(std::string(openblas_get_corename()) == "Prescott");
    CHECK(k.message.find("TINYLORA_BLAS_KERNEL=keep") != std::string::npos);
  }
  SUBCASE("eigen: every GEMM through Eigen's product") {
    BlasKernel const k = check_blas_kernel(cpu, "eigen");
    CHECK_FALSE(k.use_blas);
    CHECK(k.running == "eigen");
  }
  SUBCASE("a kernel this CPU cannot run is refused with the choices") {
    CHECK_THROWS_WITH_AS(check_blas_kernel(cpu, "NotACore"), doctest::Contains("not an OpenBLAS kernel this CPU can run"),
                         Error);
  }
  // Leave the process as the startup check left it.
  std::string const restore = blas_kernel().use_blas ? blas_kernel().running : best;
  REQUIRE(lower(reselect_openblas_kernel(restore)) == lower(restore));
}
#endif
