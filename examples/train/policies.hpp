// Command-line policy choice for the protomem head: the generator and the queue are template
// parameters of PrototypeMemory, so each choice is one instantiation; the margin (CombinedMargin)
// and the refresh (Momentum, a = 0 is Replace) are runtime parameters; the Mining policy (none or
// DoppelgangerMining, for protomem-mining) is a third template choice. Only examples/train includes
// this (twelve instantiations of the CPU backend are slow to compile).
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "trainer.hpp"

namespace train {

template <class Generator, class Queue>
std::unique_ptr<Head> make_protomem_head_for(const Options& o) {
  if (o.mining)
    return std::make_unique<ProtomemHead<Generator, Queue, protomem::DoppelgangerMining>>(o);
  return std::make_unique<ProtomemHead<Generator, Queue>>(o);
}

template <class Generator>
std::unique_ptr<Head> make_protomem_head_with(const Options& o) {
  if (o.queue == "lrw") return make_protomem_head_for<Generator, protomem::LeastRecentlyWritten>(o);
  if (o.queue == "fifo") return make_protomem_head_for<Generator, protomem::FirstInFirstOut>(o);
  throw std::invalid_argument("--queue must be lrw or fifo, not '" + o.queue + "'");
}

inline std::unique_ptr<Head> make_protomem_head(const Options& o) {
  if (o.generator == "mean") return make_protomem_head_with<protomem::ExemplarMean>(o);
  if (o.generator == "detached") return make_protomem_head_with<protomem::DetachedExemplarMean>(o);
  if (o.generator == "leave-one-out") return make_protomem_head_with<protomem::LeaveOneOut>(o);
  throw std::invalid_argument("--generator must be mean, detached or leave-one-out, not '" +
                              o.generator + "'");
}

}  // namespace train
