#!/usr/bin/env python3
"""Fine-tuning speed of a MiniLM-L6-sized BERT classifier on CPU, pure PyTorch.

No `transformers` dependency, so the same file runs on Debian's python3-torch (1.13) and on the
newest PyTorch from PyPI (bench/setup_pypi_torch.sh):

  /usr/bin/python3 bench/train_speed.py --threads 2
  .venv-pypi-torch/bin/python bench/train_speed.py --threads 2 --sdpa

The encoder follows Hugging Face's BertModel (post-LN) layer by layer: word + position + token-type
embeddings, LayerNorm(eps 1e-12), dropout 0.1; per layer q/k/v Linear, scaled dot-product
attention with an additive padding mask, attention dropout, output dense + dropout +
LayerNorm(residual), intermediate Linear + exact GELU, output Linear + dropout + LayerNorm(residual).
Classifier: dropout + Linear(hidden, 2) on the first token; cross-entropy; AdamW(5e-5, wd 0.01),
clip_grad_norm_(1.0), zero_grad(set_to_none=True). Weights are initialized as HF does
(normal std 0.02, zero biases, LayerNorm 1/0).

Attention is explicit matmul/softmax by default (HF's "eager"); --sdpa uses
F.scaled_dot_product_attention where the torch has it (2.0+). Like HF's sdpa path, the all-ones
padding mask is then dropped (mask=None) so the fused CPU kernels can be picked; --sdpa-mask
always passes the additive mask anyway. On torch without SDPA, --sdpa falls back to explicit
attention and the output says so ("attention": "explicit", "sdpa_requested": true).

--append FILE adds the run (with the load average before it) to a JSON list in FILE.
"""
import argparse
import json
import math
import os
import platform
import re
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

HAVE_SDPA = hasattr(F, "scaled_dot_product_attention")

MINILM_L6 = dict(vocab_size=30522, hidden=384, layers=6, heads=12, intermediate=1536,
                 max_positions=512, type_vocab=2, dropout=0.1, attn_dropout=0.1, ln_eps=1e-12,
                 num_labels=2)


class Embeddings(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.word = nn.Embedding(c["vocab_size"], c["hidden"], padding_idx=0)
        self.position = nn.Embedding(c["max_positions"], c["hidden"])
        self.token_type = nn.Embedding(c["type_vocab"], c["hidden"])
        self.norm = nn.LayerNorm(c["hidden"], eps=c["ln_eps"])
        self.drop = nn.Dropout(c["dropout"])
        self.register_buffer("position_ids", torch.arange(c["max_positions"]).unsqueeze(0),
                             persistent=False)

    def forward(self, input_ids, token_type_ids):
        s = input_ids.shape[1]
        x = (self.word(input_ids) + self.position(self.position_ids[:, :s])
             + self.token_type(token_type_ids))
        return self.drop(self.norm(x))


class SelfAttention(nn.Module):
    def __init__(self, c, use_sdpa):
        super().__init__()
        self.heads = c["heads"]
        self.head_dim = c["hidden"] // c["heads"]
        self.q = nn.Linear(c["hidden"], c["hidden"])
        self.k = nn.Linear(c["hidden"], c["hidden"])
        self.v = nn.Linear(c["hidden"], c["hidden"])
        self.attn_dropout_p = c["attn_dropout"]
        self.attn_drop = nn.Dropout(c["attn_dropout"])
        self.use_sdpa = use_sdpa

    def split(self, x):  # [B, S, H] -> [B, heads, S, head_dim]
        b, s, _ = x.shape
        return x.view(b, s, self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x, add_mask):
        q, k, v = self.split(self.q(x)), self.split(self.k(x)), self.split(self.v(x))
        if self.use_sdpa:
            ctx = F.scaled_dot_product_attention(
                q, k, v, attn_mask=add_mask,
                dropout_p=self.attn_dropout_p if self.training else 0.0)
        else:
            scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_dim)
            if add_mask is not None:
                scores = scores + add_mask
            probs = self.attn_drop(torch.softmax(scores, dim=-1))
            ctx = torch.matmul(probs, v)
        b, _, s, _ = ctx.shape
        return ctx.transpose(1, 2).reshape(b, s, self.heads * self.head_dim)


class Layer(nn.Module):
    def __init__(self, c, use_sdpa):
        super().__init__()
        h, eps = c["hidden"], c["ln_eps"]
        self.attn = SelfAttention(c, use_sdpa)
        self.attn_out = nn.Linear(h, h)
        self.attn_drop = nn.Dropout(c["dropout"])
        self.attn_norm = nn.LayerNorm(h, eps=eps)
        self.inter = nn.Linear(h, c["intermediate"])
        self.act = nn.GELU()  # exact (erf) GELU, as HF's "gelu"
        self.out = nn.Linear(c["intermediate"], h)
        self.out_drop = nn.Dropout(c["dropout"])
        self.out_norm = nn.LayerNorm(h, eps=eps)

    def forward(self, x, add_mask):
        a = self.attn_norm(x + self.attn_drop(self.attn_out(self.attn(x, add_mask))))
        return self.out_norm(a + self.out_drop(self.out(self.act(self.inter(a)))))


class BertClassifier(nn.Module):
    def __init__(self, c, use_sdpa=False, sdpa_keep_mask=False):
        super().__init__()
        self.emb = Embeddings(c)
        self.layers = nn.ModuleList(Layer(c, use_sdpa) for _ in range(c["layers"]))
        self.drop = nn.Dropout(c["dropout"])
        self.classifier = nn.Linear(c["hidden"], c["num_labels"])
        self.use_sdpa = use_sdpa
        self.sdpa_keep_mask = sdpa_keep_mask
        self.apply(self._init)

    @staticmethod
    def _init(m):  # as BertPreTrainedModel._init_weights
        if isinstance(m, nn.Linear):
            m.weight.data.normal_(0.0, 0.02)
            m.bias.data.zero_()
        elif isinstance(m, nn.Embedding):
            m.weight.data.normal_(0.0, 0.02)
            if m.padding_idx is not None:
                m.weight.data[m.padding_idx].zero_()
        elif isinstance(m, nn.LayerNorm):
            m.weight.data.fill_(1.0)
            m.bias.data.zero_()

    def forward(self, input_ids, attention_mask, token_type_ids):
        x = self.emb(input_ids, token_type_ids)
        if self.use_sdpa and not self.sdpa_keep_mask and bool(attention_mask.all()):
            add_mask = None  # HF's sdpa path drops an all-ones mask the same way
        else:
            # [B, 1, 1, S]: 0 for real tokens, dtype-min for padded keys (as HF's extended mask)
            add_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) \
                * torch.finfo(x.dtype).min
        for layer in self.layers:
            x = layer(x, add_mask)
        return self.classifier(self.drop(x[:, 0]))


def parallel_lines():
    keep = ("get_num_threads", "get_num_interop_threads", "OpenMP", "MKL", "BLAS", "backend",
            "hardware_concurrency", "_NUM_THREADS")
    return [l.strip() for l in torch.__config__.parallel_info().splitlines()
            if any(k in l for k in keep)]


def blas_info():
    """BLAS_INFO from the build settings; 'generic' (Debian) resolved to the libblas.so.3 in use."""
    m = re.search(r"BLAS_INFO=([^,\s]+)", torch.__config__.show())
    blas = m.group(1) if m else "unknown"
    if blas == "generic":
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib"):
            lib = os.path.join(d, "libblas.so.3")
            if os.path.exists(lib):
                blas += " (" + os.path.realpath(lib) + ")"
                break
    return blas


def cpu_capability():
    for l in torch.__config__.show().splitlines():
        if "CPU capability usage:" in l:
            return l.split(":", 1)[1].strip()
    return "unknown"


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return [float(x) for x in f.read().split()[:3]]
    except OSError:
        return None


def cpu_busy_s():
    """Seconds of CPU time all processes on the machine have used so far (from /proc/stat)."""
    try:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return (sum(v[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_s():
    t = os.times()
    return t.user + t.system


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    ap.add_argument("--steps", type=int, default=20, help="timed steps")
    ap.add_argument("--sdpa", action="store_true",
                    help="F.scaled_dot_product_attention instead of explicit matmul/softmax")
    ap.add_argument("--sdpa-mask", action="store_true",
                    help="with --sdpa, pass the additive mask even when it is all ones")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu", help="cpu or cuda")
    ap.add_argument("--bf16", type=int, default=1,
                    help="on cuda: forward passes under bf16 autocast (1) or F32 (0)")
    ap.add_argument("--json", action="store_true", help="print one JSON line at the end")
    ap.add_argument("--append", metavar="FILE", help="append the run to the JSON list in FILE")
    ap.add_argument("--note", default="", help="free text stored with --append")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()

    load_before = loadavg()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    use_sdpa = args.sdpa and HAVE_SDPA
    if args.sdpa and not HAVE_SDPA:
        print(f"torch {torch.__version__} has no F.scaled_dot_product_attention: "
              "using explicit attention", file=sys.stderr)

    device = torch.device(args.device)
    autocast = device.type == "cuda" and bool(args.bf16)
    model = BertClassifier(MINILM_L6, use_sdpa=use_sdpa, sdpa_keep_mask=args.sdpa_mask).to(device)
    model.train()
    nparams = sum(p.numel() for p in model.parameters())
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, weight_decay=0.01)

    g = torch.Generator().manual_seed(args.seed)
    batches = []
    for _ in range(4):
        ids = torch.randint(1000, 30000, (args.batch, args.seq), generator=g)
        batches.append(tuple(t.to(device) for t in (
            ids, torch.ones_like(ids), torch.zeros_like(ids),
            torch.randint(0, 2, (args.batch,), generator=g))))

    if args.verbose:
        print(f"torch {torch.__version__} ({torch.__file__})")
        print(f"params {nparams:,}; BLAS {blas_info()}; CPU capability {cpu_capability()}")
        for l in parallel_lines():
            print("  " + l)

    def step(i):
        ids, mask, tt, labels = batches[i % len(batches)]
        if autocast:
            with torch.autocast("cuda", dtype=torch.bfloat16):
                logits = model(ids, mask, tt)
        else:
            logits = model(ids, mask, tt)
        loss = F.cross_entropy(logits.float(), labels)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()

    losses, times = [], []
    for i in range(args.warmup):
        t = time.perf_counter()
        losses.append(step(i))
        if args.verbose:
            print(f"warmup {i}: loss {losses[-1]:.4f} {time.perf_counter() - t:.3f}s")
    busy0, own0 = cpu_busy_s(), own_cpu_s()
    t0 = time.perf_counter()
    for i in range(args.warmup, args.warmup + args.steps):
        t = time.perf_counter()
        losses.append(step(i))
        times.append(time.perf_counter() - t)
        if args.verbose:
            print(f"step {i}: loss {losses[-1]:.4f} {times[-1]:.3f}s")
    total = time.perf_counter() - t0
    busy1, own1 = cpu_busy_s(), own_cpu_s()
    # CPU time other processes used during the timed steps: > a few % of threads*total means
    # the numbers were disturbed (this machine has 2 cores).
    other_cpu = round(max(0.0, (busy1 - busy0) - (own1 - own0)), 2) if busy0 is not None else None

    s_per_step = total / args.steps
    res = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "executable": sys.executable,
        "blas": blas_info(),
        "cpu_capability": cpu_capability(),
        "threads": torch.get_num_threads(),
        "device": args.device + (" (bf16 autocast)" if autocast else ""),
        "batch": args.batch,
        "seq": args.seq,
        "warmup": args.warmup,
        "steps": args.steps,
        "attention": "sdpa" if use_sdpa else "explicit",
        "sdpa_requested": args.sdpa,
        "sdpa_mask": ("always" if args.sdpa_mask else "dropped when all ones") if use_sdpa
                     else None,
        "params": nparams,
        "steps_per_s": round(args.steps / total, 4),
        "s_per_step": round(s_per_step, 4),
        "s_per_step_median": round(sorted(times)[len(times) // 2], 4),
        "s_per_step_min": round(min(times), 4),
        "examples_per_s": round(args.batch * args.steps / total, 2),
        "loss_first": round(losses[0], 4),
        "loss_last": round(losses[-1], 4),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "timed_s": round(total, 3),
        "own_cpu_s": round(own1 - own0, 2),
        "other_cpu_s": other_cpu,
        "nproc": os.cpu_count(),
    }

    print(f"torch {res['torch']}  threads {res['threads']}  attention {res['attention']}  "
          f"batch {args.batch} seq {args.seq}  BLAS {res['blas']}  {res['cpu_capability']}")
    print(f"{res['steps_per_s']:.3f} steps/s  {s_per_step:.3f} s/step "
          f"(median {res['s_per_step_median']:.3f})  {res['examples_per_s']:.1f} examples/s  "
          f"loss {res['loss_first']:.4f} -> {res['loss_last']:.4f}  "
          f"load before {load_before}")
    print(f"timed {total:.1f}s: own CPU {res['own_cpu_s']}s, other processes' CPU {other_cpu}s")
    if args.json:
        print(json.dumps(res))
    if args.append:
        if args.note:
            res["note"] = args.note
        runs = []
        if os.path.exists(args.append):
            with open(args.append) as f:
                runs = json.load(f)
        runs.append(res)
        os.makedirs(os.path.dirname(os.path.abspath(args.append)), exist_ok=True)
        with open(args.append, "w") as f:
            json.dump(runs, f, indent=1)
            f.write("\n")


if __name__ == "__main__":
    main()
