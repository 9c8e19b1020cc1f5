#!/usr/bin/env python3
"""bench/compare/peers.py: the Python side of the side-by-side benchmark (bench/compare/README.md).

The same workloads as bench/compare/workloads.cpp, in PyTorch + transformers + PEFT (system
"pytorch") and, for W3, llama-cpp-python (system "llama.cpp"). One process measures one
(workload, round): load, an untimed warm-up call, then one timed call; it prints one JSON line.
Token ids, supervised masks and prompts come from the inputs file that `compare_workloads prepare`
wrote with tinylora's tokenizer, so both sides see exactly the same ids.

Usage: peers.py --system pytorch|llama.cpp --workload w1_fp32|w1_bf16|w2|w3|w4
                --inputs build/compare/inputs.json [--round N] [--threads 2]
"""
import argparse
import copy
import json
import os
import resource
import sys
import time
from pathlib import Path

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
BUDGET = 13
# PEFT's TinyLoraConfig giving 13 trainable scalars on SmolLM2-135M: u = 1 and all 210 projections
# tied into 13 groups (tests/reference/make_fixtures.py's u1_wt0p938 case).
PEFT_U, PEFT_WEIGHT_TYING = 1, 0.938
THETA = 0.01  # every trainable scalar, both sides (W2)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def timed(f):
    start = time.perf_counter()
    out = f()
    return time.perf_counter() - start, out


# ---- PyTorch + transformers + PEFT ----------------------------------------------------------
def load_torch_model(model_path: Path, dtype_name: str):
    import torch
    from transformers import AutoModelForCausalLM
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype_name]
    model = AutoModelForCausalLM.from_pretrained(str(model_path.parent), gguf_file=model_path.name, dtype=dtype,
                                                 attn_implementation="sdpa")
    model.eval()
    return model


def padded_batch(examples, pad_id: int):
    """Right-padded (n_batch, n_seq) ids, attention mask and supervised mask."""
    import torch
    n_seq = max(len(e["tokens"]) for e in examples)
    ids = torch.full((len(examples), n_seq), pad_id, dtype=torch.int64)   # (n_batch, n_seq)
    attention = torch.zeros((len(examples), n_seq), dtype=torch.int64)   # (n_batch, n_seq)
    supervised = torch.zeros((len(examples), n_seq), dtype=torch.bool)   # (n_batch, n_seq)
    for b, e in enumerate(examples):
        n = len(e["tokens"])
        ids[b, :n] = torch.tensor(e["tokens"])
        attention[b, :n] = 1
        supervised[b, :n] = torch.tensor(e["supervised"], dtype=torch.bool)
    return ids, attention, supervised


def masked_loss(causal_lm, ids, attention, supervised):
    """Token-mean next-token cross-entropy over supervised tokens t > 0 (the logit at t-1 predicts t).
    The LM head runs only at the rows that predict a supervised token (as tinylora's Decoder::loss),
    and log_softmax is taken in float32 from those logits."""
    import torch
    hidden = causal_lm.model(input_ids=ids, attention_mask=attention).last_hidden_state  # (n_batch, n_seq, d)
    targets_mask = supervised[:, 1:]                                                    # (n_batch, n_seq-1)
    rows = hidden[:, :-1][targets_mask]                                                 # (n_sup, d)
    logits = causal_lm.lm_head(rows).float()                                            # (n_sup, V)
    targets = ids[:, 1:][targets_mask]                                                  # (n_sup)
    nll = -torch.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1)     # (n_sup)
    return nll.mean(), int(targets.numel())


def torch_loss(inputs, model_path: Path, precision: str):
    import torch
    model = load_torch_model(model_path, precision)
    examples = inputs["loss_examples"]
    ids, attention, supervised = padded_batch(examples, inputs["eos"])
    n_tokens = sum(len(e["tokens"]) for e in examples)

    def call():
        with torch.inference_mode():
            return masked_loss(model, ids, attention, supervised)

    call()  # warm-up
    seconds, (loss, n_sup) = timed(call)
    return {"seconds": seconds, "tokens": n_tokens, "tokens_per_s": n_tokens / seconds, "loss": float(loss),
            "supervised_tokens": n_sup, "precision": precision, "padded_tokens": int(ids.numel())}


def peft_model(base, warm_up: bool = False):
    """TinyLoRA b = 13 over all 210 projections; warm_up: the same on layer 0's q_proj only."""
    from peft import TinyLoraConfig, get_peft_model
    if warm_up:
        config = TinyLoraConfig(r=2, u=1, target_modules=["q_proj"], layers_to_transform=[0])
    else:
        config = TinyLoraConfig(r=2, u=PEFT_U, weight_tying=PEFT_WEIGHT_TYING, target_modules=TARGETS)
    return get_peft_model(base, config)


def trainable_count(model) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def torch_train_step(inputs, model_path: Path):
    import torch
    model = peft_model(load_torch_model(model_path, "fp32"))
    count = trainable_count(model)
    if count != BUDGET:
        sys.exit(f"peers.py w2: PEFT has {count} trainable scalars (expected {BUDGET}); fix PEFT_U/PEFT_WEIGHT_TYING")
    n_modules = sum(1 for _, m in model.named_modules() if hasattr(m, "_tinylora_v_key"))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.fill_(THETA)
    examples = inputs["loss_examples"][: inputs["n_train"]]
    ids, attention, supervised = padded_batch(examples, inputs["eos"])
    n_tokens = sum(len(e["tokens"]) for e in examples)
    causal_lm = model.get_base_model()
    params = [p for p in model.parameters() if p.requires_grad]

    def step():
        for p in params:
            p.grad = None
        loss, _ = masked_loss(causal_lm, ids, attention, supervised)
        loss.backward()
        return loss.detach()

    step()  # warm-up
    seconds, loss = timed(step)
    grad_norm = float(torch.sqrt(sum((p.grad.double() ** 2).sum() for p in params)))
    return {"seconds": seconds, "tokens": n_tokens, "tokens_per_s": n_tokens / seconds, "loss": float(loss),
            "grad_norm": grad_norm, "trainable": count, "modules": n_modules, "precision": "fp32",
            "padded_tokens": int(ids.numel())}


def torch_generate(inputs, model_path: Path):
    import torch
    model = load_torch_model(model_path, "fp32")
    prompts = [p["tokens"] for p in inputs["prompts"]]
    g = inputs["generation"]
    pad = inputs["eos"]
    n_seq = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), n_seq), pad, dtype=torch.int64)   # (n_prompts, n_seq), left-padded
    attention = torch.zeros_like(ids)                                 # (n_prompts, n_seq)
    for b, p in enumerate(prompts):
        ids[b, n_seq - len(p):] = torch.tensor(p)
        attention[b, n_seq - len(p):] = 1

    def call(seed):
        torch.manual_seed(seed)
        with torch.inference_mode():
            return model.generate(input_ids=ids, attention_mask=attention, do_sample=True, temperature=1.0, top_k=0,
                                  top_p=1.0, num_return_sequences=g["n_samples"], max_new_tokens=g["max_new_tokens"],
                                  min_new_tokens=g["max_new_tokens"], pad_token_id=pad)

    call(g["seed"])  # warm-up
    seconds, out = timed(lambda: call(g["seed"] + 1))
    generated = int(out.shape[0]) * (int(out.shape[1]) - n_seq)
    expected = len(prompts) * g["n_samples"] * g["max_new_tokens"]
    if generated != expected:
        sys.exit(f"peers.py w3: transformers generated {generated} tokens (expected {expected})")
    return {"seconds": seconds, "generated_tokens": generated, "tokens_per_s": generated / seconds,
            "sequences": int(out.shape[0]), "precision": "fp32 (dequantized Q4_1)"}


def torch_init(model_path: Path):
    base = load_torch_model(model_path, "fp32")
    warm, measured = copy.deepcopy(base), copy.deepcopy(base)  # copies made before the clock starts
    peft_model(warm, warm_up=True)  # warm-up: one module (a full one would double W4's cost)
    seconds, model = timed(lambda: peft_model(measured))
    n_modules = sum(1 for _, m in model.named_modules() if hasattr(m, "_tinylora_v_key"))
    return {"seconds": seconds, "modules": n_modules, "trainable": trainable_count(model), "rank": 2, "precision": "fp32"}


# ---- llama-cpp-python -----------------------------------------------------------------------
def llama_generate(inputs, model_path: Path, threads: int):
    from llama_cpp import Llama
    g = inputs["generation"]
    prompts = [p["tokens"] for p in inputs["prompts"]]
    n_ctx = max(len(p) for p in prompts) + g["max_new_tokens"] + 8
    llm = Llama(model_path=str(model_path), n_threads=threads, n_threads_batch=threads, n_ctx=n_ctx, n_batch=512,
                seed=g["seed"], verbose=False)

    def call():
        # EOS is ignored, as on the other sides: generate() never stops by itself, and each sample
        # is cut after exactly max_new_tokens sampled tokens.
        generated = 0
        for p in prompts:
            for _ in range(g["n_samples"]):
                n = 0
                for _token in llm.generate(p, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0, temp=1.0,
                                           repeat_penalty=1.0, reset=True):
                    n += 1
                    if n == g["max_new_tokens"]:
                        break
                generated += n
        return generated

    call()  # warm-up
    seconds, generated = timed(call)
    return {"seconds": seconds, "generated_tokens": generated, "tokens_per_s": generated / seconds,
            "sequences": len(prompts) * g["n_samples"], "precision": "Q4_1 as stored"}


def versions(system: str) -> dict:
    out = {"python": sys.version.split()[0]}
    if system == "pytorch":
        import numpy
        import peft
        import torch
        import transformers
        out.update(torch=torch.__version__, transformers=transformers.__version__, peft=peft.__version__,
                   numpy=numpy.__version__)
    else:
        import llama_cpp
        out.update(llama_cpp_python=llama_cpp.__version__)
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--system", required=True, choices=["pytorch", "llama.cpp"])
    parser.add_argument("--workload", required=True, choices=["w1_fp32", "w1_bf16", "w2", "w3", "w4"])
    parser.add_argument("--inputs", required=True, help="inputs JSON written by `compare_workloads prepare`")
    parser.add_argument("--model", default=None, help="GGUF file (default: the one named in --inputs)")
    parser.add_argument("--round", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    inputs = json.loads(Path(args.inputs).read_text())
    model_path = Path(args.model or inputs["model"]).resolve()
    if args.system == "pytorch":
        import torch
        torch.set_num_threads(args.threads)
        torch.set_num_interop_threads(1)
        if args.workload == "w1_fp32":
            result = torch_loss(inputs, model_path, "fp32")
        elif args.workload == "w1_bf16":
            result = torch_loss(inputs, model_path, "bf16")
        elif args.workload == "w2":
            result = torch_train_step(inputs, model_path)
        elif args.workload == "w3":
            result = torch_generate(inputs, model_path)
        else:
            result = torch_init(model_path)
        threads = torch.get_num_threads()
    else:
        if args.workload != "w3":
            sys.exit(f"peers.py: llama.cpp runs only w3 (got {args.workload})")
        result = llama_generate(inputs, model_path, args.threads)
        threads = args.threads
    result.update(system=args.system, workload=args.workload, round=args.round, threads=threads,
                  peak_rss_mib=peak_rss_mib(), versions=versions(args.system))
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
