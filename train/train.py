"""Fine-tune an encoder on the coopstance corpus and export it.

    python train/train.py --config configs/tiny.yaml                      # offline CPU demo
    python train/train.py --config configs/mbert.yaml train.epochs=4      # overrides: dotted key=value
    torchrun --nproc_per_node 8 train/train.py --config configs/mbert.yaml
    python train/train.py --help                                          # every key, its default and meaning
"""

from __future__ import annotations

import argparse
import json
import sys

from coopstance.config import ConfigError, help_text, load_config
from coopstance.data import DataError
from coopstance.model import ModelUnavailableError
from coopstance.training import RunFolderError, train


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, epilog="Config keys:\n" + help_text(), formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", default="configs/mbert.yaml", help="YAML config (default: %(default)s)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. train.epochs=3")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        metrics = train(cfg, argv=["train/train.py", *argv])
    except (ConfigError, DataError, ModelUnavailableError, RunFolderError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    finally:
        # A clean shutdown of the process group: without it one gloo rank can abort while the other exits.
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    if metrics:  # empty on non-zero ranks
        test = metrics["test"]
        summary = {k: test[k] for k in ("topic_macro_f1", "stance_macro_f1", "selection_score")}
        print(f"[coopstance] run folder: {cfg.run_dir}\n[coopstance] test: {json.dumps(summary)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
