// The LibTorch adapter (protomem/torch.hpp): loss and gradient equal the core's, zero-copy views,
// when the memory is committed, and clear errors for wrong tensors. Plus a short seeded training
// run of the main job (examples/train): the trained encoder must beat the untrained one on held-out
// identities by a wide margin.
#include <limits>
#include <protomem/torch.hpp>
#include <sstream>
#include <vector>

#include "../examples/train/trainer.hpp"

// LibTorch's headers bring glog, whose CHECK() would shadow Catch's: Catch comes last.
#undef CHECK
#include <catch2/catch.hpp>

namespace {

template <class Scalar>
protomem::Config small_config() {
  protomem::Config c;
  c.capacity = 16;
  c.dim = 8;
  return c;
}

template <class Scalar>
at::ScalarType dtype() {
  return std::is_same_v<Scalar, float> ? at::kFloat : at::kDouble;
}

// B = 12: three steps' worth of batches, 3 classes x 4 exemplars each, classes shifting.
at::Tensor batch_labels(int step) {
  std::vector<std::int64_t> y;
  for (int c = 0; c < 3; ++c) {
    for (int k = 0; k < 4; ++k) y.push_back(step * 2 + c);
  }
  return torch::tensor(y, torch::kLong);
}

template <class Memory, class Scalar>
Scalar core_step(Memory& memory, const at::Tensor& e, const at::Tensor& y,
                 std::vector<Scalar>& grad) {
  const at::Tensor c = e.contiguous();
  grad.assign(static_cast<std::size_t>(c.numel()), 0);
  return memory.step(
      protomem::matrix_view<const Scalar>(c.data_ptr<Scalar>(), c.size(0), c.size(1)),
      protomem::label_view(y.data_ptr<std::int64_t>(), y.size(0)),
      protomem::matrix_view<Scalar>(grad.data(), c.size(0), c.size(1)));
}

template <class Scalar>
void check_against_core(bool strided) {
  protomem::torch::PrototypeHead<Scalar> head(small_config<Scalar>(), protomem::CosFace(16, 0.2));
  protomem::PrototypeMemory<Scalar> core(small_config<Scalar>(), protomem::CosFace(16, 0.2));
  torch::manual_seed(3);
  for (int step = 0; step < 4; ++step) {
    // The head sees either a plain tensor or a row-strided view (every other column block of a
    // wider tensor: stride(0) = 2 D, zero-copy); the core sees the same values densely.
    at::Tensor wide = torch::randn({12, 16}, torch::dtype(dtype<Scalar>()));
    at::Tensor values = strided ? wide.slice(1, 0, 8) : wide.slice(1, 0, 8).contiguous();
    at::Tensor e = values.detach().clone().requires_grad_(true);
    if (strided) {
      at::Tensor leaf = wide.detach().clone().requires_grad_(true);
      e = leaf.slice(1, 0, 8);  // non-leaf view; the gradient goes to leaf
      REQUIRE(e.stride(0) == 16);
      const at::Tensor y = batch_labels(step);
      at::Tensor loss = head(e, y) * 2.5;  // upstream gradient 2.5
      loss.backward();
      std::vector<Scalar> grad;
      const Scalar expected = core_step(core, values, y, grad);
      CHECK(loss.item<double>() == Approx(2.5 * expected).epsilon(1e-6));
      const at::Tensor g = leaf.grad().slice(1, 0, 8).contiguous();
      for (std::size_t k = 0; k < grad.size(); ++k) {
        CHECK(g.data_ptr<Scalar>()[k] == Approx(2.5 * grad[k]).epsilon(1e-6).margin(1e-12));
      }
      CHECK(leaf.grad().slice(1, 8, 16).abs().max().item<double>() == 0.0);
    } else {
      const at::Tensor y = batch_labels(step);
      at::Tensor loss = head(e, y);
      loss.backward();
      std::vector<Scalar> grad;
      const Scalar expected = core_step(core, values, y, grad);
      CHECK(loss.item<Scalar>() == expected);  // the same computation: bit-identical
      for (std::size_t k = 0; k < grad.size(); ++k)
        CHECK(e.grad().data_ptr<Scalar>()[k] == grad[k]);
    }
    CHECK(head.memory().step_count() == core.step_count());
    CHECK(head.memory().size() == core.size());
  }
}

}  // namespace

TEST_CASE("torch adapter: loss and dL/dE equal the core's, float and double", "[torch]") {
  SECTION("float") { check_against_core<float>(false); }
  SECTION("double") { check_against_core<double>(false); }
  SECTION("float, row-strided view") { check_against_core<float>(true); }
  SECTION("double, row-strided view") { check_against_core<double>(true); }
}

TEST_CASE("torch adapter: reads the embeddings in place", "[torch]") {
  // A tensor whose rows are contiguous is viewed, not copied: a NaN written through the tensor's
  // storage is seen by the step (and rejected by the core's validation).
  protomem::torch::PrototypeHead<float> head(small_config<float>());
  at::Tensor e = torch::randn({12, 8});
  e[5][3] = std::numeric_limits<float>::quiet_NaN();
  CHECK_THROWS_WITH(head(e, batch_labels(0)), Catch::Contains("is not finite"));
  // A column-strided (transposed) tensor is accepted (copied once) and gives the same loss.
  at::Tensor t = torch::randn({8, 12});
  const double a = head(t.t(), batch_labels(0)).item<double>();
  const double b = head(t.t().contiguous(), batch_labels(0)).item<double>();
  CHECK(a == b);
}

TEST_CASE("torch adapter: when the memory is updated", "[torch]") {
  protomem::torch::PrototypeHead<float> head(small_config<float>());
  auto& memory = head.memory();
  at::Tensor e = torch::randn({12, 8}, torch::requires_grad());

  SECTION("backward commits; a forward alone does not") {
    at::Tensor loss = head(e, batch_labels(0));
    CHECK(head.pending());
    CHECK(memory.size() == 0);
    loss.backward();
    CHECK_FALSE(head.pending());
    CHECK(memory.size() == 3);
    CHECK(memory.step_count() == 1);
  }
  SECTION("evaluation under NoGradGuard never updates") {
    torch::NoGradGuard no_grad;
    const at::Tensor loss = head(e, batch_labels(0));
    CHECK_FALSE(loss.requires_grad());
    CHECK_FALSE(head.pending());
    CHECK(memory.size() == 0);
  }
  SECTION("embeddings that do not require grad are an evaluation too") {
    head(e.detach(), batch_labels(0));
    CHECK_FALSE(head.pending());
    CHECK(memory.step_count() == 0);
  }
  SECTION("a forward whose backward never ran is discarded by the next forward") {
    at::Tensor skipped = head(e, batch_labels(0));
    at::Tensor loss = head(e, batch_labels(1));
    loss.backward();
    CHECK(memory.step_count() == 1);
    CHECK_FALSE(memory.contains(0));  // label 0 only in the discarded batch
    CHECK(memory.contains(4));
    skipped.backward();  // late backward of the discarded step: gradient, but no commit
    CHECK(memory.step_count() == 1);
  }
  SECTION("a forward that throws leaves the pending update to its backward") {
    at::Tensor loss = head(e, batch_labels(0));
    // Class 2 of the next batch has exemplars that sum to zero: the core throws in its generator,
    // after it has begun building that forward's fresh prototypes.
    at::Tensor bad = torch::randn({12, 8});
    bad[1] = -bad[0];
    bad[3] = -bad[2];
    CHECK_THROWS_WITH(head(bad.requires_grad_(), batch_labels(1)), Catch::Contains("sum to zero"));
    CHECK(head.pending());
    loss.backward();
    CHECK(memory.step_count() == 1);
    // What was committed is the first batch's update, as a core memory makes it.
    protomem::PrototypeMemory<float> core(small_config<float>());
    std::vector<float> grad;
    const at::Tensor labels = batch_labels(0);
    core_step(core, e.detach(), labels, grad);
    std::ostringstream committed, expected;
    memory.save(committed);
    core.save(expected);
    CHECK(committed.str() == expected.str());
  }
  SECTION("a second backward through the same graph does not commit twice") {
    at::Tensor loss = head(e, batch_labels(0));
    loss.backward({}, /*retain_graph=*/true);
    loss.backward();
    CHECK(memory.step_count() == 1);
  }
  SECTION("the graph keeps the state alive after the head is gone") {
    at::Tensor loss;
    {
      protomem::torch::PrototypeHead<float> temporary(small_config<float>());
      loss = temporary(e, batch_labels(0));
    }
    loss.backward();
    CHECK(e.grad().defined());
  }
  SECTION("Commit::manual leaves commit() to the caller") {
    protomem::torch::PrototypeHead<float> manual(
        small_config<float>(), protomem::CosFace{}, protomem::ExemplarMean{}, protomem::Replace{},
        protomem::LeastRecentlyWritten{}, protomem::torch::Commit::manual);
    manual(e, batch_labels(0)).backward();
    CHECK(manual.pending());
    CHECK_THROWS_WITH(manual(e, batch_labels(1)), Catch::Contains("commit() or discard()"));
    manual.commit();
    CHECK(manual.memory().step_count() == 1);
  }
}

TEST_CASE("torch adapter: wrong tensors get clear errors and change nothing", "[torch]") {
  protomem::torch::PrototypeHead<float> head(small_config<float>());
  const at::Tensor y = batch_labels(0);
  const at::Tensor e = torch::randn({12, 8});
  using Catch::Contains;
  CHECK_THROWS_AS(head(e.to(torch::kDouble), y), protomem::Error);
  CHECK_THROWS_WITH(head(e.to(torch::kDouble), y), Contains("embeddings must have dtype Float"));
  CHECK_THROWS_WITH(head(e.view({12, 2, 4}), y), Contains("must be rank 2"));
  CHECK_THROWS_WITH(head(torch::randn({12, 7}), y),
                    Contains("D = 7 columns but the memory's dim is 8"));
  CHECK_THROWS_WITH(head(e, y.to(torch::kInt)), Contains("labels must have dtype int64"));
  CHECK_THROWS_WITH(head(e, y.view({3, 4})), Contains("labels must be rank 1"));
  CHECK_THROWS_WITH(head(e, y.slice(0, 0, 6)),
                    Contains("labels has 6 entries but embeddings have B = 12"));
  CHECK_THROWS_WITH(head(torch::empty({12, 8}, torch::device(torch::kMeta)), y),
                    Contains("must be a dense CPU tensor"));
  CHECK_THROWS_WITH(head(torch::randn({0, 8}), y.slice(0, 0, 0)), Contains("empty batch"));
  CHECK_THROWS_WITH(head(e, -y), Contains("negative"));
  protomem::torch::PrototypeHead<double> dhead(small_config<double>());
  CHECK_THROWS_WITH(dhead(e, y), Contains("embeddings must have dtype Double"));
  CHECK(head.memory().step_count() == 0);
  CHECK_FALSE(head.pending());
}

TEST_CASE("torch adapter: a Mining policy, its table reached through the head", "[torch][mining]") {
  // Step 1 stores classes 0, 1, 2; step 2 brings classes 3, 4, 5, where class 3's exemplars are
  // class 1's plus small noise. After the committed step 2, class 3's row must name class 1 first,
  // with the cosine between the two generated prototypes computed here independently (normalised
  // mean of the normalised exemplars, as docs/algorithm.md, "One step").
  using Head = protomem::torch::PrototypeHead<double, protomem::CosFace, protomem::ExemplarMean,
                                              protomem::Replace, protomem::LeastRecentlyWritten,
                                              protomem::DoppelgangerMining>;
  Head head(small_config<double>(), protomem::CosFace{}, protomem::ExemplarMean{},
            protomem::Replace{}, protomem::LeastRecentlyWritten{},
            protomem::DoppelgangerMining(/*k=*/2, /*table_capacity=*/16));
  CHECK(&head.mining() == &head.memory().mining());
  CHECK(head.mining().k() == 2);

  torch::manual_seed(11);
  const auto opts = torch::dtype(torch::kDouble);
  const at::Tensor first = torch::randn({12, 8}, opts);  // rows 4..7: class 1
  const at::Tensor y1 =
      torch::tensor(std::vector<std::int64_t>{0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2});
  head(first.clone().requires_grad_(true), y1).backward();
  CHECK(head.mining().size() == 0);  // an empty memory: step 1 found no stored class

  at::Tensor second = torch::randn({12, 8}, opts);
  second.slice(0, 0, 4).copy_(first.slice(0, 4, 8) + 0.01 * torch::randn({4, 8}, opts));
  const at::Tensor y2 =
      torch::tensor(std::vector<std::int64_t>{3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5});

  SECTION("only a committed step reaches the table") {
    {
      torch::NoGradGuard no_grad;  // evaluation
      head(second, y2);
    }
    head(second.clone().requires_grad_(true), y2);  // forward without backward: discarded
    CHECK(head.mining().size() == 0);
  }
  SECTION("the committed step's row is the most similar stored class, with its cosine") {
    head(second.clone().requires_grad_(true), y2).backward();
    REQUIRE(head.mining().contains(3));
    const auto similar = head.mining().doppelgangers(3);
    const auto cosines = head.mining().cosines(3);
    REQUIRE(similar.size == 2);
    CHECK(similar[0] == 1);
    auto prototype = [](const at::Tensor& rows) {
      const at::Tensor unit = rows / rows.norm(2, {1}, true);
      const at::Tensor mean = unit.sum(0);
      return mean / mean.norm();
    };
    const double expected =
        (prototype(second.slice(0, 0, 4)) * prototype(first.slice(0, 4, 8))).sum().item<double>();
    CHECK(cosines[0] == Approx(expected).epsilon(1e-5));
    CHECK(cosines[0] >= cosines[1]);
    // Class 1's row is untouched: the relation is one-directional, written for batch classes only.
    CHECK_FALSE(head.mining().contains(1));
  }
}

TEST_CASE("main job: a short seeded run beats the untrained encoder on held-out identities",
          "[torch][train]") {
  train::Options o;
  o.identities = 2000;
  o.steps = 200;
  o.batch = 128;
  o.exemplars = 4;
  o.capacity = 1024;
  o.eval_identities = 400;
  o.distractors = 1000;
  o.eval_every = 150;
  o.progress = false;
  const train::RunResult r = train::run_method(o, {train::Kind::protomem, train::Sampler::grouped},
                                               train::make_default_protomem_head);
  INFO("untrained TAR@1e-3 " << r.untrained.tar_1e3 << " rank-1 " << r.untrained.rank1
                             << "; trained TAR@1e-3 " << r.final.tar_1e3 << " rank-1 "
                             << r.final.rank1);
  // Measured at this seed: untrained TAR@1e-4 0.41, rank-1 0.64 (docs/results.md has full runs).
  CHECK(r.final.tar_1e4 > r.untrained.tar_1e4 + 0.2);
  CHECK(r.final.rank1 > r.untrained.rank1 + 0.15);
  CHECK(r.staleness_cos > 0.8);  // memory prototypes match the current class means
}
