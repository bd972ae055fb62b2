// Runs a test case in a forked child process with a wall-clock limit, and reports what it threw,
// how long it took and how much memory it added (the child's peak RSS, ru_maxrss, less the RSS at
// the fork): a case that would allocate gigabytes, read forever or block on a FIFO then fails its
// test instead of taking the test process down or hanging it.
//
//   const ChildRun run = run_in_child([&] { decode(...); });
//   CHECK(run.outcome starts with "Error: "); CHECK(run.added_rss_mb() < 100);
#pragma once

#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <exception>
#include <functional>
#include <new>
#include <protomem/error.hpp>
#include <string>

// AddressSanitizer's shadow memory and quarantine make RSS figures meaningless: the memory bound
// is asserted only without it (the outcome and the time always).
#if defined(__SANITIZE_ADDRESS__)
#define PROTOMEM_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PROTOMEM_TEST_ASAN 1
#endif
#endif
#ifndef PROTOMEM_TEST_ASAN
#define PROTOMEM_TEST_ASAN 0
#endif

namespace protomem_test {

struct ChildRun {
  std::string outcome;  ///< "Error: <what>", "bad_alloc", "exception: <what>", "ok", "timeout"...
  double seconds = 0;
  long max_rss_kb = 0;   ///< the child's peak resident set
  long fork_rss_kb = 0;  ///< the parent's resident set when it forked (the child starts with it)
  bool is_error() const { return outcome.rfind("Error: ", 0) == 0; }
  double added_rss_mb() const { return double(max_rss_kb - fork_rss_kb) / 1024.0; }
};

inline long resident_kb() {
  long pages = 0, resident = 0;
  if (std::FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident) != 2) resident = 0;
    std::fclose(f);
  }
  return resident * (::sysconf(_SC_PAGESIZE) / 1024);
}

/// Runs `f` in a child; kills it after `timeout_s`. Without ASan the child's address space is
/// capped at 4 GB, so that a case which allocates without bound ends in std::bad_alloc quickly.
inline ChildRun run_in_child(const std::function<void()>& f, double timeout_s = 10) {
  ChildRun run;
  int fds[2];
  if (::pipe(fds) != 0) return {"pipe failed", 0, 0, 0};
  std::fflush(nullptr);
  run.fork_rss_kb = resident_kb();
  const auto start = std::chrono::steady_clock::now();
  const pid_t pid = ::fork();
  if (pid < 0) return {"fork failed", 0, 0, 0};
  if (pid == 0) {
    ::close(fds[0]);
    if (!PROTOMEM_TEST_ASAN) {
      const rlim_t cap = rlim_t{4} << 30;
      const rlimit limit{cap, cap};
      ::setrlimit(RLIMIT_AS, &limit);
    }
    std::string outcome = "ok";
    try {
      f();
    } catch (const protomem::Error& e) {
      outcome = std::string("Error: ") + e.what();
    } catch (const std::bad_alloc&) {
      outcome = "bad_alloc";
    } catch (const std::exception& e) {
      outcome = std::string("exception: ") + e.what();
    } catch (...) {
      outcome = "unknown exception";
    }
    const ::ssize_t n = ::write(fds[1], outcome.data(), outcome.size());
    ::_exit(n == static_cast<::ssize_t>(outcome.size()) ? 0 : 1);
  }
  ::close(fds[1]);
  std::string outcome;
  bool timed_out = false;
  for (;;) {
    const double left =
        timeout_s - std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    pollfd p{fds[0], POLLIN, 0};
    if (left <= 0 || ::poll(&p, 1, static_cast<int>(left * 1000) + 1) == 0) {
      timed_out = true;
      ::kill(pid, SIGKILL);
      break;
    }
    char buffer[512];
    const ::ssize_t n = ::read(fds[0], buffer, sizeof buffer);
    if (n <= 0) break;
    outcome.append(buffer, static_cast<std::size_t>(n));
  }
  ::close(fds[0]);
  int status = 0;
  rusage usage{};
  ::wait4(pid, &status, 0, &usage);
  run.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  run.max_rss_kb = usage.ru_maxrss;
  if (timed_out) {
    run.outcome = "timeout";
  } else if (WIFSIGNALED(status)) {
    run.outcome = "killed by signal " + std::to_string(WTERMSIG(status));
  } else {
    run.outcome = outcome.empty() ? "no outcome" : outcome;
  }
  return run;
}

}  // namespace protomem_test
