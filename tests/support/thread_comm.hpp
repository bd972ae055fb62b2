// Test support: W ranks as W threads of one process, joined by an in-process Communicator.
//
// ThreadComm meets protomem's Communicator concept (protomem/comm/communicator.hpp) with shared
// memory: every collective posts its arguments, meets the other ranks at a barrier, reads what
// they posted and meets them again. It is stricter than a real engine where that helps a test:
// every rank must make the same collective (kind, value type, op, count and counts), else every
// rank throws; a barrier that waits more than `timeout` throws instead of hanging, and then every
// later barrier throws too, so a test that goes wrong fails rather than deadlocks.
// run_ranks(W, body) runs body(comm) on W threads and returns each rank's error message.
#pragma once

#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <cstring>
#include <exception>
#include <mutex>
#include <protomem/comm/communicator.hpp>
#include <stdexcept>
#include <string>
#include <thread>
#include <typeinfo>
#include <vector>

namespace protomem::test {

class ThreadHub {
 public:
  explicit ThreadHub(int world_size, std::chrono::seconds timeout = std::chrono::seconds(60))
      : world_size_(world_size), timeout_(timeout), posts_(static_cast<std::size_t>(world_size)) {}

  int world_size() const { return world_size_; }

  // What a rank posts for one collective.
  struct Post {
    const void* data = nullptr;
    std::int64_t count = 0;
    std::string signature;  // kind, type, op, count (all_reduce) or counts (all_gather)
  };

  void post(int rank, Post p) { posts_[static_cast<std::size_t>(rank)] = std::move(p); }
  const Post& posted(int rank) const { return posts_[static_cast<std::size_t>(rank)]; }

  /// Waits until every rank has arrived; throws (and poisons the hub) after the timeout.
  void barrier() {
    std::unique_lock<std::mutex> lock(mutex_);
    if (poisoned_) throw std::runtime_error("thread hub: poisoned by an earlier failure");
    const std::uint64_t generation = generation_;
    if (++arrived_ == world_size_) {
      arrived_ = 0;
      ++generation_;
      cv_.notify_all();
      return;
    }
    if (!cv_.wait_for(lock, timeout_, [&] { return generation_ != generation || poisoned_; })) {
      poisoned_ = true;
      cv_.notify_all();
      throw std::runtime_error("thread hub: a barrier timed out (a rank is missing)");
    }
    // The barrier completed (even if a rank poisoned the hub afterwards): carry on.
    if (generation_ != generation) return;
    throw std::runtime_error("thread hub: poisoned by an earlier failure");
  }

  void poison() {
    std::lock_guard<std::mutex> lock(mutex_);
    poisoned_ = true;
    cv_.notify_all();
  }

 private:
  int world_size_;
  std::chrono::seconds timeout_;
  std::vector<Post> posts_;
  std::mutex mutex_;
  std::condition_variable cv_;
  int arrived_ = 0;
  std::uint64_t generation_ = 0;
  bool poisoned_ = false;
};

class ThreadComm {
 public:
  ThreadComm(ThreadHub& hub, int rank) : hub_(&hub), rank_(rank) {}

  int rank() const { return rank_; }
  int world_size() const { return hub_->world_size(); }
  CommTraffic traffic() const { return counter_.totals; }

  template <class T>
  void all_gather(const T* mine, std::int64_t count, T* all, const std::int64_t* counts) {
    const int W = world_size();
    detail::check_all_gather_args("thread", mine, count, all, counts, rank_, W);
    std::string signature = std::string("all_gather ") + typeid(T).name();
    for (int r = 0; r < W; ++r) signature += " " + std::to_string(counts[r]);
    hub_->post(rank_, {mine, count, signature});
    hub_->barrier();
    agree(signature);
    std::int64_t offset = 0;
    for (int r = 0; r < W; ++r) {
      const ThreadHub::Post& p = hub_->posted(r);
      if (counts[r] > 0) std::memcpy(all + offset, p.data, sizeof(T) * std::size_t(counts[r]));
      offset += counts[r];
    }
    hub_->barrier();  // nobody reuses its buffer before everyone has read it
    counter_.all_gather(sizeof(T), counts, rank_, W);
  }

  template <class T>
  void all_reduce(T* data, std::int64_t count, ReduceOp op) {
    static_assert(detail::is_comm_value_v<T>);
    const int W = world_size();
    const std::string signature = std::string("all_reduce ") + typeid(T).name() +
                                  (op == ReduceOp::sum ? " sum " : " max ") + std::to_string(count);
    hub_->post(rank_, {data, count, signature});
    hub_->barrier();
    agree(signature);
    // Every rank reduces in rank order, so all get bit-identical results.
    std::vector<T> result(static_cast<std::size_t>(count));
    for (std::int64_t i = 0; i < count; ++i) {
      T acc = static_cast<const T*>(hub_->posted(0).data)[i];
      for (int r = 1; r < W; ++r) {
        const T v = static_cast<const T*>(hub_->posted(r).data)[i];
        acc = op == ReduceOp::sum ? static_cast<T>(acc + v) : (v > acc ? v : acc);
      }
      result[static_cast<std::size_t>(i)] = acc;
    }
    hub_->barrier();  // everyone has read every input before anyone overwrites its own
    std::copy(result.begin(), result.end(), data);
    counter_.all_reduce(sizeof(T), count, W);
  }

 private:
  void agree(const std::string& signature) {
    for (int r = 0; r < world_size(); ++r) {
      if (hub_->posted(r).signature != signature) {
        // Everyone sees the same mismatch (the posts are stable until the next barrier).
        throw std::runtime_error("thread hub: rank " + std::to_string(rank_) + " made '" +
                                 signature + "' but rank " + std::to_string(r) + " made '" +
                                 hub_->posted(r).signature + "'");
      }
    }
  }

  ThreadHub* hub_;
  int rank_;
  detail::TrafficCounter counter_;
};

static_assert(check_communicator<ThreadComm>());

/// Runs body(ThreadComm&) on `world_size` threads; returns each rank's exception message ("" for
/// a rank that returned normally). A rank that throws poisons the hub, so no other rank hangs.
template <class Body>
std::vector<std::string> run_ranks(int world_size, Body body) {
  ThreadHub hub(world_size);
  std::vector<std::string> errors(static_cast<std::size_t>(world_size));
  std::vector<std::thread> threads;
  for (int r = 0; r < world_size; ++r) {
    threads.emplace_back([&, r] {
      ThreadComm comm(hub, r);
      try {
        body(comm);
      } catch (const std::exception& e) {
        errors[static_cast<std::size_t>(r)] = e.what();
        if (errors[static_cast<std::size_t>(r)].empty()) errors[static_cast<std::size_t>(r)] = "?";
        hub.poison();
      }
    });
  }
  for (std::thread& t : threads) t.join();
  return errors;
}

}  // namespace protomem::test
