// Model checkpoints: safetensors with the reference PyTorch tensor names and layouts (design.md),
// plus a "__metadata__" entry "ada_config" holding the model configuration as JSON. A file written
// by PyTorch (state_dict saved with safetensors) has no metadata: the configuration is then inferred
// from the tensor shapes with the reference defaults for what shapes cannot tell (heads, eps, act).
#pragma once
#include <map>
#include <string>
#include <vector>

#include "ada/ada_model.hpp"
#include "ada/safetensors.hpp"
#include "ada/sasrec.hpp"

namespace ada {

struct ModelInfo {
  std::string model = "sasrec";
  SasRecConfig sasrec;
  bool ada = false;  // Ada-Retrieval adapters present (ada_cfg describes them)
  AdaConfig ada_cfg;
  std::string dataset;
};

std::string model_info_to_json(const ModelInfo& info);
ModelInfo model_info_from_json(const std::string& json, const std::string& where);

// Writes params (float) + info atomically. `extra` tensors (e.g. optimizer moments) are added
// under their own names; `extra_meta` adds metadata entries. Every tensor is written from where it
// is (no copy). The host values of params are written: a model on a device calls params.pull() first.
void save_checkpoint(const std::string& path, const ParamStore<float>& params, const ModelInfo& info,
                     const std::map<std::string, TensorView>& extra = {},
                     const std::map<std::string, std::string>& extra_meta = {});

// The configuration a checkpoint describes (metadata, else inferred from shapes). The SafeTensorsFile
// overloads read only the header here, and each tensor once, into the parameters, in load_params.
ModelInfo checkpoint_info(const SafeTensors& st, const std::string& path);
ModelInfo checkpoint_info(const SafeTensorsFile& st, const std::string& path);

// Copies every parameter of `params` from the file, checking shapes; names in the file that the
// model does not have are returned in *ignored (e.g. Ada adapter tensors when loading a base model).
// A parameter missing from the file is an error unless allow_missing (then it keeps its value and is
// listed in *missing).
void load_params(ParamStore<float>& params, const SafeTensors& st, const std::string& path,
                 bool allow_missing = false, std::vector<std::string>* ignored = nullptr,
                 std::vector<std::string>* missing = nullptr);
void load_params(ParamStore<float>& params, const SafeTensorsFile& st, const std::string& path,
                 bool allow_missing = false, std::vector<std::string>* ignored = nullptr,
                 std::vector<std::string>* missing = nullptr);

}  // namespace ada
