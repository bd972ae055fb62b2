// Crash-safe replacement of a file: the bytes go to a new temporary file in the same directory,
// which is flushed to the disk and then renamed over the target, and the directory is flushed so
// that the rename itself survives a crash. Used by PrototypeMemory::save(path) and
// BatchSampler::save(path).
//
//   detail::write_file_atomically("run/memory.ckpt", bytes);
//   detail::write_file_atomically("run/state.ckpt", [&](detail::AtomicFile& file) {
//     file.write(memory_bytes);
//     file.write(sampler_bytes);
//   });
//
// Requires: the directory of `path` exists and may be written; `path` is not a directory.
// Guarantees (POSIX):
//   - At every moment, including after a crash or power loss at any point, `path` holds either its
//     old content or the complete new content, never a mix or a truncated file.
//   - A failure (cannot create the temporary, disk full, write or fsync error, rename refused, or
//     an exception from the writer) throws, removes the temporary and leaves `path` as it was. The
//     one exception is a failure of the last step, the fsync of the directory after the rename:
//     the new content is then in place but may not survive a crash, and the Error says so.
//   - Each call writes its own temporary, `<path>.tmp.<pid>.<counter>.<random>`, created with
//     O_CREAT | O_EXCL, so concurrent saves to one path never share a temporary; the last rename
//     wins, and `path` is always one complete file.
//   - A successful save removes the temporaries of `path` left by saves of processes that no longer
//     exist (killed by SIGKILL, a crash, a power cut): names of the exact form above whose pid is
//     not this process's and names no process (kill(pid, 0) fails with ESRCH). A live process's
//     temporary, any other file and other paths' temporaries are left alone. Pids are this PID
//     namespace's: a save to the same path from another machine or container is not seen.
//   - The file is created with mode 0666 minus the umask, as std::ofstream creates files; a
//     replaced file's mode, owner and links are not carried over (it is a new file), and a symbolic
//     link at `path` is replaced by the file, not followed.
// Elsewhere (_WIN32) the file is written with std::ofstream and moved over the target with
// std::filesystem::rename (MoveFileExW, replacing), without the flushes: a failed write still
// leaves the old file, but a crash may lose the new content.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <exception>
#include <functional>
#include <protomem/error.hpp>
#include <string>
#include <system_error>
#include <utility>

#if defined(_WIN32)
#include <cstdio>
#include <filesystem>
#include <fstream>
#else
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>
#endif

namespace protomem::detail {

/// The temporary file of one write_file_atomically() call, open for writing.
class AtomicFile {
 public:
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  /// Appends `size` bytes; throws Error naming the file and the system's reason on failure.
  void write(const char* data, std::size_t size);
  void write(const std::string& bytes) { write(bytes.data(), bytes.size()); }
  /// Bytes written so far.
  std::uint64_t size() const { return written_; }
  /// The temporary's path (it is renamed to the target when the writer returns).
  const std::string& temporary_path() const { return temporary_; }
  const std::string& target_path() const { return target_; }

 private:
  friend void write_file_atomically(const std::string& path,
                                    const std::function<void(AtomicFile&)>& writer);

  AtomicFile(std::string target, std::string temporary)
      : target_(std::move(target)), temporary_(std::move(temporary)) {}

  std::string target_, temporary_;
  std::uint64_t written_ = 0;
#if defined(_WIN32)
  std::ofstream out_;
#else
  int fd_ = -1;
#endif
};

/// The directory part of `path` ("." when it has none, "/" for a file in the root).
inline std::string directory_of(const std::string& path) {
  const std::size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  if (slash == 0) return "/";
  return path.substr(0, slash);
}

/// A name for a new temporary next to `path`, unlikely to be taken: the process id, a per-process
/// counter and clock bits (O_EXCL makes a taken one fail, and the caller then draws another).
inline std::string temporary_name_for(const std::string& path) {
  static std::atomic<std::uint64_t> counter{0};
  const std::uint64_t n = counter.fetch_add(1, std::memory_order_relaxed);
  const auto ticks =
      static_cast<std::uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count());
  std::uint64_t mix = ticks ^ (n * 0x9E3779B97F4A7C15ULL);
  mix ^= mix >> 31;
  mix *= 0xBF58476D1CE4E5B9ULL;
  mix ^= mix >> 29;
#if defined(_WIN32)
  const long long pid = 0;
#else
  const long long pid = static_cast<long long>(::getpid());
#endif
  static const char hex[] = "0123456789abcdef";
  std::string tag(6, '0');
  for (int k = 0; k < 6; ++k) tag[static_cast<std::size_t>(k)] = hex[(mix >> (4 * k)) & 15U];
  return path + ".tmp." + std::to_string(pid) + "." + std::to_string(n) + "." + tag;
}

/// The pid in a temporary's file name `name` when it is `<base>.tmp.<pid>.<counter>.<6 hex>`
/// (temporary_name_for() with `base` the target's file name), else -1.
inline long long temporary_pid(const std::string& name, const std::string& base) {
  const std::string prefix = base + ".tmp.";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return -1;
  std::size_t i = prefix.size();
  const auto digits = [&](std::size_t most, long long* value) {
    const std::size_t from = i;
    long long v = 0;
    for (; i < name.size() && i - from < most && name[i] >= '0' && name[i] <= '9'; ++i) {
      v = v * 10 + (name[i] - '0');
    }
    if (value) *value = v;
    return i > from && (i == name.size() || name[i] == '.');
  };
  long long pid = 0;
  if (!digits(10, &pid) || i == name.size() || pid <= 0 || pid > 0x7fffffff) return -1;
  ++i;
  if (!digits(20, nullptr) || i == name.size()) return -1;
  ++i;
  if (name.size() - i != 6) return -1;
  for (; i < name.size(); ++i) {
    if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f'))) return -1;
  }
  return pid;
}

#if !defined(_WIN32)

/// Removes the temporaries of `path` whose process no longer exists (see the header comment).
/// Best effort: never throws; what it cannot list or remove stays.
inline void remove_stale_temporaries(const std::string& path) noexcept {
  try {
    const std::string directory = directory_of(path);
    const std::size_t slash = path.find_last_of('/');
    const std::string base = slash == std::string::npos ? path : path.substr(slash + 1);
    DIR* dir = ::opendir(directory.c_str());
    if (dir == nullptr) return;
    std::vector<std::string> stale;
    const long long self = static_cast<long long>(::getpid());
    while (const dirent* entry = ::readdir(dir)) {
      const long long pid = temporary_pid(entry->d_name, base);
      // ESRCH only: EPERM means a process of another user lives with that pid.
      if (pid > 0 && pid != self && ::kill(static_cast<pid_t>(pid), 0) != 0 && errno == ESRCH) {
        stale.emplace_back(entry->d_name);
      }
    }
    ::closedir(dir);
    for (const std::string& name : stale) ::unlink((directory + "/" + name).c_str());
  } catch (...) {  // std::bad_alloc: the cleanup is not worth failing a save for
  }
}

/// The system's words for errno `code`.
inline std::string system_reason(int code) { return std::generic_category().message(code); }

inline void AtomicFile::write(const char* data, std::size_t size) {
  while (size > 0) {  // write() may write less than asked, or be interrupted by a signal
    const ::ssize_t n = ::write(fd_, data, size);
    if (n < 0) {
      if (errno == EINTR) continue;
      const int code = errno;
      fail("save: writing ", quoted_path(temporary_), " (the temporary of ", quoted_path(target_),
           ") failed after ", written_, " bytes: ", system_reason(code));
    }
    if (n == 0) {
      fail("save: writing ", quoted_path(temporary_), " (the temporary of ", quoted_path(target_),
           ") made no progress", " after ", written_, " bytes");
    }
    data += n;
    size -= static_cast<std::size_t>(n);
    written_ += static_cast<std::uint64_t>(n);
  }
}

/// Writes the file at `path` through a temporary: writer(AtomicFile&) writes the content (it may
/// throw anything; the exception passes through after the cleanup). See the header comment.
inline void write_file_atomically(const std::string& path,
                                  const std::function<void(AtomicFile&)>& writer) {
  if (path.empty()) fail("save: the path is empty");
  if (path.back() == '/') fail("save: ", quoted_path(path), " names a directory, not a file");

  // 1. A new temporary of our own (O_EXCL: never one another call is writing).
  std::string temporary;
  int fd = -1;
  for (int attempt = 0; fd < 0; ++attempt) {
    temporary = temporary_name_for(path);
    fd = ::open(temporary.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
    if (fd < 0 && !(errno == EEXIST && attempt < 100) && errno != EINTR) {
      const int code = errno;
      fail("save: cannot open a temporary file ", quoted_path(temporary), " for ",
           quoted_path(path), ": ", system_reason(code));
    }
  }
  // 2. Content, flushed to the disk, closed, renamed into place; any failure removes the temporary.
  try {
    AtomicFile file(path, temporary);
    file.fd_ = fd;
    writer(file);
    while (::fsync(fd) != 0) {
      if (errno == EINTR) continue;
      const int code = errno;
      fail("save: flushing ", quoted_path(temporary), " (the temporary of ", quoted_path(path),
           ") to the disk failed: ", system_reason(code));
    }
    file.fd_ = -1;
    if (::close(std::exchange(fd, -1)) != 0 && errno != EINTR) {  // EINTR: closed anyway (Linux)
      const int code = errno;
      fail("save: closing ", quoted_path(temporary), " (the temporary of ", quoted_path(path),
           ") failed: ", system_reason(code));
    }
    if (::rename(temporary.c_str(), path.c_str()) != 0) {
      const int code = errno;
      fail("save: cannot rename ", quoted_path(temporary), " to ", quoted_path(path), ": ",
           system_reason(code));
    }
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(temporary.c_str());
    throw;
  }
  // Before the directory's flush, which then makes the removals durable too.
  remove_stale_temporaries(path);

  // 3. The rename is durable only once the directory is flushed too.
  const std::string directory = directory_of(path);
  const int dir = ::open(directory.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  int code = 0;
  if (dir < 0) {
    code = errno;
  } else {
    while (::fsync(dir) != 0) {
      // EINVAL: this file system cannot flush a directory (it has nothing to flush then).
      if (errno == EINTR) continue;
      if (errno != EINVAL) code = errno;
      break;
    }
    ::close(dir);
  }
  if (code != 0) {
    fail("save: ", quoted_path(path), " was written, but flushing its directory ",
         quoted_path(directory),
         " failed, so the new file may not survive a crash: ", system_reason(code));
  }
}

#else  // _WIN32: no fsync; a failed write still leaves the old file (see the header comment).

inline void AtomicFile::write(const char* data, std::size_t size) {
  out_.write(data, static_cast<std::streamsize>(size));
  if (!out_) {
    fail("save: writing ", quoted_path(temporary_), " (the temporary of ", quoted_path(target_),
         ") failed after ", written_, " bytes");
  }
  written_ += size;
}

inline void write_file_atomically(const std::string& path,
                                  const std::function<void(AtomicFile&)>& writer) {
  if (path.empty()) fail("save: the path is empty");
  AtomicFile file(path, temporary_name_for(path));
  file.out_.open(file.temporary_, std::ios::binary | std::ios::trunc);
  if (!file.out_)
    fail("save: cannot open a temporary file ", quoted_path(file.temporary_), " for ",
         quoted_path(path), "");
  try {
    writer(file);
    file.out_.close();
    if (!file.out_) fail("save: writing ", quoted_path(file.temporary_), " failed");
    std::error_code error;
    std::filesystem::rename(file.temporary_, path, error);
    if (error) {
      fail("save: cannot rename ", quoted_path(file.temporary_), " to ", quoted_path(path), ": ",
           error.message());
    }
  } catch (...) {
    if (file.out_.is_open()) file.out_.close();
    std::remove(file.temporary_.c_str());
    throw;
  }
}

#endif

/// Writes `bytes` as the whole content of the file at `path` (see write_file_atomically above).
inline void write_file_atomically(const std::string& path, const std::string& bytes) {
  write_file_atomically(path, [&](AtomicFile& file) { file.write(bytes); });
}

}  // namespace protomem::detail
