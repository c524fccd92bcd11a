// The models on the CUDA backend against the same models on the CPU backend (the specification):
// Ada-SASRec training step by step, the retrieved lists of a fixed model, and the trainer end to end.
// Every case first checks for a device and otherwise ends as skipped (exit 77), never as passed.
//
// Tolerances: per-step loss within 1e-3 relative (the bound; cuBLAS vs OpenBLAS sums and
// atomics differ in the last bits, and 20 Adam steps carry that forward); user vectors of a fixed
// model within 1e-4 (relative to the vector's scale); lists identical.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <sstream>
#include <string>
#include <vector>

#include "ada/ada_model.hpp"
#include "ada/checkpoint.hpp"
#include "ada/cuda_backend.hpp"
#include "ada/data.hpp"
#include "ada/device.hpp"
#include "ada/eval.hpp"
#include "ada/fileio.hpp"
#include "ada/train.hpp"
#include "tests/cuda_test_util.hpp"
#include "tests/test_util.hpp"

using namespace ada;
using ada_test::require_gpu;

namespace {

Dataset parity_data() {
  SyntheticOptions o;
  o.n_users = 160;
  o.n_items = 120;
  o.n_clusters = 6;
  o.seed = 11;
  return generate_synthetic(o);
}

SasRecConfig parity_config(int32_t n_items) {
  SasRecConfig c;
  c.n_items = n_items;
  c.hidden = 16;
  c.heads = 4;  // head dim 4, as in the reference SASRec (64 / 16)
  c.inner = 32;
  c.max_len = 12;
  return c;
}

AdaConfig parity_ada() {
  AdaConfig a;
  a.rounds = 3;
  a.total_k = 12;  // 4 context items per round
  return a;
}

// One step of the trainer's loop (train.cpp): zero, forward + backward, clip at 10, Adam.
double step(TrainableModel& m, const Batch& batch, uint64_t seed, int64_t s, Buffer<float>& am, Buffer<float>& av) {
  ParamStore<float>& P = m.params();
  Backend<float>& be = m.backend();
  DeviceMemory* mem = P.memory();
  const int64_t n = P.flat_size();
  if (am.size() != size_t(n)) {
    am.ensure(size_t(n), mem);
    av.ensure(size_t(n), mem);
    mem_zero(mem, am.data(), n);
    mem_zero(mem, av.data(), n);
  }
  P.zero_grad();
  const double loss = m.train_step(batch, seed, uint64_t(s));
  const double norm = std::sqrt(be.sum_squares(P.flat_grads(), n));
  const double coef = 10.0 / (norm + 1e-6);
  if (coef < 1.0) be.scale(P.flat_grads(), n, float(coef));
  be.adam_update(P.flat_values(), am.data(), av.data(), P.flat_grads(), n, 1e-3, 0.9, 0.999, 1e-8, s + 1);
  return loss;
}

}  // namespace

TEST_CASE("CUDA Ada-SASRec training equals the CPU's step by step (20 steps, T = 3)", "[cuda][model]") {
  require_gpu();
  const Dataset ds = parity_data();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  REQUIRE(gpu->device_memory() != nullptr);
  AdaSasRec<float> mc(parity_config(ds.n_items), parity_ada(), *cpu);
  AdaSasRec<float> mg(parity_config(ds.n_items), parity_ada(), *gpu);
  mc.init(7);
  mg.init(7);
  const std::vector<float> init = mc.params().values();
  mg.params().pull();
  REQUIRE(mg.params().values() == init);  // init is written on the host and pushed
  AdaTrainable tc(mc, ds.name), tg(mg, ds.name);

  TrainSampler sampler(ds, 3, /*n_neg=*/8, parity_config(ds.n_items).max_len);
  Batch batch;
  Buffer<float> cm, cv, gm, gv;
  int64_t s = 0;
  for (uint32_t epoch = 0; s < 20; ++epoch) {
    sampler.start_epoch(epoch);
    for (size_t b = 0; b < sampler.num_batches(32) && s < 20; ++b, ++s) {
      sampler.fill_batch(b, 32, batch);
      const double lc = step(tc, batch, 3, s, cm, cv);
      const double lg = step(tg, batch, 3, s, gm, gv);
      INFO("step " << s << ": cpu loss " << lc << ", cuda loss " << lg);
      REQUIRE(std::isfinite(lc));
      REQUIRE(std::abs(lg - lc) <= 1e-3 * std::abs(lc));
    }
  }
  // Parameters close at the end: the two runs moved them by the same amounts.
  mg.params().pull();
  const std::vector<float>& pc = mc.params().values();
  const std::vector<float>& pg = mg.params().values();
  double moved = 0, diff = 0, worst = 0;
  for (size_t i = 0; i < pc.size(); ++i) {
    moved += std::abs(double(pc[i]) - init[i]);
    diff += std::abs(double(pg[i]) - pc[i]);
    worst = std::max(worst, std::abs(double(pg[i]) - pc[i]));
  }
  INFO("sum |update| " << moved << ", sum |cuda - cpu| " << diff << ", max " << worst);
  REQUIRE(moved > 0);
  CHECK(diff <= 0.01 * moved);
  CHECK(worst <= 2e-3);  // Adam moves a parameter at most about lr = 1e-3 per step
}

TEST_CASE("CUDA Ada-SASRec ablations train as on the CPU (4 steps each)", "[cuda][model]") {
  require_gpu();
  const Dataset ds = parity_data();
  TrainSampler sampler(ds, 4, /*n_neg=*/8, parity_config(ds.n_items).max_len);
  sampler.start_epoch(0);
  const char* names[] = {"no filter", "no attention", "no gru", "no mlp", "no ira", "no ura"};
  for (int v = 0; v < 6; ++v) {
    DYNAMIC_SECTION(names[v]) {
      AdaConfig a = parity_ada();
      a.filter = v != 0;
      a.attention = v != 1;
      a.gru = v != 2;
      a.mlp = v != 3;
      a.ira = v != 4;
      a.ura = v != 5;
      auto cpu = make_cpu_backend<float>();
      auto gpu = make_cuda_backend(0);
      AdaSasRec<float> mc(parity_config(ds.n_items), a, *cpu), mg(parity_config(ds.n_items), a, *gpu);
      mc.init(9);
      mg.init(9);
      AdaTrainable tc(mc, ds.name), tg(mg, ds.name);
      Batch batch;
      Buffer<float> cm, cv, gm, gv;
      for (int64_t s = 0; s < 4; ++s) {
        sampler.fill_batch(size_t(s), 32, batch);
        const double lc = step(tc, batch, 4, s, cm, cv), lg = step(tg, batch, 4, s, gm, gv);
        INFO("step " << s << ": cpu loss " << lc << ", cuda loss " << lg);
        REQUIRE(std::isfinite(lc));
        REQUIRE(std::abs(lg - lc) <= 1e-3 * std::abs(lc));
      }
    }
  }
}

TEST_CASE("CUDA Ada-SASRec gives the CPU's user vectors, contexts and evaluation lists for a fixed model",
          "[cuda][model]") {
  require_gpu();
  const Dataset ds = parity_data();
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  AdaSasRec<float> mc(parity_config(ds.n_items), parity_ada(), *cpu);
  AdaSasRec<float> mg(parity_config(ds.n_items), parity_ada(), *gpu);
  mc.init(21);
  mg.params().values() = mc.params().values();
  mg.params().push();

  const EvalSet test = make_eval_set(ds, true);
  const int64_t B = int64_t(test.users.size()), D = 16, R = 3, kc = mc.k_ctx();
  std::vector<float> uc(size_t(R * B * D)), ug(uc.size());
  std::vector<ItemId> cc(size_t((R - 1) * B * kc)), cg(cc.size());
  mc.forward(test.histories, false, 0, 0, uc.data(), cc.data());
  Buffer<float> du(uc.size(), gpu->device_memory());
  mg.forward(test.histories, false, 0, 0, du.data(), cg.data());
  mem_download(gpu->device_memory(), ug.data(), du.data(), int64_t(ug.size()));
  double scale = 0;
  for (float v : uc) scale = std::max(scale, double(std::abs(v)));
  for (size_t i = 0; i < uc.size(); ++i) {
    INFO("user vector element " << i);
    REQUIRE(std::abs(double(ug[i]) - uc[i]) <= 1e-4 * scale);
  }
  CHECK(cg == cc);  // every round's context

  // The evaluation's multi-round lists from each backend's user vectors.
  const Ragged ex = full_histories(ds);
  Ragged rows;
  for (int32_t u : test.users) rows.push_row(ex.row_begin(size_t(u)), ex.row_end(size_t(u)));
  const std::vector<int> ks(static_cast<size_t>(R), static_cast<int>(kc));
  std::vector<ItemId> lc(size_t(B * R * kc)), lg(lc.size());
  std::vector<float> sc(lc.size()), sg(lc.size());
  const auto& c = mc.base().config();
  multi_round_topk(uc.data(), B, mc.base().host_item_table(), mc.base().host_item_bias(), c.n_items, D, ks, rows,
                   lc.data(), sc.data());
  multi_round_topk(ug.data(), B, mc.base().host_item_table(), mc.base().host_item_bias(), c.n_items, D, ks, rows,
                   lg.data(), sg.data());
  CHECK(lg == lc);
}

TEST_CASE("CUDA trainer: two short epochs of base and Ada training match the CPU's, and resume", "[cuda][model]") {
  require_gpu();
  const Dataset ds = parity_data();
  TrainOptions t;
  t.epochs = 2;
  t.max_batches_per_epoch = 3;
  t.batch_size = 32;
  t.n_neg = 8;
  t.seed = 5;
  t.eval_batch = 64;
  t.progress = false;
  for (const bool ada : {false, true}) {
    DYNAMIC_SECTION((ada ? "ada" : "base")) {
      TrainReport r[2];
      std::vector<float> final_params[2], moments[2];
      for (int dev = 0; dev < 2; ++dev) {
        std::unique_ptr<Backend<float>> be = dev ? make_cuda_backend(0) : make_cpu_backend<float>();
        const std::string dir = std::filesystem::temp_directory_path().string() + "/ada_cuda_model_" +
                                std::to_string(::getpid()) + "_" + std::to_string(dev) + (ada ? "a" : "b");
        make_dirs(dir);
        TrainOptions o = t;
        o.out_dir = dir;  // checkpoints come from the device through pull()
        std::ostringstream log;
        if (ada) {
          AdaSasRec<float> m(parity_config(ds.n_items), parity_ada(), *be);
          m.init(5);
          AdaTrainable tr(m, ds.name);
          r[dev] = train(tr, ds, o, log);
        } else {
          SasRec<float> m(parity_config(ds.n_items), *be);
          m.init(5);
          r[dev] = train(m, ds, o, log);
        }
        const SafeTensors st = read_safetensors(dir + "/last_state.safetensors");
        final_params[dev] = st.at("item_embedding.weight").to_f32();
        moments[dev] = st.at("adam.v").to_f32();
        if (dev == 1) {
          // Resume on the device from the state after epoch 1 (Adam's moments uploaded): epoch 2's loss
          // as in the uninterrupted run.
          std::filesystem::remove_all(dir);
          make_dirs(dir);
          TrainOptions o1 = o;
          o1.epochs = 1;
          std::ostringstream log1, log2;
          auto run_dev = [&](const TrainOptions& opt, std::ostringstream& lg) {
            if (ada) {
              AdaSasRec<float> m(parity_config(ds.n_items), parity_ada(), *be);
              m.init(5);
              AdaTrainable tr(m, ds.name);
              return train(tr, ds, opt, lg);
            }
            SasRec<float> m(parity_config(ds.n_items), *be);
            m.init(5);
            return train(m, ds, opt, lg);
          };
          run_dev(o1, log1);
          TrainOptions o2 = o;
          o2.resume = true;
          const TrainReport resumed = run_dev(o2, log2);
          REQUIRE(resumed.epoch_loss.size() == 2);
          INFO("resumed epoch 2 loss " << resumed.epoch_loss[1] << ", uninterrupted " << r[1].epoch_loss[1]);
          CHECK(std::abs(resumed.epoch_loss[1] - r[1].epoch_loss[1]) <= 1e-4 * std::abs(r[1].epoch_loss[1]));
        }
        std::filesystem::remove_all(dir);
      }
      REQUIRE(r[1].epoch_loss.size() == r[0].epoch_loss.size());
      for (size_t e = 0; e < r[0].epoch_loss.size(); ++e) {
        INFO("epoch " << e << ": cpu " << r[0].epoch_loss[e] << ", cuda " << r[1].epoch_loss[e]);
        CHECK(std::abs(r[1].epoch_loss[e] - r[0].epoch_loss[e]) <= 1e-3 * std::abs(r[0].epoch_loss[e]));
      }
      for (const auto& [k, v] : r[0].test) {
        INFO(k);
        CHECK(std::abs(r[1].test.at(k) - v) <= 1e-6);  // the same ranks (the same lists)
      }
      REQUIRE(final_params[1].size() == final_params[0].size());
      double worst = 0;
      for (size_t i = 0; i < final_params[0].size(); ++i)
        worst = std::max(worst, std::abs(double(final_params[1][i]) - final_params[0][i]));
      CHECK(worst <= 1e-3);  // the state written after the last epoch is the device's, pulled
      // Adam's second moments come down from the device with the state: they match the CPU's.
      REQUIRE(moments[1].size() == moments[0].size());
      double vsum = 0, vdiff = 0;
      for (size_t i = 0; i < moments[0].size(); ++i) {
        vsum += std::abs(double(moments[0][i]));
        vdiff += std::abs(double(moments[1][i]) - moments[0][i]);
      }
      REQUIRE(vsum > 0);
      CHECK(vdiff <= 1e-2 * vsum);
    }
  }
}

TEST_CASE("CUDA evaluation ranks on the device: the CPU's ranks up to the reported cutoffs", "[cuda][model]") {
  require_gpu();
  SyntheticOptions o;
  o.n_users = 300;
  o.n_items = 400;  // room for the device's list of 100 per user
  o.n_clusters = 8;
  o.seed = 13;
  const Dataset ds = generate_synthetic(o);
  const EvalSet valid = make_eval_set(ds, false);
  const Ragged exclude = full_histories(ds);
  auto cpu = make_cpu_backend<float>();
  auto gpu = make_cuda_backend(0);
  for (const bool ada : {false, true}) {
    DYNAMIC_SECTION((ada ? "ada" : "base")) {
      std::vector<int32_t> rc, rg;
      if (ada) {
        AdaSasRec<float> mc(parity_config(ds.n_items), parity_ada(), *cpu), mg(parity_config(ds.n_items), parity_ada(), *gpu);
        mc.init(17);
        mg.params().values() = mc.params().values();
        mg.params().push();
        AdaTrainable tc(mc, ds.name), tg(mg, ds.name);
        rc = tc.ranks(valid, exclude, 64);
        rg = tg.ranks(valid, exclude, 64);
      } else {
        SasRec<float> mc(parity_config(ds.n_items), *cpu), mg(parity_config(ds.n_items), *gpu);
        mc.init(17);
        mg.params().values() = mc.params().values();
        mg.params().push();
        SasRecTrainable tc(mc, ds.name), tg(mg, ds.name);
        rc = tc.ranks(valid, exclude, 64);  // the full ranking on the host
        rg = tg.ranks(valid, exclude, 64);  // the device's list of 100
      }
      REQUIRE(rg.size() == rc.size());
      int inside = 0;
      for (size_t i = 0; i < rc.size(); ++i) {
        INFO("user row " << i << ": cpu rank " << rc[i] << ", cuda rank " << rg[i]);
        if (ada) {
          REQUIRE(rg[i] == rc[i]);  // positions in the concatenated round lists (or total_k)
        } else {
          REQUIRE(rg[i] <= 100);
          REQUIRE(std::min(rg[i], 100) == std::min(rc[i], 100));
        }
        inside += rc[i] < (ada ? parity_ada().total_k : 100);
      }
      CHECK(inside > 0);  // some targets inside the lists, some beyond
      CHECK(inside < int(rc.size()));
    }
  }
}
