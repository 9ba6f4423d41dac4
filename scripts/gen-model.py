#!/usr/bin/env python3
"""Generate a realistic, deterministic Hugging Face-style model directory for tests and benchmarks.

    gen-model.py OUTDIR [--weights-size 1G] [--shards 1] [--dtype bf16|fp16|fp32]
                        [--shape normal|heavy|quantized] [--small-files 100] [--seed 0]

Writes config.json, generation_config.json, tokenizer files, a few .py files, the weights as
safetensors (one file, or N shards plus model.safetensors.index.json) with transformer-shaped
tensors, and N small files under extra/dir_XX/. The same seed gives byte-identical files.
Needs python3 and numpy only.

--shape picks the distribution of the weight matrices (norm weights stay normal around 1.0):
  normal     normally distributed with a per-tensor standard deviation (the default)
  heavy      Student-t with 3 degrees of freedom, rescaled to the same standard deviation: the
             heavier tails (outliers) of trained weights
  quantized  normal values quantised to int8 with one absmax scale per block of 128 elements and
             dequantised back into the dtype, like a checkpoint that went through quantisation
"""
from __future__ import annotations

import argparse
import json
import os
import random
import struct
import sys
from concurrent.futures import ThreadPoolExecutor

try:
    import numpy as np
except ImportError:  # e.g. a pyenv python3 first on PATH without numpy: fall back to the system one
    for alt in ("/usr/bin/python3", "/bin/python3"):
        if os.path.exists(alt) and os.path.realpath(alt) != os.path.realpath(sys.executable) \
                and not os.environ.get("GEN_MODEL_REEXEC"):
            os.environ["GEN_MODEL_REEXEC"] = "1"
            os.execv(alt, [alt, os.path.abspath(__file__)] + sys.argv[1:])
    sys.exit("gen-model.py: needs numpy (apt-get install python3-numpy)")

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.dont_write_bytecode = True  # no __pycache__ in scripts/
import torshpkg_sizes  # noqa: E402  (scripts/torshpkg_sizes.py)

DTYPES = {"bf16": ("BF16", 2), "fp16": ("F16", 2), "fp32": ("F32", 4)}
BLOCK_ELEMS = 1 << 22  # values generated per block (16 MiB of float32 scratch)
SHAPES = ("normal", "heavy", "quantized")
HEAVY_DF = 3  # Student-t degrees of freedom of --shape heavy
QUANT_BLOCK = 128  # elements per absmax scale of --shape quantized; divides BLOCK_ELEMS, so blocks
                   # start at the same place in a tensor whichever generation block they fall in


def parse_size(s: str) -> int:
    """--weights-size: unlike the benchmarks, it takes 0 (then the smallest model plan_model makes)."""
    return torshpkg_sizes.parse_size(s, allow_zero=True, examples="1G, 64M, 512K")


# ---------------------------------------------------------------------------------------------
# Model shape

def plan_model(target_bytes: int, elem: int):
    """A llama-like config whose parameters fill about target_bytes."""
    params = max(target_bytes // elem, 4096)
    h = 64
    for cand in (64, 128, 256, 512, 768, 1024, 1536, 2048, 2560, 3072, 4096, 5120):
        inter = cand * 11 // 4 // 64 * 64 or 64
        per_layer = 2 * cand * cand + 2 * (cand // 4) * cand + 3 * inter * cand + 2 * cand
        if 16 * per_layer + 2 * 256 * cand <= params:
            h = cand
    inter = h * 11 // 4 // 64 * 64 or 64
    heads = max(1, h // 128) if h >= 512 else max(1, h // 64)
    kv_heads = max(1, heads // 4)
    head_dim = h // heads
    kv = kv_heads * head_dim
    per_layer = 2 * h * h + 2 * kv * h + 3 * inter * h + 2 * h
    vocab_target = min(32000, max(256, params // 5 // (2 * h)))
    layers = max(1, (params - 2 * vocab_target * h - h) // per_layer)
    # the embeddings absorb the remainder so the total lands close to the target
    vocab = max(256, (params - layers * per_layer - h) // (2 * h) // 8 * 8)
    cfg = dict(hidden_size=h, intermediate_size=inter, num_attention_heads=heads, num_key_value_heads=kv_heads,
               num_hidden_layers=layers, vocab_size=vocab, head_dim=head_dim)
    tensors = [("model.embed_tokens.weight", (vocab, h), 0.02)]
    rnd = random.Random(1234 + h)
    for i in range(layers):
        p = f"model.layers.{i}."
        f = lambda: 0.02 * (0.5 + rnd.random())  # noqa: E731  per-tensor scale
        tensors += [
            (p + "input_layernorm.weight", (h,), "norm"),
            (p + "self_attn.q_proj.weight", (h, h), f()),
            (p + "self_attn.k_proj.weight", (kv, h), f()),
            (p + "self_attn.v_proj.weight", (kv, h), f()),
            (p + "self_attn.o_proj.weight", (h, h), f()),
            (p + "post_attention_layernorm.weight", (h,), "norm"),
            (p + "mlp.gate_proj.weight", (inter, h), f()),
            (p + "mlp.up_proj.weight", (inter, h), f()),
            (p + "mlp.down_proj.weight", (h, inter), f()),
        ]
    tensors += [("model.norm.weight", (h,), "norm"), ("lm_head.weight", (vocab, h), 0.02)]
    return cfg, tensors


def numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---------------------------------------------------------------------------------------------
# Tensor data

def to_dtype(x: np.ndarray, dtype: str) -> np.ndarray:
    if dtype == "fp32":
        return x
    if dtype == "fp16":
        return x.astype(np.float16)
    # bf16: round-to-nearest-even on the upper 16 bits of the float32 pattern (no NaNs here)
    u = x.view(np.uint32)
    bias = (u >> 16) & 1
    bias += 0x7FFF
    u += bias
    u >>= 16
    return u.astype(np.uint16)


def student_t(rng: np.random.Generator, n: int, df: int) -> np.ndarray:
    """Student-t values with unit variance, in float32: z / sqrt(chi2/df) rescaled by sqrt((df-2)/df).
    chi2(df) = 2 * Gamma(df/2); float32 normal and gamma draws are about twice as fast as
    Generator.standard_t (float64 only)."""
    z = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_gamma(df / 2, n, dtype=np.float32)
    np.maximum(g, np.float32(1e-30), out=g)  # a zero draw would give inf
    g *= np.float32(2 / (df - 2))  # chi2/(df-2) = (chi2/df) * (df/(df-2)): t / sd(t) in one divide
    np.sqrt(g, out=g)
    z /= g
    return z


def quantize_dequantize(x: np.ndarray, block: int) -> np.ndarray:
    """int8 absmax quantisation per block of `block` consecutive elements, then back to float32:
    each block holds at most 255 distinct values, multiples of its own scale."""
    n = x.size
    pad = (-n) % block  # only the last block of a tensor can be short
    v = np.concatenate([x, np.zeros(pad, np.float32)]) if pad else x
    v = v.reshape(-1, block)
    s = np.abs(v).max(axis=1, keepdims=True) / np.float32(127)
    s[s == 0] = 1
    q = np.rint(v / s)
    np.clip(q, -127, 127, out=q)
    q *= s
    return q.reshape(-1)[:n]


def gen_block(seed: int, tindex: int, bindex: int, n: int, scale, dtype: str, shape: str = "normal") -> bytes:
    rng = np.random.Generator(np.random.SFC64(np.random.SeedSequence([seed, tindex, bindex])))
    if scale == "norm" or shape != "heavy":
        x = rng.standard_normal(n, dtype=np.float32)
    else:
        x = student_t(rng, n, HEAVY_DF)
    if scale == "norm":  # RMSNorm weights: around 1.0, whatever the shape (they are rarely quantised)
        x *= np.float32(0.05)
        x += np.float32(1.0)
    else:
        x *= np.float32(scale)
        if shape == "quantized":
            x = quantize_dequantize(x, QUANT_BLOCK)
    y = to_dtype(x, dtype)
    return y.astype(y.dtype.newbyteorder("<"), copy=False).tobytes()


def safetensors_header(entries, dtype_name: str, elem: int, metadata: dict) -> tuple[bytes, int]:
    hdr = {"__metadata__": metadata}
    off = 0
    for name, shape, _scale, _idx in entries:
        size = numel(shape) * elem
        hdr[name] = {"dtype": dtype_name, "shape": list(shape), "data_offsets": [off, off + size]}
        off += size
    text = json.dumps(hdr, separators=(",", ":")).encode()
    text += b" " * ((-len(text)) % 8)  # like the reference implementation: pad to 8-byte alignment
    return struct.pack("<Q", len(text)) + text, off


def write_safetensors(path: str, entries, args, pool: ThreadPoolExecutor) -> int:
    dtype_name, elem = DTYPES[args.dtype]
    header, data_size = safetensors_header(entries, dtype_name, elem, {"format": "pt"})
    tmp = path + ".part"
    with open(tmp, "wb", buffering=0) as f:
        f.write(header)
        jobs = []
        for name, shape, scale, tindex in entries:
            n = numel(shape)
            for b, start in enumerate(range(0, n, BLOCK_ELEMS)):
                jobs.append((tindex, b, min(BLOCK_ELEMS, n - start), scale))
        # bounded look-ahead keeps memory flat while both cores generate
        window = 2 * (pool._max_workers or 2) + 1
        pending = []
        it = iter(jobs)
        for job in it:
            pending.append(pool.submit(gen_block, args.seed, job[0], job[1], job[2], job[3], args.dtype,
                                       args.shape))
            if len(pending) >= window:
                f.write(pending.pop(0).result())
        for fut in pending:
            f.write(fut.result())
    os.replace(tmp, path)
    return len(header) + data_size


# ---------------------------------------------------------------------------------------------
# Small files

WORDS = ("the model tensor layer weight attention head token vocab merge config shard checkpoint "
         "gradient batch epoch learning rate warmup decay dropout norm embedding rotary position "
         "sequence length context window cache quantize float precision kernel fused optimizer").split()


def words(rnd: random.Random, n: int) -> str:
    return " ".join(rnd.choice(WORDS) for _ in range(n))


def small_json(rnd: random.Random, i: int) -> str:
    d = {"id": i, "name": f"entry_{i:04d}", "enabled": rnd.random() < 0.5,
         "threshold": round(rnd.random(), 6), "tags": [rnd.choice(WORDS) for _ in range(rnd.randint(1, 6))],
         "params": {rnd.choice(WORDS): rnd.randint(0, 10 ** rnd.randint(1, 9)) for _ in range(rnd.randint(1, 8))},
         "note": words(rnd, rnd.randint(3, 30))}
    return json.dumps(d, indent=rnd.choice([None, 1, 2])) + "\n"


def small_py(rnd: random.Random, i: int) -> str:
    fn = rnd.choice(WORDS)
    lines = [f'"""Helper {i}: {words(rnd, rnd.randint(3, 12))}."""', "import math", "",
             f"def {fn}_{i}(x, scale={rnd.randint(1, 64)}):"]
    for k in range(rnd.randint(1, 8)):
        lines.append(f"    x = x * {rnd.random():.4f} + math.sqrt(abs(x) + {k})  # {words(rnd, rnd.randint(1, 5))}")
    lines += ["    return x / scale", ""]
    return "\n".join(lines)


def small_txt(rnd: random.Random, i: int) -> str:
    return "\n".join(words(rnd, rnd.randint(4, 14)) for _ in range(rnd.randint(2, 12))) + "\n"


def write_small_files(out: str, n: int, seed: int) -> None:
    rnd = random.Random(f"small-{seed}")
    makers = ((".json", small_json), (".py", small_py), (".txt", small_txt))
    ndirs = max(1, min(100, (n + 99) // 100))
    for i in range(n):
        d = os.path.join(out, "extra", f"dir_{i % ndirs:02d}")
        if i < ndirs:
            os.makedirs(d, exist_ok=True)
        ext, make = makers[rnd.randrange(3)]
        with open(os.path.join(d, f"file_{i:04d}{ext}"), "w", encoding="utf-8") as f:
            f.write(make(rnd, i))


# ---------------------------------------------------------------------------------------------
# Config, tokenizer and code files

def write_text(path: str, text: str) -> None:
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_aux_files(out: str, cfg: dict, args) -> None:
    rnd = random.Random(f"aux-{args.seed}")
    torch_dtype = {"bf16": "bfloat16", "fp16": "float16", "fp32": "float32"}[args.dtype]
    config = {"architectures": ["TorshForCausalLM"], "model_type": "torsh", "auto_map": {
        "AutoConfig": "configuration_torsh.TorshConfig", "AutoModelForCausalLM": "modeling_torsh.TorshForCausalLM"},
        "hidden_size": cfg["hidden_size"], "intermediate_size": cfg["intermediate_size"],
        "num_attention_heads": cfg["num_attention_heads"], "num_key_value_heads": cfg["num_key_value_heads"],
        "num_hidden_layers": cfg["num_hidden_layers"], "vocab_size": cfg["vocab_size"],
        "head_dim": cfg["head_dim"], "hidden_act": "silu", "max_position_embeddings": 4096,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
        "torch_dtype": torch_dtype, "bos_token_id": 1, "eos_token_id": 2, "transformers_version": "4.44.0"}
    write_text(os.path.join(out, "config.json"), json.dumps(config, indent=2) + "\n")
    write_text(os.path.join(out, "generation_config.json"), json.dumps(
        {"bos_token_id": 1, "eos_token_id": 2, "do_sample": True, "temperature": 0.7, "top_p": 0.9,
         "max_new_tokens": 512, "transformers_version": "4.44.0"}, indent=2) + "\n")

    # a byte-level BPE vocabulary: bytes first, then merged pieces
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab[f"<0x{b:02X}>"] = len(vocab)
    pieces = set()
    merges = []
    nvocab = min(cfg["vocab_size"], 8000)
    while len(vocab) < nvocab:
        a = "".join(rnd.choice(letters) for _ in range(rnd.randint(1, 4)))
        b = "".join(rnd.choice(letters) for _ in range(rnd.randint(1, 4)))
        piece = ("\u0120" if rnd.random() < 0.4 else "") + a + b
        if piece in pieces:
            continue
        pieces.add(piece)
        vocab[piece] = len(vocab)
        merges.append(f"{piece[:-len(b)]} {b}")
    tokenizer = {"version": "1.0", "truncation": None, "padding": None,
                 "added_tokens": [{"id": i, "content": t, "single_word": False, "lstrip": False, "rstrip": False,
                                   "normalized": False, "special": True} for t, i in list(vocab.items())[:3]],
                 "normalizer": None, "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": False},
                 "post_processor": None, "decoder": {"type": "ByteLevel"},
                 "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>", "fuse_unk": False,
                           "byte_fallback": True, "vocab": vocab, "merges": merges}}
    write_text(os.path.join(out, "tokenizer.json"), json.dumps(tokenizer, ensure_ascii=False) + "\n")
    write_text(os.path.join(out, "tokenizer_config.json"), json.dumps(
        {"add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
         "unk_token": "<unk>", "model_max_length": 4096, "tokenizer_class": "PreTrainedTokenizerFast",
         "clean_up_tokenization_spaces": False}, indent=2) + "\n")
    write_text(os.path.join(out, "special_tokens_map.json"), json.dumps(
        {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}, indent=2) + "\n")
    write_text(os.path.join(out, "vocab.json"), json.dumps(vocab, ensure_ascii=False) + "\n")
    write_text(os.path.join(out, "merges.txt"), "#version: 0.2\n" + "\n".join(merges) + "\n")

    write_text(os.path.join(out, "configuration_torsh.py"), f'''"""Configuration of the Torsh test model."""
from transformers import PretrainedConfig


class TorshConfig(PretrainedConfig):
    model_type = "torsh"

    def __init__(self, vocab_size={cfg["vocab_size"]}, hidden_size={cfg["hidden_size"]},
                 intermediate_size={cfg["intermediate_size"]}, num_hidden_layers={cfg["num_hidden_layers"]},
                 num_attention_heads={cfg["num_attention_heads"]}, num_key_value_heads={cfg["num_key_value_heads"]},
                 rms_norm_eps=1e-5, rope_theta=10000.0, **kwargs):
        self.vocab_size = vocab_size
        self.hidden_size = hidden_size
        self.intermediate_size = intermediate_size
        self.num_hidden_layers = num_hidden_layers
        self.num_attention_heads = num_attention_heads
        self.num_key_value_heads = num_key_value_heads
        self.rms_norm_eps = rms_norm_eps
        self.rope_theta = rope_theta
        super().__init__(**kwargs)
''')
    write_text(os.path.join(out, "modeling_torsh.py"), '''"""A llama-style decoder, enough to load the generated weights."""
import torch
from torch import nn

from .configuration_torsh import TorshConfig


class RMSNorm(nn.Module):
    def __init__(self, dim, eps=1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x):
        var = x.float().pow(2).mean(-1, keepdim=True)
        return (x.float() * torch.rsqrt(var + self.eps)).to(x.dtype) * self.weight


class MLP(nn.Module):
    def __init__(self, config: TorshConfig):
        super().__init__()
        self.gate_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(config.intermediate_size, config.hidden_size, bias=False)

    def forward(self, x):
        return self.down_proj(nn.functional.silu(self.gate_proj(x)) * self.up_proj(x))
''')
    write_text(os.path.join(out, "tokenization_torsh.py"), '''"""Fast tokenizer of the Torsh test model (byte-level BPE)."""
from transformers import PreTrainedTokenizerFast


class TorshTokenizerFast(PreTrainedTokenizerFast):
    vocab_files_names = {"tokenizer_file": "tokenizer.json", "vocab_file": "vocab.json", "merges_file": "merges.txt"}
    model_input_names = ["input_ids", "attention_mask"]

    def __init__(self, *args, add_bos_token=True, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_bos_token = add_bos_token
''')
    write_text(os.path.join(out, "README.md"), "---\nlicense: apache-2.0\nlibrary_name: transformers\n---\n\n"
               f"# torsh-test-model\n\nSynthetic {torch_dtype} weights ({cfg['num_hidden_layers']} layers, "
               f"hidden {cfg['hidden_size']}) generated by gen-model.py with seed {args.seed}.\n")


# ---------------------------------------------------------------------------------------------

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("outdir")
    ap.add_argument("--weights-size", type=parse_size, default=parse_size("1G"),
                    help="total size of the weights, e.g. 1G, 64M (default 1G; the smallest model is about 150K)")
    ap.add_argument("--shards", type=int, default=1, help="number of safetensors shards (default 1)")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default="bf16")
    ap.add_argument("--shape", choices=SHAPES, default="normal",
                    help="distribution of the weight values (default normal; see above)")
    ap.add_argument("--small-files", type=int, default=100, help="small files under extra/ (default 100)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.shards < 1 or args.small_files < 0 or args.seed < 0:
        ap.error("--shards must be >= 1, --small-files and --seed >= 0")

    out = args.outdir
    os.makedirs(out, exist_ok=True)
    dtype_name, elem = DTYPES[args.dtype]
    cfg, tensors = plan_model(args.weights_size, elem)
    entries = [(name, shape, scale, i) for i, (name, shape, scale) in enumerate(tensors)]
    total = sum(numel(s) for _, s, _, _ in entries) * elem

    # split the tensor list into contiguous shards of about equal bytes
    shards = [[] for _ in range(min(args.shards, len(entries)))]
    acc = 0
    for e in entries:
        k = min(len(shards) - 1, acc * len(shards) // max(total, 1))
        shards[k].append(e)
        acc += numel(e[1]) * elem
    shards = [s for s in shards if s] or [[]]
    n = len(shards)
    with ThreadPoolExecutor(max_workers=max(1, args.threads)) as pool:
        if n == 1:
            write_safetensors(os.path.join(out, "model.safetensors"), shards[0], args, pool)
        else:
            weight_map = {}
            for k, shard in enumerate(shards):
                fname = f"model-{k + 1:05d}-of-{n:05d}.safetensors"
                write_safetensors(os.path.join(out, fname), shard, args, pool)
                for name, *_ in shard:
                    weight_map[name] = fname
            write_text(os.path.join(out, "model.safetensors.index.json"), json.dumps(
                {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}, indent=2) + "\n")

    write_aux_files(out, cfg, args)
    write_small_files(out, args.small_files, args.seed)
    params = total // elem
    shape = "" if args.shape == "normal" else f", {args.shape}"
    print(f"{out}: {len(entries)} tensors, {params} parameters ({args.dtype}{shape}), {total} bytes of weights "
          f"in {n} file(s), {args.small_files} small files")
    return 0


if __name__ == "__main__":
    sys.exit(main())
