// The Communicator concept over c10d (protomem/comm/c10d.hpp) with Gloo on loopback: W processes
// rendezvous over a FileStore in a fresh temporary directory.
//   test_c10d --world W          launcher: starts W workers (this program again), waits for all
//                                of them (killing them after a deadline) and fails unless every
//                                worker passed;
//   test_c10d --worker R W DIR   worker R of W: joins the process group and runs the Catch2
//                                cases below with it.
// CTest registers one launcher per W (tests/comm/CMakeLists.txt), each with a TIMEOUT.
#include <signal.h>
#include <spawn.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <memory>
#include <protomem/comm/c10d.hpp>
#include <protomem/detail/shard_plan.hpp>
#include <string>
#include <thread>
#include <torch/csrc/distributed/c10d/FileStore.hpp>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <vector>

#include "support/comm_cases.hpp"
#include "support/shard_model.hpp"
#include "support/shard_sim.hpp"
#include "support/sharded_cases.hpp"

// After LibTorch: glog (under c10) defines CHECK too; Catch2's must be the one in force.
#define CATCH_CONFIG_RUNNER
#include <catch2/catch.hpp>

extern char** environ;

namespace {

protomem::C10dCommunicator* the_comm = nullptr;  // the worker's, for the test cases
std::string the_dir;                              // the launch's temporary directory

}  // namespace

// The c10d adapter pads uneven all-gathers and counts what it exchanges (protomem/comm/c10d.hpp).
template <>
inline constexpr bool protomem::test::pads_gathers<protomem::C10dCommunicator> = true;

TEST_CASE("c10d collectives", "[c10d]") {
  protomem::test::Expect expect;
  protomem::test::check_collectives(*the_comm, expect);
  CHECK(expect.report() == "");
}

TEST_CASE("c10d: bad input on some ranks, every rank throws the same error", "[c10d]") {
  protomem::test::Expect expect;
  protomem::test::check_error_agreement(*the_comm, expect);
  CHECK(expect.report() == "");
}

TEST_CASE("c10d: sharded bookkeeping equals the single-process memory", "[c10d]") {
  constexpr protomem::index_t M = 37;
  protomem::C10dCommunicator& comm = *the_comm;
  protomem::detail::ShardBook book(M, comm.rank(), comm.world_size());
  protomem::test::LogicalModel model(M, true);
  protomem::test::BatchStream stream(99, M, 24);
  protomem::test::Expect expect;
  protomem::test::simulate_shards(comm, book, model, stream, 200, true, 10, expect);
  CHECK(expect.report() == "");
  CHECK(model.evictions > 50);
}

TEST_CASE("c10d: sharded step equals the single-process step on the concatenated batch",
          "[c10d][sharded]") {
  protomem::test::Expect expect;
  protomem::test::check_sharded_matches_single<double, protomem::LeastRecentlyWritten>(
      *the_comm, 50, 1e-10, expect);
  protomem::test::check_sharded_matches_single<float, protomem::LeastRecentlyWritten>(
      *the_comm, 50, 1e-5, expect);
  CHECK(expect.report() == "");
}

TEST_CASE("c10d: bad input on one rank, every rank throws and nothing changes",
          "[c10d][sharded]") {
  protomem::test::Expect expect;
  protomem::test::check_sharded_bad_input(*the_comm, the_comm->world_size() - 1, expect);
  CHECK(expect.report() == "");
}

TEST_CASE("c10d: checkpoint files between W ranks and one process", "[c10d][sharded]") {
  protomem::test::Expect expect;
  protomem::test::check_sharded_checkpoint_file(*the_comm, the_dir + "/memory.ckpt", expect);
  CHECK(expect.report() == "");
}

namespace {

int worker(int rank, int world, const std::string& dir, int argc, char** argv) {
  auto store = c10::make_intrusive<c10d::FileStore>(dir + "/store", world);
  auto options = c10d::ProcessGroupGloo::Options::create(std::chrono::seconds(60));
  options->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname("127.0.0.1"));
  auto group = c10::make_intrusive<c10d::ProcessGroupGloo>(store, rank, world, options);
  protomem::C10dCommunicator comm(group);
  the_comm = &comm;
  the_dir = dir;
  Catch::Session session;
  session.configData().name =
      "test_c10d rank " + std::to_string(rank) + " of " + std::to_string(world);
  int failed = session.applyCommandLine(argc, argv);
  if (failed == 0) failed = session.run();
  return failed == 0 ? 0 : 1;
}

int launch(int world) {
  char pattern[] = "/tmp/protomem_c10d_XXXXXX";
  if (mkdtemp(pattern) == nullptr) {
    std::perror("mkdtemp");
    return 1;
  }
  const std::string dir = pattern;
  const std::string self = std::filesystem::read_symlink("/proc/self/exe").string();
  std::vector<pid_t> pids;
  for (int r = 0; r < world; ++r) {
    std::vector<std::string> args{self, "--worker", std::to_string(r), std::to_string(world), dir};
    std::vector<char*> argv;
    for (std::string& a : args) argv.push_back(a.data());
    argv.push_back(nullptr);
    pid_t pid = 0;
    if (posix_spawn(&pid, self.c_str(), nullptr, nullptr, argv.data(), environ) != 0) {
      std::perror("posix_spawn");
      for (pid_t p : pids) kill(p, SIGKILL);
      return 1;
    }
    pids.push_back(pid);
  }
  // Wait for every worker; past the deadline, kill the rest (a hang is a failure, not a wait).
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(240);
  int failures = 0;
  std::vector<bool> done(pids.size(), false);
  for (std::size_t finished = 0; finished < pids.size();) {
    for (std::size_t r = 0; r < pids.size(); ++r) {
      if (done[r]) continue;
      int status = 0;
      if (waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        done[r] = true;
        ++finished;
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
          std::fprintf(stderr, "test_c10d: worker %zu of %d failed (status %d)\n", r, world,
                       status);
          ++failures;
        }
      }
    }
    if (finished < pids.size() && std::chrono::steady_clock::now() > deadline) {
      std::fprintf(stderr, "test_c10d: workers still running after 240 s: killed\n");
      for (std::size_t r = 0; r < pids.size(); ++r) {
        if (!done[r]) kill(pids[r], SIGKILL), waitpid(pids[r], nullptr, 0), ++failures;
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::filesystem::remove_all(dir);
  std::printf("test_c10d: %d worker(s), %d failed\n", world, failures);
  return failures == 0 ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc >= 5 && std::string(argv[1]) == "--worker") {
    // Arguments after DIR go to Catch2 (DIR stands in for the program name).
    return worker(std::atoi(argv[2]), std::atoi(argv[3]), argv[4], argc - 4, argv + 4);
  }
  if (argc == 3 && std::string(argv[1]) == "--world") return launch(std::atoi(argv[2]));
  std::fprintf(stderr, "usage: %s --world W | --worker RANK W DIR\n", argv[0]);
  return 2;
}
