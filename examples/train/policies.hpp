// Command-line policy choice for the protomem head: the generator and the queue are template
// parameters of PrototypeMemory, so each choice is one instantiation; the margin (CombinedMargin)
// and the refresh (Momentum, a = 0 is Replace) are runtime parameters; the Mining policy (none or
// DoppelgangerMining, for protomem-mining) is a third template choice. Only examples/train includes
// this (twelve instantiations of the CPU backend, twelve more of the sharded memory with
// --distributed, are slow to compile).
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "trainer.hpp"

namespace train {

// H<Generator, Queue, Mining> is ProtomemHead, or ShardedHead (distributed.hpp), constructed
// from (o, args...).
template <template <class, class, class> class H, class Generator, class Queue, class... Args>
std::unique_ptr<Head> make_head_for(const Options& o, Args&... args) {
  if (o.mining) {
    return std::make_unique<H<Generator, Queue, protomem::DoppelgangerMining>>(o, args...);
  }
  return std::make_unique<H<Generator, Queue, protomem::NoMining>>(o, args...);
}

template <template <class, class, class> class H, class Generator, class... Args>
std::unique_ptr<Head> make_head_with(const Options& o, Args&... args) {
  if (o.queue == "lrw") {
    return make_head_for<H, Generator, protomem::LeastRecentlyWritten>(o, args...);
  }
  if (o.queue == "fifo") return make_head_for<H, Generator, protomem::FirstInFirstOut>(o, args...);
  throw std::invalid_argument("--queue must be lrw or fifo, not '" + o.queue + "'");
}

/// The protomem head H with the policies `o` names.
template <template <class, class, class> class H, class... Args>
std::unique_ptr<Head> make_policy_head(const Options& o, Args&... args) {
  if (o.generator == "mean") return make_head_with<H, protomem::ExemplarMean>(o, args...);
  if (o.generator == "detached") {
    return make_head_with<H, protomem::DetachedExemplarMean>(o, args...);
  }
  if (o.generator == "leave-one-out") return make_head_with<H, protomem::LeaveOneOut>(o, args...);
  throw std::invalid_argument("--generator must be mean, detached or leave-one-out, not '" +
                              o.generator + "'");
}

/// The single-process head (ProtomemHead) with the policies `o` names.
inline std::unique_ptr<Head> make_protomem_head(const Options& o) {
  return make_policy_head<ProtomemHead>(o);
}

}  // namespace train
