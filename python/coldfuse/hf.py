"""Hugging Face `transformers` integration: a TrainerCallback that starts training from
the server's current base and contributes the result, and a loop that does so round
after round. The task head (any tensor the base does not have) stays local.

    from coldfuse import Client
    from coldfuse.hf import ColdFusionCallback

    cb = ColdFusionCallback(Client(...), task="sst2")
    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=dev,
                      callbacks=[cb])
    trainer.train()          # loads base vN first; pushes the shared tensors at the end
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import grpc

from coldfuse.client import Client, PushResult
from coldfuse.errors import Error

try:
    from transformers import TrainerCallback
except ImportError as e:  # pragma: no cover
    raise ImportError("coldfuse.hf needs transformers: pip install \"./python[hf]\"") from e


def shared_names(model: Any, base_names: List[str]) -> Dict[str, str]:
    """{base name: model state_dict key} for every base tensor, matching names with or
    without the model's base_model_prefix ("bert.", "roberta.")."""
    keys = set(model.state_dict().keys())
    prefix = getattr(model, "base_model_prefix", "") or ""
    prefix = prefix + "." if prefix else ""
    out: Dict[str, str] = {}
    for name in base_names:
        for candidate in (name, prefix + name,
                          name[len(prefix):] if prefix and name.startswith(prefix) else None):
            if candidate is not None and candidate in keys:
                out[name] = candidate
                break
    return out


def load_base(model: Any, base: Mapping[str, Any]) -> Dict[str, str]:
    """Copies the base's tensors into the model's matching parameters and buffers (in the
    model's dtype and device) and returns {base name: model key}. Raises
    coldfuse.Error(INVALID_ARGUMENT) listing every base tensor the model lacks and every
    shape that differs, before changing anything."""
    import torch
    names = shared_names(model, list(base))
    state = model.state_dict()
    missing = [n for n in base if n not in names]
    wrong = [f"{n}: base {list(base[n].shape)}, model {list(state[k].shape)}"
             for n, k in names.items() if tuple(base[n].shape) != tuple(state[k].shape)]
    if missing or wrong:
        parts = []
        if missing:
            parts.append(f"{len(missing)} base tensors have no counterpart in the model: "
                         + ", ".join(missing[:10]) + (" ..." if len(missing) > 10 else ""))
        if wrong:
            parts.append("shapes differ: " + "; ".join(wrong[:10]))
        raise Error(grpc.StatusCode.INVALID_ARGUMENT,
                    "the model does not fit the server's base: " + "; ".join(parts) +
                    " (is it the architecture the server was initialised with?)")
    with torch.no_grad():
        for n, k in names.items():
            state[k].copy_(base[n].to(dtype=state[k].dtype, device=state[k].device))
    return names


class ColdFusionCallback(TrainerCallback):
    """Joins the open round from `transformers.Trainer`.

    on_train_begin: pulls base `version` (default: the current one) and loads it into the
    model's shared tensors (load_base). on_train_end (after Trainer has loaded the best
    checkpoint, with `load_best_model_at_end`): pushes the shared tensors, named as the
    base names them, as a contribution fine-tuned from that base, with `num_examples`
    (default: the length of the trainer's training set) and the trainer's last metrics
    (eval_* but timings, and train_loss). Keyword arguments of Client.push (encoding,
    send_dtype, name, metrics) pass through. After training, `.base_version` is the base
    it started from and `.result` the PushResult.
    """

    def __init__(self, client: Client, *, task: str = "", num_examples: Optional[int] = None,
                 version: Optional[int] = None, push: bool = True, **push_options: Any):
        self.client = client
        self.task = task
        self.num_examples = num_examples
        self.version = version
        self.push = push
        self.push_options = push_options
        self.base_version: Optional[int] = None
        self.result: Optional[PushResult] = None
        self.pushed: Dict[str, Any] = {}
        self._names: Dict[str, str] = {}
        self._train_size: Optional[int] = None

    def on_train_begin(self, args, state, control, model=None, train_dataloader=None,
                       **kwargs):
        if model is None:
            raise ValueError("ColdFusionCallback needs the Trainer's model")
        base, self.base_version = self.client.pull_tensors(self.version, framework="torch")
        self._names = load_base(model, base)
        del base
        if train_dataloader is not None and hasattr(train_dataloader, "dataset"):
            try:
                self._train_size = len(train_dataloader.dataset)
            except TypeError:
                self._train_size = None

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if not self.push or model is None:
            return
        if self.base_version is None:
            raise RuntimeError("on_train_end before on_train_begin")
        n = self.num_examples or self._train_size
        if not n:
            raise ValueError("ColdFusionCallback: give num_examples (the training set has "
                             "no length)")
        state_dict = model.state_dict()
        tensors = {name: state_dict[key].detach() for name, key in self._names.items()}
        options = dict(self.push_options)
        metrics: Dict[str, float] = {}
        for entry in state.log_history:  # the last value of each score reported
            for k, v in entry.items():
                timing = k.endswith("_runtime") or k.endswith("_per_second")
                if isinstance(v, (int, float)) and math.isfinite(v) and not timing and (
                        k.startswith("eval_") or k == "train_loss"):
                    metrics[k] = float(v)
        metrics.update(options.pop("metrics", None) or {})  # the caller's own win
        self.pushed = {k: t.to("cpu").clone() for k, t in tensors.items()}
        self.result = self.client.push(tensors, num_examples=int(n), task=self.task,
                                       metrics=metrics, from_base=self.base_version,
                                       **options)


def contribute_rounds(client: Client, make_trainer: Callable[[ColdFusionCallback], Any],
                      rounds: int, *, wait_timeout: float = 24 * 3600,
                      **callback_options: Any) -> List[ColdFusionCallback]:
    """Takes part in `rounds` rounds: each time builds a Trainer with
    make_trainer(callback) (pass the callback in its `callbacks`; reuse the same model
    object to keep the head across rounds), trains it (starting from the current base and
    contributing at the end), then waits until the round it contributed to has closed
    before the next. Returns the callbacks (their .result and .base_version)."""
    done: List[ColdFusionCallback] = []
    for _ in range(rounds):
        cb = ColdFusionCallback(client, **callback_options)
        trainer = make_trainer(cb)
        if cb not in getattr(trainer.callback_handler, "callbacks", []):
            trainer.add_callback(cb)
        trainer.train()
        done.append(cb)
        if cb.result is not None:
            client.wait_for_round(cb.result.round, timeout=wait_timeout)
    return done
