// tinylora/core/format.hpp: numbers written so that reading them back gives the same bits
// (run identities, result-file attributes): %.9g for float, %.17g for double.
#pragma once

#include <cstdio>
#include <string>

namespace tinylora {

inline std::string exact(float x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.9g", static_cast<double>(x));
  return buf;
}
inline std::string exact(double x) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.17g", x);
  return buf;
}

}  // namespace tinylora
