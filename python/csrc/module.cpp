// protomem._C: the Python binding (pybind11, through torch's extension tooling). Thin: every call
// goes to the library's public API (the LibTorch heads of protomem/torch.hpp, the samplers, the
// synthetic identity set of protomem/data/synthetic.hpp); the Python package (python/protomem/)
// adds the nn.Module, the tensor checks and the DataLoader sampler on top.
//
// The heads are compiled once per Scalar x Device (head.hpp); the policies are the C++ policy
// objects themselves, bound as Python classes, and reach the head as run-time values (the holders
// of policies/any.hpp): every built-in policy and parameter, in every head.
//
// Errors: protomem::Error -> protomem.Error (a RuntimeError) with the library's message.
#include <torch/extension.h>

#include <cstring>
#include <istream>
#include <limits>
#include <optional>
#include <protomem/data/synthetic.hpp>
#include <protomem/data/dataset_index.hpp>
#include <protomem/data/sampler.hpp>
#include <sstream>
#include <string>
#include <torch/csrc/distributed/c10d/ProcessGroup.hpp>
#include <vector>

#include "head.hpp"

namespace py = pybind11;
using namespace pybind11::literals;

namespace protomem {
namespace python {
namespace {

/// The holder of a Python policy object of `family`: one of the built-in policies Builtin...
template <class Holder, class... Builtin>
Holder holder_of(const py::object& object, const char* family) {
  std::optional<Holder> out;
  ((!out && py::isinstance<Builtin>(object) ? (out.emplace(object.cast<Builtin>()), true) : false),
   ...);
  if (!out) {
    std::string names;
    ((names += std::string(names.empty() ? "" : ", ") + Builtin::name), ...);
    detail::fail("the ", family, " policy must be a protomem ", family, " policy object (", names,
                 "); got ", std::string(py::str(py::repr(object))));
  }
  return std::move(*out);
}

/// The Python object of the policy a holder holds (a copy), or its name for a policy that is not
/// a built-in one (none reaches the package: its heads are built from the bound policies).
template <class... Builtin, class Holder>
py::object object_of(const Holder& holder) {
  py::object out;
  ((!out && holder.template get_if<Builtin>() != nullptr
        ? (out = py::cast(*holder.template get_if<Builtin>()), true)
        : false),
   ...);
  return out ? out : py::str(holder.name());
}

AnyMargin margin_of(const py::object& o) {
  return holder_of<AnyMargin, NoMargin, CosFace, ArcFace, CombinedMargin>(o, "margin");
}
AnyGenerator generator_of(const py::object& o) {
  return holder_of<AnyGenerator, ExemplarMean, DetachedExemplarMean, LeaveOneOut>(o, "generator");
}
AnyRefresh refresh_of(const py::object& o) {
  return holder_of<AnyRefresh, Replace, Momentum>(o, "refresh");
}
AnyQueue queue_of(const py::object& o) {
  return holder_of<AnyQueue, LeastRecentlyWritten, FirstInFirstOut>(o, "queue");
}
AnyMining mining_of(const py::object& o) {
  return holder_of<AnyMining, NoMining, DoppelgangerMining>(o, "mining");
}
AnyAging aging_of(const py::object& o) {
  return holder_of<AnyAging, NoAging, MaxAge, AgeDecay>(o, "aging");
}

/// The policies of a head as Python objects: margin, generator, refresh, queue, mining, aging.
py::tuple policy_objects(const Policies& p) {
  return py::make_tuple(object_of<NoMargin, CosFace, ArcFace, CombinedMargin>(p.margin),
                        object_of<ExemplarMean, DetachedExemplarMean, LeaveOneOut>(p.generator),
                        object_of<Replace, Momentum>(p.refresh),
                        object_of<LeastRecentlyWritten, FirstInFirstOut>(p.queue),
                        object_of<NoMining, DoppelgangerMining>(p.mining),
                        object_of<NoAging, MaxAge, AgeDecay>(p.aging));
}

/// The doppelganger table of a head, or an Error naming what to do.
const DoppelgangerMining& table_of(const AnyHead& head, const char* who) {
  const DoppelgangerMining* table = head.mining().get_if<DoppelgangerMining>();
  if (table == nullptr) {
    detail::fail(who, ": the head keeps no doppelganger table (its mining policy is '",
                 head.mining().name(),
                 "'); construct it with mining=protomem.DoppelgangerMining(k, table_capacity)");
  }
  return *table;
}

at::Tensor bytes_tensor(const std::string& bytes) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(bytes.size())}, at::kByte);
  if (!bytes.empty()) std::memcpy(t.data_ptr<std::uint8_t>(), bytes.data(), bytes.size());
  return t;
}

std::string tensor_bytes(const at::Tensor& t, const std::string& source) {
  if (!t.defined() || t.device().type() != c10::DeviceType::CPU || t.scalar_type() != at::kByte ||
      t.dim() != 1) {
    detail::fail(source, " must be a 1-D uint8 CPU tensor of checkpoint bytes; got a ",
                 t.scalar_type(), " tensor of shape ", t.sizes(), " on ", t.device());
  }
  const at::Tensor c = t.contiguous();
  return std::string(reinterpret_cast<const char*>(c.data_ptr<std::uint8_t>()),
                     static_cast<std::size_t>(c.numel()));
}

at::Tensor long_tensor(const std::vector<std::int64_t>& v) {
  at::Tensor t = at::empty({static_cast<std::int64_t>(v.size())}, at::kLong);
  if (!v.empty()) std::memcpy(t.data_ptr<std::int64_t>(), v.data(), v.size() * sizeof(v[0]));
  return t;
}

/// A DatasetIndex and the IterateAndSample sampler over it (which keeps a pointer to the index).
class Sampler {
 public:
  Sampler(DatasetIndex index, const SamplerConfig& config)
      : index_(std::move(index)), sampler_(index_, config) {}
  Sampler(const Sampler&) = delete;
  Sampler& operator=(const Sampler&) = delete;

  Batch next(const AnyHead* head) {
    if (head != nullptr) return sampler_.next(table_of(*head, "GroupedBatchSampler"));
    return sampler_.next();
  }
  IterateAndSample& sampler() { return sampler_; }
  const DatasetIndex& index() const { return index_; }

  std::string state() const {
    std::ostringstream out(std::ios::binary);
    sampler_.save(out);
    return std::move(out).str();
  }
  void load_state(const std::string& bytes, const std::string& source) {
    // Read into a twin first: the state must be exactly one sampler state, and a failure must
    // leave this sampler unchanged (load() itself is all-or-nothing).
    IterateAndSample twin(index_, sampler_.config());
    std::istringstream in(bytes, std::ios::binary);
    twin.load(in, source);
    if (static_cast<std::size_t>(in.tellg()) != bytes.size()) {
      detail::fail(source, " has ", bytes.size() - static_cast<std::size_t>(in.tellg()),
                   " unexpected bytes after the sampler state");
    }
    std::istringstream again(bytes, std::ios::binary);
    sampler_.load(again, source);
  }

 private:
  DatasetIndex index_;
  IterateAndSample sampler_;
};

template <class Policy>
py::class_<Policy> bind_policy(py::module_& m, const char* python_name, const char* doc) {
  py::class_<Policy> c(m, python_name, doc);
  c.def_property_readonly_static("name", [](py::object) { return std::string(Policy::name); });
  return c;
}

}  // namespace
}  // namespace python
}  // namespace protomem

namespace protomem {
namespace python {
namespace {

// The Config and policies of make_head / make_sharded_head's arguments.
Config config_of(index_t capacity, index_t dim, label_t num_classes, std::size_t workspace_bytes,
                 int threads, index_t similar_k, bool allow_single_exemplar,
                 const std::string& gemm) {
  Config config;
  if (gemm == "auto") {
    config.gemm = Gemm::automatic;
  } else if (gemm == "eigen") {
    config.gemm = Gemm::eigen;
  } else if (gemm == "blas") {
    config.gemm = Gemm::blas;  // refused by the memory in a build without a BLAS
  } else {
    detail::fail("gemm must be 'auto', 'eigen' or 'blas'; got '", detail::escaped(gemm), "'");
  }
  config.single_exemplar =
      allow_single_exemplar ? SingleExemplar::allow : SingleExemplar::refuse;
  config.capacity = capacity;
  config.dim = dim;
  config.num_classes = num_classes;
  config.workspace_bytes = workspace_bytes;
  config.threads = threads;
  config.similar_k = similar_k;
  return config;
}

Policies policies_of(const py::object& margin, const py::object& generator,
                     const py::object& refresh, const py::object& queue, const py::object& mining,
                     const py::object& aging) {
  return Policies(margin_of(margin), generator_of(generator), refresh_of(refresh),
                  queue_of(queue), mining_of(mining), aging_of(aging));
}

/// "float32" / "float64" (the dtype's own storage), "bfloat16" or "float16".
Storage storage_of(const std::string& storage, bool double_precision) {
  if (storage == "bfloat16" || storage == "float16") {
    if (double_precision) {
      detail::fail("storage='", storage, "' stores narrow prototypes for float32 arithmetic; ",
                   "the head's dtype is float64 (use dtype=torch.float32, or storage=None)");
    }
    return storage == "bfloat16" ? Storage::bfloat16 : Storage::float16;
  }
  if (storage.empty() || storage == (double_precision ? "float64" : "float32")) {
    return Storage::full;
  }
  detail::fail("storage must be 'float32' (float32 heads), 'float64' (float64 heads), 'bfloat16' ",
               "or 'float16' (float32 heads); got '", storage, "'");
}

/// A head's checkpoint bytes (state() or full_state(): a collective when sharded) as a uint8
/// tensor, made without the GIL (see the head's bindings).
at::Tensor checkpoint_tensor(const AnyHead& head, std::string (AnyHead::*bytes)() const) {
  std::string made;
  {
    py::gil_scoped_release release;
    made = (head.*bytes)();
  }
  return bytes_tensor(made);
}

std::unique_ptr<AnyHead> make_any_head(const void* group, bool double_precision,
                                       const std::string& storage_name, const Config& config,
                                       const Policies& policies) {
  switch (storage_of(storage_name, double_precision)) {
    case Storage::bfloat16:
      return make_head_bf16(group, config, policies);
    case Storage::float16:
      return make_head_fp16(group, config, policies);
    default:
      return double_precision ? make_head_double(group, config, policies)
                              : make_head_float(group, config, policies);
  }
}

}  // namespace
}  // namespace python
}  // namespace protomem

PYBIND11_MODULE(_C, m) {
  using namespace protomem;
  using namespace protomem::python;
  m.doc() = "protomem's C++ binding (use the protomem package, not this module)";

  // register_exception: pybind11's own idiom in every version torch brings (2.10 in torch 1.13, 3.x
  // in torch 2.15), where calling a py::exception directly is deprecated from 2.12 on.
  py::register_exception<Error>(m, "Error", PyExc_RuntimeError);

  // ---- policies (the C++ structs themselves; their constructors validate the parameters)
  bind_policy<NoMargin>(m, "NoMargin", "No margin (NormFace): z = s cos.")
      .def(py::init<double>(), "s"_a = 64.0)
      .def_readonly("s", &NoMargin::s)
      .def("__repr__",
           [](const NoMargin& p) { return "protomem.NoMargin(s=" + std::to_string(p.s) + ")"; });
  bind_policy<CosFace>(m, "CosFace", "CosFace: target logit s (cos - m).")
      .def(py::init<double, double>(), "s"_a = 64.0, "m"_a = 0.35)
      .def_readonly("s", &CosFace::s)
      .def_readonly("m", &CosFace::m)
      .def("__repr__", [](const CosFace& p) {
        return "protomem.CosFace(s=" + std::to_string(p.s) + ", m=" + std::to_string(p.m) + ")";
      });
  bind_policy<ArcFace>(m, "ArcFace",
                       "ArcFace: target logit s cos(theta + m). straight_through=True: "
                       "arcface_torch's CombinedMarginLoss rule (the margin added under "
                       "torch.no_grad(): no fallback past theta = pi - m, d psi / d cos = 1); "
                       "the default is the exact gradient.")
      .def(py::init<double, double, bool, bool>(), "s"_a = 64.0, "m"_a = 0.5,
           "easy_margin"_a = false, "straight_through"_a = false)
      .def_readonly("s", &ArcFace::s)
      .def_readonly("m", &ArcFace::m)
      .def_readonly("easy_margin", &ArcFace::easy_margin)
      .def_readonly("straight_through", &ArcFace::straight_through)
      .def("__repr__", [](const ArcFace& p) {
        return "protomem.ArcFace(s=" + std::to_string(p.s) + ", m=" + std::to_string(p.m) +
               ", easy_margin=" + (p.easy_margin ? "True" : "False") +
               ", straight_through=" + (p.straight_through ? "True" : "False") + ")";
      });
  bind_policy<CombinedMargin>(m, "CombinedMargin",
                              "insightface's combined margin: s (cos(m1 theta + m2) - m3).")
      .def(py::init<double, double, double, double>(), "s"_a = 64.0, "m1"_a = 1.0, "m2"_a = 0.0,
           "m3"_a = 0.0)
      .def_readonly("s", &CombinedMargin::s)
      .def_readonly("m1", &CombinedMargin::m1)
      .def_readonly("m2", &CombinedMargin::m2)
      .def_readonly("m3", &CombinedMargin::m3)
      .def("__repr__", [](const CombinedMargin& p) {
        return "protomem.CombinedMargin(s=" + std::to_string(p.s) + ", m1=" + std::to_string(p.m1) +
               ", m2=" + std::to_string(p.m2) + ", m3=" + std::to_string(p.m3) + ")";
      });
  bind_policy<ExemplarMean>(m, "ExemplarMean",
                            "Prototype: normalised exemplar mean, with gradient.")
      .def(py::init<>())
      .def("__repr__", [](const ExemplarMean&) { return "protomem.ExemplarMean()"; });
  bind_policy<DetachedExemplarMean>(m, "DetachedExemplarMean",
                                    "Prototype: normalised exemplar mean, a constant.")
      .def(py::init<>())
      .def("__repr__",
           [](const DetachedExemplarMean&) { return "protomem.DetachedExemplarMean()"; });
  bind_policy<LeaveOneOut>(m, "LeaveOneOut",
                           "Prototype: a sample's target omits itself (K >= 2 per class).")
      .def(py::init<>())
      .def("__repr__", [](const LeaveOneOut&) { return "protomem.LeaveOneOut()"; });
  bind_policy<Replace>(m, "Replace", "Refresh: store the fresh prototype.")
      .def(py::init<>())
      .def("__repr__", [](const Replace&) { return "protomem.Replace()"; });
  bind_policy<Momentum>(m, "Momentum", "Refresh: store normalize(a old + (1 - a) fresh).")
      .def(py::init<double>(), "a"_a = 0.5)
      .def_readonly("a", &Momentum::a)
      .def("__repr__",
           [](const Momentum& p) { return "protomem.Momentum(a=" + std::to_string(p.a) + ")"; });
  bind_policy<LeastRecentlyWritten>(m, "LeastRecentlyWritten",
                                    "Queue: evict the least recently written slot.")
      .def(py::init<>())
      .def("__repr__",
           [](const LeastRecentlyWritten&) { return "protomem.LeastRecentlyWritten()"; });
  bind_policy<FirstInFirstOut>(m, "FirstInFirstOut", "Queue: evict in insertion order.")
      .def(py::init<>())
      .def("__repr__", [](const FirstInFirstOut&) { return "protomem.FirstInFirstOut()"; });
  bind_policy<NoMining>(m, "NoMining", "Mining: none.")
      .def(py::init<>())
      .def("__repr__", [](const NoMining&) { return "protomem.NoMining()"; });
  bind_policy<DoppelgangerMining>(m, "DoppelgangerMining",
                                  "Mining: each class's k most similar stored classes, in a table "
                                  "of at most table_capacity classes.")
      .def(py::init<index_t, index_t>(), "k"_a = 8,
           "table_capacity"_a = DoppelgangerMining::default_table_capacity)
      .def_property_readonly("k", &DoppelgangerMining::k)
      .def_property_readonly("table_capacity", &DoppelgangerMining::table_capacity)
      .def("__repr__", [](const DoppelgangerMining& p) {
        return "protomem.DoppelgangerMining(k=" + std::to_string(p.k()) +
               ", table_capacity=" + std::to_string(p.table_capacity()) + ")";
      });
  bind_policy<NoAging>(m, "NoAging", "Aging: none; a stored prototype counts fully at any age.")
      .def(py::init<>())
      .def("__repr__", [](const NoAging&) { return "protomem.NoAging()"; });
  bind_policy<MaxAge>(m, "MaxAge",
                      "Aging: a stored prototype older than max_age committed steps is no column.")
      .def(py::init<std::uint64_t>(), "max_age"_a = 1024)
      .def_readonly("max_age", &MaxAge::max_age)
      .def("__repr__", [](const MaxAge& p) {
        return "protomem.MaxAge(max_age=" + std::to_string(p.max_age) + ")";
      });
  bind_policy<AgeDecay>(m, "AgeDecay",
                        "Aging: a stored prototype's logit weight halves every half_life committed "
                        "steps of age; older than max_age (None: no bound) it is no column.")
      .def(py::init([](double half_life, const py::object& max_age) {
             return AgeDecay(half_life,
                             max_age.is_none() ? AgeDecay::never : max_age.cast<std::uint64_t>());
           }),
           "half_life"_a = 64.0, "max_age"_a = py::none())
      .def_readonly("half_life", &AgeDecay::half_life)
      .def_property_readonly("max_age",
                             [](const AgeDecay& p) -> py::object {
                               if (p.max_age == AgeDecay::never) return py::none();
                               return py::int_(p.max_age);
                             })
      .def("__repr__", [](const AgeDecay& p) {
        std::ostringstream out;
        out << "protomem.AgeDecay(half_life=" << p.half_life << ", max_age=";
        if (p.max_age == AgeDecay::never) {
          out << "None";
        } else {
          out << p.max_age;
        }
        out << ")";
        return out.str();
      });

  // ---- the head
  py::class_<AnyHead>(m, "_Head")
      .def("forward", &AnyHead::forward, py::call_guard<py::gil_scoped_release>())
      .def("fail_forward", &AnyHead::fail_forward, py::call_guard<py::gil_scoped_release>())
      .def_property("gradient_scale", &AnyHead::gradient_scale, &AnyHead::set_gradient_scale)
      .def_property_readonly("dropped_updates", &AnyHead::dropped_updates)
      .def("core_step",
           [](AnyHead& h, const at::Tensor& e, const at::Tensor& y, at::Tensor& g) {
             double seconds = 0;
             double loss;
             {
               py::gil_scoped_release release;
               loss = h.core_step(e, y, g, &seconds);
             }
             return py::make_tuple(loss, seconds);
           })
      // Every call that may be a collective (sharded heads) runs without the GIL: gloo's worker
      // threads may need it to free the tensors of a collective the user made before (a tensor
      // with a Python object is released under the GIL), and a collective waiting for them with
      // the GIL held would wait forever.
      .def("clone", &AnyHead::clone, py::call_guard<py::gil_scoped_release>())
      .def("state", [](const AnyHead& h) { return checkpoint_tensor(h, &AnyHead::state); })
      .def("load_state",
           [](AnyHead& h, const at::Tensor& t, const std::string& source) {
             std::string bytes = tensor_bytes(t, source);
             py::gil_scoped_release release;
             h.load_state(bytes, source);
           })
      .def("full_state",
           [](const AnyHead& h) { return checkpoint_tensor(h, &AnyHead::full_state); })
      .def("save", &AnyHead::save, py::arg("path"), py::arg("gather") = false,
           py::call_guard<py::gil_scoped_release>())
      .def("load", &AnyHead::load, py::arg("path"), py::arg("shards"),
           py::call_guard<py::gil_scoped_release>())
      .def("contents",
           [](const AnyHead& h) {
             Contents c;
             {
               py::gil_scoped_release release;
               c = h.contents();
             }
             return py::make_tuple(c.labels, c.prototypes, c.last_written);
           })
      .def("prototype", &AnyHead::prototype, py::call_guard<py::gil_scoped_release>())
      .def("contains", &AnyHead::contains, py::call_guard<py::gil_scoped_release>())
      .def("stats",
           [](const AnyHead& h) {
             const Stats s = h.stats();
             return py::dict("steps"_a = s.steps, "refreshes"_a = s.refreshes,
                             "insertions"_a = s.insertions, "evictions"_a = s.evictions);
           })
      .def("last_step",
           [](const AnyHead& h) {
             const LastStep s = h.last_step();
             at::Tensor cos =
                 at::empty({static_cast<std::int64_t>(s.similar_cosines.size())}, at::kDouble);
             if (!s.similar_cosines.empty()) {
               std::memcpy(cos.data_ptr<double>(), s.similar_cosines.data(),
                           s.similar_cosines.size() * sizeof(double));
             }
             const auto c = static_cast<std::int64_t>(s.classes.size());
             return py::dict("loss"_a = s.loss, "classes"_a = long_tensor(s.classes),
                             "single_exemplar_classes"_a = s.single_exemplar_classes,
                             "similar"_a = long_tensor(s.similar).view({c, s.similar_k}),
                             "similar_cosines"_a = cos.view({c, s.similar_k}),
                             "threads"_a = s.threads, "tile_columns"_a = s.tile_columns,
                             "workspace_bytes"_a = s.workspace_bytes,
                             "gemm"_a = protomem::gemm_name(s.gemm.used),
                             "gemm_calibration_ms"_a =
                                 py::dict("eigen"_a = s.gemm.eigen_ms, "blas"_a = s.gemm.blas_ms,
                                          "bf16"_a = s.gemm.bf16_ms));
           })
      .def_property_readonly("size", &AnyHead::size)
      .def_property_readonly("capacity", &AnyHead::capacity)
      .def_property_readonly("dim", &AnyHead::dim)
      .def_property_readonly("pending", &AnyHead::pending)
      .def_property_readonly("dtype", &AnyHead::dtype)
      .def_property_readonly("num_classes", [](const AnyHead& h) { return h.config().num_classes; })
      .def_property_readonly("threads", [](const AnyHead& h) { return h.config().threads; })
      .def_property_readonly("workspace_bytes",
                             [](const AnyHead& h) { return h.config().workspace_bytes; })
      .def_property_readonly("similar_k", [](const AnyHead& h) { return h.config().similar_k; })
      .def_property_readonly("gemm",
                             [](const AnyHead& h) { return gemm_name(h.config().gemm); })
      .def_property_readonly("allow_single_exemplar",
                             [](const AnyHead& h) {
                               return h.config().single_exemplar == SingleExemplar::allow;
                             })
      .def_property_readonly("storage", &AnyHead::storage)
      .def_property_readonly("sharded", &AnyHead::sharded)
      .def_property_readonly(
          "has_mining_table",
          [](const AnyHead& h) { return h.mining().holds<DoppelgangerMining>(); })
      .def("discard", &AnyHead::discard)
      .def("clear", &AnyHead::clear)
      .def("policy_names",
           [](const AnyHead& h) {
             const Policies p = h.policies();
             return std::vector<std::string>{p.margin.name(), p.generator.name(), p.refresh.name(),
                                             p.queue.name(),  p.mining.name(),    p.aging.name()};
           })
      .def("policy_objects", [](const AnyHead& h) { return policy_objects(h.policies()); })
      .def("set_margin", [](AnyHead& h, const py::object& o) { h.set_margin(margin_of(o)); })
      .def("set_generator",
           [](AnyHead& h, const py::object& o) { h.set_generator(generator_of(o)); })
      .def("set_refresh", [](AnyHead& h, const py::object& o) { h.set_refresh(refresh_of(o)); })
      .def("set_queue", [](AnyHead& h, const py::object& o) { h.set_queue(queue_of(o)); })
      .def("set_mining", [](AnyHead& h, const py::object& o) { h.set_mining(mining_of(o)); })
      .def("set_aging", [](AnyHead& h, const py::object& o) { h.set_aging(aging_of(o)); })
      .def("doppelgangers", [](const AnyHead& h, label_t label) {
        const DoppelgangerMining& table = table_of(h, "doppelgangers");
        const Span<const label_t> found = table.doppelgangers(label);
        const Span<const float> cos = table.cosines(label);
        at::Tensor labels = at::empty({found.size}, at::kLong);
        at::Tensor cosines = at::empty({cos.size}, at::kFloat);
        for (index_t r = 0; r < found.size; ++r) labels.data_ptr<std::int64_t>()[r] = found[r];
        for (index_t r = 0; r < cos.size; ++r) cosines.data_ptr<float>()[r] = cos[r];
        return py::make_tuple(labels, cosines);
      });

  m.def(
      "make_head",
      [](bool double_precision, const std::string& storage, index_t capacity, index_t dim,
         label_t num_classes, std::size_t workspace_bytes, int threads, index_t similar_k,
         bool allow_single_exemplar, const std::string& gemm, const py::object& margin,
         const py::object& generator, const py::object& refresh, const py::object& queue,
         const py::object& mining, const py::object& aging) {
        const Config config =
            config_of(capacity, dim, num_classes, workspace_bytes, threads, similar_k,
                      allow_single_exemplar, gemm);
        const Policies p = policies_of(margin, generator, refresh, queue, mining, aging);
        return make_any_head(nullptr, double_precision, storage, config, p);
      },
      "double_precision"_a, "storage"_a, "capacity"_a, "dim"_a, "num_classes"_a,
      "workspace_bytes"_a, "threads"_a, "similar_k"_a, "allow_single_exemplar"_a, "gemm"_a, "margin"_a,
      "generator"_a, "refresh"_a, "queue"_a, "mining"_a, "aging"_a);

  // The sharded head: the memory spread over the processes of `group` (a collective: every
  // process of the group calls it with the same arguments).
  m.def(
      "make_sharded_head",
      [](const c10::intrusive_ptr<c10d::ProcessGroup>& group, bool double_precision,
         const std::string& storage, index_t capacity, index_t dim, label_t num_classes,
         std::size_t workspace_bytes, int threads, index_t similar_k, bool allow_single_exemplar,
         const std::string& gemm, const py::object& margin, const py::object& generator,
         const py::object& refresh, const py::object& queue, const py::object& mining,
         const py::object& aging) {
        const Config config =
            config_of(capacity, dim, num_classes, workspace_bytes, threads, similar_k,
                      allow_single_exemplar, gemm);
        const Policies p = policies_of(margin, generator, refresh, queue, mining, aging);
        py::gil_scoped_release release;  // the constructor is a collective
        return make_any_head(&group, double_precision, storage, config, p);
      },
      "group"_a, "double_precision"_a, "storage"_a, "capacity"_a, "dim"_a, "num_classes"_a,
      "workspace_bytes"_a, "threads"_a, "similar_k"_a, "allow_single_exemplar"_a, "gemm"_a, "margin"_a,
      "generator"_a, "refresh"_a, "queue"_a, "mining"_a, "aging"_a);

  // ---- the sampler
  py::class_<Sampler>(m, "_Sampler")
      .def(py::init([](const at::Tensor& labels, index_t classes_per_batch,
                       index_t exemplars_per_class, std::uint64_t seed, double fraction) {
             // labels: int64, rank 1, contiguous, CPU (checked in Python)
             const Span<const label_t> view{labels.data_ptr<std::int64_t>(), labels.numel()};
             SamplerConfig config;
             config.classes_per_batch = classes_per_batch;
             config.exemplars_per_class = exemplars_per_class;
             config.seed = seed;
             config.doppelganger_fraction = fraction;
             return std::make_unique<Sampler>(DatasetIndex::from_labels(view), config);
           }),
           "labels"_a, "classes_per_batch"_a, "exemplars_per_class"_a, "seed"_a,
           "doppelganger_fraction"_a)
      .def_static("from_list_file",
                  [](const std::string& path, index_t classes_per_batch,
                     index_t exemplars_per_class, std::uint64_t seed, double fraction) {
                    SamplerConfig config;
                    config.classes_per_batch = classes_per_batch;
                    config.exemplars_per_class = exemplars_per_class;
                    config.seed = seed;
                    config.doppelganger_fraction = fraction;
                    return std::make_unique<Sampler>(DatasetIndex::from_list_file(path), config);
                  })
      .def(
          "next",
          [](Sampler& s, const AnyHead* head) {
            const Batch b = s.next(head);
            return py::make_tuple(b.samples, b.labels, b.classes, b.base_classes, b.mined_classes,
                                  b.number, b.epoch);
          },
          "head"_a = nullptr)
      .def_property_readonly("position", [](Sampler& s) { return s.sampler().position(); })
      .def("seek", [](Sampler& s, std::uint64_t n) { s.sampler().seek(n); })
      .def_property_readonly("batches_per_epoch",
                             [](Sampler& s) { return s.sampler().batches_per_epoch(); })
      .def_property_readonly("base_per_batch",
                             [](Sampler& s) { return s.sampler().base_per_batch(); })
      .def_property_readonly("mined_per_batch",
                             [](Sampler& s) { return s.sampler().mined_per_batch(); })
      .def_property_readonly("seed", [](Sampler& s) { return s.sampler().seed(); })
      .def_property_readonly("num_classes",
                             [](const Sampler& s) { return s.index().num_classes(); })
      .def_property_readonly("num_samples",
                             [](const Sampler& s) { return s.index().num_samples(); })
      .def_property_readonly("paths", [](const Sampler& s) { return s.index().paths(); })
      .def("state", [](const Sampler& s) { return bytes_tensor(s.state()); })
      .def("load_state", [](Sampler& s, const at::Tensor& t, const std::string& source) {
        s.load_state(tensor_bytes(t, source), source);
      });

  // ---- the synthetic identity set (protomem/data/synthetic.hpp, docs/synthetic-data.md)
  py::module_ syn = m.def_submodule("synthetic", "protomem/data/synthetic.hpp");
  py::class_<synthetic::Config>(syn, "Config")
      .def(py::init<>())
      .def_readwrite("seed", &synthetic::Config::seed)
      .def_readwrite("latent_dim", &synthetic::Config::latent_dim)
      .def_readwrite("nuisance_dim", &synthetic::Config::nuisance_dim)
      .def_readwrite("hidden_dim", &synthetic::Config::hidden_dim)
      .def_readwrite("image_dim", &synthetic::Config::image_dim)
      .def_readwrite("intra", &synthetic::Config::intra)
      .def_readwrite("similarity", &synthetic::Config::similarity)
      .def_readwrite("families", &synthetic::Config::families)
      .def_readwrite("lookalike_fraction", &synthetic::Config::lookalike_fraction)
      .def_readwrite("lookalike_distance", &synthetic::Config::lookalike_distance)
      .def_readwrite("nuisance", &synthetic::Config::nuisance)
      .def_readwrite("gain", &synthetic::Config::gain)
      .def_readwrite("noise", &synthetic::Config::noise);
  py::class_<synthetic::IdentitySet>(syn, "IdentitySet")
      .def(py::init([](const synthetic::Config& c) {
             try {
               return std::make_unique<synthetic::IdentitySet>(c);
             } catch (const std::invalid_argument& e) {
               throw py::value_error(std::string("synthetic.Config: ") + e.what());
             }
           }),
           "config"_a)
      .def_property_readonly("image_dim", &synthetic::IdentitySet::image_dim)
      .def("lookalike_of", &synthetic::IdentitySet::lookalike_of)
      .def("family_of", &synthetic::IdentitySet::family_of)
      .def("images", [](const synthetic::IdentitySet& s, const at::Tensor& identities,
                        const at::Tensor& indices) {
        // int64, rank 1, same length, contiguous (checked in Python)
        at::Tensor out = at::empty({identities.numel(), s.image_dim()}, at::kFloat);
        {
          py::gil_scoped_release release;
          s.images(identities.data_ptr<std::int64_t>(), indices.data_ptr<std::int64_t>(),
                   identities.numel(), out.data_ptr<float>());
        }
        return out;
      });
}
