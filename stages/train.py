"""Stage train: train the model of every seed (in parallel processes, train.workers).

Token array -> one trained GPT-2 per seed (Hugging Face format) + its training curve.

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
from typing import TYPE_CHECKING

import click

from universal_neurons.errors import UserError
from universal_neurons.io import Terminated, atomic_path, exit_on_sigterm, write_json
from universal_neurons.models.gpt2 import gpt2_config
from universal_neurons.models.training import train_model, training_memory
from universal_neurons.pipeline.command import Out, Stage
from universal_neurons.pipeline.layout import Layout, model_name
from universal_neurons.pipeline.runner import stage_main
from universal_neurons.resources import check_memory
from universal_neurons.text.tokens import (
    TokensError,
    check_token_ids,
    end_of_text_id,
    load_tokenizer,
    load_tokens,
)

if TYPE_CHECKING:  # annotations only: the parameters are validated by the command line
    from universal_neurons.config import Params


def worker_count(params: Params, n_seeds: int) -> int:
    """Processes that train at once: ``train.workers`` (0 = as many as CPU cores allow
    at ``train.threads`` threads each), never more than there are seeds."""
    workers = params.train.workers or max(1, (os.cpu_count() or 1) // params.train.threads)
    return max(1, min(workers, n_seeds))


def run(params: Params, layout: Layout, seeds: tuple[int, ...] = ()) -> dict[str, dict]:
    """Train the models of ``seeds`` (default: all of ``train.seeds``) into ``models/seed{s}``.

    Returns ``{model name: training report}``. Each model is written atomically, so a
    failure leaves every model that was not finished as it was. The wall times go to
    ``metrics/train_time.json`` (not into the model directories, whose bytes depend on the
    inputs only).
    """
    started = time.perf_counter()
    seeds = tuple(seeds) or tuple(params.train.seeds)
    for seed in seeds:
        if seed not in params.train.seeds:
            raise UserError(f"--seed: {seed} is not one of train.seeds {params.train.seeds}")
    _check_tokens(params, layout.tokens)
    workers = worker_count(params, len(seeds))
    _check_memory(params, layout.tokens, workers)
    if workers == 1:
        reports = {
            model_name(s): train_seed(params, s, layout.tokens, layout.model(s)) for s in seeds
        }
    else:
        reports = _train_in_processes(params, seeds, layout, workers)
    reports = {model_name(s): reports[model_name(s)] for s in seeds}
    timing = {
        "total_s": round(time.perf_counter() - started, 1),
        "workers": workers,
        "threads": params.train.threads,
        "cpu_count": os.cpu_count(),
        "seconds_per_model": {name: r["wall_time_s"] for name, r in reports.items()},
    }
    write_json(layout.metric("train_time.json"), timing)
    return reports


def _train_in_processes(
    params: Params, seeds: tuple[int, ...], layout: Layout, workers: int
) -> dict[str, dict]:
    """``train_seed`` of every seed in ``workers`` fresh processes; the first failure is raised
    (seeds not started yet are cancelled, finished ones stay written)."""
    context = multiprocessing.get_context("spawn")  # no torch state inherited from the parent
    reports = {}
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=exit_on_sigterm)
    with pool:
        futures = {
            pool.submit(train_seed, params, s, layout.tokens, layout.model(s)): s for s in seeds
        }
        try:
            for future in as_completed(futures):
                reports[model_name(futures[future])] = future.result()
        except (Terminated, KeyboardInterrupt):
            _stop_workers(pool)
            raise
        except BaseException:
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return reports


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Cancel the seeds not started and SIGTERM the running workers, which remove their
    temporary model directories (``exit_on_sigterm``) before they exit; wait for them."""
    processes = list((pool._processes or {}).values())  # shutdown forgets them
    pool.shutdown(wait=False, cancel_futures=True)
    for process in processes:
        if process.is_alive():
            process.terminate()
    for process in processes:
        process.join()


def _check_tokens(params: Params, tokens_dir: Path) -> None:
    """Stop before any training if the token set does not fit the parameters."""
    vocab_size = load_tokenizer(tokens_dir).get_vocab_size()
    for split in ("train", "heldout"):
        array = load_tokens(tokens_dir, split)
        source = str(tokens_dir / f"{split}_tokens.npy")
        check_token_ids(array, vocab_size, source)
        if array.shape[1] != params.tokens.context:
            raise TokensError(
                f"{source}: sequences of {array.shape[1]} tokens, but tokens.context is "
                f"{params.tokens.context}; rerun the tokenize stage"
            )


def _check_memory(params: Params, tokens_dir: Path, workers: int) -> None:
    """Stop before any allocation if ``workers`` models training at once need more memory
    than the machine offers (the estimate of ``training_memory``)."""
    tokenizer = load_tokenizer(tokens_dir)
    context = params.tokens.context
    config = gpt2_config(params.model, tokenizer.get_vocab_size(), context, 0)
    parts = training_memory(params.train, config, context)
    what = "training one model" if workers == 1 else f"training {workers} models at once"
    check_memory({key: (cause, size * workers) for key, (cause, size) in parts.items()}, what)


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


COMMAND = Stage(
    name="train",
    params=(
        "model",
        "train.seeds",
        "train.tokens_per_model",
        "train.batch_size",
        "train.learning_rate",
        "train.warmup_fraction",
        "train.weight_decay",
        "train.heldout_sequences",
        "train.eval_every_steps",
        "train.checkpoint_tokens",
        "train.checkpoint_dtype",
        "train.device",
        "train.threads",
    ),
    inputs=lambda layout: [layout.tokens],
    outputs=lambda layout: [
        Out(layout.models),
        Out(layout.metric("train_time.json"), cache=False),
    ],
    run=run,
    options=[
        click.option(
            "--seed",
            "seeds",
            type=int,
            multiple=True,
            help="Train only this seed of train.seeds (repeatable; default: every seed).",
        )
    ],
)

if __name__ == "__main__":
    stage_main(COMMAND, __doc__)
