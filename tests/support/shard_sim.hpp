// Test support: one rank's part of a simulated sharded memory (bookkeeping only), checked step by
// step against the single-process LogicalModel that every rank runs on its own. Runs over any
// Communicator: ThreadComm ranks in tests/test_shard_plan.cpp, MPI ranks in tests/comm/.
// Failures go to an Expect (comm_cases.hpp); a mismatch of the logical memory is seen by every
// rank alike (records and model are replicated), so all ranks stop together.
#pragma once

#include <cstdint>
#include <protomem/comm/communicator.hpp>
#include <protomem/detail/shard_plan.hpp>
#include <string>
#include <vector>

#include "comm_cases.hpp"
#include "shard_model.hpp"

namespace protomem::test {

/// Compares the gathered logical memory with the model; true when equal.
template <class Comm>
bool same_logical_memory(const detail::ShardBook& book, const LogicalModel& model, Comm& comm,
                         Expect& expect) {
  const std::vector<detail::ShardRecord> records = detail::gather_records(book, comm);
  bool same = records.size() == model.order.size();
  for (std::size_t i = 0; same && i < records.size(); ++i) {
    const ModelEntry& m = model.order[i];
    same = records[i].label == m.label && records[i].last_written == m.written &&
           records[i].slot == m.slot;
  }
  if (!same) {
    std::string text = "logical memory after step " + std::to_string(model.steps) + ":\n  shards:";
    for (const auto& r : records) {
      text += " (" + std::to_string(r.label) + "," + std::to_string(r.last_written) + ",s" +
              std::to_string(r.slot) + ")";
    }
    text += "\n  model: ";
    for (const auto& m : model.order) {
      text += " (" + std::to_string(m.label) + "," + std::to_string(m.written) + ",s" +
              std::to_string(m.slot) + ")";
    }
    expect(false, text);
  }
  expect(book.used() == static_cast<index_t>(model.order.size()), "used() == model size");
  expect(book.steps() == model.steps, "steps() == model steps");
  expect(book.refreshes() == model.refreshes && book.insertions() == model.insertions &&
             book.evictions() == model.evictions,
         "counters equal the model's");
  return same;
}

/// Runs `steps` steps of `stream` on this rank's `book` and the replicated `model`, comparing the
/// logical memory every `check_every` steps and the plan's traffic every step. Returns false when
/// the logical memory differed (then every rank stopped at the same step).
template <class Comm>
bool simulate_shards(Comm& comm, detail::ShardBook& book, LogicalModel& model, BatchStream& stream,
                     int steps, bool refresh_moves_to_back, int check_every, Expect& expect) {
  const int rank = comm.rank(), W = comm.world_size();
  for (int t = 0; t < steps; ++t) {
    const std::vector<label_t> global = stream.next_batch();
    const std::vector<std::vector<label_t>> pieces = stream.split(global, W);
    const std::vector<label_t>& mine = pieces[static_cast<std::size_t>(rank)];
    expect.context = "rank " + std::to_string(rank) + " of " + std::to_string(W) + ", step " +
                     std::to_string(model.steps + 1);

    // The global batch's labels, as every rank will have them: all-gathered.
    const std::vector<label_t> labels =
        all_gather_varying(comm, mine.data(), static_cast<std::int64_t>(mine.size()));
    expect(labels == global, "the all-gathered labels are the global batch");
    const std::vector<label_t> classes = BatchStream::classes_of(labels);

    const CommTraffic before = comm.traffic();
    const detail::ShardPlan plan = detail::plan_shard_writes(
        book, {classes.data(), static_cast<index_t>(classes.size())}, refresh_moves_to_back, comm);
    const CommTraffic used = comm.traffic() - before;
    detail::apply_shard_writes(book, plan, refresh_moves_to_back);

    const std::uint64_t evictions_before = model.evictions;
    model.step(classes);
    const std::uint64_t k_evict = model.evictions - evictions_before;
    expect(plan.evictions == static_cast<index_t>(k_evict), "the plan's evictions = the model's");
    // Traffic of the plan: the flags all-reduce (C int64 each way) and, when something is
    // evicted, the offers all-gather (2 k_evict int64 from each rank) - nothing else.
    const std::uint64_t C = classes.size();
    const std::uint64_t want_sent = W == 1 ? 0 : 8 * C + 16 * k_evict;
    const std::uint64_t want_received = W == 1 ? 0 : 8 * C + 16 * k_evict * std::uint64_t(W - 1);
    expect(used.bytes_sent == want_sent && used.bytes_received == want_received &&
               used.collectives == (k_evict > 0 ? 2u : 1u),
           "plan traffic: sent " + std::to_string(used.bytes_sent) + " received " +
               std::to_string(used.bytes_received) + " in " + std::to_string(used.collectives) +
               " collectives; expected " + std::to_string(want_sent) + ", " +
               std::to_string(want_received));

    if ((t + 1) % check_every == 0 || t + 1 == steps) {
      if (!same_logical_memory(book, model, comm, expect)) return false;
    }
  }
  return true;
}

}  // namespace protomem::test
