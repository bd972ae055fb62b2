// Reading a file protomem was pointed at - a checkpoint, a sampler state, a list file, a RecordIO
// pair, an image named by a list or found in a folder - with bounds taken before anything is read.
//
//   std::string bytes = detail::read_regular_file(path, "load");
//   std::string image = detail::read_regular_file(path, context, options.max_image_bytes,
//                                                 "SourceOptions::max_image_bytes");
//
// Requires: nothing; `context` starts each message ("load: cannot open 'x': ...").
// Guarantees: only a regular file (after symbolic links) is opened: a directory, a device
// (/dev/zero), a FIFO or a socket is a protomem::Error naming it and its kind, at once - the path
// is stat()ed before the open, and the open is non-blocking, so a FIFO never blocks. At most the
// size stat() reported is read (a file growing meanwhile cannot make the read run on), and a file
// larger than `max_bytes` is an Error before anything is allocated. Paths in messages are escaped
// (quoted_path). Without POSIX (_WIN32) the kind is checked with std::filesystem and the file read
// with std::ifstream, up to its size (not compiled or tested here).
#pragma once

#include <cstdint>
#include <limits>
#include <protomem/error.hpp>
#include <string>

#if defined(_WIN32)
#include <filesystem>
#include <fstream>
#else
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <system_error>
#endif

namespace protomem::detail {

inline constexpr std::uint64_t no_byte_limit = std::numeric_limits<std::uint64_t>::max();

/// A file of `size` bytes may be read when it is at most `max_bytes` (`limit` names the bound).
inline void check_byte_limit(const std::string& path, const std::string& context,
                             std::uint64_t size, std::uint64_t max_bytes, const char* limit) {
  if (size > max_bytes) {
    fail(context, ": ", quoted_path(path), " holds ", size, " bytes, more than the limit of ",
         max_bytes, limit ? " (" : "", limit ? limit : "", limit ? ")" : "");
  }
}

#if !defined(_WIN32)

/// What a stat mode is, for "is a FIFO, not a regular file".
inline const char* file_kind(mode_t mode) {
  if (S_ISDIR(mode)) return "a directory";
  if (S_ISCHR(mode)) return "a character device";
  if (S_ISBLK(mode)) return "a block device";
  if (S_ISFIFO(mode)) return "a FIFO";
  if (S_ISSOCK(mode)) return "a socket";
  return "not a regular file";
}

/// A read-only descriptor of the regular file at `path`, and its size (see the header comment).
inline int open_regular_file(const std::string& path, const std::string& context,
                             std::uint64_t* size) {
  const auto reason = [](int code) { return std::generic_category().message(code); };
  struct stat info {};
  // stat before open: opening a FIFO blocks until a writer comes, opening a device may act.
  if (::stat(path.c_str(), &info) != 0) {
    const int code = errno;
    fail(context, ": cannot open ", quoted_path(path), ": ", reason(code));
  }
  if (!S_ISREG(info.st_mode)) {
    fail(context, ": ", quoted_path(path), " is ", file_kind(info.st_mode), ", not a regular file");
  }
  // O_NONBLOCK: should the path have been replaced by a FIFO since the stat, the open returns.
  int fd = -1;
  do {
    fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    const int code = errno;
    fail(context, ": cannot open ", quoted_path(path), ": ", reason(code));
  }
  if (::fstat(fd, &info) != 0 || !S_ISREG(info.st_mode)) {
    const int code = errno;
    ::close(fd);
    fail(context, ": ", quoted_path(path), " is ", code ? reason(code) : file_kind(info.st_mode),
         ", not a regular file");
  }
  const int flags = ::fcntl(fd, F_GETFL);  // back to blocking reads, as any regular file has
  if (flags >= 0) ::fcntl(fd, F_SETFL, flags & ~O_NONBLOCK);
  *size = static_cast<std::uint64_t>(info.st_size);
  return fd;
}

/// The whole content of the regular file at `path`, at most `max_bytes` (`limit` names that
/// bound in the message). See the header comment.
inline std::string read_regular_file(const std::string& path, const std::string& context,
                                     std::uint64_t max_bytes = no_byte_limit,
                                     const char* limit = nullptr) {
  std::uint64_t size = 0;
  const int fd = open_regular_file(path, context, &size);
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  check_byte_limit(path, context, size, max_bytes, limit);
  if (size > std::string().max_size()) {
    fail(context, ": ", quoted_path(path), " holds ", size, " bytes, more than memory can hold");
  }
  std::string bytes(static_cast<std::size_t>(size), '\0');
  std::size_t got = 0;
  while (got < bytes.size()) {
    const ::ssize_t n = ::read(fd, &bytes[got], bytes.size() - got);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const int code = errno;
      fail(context, ": reading ", quoted_path(path), " failed after ", got,
           " bytes: ", std::generic_category().message(code));
    }
    if (n == 0) break;  // shrank since the stat: what is there
    got += static_cast<std::size_t>(n);
  }
  bytes.resize(got);
  return bytes;
}

#else

inline std::string read_regular_file(const std::string& path, const std::string& context,
                                     std::uint64_t max_bytes = no_byte_limit,
                                     const char* limit = nullptr) {
  std::error_code error;
  if (!std::filesystem::is_regular_file(path, error)) {
    fail(context, ": ", quoted_path(path), " is not a regular file");
  }
  const std::uint64_t size = std::filesystem::file_size(path, error);
  if (error) fail(context, ": cannot open ", quoted_path(path), ": ", error.message());
  check_byte_limit(path, context, size, max_bytes, limit);
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(context, ": cannot open ", quoted_path(path));
  std::string bytes(static_cast<std::size_t>(size), '\0');
  in.read(&bytes[0], static_cast<std::streamsize>(size));
  bytes.resize(static_cast<std::size_t>(in.gcount()));
  if (in.bad()) fail(context, ": reading ", quoted_path(path), " failed");
  return bytes;
}

#endif

}  // namespace protomem::detail
