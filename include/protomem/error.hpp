// protomem::Error — the one exception type the library throws for bad input, bad state or a bad
// checkpoint. Messages name the offending value and where it came from, e.g.
//   "protomem: labels[17] = -3 is negative (labels must be >= 0)".
#pragma once

#include <protomem/detail/language.hpp>

#include <cstddef>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
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

/// Text that came from a file or a stream, made safe to put into a message: printable ASCII is
/// kept, backslash and every other byte (control characters, bytes >= 0x80) become \\ and \xNN,
/// and text longer than `limit` bytes is cut there and marked with "...", so a corrupt file can
/// neither garble a terminal nor flood a log.
inline std::string escaped(std::string_view text, std::size_t limit = 200) {
  static constexpr char hex[] = "0123456789abcdef";
  std::string out;
  const std::size_t n = text.size() < limit ? text.size() : limit;
  for (std::size_t i = 0; i < n; ++i) {
    const auto byte = static_cast<unsigned char>(text[i]);
    if (byte == '\\') {
      out += "\\\\";
    } else if (byte >= 0x20 && byte < 0x7f) {
      out += static_cast<char>(byte);
    } else {
      out += "\\x";
      out += hex[byte >> 4];
      out += hex[byte & 15];
    }
  }
  if (n < text.size()) out += "...";
  return out;
}

/// A path for a message, quoted and escaped as file text is (a list file or a folder names it, or
/// a caller passed it): 'images/a\x0a.png'. Paths get a longer cut than other text, 1024 bytes, so
/// that the file name at the end survives a long folder.
inline std::string quoted_path(std::string_view path) { return "'" + escaped(path, 1024) + "'"; }

/// Builds an Error message from any streamable parts: fail("labels[", i, "] = ", v, " ...").
template <class... Parts>
[[noreturn]] void fail(Parts&&... parts) {
  std::ostringstream message;
  (message << ... << printable(std::forward<Parts>(parts)));
  throw Error(message.str());
}

}  // namespace detail
}  // namespace protomem
