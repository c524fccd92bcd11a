// Small SASRec shapes and histories shared by the model tests: an empty history, a single item,
// a short one, one longer than max_len and one with a repeated item.
#pragma once
#include <vector>

#include "ada/data.hpp"
#include "ada/sasrec.hpp"

namespace ada_test {

inline ada::SasRecConfig tiny_sasrec_config(int32_t n_items) {
  ada::SasRecConfig c;
  c.n_items = n_items;
  c.hidden = 8;
  c.heads = 2;
  c.inner = 12;
  c.layers = 2;
  c.max_len = 6;
  c.dropout = 0.2f;
  return c;
}

inline ada::Ragged tiny_histories() {
  ada::Ragged h;
  const std::vector<std::vector<ada::ItemId>> rows = {{}, {3}, {1, 2, 3, 4}, {5, 6, 7, 8, 9, 10, 11, 12}, {12, 12}};
  for (const auto& r : rows) h.push_row(r.data(), r.data() + r.size());
  return h;
}

}  // namespace ada_test
