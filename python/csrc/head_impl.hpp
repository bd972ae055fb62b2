// HeadImpl: AnyHead (head.hpp) over one protomem::torch::PrototypeHead<Scalar, Device>
// (protomem/torch.hpp), in one process or, given a C10dCommunicator, over a process group - the
// same class either way, so the package compiles one head per Scalar x Device. The autograd path
// is the adapter's own (HeadState, PrototypeLoss, head_forward): this file adds only what the
// Python layer reads and sets. Included by heads_*.cpp, one Scalar x Device each.
//
// The head over a process group: every call that touches the memory's contents is a collective (forward,
// clone, state, full_state, load_state, save, load, contents, prototype, contains), so every
// process of the group makes it; a process's share of the batch may be empty. Its state() is this
// process's shard (format version 3); save() writes it to protomem::shard_path(path, rank, W).
#pragma once

#include <algorithm>
#include <chrono>
#include <functional>
#include <protomem/torch.hpp>
#include <string>
#include <vector>
#include <sstream>
#include <type_traits>
#include <utility>

#include "head.hpp"

namespace protomem {
namespace python {

template <class Scalar>
LastStep last_step_of(const StepResult<Scalar>& r) {
  LastStep s;
  s.loss = static_cast<double>(r.loss);
  s.classes = r.classes;
  s.single_exemplar_classes = r.single_exemplar_classes;
  s.similar_k = r.similar_k;
  s.similar = r.similar;
  s.similar_cosines.assign(r.similar_cosines.begin(), r.similar_cosines.end());
  s.threads = r.threads;
  s.tile_columns = r.tile_columns;
  s.workspace_bytes = r.workspace_bytes;
  s.gemm = r.gemm;
  return s;
}

template <class Head>
class HeadImpl final : public AnyHead {
 public:
  using Memory = typename Head::Memory;
  using Scalar = typename Head::scalar_type;
  using Device = typename Head::device_type;
  /// Builds a head of `config` and `policies` (for clone(); captures the group when sharded).
  using Maker = std::function<Head(const Config&, const Policies&)>;

  HeadImpl(Maker make, const Config& config, const Policies& policies)
      : make_(std::move(make)),
        head_(make_(config, policies)),
        sharded_(head_.memory().communicator().given()) {
    head_.set_drop_warning(false);  // the Python layer warns (warnings.warn), once per module
  }

  at::Tensor forward(const at::Tensor& embeddings, const at::Tensor& labels) override {
    return head_.forward(embeddings, labels);
  }

  [[noreturn]] void fail_forward(const std::string& reason) override {
    if (sharded_) {
      head_.memory().fail_forward(reason);
    } else {
      const std::string prefix = "protomem: ";
      throw Error(reason.compare(0, prefix.size(), prefix) == 0 ? reason.substr(prefix.size())
                                                                : reason);
    }
  }
  double gradient_scale() const override { return head_.gradient_scale(); }
  void set_gradient_scale(double factor) override { head_.set_gradient_scale(factor); }
  std::uint64_t dropped_updates() const override { return head_.dropped_updates(); }

  double core_step(const at::Tensor& embeddings, const at::Tensor& labels, at::Tensor& gradient,
                   double* seconds) override {
    Memory& memory = head_.memory();
    if (memory.pending()) memory.discard();  // as the head does before a forward
    const index_t batch = embeddings.size(0), dim = embeddings.size(1);
    const index_t stride = batch > 0 ? embeddings.stride(0) : dim;
    const auto start = std::chrono::steady_clock::now();
    const Scalar loss =
        memory.step(matrix_view<const Scalar>(embeddings.data_ptr<Scalar>(), batch, dim, stride),
                    label_view(labels.data_ptr<std::int64_t>(), batch),
                    matrix_view<Scalar>(gradient.data_ptr<Scalar>(), batch, dim,
                                        batch > 0 ? gradient.stride(0) : dim));
    if (seconds) {
      *seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    }
    return static_cast<double>(loss);
  }

  std::unique_ptr<AnyHead> clone() const override {  // sharded: a collective
    auto copy = std::make_unique<HeadImpl>(make_, head_.memory().config(), policies());
    copy->load_state(state(), "clone");
    copy->set_gradient_scale(gradient_scale());
    return copy;
  }

  std::string state() const override {  // sharded: a collective, this rank's shard
    std::ostringstream out(std::ios::binary);
    if (sharded_) {
      head_.memory().save_shard(out);
    } else {
      head_.memory().save(out);
    }
    return std::move(out).str();
  }

  std::string full_state() const override {  // sharded: a collective that gathers the memory
    std::ostringstream out(std::ios::binary);
    head_.memory().save(out);
    return std::move(out).str();
  }

  void load_state(const std::string& bytes, const std::string& source) override {
    if (sharded_) {
      // Exactly one checkpoint or shard, nothing after it, the same kind on every process -
      // agreed on by every process before the load.
      bool shard = false;
      protomem::detail::collective_check(comm(), [&] {
        shard = is_shard(bytes);
        if (shard) {
          check_one_shard(bytes, source);
        } else {
          check_one(bytes, source);
        }
      });
      std::int64_t kinds[2] = {shard ? 1 : 0, shard ? 0 : 1};
      comm().all_reduce(kinds, 2, ReduceOp::max);
      protomem::detail::collective_check(comm(), [&] {
        if (kinds[0] != 0 && kinds[1] != 0) {
          protomem::detail::fail(source, " is ", shard ? "a shard" : "a whole checkpoint",
                                 " here but not on every process: every process loads a shard ",
                                 "of the same save, or all the same whole checkpoint");
        }
      });
      std::istringstream in(bytes, std::ios::binary);
      if (shard) {
        head_.memory().load_shard(in, source);
      } else {
        head_.memory().load(in, source);
      }
    } else {
      if (is_shard(bytes)) {
        protomem::detail::fail(source, " is one rank's shard of a sharded memory's state_dict; a "
                               "shard loads only into its own rank at the same world size. To "
                               "move a sharded memory to one process, save(path) in every process "
                               "and load(path) here (or save(path, gather=True))");
      }
      check_one(bytes, source);
      std::istringstream in(bytes, std::ios::binary);
      head_.memory().load(in, source);
    }
  }

  std::string save(const std::string& path, bool gather) const override {
    if (sharded_) {
      if (!gather) {
        const auto& m = head_.memory();
        const std::string mine = protomem::shard_path(path, m.rank(), m.world_size());
        m.save_shard(mine);
        return mine;
      }
    }
    head_.memory().save(path);
    return path;
  }

  void load(const std::string& path, const std::vector<std::string>& shards) override {
    if (sharded_) {
      // Every process must take the same branch (both are collectives).
      const std::int64_t mine = shards.empty() ? 1 : 0;
      std::int64_t kinds[2] = {mine, 1 - mine};
      comm().all_reduce(kinds, 2, ReduceOp::max);
      protomem::detail::collective_check(comm(), [&] {
        if (kinds[0] != 0 && kinds[1] != 0) {
          protomem::detail::fail("load: ", protomem::detail::quoted_path(path), " is ",
                                 shards.empty() ? "one file" : "a set of shard files",
                                 " on this process but not on every one: every process must see ",
                                 "the same files");
        }
      });
    }
    if (shards.empty()) {
      head_.memory().load(path);
    } else {
      head_.memory().load_shards(shards);
    }
  }

  Contents contents() const override {
    const Memory& m = head_.memory();
    const index_t dim = m.dim();
    Contents c;
    auto fill = [&](index_t n, auto&& records) {
      c.labels = at::empty({n}, at::kLong);
      c.prototypes = at::empty({n, dim}, protomem::torch::detail::scalar_type_of<Scalar>());
      c.last_written = at::empty({n}, at::kLong);
      auto* labels = c.labels.data_ptr<std::int64_t>();
      auto* written = c.last_written.data_ptr<std::int64_t>();
      Scalar* rows = c.prototypes.data_ptr<Scalar>();
      index_t r = 0;
      for (const auto& record : records) {
        labels[r] = record.label;
        written[r] = static_cast<std::int64_t>(record.last_written);
        for (index_t k = 0; k < dim; ++k) rows[r * dim + k] = record.prototype[k];
        ++r;
      }
    };
    if (sharded_) {
      const auto records = m.gather_records();  // a collective: the whole logical memory
      fill(static_cast<index_t>(records.size()), records);
    } else {
      fill(m.size(), m);
    }
    return c;
  }

  at::Tensor prototype(label_t label) const override {
    if (sharded_) {  // a collective (through contents())
      const Contents c = contents();
      const at::Tensor hits = c.labels.eq(label).nonzero();
      if (hits.size(0) == 0) protomem::detail::fail("label ", label, " is not in the memory");
      return c.prototypes[hits[0][0].template item<std::int64_t>()].clone();
    } else {
      const Memory& m = head_.memory();
      const auto p = m.prototype(label);  // throws protomem::Error naming the label
      at::Tensor out = at::empty({m.dim()}, protomem::torch::detail::scalar_type_of<Scalar>());
      for (index_t k = 0; k < m.dim(); ++k) out.data_ptr<Scalar>()[k] = p[k];
      return out;
    }
  }

  bool contains(label_t label) const override {
    if (sharded_) {  // a collective: stored on any rank
      std::int64_t stored = head_.memory().stores(label) ? 1 : 0;
      comm().all_reduce(&stored, 1, ReduceOp::max);
      return stored > 0;
    } else {
      return head_.memory().contains(label);
    }
  }

  Stats stats() const override { return head_.memory().stats(); }
  LastStep last_step() const override { return last_step_of(head_.last_result()); }
  index_t size() const override { return head_.memory().size(); }
  index_t capacity() const override { return head_.memory().capacity(); }
  index_t dim() const override { return head_.memory().dim(); }
  bool pending() const override { return head_.pending(); }
  void discard() override { head_.discard(); }
  void clear() override { head_.memory().clear(); }
  const Config& config() const override { return head_.memory().config(); }

  Policies policies() const override {
    const Memory& m = head_.memory();
    return Policies(m.margin(), m.generator(), m.refresh(), m.queue(), m.mining(), m.aging());
  }
  const AnyMining& mining() const override { return head_.mining(); }
  void set_margin(AnyMargin p) override { head_.memory().set_margin(std::move(p)); }
  void set_generator(AnyGenerator p) override { head_.memory().set_generator(std::move(p)); }
  void set_refresh(AnyRefresh p) override { head_.memory().set_refresh(std::move(p)); }
  void set_queue(AnyQueue p) override { head_.memory().set_queue(std::move(p)); }
  void set_mining(AnyMining p) override { head_.memory().set_mining(std::move(p)); }
  void set_aging(AnyAging p) override { head_.memory().set_aging(std::move(p)); }

  const char* dtype() const override {
    return std::is_same_v<Scalar, float> ? "float32" : "float64";
  }
  const char* storage() const override {
    if constexpr (std::is_same_v<Device, cpu_bf16>) return "bfloat16";
    if constexpr (std::is_same_v<Device, cpu_fp16>) return "float16";
    return dtype();
  }
  bool sharded() const override { return sharded_; }

 private:
  // Exactly one checkpoint in `bytes`, nothing after it (PrototypeMemory::load leaves trailing
  // bytes unread): read without touching the memory.
  static void check_one(const std::string& bytes, const std::string& source) {
    std::istringstream in(bytes, std::ios::binary);
    protomem::detail::read_checkpoint(in, source);
    const auto used = static_cast<std::size_t>(in.tellg());
    if (in && used != bytes.size()) {
      protomem::detail::fail(source, " has ", bytes.size() - used,
                             " unexpected bytes after its checkpoint (", used, " bytes)");
    }
  }

  // Whether `bytes` begin as a shard (checkpoint format version 3) does.
  static bool is_shard(const std::string& bytes) {
    namespace d = protomem::detail;
    return bytes.size() >= 12 && d::has_magic(bytes, d::checkpoint_magic) &&
           static_cast<unsigned char>(bytes[8]) == d::shard_checkpoint_version &&
           bytes[9] == 0 && bytes[10] == 0 && bytes[11] == 0;
  }

  // Exactly one shard in `bytes`, its checksum right, nothing after it: streamed (one record at a
  // time) without touching the memory.
  static void check_one_shard(const std::string& bytes, const std::string& source) {
    std::istringstream in(bytes, std::ios::binary);
    protomem::detail::ShardReader reader(in, source);
    const protomem::detail::ShardHeader h = protomem::detail::read_shard_header(reader);
    std::vector<char> skip(static_cast<std::size_t>(32 + h.dim * h.scalar_bytes));
    for (std::uint64_t r = 0; r < h.records; ++r) reader.read(skip.data(), skip.size(), "a record");
    reader.finish();
  }

  // The process group's communicator, as the memory keeps it (collectives are not const).
  AnyCommunicator& comm() const { return head_.memory().communicator(); }

  Maker make_;
  mutable Head head_;  // a handle: copies share the state (the autograd nodes hold it too)
  bool sharded_;       // built over a process group
};

/// A head of `Head` built from the policies (any Head whose constructor takes config, policies).
template <class Head>
Head head_of(const Config& config, const Policies& p) {
  return Head(config, p);
}

template <class Head>
std::unique_ptr<AnyHead> make_single(const Config& config, const Policies& policies) {
  return std::make_unique<HeadImpl<Head>>(&head_of<Head>, config, policies);
}

}  // namespace python
}  // namespace protomem
