// Command-line policy choice for the protomem head: the generator and the queue are template
// parameters of PrototypeMemory, so each choice is one instantiation; the margin (CombinedMargin)
// and the refresh (Momentum, a = 0 is Replace) are runtime parameters. Only examples/train includes
// this (six instantiations of the CPU backend are slow to compile).
#pragma once

#include <memory>
#include <stdexcept>
#include <string>

#include "trainer.hpp"

namespace train {

template <class Generator>
std::unique_ptr<Head> make_protomem_head_with(const Options& o) {
  if (o.queue == "lrw")
    return std::make_unique<ProtomemHead<Generator, protomem::LeastRecentlyWritten>>(o);
  if (o.queue == "fifo")
    return std::make_unique<ProtomemHead<Generator, protomem::FirstInFirstOut>>(o);
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
