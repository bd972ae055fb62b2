// protomem::Error — the one exception type the library throws for bad input, bad state or a bad
// checkpoint. Messages name the offending value and where it came from, e.g.
//   "protomem: labels[17] = -3 is negative (labels must be >= 0)".
#pragma once

#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace protomem {

/// Thrown for every error the library detects. Whenever it is thrown, the memory is left exactly
/// as it was before the call (strong exception guarantee).
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& what) : std::runtime_error("protomem: " + what) {}
};

namespace detail {

/// Builds an Error message from any streamable parts: fail("labels[", i, "] = ", v, " ...").
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  std::ostringstream message;
  message.precision(17);
  (message << ... << std::forward<Parts>(parts));
  throw Error(message.str());
}

}  // namespace detail
}  // namespace protomem
