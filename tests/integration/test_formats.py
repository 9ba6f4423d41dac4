#!/usr/bin/env python3
"""Model formats (issue 6): packs models made with the real libraries (Debian's python3-torch and
python3-onnx) and checks the manifest's "formats", the pack warnings, `pack --strict`, `inspect`,
and that the libraries load the models from the FUSE mount exactly as from the source:

- torch.save (zip format and legacy format), a whole nn.Module, and a torch.package archive;
- an ONNX model with external data (onnx.save_model(save_as_external_data=True));
- a Hugging Face layout: config.json, two safetensors shards, the index, tokenizer files,
  and two broken variants (a missing shard, a tensor missing from the weight map);
- an MLflow model directory (MLmodel, data/, environment files) and a broken variant;
- a malicious pickle (os.system), which is flagged and never loaded.

The harness may run under a python3 without torch (e.g. pyenv): the library parts run in
/usr/bin/python3, through this same file with the first argument "lib".
Environment: TORSHPKG, MOUNT_TORSHPKG (set by meson). Needs root and /dev/fuse.
"""
import json
import os
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from tpkgtest import Harness, inspect_json, tail  # noqa: E402

LIB_PYTHON = os.environ.get("TORSHPKG_LIB_PYTHON", "/usr/bin/python3")
HERE = os.path.abspath(__file__)


# ---------------------------------------------------------------------------------------------
# Library side: runs in /usr/bin/python3 with torch and onnx.

def write_safetensors(path, tensors):
    """tensors: {name: torch tensor}; written in sorted order, as the safetensors library does."""
    import torch
    names = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64"}
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        t = tensors[name].contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * (-len(h) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def read_safetensors(path):
    import torch
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16, "I64": torch.int64}
    with open(path, "rb") as f:
        data = f.read()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8:8 + n])
    out = {}
    for name, t in header.items():
        if name == "__metadata__":
            continue
        a, b = t["data_offsets"]
        raw = bytearray(data[8 + n + a:8 + n + b])
        out[name] = torch.frombuffer(raw, dtype=dtypes[t["dtype"]]).reshape(t["shape"]) if raw else \
            torch.empty(t["shape"], dtype=dtypes[t["dtype"]])
    return out


MYMODELS = '''
import torch


class TinyNet(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(8, 16)
        self.fc2 = torch.nn.Linear(16, 4)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))
'''


def lib_make(root):
    import onnx
    import torch
    from onnx import TensorProto, helper, numpy_helper
    from torch.package import PackageExporter
    torch.manual_seed(6)

    # torch: zip-format state_dict, legacy-format state_dict, a whole Sequential, and a reference input.
    d = os.path.join(root, "torch")
    os.makedirs(d)
    model = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    torch.save(model.state_dict(), os.path.join(d, "model.pt"))
    torch.save(model.state_dict(), os.path.join(d, "legacy.pt"), _use_new_zipfile_serialization=False)
    torch.save(model, os.path.join(d, "whole.pt"))
    torch.save(torch.randn(3, 8), os.path.join(d, "input.pt"))

    # torch.package with an interned module (its source goes into the archive).
    d = os.path.join(root, "package")
    src = os.path.join(root, "pkgsrc")
    os.makedirs(d)
    os.makedirs(src)
    with open(os.path.join(src, "mymodels.py"), "w") as f:
        f.write(MYMODELS)
    sys.path.insert(0, src)
    import mymodels
    net = mymodels.TinyNet()
    with PackageExporter(os.path.join(d, "tiny.pt")) as exp:
        exp.intern("mymodels")
        exp.save_pickle("model", "model.pkl", net)
    torch.save(net.state_dict(), os.path.join(root, "tiny-state.pt"))  # the reference, outside the package

    # ONNX: Y = MatMul(X, W) + B with both initializers in one external file.
    d = os.path.join(root, "onnx")
    os.makedirs(d)
    w = torch.randn(8, 4).numpy()
    b = torch.randn(4).numpy()
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["XW"]), helper.make_node("Add", ["XW", "B"], ["Y"])], "g",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [None, 8])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [None, 4])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "B")])
    m = helper.make_model(graph, producer_name="torshpkg-test", opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(m)
    onnx.save_model(m, os.path.join(d, "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="model.onnx_data", size_threshold=0)
    with open(os.path.join(root, "onnx-ref.json"), "w") as f:
        json.dump({"W": w.tolist(), "B": b.tolist()}, f)

    # Hugging Face layout, and two broken variants.
    tensors = {
        "model.embed_tokens.weight": torch.randn(32, 8).to(torch.bfloat16),
        "model.layers.0.mlp.weight": torch.randn(8, 8).to(torch.bfloat16),
        "model.layers.1.mlp.weight": torch.randn(8, 8).to(torch.bfloat16),
        "model.norm.weight": torch.ones(8, dtype=torch.float32),
        "lm_head.weight": torch.randn(32, 8).to(torch.bfloat16),
    }
    shards = {"model-00001-of-00002.safetensors": ["model.embed_tokens.weight", "model.layers.0.mlp.weight"],
              "model-00002-of-00002.safetensors": ["model.layers.1.mlp.weight", "model.norm.weight", "lm_head.weight"]}

    def hf(name, weight_map_edit=None):
        d = os.path.join(root, name)
        os.makedirs(d)
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump({"architectures": ["LlamaForCausalLM"], "model_type": "llama", "torch_dtype": "bfloat16",
                       "hidden_size": 8, "vocab_size": 32, "num_hidden_layers": 2,
                       "transformers_version": "4.31.0"}, f, indent=2)
        wm = {}
        for shard, names in shards.items():
            write_safetensors(os.path.join(d, shard), {n: tensors[n] for n in names})
            wm.update({n: shard for n in names})
        if weight_map_edit:
            weight_map_edit(wm)
        size = sum(t.numel() * t.element_size() for t in tensors.values())
        with open(os.path.join(d, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {"total_size": size}, "weight_map": wm}, f, indent=2)
        with open(os.path.join(d, "tokenizer.json"), "w") as f:
            json.dump({"version": "1.0", "model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": []}}, f)
        with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
            json.dump({"model_max_length": 64}, f)
        with open(os.path.join(d, "special_tokens_map.json"), "w") as f:
            json.dump({"bos_token": "<s>"}, f)

    hf("hf")
    hf("hf-missing-shard", lambda wm: wm.update({"model.extra.weight": "model-00003-of-00003.safetensors"}))
    hf("hf-unmapped", lambda wm: wm.pop("lm_head.weight"))

    # MLflow pytorch flavor layout (as mlflow.pytorch.save_model writes it), and a broken variant.
    def mlflow(name, with_env=True):
        d = os.path.join(root, name)
        os.makedirs(os.path.join(d, "data"))
        torch.save(model, os.path.join(d, "data", "model.pth"))
        with open(os.path.join(d, "data", "pickle_module_info.txt"), "w") as f:
            f.write("mlflow.pytorch.pickle_module")
        with open(os.path.join(d, "MLmodel"), "w") as f:
            f.write("""artifact_path: model
flavors:
  python_function:
    data: data
    env:
      conda: conda.yaml
      virtualenv: python_env.yaml
    loader_module: mlflow.pytorch
    pickle_module_name: mlflow.pytorch.pickle_module
    python_version: 3.11.2
  pytorch:
    code: null
    model_data: data
    pytorch_version: 1.13.1
mlflow_version: 2.5.0
model_uuid: 9d1c4b3e2f6a4e0f8c7b6a5d4e3f2a1b
run_id: 0123456789abcdef0123456789abcdef
utc_time_created: '2023-08-01 10:00:00.000000'
""")
        if with_env:
            with open(os.path.join(d, "conda.yaml"), "w") as f:
                f.write("channels: [conda-forge]\ndependencies: [python=3.11.2, pip]\nname: mlflow-env\n")
            with open(os.path.join(d, "python_env.yaml"), "w") as f:
                f.write("python: 3.11.2\nbuild_dependencies: [pip]\ndependencies: [-r requirements.txt]\n")
        with open(os.path.join(d, "requirements.txt"), "w") as f:
            f.write("mlflow\ntorch==1.13.1\n")

    mlflow("mlflow")
    mlflow("mlflow-broken", with_env=False)

    # A malicious pickle: loading it would run os.system. It is only ever scanned.
    d = os.path.join(root, "evil")
    os.makedirs(d)

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo this must never run",))

    import pickle
    with open(os.path.join(d, "model.pkl"), "wb") as f:
        pickle.dump(Evil(), f, protocol=4)
    torch.save({"w": torch.ones(2), "payload": Evil()}, os.path.join(d, "pytorch_model.bin"))
    print(json.dumps({"torch": torch.__version__, "onnx": onnx.__version__}))


def lib_check(root, mounts):
    """Loads every model from the mounts with the real libraries; prints one JSON result per check."""
    import numpy as np
    import onnx
    import torch
    from onnx import numpy_helper
    from torch.package import PackageImporter
    results = []

    def check(name, ok, detail=""):
        results.append({"name": name, "ok": bool(ok), "detail": str(detail)[:400]})

    def guarded(name, fn):
        try:
            fn()
        except Exception as e:  # noqa: BLE001
            check(name, False, f"{type(e).__name__}: {e}")

    src, mnt = os.path.join(root, "torch"), mounts["torch"]
    x = torch.load(os.path.join(src, "input.pt"))

    def torch_checks():
        want = torch.load(os.path.join(src, "model.pt"))
        for f in ("model.pt", "legacy.pt"):
            got = torch.load(os.path.join(mnt, f))
            check(f"torch.load({f}) from the mount equals the original state_dict exactly",
                  list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want), list(got))
        whole_src = torch.load(os.path.join(src, "whole.pt"))
        whole_mnt = torch.load(os.path.join(mnt, "whole.pt"))
        whole_mnt.load_state_dict(torch.load(os.path.join(mnt, "model.pt")))
        with torch.no_grad():
            a, b = whole_src(x), whole_mnt(x)
        check("the whole nn.Module loaded from the mount gives identical outputs", torch.equal(a, b),
              f"max diff {(a - b).abs().max().item()}")
    guarded("torch.load from the mount", torch_checks)

    def package_checks():
        imp = PackageImporter(os.path.join(mounts["package"], "tiny.pt"))
        net = imp.load_pickle("model", "model.pkl")
        ref_state = torch.load(os.path.join(root, "tiny-state.pt"))
        check("torch.package PackageImporter on the mounted .pt loads the model with the original weights",
              all(torch.equal(net.state_dict()[k], ref_state[k]) for k in ref_state), list(net.state_dict()))
        sys.path.insert(0, os.path.join(root, "pkgsrc"))
        import mymodels
        ref = mymodels.TinyNet()
        ref.load_state_dict(ref_state)
        with torch.no_grad():
            check("the torch.package model gives identical outputs", torch.equal(net(x), ref(x)))
    guarded("torch.package from the mount", package_checks)

    def onnx_checks():
        path = os.path.join(mounts["onnx"], "model.onnx")
        m = onnx.load(path, load_external_data=True)
        onnx.checker.check_model(m)
        check("onnx.load(load_external_data=True) + onnx.checker.check_model on the mount", True)
        with open(os.path.join(root, "onnx-ref.json")) as f:
            ref = json.load(f)
        arrays = {t.name: numpy_helper.to_array(t) for t in m.graph.initializer}
        check("ONNX initializers read from the mounted external data equal the originals",
              set(arrays) == {"W", "B"} and all(np.array_equal(arrays[k], np.array(ref[k], dtype=np.float32))
                                                for k in ref), sorted(arrays))
        xs = x.numpy()
        y = xs @ arrays["W"] + arrays["B"]
        yr = xs @ np.array(ref["W"], dtype=np.float32) + np.array(ref["B"], dtype=np.float32)
        check("the ONNX graph's MatMul+Add on the mounted weights equals the original", np.array_equal(y, yr))
    guarded("onnx from the mount", onnx_checks)

    def hf_checks():
        d_src, d_mnt = os.path.join(root, "hf"), mounts["hf"]
        with open(os.path.join(d_mnt, "model.safetensors.index.json")) as f:
            wm = json.load(f)["weight_map"]
        loaded = {}
        for shard in sorted(set(wm.values())):
            got = read_safetensors(os.path.join(d_mnt, shard))
            want = read_safetensors(os.path.join(d_src, shard))
            check(f"HF shard {shard} read through the mount equals the original tensors",
                  list(got) == list(want) and all(torch.equal(got[k], want[k]) for k in want))
            loaded.update({k: (shard, v) for k, v in got.items()})
        check("every tensor of the mounted HF model is where the index says",
              all(loaded[k][0] == s for k, s in wm.items()) and set(loaded) == set(wm))
    guarded("Hugging Face from the mount", hf_checks)

    def mlflow_checks():
        d_src, d_mnt = os.path.join(root, "mlflow"), mounts["mlflow"]
        a = torch.load(os.path.join(d_src, "data", "model.pth"))
        b = torch.load(os.path.join(d_mnt, "data", "model.pth"))
        with torch.no_grad():
            check("the MLflow pytorch model loaded from the mount gives identical outputs", torch.equal(a(x), b(x)))
    guarded("MLflow from the mount", mlflow_checks)
    print(json.dumps(results))


# ---------------------------------------------------------------------------------------------
# Harness side.

def lib(h, *args, timeout=600):
    return h.run([LIB_PYTHON, HERE, "lib", *args], timeout=timeout)


def pack(h, name, *extra):
    pkg = os.path.join(h.tmp, f"{name}{'-strict' if '--strict' in extra else ''}.tpkg")
    r = h.tpkg("pack", os.path.join(h.tmp, "models", name), "-o", pkg, "-q", *extra, timeout=600)
    return r, pkg


def main():
    with Harness("formats", deadline=840) as h:
        h.section("make the models with the real libraries")
        probe = h.run([LIB_PYTHON, "-c", "import torch, onnx"], timeout=300)
        if not h.check(f"{LIB_PYTHON} has torch and onnx (scripts/install-deps: python3-torch python3-onnx)",
                       probe.returncode == 0, tail(probe.stderr)):
            return
        models = os.path.join(h.tmp, "models")
        os.makedirs(models)
        r = lib(h, "make", models)
        if not h.check("models made (torch.save, torch.package, onnx.save_model, HF, MLflow)", r.returncode == 0,
                       tail(r.stderr, 2000)):
            return
        h.note(f"library versions: {r.stdout.strip()}")

        formats = {}
        h.section("pack: manifest formats and warnings")
        for name in ("torch", "package", "onnx", "hf", "mlflow", "evil", "hf-missing-shard", "hf-unmapped",
                     "mlflow-broken"):
            r, pkg = pack(h, name)
            if not h.check(f"pack {name}", r.returncode == 0, tail(r.stderr)):
                continue
            info = inspect_json(h, pkg)
            formats[name] = (info or {}).get("manifest", {}).get("formats", {})
            formats[name + ":stderr"] = r.stderr

        f = formats.get("torch", {})
        pk = f.get("pickles", {})
        h.check("torch: model.pt is a torch-zip pickle with ordinary imports",
                pk.get("model.pt", {}).get("format") == "torch-zip" and not pk["model.pt"]["dangerous"]
                and "collections.OrderedDict" in pk["model.pt"]["imports"]
                and any(i.startswith("torch._utils._rebuild_tensor") for i in pk["model.pt"]["imports"]), pk.get("model.pt"))
        h.check("torch: legacy.pt is a torch-legacy pickle of 5 pickles, nothing dangerous",
                pk.get("legacy.pt", {}).get("format") == "torch-legacy" and pk["legacy.pt"]["pickles"] == 5
                and not pk["legacy.pt"]["dangerous"] and "error" not in pk["legacy.pt"], pk.get("legacy.pt"))
        h.check("torch: whole.pt imports the nn module classes",
                "torch.nn.modules.container.Sequential" in pk.get("whole.pt", {}).get("imports", []),
                pk.get("whole.pt"))
        h.check("torch: pack warns once that loading the 4 pickles runs code",
                "4 pickle files, whose imports are all ordinary: loading them runs code" in
                formats.get("torch:stderr", ""), tail(formats.get("torch:stderr")))

        pk = formats.get("package", {}).get("pickles", {}).get("tiny.pt", {})
        h.check("torch.package: recognised, its .pkl members scanned, its Python sources counted",
                pk.get("format") == "torch.package" and pk.get("python_sources", 0) >= 1
                and "mymodels.TinyNet" in pk.get("imports", []) and not pk.get("dangerous"), pk)
        h.check("torch.package: pack notes the Python sources", "Python source files" in
                formats.get("package:stderr", ""), tail(formats.get("package:stderr")))

        ox = (formats.get("onnx", {}).get("onnx") or [{}])[0]
        ext = ox.get("external_data", [])
        h.check("onnx: model recognised with its external data (W, B in model.onnx_data)",
                ox.get("model") == "model.onnx" and sorted(e["tensor"] for e in ext) == ["B", "W"]
                and all(e["location"] == "model.onnx_data" for e in ext), ox)
        h.check("onnx: offsets and lengths recorded (W 128 bytes, B 16 bytes) and no warnings",
                {e["tensor"]: e["length"] for e in ext} == {"W": 128, "B": 16}
                and "warning" not in formats.get("onnx:stderr", ""), f"{ext} {tail(formats.get('onnx:stderr'))}")
        h.check("onnx: producer and opset recorded", ox.get("producer", "").startswith("torshpkg-test")
                and ox.get("opsets", {}).get("") == 13, ox)

        hf = (formats.get("hf", {}).get("huggingface") or [{}])[0]
        h.check("hf: recognised as a Hugging Face model with architecture and dtype from config.json",
                hf.get("architectures") == ["LlamaForCausalLM"] and hf.get("model_type") == "llama"
                and hf.get("torch_dtype") == "bfloat16" and hf.get("config") == "config.json", hf)
        h.check("hf: index, both shards, tokenizer files, parameter count",
                hf.get("index") == "model.safetensors.index.json"
                and hf.get("shards") == ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
                and set(hf.get("tokenizer", [])) == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}
                and hf.get("parameters") == 32 * 8 + 64 + 64 + 8 + 32 * 8
                and hf.get("dtypes") == {"BF16": 4, "F32": 1}, hf)
        h.check("hf: a good layout packs without warnings", "warning" not in formats.get("hf:stderr", ""),
                tail(formats.get("hf:stderr")))
        h.check("hf-missing-shard: warned about the missing shard",
                "model-00003-of-00003.safetensors, which is not in the package" in
                formats.get("hf-missing-shard:stderr", ""), tail(formats.get("hf-missing-shard:stderr")))
        h.check("hf-unmapped: warned about lm_head.weight missing from the weight map",
                "missing from the weight_map" in formats.get("hf-unmapped:stderr", "")
                and "lm_head.weight" in formats.get("hf-unmapped:stderr", ""), tail(formats.get("hf-unmapped:stderr")))

        ml = (formats.get("mlflow", {}).get("mlflow") or [{}])[0]
        h.check("mlflow: flavors and artifacts recorded",
                set(ml.get("flavors", {})) == {"python_function", "pytorch"}
                and ml["flavors"]["python_function"].get("loader_module") == "mlflow.pytorch"
                and ml.get("artifacts") == ["data", "conda.yaml", "python_env.yaml"]
                and ml.get("mlflow_version") == "2.5.0", ml)
        h.check("mlflow: data/model.pth scanned as a pickle",
                formats.get("mlflow", {}).get("pickles", {}).get("data/model.pth", {}).get("format") == "torch-zip")
        h.check("mlflow-broken: warned about the missing environment files",
                "conda.yaml is not in the package" in formats.get("mlflow-broken:stderr", "")
                and "python_env.yaml is not in the package" in formats.get("mlflow-broken:stderr", ""),
                tail(formats.get("mlflow-broken:stderr")))

        pk = formats.get("evil", {}).get("pickles", {})
        h.check("evil: model.pkl flagged (posix.system or os.system)",
                any(d in ("posix.system", "os.system") for d in pk.get("model.pkl", {}).get("dangerous", [])), pk)
        h.check("evil: pytorch_model.bin (torch.save with a payload) flagged",
                any(d in ("posix.system", "os.system") for d in pk.get("pytorch_model.bin", {}).get("dangerous", [])), pk)
        h.check("evil: pack warns that it can run arbitrary code",
                "can run arbitrary code" in formats.get("evil:stderr", ""), tail(formats.get("evil:stderr")))

        h.section("inspect shows the formats")
        for name, wants in (("hf", ["huggingface .: LlamaForCausalLM llama bfloat16", "shard     model-00001-of-00002"
                                    ".safetensors: 2 tensors, 320 parameters (2xBF16)"]),
                            ("onnx", ["onnx        model.onnx:", "2 in model.onnx_data"]),
                            ("mlflow", ["mlflow      MLmodel: flavors python_function (mlflow.pytorch), pytorch"]),
                            ("evil", ["pickle      model.pkl (pickle): DANGEROUS"]),
                            ("torch", ["pickle      legacy.pt (torch-legacy): "])):
            r = h.tpkg("inspect", os.path.join(h.tmp, f"{name}.tpkg"))
            h.check(f"inspect {name} lists {wants}", r.returncode == 0 and all(w in r.stdout for w in wants),
                    tail(r.stdout + r.stderr, 1500))

        h.section("pack --strict")
        for name in ("torch", "package", "onnx", "hf", "mlflow"):
            r, pkg = pack(h, name, "--strict")
            h.check(f"--strict accepts {name}", r.returncode == 0 and os.path.isfile(pkg), tail(r.stderr))
        for name in ("hf-missing-shard", "hf-unmapped", "mlflow-broken", "evil"):
            r, pkg = pack(h, name, "--strict")
            h.check(f"--strict refuses {name} (exit 2, no output)", r.returncode == 2 and not os.path.exists(pkg)
                    and "--strict" in r.stderr, f"exit {r.returncode}: {tail(r.stderr)}")
        # An ONNX model whose external data file is left out of the package.
        r = h.tpkg("pack", os.path.join(models, "onnx"), "-o", os.path.join(h.tmp, "onnx-nodata.tpkg"), "-q",
                   "--exclude", "model.onnx_data", "--strict")
        h.check("--strict refuses an ONNX model whose external data is excluded",
                r.returncode == 2 and "model.onnx_data is not in the package" in r.stderr, tail(r.stderr))

        h.section("mount and load with the real libraries")
        mounts = {}
        for name in ("torch", "package", "onnx", "hf", "mlflow"):
            mnt = os.path.join(h.tmp, f"mnt-{name}")
            rc, _ = h.mount(os.path.join(h.tmp, f"{name}.tpkg"), mnt, check_name=f"mount {name}.tpkg")
            if rc == 0:
                mounts[name] = mnt
        if len(mounts) == 5:
            r = lib(h, "check", models, json.dumps(mounts))
            try:
                results = json.loads(r.stdout.strip().splitlines()[-1])
            except (ValueError, IndexError):
                results = None
            if h.check("library checks ran", r.returncode == 0 and results is not None, tail(r.stderr, 2000)):
                for res in results:
                    h.check(res["name"], res["ok"], res["detail"])
        for mnt in mounts.values():
            h.check(f"unmount {os.path.basename(mnt)}", h.unmount(mnt))


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "lib":
        if sys.argv[2] == "make":
            lib_make(sys.argv[3])
        elif sys.argv[2] == "check":
            lib_check(sys.argv[3], json.loads(sys.argv[4]))
        sys.exit(0)
    main()
