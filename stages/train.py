"""train: token array -> one trained GPT-2 per seed (Hugging Face format) + its training curve.

The seeds are trained in parallel worker processes (``train.workers``; each uses
``train.threads`` torch threads), so a 2-core machine trains two seeds at once. The
weights depend on the seed and the thread count, never on the number of workers.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

from stages.paths import METRICS_DIR, MODELS_DIR, TOKENS_DIR, model_name
from universal_neurons.config import Params
from universal_neurons.gpt2 import gpt2_config
from universal_neurons.io import atomic_path, write_json
from universal_neurons.tokens import check_token_ids, end_of_text_id, load_tokenizer, load_tokens
from universal_neurons.train import train_model


def worker_count(params: Params, n_seeds: int) -> int:
    """Processes that train at once: ``train.workers`` (0 = as many as CPU cores allow
    at ``train.threads`` threads each), never more than there are seeds."""
    workers = params.train.workers or max(1, (os.cpu_count() or 1) // params.train.threads)
    return max(1, min(workers, n_seeds))


def run(
    params: Params,
    seeds: list[int] | None = None,
    tokens_dir: Path = TOKENS_DIR,
    models_dir: Path = MODELS_DIR,
    timing_path: Path | None = METRICS_DIR / "train_time.json",
) -> dict[str, dict]:
    """Train the models of ``seeds`` (default: all of ``train.seeds``) into ``models_dir/seed{s}``.

    Returns ``{model name: training report}``. Each model is written atomically, so a
    failure leaves every model that was not finished as it was. The wall times go to
    ``timing_path`` (not into the model directories, whose bytes depend on the inputs only).
    """
    started = time.perf_counter()
    seeds = list(params.train.seeds) if seeds is None else list(seeds)
    for seed in seeds:
        if seed not in params.train.seeds:
            raise ValueError(f"--seed: {seed} is not one of train.seeds {params.train.seeds}")
    _check_tokens(params, tokens_dir)
    workers = worker_count(params, len(seeds))
    if workers == 1:
        reports = {
            model_name(s): train_seed(params, s, tokens_dir, models_dir / model_name(s))
            for s in seeds
        }
    else:
        reports = _train_in_processes(params, seeds, tokens_dir, models_dir, workers)
    reports = {model_name(s): reports[model_name(s)] for s in seeds}
    if timing_path is not None:
        timing = {
            "total_s": round(time.perf_counter() - started, 1),
            "workers": workers,
            "threads": params.train.threads,
            "cpu_count": os.cpu_count(),
            "seconds_per_model": {name: r["wall_time_s"] for name, r in reports.items()},
        }
        write_json(timing_path, timing)
    return reports


def _train_in_processes(
    params: Params, seeds: list[int], tokens_dir: Path, models_dir: Path, workers: int
) -> dict[str, dict]:
    """``train_seed`` of every seed in ``workers`` fresh processes; the first failure is raised
    (seeds not started yet are cancelled, finished ones stay written)."""
    context = multiprocessing.get_context("spawn")  # no torch state inherited from the parent
    reports = {}
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        futures = {
            pool.submit(train_seed, params, s, tokens_dir, models_dir / model_name(s)): s
            for s in seeds
        }
        try:
            for future in as_completed(futures):
                reports[model_name(futures[future])] = future.result()
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return reports


def _check_tokens(params: Params, tokens_dir: Path) -> None:
    """Stop before any training if the token set does not fit the parameters."""
    vocab_size = load_tokenizer(tokens_dir).get_vocab_size()
    for split in ("train", "heldout"):
        array = load_tokens(tokens_dir, split)
        source = str(tokens_dir / f"{split}_tokens.npy")
        check_token_ids(array, vocab_size, source)
        if array.shape[1] != params.tokens.context:
            raise ValueError(
                f"{source}: sequences of {array.shape[1]} tokens, but tokens.context is "
                f"{params.tokens.context}; rerun the tokenize stage"
            )


def train_seed(params: Params, seed: int, tokens_dir: Path, output_dir: Path) -> dict:
    """Train the model of ``seed``; write weights, ``curve.csv`` and ``training.json``."""
    tokenizer = load_tokenizer(tokens_dir)
    train_tokens, heldout = load_tokens(tokens_dir, "train"), load_tokens(tokens_dir, "heldout")
    vocab_size = tokenizer.get_vocab_size()
    config = gpt2_config(params.model, vocab_size, params.tokens.context, end_of_text_id(tokenizer))
    with atomic_path(output_dir) as temp:
        temp.mkdir()
        result = train_model(train_tokens, heldout, config, params.train, seed, temp)
        with (temp / "curve.csv").open("w", newline="") as handle:
            writer = csv.DictWriter(
                handle, fieldnames=["step", "tokens", "train_loss", "heldout_loss"]
            )
            writer.writeheader()
            writer.writerows(result.curve)
        report = {key: value for key, value in vars(result).items() if key != "curve"}
        recorded = {key: value for key, value in report.items() if key != "wall_time_s"}
        (temp / "training.json").write_text(json.dumps(recorded, indent=2, sort_keys=True) + "\n")
    return report
