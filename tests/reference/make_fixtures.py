#!/usr/bin/env python3
"""Writes the model fixtures that the C++ tests compare against (format_version 1).

Independent references: PyTorch + Hugging Face transformers (model forward, loss, greedy
decoding), tokenizers (a tiny byte-level BPE) and PEFT (TinyLoRA adapters). The script
  1. makes its own virtual environment (default build/reference-venv; --venv or
     TINYLORA_REFERENCE_VENV to change) from tests/reference/requirements.txt (pinned) and
     re-runs itself inside it; a stamp file holds the requirements' sha256 so the install
     happens once;
  2. (a) writes tests/reference/fixtures/tiny_llama/ and tiny_qwen2/: tiny random decoders
     (2 layers, hidden 64, 4 heads, 2 kv heads, intermediate 128, vocab 512) saved with
     save_pretrained(safe_serialization=True) in float32, with a 512-token byte-level BPE
     tokenizer.json trained on the first 2000 GSM8K training questions; then
     model_tiny_{llama,qwen2}.safetensors/.json: a right-padded batch of 3 sequences, its
     fp32 logits, the masked next-token cross-entropy, and a 16-token greedy continuation;
     (b) model_smollm2.safetensors/.json from SmolLM2-135M-Instruct.Q4_1.gguf loaded by
     transformers (dequantized to float32): ids, logits of the first 256 vocabulary entries and
     the top 8 ids of three prompts, a masked loss on a GSM8K question+answer, and a 32-token
     greedy continuation of the chat-formatted question;
     (c) model_tiny_{llama,qwen2}_tinylora_<case>.safetensors/.json and the PEFT adapter folders
     tiny_{llama,qwen2}/peft_tinylora_<case>/ for several (u, weight_tying) with fixed non-zero v:
     adapter state dict (A, B, P, v), logits, masked loss and dloss/dv;
     (d) model_smollm2_tinylora_<case>.safetensors/.json and the PEFT adapter folders
     smollm2/peft_tinylora_<case>/ on SmolLM2-135M-Instruct (the GGUF as in (b)): u = 1 over all
     210 projections tied into 13 groups (weight_tying 0.938; its A and B are rounded to float16 in
     the PEFT model first and saved as F16, to keep the file under 2 MB) and u = 4 on q_proj/v_proj
     with weight_tying 0.5; fixed non-zero v, 2 short sequences (16 and 13 tokens): logits of the
     first 256 vocabulary entries, top-8 and logsumexp, masked loss and dloss/dv; PEFT reloads each
     saved folder and must reproduce its logits;
     (e) model_tiny_llama_exported_peft.safetensors/.json: PEFT loads the adapter tinylora exported
     (fixtures/exported_peft_adapter/, written by the C++ test) onto the tiny Llama, every saved
     tensor is checked to be the one PEFT holds, and its logits and loss on the tiny batch are saved;
  3. skips an output whose sidecar already has this format_version and requirements hash
     (--force regenerates), and prints what it wrote.

Usage: python3 tests/reference/make_fixtures.py [--venv DIR]
           [--only tiny,smollm2,peft,smollm2_peft,export] [--gsm8k train.jsonl]
           [--model SmolLM2-135M-Instruct.Q4_1.gguf] [--force]
Regeneration order for the export check (e), which needs tinylora's output first:
  1. make_fixtures.py --only tiny (the tiny Llama the export is built on), then build the tests;
  2. TINYLORA_WRITE_EXPORT_FIXTURE=1 <build>/tests/test_peft_adapter   (writes exported_peft_adapter/)
  3. make_fixtures.py --only export   (PEFT loads it; reruns whenever the folder's sha256 changes)
  4. <build>/tests/test_peft_adapter   (tinylora's logits against PEFT's, 1e-4)
Loss definition used everywhere: logits at position t predict token t+1; the loss is the mean,
over positions t with loss_mask[t+1] = 1, of -log softmax(logits[t])[ids[t+1]] (float64 maths on
the fp32 logits). Prompt tokens and padding have loss_mask 0, answer tokens 1.
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

FORMAT_VERSION = 1
HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
FIXTURES = HERE / "fixtures"
REQUIREMENTS = HERE / "requirements.txt"
MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
SEED = 20260524
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 (as in SmolLM2)
TINY_VOCAB = 512
INIT_RANGE = 0.2  # 0.1 makes the tied tiny Llama repeat one token greedily; 0.2 does not
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
# SmolLM2's chat template (ChatML with its default system prompt), used for the tiny tokenizers.
CHATML = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face"
    "<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% endif %}"
)
LOSS_DEFINITION = (
    "loss = sum_{b,t: loss_mask[b,t+1]=1} -log_softmax(logits[b,t])[input_ids[b,t+1]] / "
    "count_{b,t: loss_mask[b,t+1]=1}, t in [0, n_seq-2], computed in float64 from the fp32 "
    "logits; loss_mask is 1 on answer tokens and 0 on prompt tokens and padding")


def requirements_sha256() -> str:
    return hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()


# ---- 1. the virtual environment -------------------------------------------------------------
def ensure_venv(venv_dir: Path):
    if os.environ.get("TINYLORA_REFERENCE_IN_VENV") == "1":
        return
    python = venv_dir / "bin" / "python"
    stamp = venv_dir / ".tinylora-requirements.sha256"
    if not python.exists():
        print(f"make_fixtures: creating {venv_dir}", flush=True)
        venv.create(venv_dir, with_pip=True)
    if not stamp.exists() or stamp.read_text().strip() != requirements_sha256():
        print(f"make_fixtures: installing {REQUIREMENTS.relative_to(REPO)} into {venv_dir} "
              "(torch from PyPI is several GB; takes minutes)", flush=True)
        start = time.time()
        subprocess.run([str(python), "-m", "pip", "install", "-q", "-r", str(REQUIREMENTS)], check=True)
        stamp.write_text(requirements_sha256() + "\n")
        print(f"make_fixtures: install took {time.time() - start:.0f} s", flush=True)
    env = dict(os.environ, TINYLORA_REFERENCE_IN_VENV="1", HF_HUB_OFFLINE="1",
               TRANSFORMERS_OFFLINE="1", TOKENIZERS_PARALLELISM="false", PYTHONHASHSEED="0")
    os.execve(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]], env)


# ---- helpers --------------------------------------------------------------------------------
def versions() -> dict:
    import numpy
    import peft
    import safetensors
    import tokenizers
    import torch
    import transformers
    return {"python": sys.version.split()[0], "torch": torch.__version__,
            "transformers": transformers.__version__, "peft": peft.__version__,
            "tokenizers": tokenizers.__version__, "safetensors": safetensors.__version__,
            "numpy": numpy.__version__, "requirements_sha256": requirements_sha256()}


def up_to_date(sidecar: Path, extra_files=()) -> bool:
    if not sidecar.exists() or not all(Path(f).exists() for f in extra_files):
        return False
    try:
        meta = json.loads(sidecar.read_text())
    except json.JSONDecodeError:
        return False
    return (meta.get("format_version") == FORMAT_VERSION and
            meta.get("versions", {}).get("requirements_sha256") == requirements_sha256())


def write_json(path: Path, obj):
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1, sort_keys=False) + "\n")
    tmp.replace(path)
    print(f"  wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)", flush=True)


def write_tensors(path: Path, tensors: dict, meta: dict):
    from safetensors.torch import save_file
    tmp = path.with_name(path.name + ".tmp")
    contiguous = {k: v.detach().contiguous().cpu() for k, v in tensors.items()}
    save_file(contiguous, str(tmp), metadata={"format_version": str(FORMAT_VERSION),
                                              "generator": "tests/reference/make_fixtures.py",
                                              **{k: str(v) for k, v in meta.items()}})
    tmp.replace(path)
    print(f"  wrote {path.relative_to(REPO)} ({path.stat().st_size} bytes)", flush=True)


def tensor_table(tensors: dict) -> dict:
    return {k: {"dtype": str(v.dtype).replace("torch.", ""), "shape": list(v.shape)}
            for k, v in tensors.items()}


def weight_summary(safetensors_path: Path) -> dict:
    """Per tensor: shape, dtype, sum, abs-sum and the first 4 values, read with numpy."""
    from safetensors.numpy import load_file
    out = {}
    for name, a in sorted(load_file(str(safetensors_path)).items()):
        flat = a.reshape(-1).astype("float64")
        out[name] = {"dtype": str(a.dtype), "shape": list(a.shape), "sum": float(flat.sum()),
                     "abs_sum": float(abs(flat).sum()), "first": [float(x) for x in flat[:4]]}
    return out


def gsm8k_rows(path: Path, n: int):
    rows = []
    with path.open() as f:
        for line in f:
            rows.append(json.loads(line))
            if len(rows) == n:
                break
    return rows


def masked_loss(logits, input_ids, loss_mask):
    """(loss float64 scalar, per-position nll float64 (n_batch, n_seq-1)) per LOSS_DEFINITION."""
    import torch
    logp = torch.log_softmax(logits[:, :-1].double(), dim=-1)  # (n_batch, n_seq-1, n_vocab)
    nll = -logp.gather(-1, input_ids[:, 1:, None])[..., 0]      # (n_batch, n_seq-1)
    sup = loss_mask[:, 1:].to(torch.float64)
    return (nll * sup).sum() / sup.sum(), nll * sup


def greedy(model, context, n_new):
    """Full-recompute greedy decoding (no KV cache, no EOS stop): new ids, top1-top2 logit margins,
    the top-8 ids/logits of every step."""
    import torch
    ids = list(context)
    new, margins, top_ids, top_vals = [], [], [], []
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(input_ids=torch.tensor([ids])).logits[0, -1].float()  # (n_vocab)
            top = torch.topk(logits, 8)
            nxt = int(top.indices[0])
            new.append(nxt)
            margins.append(float(top.values[0] - top.values[1]))
            top_ids.append(top.indices)
            top_vals.append(top.values)
            ids.append(nxt)
    return new, margins, torch.stack(top_ids), torch.stack(top_vals)


def load_causal_lm(path, **kwargs):
    import torch
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32,
                                                 attn_implementation="eager", **kwargs)
    model.eval()
    return model


# ---- 2a. tiny models ------------------------------------------------------------------------
def train_tiny_tokenizer(rows):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(vocab_size=TINY_VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator([r["question"] for r in rows], trainer=trainer)
    assert tok.get_vocab_size() == TINY_VOCAB, tok.get_vocab_size()
    assert [tok.token_to_id(s) for s in SPECIALS] == [0, 1, 2]
    return tok


TINY_ARCH = {
    "tiny_llama": dict(model_type="llama", tie_word_embeddings=True, bos_token_id=1,
                       eos_token_id=2, pad_token_id=2, tokenizer=dict(
                           bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>")),
    "tiny_qwen2": dict(model_type="qwen2", tie_word_embeddings=False, bos_token_id=0,
                       eos_token_id=[2, 0], pad_token_id=0, tokenizer=dict(
                           bos_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")),
}


def make_tiny_model(name: str, tok, out_dir: Path):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM
    arch = TINY_ARCH[name]
    common = dict(vocab_size=TINY_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                  rms_norm_eps=1e-6, rope_theta=10000.0, initializer_range=INIT_RANGE,
                  tie_word_embeddings=arch["tie_word_embeddings"], bos_token_id=arch["bos_token_id"],
                  eos_token_id=arch["eos_token_id"], pad_token_id=arch["pad_token_id"])
    if arch["model_type"] == "llama":
        config, cls = LlamaConfig(**common), LlamaForCausalLM
    else:
        config, cls = Qwen2Config(**common), Qwen2ForCausalLM
    torch.manual_seed(SEED)
    model = cls(config).to(torch.float32)
    # Make norm weights and biases non-trivial so that a loader that skips them fails the test.
    g = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for pname, p in model.named_parameters():
            if pname.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif pname.endswith(".bias"):
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(str(tmp), safe_serialization=True)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, chat_template=CHATML, **arch["tokenizer"])
    hf_tok.save_pretrained(str(tmp))
    # Tokenizer files must be the one trained here, with the added specials; check the round trip.
    saved = json.loads((tmp / "tokenizer.json").read_text())
    assert len(saved["model"]["vocab"]) == TINY_VOCAB
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.replace(out_dir)
    for f in sorted(out_dir.iterdir()):
        print(f"  wrote {f.relative_to(REPO)} ({f.stat().st_size} bytes)", flush=True)


def saved_tokenizer(name: str, trained=None):
    """The tokenizer.json of the tiny model folder (the file the C++ side reads); when `trained`
    is given, checks that it encodes like the freshly trained tokenizer."""
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(str(FIXTURES / name / "tokenizer.json"))
    if trained is not None:
        probe = "Natalia sold 48/2 = <<48/2=24>>24 clips in May.\n#### 72 <|im_end|>"
        assert tok.encode(probe).ids == trained.encode(probe).ids, name
    return tok


def tiny_batch(tok, rows, pad_id: int, bos_id: int, eos_id: int):
    """3 sequences (prompt = bos + question prefix, answer = answer prefix + eos), right-padded."""
    import torch
    specs = [(0, 40, 24), (1, 28, 18), (2, 10, 8)]  # (row, prompt tokens, answer tokens)
    seqs, masks = [], []
    for row, n_prompt, n_answer in specs:
        prompt = [bos_id] + tok.encode(rows[row]["question"]).ids[: n_prompt - 1]
        answer = tok.encode(" " + rows[row]["answer"]).ids[: n_answer - 1] + [eos_id]
        assert len(prompt) == n_prompt and len(answer) == n_answer
        seqs.append(prompt + answer)
        masks.append([0] * n_prompt + [1] * n_answer)
    n_seq = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), n_seq), pad_id, dtype=torch.int64)      # (n_batch, n_seq)
    attention_mask = torch.zeros((len(seqs), n_seq), dtype=torch.int64)       # (n_batch, n_seq)
    loss_mask = torch.zeros((len(seqs), n_seq), dtype=torch.int64)            # (n_batch, n_seq)
    for b, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[b, : len(s)] = torch.tensor(s)
        attention_mask[b, : len(s)] = 1
        loss_mask[b, : len(s)] = torch.tensor(m)
    return input_ids, attention_mask, loss_mask, [len(s) for s in seqs], [sp[1] for sp in specs]


def tiny_forward_fixture(name: str, tok, rows, force: bool):
    import torch
    model_dir = FIXTURES / name
    sidecar = FIXTURES / f"model_{name}.json"
    out = FIXTURES / f"model_{name}.safetensors"
    if not force and up_to_date(sidecar, [out, model_dir / "model.safetensors", model_dir / "tokenizer.json"]):
        print(f"{name}: up to date, skipped", flush=True)
        return
    print(f"{name}:", flush=True)
    make_tiny_model(name, tok, model_dir)
    tok = saved_tokenizer(name, tok)
    model = load_causal_lm(model_dir)
    cfg = model.config
    eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
    bos = cfg.bos_token_id
    input_ids, attention_mask, loss_mask, lengths, prompt_lengths = tiny_batch(tok, rows, cfg.pad_token_id, bos, eos)
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()  # (n_batch, n_seq, n_vocab)
    loss, nll = masked_loss(logits, input_ids, loss_mask)
    loss_torch_f32 = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]),
        input_ids[:, 1:].reshape(-1).masked_fill(loss_mask[:, 1:].reshape(-1) == 0, -100),
        ignore_index=-100)
    # Each sequence alone (no padding) must give the same logits on its own positions.
    pad_check = 0.0
    with torch.no_grad():
        for b, n in enumerate(lengths):
            alone = model(input_ids=input_ids[b : b + 1, :n]).logits.float()[0]
            pad_check = max(pad_check, float((alone - logits[b, :n]).abs().max()))
    context = input_ids[0, : lengths[0]].tolist()
    new_ids, margins, top_ids, top_vals = greedy(model, context, 16)
    tensors = {
        "input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
        "logits": logits, "loss": loss.float().reshape(()), "token_nll": nll.float(),
        "greedy.context_ids": torch.tensor(context, dtype=torch.int64),
        "greedy.new_ids": torch.tensor(new_ids, dtype=torch.int64),
        "greedy.margins": torch.tensor(margins, dtype=torch.float32),
        "greedy.top8_ids": top_ids.to(torch.int64), "greedy.top8_logits": top_vals,
    }
    write_tensors(out, tensors, {"model": name})
    write_json(sidecar, {
        "format_version": FORMAT_VERSION,
        "generator": "tests/reference/make_fixtures.py",
        "model_dir": f"tests/reference/fixtures/{name}",
        "model_type": cfg.model_type, "seed": SEED, "initializer_range": INIT_RANGE,
        "init_note": "torch.manual_seed(seed) then the model constructor; norm weights 1 + 0.1*N(0,1) "
                     "and biases 0.1*N(0,1) from torch.Generator(seed + 1); saved in float32",
        "tokenizer": f"byte-level BPE, vocab {TINY_VOCAB}, trained with tokenizers on the first 2000 "
                     "GSM8K training questions (ByteLevel pre-tokenizer, no normalizer); specials "
                     + ", ".join(f"{s}={i}" for i, s in enumerate(SPECIALS)),
        "attn_implementation": "eager",
        "batch": {"n_batch": int(input_ids.shape[0]), "n_seq": int(input_ids.shape[1]),
                  "lengths": lengths, "prompt_lengths": prompt_lengths, "padding": "right",
                  "pad_token_id": int(cfg.pad_token_id),
                  "construction": "prompt = [bos] + question tokens (GSM8K train rows 0,1,2, truncated); "
                                  "answer = tokens of ' ' + answer (truncated) + [eos]"},
        "loss": float(loss), "loss_torch_cross_entropy_f32": float(loss_torch_f32),
        "loss_definition": LOSS_DEFINITION,
        "supervised_targets": int(loss_mask[:, 1:].sum()),
        "logits_note": "logits at positions with attention_mask = 0 are unspecified (padding); compare "
                       "only where attention_mask = 1",
        "max_abs_diff_padded_vs_alone": pad_check,
        "greedy": {"context": "the first sequence without padding (prompt + answer)", "new_tokens": 16,
                   "method": "full recompute each step, argmax, no EOS stop",
                   "new_ids": new_ids, "min_margin": min(margins)},
        "tensors": tensor_table(tensors),
        "weights": weight_summary(model_dir / "model.safetensors"),
        "versions": versions(),
    })
    return model


# ---- 2b. SmolLM2 from GGUF ------------------------------------------------------------------
def find_model(explicit) -> Path:
    if explicit:
        return Path(explicit)
    if os.environ.get("TINYLORA_MODEL"):
        return Path(os.environ["TINYLORA_MODEL"])
    cache = Path(os.environ.get("TINYLORA_CACHE", Path.home() / ".cache/tinylora")) / "models"
    if (cache / MODEL_FILE).exists():
        return cache / MODEL_FILE
    result = subprocess.run([str(REPO / "scripts" / "fetch-model")], capture_output=True, text=True, check=True)
    return Path(result.stdout.strip().splitlines()[-1])


def smollm2_tokenizer(model_path: Path):
    """transformers' tokenizer from the GGUF, plus the pipeline SmolLM2 really uses: GGUF
    tokenizer.ggml.pre = "smollm" splits digits individually before the GPT-2 ByteLevel regex (the
    converter drops that step), and no post-processor (the converter's would prepend a BOS)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer
    hf = AutoTokenizer.from_pretrained(str(model_path.parent), gguf_file=model_path.name)
    spec = json.loads(hf.backend_tokenizer.to_str())
    spec["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]}
    spec["post_processor"] = None
    return hf, Tokenizer.from_str(json.dumps(spec))


def smollm2_fixture(model_path: Path, rows, force: bool):
    import torch
    sidecar = FIXTURES / "model_smollm2.json"
    out = FIXTURES / "model_smollm2.safetensors"
    if not force and up_to_date(sidecar, [out]):
        print("smollm2: up to date, skipped", flush=True)
        return
    print(f"smollm2: loading {model_path}", flush=True)
    start = time.time()
    hf_tok, tok = smollm2_tokenizer(model_path)
    model = load_causal_lm(model_path.parent, gguf_file=model_path.name)
    load_s = time.time() - start
    question, answer = rows[0]["question"], rows[0]["answer"]
    chat = hf_tok.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                      add_generation_prompt=True)
    prompts = {
        "chat": chat,
        "plain": "The quick brown fox jumps over the lazy dog while the old cat sleeps in the sun.",
        "numbers": "In 2023, 1,234 apples cost $56.78; 9 x 87 = 783, 3.14159 * 2 = 6.28318 and 10^6 = 1000000.",
    }
    tensors, prompt_meta = {}, {}
    n_head = 256
    for key, text in prompts.items():
        ids = tok.encode(text).ids
        hf_ids = hf_tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids])).logits[0].float()  # (n_seq, n_vocab)
        top = torch.topk(logits, 8)
        tensors[f"{key}.input_ids"] = torch.tensor(ids, dtype=torch.int64)
        tensors[f"{key}.logits_head"] = logits[:, :n_head].clone()                      # (n_seq, 256)
        tensors[f"{key}.top8_ids"] = top.indices.to(torch.int64)                        # (n_seq, 8)
        tensors[f"{key}.top8_logits"] = top.values.clone()                              # (n_seq, 8)
        tensors[f"{key}.logsumexp"] = torch.logsumexp(logits.double(), -1).float()      # (n_seq)
        prompt_meta[key] = {"text": text, "n_tokens": len(ids),
                            "transformers_gguf_tokenizer_ids_equal": hf_ids == ids}
    # Masked loss on the chat prompt + answer (answer supervised, ends with <|im_end|>).
    im_end = tok.token_to_id("<|im_end|>")
    prompt_ids = tok.encode(chat).ids
    answer_ids = tok.encode(answer).ids + [im_end]
    ids = torch.tensor([prompt_ids + answer_ids], dtype=torch.int64)               # (1, n_seq)
    loss_mask = torch.tensor([[0] * len(prompt_ids) + [1] * len(answer_ids)], dtype=torch.int64)
    with torch.no_grad():
        logits = model(input_ids=ids).logits.float()                                # (1, n_seq, n_vocab)
    loss, nll = masked_loss(logits, ids, loss_mask)
    tensors["loss.input_ids"] = ids[0]
    tensors["loss.loss_mask"] = loss_mask[0]
    tensors["loss.token_nll"] = nll[0].float()
    tensors["loss.loss"] = loss.float().reshape(())
    new_ids, margins, top_ids, top_vals = greedy(model, prompt_ids, 32)
    tensors["greedy.new_ids"] = torch.tensor(new_ids, dtype=torch.int64)
    tensors["greedy.margins"] = torch.tensor(margins, dtype=torch.float32)
    tensors["greedy.top8_ids"] = top_ids.to(torch.int64)
    tensors["greedy.top8_logits"] = top_vals
    write_tensors(out, tensors, {"model": MODEL_FILE})
    cfg = model.config
    write_json(sidecar, {
        "format_version": FORMAT_VERSION,
        "generator": "tests/reference/make_fixtures.py",
        "model_file": MODEL_FILE,
        "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
        "loading": "AutoModelForCausalLM.from_pretrained(dir, gguf_file=name, dtype=torch.float32, "
                   "attn_implementation='eager'); transformers dequantizes every Q4_1/Q6_K/... tensor to "
                   "float32 at load, and undoes llama.cpp's row permutation of attn_q/attn_k (the RoPE "
                   "layout) so that q/k are in Hugging Face order",
        "load_seconds": round(load_s, 1),
        "config": {k: getattr(cfg, k, None) for k in [
            "model_type", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
            "num_key_value_heads", "rms_norm_eps", "vocab_size", "tie_word_embeddings",
            "max_position_embeddings", "bos_token_id", "eos_token_id"]}
                  | {"rope_parameters": getattr(cfg, "rope_parameters", None)},
        "tokenizer": "transformers' GGUF tokenizer with SmolLM2's real pre-tokenizer (Digits(individual) "
                     "then ByteLevel GPT-2 regex) and no post-processor; ids are of the text as is "
                     "(special tokens in the text are matched as added tokens)",
        "prompts": prompt_meta,
        "logits_note": f"logits_head holds columns 0..{n_head - 1} of the fp32 logits; top8_* the 8 largest "
                       "logits per position (descending); logsumexp over the full vocabulary",
        "loss": {"value": float(loss), "definition": LOSS_DEFINITION,
                 "construction": "chat prompt ids (as 'chat') + ids of the GSM8K answer + <|im_end|>",
                 "prompt_tokens": len(prompt_ids), "answer_tokens": len(answer_ids)},
        "greedy": {"context": "chat.input_ids", "new_tokens": 32,
                   "method": "full recompute each step, argmax, no EOS stop",
                   "new_ids": new_ids, "text": tok.decode(new_ids), "min_margin": min(margins)},
        "gsm8k_row": 0,
        "tensors": tensor_table(tensors),
        "versions": versions(),
    })


# ---- 2c. PEFT TinyLoRA ----------------------------------------------------------------------
PEFT_CASES = {
    "tiny_llama": [(1, 0.0), (4, 0.5), (2, 1.0)],
    "tiny_qwen2": [(3, 0.0), (2, 0.75)],
}


def peft_fixtures(name: str, tok, rows, force: bool):
    import torch
    try:
        from peft import TinyLoraConfig, get_peft_model
        from peft.utils import get_peft_model_state_dict
    except ImportError:
        print("peft: this PEFT version has no TinyLoraConfig; TinyLoRA fixtures skipped", flush=True)
        return
    model_dir = FIXTURES / name
    for u, wt in PEFT_CASES[name]:
        case = f"u{u}_wt{str(wt).replace('.', 'p')}"
        sidecar = FIXTURES / f"model_{name}_tinylora_{case}.json"
        out = FIXTURES / f"model_{name}_tinylora_{case}.safetensors"
        adapter_dir = model_dir / f"peft_tinylora_{case}"
        if not force and up_to_date(sidecar, [out, adapter_dir / "adapter_model.safetensors"]):
            print(f"{name} tinylora {case}: up to date, skipped", flush=True)
            continue
        print(f"{name} tinylora {case}:", flush=True)
        base = load_causal_lm(model_dir)
        tok = saved_tokenizer(name)
        cfg = base.config
        eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
        input_ids, attention_mask, loss_mask, lengths, _ = tiny_batch(tok, rows, cfg.pad_token_id,
                                                                      cfg.bos_token_id, eos)
        peft_config = TinyLoraConfig(r=2, u=u, weight_tying=wt, target_modules=TARGETS,
                                     projection_seed=42, save_projection=True, init_weights=True)
        model = get_peft_model(base, peft_config)
        v_dict = model.base_model.tinylora_v["default"]
        g = torch.Generator().manual_seed(SEED + 2)
        with torch.no_grad():
            for key in sorted(v_dict.keys(), key=int):
                v_dict[key].copy_(0.3 * torch.randn(u, generator=g))
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        loss, nll = masked_loss(logits, input_ids, loss_mask)
        loss.backward()
        modules = {}
        for mname, module in model.named_modules():
            if hasattr(module, "_tinylora_v_key") and "default" in getattr(module, "_tinylora_v_key", {}):
                modules[mname.removeprefix("base_model.model.")] = {
                    "index": module._layer_idx, "group": int(module._tinylora_v_key["default"]),
                    "projection_seed": 42 + module._layer_idx}
        state = get_peft_model_state_dict(model)
        tensors = {f"adapter.{k}": v.detach().float().clone() for k, v in state.items()}
        tensors.update({
            "input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "logits": logits.detach(), "loss": loss.detach().float().reshape(()),
            "token_nll": nll.detach().float(),
        })
        for key in sorted(v_dict.keys(), key=int):
            tensors[f"v.{key}"] = v_dict[key].detach().clone()
            tensors[f"v_grad.{key}"] = v_dict[key].grad.detach().clone()
        shutil.rmtree(adapter_dir, ignore_errors=True)
        model.save_pretrained(str(adapter_dir))
        # Keep the folder reproducible and machine-independent: no absolute paths, no model card.
        (adapter_dir / "README.md").unlink(missing_ok=True)
        adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = f"tests/reference/fixtures/{name}"
        adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
        (adapter_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        for f in sorted(adapter_dir.iterdir()):
            print(f"  wrote {f.relative_to(REPO)} ({f.stat().st_size} bytes)", flush=True)
        fd = finite_difference_check(model, v_dict, input_ids, attention_mask, loss_mask)
        write_tensors(out, tensors, {"model": name, "case": case})
        n_modules = len(modules)
        write_json(sidecar, {
            "format_version": FORMAT_VERSION,
            "generator": "tests/reference/make_fixtures.py",
            "model_dir": f"tests/reference/fixtures/{name}",
            "adapter_dir": f"tests/reference/fixtures/{name}/peft_tinylora_{case}",
            "peft_config": {"r": 2, "u": u, "weight_tying": wt, "target_modules": TARGETS,
                            "projection_seed": 42, "save_projection": True, "init_weights": True},
            "v_init": "after get_peft_model, each group's v (sorted by group index) = 0.3*N(0,1) from "
                      f"torch.Generator({SEED + 2})",
            "n_modules": n_modules, "n_groups": len(v_dict),
            "tying_rule": "groups = max(1, round(N*(1-wt))) (half to even); size = max(1, N // groups); "
                          "group = min(index // size, groups - 1)",
            "modules": modules,
            "convention": "PEFT: A = sqrt(S_r) V_r^T (r, d_in), B = U_r sqrt(S_r) (d_out, r) from torch.linalg.svd "
                          "of the fp32 weight; P ~ N(0, 1/r) (u, r, r) from torch.Generator(42 + index); "
                          "R = sum_k v_k P_k; y = W x + B R A x; no scale",
            "loss": loss.item(), "loss_definition": LOSS_DEFINITION,
            "gradients": "v_grad.<group> = d loss / d v of that group (float64 loss backpropagated to fp32 v)",
            "gradient_check": fd,
            "logits_note": "compare only where attention_mask = 1",
            "tensors": tensor_table(tensors),
            "versions": versions(),
        })


def finite_difference_check(model, v_dict, input_ids, attention_mask, loss_mask, h=1e-2, groups=None):
    """Central differences of the loss, Richardson-extrapolated from steps 2h and h (default
    h = 1e-2), on a copy of the model cast to double, against the autograd gradients, for the
    first component of every group (or of `groups`). transformers' RMSNorm computes in float32
    even in a double model, so the loss carries float32 noise (~1e-7); hence the large step and
    the extrapolation."""
    import copy
    import torch
    fp32_grads = {k: v.grad.detach().clone() for k, v in v_dict.items()}
    model64 = copy.deepcopy(model).double()
    v64 = model64.base_model.tinylora_v["default"]

    def loss_at():
        logits = model64(input_ids=input_ids, attention_mask=attention_mask).logits
        return masked_loss(logits, input_ids, loss_mask)[0]

    def central(key, h):
        with torch.no_grad():
            v64[key][0] += h
            plus = loss_at().item()
            v64[key][0] -= 2 * h
            minus = loss_at().item()
            v64[key][0] += h
        return (plus - minus) / (2 * h)

    for v in v64.values():
        v.grad = None
    loss_at().backward()
    out = []
    for key in sorted(v64.keys(), key=int):
        if groups is not None and int(key) not in groups:
            continue
        fd = (4 * central(key, h) - central(key, 2 * h)) / 3
        g32 = fp32_grads[key][0].item()
        out.append({"group": int(key), "component": 0, "finite_difference": fd,
                    "autograd_f64": v64[key].grad[0].item(), "autograd_f32": g32,
                    "abs_error_f32_vs_fd": abs(g32 - fd)})
    worst = max(o["abs_error_f32_vs_fd"] for o in out)
    scale = max(abs(o["autograd_f32"]) for o in out)
    assert worst <= 1e-3 * scale + 1e-4, f"v-gradient check failed: {out}"
    return out


# ---- 2d. PEFT TinyLoRA on SmolLM2 -----------------------------------------------------------
# (case, u, weight_tying, target_modules, storage dtype of A and B in the saved adapter).
# u1_wt0p938: all 210 projections in 13 groups of one scalar: the paper's 13 trainable parameters.
# Its A and B are rounded to float16 inside the PEFT model before anything is computed, and saved
# as F16 (exactly), which keeps adapter_model.safetensors under 2 MB (1.2 MB instead of 2.4 MB);
# the parity is unaffected because PEFT's own forward uses the same rounded factors.
SMOLLM2_PEFT_CASES = [
    ("u1_wt0p938", 1, 0.938, TARGETS, "float16"),
    ("u4_wt0p5_qv", 4, 0.5, ["q_proj", "v_proj"], "float32"),
]
SMOLLM2_HEAD = 256  # logits_head holds vocabulary columns 0..255


def smollm2_batch(tok, rows, pad_id: int, eos_id: int):
    """2 short sequences (prompt = question prefix, answer = answer prefix + <|im_end|>), right-padded."""
    import torch
    specs = [(0, 10, 6), (1, 8, 5)]  # (row, prompt tokens, answer tokens)
    seqs, masks = [], []
    for row, n_prompt, n_answer in specs:
        prompt = tok.encode(rows[row]["question"]).ids[:n_prompt]
        answer = tok.encode(" " + rows[row]["answer"]).ids[: n_answer - 1] + [eos_id]
        assert len(prompt) == n_prompt and len(answer) == n_answer
        seqs.append(prompt + answer)
        masks.append([0] * n_prompt + [1] * n_answer)
    n_seq = max(len(s) for s in seqs)
    input_ids = torch.full((len(seqs), n_seq), pad_id, dtype=torch.int64)  # (n_batch, n_seq)
    attention_mask = torch.zeros((len(seqs), n_seq), dtype=torch.int64)   # (n_batch, n_seq)
    loss_mask = torch.zeros((len(seqs), n_seq), dtype=torch.int64)        # (n_batch, n_seq)
    for b, (s, m) in enumerate(zip(seqs, masks)):
        input_ids[b, : len(s)] = torch.tensor(s)
        attention_mask[b, : len(s)] = 1
        loss_mask[b, : len(s)] = torch.tensor(m)
    return input_ids, attention_mask, loss_mask, [len(s) for s in seqs], [sp[1] for sp in specs]


def state_key_in_model(file_key: str, adapter_name: str = "default") -> str:
    """The key of a saved adapter tensor inside a loaded PeftModel's state_dict (PEFT strips the
    adapter name when saving and puts it back when loading)."""
    if ".tinylora_v." in file_key:
        return file_key.replace(".tinylora_v.", f".tinylora_v.{adapter_name}.")
    return f"{file_key}.{adapter_name}"


def reload_check(base, adapter_dir: Path, input_ids, attention_mask, want_logits):
    """PeftModel.from_pretrained(base, adapter_dir): every saved tensor must be held exactly, and the
    logits must equal want_logits. Returns the largest logit difference."""
    import torch
    from peft import PeftModel
    from safetensors.torch import load_file
    model = PeftModel.from_pretrained(base, str(adapter_dir))
    model.eval()
    state = model.state_dict()
    for key, value in load_file(str(adapter_dir / "adapter_model.safetensors")).items():
        held = state[state_key_in_model(key)]
        assert held.shape == value.shape and torch.equal(held.float(), value.float()), key
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    diff = float((logits - want_logits).abs().max())
    assert diff <= 1e-5 * float(want_logits.abs().max()), diff
    return diff


def smollm2_peft_fixtures(model_path: Path, rows, force: bool):
    import copy
    import torch
    try:
        from peft import TinyLoraConfig, get_peft_model
    except ImportError:
        print("peft: this PEFT version has no TinyLoraConfig; SmolLM2 TinyLoRA fixtures skipped", flush=True)
        return
    from safetensors.torch import load_file, save_file
    model_dir = FIXTURES / "smollm2"
    todo = []
    for case, u, wt, targets, dtype in SMOLLM2_PEFT_CASES:
        sidecar = FIXTURES / f"model_smollm2_tinylora_{case}.json"
        out = FIXTURES / f"model_smollm2_tinylora_{case}.safetensors"
        adapter_dir = model_dir / f"peft_tinylora_{case}"
        if not force and up_to_date(sidecar, [out, adapter_dir / "adapter_model.safetensors"]):
            print(f"smollm2 tinylora {case}: up to date, skipped", flush=True)
            continue
        todo.append((case, u, wt, targets, dtype, sidecar, out, adapter_dir))
    if not todo:
        return
    print(f"smollm2 tinylora: loading {model_path}", flush=True)
    _, tok = smollm2_tokenizer(model_path)
    base = load_causal_lm(model_path.parent, gguf_file=model_path.name)
    im_end = tok.token_to_id("<|im_end|>")
    input_ids, attention_mask, loss_mask, lengths, prompt_lengths = smollm2_batch(tok, rows, im_end, im_end)
    with torch.no_grad():
        base_logits = base(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    base_loss = float(masked_loss(base_logits, input_ids, loss_mask)[0])
    for case, u, wt, targets, dtype, sidecar, out, adapter_dir in todo:
        print(f"smollm2 tinylora {case}:", flush=True)
        start = time.time()
        peft_config = TinyLoraConfig(r=2, u=u, weight_tying=wt, target_modules=targets,
                                     projection_seed=42, save_projection=True, init_weights=True)
        model = get_peft_model(copy.deepcopy(base), peft_config)
        modules = {}
        with torch.no_grad():
            for mname, module in model.named_modules():
                if hasattr(module, "_tinylora_v_key") and "default" in module._tinylora_v_key:
                    if dtype == "float16":  # the factors PEFT computes with are the ones the file holds
                        for buf in (module.tinylora_A["default"], module.tinylora_B["default"]):
                            buf.copy_(buf.half().float())
                    modules[mname.removeprefix("base_model.model.")] = {
                        "index": module._layer_idx, "group": int(module._tinylora_v_key["default"])}
        v_dict = model.base_model.tinylora_v["default"]
        g = torch.Generator().manual_seed(SEED + 3)
        with torch.no_grad():
            for key in sorted(v_dict.keys(), key=int):
                v_dict[key].copy_(0.3 * torch.randn(u, generator=g))
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
        loss, nll = masked_loss(logits, input_ids, loss_mask)
        loss.backward()
        logits = logits.detach()
        top = torch.topk(logits, 8)
        tensors = {
            "input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
            "logits_head": logits[..., :SMOLLM2_HEAD].clone(),                   # (n_batch, n_seq, 256)
            "top8_ids": top.indices.to(torch.int64), "top8_logits": top.values,  # (n_batch, n_seq, 8)
            "logsumexp": torch.logsumexp(logits.double(), -1).float(),            # (n_batch, n_seq)
            "loss": loss.detach().float().reshape(()), "token_nll": nll.detach().float(),
        }
        for key in sorted(v_dict.keys(), key=int):
            tensors[f"v.{key}"] = v_dict[key].detach().clone()
            tensors[f"v_grad.{key}"] = v_dict[key].grad.detach().clone()
        shutil.rmtree(adapter_dir, ignore_errors=True)
        model.save_pretrained(str(adapter_dir))
        (adapter_dir / "README.md").unlink(missing_ok=True)
        weights_file = adapter_dir / "adapter_model.safetensors"
        if dtype == "float16":
            state = load_file(str(weights_file))
            for key in state:
                if key.endswith(".tinylora_A") or key.endswith(".tinylora_B"):
                    half = state[key].half()
                    assert torch.equal(half.float(), state[key]), key  # exact: rounded above
                    state[key] = half
            save_file(state, str(weights_file), metadata={"format": "pt"})
        adapter_config = json.loads((adapter_dir / "adapter_config.json").read_text())
        adapter_config["base_model_name_or_path"] = MODEL_FILE
        adapter_config["target_modules"] = sorted(adapter_config["target_modules"])
        (adapter_dir / "adapter_config.json").write_text(json.dumps(adapter_config, indent=2, sort_keys=True) + "\n")
        for f in sorted(adapter_dir.iterdir()):
            print(f"  wrote {f.relative_to(REPO)} ({f.stat().st_size} bytes)", flush=True)
        reload_diff = reload_check(copy.deepcopy(base), adapter_dir, input_ids, attention_mask, logits)
        # Five groups spread over the model (each costs 4 double-precision forwards of SmolLM2), and
        # a smaller step than the tiny models': with u = 4 and 0.3-sized v the loss curves enough
        # that h = 1e-2 leaves a 3e-3 relative truncation error.
        n_groups = len(v_dict)
        checked = sorted({round(k * (n_groups - 1) / 4) for k in range(5)})
        fd = finite_difference_check(model, v_dict, input_ids, attention_mask, loss_mask, h=2e-3, groups=checked)
        write_tensors(out, tensors, {"model": MODEL_FILE, "case": case})
        write_json(sidecar, {
            "format_version": FORMAT_VERSION,
            "generator": "tests/reference/make_fixtures.py",
            "model_file": MODEL_FILE,
            "model_sha256": hashlib.sha256(model_path.read_bytes()).hexdigest(),
            "loading": "as model_smollm2.json: transformers from the GGUF, dequantized to float32, eager attention",
            "adapter_dir": f"tests/reference/fixtures/smollm2/peft_tinylora_{case}",
            "peft_config": {"r": 2, "u": u, "weight_tying": wt, "target_modules": sorted(targets),
                            "projection_seed": 42, "save_projection": True, "init_weights": True},
            "factor_storage": dtype,
            "factor_note": ("A and B were rounded to float16 in the PEFT model before the forward pass and "
                            "are saved as F16 (exact), to keep the file under 2 MB") if dtype == "float16"
                           else "A and B saved in float32 as PEFT computed them",
            "v_init": "after get_peft_model, each group's v (sorted by group index) = 0.3*N(0,1) from "
                      f"torch.Generator({SEED + 3})",
            "n_modules": len(modules), "n_groups": len(v_dict),
            "tying_rule": "groups = max(1, round(N*(1-wt))) (half to even); size = max(1, N // groups); "
                          "group = min(index // size, groups - 1)",
            "modules": modules,
            "batch": {"n_batch": int(input_ids.shape[0]), "n_seq": int(input_ids.shape[1]),
                      "lengths": lengths, "prompt_lengths": prompt_lengths, "padding": "right",
                      "construction": "prompt = first question tokens of GSM8K train rows 0, 1; answer = "
                                      "tokens of ' ' + answer (truncated) + <|im_end|>"},
            "loss": loss.item(), "loss_without_adapter": base_loss, "loss_definition": LOSS_DEFINITION,
            "logits_note": f"logits_head: columns 0..{SMOLLM2_HEAD - 1}; top8_*: the 8 largest logits per "
                           "position; logsumexp over the full vocabulary; compare only where attention_mask = 1",
            "gradients": "v_grad.<group> = d loss / d v of that group (float64 loss backpropagated to fp32 v)",
            "gradient_check": fd,
            "gradient_check_note": "finite differences (h = 2e-3, Richardson) for the first component of "
                                   f"groups {checked}",
            "peft_reload_max_abs_logit_diff": reload_diff,
            "seconds": round(time.time() - start, 1),
            "tensors": tensor_table(tensors),
            "versions": versions(),
        })


# ---- 2e. PEFT loads tinylora's export -------------------------------------------------------
EXPORTED_ADAPTER = FIXTURES / "exported_peft_adapter"


def exported_adapter_fixture(rows, force: bool):
    """PEFT loads the adapter tinylora exported (tests/unit/test_peft_adapter.cpp with
    TINYLORA_WRITE_EXPORT_FIXTURE=1) onto the tiny Llama and records its logits and loss."""
    import torch
    try:
        from peft import PeftModel
    except ImportError:
        print("peft: not available; export check skipped", flush=True)
        return
    files = [EXPORTED_ADAPTER / "adapter_config.json", EXPORTED_ADAPTER / "adapter_model.safetensors"]
    if not all(f.exists() for f in files):
        print(f"export: {EXPORTED_ADAPTER.relative_to(REPO)} is missing; run the C++ test first: "
              "TINYLORA_WRITE_EXPORT_FIXTURE=1 <build>/tests/test_peft_adapter; skipped", flush=True)
        return
    digest = hashlib.sha256(b"".join(f.read_bytes() for f in files)).hexdigest()
    sidecar = FIXTURES / "model_tiny_llama_exported_peft.json"
    out = FIXTURES / "model_tiny_llama_exported_peft.safetensors"
    if (not force and up_to_date(sidecar, [out]) and
            json.loads(sidecar.read_text()).get("adapter_sha256") == digest):
        print("export: up to date, skipped", flush=True)
        return
    print("export: PEFT loads tinylora's exported adapter onto tiny_llama", flush=True)
    name = "tiny_llama"
    base = load_causal_lm(FIXTURES / name)
    tok = saved_tokenizer(name)
    cfg = base.config
    eos = cfg.eos_token_id[0] if isinstance(cfg.eos_token_id, list) else cfg.eos_token_id
    input_ids, attention_mask, loss_mask, _, _ = tiny_batch(tok, rows, cfg.pad_token_id, cfg.bos_token_id, eos)
    with torch.no_grad():
        base_logits = base(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    model = PeftModel.from_pretrained(base, str(EXPORTED_ADAPTER))
    model.eval()
    # PEFT must hold exactly the file's A, B, P and v (not its own SVD or projections).
    from safetensors.torch import load_file
    saved = load_file(str(files[1]))
    state = model.state_dict()
    for key, value in saved.items():
        held = state[state_key_in_model(key)]
        assert held.shape == value.shape and torch.equal(held.float(), value.float()), key
    n_modules = sum(1 for k in saved if k.endswith(".tinylora_A"))
    n_groups = len(model.base_model.tinylora_v["default"])
    assert n_groups == sum(1 for k in saved if ".tinylora_v." in k)
    groups = {}
    for mname, module in model.named_modules():
        if hasattr(module, "_tinylora_v_key") and "default" in module._tinylora_v_key:
            groups[mname.removeprefix("base_model.model.")] = int(module._tinylora_v_key["default"])
    with torch.no_grad():
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits.float()
    loss, _ = masked_loss(logits, input_ids, loss_mask)
    effect = float(((logits - base_logits) * attention_mask[..., None]).abs().max())
    tensors = {"input_ids": input_ids, "attention_mask": attention_mask, "loss_mask": loss_mask,
               "logits": logits, "loss": loss.float().reshape(())}
    write_tensors(out, tensors, {"model": name, "adapter": "exported_peft_adapter"})
    write_json(sidecar, {
        "format_version": FORMAT_VERSION,
        "generator": "tests/reference/make_fixtures.py",
        "model_dir": f"tests/reference/fixtures/{name}",
        "adapter_dir": "tests/reference/fixtures/exported_peft_adapter",
        "adapter_sha256": digest,
        "adapter_config": json.loads(files[0].read_text()),
        "loading": "PeftModel.from_pretrained(base, adapter_dir); every saved tensor checked equal to the "
                   "loaded model's (so PEFT used tinylora's A, B, P and v, not its own SVD or projections)",
        "n_modules": n_modules, "n_groups": n_groups, "groups": groups,
        "batch": "the tiny batch of model_tiny_llama.json (same rows, padding and masks)",
        "loss": loss.item(), "loss_definition": LOSS_DEFINITION,
        "adapter_effect_max_abs_logit": effect,
        "logits_note": "compare only where attention_mask = 1",
        "tensors": tensor_table(tensors),
        "versions": versions(),
    })


# ---- main -----------------------------------------------------------------------------------
def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", default=os.environ.get("TINYLORA_REFERENCE_VENV",
                                                         str(REPO / "build" / "reference-venv")))
    parser.add_argument("--only", default="tiny,smollm2,peft,smollm2_peft,export",
                        help="comma-separated subset of tiny, smollm2, peft, smollm2_peft, export")
    parser.add_argument("--gsm8k", default=None, help="GSM8K train.jsonl (default: shared/data/gsm8k)")
    parser.add_argument("--model", default=None, help=f"path of {MODEL_FILE} (default: scripts/fetch-model)")
    parser.add_argument("--force", action="store_true", help="regenerate even when up to date")
    args = parser.parse_args()
    ensure_venv(Path(args.venv))

    import torch
    torch.manual_seed(SEED)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    only = set(args.only.split(","))
    gsm8k = Path(args.gsm8k) if args.gsm8k else next(
        (p for p in [REPO.parent / "shared/data/gsm8k/train.jsonl", Path("/work/shared/data/gsm8k/train.jsonl")]
         if p.exists()), None)
    if gsm8k is None:
        sys.exit("make_fixtures: GSM8K train.jsonl not found; pass --gsm8k")
    rows = gsm8k_rows(gsm8k, 2000)
    FIXTURES.mkdir(parents=True, exist_ok=True)
    start = time.time()
    tok = train_tiny_tokenizer(rows) if only & {"tiny", "peft"} else None
    if "tiny" in only:
        for name in TINY_ARCH:
            tiny_forward_fixture(name, tok, rows, args.force)
    if "smollm2" in only:
        smollm2_fixture(find_model(args.model), rows, args.force)
    if "peft" in only:
        for name in TINY_ARCH:
            if not (FIXTURES / name / "model.safetensors").exists():
                tiny_forward_fixture(name, tok, rows, args.force)  # the adapters need the base model
            peft_fixtures(name, tok, rows, args.force)
    if "smollm2_peft" in only:
        smollm2_peft_fixtures(find_model(args.model), rows, args.force)
    if "export" in only:
        exported_adapter_fixture(rows, args.force)
    print(f"make_fixtures: done in {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
