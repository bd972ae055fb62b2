// protomem::Error — the one exception type the library throws for bad input, bad state or a bad
// checkpoint. Messages name the offending value and where it came from, e.g.
//   "protomem: labels[17] = -3 is negative (labels must be >= 0)".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

namespace protomem {

/// Thrown for every error the library detects. Whenever it is thrown, the memory is left exactly
/// as it was before the call (strong exception guarantee).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error("protomem: " + what) {}
};

namespace detail {

/// Floating-point values print in their shortest form that reads back exactly (0.1, not
/// 0.10000000000000001); everything else prints as it streams.
template <class T>
decltype(auto) printable(T&& value) {
  if constexpr (std::is_floating_point_v<std::decay_t<T>>) {
    std::ostringstream out;
    for (int digits = 6; digits <= 17; ++digits) {
      out.str("");
      out.precision(digits);
      out << value;
      std::istringstream back(out.str());
      std::decay_t<T> read{};
      if ((back >> read) && read == value) break;
    }
    return out.str();
  } else {
    return std::forward<T>(value);
  }
}

/// Builds an Error message from any streamable parts: fail("labels[", i, "] = ", v, " ...").
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  std::ostringstream message;
  (message << ... << printable(std::forward<Parts>(parts)));
  throw Error(message.str());
}

}  // namespace detail
}  // namespace protomem
