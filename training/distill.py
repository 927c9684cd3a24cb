"""Supernet distillation (post-training attention search, step 1 or 2).

    python training/distill.py --teacher SOURCE_DIR --output_dir runs/distill [--key value ...]
    accelerate launch --config_file training/accelerate/gpu_ddp.yaml training/distill.py --teacher ... --output_dir ...

Settings come from `--config` (default: training/configs/distill.yaml), then `--key value` flags; `--help` lists them.
"""

from pathlib import Path

from jetvit_hf.train import main

if __name__ == "__main__":
    main(mode="distill", default_config=Path(__file__).parent / "configs" / "distill.yaml")
