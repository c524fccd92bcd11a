// Loads a checkpoint and prints the next items for one history:
//   retrieve_example MODEL.safetensors K T ITEM [ITEM ...]
#include <ada/check.hpp>
#include <ada/retriever.hpp>
#include <cstdio>
#include <cstdlib>
#include <vector>

int main(int argc, char** argv) {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s MODEL.safetensors K T [ITEM ...]\n", argv[0]);
    return 2;
  }
  try {
    ada::AdaRetriever retriever = ada::AdaRetriever::load(argv[1]);
    std::vector<ada::ItemId> history;
    for (int i = 4; i < argc; ++i) history.push_back(std::atoi(argv[i]));
    for (const ada::Retrieved& r : retriever.retrieve_scored(history, std::atoi(argv[2]), std::atoi(argv[3])))
      std::printf("%d\t%d\t%.6f\n", r.round, r.item, r.score);
  } catch (const ada::Error& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
  return 0;
}
