"""``prefloop bench``: sweeps of runs against true-reward and random baselines (the library side is
:mod:`prefloop.bench`)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prefloop.cli.arguments import algo, positive_int, query_spec, seconds, teacher_spec
from prefloop.cli.raters import non_negative_number
from prefloop.reward_models.config import RATER_MODELS
from prefloop.teachers.simulated import TEACHER_PRESETS
from prefloop.training.algos import ALGORITHMS
from prefloop.training.query import DEFAULT_QUERY, QUERY_METHODS


def ray_address(text: str) -> str:
    """An argparse type: ``auto``, ``HOST:PORT`` or ``ray://HOST:PORT`` (what ``ray.init(address=...)`` takes)."""
    host, _, port = text.removeprefix("ray://").rpartition(":")
    if text == "auto" or (host and port.isdigit() and 0 < int(port) < 65536 and not any(c in host for c in "/ ")):
        return text
    raise argparse.ArgumentTypeError(f"expected auto, HOST:PORT or ray://HOST:PORT (e.g. ray://head:10001), got {text!r}")


def add_bench_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add ``prefloop bench`` to the CLI's subparsers."""
    bench_p = subparsers.add_parser("bench", help="preference runs vs. true-reward and random baselines, over a grid")
    bench_p.add_argument("--envs", nargs="+", default=["CartPole-v1"], help="Gymnasium env ids (default: CartPole-v1)")
    bench_p.add_argument("--labels", nargs="+", type=positive_int, default=[200], help="label budgets (default: 200)")
    bench_p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="seeds (default: 0 1 2)")
    bench_p.add_argument("--teachers", nargs="+", default=["oracle"], type=teacher_spec, metavar="TEACHER[:KEY=VALUE,...]",
                         help=f"simulated teachers: B-Pref's presets ({', '.join(sorted(TEACHER_PRESETS))}), optionally "
                              "with parameters, e.g. mistake:epsilon=0.2; crowds, e.g. crowd:3xcareful@0.05,random,adversarial; "
                              "fitted:PATH,rater=NAME (default: oracle)")
    bench_p.add_argument("--queries", nargs="+", default=[DEFAULT_QUERY], type=query_spec, metavar="METHOD[+qpa][+surf][+cover][+ends]",
                         help=f"query selection methods: {', '.join(QUERY_METHODS)}, each optionally +qpa, +surf, +cover and/or +ends "
                              f"(default: {DEFAULT_QUERY})")
    bench_p.add_argument("--rater-models", nargs="+", default=["reliability"], choices=RATER_MODELS,
                         help="losses compared: per-rater reliability and/or the plain loss (default: reliability)")
    bench_p.add_argument("--algos", nargs="+", default=None, type=algo, metavar="ALGO",
                         help=f"SB3 algorithms ({', '.join(sorted(ALGORITHMS))}) or algorithm classes by import path, "
                              "e.g. sb3_contrib:TRPO (default: each env preset's)")
    bench_p.add_argument("--steps", type=positive_int, default=None, help="env steps per run (default: each preset's)")
    bench_p.add_argument("--workers", type=positive_int, default=None, help="parallel runs (default: CPU cores)")
    bench_p.add_argument("--eval-episodes", type=positive_int, default=10, help="evaluation episodes per run (default: 10)")
    bench_p.add_argument("--resume", action="store_true",
                         help="finish an interrupted sweep in --out: keep its finished runs, run the rest")
    bench_p.add_argument("--reuse", nargs="+", type=Path, default=[], metavar="DIR",
                         help="take runs with an identical config (e.g. true-reward baselines) from these earlier sweep folders")
    bench_p.add_argument("--answer-seconds", type=seconds, default=0.0, metavar="S",
                         help="teachers answer through the store at human pace, S seconds per pair (runs are then "
                              "paced by them; more --workers than cores is fine, they mostly wait)")
    bench_p.add_argument("--answer-seconds-sigma", type=seconds, default=0.0, metavar="SIGMA",
                         help="log-normal spread of those times (default 0: always S)")
    bench_p.add_argument("--background-fit", action=argparse.BooleanOptionalAction, default=None,
                         help="PPO/A2C preference runs fit the reward model in a second process (default: as `prefloop "
                              "train` decides); a run then uses up to two cores: fewer --workers")
    price = bench_p.add_mutually_exclusive_group()
    price.add_argument("--hourly-rate", type=non_negative_number, default=None, metavar="RATE",
                       help="what a rater is paid per hour: results add cost and true return gained per human hour "
                            "and per unit of cost (with a plot); human hours come from --answer-seconds")
    price.add_argument("--cost-per-label", type=non_negative_number, default=None, metavar="PRICE", help="or: what one label costs")
    bench_p.add_argument("--currency", default="USD", help="currency shown beside costs (default: USD)")
    bench_p.add_argument("--out", default="bench-out/latest", help="output folder")
    bench_p.add_argument("--ray", action="store_true", help="run on a local Ray instance instead of a process pool")
    bench_p.add_argument("--ray-address", default=None, type=ray_address, help="run on the Ray cluster at this address (e.g. ray://head:10001)")
    bench_p.set_defaults(func=cmd_bench)
    return bench_p


def cmd_bench(args: argparse.Namespace) -> int:
    from prefloop.bench.sweep import BenchConfig, run_bench
    from prefloop.training.config import ConfigError

    for flag, values in (("--envs", args.envs), ("--labels", args.labels), ("--seeds", args.seeds)):
        twice = sorted({str(v) for v in values if values.count(v) > 1})
        if twice:  # the same run twice: the second would find the first's folder
            raise ConfigError(f"{flag} lists {', '.join(twice)} more than once; give each once")
    config = BenchConfig(
        envs=tuple(args.envs),
        label_budgets=tuple(args.labels),
        seeds=tuple(args.seeds),
        teachers=tuple(args.teachers),
        queries=tuple(args.queries),
        rater_models=tuple(args.rater_models),
        algos=tuple(args.algos) if args.algos else (None,),
        steps=args.steps,
        out_dir=Path(args.out),
        workers=args.workers,
        eval_episodes=args.eval_episodes,
        executor="ray" if (args.ray or args.ray_address) else "process",
        ray_address=args.ray_address,
        resume=args.resume,
        reuse_from=tuple(Path(p) for p in args.reuse),
        answer_seconds=args.answer_seconds,
        answer_seconds_sigma=args.answer_seconds_sigma,
        background_fit=args.background_fit,
        hourly_rate=args.hourly_rate,
        cost_per_label=args.cost_per_label,
        currency=args.currency,
    )
    run_bench(config)
    return 0
