// Reliability (docs/reliability.md).
// Crash-safe files (protomem/detail/atomic_file.hpp, PrototypeMemory::save(path),
// BatchSampler::save(path)): a save that fails at any byte, for want of space or permission, or
// because the target cannot be replaced, throws, leaves the old file loadable and identical, and
// leaves no temporary behind; concurrent saves to one path never share a temporary.
// Checks fuzzing showed missing (tests/fuzz/regressions holds the inputs): a margin scale that is
// 0 in float or overflows it, and a stored prototype that is not of unit norm.
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <protomem/data/dataset_index.hpp>
#include <protomem/detail/atomic_file.hpp>
#include <protomem/memory.hpp>
#include <protomem/data/sampler.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "support/checkpoint.hpp"

namespace {

namespace fs = std::filesystem;
using Catch::Matchers::Contains;
using checkpoint_support::bytes_of;
using protomem::index_t;
using protomem::label_t;

using Memory = protomem::PrototypeMemory<float>;
constexpr index_t kDim = 3;

// A memory of 4 slots after `steps` steps of 2 classes x 2 exemplars (labels depend on `seed`).
Memory make_memory(int steps, int seed) {
  Memory memory({/*capacity=*/4, kDim}, protomem::CosFace(16.0, 0.2));
  for (int s = 0; s < steps; ++s) {
    const label_t a = (seed * 7 + s * 3) % 9, b = a + 10;
    const std::vector<label_t> labels = {a, a, b, b};
    std::vector<float> e(4 * kDim), g(4 * kDim);
    for (std::size_t i = 0; i < e.size(); ++i) {
      e[i] = static_cast<float>((i * 5 + static_cast<std::size_t>(seed + s)) % 7) - 2.5f;
    }
    memory.step(protomem::matrix_view<const float>(e.data(), 4, kDim),
                protomem::label_view(labels.data(), 4),
                protomem::matrix_view<float>(g.data(), 4, kDim));
  }
  return memory;
}

std::string read_file(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_plain(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::vector<std::string> entries(const fs::path& directory) {
  std::vector<std::string> names;
  for (const auto& entry : fs::directory_iterator(directory)) {
    names.push_back(entry.path().filename().string());
  }
  std::sort(names.begin(), names.end());
  return names;
}

// A fresh, empty directory for one test case, removed (with what is left in it) at its end.
struct ScratchDirectory {
  fs::path path;
  explicit ScratchDirectory(const std::string& name)
      : path(fs::temp_directory_path() /
             ("protomem_" + name + "_" + std::to_string(static_cast<long long>(::getpid())))) {
    fs::remove_all(path);
    fs::create_directories(path);
  }
  ~ScratchDirectory() {
    std::error_code ignored;
    fs::permissions(path, fs::perms::owner_all, fs::perm_options::add, ignored);
    fs::remove_all(path, ignored);
  }
};

// Limits the size of files this process may write (RLIMIT_FSIZE) to `bytes` while it lives: a
// write past the limit fails with EFBIG, as one on a full disk fails with ENOSPC, whoever runs it
// (root included). SIGXFSZ, which the kernel sends with it, is ignored meanwhile.
struct FileSizeLimit {
  rlimit saved{};
  void (*saved_handler)(int);
  explicit FileSizeLimit(std::uint64_t bytes) {
    REQUIRE(::getrlimit(RLIMIT_FSIZE, &saved) == 0);
    saved_handler = std::signal(SIGXFSZ, SIG_IGN);
    rlimit limited = saved;
    limited.rlim_cur = static_cast<rlim_t>(bytes);
    REQUIRE(::setrlimit(RLIMIT_FSIZE, &limited) == 0);
  }
  ~FileSizeLimit() {
    ::setrlimit(RLIMIT_FSIZE, &saved);
    std::signal(SIGXFSZ, saved_handler);
  }
};

}  // namespace

TEST_CASE("a save that fails after any number of bytes leaves the old file and no temporary",
          "[atomic_file]") {
  ScratchDirectory scratch("save_interrupted");
  const fs::path path = scratch.path / "memory.ckpt";
  const Memory old_memory = make_memory(3, 1);
  const std::string old_bytes = bytes_of(old_memory);
  old_memory.save(path.string());
  const Memory memory = make_memory(5, 2);
  const std::string new_bytes = bytes_of(memory);
  REQUIRE(new_bytes != old_bytes);
  REQUIRE(new_bytes.size() < 1000);  // small, so that every byte can be tried

  auto check_old_file_intact = [&] {
    CHECK(read_file(path) == old_bytes);
    Memory loaded = make_memory(0, 0);
    loaded.load(path.string());
    CHECK(bytes_of(loaded) == old_bytes);
    CHECK(entries(scratch.path) == std::vector<std::string>{"memory.ckpt"});  // no temporary
  };

  SECTION("a writer that throws after n bytes") {
    for (std::size_t n = 0; n < new_bytes.size(); ++n) {
      INFO("the writer fails after " << n << " bytes");
      CHECK_THROWS_WITH(
          protomem::detail::write_file_atomically(path.string(),
                                                  [&](protomem::detail::AtomicFile& file) {
                                                    file.write(new_bytes.data(), n);
                                                    throw std::runtime_error("simulated failure");
                                                  }),
          "simulated failure");
      check_old_file_intact();
    }
  }
  SECTION("the file system refuses writes past n bytes (EFBIG, as ENOSPC on a full disk)") {
    for (std::size_t n = 0; n < new_bytes.size(); ++n) {
      INFO("writes past byte " << n << " fail");
      {
        FileSizeLimit limit(n);
        CHECK_THROWS_WITH(memory.save(path.string()),
                          Contains("memory.ckpt") &&
                              Contains("failed after " + std::to_string(n) + " bytes") &&
                              Contains("File too large"));
      }
      check_old_file_intact();
      CHECK(bytes_of(memory) == new_bytes);  // the memory is as it was
    }
    FileSizeLimit limit(new_bytes.size());  // exactly enough
    memory.save(path.string());
    CHECK(read_file(path) == new_bytes);
    CHECK(entries(scratch.path) == std::vector<std::string>{"memory.ckpt"});
  }
}

TEST_CASE("a save where the file cannot be created or replaced throws and leaves the old file",
          "[atomic_file]") {
  ScratchDirectory scratch("save_refused");
  const Memory memory = make_memory(4, 3);
  const std::string bytes = bytes_of(memory);

  SECTION("the directory does not exist") {
    const std::string path = (scratch.path / "missing" / "memory.ckpt").string();
    CHECK_THROWS_WITH(memory.save(path), Contains("cannot open a temporary file") &&
                                             Contains(path) &&
                                             Contains("No such file or directory"));
    CHECK(entries(scratch.path).empty());
  }
  SECTION("the target is a directory: the rename is refused") {
    const fs::path path = scratch.path / "memory.ckpt";
    fs::create_directories(path / "inside");
    CHECK_THROWS_WITH(memory.save(path.string()),
                      Contains("cannot rename") && Contains("Is a directory"));
    CHECK(fs::is_directory(path / "inside"));
    CHECK(entries(scratch.path) == std::vector<std::string>{"memory.ckpt"});  // no temporary
  }
  SECTION("a directory no file can be created in, even by root (/proc/self)") {
    CHECK_THROWS_WITH(memory.save("/proc/self/protomem-memory.ckpt"),
                      Contains("cannot open a temporary file"));
  }
  SECTION("a directory without write permission") {
    const fs::path path = scratch.path / "memory.ckpt";
    const Memory old_memory = make_memory(2, 5);
    old_memory.save(path.string());
    fs::permissions(scratch.path, fs::perms::owner_read | fs::perms::owner_exec);
    if (::access(scratch.path.c_str(), W_OK) == 0) {
      // Root (as in CI containers) may write anyway; the two sections above and the EFBIG test
      // cover the failure paths there.
      WARN("permissions do not stop this user (root?): the read-only directory case is skipped");
    } else {
      CHECK_THROWS_WITH(memory.save(path.string()),
                        Contains("cannot open a temporary file") && Contains("Permission denied"));
      CHECK(read_file(path) == bytes_of(old_memory));
      CHECK(entries(scratch.path) == std::vector<std::string>{"memory.ckpt"});
    }
    fs::permissions(scratch.path, fs::perms::owner_all, fs::perm_options::add);
  }
}

TEST_CASE("two saves to one path do not share a temporary", "[atomic_file]") {
  ScratchDirectory scratch("save_concurrent");
  const fs::path path = scratch.path / "memory.ckpt";
  const Memory first = make_memory(3, 7), second = make_memory(6, 8);
  const std::string a = bytes_of(first), b = bytes_of(second);
  REQUIRE(a != b);

  SECTION("a save that starts and ends while another is half written") {
    // With one fixed temporary name (the old `path + ".tmp"`), the inner save would truncate the
    // outer one's temporary and rename it away; the outer rename would then fail.
    std::string outer_temporary, inner_temporary;
    protomem::detail::write_file_atomically(
        path.string(), [&](protomem::detail::AtomicFile& outer) {
          outer_temporary = outer.temporary_path();
          outer.write(a.data(), a.size() / 2);
          protomem::detail::write_file_atomically(path.string(),
                                                  [&](protomem::detail::AtomicFile& inner) {
                                                    inner_temporary = inner.temporary_path();
                                                    inner.write(b);
                                                  });
          CHECK(read_file(path) == b);
          outer.write(a.data() + a.size() / 2, a.size() - a.size() / 2);
        });
    CHECK(outer_temporary != inner_temporary);
    CHECK(read_file(path) == a);  // the last rename wins, whole
    CHECK(entries(scratch.path) == std::vector<std::string>{"memory.ckpt"});
  }
  SECTION("two threads saving to one path") {
    auto saver = [&](const Memory& memory) {
      for (int k = 0; k < 25; ++k) memory.save(path.string());
    };
    std::thread one(saver, std::cref(first)), two(saver, std::cref(second));
    one.join();
    two.join();
    const std::string saved = read_file(path);
    CHECK((saved == a || saved == b));
    CHECK(entries(scratch.path) == std::vector<std::string>{"memory.ckpt"});
  }
}

TEST_CASE("a saved file is created as std::ofstream would create it (mode 0666 minus the umask)",
          "[atomic_file]") {
  ScratchDirectory scratch("save_mode");
  const fs::path path = scratch.path / "memory.ckpt";
  const ::mode_t mask = ::umask(022);
  make_memory(1, 1).save(path.string());
  ::umask(mask);
  struct ::stat info {};
  REQUIRE(::stat(path.c_str(), &info) == 0);
  CHECK((info.st_mode & 0777) == 0644);
}

TEST_CASE("the sampler state goes to a file crash-safely and loads back", "[atomic_file]") {
  ScratchDirectory scratch("sampler_state");
  const fs::path path = scratch.path / "sampler.state";
  std::vector<label_t> labels;
  for (label_t i = 0; i < 40; ++i) labels.push_back(i % 8);
  const auto index = protomem::DatasetIndex::from_labels(labels);
  protomem::IterateAndSample sampler(index, {/*C=*/3, /*K=*/2, /*seed=*/5});
  for (int k = 0; k < 4; ++k) sampler.next();
  sampler.save(path.string());
  std::ostringstream old_state;
  sampler.save(old_state);
  CHECK(read_file(path) == old_state.str());

  protomem::IterateAndSample resumed(index, {3, 2, /*seed=*/0});
  resumed.load(path.string());
  CHECK(resumed.position() == 4);
  CHECK(resumed.next().samples == sampler.next().samples);

  // A failed save (writes past byte n refused) leaves the old state file.
  for (std::size_t n : {std::size_t{0}, std::size_t{1}, std::size_t{40}}) {
    {
      FileSizeLimit limit(n);
      CHECK_THROWS_WITH(sampler.save(path.string()), Contains("File too large"));
    }
    CHECK(read_file(path) == old_state.str());
    CHECK(entries(scratch.path) == std::vector<std::string>{"sampler.state"});
  }

  // A state file must hold exactly one state.
  write_plain(path, old_state.str() + "x");
  protomem::IterateAndSample other(index, {3, 2, 9});
  CHECK_THROWS_WITH(other.load(path.string()), Contains("unexpected bytes"));
  CHECK(other.position() == 0);
  CHECK_THROWS_WITH(other.load((scratch.path / "none").string()), Contains("cannot open"));
}

TEST_CASE("a margin scale outside [1e-3, 1e4] is rejected (fuzzing found 1e-302 loading)",
          "[fuzz]") {
  CHECK_NOTHROW(protomem::CosFace(1e-3, 0.2));
  CHECK_NOTHROW(protomem::ArcFace(1e4, 0.5));
  CHECK_THROWS_WITH(protomem::CosFace(1e-302), Contains("scale s = 1e-302"));
  CHECK_THROWS_WITH(protomem::ArcFace(1e159), Contains("scale s = 1e+159"));
  CHECK_THROWS_WITH(protomem::NoMargin(2e4), Contains("within [0.001, 10000]"));
}

TEST_CASE("a checkpoint whose prototype is not of unit norm is rejected (found by fuzzing)",
          "[fuzz]") {
  const Memory source = make_memory(3, 4);
  const std::string good = bytes_of(source);
  // The first record's first prototype value, after its label, slot and last_written.
  const std::size_t value = checkpoint_support::records_offset(good) + 8 + 24;
  for (float v : {2.0f, 1e38f, 0.0f}) {
    INFO("the first value set to " << v);
    std::string bad = good;
    std::memcpy(&bad[value], &v, sizeof v);
    bad = checkpoint_support::with_valid_crc(bad);
    Memory target = make_memory(2, 9);
    const std::string before = bytes_of(target);
    std::istringstream in(bad);
    CHECK_THROWS_WITH(target.load(in),
                      Contains("has norm") && Contains("a stored prototype is a unit vector"));
    CHECK(bytes_of(target) == before);
  }
  // Rounding of narrow storage stays well inside the tolerance: a value changed by 2^-8 relative.
  std::string rounded = good;
  float first;
  std::memcpy(&first, &rounded[value], sizeof first);
  first *= 1.0f + 1.0f / 256;
  std::memcpy(&rounded[value], &first, sizeof first);
  Memory target = make_memory(0, 0);
  std::istringstream in(checkpoint_support::with_valid_crc(rounded));
  CHECK_NOTHROW(target.load(in));
}
