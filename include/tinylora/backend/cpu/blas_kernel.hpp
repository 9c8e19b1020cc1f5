// tinylora/backend/cpu/blas_kernel.hpp: which GEMM kernel the CPU backend really runs, checked
// against the instruction sets this CPU reports, and fixed once at startup when the BLAS fell back.
//
// Debian's OpenBLAS is a DYNAMIC_ARCH build: when it loads, it picks one of its kernel tables
// (Prescott, Haswell, Zen, SkylakeX, Cooperlake, ...) from the CPU's family and model. A CPU model
// newer than its table gets the SSE3 fallback, "Prescott": on an AVX-512 Xeon (family 6, model 207)
// with OpenBLAS 0.3.21 every GEMM of the forward and backward then ran without AVX, W1 at a quarter
// of its speed, silently. OpenBLAS itself reads OPENBLAS_CORETYPE only when it loads, before main.
//
// What blas_kernel() does, once per process (the first GEMM, or an experiment's start, calls it):
//   1. reads the CPU's instruction sets (cpu_isa(): the flags Linux reports in /proc/cpuinfo, as lscpu);
//   2. asks OpenBLAS which kernel it chose (openblas_get_corename()) and what instruction set that
//      kernel needs (kernel_isa_level());
//   3. when the kernel needs less than the CPU has, re-selects OpenBLAS's table for this CPU's level
//      in place: gotoblas_dynamic_quit(), OPENBLAS_CORETYPE set, gotoblas_dynamic_init() (exported by
//      every DYNAMIC_ARCH build; looked up with dlsym, so any other BLAS still links), and checks
//      that OpenBLAS now reports that kernel. Where that is impossible (a BLAS built for one
//      target), the backend uses Eigen's product, which this build compiled for its own target;
//   4. says so once on stderr. Everything it found is recorded: describe() and attributes() go
//      into every result file and every benchmark's header.
//
// TINYLORA_BLAS_KERNEL selects the behaviour: "auto" (the default, as above), "keep" (run what the
// BLAS chose, but still report a fallback), "eigen" (Eigen's product for every GEMM), or an
// OpenBLAS core name ("Haswell", "SkylakeX", ...) to select that table (it must suit this CPU).
//
// Measured (bench/RESULTS.md, "BLAS kernel"): on an AMD EPYC (Zen 3, AVX2), W1 fp32 with OpenBLAS's
// Prescott kernel vs its Zen kernel vs Eigen's product; the re-selected OpenBLAS kernel was fastest.
#pragma once

#include <dlfcn.h>

#include <algorithm>
#include <cctype>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#if defined(TINYLORA_HAS_OPENBLAS)
#include <cblas.h>
#endif

#include "tinylora/core/error.hpp"

namespace tinylora::backend::cpu {

/// Instruction-set levels, as the x86-64 psABI names them: 1 = baseline SSE2/SSE3 kernels,
/// 2 = AVX (no FMA), 3 = AVX2 + FMA (x86-64-v3), 4 = AVX-512 F/BW/VL/DQ (x86-64-v4).
enum class IsaLevel : int { Sse = 1, Avx = 2, Avx2 = 3, Avx512 = 4 };

inline char const* isa_level_name(IsaLevel l) {
  switch (l) {
    case IsaLevel::Sse: return "SSE";
    case IsaLevel::Avx: return "AVX";
    case IsaLevel::Avx2: return "AVX2+FMA";
    case IsaLevel::Avx512: return "AVX-512";
  }
  return "?";
}

/// What this CPU reports (/proc/cpuinfo's flags) and its model name.
struct CpuIsa {
  std::string model;  // /proc/cpuinfo's "model name", or "unknown"
  std::string vendor;  // "intel", "amd" or "other"
  bool avx = false, avx2 = false, fma = false;
  bool avx512f = false, avx512bw = false, avx512vl = false, avx512dq = false;
  bool avx512bf16 = false, avx512vnni = false;

  IsaLevel level() const {
    if (avx512f && avx512bw && avx512vl && avx512dq) return IsaLevel::Avx512;
    if (avx2 && fma) return IsaLevel::Avx2;
    if (avx) return IsaLevel::Avx;
    return IsaLevel::Sse;
  }
  /// The SIMD flags that matter here, space-separated ("avx2 fma avx512f ...").
  std::string flags() const {
    std::string out;
    auto add = [&](bool has, char const* name) {
      if (!has) return;
      if (!out.empty()) out += ' ';
      out += name;
    };
    add(avx, "avx"), add(avx2, "avx2"), add(fma, "fma"), add(avx512f, "avx512f"), add(avx512bw, "avx512bw");
    add(avx512vl, "avx512vl"), add(avx512dq, "avx512dq"), add(avx512vnni, "avx512_vnni"), add(avx512bf16, "avx512_bf16");
    return out.empty() ? std::string("sse") : out;
  }
};

/// Parses /proc/cpuinfo's text (its first processor): "vendor_id", "model name" and "flags", the
/// flags as the kernel reports them (already cleared where the OS does not enable a register state,
/// e.g. AVX-512 without XSAVE support), the same that lscpu prints.
inline CpuIsa parse_cpuinfo(std::string const& text) {
  CpuIsa c;
  c.model = "unknown", c.vendor = "other";
  std::string flags, vendor;
  auto value = [](std::string const& line) {
    auto const colon = line.find(':');
    return colon == std::string::npos ? std::string() : line.substr(std::min(line.size(), colon + 2));
  };
  std::size_t pos = 0;
  while (pos < text.size()) {
    std::size_t const eol = std::min(text.find('\n', pos), text.size());
    std::string const line = text.substr(pos, eol - pos);
    pos = eol + 1;
    if (line.empty() && !flags.empty()) break;  // the end of the first processor's block
    if (line.rfind("model name", 0) == 0 && c.model == "unknown") c.model = value(line);
    else if (line.rfind("vendor_id", 0) == 0 && vendor.empty()) vendor = value(line);
    else if (line.rfind("flags", 0) == 0 && flags.empty()) flags = value(line);
  }
  if (vendor == "GenuineIntel") c.vendor = "intel";
  else if (vendor == "AuthenticAMD") c.vendor = "amd";
  auto has = [&](std::string_view f) {  // f is one of the space-separated words
    for (std::size_t p = flags.find(f); p != std::string::npos; p = flags.find(f, p + 1))
      if ((p == 0 || flags[p - 1] == ' ') && (p + f.size() == flags.size() || flags[p + f.size()] == ' ')) return true;
    return false;
  };
  c.avx = has("avx"), c.avx2 = has("avx2"), c.fma = has("fma");
  c.avx512f = has("avx512f"), c.avx512bw = has("avx512bw"), c.avx512vl = has("avx512vl"), c.avx512dq = has("avx512dq");
  c.avx512vnni = has("avx512_vnni"), c.avx512bf16 = has("avx512_bf16");
  return c;
}

/// This CPU as Linux reports it (/proc/cpuinfo; elsewhere: unknown, no SIMD, so nothing is replaced).
inline CpuIsa read_cpu_isa() {
  std::ifstream info("/proc/cpuinfo");
  std::string const text((std::istreambuf_iterator<char>(info)), std::istreambuf_iterator<char>());
  return parse_cpuinfo(text);
}

/// This CPU, read once.
inline CpuIsa const& cpu_isa() {
  static CpuIsa const isa = read_cpu_isa();
  return isa;
}

/// What the compiler was told to target for this translation unit (-march): the SIMD macros it set.
inline std::string compiled_isa() {
  std::string out;
  [[maybe_unused]] auto add = [&](char const* name) {
    if (!out.empty()) out += ' ';
    out += name;
  };
#if defined(__AVX__)
  add("avx");
#endif
#if defined(__AVX2__)
  add("avx2");
#endif
#if defined(__FMA__)
  add("fma");
#endif
#if defined(__AVX512F__)
  add("avx512f");
#endif
#if defined(__AVX512BW__)
  add("avx512bw");
#endif
#if defined(__AVX512VL__)
  add("avx512vl");
#endif
#if defined(__AVX512VNNI__)
  add("avx512_vnni");
#endif
#if defined(__AVX512BF16__)
  add("avx512_bf16");
#endif
  return out.empty() ? std::string("sse2") : out;
}

inline std::string lower(std::string s) {
  std::transform(s.begin(), s.end(), s.begin(), [](unsigned char ch) { return static_cast<char>(std::tolower(ch)); });
  return s;
}

/// The instruction-set level an OpenBLAS kernel table needs (its core name, as
/// openblas_get_corename() reports it), or nullopt for a name this table does not know (a newer
/// OpenBLAS's core): those are never judged, so never replaced.
inline std::optional<IsaLevel> kernel_isa_level(std::string const& core_name) {
  std::string const n = lower(core_name);
  for (char const* k : {"skylakex", "cooperlake", "sapphirerapids"})
    if (n == k) return IsaLevel::Avx512;
  for (char const* k : {"haswell", "zen"})
    if (n == k) return IsaLevel::Avx2;
  for (char const* k : {"sandybridge", "bulldozer", "piledriver", "steamroller", "excavator"})
    if (n == k) return IsaLevel::Avx;
  for (char const* k : {"prescott", "core2", "penryn", "dunnington", "nehalem", "atom", "opteron", "opteron(sse3)",
                        "barcelona", "bobcat", "nano", "katmai", "coppermine", "northwood", "banias", "athlon",
                        "generic", "unknown"})
    if (n == k) return IsaLevel::Sse;
  return std::nullopt;
}

/// The OpenBLAS kernel table for a CPU: the best one its level and vendor can run.
inline std::string best_kernel_for(CpuIsa const& c) {
  switch (c.level()) {
    case IsaLevel::Avx512: return c.avx512bf16 ? "Cooperlake" : "SkylakeX";
    case IsaLevel::Avx2: return c.vendor == "amd" ? "Zen" : "Haswell";
    case IsaLevel::Avx: return "Sandybridge";
    case IsaLevel::Sse: return "Prescott";
  }
  return "Prescott";
}

/// What the CPU backend's GEMM runs, and what the startup check did about it.
struct BlasKernel {
  std::string library;    // "openblas-openmp 0.3.21" or "eigen"
  std::string chosen;     // the kernel the BLAS chose when it loaded ("Prescott"), or "" (Eigen)
  std::string running;    // the kernel it runs now, after the check ("Zen"), or "eigen"
  std::string action;     // "none", "switched", "kept", "eigen" (fell back to Eigen's product)
  bool fallback = false;  // the chosen kernel needs less than this CPU has
  bool use_blas = true;   // false: Cpu::gemm uses Eigen's product for every size
  std::string message;    // what was said on stderr, or ""

  /// One line: "openblas-openmp 0.3.21, kernel Zen (chosen: Prescott, switched)".
  std::string describe() const {
    // (Messages are streamed, not added: GCC 12 warns falsely on "literal" + std::string at -O3.)
    if (!use_blas)
      return chosen.empty() ? tinylora::detail::concat("eigen (", compiled_isa(), ")")
                            : tinylora::detail::concat("eigen (", compiled_isa(), "), ", library, " chose ", chosen, ", not used");
    if (action == "none") return tinylora::detail::concat(library, ", kernel ", running);
    return tinylora::detail::concat(library, ", kernel ", running, " (chosen: ", chosen, ", ", action, ")");
  }
  /// (key, value) pairs for a result file's root attributes.
  std::vector<std::pair<std::string, std::string>> attributes() const {
    CpuIsa const& c = cpu_isa();
    return {{"cpu_model", c.model},        {"cpu_simd", c.flags()},   {"compiled_simd", compiled_isa()},
            {"blas", library},             {"blas_kernel", running},  {"blas_kernel_chosen", chosen},
            {"blas_kernel_action", action}};
  }
};

namespace detail {

#if defined(TINYLORA_HAS_OPENBLAS)
inline std::string openblas_core_name() {
  char* const name = openblas_get_corename();
  return name != nullptr ? std::string(name) : std::string("unknown");
}
inline std::string openblas_library() {
  std::string config = openblas_get_config();  // "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY Zen MAX_THREADS=64"
  std::string version;
  if (config.rfind("OpenBLAS ", 0) == 0) version = config.substr(9, config.find(' ', 9) - 9);
  return version.empty() ? std::string("openblas-openmp") : tinylora::detail::concat("openblas-openmp ", version);
}
#endif

}  // namespace detail

/// Re-selects OpenBLAS's kernel table `core` (an OpenBLAS core name, e.g. "Haswell") in this process,
/// as OPENBLAS_CORETYPE would at load time. Returns the core OpenBLAS reports afterwards; the caller
/// compares. Throws when this BLAS cannot re-select (not OpenBLAS, or not a DYNAMIC_ARCH build).
/// Call it only while no GEMM runs (blas_kernel() calls it inside its one-time initialisation).
inline std::string reselect_openblas_kernel(std::string const& core) {
#if defined(TINYLORA_HAS_OPENBLAS)
  using Fn = void (*)();
  auto const quit = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_quit"));
  auto const init = reinterpret_cast<Fn>(dlsym(RTLD_DEFAULT, "gotoblas_dynamic_init"));
  TINYLORA_CHECK(quit != nullptr && init != nullptr, "reselect_openblas_kernel(): this OpenBLAS (",
                 detail::openblas_library(), ") cannot select a kernel at run time (expected a DYNAMIC_ARCH build, "
                 "which exports gotoblas_dynamic_init). Hint: Debian's libopenblas0-openmp is one.");
  char const* const before = std::getenv("OPENBLAS_CORETYPE");
  std::optional<std::string> const saved = before ? std::optional<std::string>(before) : std::nullopt;
  ::setenv("OPENBLAS_CORETYPE", core.c_str(), 1);
  quit();
  init();
  if (saved) ::setenv("OPENBLAS_CORETYPE", saved->c_str(), 1);
  else ::unsetenv("OPENBLAS_CORETYPE");
  return detail::openblas_core_name();
#else
  fail("reselect_openblas_kernel(): this build has no OpenBLAS (asked for the ", core,
       " kernel). Hint: install libopenblas-openmp-dev (scripts/setup) and reconfigure.");
#endif
}

/// The check itself, not cached: what the BLAS runs, compared with `cpu`, fixed per `mode`
/// ("auto", "keep", "eigen" or an OpenBLAS core name). blas_kernel() runs it once; tests call it
/// directly after forcing a fallback.
inline BlasKernel check_blas_kernel(CpuIsa const& cpu, std::string const& mode = "auto") {
  BlasKernel k;
#if defined(TINYLORA_HAS_OPENBLAS)
  k.library = detail::openblas_library();
  k.chosen = detail::openblas_core_name();
  k.running = k.chosen;
  k.action = "none";
  auto const level = kernel_isa_level(k.chosen);
  k.fallback = level && *level < cpu.level();
  std::string const want = mode == "auto" ? best_kernel_for(cpu) : mode;
  std::string const found = tinylora::detail::concat(isa_level_name(level.value_or(IsaLevel::Sse)), " kernel");
  std::string const has = tinylora::detail::concat("this CPU has ", isa_level_name(cpu.level()), " (", cpu.model, ")");
  if (mode == "eigen") {
    k.use_blas = false, k.action = "eigen", k.running = "eigen";
    return k;
  }
  if (mode == "keep") {
    if (k.fallback) {
      k.action = "kept";
      k.message = tinylora::detail::concat("tinylora: OpenBLAS runs its ", k.chosen, " ", found, " but ", has,
                                 "; kept, as TINYLORA_BLAS_KERNEL=keep asks: every fp32 GEMM runs below this CPU's speed.");
    }
    return k;
  }
  bool const asked = mode != "auto";
  if (!asked && !k.fallback) return k;
  if (lower(want) == lower(k.chosen)) return k;
  auto const want_level = kernel_isa_level(want);
  TINYLORA_CHECK(!asked || (want_level && *want_level <= cpu.level()), "check_blas_kernel(): TINYLORA_BLAS_KERNEL=", want,
                 " is not an OpenBLAS kernel this CPU can run (", has, "; known kernels at or below it: ",
                 best_kernel_for(cpu), ", Haswell, Sandybridge, Prescott). Hint: use auto, keep or eigen.");
  std::string got;
  try {
    got = reselect_openblas_kernel(want);
  } catch (Error const&) {
    got.clear();
  }
  if (lower(got) == lower(want)) {
    k.running = got, k.action = "switched";
    k.message = tinylora::detail::concat("tinylora: OpenBLAS chose its ", k.chosen, " ", found, ", but ", has, "; switched it to its ",
                               got, " kernel", asked ? " (TINYLORA_BLAS_KERNEL)" : "",
                               ". Set TINYLORA_BLAS_KERNEL=keep to keep OpenBLAS's choice.");
  } else {
    // Could not re-select: restore what OpenBLAS chose (when it moved) and multiply with Eigen's
    // product, compiled for this build's target.
    if (!got.empty() && lower(got) != lower(k.chosen)) reselect_openblas_kernel(k.chosen);
    k.use_blas = false, k.action = "eigen", k.running = "eigen";
    k.message = tinylora::detail::concat("tinylora: OpenBLAS chose its ", k.chosen, " ", found, ", but ", has,
                               ", and it cannot switch kernels at run time; the CPU backend multiplies with Eigen's product (",
                               compiled_isa(), ") instead. Set TINYLORA_BLAS_KERNEL=keep to keep OpenBLAS.");
  }
#else
  (void)cpu;
  (void)mode;
  k.library = "eigen", k.running = "eigen", k.action = "none", k.use_blas = false;
#endif
  return k;
}

/// The mode from TINYLORA_BLAS_KERNEL ("auto" when unset or empty).
inline std::string blas_kernel_mode() {
  char const* const v = std::getenv("TINYLORA_BLAS_KERNEL");
  return v == nullptr || *v == '\0' ? std::string("auto") : std::string(v);
}

/// The CPU backend's GEMM kernel: checked (and fixed) once per process, on first use; what it did
/// is said once on stderr.
inline BlasKernel const& blas_kernel() {
  static BlasKernel const kernel = [] {
    BlasKernel k = check_blas_kernel(cpu_isa(), blas_kernel_mode());
    if (!k.message.empty()) std::fprintf(stderr, "%s\n", k.message.c_str());
    return k;
  }();
  return kernel;
}

}  // namespace tinylora::backend::cpu
