"""The transformers callback next to the C++ daemon: a tiny BERT (the parity fixture) is
fine-tuned by transformers.Trainer with ColdFusionCallback and by coldfuse-client
--model, through two rounds; every fused base is recomputed here from what each side
uploaded."""
from __future__ import annotations

import os
import random
import shutil
import subprocess

import numpy as np
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from conftest import CLIENT, REPO  # noqa: E402
from coldfuse import Error, load_safetensors  # noqa: E402
from coldfuse.hf import ColdFusionCallback, contribute_rounds, load_base  # noqa: E402

FIXTURE = os.path.join(REPO, "tests", "fixtures", "encoders", "bert")
UP = ["good", "great", "happy", "bright", "warm", "kind", "fine", "calm", "fresh", "sweet",
      "brave", "clean", "fair", "glad", "lucky", "neat", "rich", "safe", "smart", "wise"]
DOWN = ["bad", "awful", "sad", "dark", "cold", "cruel", "poor", "tense", "stale", "sour",
        "weak", "dirty", "unfair", "grim", "unlucky", "messy", "broke", "risky", "dull", "rash"]
NEUTRAL = ["the", "a", "day", "was", "and", "it", "film", "food", "room", "trip", "very",
           "quite", "this", "that", "is", "of", "in", "on", "for", "with", "my", "our", "old",
           "new", "city", "book", "song", "team", "game", "plan", "car", "house", "show",
           "meal", "view", "staff", "price", "service", "place", "story", "ending", "music",
           "hotel", "weather", "road", "town", "park", "shop", "class", "work", "week",
           "year", "night", "morning", "."]


def write_model(folder):
    """The fixture's config and weights with a 100-word vocabulary (as the C++ tests')."""
    os.makedirs(folder, exist_ok=True)
    for f in ("config.json", "model.safetensors"):
        shutil.copy(os.path.join(FIXTURE, f), folder)
    with open(os.path.join(folder, "vocab.txt"), "w") as f:
        f.write("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + UP + DOWN + NEUTRAL)
                + "\n")


def write_task(path, rows, seed):
    rng = random.Random(seed)
    lines = ["text,label"]
    for _ in range(rows):
        pos = rng.random() < 0.5
        words = rng.sample(UP if pos else DOWN, rng.randint(1, 3)) + \
            [rng.choice(NEUTRAL) for _ in range(rng.randint(3, 7))]
        rng.shuffle(words)
        lines.append(f'"{" ".join(words)}",{"pos" if pos else "neg"}')
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


class TextSet(torch.utils.data.Dataset):
    def __init__(self, path, tokenizer):
        rows = [ln.rsplit(",", 1) for ln in open(path).read().splitlines()[1:]]
        self.enc = tokenizer([t.strip('"') for t, _ in rows], truncation=True, max_length=32,
                             padding="max_length")
        self.labels = [1 if y == "pos" else 0 for _, y in rows]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        item = {k: torch.tensor(v[i]) for k, v in self.enc.items()}
        item["labels"] = torch.tensor(self.labels[i])
        return item


def test_the_callback_and_the_cpp_daemon_fuse_into_the_same_base(make_server, tmp_path):
    server = make_server("--min_contributions=2", "--round_timeout_s=0")
    model_dir = str(tmp_path / "model")
    write_model(model_dir)
    server.ctl("init", f"--from={model_dir}/model.safetensors")
    for who, seed in (("alice", 1), ("bob", 2)):
        write_task(tmp_path / f"{who}-train.csv", 96, seed)
        write_task(tmp_path / f"{who}-test.csv", 32, seed + 10)

    # Bob: the C++ daemon, two rounds, keeping copies of what it uploads.
    bob_state = str(tmp_path / "state-bob")
    bob_log = open(tmp_path / "bob.log", "w")
    bob = subprocess.Popen(
        [CLIENT, f"--server={server.address}", f"--tls_ca={server.ca}",
         f"--token_file={server.token('bob')}", "--name=bob", "--task=mood",
         f"--state_dir={bob_state}", "--keep_contributions=5", f"--model={model_dir}",
         f"--train={tmp_path / 'bob-train.csv'}", f"--test={tmp_path / 'bob-test.csv'}",
         "--steps=8", "--batch_size=16", "--lr=3e-3", "--max_seq_length=32", "--threads=1",
         "--max_rounds=2", "--poll_s=0.1"], stdout=bob_log, stderr=subprocess.STDOUT)

    # Alice: transformers.Trainer with the callback, the same model object both rounds
    # (her classification head stays local and carries over).
    tokenizer = transformers.BertTokenizer(os.path.join(model_dir, "vocab.txt"),
                                           clean_up_tokenization_spaces=True)
    config = transformers.BertConfig.from_pretrained(model_dir, num_labels=2)
    torch.manual_seed(0)
    model = transformers.BertForSequenceClassification(config)
    train = TextSet(tmp_path / "alice-train.csv", tokenizer)
    test = TextSet(tmp_path / "alice-test.csv", tokenizer)

    def make_trainer(cb):
        args = transformers.TrainingArguments(
            output_dir=str(tmp_path / "hf"), max_steps=8, per_device_train_batch_size=16,
            learning_rate=3e-3, report_to=[], save_strategy="no", logging_steps=4,
            eval_strategy="steps", eval_steps=8, use_cpu=True, seed=1,
            disable_tqdm=True)
        return transformers.Trainer(model=model, args=args, train_dataset=train,
                                    eval_dataset=test, callbacks=[cb])

    with server.client("alice") as alice:
        done = contribute_rounds(alice, make_trainer, 2, task="mood")
    assert bob.wait(timeout=300) == 0, open(tmp_path / "bob.log").read()
    assert [cb.base_version for cb in done] == [0, 1]
    assert [cb.result.round for cb in done] == [1, 2]
    assert "eval_loss" in server.client("vera").round(1).contributions[
        [c.contributor for c in server.client("vera").round(1).contributions].index("alice")
    ].metrics

    # Every fused base, recomputed: the mean (in binary32) of what alice's callback pushed
    # and what bob's daemon uploaded, both trained from the round's base.
    with server.client("vera") as viewer:
        for rnd, cb in zip((1, 2), done):
            info = viewer.round(rnd)
            assert sorted(c.contributor for c in info.contributions) == ["alice", "bob"]
            assert all(c.staleness == 0 for c in info.contributions)
            bob_up = load_safetensors(os.path.join(bob_state, f"contrib-r{rnd}.safetensors"),
                                      framework="numpy")
            fused, version = viewer_pull(server, rnd)
            assert version == rnd
            assert set(fused) == set(bob_up) == set(cb.pushed)
            half = np.float32(0.5)
            for name, got in fused.items():
                a = cb.pushed[name].numpy().astype(np.float32)
                b = np.asarray(bob_up[name], dtype=np.float32)
                expect = half * a + half * b
                np.testing.assert_array_equal(got, expect, err_msg=f"{name} in base v{rnd}")
        # The model trained round 2 from base v1 exactly: what the callback loaded.
        v1, _ = viewer_pull(server, 1)
        changed = sum(not np.array_equal(cb.pushed[n].numpy(), v1[n]) for n in v1)
        assert changed > 0


def viewer_pull(server, version):
    with server.client("eve") as c:  # an evaluator may pull bases
        return c.pull_tensors(version, framework="numpy")


def test_a_model_that_does_not_fit_the_base_is_named_before_anything_changes(
        make_server, tmp_path):
    server = make_server("--min_contributions=1", "--round_timeout_s=0")
    model_dir = str(tmp_path / "model")
    write_model(model_dir)
    server.ctl("init", f"--from={model_dir}/model.safetensors")
    config = transformers.BertConfig.from_pretrained(model_dir, num_labels=2,
                                                     intermediate_size=48)
    model = transformers.BertForSequenceClassification(config)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with server.client("alice") as c:
        base, _ = c.pull_tensors()
    with pytest.raises(Error) as e:
        load_base(model, base)
    assert e.value.code.name == "INVALID_ARGUMENT"
    assert "encoder.layer.0.intermediate.dense.weight: base [64, 32], model [48, 32]" in \
        e.value.message
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
