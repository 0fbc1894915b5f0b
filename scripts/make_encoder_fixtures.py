#!/usr/bin/env python3
"""Regenerates tests/fixtures/encoders/: tiny random BERT and RoBERTa checkpoints saved by
`transformers`, input batches and the reference last hidden states that
client/train/encoder_test.cc must reproduce.

    /usr/bin/python3 -m venv --system-site-packages /tmp/coldfuse-hf-venv  # sees Debian torch 1.13
    /tmp/coldfuse-hf-venv/bin/pip install 'transformers==4.40.2' 'safetensors==0.8.0'
    /tmp/coldfuse-hf-venv/bin/python scripts/make_encoder_fixtures.py

A venv of its own because transformers 4.40 (the last line that runs on torch 1.13 here)
pins tokenizers<0.20, while the repo's .venv keeps a newer tokenizers for the tokenizer
fixtures. The output is deterministic (seeded); rerunning reproduces the files byte for byte.

bert/    BertModel (tensor names without a prefix, pooler included), gelu.
roberta/ RobertaForSequenceClassification (names prefixed "roberta.", plus the
         classifier.* head, which the encoder must ignore), gelu_new.
Each folder: config.json, model.safetensors, inputs.json, expected.json (values rounded to
6 decimals; the C++ side compares within 1e-4).
"""
import json
import os

import torch
import transformers
from transformers import BertConfig, BertModel, RobertaConfig, RobertaForSequenceClassification

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures",
                   "encoders")
COMMON = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
              intermediate_size=64, initializer_range=0.1)


def perturb(model, gen):
    # Random init leaves biases at 0 and LayerNorms at 1/0; noise makes every tensor matter.
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn(p.shape, generator=gen))


def pad_batch(seqs, pad, types=None):
    n = max(len(s) for s in seqs)
    ids = [s + [pad] * (n - len(s)) for s in seqs]
    mask = [[1] * len(s) + [0] * (n - len(s)) for s in seqs]
    if types is None:
        types = [[0] * n for _ in seqs]
    else:
        types = [t + [0] * (n - len(t)) for t in types]
    return {"input_ids": ids, "token_type_ids": types, "attention_mask": mask}


def rand_tokens(gen, n, lo=5, hi=100):
    return torch.randint(lo, hi, (n,), generator=gen).tolist()


def write(folder, model, encoder, batches):
    os.makedirs(folder, exist_ok=True)
    model.save_pretrained(folder, safe_serialization=True)
    os.chmod(os.path.join(folder, "model.safetensors"), 0o644)  # save_pretrained makes it 0600
    expected = []
    with torch.no_grad():
        for b in batches:
            out = encoder(input_ids=torch.tensor(b["input_ids"]),
                          token_type_ids=torch.tensor(b["token_type_ids"]),
                          attention_mask=torch.tensor(b["attention_mask"])).last_hidden_state
            expected.append({"last_hidden_state": [[[round(v, 6) for v in tok] for tok in seq]
                                                   for seq in out.tolist()]})
    with open(os.path.join(folder, "inputs.json"), "w") as f:
        json.dump({"batches": batches}, f)
    with open(os.path.join(folder, "expected.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "batches": expected}, f)


def main():
    gen = torch.Generator().manual_seed(1234)
    torch.manual_seed(1234)

    # BERT: [CLS]=2, [SEP]=3, [PAD]=0.
    bert = BertModel(BertConfig(max_position_embeddings=64, type_vocab_size=2, hidden_act="gelu",
                                pad_token_id=0, **COMMON)).eval()
    perturb(bert, gen)
    single = [[2] + rand_tokens(gen, n) + [3] for n in (9, 4, 1)]
    a, b = rand_tokens(gen, 5), rand_tokens(gen, 3)
    a2, b2 = rand_tokens(gen, 2), rand_tokens(gen, 7)
    pairs = [[2] + a + [3] + b + [3], [2] + a2 + [3] + b2 + [3]]
    pair_types = [[0] * (len(a) + 2) + [1] * (len(b) + 1), [0] * (len(a2) + 2) + [1] * (len(b2) + 1)]
    longest = [[2] + rand_tokens(gen, 62) + [3]]  # every position of the table
    bert_batches = [pad_batch(single, 0), pad_batch(pairs, 0, pair_types), pad_batch(longest, 0)]
    write(os.path.join(OUT, "bert"), bert, bert, bert_batches)

    # RoBERTa: <s>=0, <pad>=1, </s>=2; positions run from pad+1 = 2, so 66 entries fit 64 tokens.
    roberta = RobertaForSequenceClassification(RobertaConfig(
        max_position_embeddings=66, type_vocab_size=1, hidden_act="gelu_new", pad_token_id=1,
        bos_token_id=0, eos_token_id=2, num_labels=3, **COMMON)).eval()
    perturb(roberta, gen)
    single = [[0] + rand_tokens(gen, n) + [2] for n in (8, 3, 5)]
    pairs = [[0] + rand_tokens(gen, 4) + [2, 2] + rand_tokens(gen, 6) + [2]]
    longest = [[0] + rand_tokens(gen, 62) + [2], [0] + rand_tokens(gen, 20) + [2]]
    roberta_batches = [pad_batch(single, 1), pad_batch(pairs, 1), pad_batch(longest, 1)]
    write(os.path.join(OUT, "roberta"), roberta, roberta.roberta, roberta_batches)


if __name__ == "__main__":
    main()
