// Loading interaction data (FMLP-Rec text, generic CSV/TSV), the item id map and the leave-one-out
// split (reference-spec.md section 1). Every input error names the file and the 1-based line.
#include <algorithm>
#include <cctype>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <limits>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "ada/check.hpp"
#include "ada/data.hpp"
#include "ada/fileio.hpp"

namespace ada {

namespace {

// Largest item id we accept: n_items = max id + 1 must still fit an int32.
constexpr int64_t kMaxItemId = int64_t(std::numeric_limits<int32_t>::max()) - 1;

// One line of a text file, with its 1-based number (blank lines keep their numbers).
struct Line {
  size_t number;
  std::string_view text;
};

// Splits a whole file into lines, dropping a trailing '\r' (files written on Windows).
std::vector<Line> split_lines(const std::string& bytes) {
  std::vector<Line> lines;
  size_t start = 0, number = 1;
  while (start < bytes.size()) {
    size_t end = bytes.find('\n', start);
    if (end == std::string::npos) end = bytes.size();
    size_t stop = end;
    if (stop > start && bytes[stop - 1] == '\r') --stop;
    lines.push_back(Line{number, std::string_view(bytes.data() + start, stop - start)});
    start = end + 1;
    ++number;
  }
  return lines;
}

bool is_blank(std::string_view s) {
  for (char c : s)
    if (!std::isspace(static_cast<unsigned char>(c))) return false;
  return true;
}

// Fields separated by runs of spaces/tabs (the FMLP format says single spaces; we are lenient).
std::vector<std::string_view> split_whitespace(std::string_view s) {
  std::vector<std::string_view> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) ++i;
    const size_t b = i;
    while (i < s.size() && !(s[i] == ' ' || s[i] == '\t' || s[i] == '\r')) ++i;
    if (i > b) out.push_back(s.substr(b, i - b));
  }
  return out;
}

std::string_view trim(std::string_view s) {
  size_t b = 0, e = s.size();
  while (b < e && std::isspace(static_cast<unsigned char>(s[b]))) ++b;
  while (e > b && std::isspace(static_cast<unsigned char>(s[e - 1]))) --e;
  return s.substr(b, e - b);
}

// Fields separated by one delimiter character; ' ' means runs of whitespace. Surrounding spaces and
// one pair of surrounding double quotes are removed (quoted fields with embedded delimiters are not
// supported: interaction logs rarely need them).
std::vector<std::string_view> split_fields(std::string_view s, char delim) {
  if (delim == ' ') return split_whitespace(s);
  std::vector<std::string_view> out;
  size_t b = 0;
  for (;;) {
    const size_t e = s.find(delim, b);
    std::string_view f =
        trim(s.substr(b, e == std::string_view::npos ? std::string_view::npos : e - b));
    if (f.size() >= 2 && f.front() == '"' && f.back() == '"') f = f.substr(1, f.size() - 2);
    out.push_back(f);
    if (e == std::string_view::npos) break;
    b = e + 1;
  }
  return out;
}

// Digits only (no sign, no spaces), value <= max_value.
bool parse_nonneg_int(std::string_view tok, int64_t max_value, int64_t& out) {
  if (tok.empty()) return false;
  int64_t v = 0;
  for (char c : tok) {
    if (c < '0' || c > '9') return false;
    v = v * 10 + (c - '0');
    if (v > max_value) return false;
  }
  out = v;
  return true;
}

// A finite decimal number (integer or float, optional sign and exponent), nothing else.
bool parse_number(std::string_view tok, double& out) {
  if (tok.empty()) return false;
  const std::string s(tok);
  char* end = nullptr;
  errno = 0;
  const double v = std::strtod(s.c_str(), &end);
  if (end != s.c_str() + s.size() || !std::isfinite(v)) return false;
  // strtod also takes "inf", "nan" and hex floats; timestamps are plain decimals.
  for (char c : s)
    if (!(std::isdigit(static_cast<unsigned char>(c)) || c == '.' || c == '-' || c == '+' ||
          c == 'e' || c == 'E'))
      return false;
  out = v;
  return true;
}

std::string lower(std::string_view s) {
  std::string out(s);
  for (char& c : out) c = char(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

std::string dataset_name(const std::string& path) {
  return lower(std::filesystem::path(path).stem().string());
}

// Reads the whole file, failing with a message that names the path (missing or unreadable file).
std::string read_input(const std::string& path, const char* what) {
  ADA_CHECK(file_exists(path), path << ": " << what << " not found");
  return read_file(path);
}

}  // namespace

size_t Dataset::num_actions() const {
  size_t n = 0;
  for (const auto& s : sequences) n += s.size();
  return n;
}

// ---- FMLP-Rec text ------------------------------------------------------------------------------

Dataset load_fmlp(const std::string& path, const FmlpOptions& opt) {
  ADA_CHECK(opt.min_len >= 1, "load_fmlp: min_len must be >= 1, got " << opt.min_len);
  const std::string bytes = read_input(path, "sequence file");
  const std::vector<Line> lines = split_lines(bytes);

  Dataset ds;
  ds.name = dataset_name(path);
  std::unordered_map<std::string, size_t> user_line;  // user id -> line it first appeared on
  // seen_stamp[id] == line number: id already occurs in this line (dedup in O(1) per item).
  std::vector<size_t> seen_stamp;
  size_t n_lines_with_data = 0;
  int64_t max_id = 0;
  std::vector<ItemId> seq;

  for (const Line& line : lines) {
    if (is_blank(line.text)) continue;
    ++n_lines_with_data;
    const std::vector<std::string_view> toks = split_whitespace(line.text);
    const std::string user(toks[0]);
    ADA_CHECK(toks.size() >= 2, path << ":" << line.number << ": user \"" << user
                                     << "\" has no items (expected `user item item ...`)");
    const auto [it, inserted] = user_line.emplace(user, line.number);
    ADA_CHECK(inserted, path << ":" << line.number << ": user id \"" << user
                             << "\" repeats the user of line " << it->second);
    seq.clear();
    for (size_t t = 1; t < toks.size(); ++t) {
      int64_t id = 0;
      ADA_CHECK(parse_nonneg_int(toks[t], kMaxItemId, id),
                path << ":" << line.number << ": item id \"" << toks[t]
                     << "\" is not a non-negative integer (at most " << kMaxItemId << ")");
      ADA_CHECK(id != 0, path << ":" << line.number << ": item id 0 is reserved for padding");
      if (opt.dedup) {
        if (size_t(id) >= seen_stamp.size()) seen_stamp.resize(size_t(id) + 1, 0);
        if (seen_stamp[size_t(id)] == line.number) continue;
        seen_stamp[size_t(id)] = line.number;
      }
      seq.push_back(ItemId(id));
    }
    if (int(seq.size()) < opt.min_len) {
      ++ds.dropped_users;
      continue;
    }
    for (ItemId id : seq) max_id = std::max<int64_t>(max_id, id);
    ds.sequences.push_back(seq);
    ds.user_names.push_back(user);
  }
  ADA_CHECK(n_lines_with_data > 0, path << ": empty file (no sequences)");
  ADA_CHECK(!ds.sequences.empty(), path << ": no user has at least " << opt.min_len << " items ("
                                        << ds.dropped_users << " users dropped)");
  ds.n_items = int32_t(max_id + 1);
  return ds;
}

// ---- generic CSV/TSV ----------------------------------------------------------------------------

namespace {

struct ColumnSpec {
  const char* role;          // "user", "item", "timestamp" (for messages)
  const std::string* given;  // the option text ("" = default)
  std::vector<const char*> default_names;
  int default_index;
};

bool is_index(const std::string& s) {
  int64_t v = 0;
  return parse_nonneg_int(s, 1 << 20, v);
}

// The column number for one role, from the header (when present) or an index.
int resolve_column(const ColumnSpec& spec, const std::vector<std::string_view>& header,
                   bool has_header, const std::string& path) {
  const std::string& given = *spec.given;
  if (!given.empty() && is_index(given)) return std::atoi(given.c_str());
  if (!has_header) {
    ADA_CHECK(given.empty(), path << ":1: " << spec.role << " column \"" << given
                                  << "\" is given by name but the file has no header line");
    return spec.default_index;
  }
  std::vector<std::string> wanted;
  if (!given.empty()) {
    wanted.push_back(lower(given));
  } else {
    for (const char* n : spec.default_names) wanted.push_back(lower(n));
  }
  for (const std::string& w : wanted)
    for (size_t c = 0; c < header.size(); ++c)
      if (lower(header[c]) == w) return int(c);
  std::ostringstream names;
  for (size_t c = 0; c < header.size(); ++c) names << (c ? ", " : "") << header[c];
  if (!given.empty())
    ADA_FAIL(path << ":1: unknown " << spec.role << " column \"" << given
                  << "\" (header: " << names.str() << ")");
  std::ostringstream looked;
  for (size_t i = 0; i < wanted.size(); ++i) looked << (i ? ", " : "") << spec.default_names[i];
  ADA_FAIL(path << ":1: no " << spec.role << " column in the header (looked for " << looked.str()
                << "; header: " << names.str() << "); name it in the options");
}

char detect_delimiter(std::string_view first) {
  for (char d : {'\t', ',', ';'})
    if (first.find(d) != std::string_view::npos) return d;
  return ' ';
}

// One parsed interaction of a user.
struct Event {
  double time;
  int32_t raw_item;  // index into the table of distinct item strings
};

}  // namespace

Dataset load_interactions(const std::string& path, const CsvOptions& opt) {
  ADA_CHECK(opt.min_len >= 1, "load_interactions: min_len must be >= 1, got " << opt.min_len);
  ADA_CHECK(opt.kcore >= 0, "load_interactions: kcore must be >= 0, got " << opt.kcore);
  ADA_CHECK(opt.header >= -1 && opt.header <= 1, "load_interactions: header must be -1, 0 or 1");
  const std::string bytes = read_input(path, "interaction file");
  std::vector<Line> lines = split_lines(bytes);
  lines.erase(
      std::remove_if(lines.begin(), lines.end(), [](const Line& l) { return is_blank(l.text); }),
      lines.end());
  ADA_CHECK(!lines.empty(), path << ": empty file (no interactions)");

  const char delim = opt.delimiter ? opt.delimiter : detect_delimiter(lines[0].text);
  const std::vector<std::string_view> first = split_fields(lines[0].text, delim);

  const ColumnSpec specs[3] = {
      {"user", &opt.user_col, {"user", "user_id", "userId"}, 0},
      {"item", &opt.item_col, {"item", "item_id", "itemId"}, 1},
      {"timestamp", &opt.time_col, {"timestamp", "time", "ts"}, 2},
  };

  bool has_header;
  if (opt.header >= 0) {
    has_header = opt.header == 1;
  } else {
    // A column given by name implies a header; otherwise a header is a first line whose
    // timestamp field is not a number (item and user ids may legitimately be text).
    has_header = false;
    for (const ColumnSpec& s : specs)
      if (!s.given->empty() && !is_index(*s.given)) has_header = true;
    if (!has_header) {
      const int tcol = opt.time_col.empty() ? 2 : std::atoi(opt.time_col.c_str());
      double v;
      has_header = size_t(tcol) < first.size() && !parse_number(first[size_t(tcol)], v);
    }
  }
  int cols[3];
  for (int r = 0; r < 3; ++r) cols[r] = resolve_column(specs[r], first, has_header, path);
  const size_t need = size_t(std::max({cols[0], cols[1], cols[2]})) + 1;

  // Users in order of first appearance, each with its events in file order.
  std::unordered_map<std::string, int32_t> user_index;
  std::vector<std::string> user_names;
  std::vector<std::vector<Event>> events;
  std::unordered_map<std::string, int32_t> item_index;
  std::vector<std::string> raw_items;
  for (size_t li = has_header ? 1 : 0; li < lines.size(); ++li) {
    const Line& line = lines[li];
    const std::vector<std::string_view> f = split_fields(line.text, delim);
    ADA_CHECK(f.size() >= need, path << ":" << line.number << ": missing column: expected at least "
                                     << need << " fields, found " << f.size());
    const std::string_view u = f[size_t(cols[0])], it = f[size_t(cols[1])], ts = f[size_t(cols[2])];
    ADA_CHECK(!u.empty(), path << ":" << line.number << ": empty user id");
    ADA_CHECK(!it.empty(), path << ":" << line.number << ": empty item id");
    double t = 0;
    ADA_CHECK(parse_number(ts, t),
              path << ":" << line.number << ": timestamp \"" << ts << "\" is not a number");
    auto [uit, unew] = user_index.emplace(std::string(u), int32_t(user_names.size()));
    if (unew) {
      user_names.emplace_back(u);
      events.emplace_back();
    }
    auto [iit, inew] = item_index.emplace(std::string(it), int32_t(raw_items.size()));
    if (inew) raw_items.emplace_back(it);
    events[size_t(uit->second)].push_back(Event{t, iit->second});
  }
  ADA_CHECK(!events.empty(), path << ": no interactions after the header line");

  // Chronological order per user; stable so equal timestamps keep their file order.
  for (auto& ev : events)
    std::stable_sort(ev.begin(), ev.end(),
                     [](const Event& a, const Event& b) { return a.time < b.time; });
  if (opt.dedup) {
    std::vector<size_t> stamp(raw_items.size(), 0);
    for (size_t u = 0; u < events.size(); ++u) {
      auto& ev = events[u];
      size_t w = 0;
      for (const Event& e : ev) {
        if (stamp[size_t(e.raw_item)] == u + 1) continue;
        stamp[size_t(e.raw_item)] = u + 1;
        ev[w++] = e;
      }
      ev.resize(w);
    }
  }

  // Filtering to a fixed point: users need max(kcore, min_len) interactions, items need kcore.
  // Dropping a short user can push an item under kcore and vice versa, hence the loop.
  const size_t user_min = size_t(std::max(opt.kcore, opt.min_len));
  const size_t item_min = size_t(opt.kcore);
  std::vector<char> user_alive(events.size(), 1);
  std::vector<size_t> item_count(raw_items.size());
  for (bool changed = true; changed;) {
    changed = false;
    for (size_t u = 0; u < events.size(); ++u)
      if (user_alive[u] && events[u].size() < user_min) {
        user_alive[u] = 0;
        changed = true;
      }
    if (item_min == 0) break;
    std::fill(item_count.begin(), item_count.end(), 0);
    for (size_t u = 0; u < events.size(); ++u)
      if (user_alive[u])
        for (const Event& e : events[u]) ++item_count[size_t(e.raw_item)];
    for (size_t u = 0; u < events.size(); ++u) {
      if (!user_alive[u]) continue;
      auto& ev = events[u];
      const size_t before = ev.size();
      ev.erase(
          std::remove_if(ev.begin(), ev.end(),
                         [&](const Event& e) { return item_count[size_t(e.raw_item)] < item_min; }),
          ev.end());
      if (ev.size() != before) changed = true;
    }
  }

  // Remap items to 1..N in order of first appearance (users in file order, items in time order).
  Dataset ds;
  ds.name = dataset_name(path);
  ds.item_names.push_back("<pad>");
  std::vector<ItemId> remap(raw_items.size(), 0);
  for (size_t u = 0; u < events.size(); ++u) {
    if (!user_alive[u]) {
      ++ds.dropped_users;
      continue;
    }
    std::vector<ItemId> seq;
    seq.reserve(events[u].size());
    for (const Event& e : events[u]) {
      ItemId& id = remap[size_t(e.raw_item)];
      if (id == 0) {
        ADA_CHECK(ds.item_names.size() <= size_t(kMaxItemId), path << ": too many distinct items");
        id = ItemId(ds.item_names.size());
        ds.item_names.push_back(raw_items[size_t(e.raw_item)]);
      }
      seq.push_back(id);
    }
    ds.sequences.push_back(std::move(seq));
    ds.user_names.push_back(user_names[u]);
  }
  ADA_CHECK(!ds.sequences.empty(), path << ": no user is left after filtering (min_len "
                                        << opt.min_len << ", kcore " << opt.kcore << "; "
                                        << ds.dropped_users << " users dropped)");
  ds.n_items = int32_t(ds.item_names.size());
  return ds;
}

// ---- item id map --------------------------------------------------------------------------------

void save_item_map(const std::string& path, const Dataset& ds) {
  ADA_CHECK(ds.n_items >= 1, "save_item_map: dataset has no items");
  ADA_CHECK(ds.item_names.empty() || ds.item_names.size() == size_t(ds.n_items),
            "save_item_map: item_names has " << ds.item_names.size() << " entries but n_items is "
                                             << ds.n_items);
  std::string out;
  for (int32_t id = 1; id < ds.n_items; ++id) {
    const std::string& name =
        ds.item_names.empty() ? std::to_string(id) : ds.item_names[size_t(id)];
    // A tab or newline inside a name would make the file unreadable, so refuse it here.
    ADA_CHECK(name.find_first_of("\t\r\n") == std::string::npos,
              "save_item_map: item " << id << " name contains a tab or newline");
    out += std::to_string(id);
    out += '\t';
    out += name;
    out += '\n';
  }
  write_file_atomic(path, out);
}

std::vector<std::string> load_item_map(const std::string& path) {
  const std::string bytes = read_input(path, "item map");
  std::vector<std::string> names{"<pad>"};
  std::vector<size_t> defined_on{0};  // line that defined each id (0 = not yet)
  for (const Line& line : split_lines(bytes)) {
    if (is_blank(line.text)) continue;
    const size_t tab = line.text.find('\t');
    ADA_CHECK(tab != std::string_view::npos,
              path << ":" << line.number << ": expected `<internal id>\\t<original id>`");
    int64_t id = 0;
    const std::string_view id_text = line.text.substr(0, tab);
    ADA_CHECK(parse_nonneg_int(id_text, kMaxItemId, id) && id >= 1,
              path << ":" << line.number << ": internal id \"" << id_text
                   << "\" is not a positive integer");
    if (size_t(id) >= names.size()) {
      names.resize(size_t(id) + 1);
      defined_on.resize(size_t(id) + 1, 0);
    }
    ADA_CHECK(defined_on[size_t(id)] == 0, path << ":" << line.number << ": internal id " << id
                                                << " already defined on line "
                                                << defined_on[size_t(id)]);
    defined_on[size_t(id)] = line.number;
    names[size_t(id)] = std::string(line.text.substr(tab + 1));
  }
  ADA_CHECK(names.size() > 1, path << ": empty item map");
  for (size_t id = 1; id < names.size(); ++id)
    ADA_CHECK(defined_on[id] != 0, path << ": ids are not contiguous: id " << id
                                        << " is missing (max id " << names.size() - 1 << ")");
  return names;
}

// ---- leave-one-out split ------------------------------------------------------------------------

namespace {
void check_split_lengths(const Dataset& ds, const char* who) {
  for (size_t u = 0; u < ds.sequences.size(); ++u)
    ADA_CHECK(ds.sequences[u].size() >= 3,
              who << ": user " << u << " (\"" << (u < ds.user_names.size() ? ds.user_names[u] : "")
                  << "\") has " << ds.sequences[u].size() << " items; leave-one-out needs >= 3");
}
}  // namespace

std::vector<TrainSample> train_samples(const Dataset& ds) {
  check_split_lengths(ds, "train_samples");
  std::vector<TrainSample> out;
  out.reserve(ds.num_actions() - 2 * ds.sequences.size());
  for (size_t u = 0; u < ds.sequences.size(); ++u) {
    const int32_t n = int32_t(ds.sequences[u].size());
    for (int32_t p = 0; p + 2 < n; ++p) out.push_back(TrainSample{int32_t(u), p});
  }
  return out;
}

EvalSet make_eval_set(const Dataset& ds, bool test) {
  check_split_lengths(ds, "make_eval_set");
  EvalSet es;
  const size_t cut =
      test ? 1 : 2;  // target index from the end: test = last, valid = second to last
  es.users.reserve(ds.sequences.size());
  es.targets.reserve(ds.sequences.size());
  for (size_t u = 0; u < ds.sequences.size(); ++u) {
    const auto& s = ds.sequences[u];
    const size_t t = s.size() - cut;
    es.users.push_back(int32_t(u));
    es.histories.push_row(s.data(), s.data() + t);
    es.targets.push_back(s[t]);
  }
  return es;
}

Ragged full_histories(const Dataset& ds) {
  Ragged r;
  r.offsets.reserve(ds.sequences.size() + 1);
  r.ids.reserve(ds.num_actions());
  for (const auto& s : ds.sequences) r.push_row(s.data(), s.data() + s.size());
  return r;
}

}  // namespace ada
