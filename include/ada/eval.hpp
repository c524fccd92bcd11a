// Full-ranking evaluation (reference-spec.md section 4) and the top-k retrieval primitive on the CPU.
// Scores are s_j = <u, e_j> + b_j for every item j of the catalog.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "ada/backend.hpp"
#include "ada/data.hpp"

namespace ada {

// Reference-spec 4.1: for each user row b, rank_b = #{ j in 1..N-1, j not in exclude[b], j != target:
// s_j > s_target } (0-based; ties count in the target's favour). exclude[b] is the user's full
// sequence (it may contain the target; the target is always a candidate). Item 0 is never a candidate.
// U: [B, D] row-major; E: [N, D]; bias: [N] (may be null: no bias). Blocked over users and items with
// sgemm; parallel over user rows; never holds more than a block of the B x N score matrix.
std::vector<int32_t> full_ranking_ranks(const float* U, int64_t B, const float* E, const float* bias,
                                        int64_t N, int64_t D, const ItemId* targets,
                                        const Ragged& exclude);

// Top-k per row over items 1..N-1 minus exclude[b] (and minus extra[b] when extra is non-null),
// sorted by descending score, ties broken by the smaller id. Writes ids [B, k] and scores [B, k].
// Throws when k exceeds the number of candidates of some row (message names the row and counts),
// or k <= 0.
void topk_excluding(const float* U, int64_t B, const float* E, const float* bias, int64_t N,
                    int64_t D, int k, const Ragged& exclude, const Ragged* extra, ItemId* out_ids,
                    float* out_scores);

// HR@k and NDCG@k for a list of 0-based ranks (reference-spec 4.3). Keys "hit@K", "ndcg@K".
std::map<std::string, double> ranking_metrics(const std::vector<int32_t>& ranks,
                                              const std::vector<int>& ks = {50, 100});

}  // namespace ada

namespace ada {

// Multi-round lists (reference-spec 4.2): round t scores items with users[t] (users is [T, B, D],
// round-major) and takes its top ks[t] over items 1..N-1 minus exclude[b] and minus the items of
// rounds < t. Lists are concatenated in round order into ids/scores [B, sum(ks)]; within a round by
// descending score. Throws when a row has too few candidates (names the row and the counts).
void multi_round_topk(const float* users, int64_t B, const float* E, const float* bias, int64_t N, int64_t D,
                      const std::vector<int>& ks, const Ragged& exclude, ItemId* ids, float* scores);

// The same through a backend's top-k (Backend::topk): users, E and bias in the backend's memory (the
// device for the CUDA backend), exclude, ids and scores on the host. On the CPU backend the lists are
// the function's above; on the CUDA backend the fused kernel's (scores by in-order FMAs: near ties can
// order differently).
void multi_round_topk(Backend<float>& be, const float* users, int64_t B, const float* E, const float* bias, int64_t N,
                      int64_t D, const std::vector<int>& ks, const Ragged& exclude, ItemId* ids, float* scores);

// The fraction of rows whose rank falls in each round's slice [t*k, (t+1)*k) (the paper's Fig. 5).
// Works for multi-round ranks (list positions) and for a base model's full ranking alike.
std::vector<double> round_hits(const std::vector<int32_t>& ranks, int rounds, int k_per_round);

}  // namespace ada
