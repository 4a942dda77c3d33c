"""Run ``polypseg.cli`` in this process and kill it with SIGKILL at a chosen moment (test helper only).

Usage: ``python tests/system/crash_runner.py [--kill-at-step N | --kill-in-save K | --kill-in-swap K] -- CLI ARGS``

* ``--kill-at-step N``: SIGKILL at the start of optimizer step N (0-based global step), i.e. mid-epoch.
* ``--kill-in-save K``: during the K-th save of ``last.ckpt`` (1-based), write half of the checkpoint
  to the temporary file, then SIGKILL: a kill in the middle of writing a checkpoint.
* ``--kill-in-swap K``: during the K-th replacement of ``best/`` (1-based), SIGKILL after the old
  folder was moved aside and before the new one is renamed into place: the worst moment for ``best/``.

Torch runs single-threaded, as in the rest of the test suite, so that runs are comparable bit for bit.
The patches live here, in the tests, so that the library carries no test hooks.
"""

from __future__ import annotations

import argparse
import io
import os
import signal
import sys


def _die() -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    os.kill(os.getpid(), signal.SIGKILL)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--kill-at-step", type=int, default=None)
    parser.add_argument("--kill-in-save", type=int, default=None)
    parser.add_argument("--kill-in-swap", type=int, default=None)
    parser.add_argument("cli", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    cli_args = args.cli[1:] if args.cli[:1] == ["--"] else args.cli

    import torch

    torch.set_num_threads(1)

    from polypseg import training

    if args.kill_at_step is not None:
        step = training.SegmentationModule.training_step

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            if self.global_step == args.kill_at_step:
                _die()
            return step(self, batch, batch_idx)

        training.SegmentationModule.training_step = training_step  # type: ignore[method-assign]

    if args.kill_in_save is not None:
        save = torch.save
        saves = 0

        def half_save(obj, target, *a, **k):  # type: ignore[no-untyped-def]
            nonlocal saves
            if "last.ckpt" in str(target):
                saves += 1
                if saves == args.kill_in_save:
                    buffer = io.BytesIO()
                    save(obj, buffer)
                    with open(target, "wb") as handle:
                        handle.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])
                    _die()
            return save(obj, target, *a, **k)

        torch.save = half_save

    if args.kill_in_swap is not None:
        replace = os.replace
        swaps = 0

        def replace_then_die(source, target):  # type: ignore[no-untyped-def]
            nonlocal swaps
            if os.path.basename(str(source)) == ".best.new":
                swaps += 1
                if swaps == args.kill_in_swap:
                    _die()
            return replace(source, target)

        os.replace = replace_then_die

    from polypseg.apps.cli import main as cli_main

    return cli_main(cli_args)


if __name__ == "__main__":
    sys.exit(main())
