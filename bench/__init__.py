"""Benchmarks of the real service: each scenario is a module, run from the repository root as

    PYTHONPATH=. .venv/bin/python -m bench.fanout --help

``harness`` starts PostgreSQL, gunicorn and the load processes and measures CPU;
``wire`` is the client side of HTTP and SSE (parsing through ``streamapp.sse``);
``load`` and ``publisher`` run in processes of their own under gevent; ``fanout``,
``replay``, ``appends``, ``chunks`` and ``connect`` are the scenarios (SPEC §8,
docs/performance.md). Each prints one Markdown table and the command that made it.
``side_by_side`` starts the comparison servers of ``../shared/bench`` beside ours for
``ttfe_side_by_side`` and ``replay_side_by_side``, which run on that bench's interpreter.
"""
