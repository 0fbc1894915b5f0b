#!/usr/bin/env python3
"""A Python contributor: fine-tunes the server's base (a BERT-family checkpoint such as
the all-MiniLM-L6-v2 that `make demo-text` uses) on a labelled text task with
transformers.Trainer, and contributes the encoder to each round with
coldfuse.hf.ColdFusionCallback. The classification head stays on this machine.

  python3 finetune_minilm.py --server=127.0.0.1:7878 --insecure --name=alice \\
      --model=models/all-MiniLM-L6-v2 --train=train.csv --dev=dev.csv --test=test.csv

Data: CSV files with a header "text,label" (the label a class name), as
scripts/prepare_text_task.sh writes them.
"""
import argparse
import csv
import sys

import numpy as np
import torch
import transformers

from coldfuse import Client
from coldfuse.hf import contribute_rounds


def read_task(path):
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r["label"] for r in rows]


class Texts(torch.utils.data.Dataset):
    def __init__(self, texts, labels, label_ids, tokenizer, max_length):
        self.enc = tokenizer(texts, truncation=True, max_length=max_length)
        self.labels = [label_ids[y] for y in labels]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: v[i] for k, v in self.enc.items()}
        item["labels"] = self.labels[i]
        return item


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--server", default="127.0.0.1:7878")
    p.add_argument("--ca", help="the server's CA certificate (TLS)")
    p.add_argument("--insecure", action="store_true", help="a server run --insecure")
    p.add_argument("--token_file", help="default: $COLDFUSE_TOKEN")
    p.add_argument("--name", required=True)
    p.add_argument("--task", default="")
    p.add_argument("--model", required=True, help="the checkpoint folder (config, tokenizer)")
    p.add_argument("--train", required=True)
    p.add_argument("--dev")
    p.add_argument("--test", required=True)
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--warmup_ratio", type=float, default=0.1)
    p.add_argument("--max_seq_length", type=int, default=64)
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--send_dtype", default=None, help="f32, f16 or bf16 (default: as trained)")
    p.add_argument("--output_dir", default="hf-run")
    a = p.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)

    texts, labels = read_task(a.train)
    names = sorted(set(labels))
    label_ids = {n: i for i, n in enumerate(names)}
    tokenizer = transformers.AutoTokenizer.from_pretrained(a.model)
    model = transformers.AutoModelForSequenceClassification.from_pretrained(
        a.model, num_labels=len(names), id2label=dict(enumerate(names)), label2id=label_ids)
    train = Texts(texts, labels, label_ids, tokenizer, a.max_seq_length)
    dev = Texts(*read_task(a.dev), label_ids, tokenizer, a.max_seq_length) if a.dev else None
    test = Texts(*read_task(a.test), label_ids, tokenizer, a.max_seq_length)

    def accuracy(pred):
        return {"accuracy": float(np.mean(np.argmax(pred.predictions, -1) == pred.label_ids))}

    def make_trainer(callback):
        args = transformers.TrainingArguments(
            output_dir=a.output_dir, max_steps=a.steps, per_device_train_batch_size=a.batch_size,
            per_device_eval_batch_size=2 * a.batch_size, learning_rate=a.lr,
            warmup_ratio=a.warmup_ratio, weight_decay=0.01, report_to=[], save_strategy="no",
            eval_strategy="steps" if dev else "no", eval_steps=max(1, a.steps // 2),
            logging_steps=max(1, a.steps // 6), use_cpu=not torch.cuda.is_available(), seed=1,
            disable_tqdm=True)
        return transformers.Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                                    data_collator=transformers.DataCollatorWithPadding(tokenizer),
                                    compute_metrics=accuracy, callbacks=[callback])

    kw = {"ca": a.ca, "token_file": a.token_file, "insecure": a.insecure}
    with Client(a.server, **kw) as client:
        done = contribute_rounds(client, make_trainer, a.rounds, task=a.task or a.name,
                                 name=a.name, send_dtype=a.send_dtype)
        for cb in done:
            r = cb.result
            print(f"{a.name}: fine-tuned base v{cb.base_version}, contribution "
                  f"{r.contribution_id} accepted in round {r.round} ({r.bytes} bytes)")
        final = transformers.Trainer(model=model, args=transformers.TrainingArguments(
            output_dir=a.output_dir, report_to=[], use_cpu=not torch.cuda.is_available(),
            per_device_eval_batch_size=2 * a.batch_size, disable_tqdm=True),
            data_collator=transformers.DataCollatorWithPadding(tokenizer),
            compute_metrics=accuracy).evaluate(test)
        print(f"{a.name}: test accuracy after its last round {final['eval_accuracy']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
