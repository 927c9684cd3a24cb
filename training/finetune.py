"""Fine-tune an extracted JetViT by distillation from its teacher (plus Depth Anything's losses for depth models).

    python training/finetune.py --teacher SOURCE_DIR --student EXTRACTED_DIR --output_dir runs/finetune ...
    accelerate launch --config_file training/accelerate/gpu_ddp.yaml training/finetune.py --teacher ... --student ...

Settings come from `--config` (default: training/configs/finetune.yaml), then `--key value` flags; `--help` lists them.
"""

from pathlib import Path

from jetvit_hf.train import main

if __name__ == "__main__":
    main(mode="finetune", default_config=Path(__file__).parent / "configs" / "finetune.yaml")
