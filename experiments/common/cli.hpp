// experiments/common/cli.hpp: what every experiment main shares: parsing with
// Boost.Program_options (--help prints defaults; unknown options are an error), the one try/catch
// that turns any failure into a single clear line and a non-zero exit, and run metadata.
#pragma once

#include <boost/program_options.hpp>

#include <cstdlib>
#include <exception>
#include <iostream>
#include <stdexcept>
#include <string>
#include <typeinfo>

#include "tinylora/backend/cpu/blas_kernel.hpp"
#include "tinylora/config.hpp"
#include "tinylora/io/hdf5.hpp"

/// The source revision the experiment was built from ("<git sha>[+dirty]", or "unknown" outside
/// a git checkout): defined in a generated file (cmake/write_revision.cmake) so that a new commit
/// relinks the experiments instead of recompiling them.
extern "C" char const* tinylora_build_revision();

namespace tinylora::cli {

namespace po = boost::program_options;

/// Whether this program takes --recipe and --list-recipes (common/recipe_main.hpp; printed by --help).
inline bool& takes_recipe_option() {
  static bool on = false;
  return on;
}

/// Whether an option's value is an unsigned integer (which Boost would parse "-1" into, wrapped).
inline bool takes_unsigned(po::option_description const& d) {
  auto const* typed = dynamic_cast<po::typed_value_base const*>(d.semantic().get());
  if (typed == nullptr) return false;
  std::type_info const& t = typed->value_type();
  return t == typeid(unsigned) || t == typeid(unsigned long) || t == typeid(unsigned long long) || t == typeid(unsigned short);
}

/// Parses argv into `desc`'s variables. Returns false (after printing help) when --help was given.
/// Strict: unknown options, tokens that are not options (a typo such as `01_loss_surface typo`
/// would otherwise start the default run) and negative values of unsigned options are errors that
/// name the token.
inline bool parse(int argc, char** argv, po::options_description& desc, std::string const& usage) {
  desc.add_options()("help,h", "print this help and exit");
  po::variables_map vm;
  try {
    auto const parsed = po::command_line_parser(argc, argv).options(desc).run();
    for (auto const& o : parsed.options) {
      if (o.position_key >= 0 || o.string_key.empty())
        throw std::invalid_argument("unexpected argument '" + (o.original_tokens.empty() ? std::string("?") : o.original_tokens.front()) +
                                    "': every argument is an option (--name value). Hint: run with --help to see the options.");
      po::option_description const* d = desc.find_nothrow(o.string_key, false);
      if (d != nullptr && takes_unsigned(*d))
        for (auto const& v : o.value)
          if (!v.empty() && v.front() == '-')
            throw std::invalid_argument("--" + o.string_key + " must be a whole number >= 0 (got '" + v + "')");
    }
    po::store(parsed, vm);
  } catch (po::error const& e) {
    throw std::invalid_argument(std::string(e.what()) + ". Hint: run with --help to see the options.");
  }
  if (vm.count("help")) {
    std::cout << usage << "\n\n" << desc << "\n";
    if (takes_recipe_option())
      std::cout << "  --recipe NAME         the recipe to run, of those this build has (default: the first)\n"
                   "  --list-recipes        print them and exit\n";
    return false;
  }
  po::notify(vm);
  return true;
}

/// Runs body(); any exception becomes one line on stderr and exit code 1.
template <class Body>
int guarded_main(char const* program, Body&& body) {
  try {
    return body();
  } catch (std::exception const& e) {
    std::cerr << program << ": error: " << e.what() << "\n";
    return 1;
  }
}

/// Records where the run computed, as root attributes (the last process that wrote the file): the
/// CPU's model and SIMD flags, the instruction sets this binary was compiled for, and the BLAS with
/// the kernel it runs (backend/cpu/blas_kernel.hpp: checked against the CPU, fixed when it fell back).
inline void record_platform(io::ResultFile& file) {
  for (auto const& [key, value] : backend::cpu::blas_kernel().attributes()) file.set_attr("/", key, value);
  file.set_attr("/", "git_revision", std::string(tinylora_build_revision()));
}

}  // namespace tinylora::cli
