"""The README's manual post-training attention search, run as the README shows it: distill stage 1, search stage 1,
distill stage 2, search stage 2, fine-tune, evaluate, benchmark and write the model card, on the default teacher and
procedural scenes on the CPU, with tiny settings in place of the README's CPU-sized ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

# The README's block under "Post-training attention search", verbatim.
README_FLOW = """\
SRC=training/default_teacher  # the teacher: a source checkpoint directory or Hub id
SEARCH=runs/search_scenes     # scores layouts: a folder or a saved dataset (a depth column is ground truth)
TEST=runs/test_scenes         # reports: disjoint from the search and training scenes, never used to choose
# CPU-sized training (what `jetvit pipeline` runs); on a GPU leave it out for the configs' 5000 / 2000 steps at 224 px
SMALL="--data scenes:600 --image_size 64 --max_steps 300 --warmup_steps 30 --learning_rate 3e-4 --num_workers 0"
# 0. procedural scenes with exact depth: the search split (seed 1) and the test split (seed 2); training draws its
#    scenes:N from seed 0
python -c "from jetvit_hf.data.scenes import scene_dataset as s; s(48, 64, 64, seed=1).save_to_disk('$SEARCH')"
python -c "from jetvit_hf.data.scenes import scene_dataset as s; s(48, 64, 64, seed=2).save_to_disk('$TEST')"
# 1. distill a stage-1 supernet ({linear, window} per layer), one random subnet per step
python training/distill.py --teacher $SRC $SMALL --student_overrides "{window_size: 4}" --output_dir runs/stage1
# 2. beam search stage 1 (linear -> window while it helps)
jetvit search --supernet runs/stage1/supernet --teacher $SRC --data $SEARCH --objective depth --metric abs_rel \\
    --reference teacher --stage 1 --output runs/search1
# 3. stage-2 supernet ({stage-1 choice, full}) and search (-> full until the teacher's score is reached)
python training/distill.py --teacher $SRC $SMALL --student runs/search1/model --candidates stage2 \\
    --output_dir runs/stage2
jetvit search --supernet runs/stage2/supernet --teacher $SRC --data $SEARCH --objective depth --metric abs_rel \\
    --reference teacher --stage 2 --max-full 1 --output runs/search2
# 4. fine-tune the extracted model, evaluate, benchmark, write the model card
python training/finetune.py --teacher $SRC $SMALL --student runs/search2/model --output_dir runs/finetune
jetvit eval --model runs/finetune/model --teacher $SRC --data $TEST --output runs/eval.json
jetvit bench --model runs/finetune/model --device cpu --output runs/bench.json
jetvit card --model runs/finetune/model --search-log runs/search1/search_log.json \\
    --search-log runs/search2/search_log.json --eval runs/eval.json --bench runs/bench.json
"""
# The README's settings -> tiny ones: 2 training steps on 8 scenes, 4 held-out scenes.
TINY = {
    'SMALL="--data scenes:600 --image_size 64 --max_steps 300 --warmup_steps 30 --learning_rate 3e-4 --num_workers 0"':
        'SMALL="--data scenes:8 --image_size 64 --max_steps 2 --warmup_steps 1 --batch_size 4 --num_workers 0 '
        '--report_to none"',
    "s(48, 64, 64, seed=1)": "s(4, 64, 64, seed=1)",
    "s(48, 64, 64, seed=2)": "s(4, 64, 64, seed=2)",
}


def test_the_readme_shows_the_tested_flow():
    assert README_FLOW in (REPO / "README.md").read_text()


@pytest.mark.slow  # ten commands, each a new process that imports torch and transformers: over a minute on 2 cores
def test_manual_flow_end_to_end_on_cpu(tmp_path):
    script = README_FLOW
    for text, tiny in TINY.items():
        assert script.count(text) == 1, text
        script = script.replace(text, tiny)
    (tmp_path / "training").symlink_to(REPO / "training")  # the README's paths, with runs/ in the test's directory
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
           "OMP_NUM_THREADS": "1"}
    result = subprocess.run(["bash", "-e", "-x", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                            timeout=900)
    assert result.returncode == 0, f"stdout:\n{result.stdout[-4000:]}\nstderr:\n{result.stderr[-8000:]}"

    runs, teacher = tmp_path / "runs", REPO / "training" / "default_teacher"
    model = runs / "finetune" / "model"
    provenance = json.loads((model / "jetvit_conversion.json").read_text())
    assert provenance["source"] == str(teacher.resolve())
    assert provenance["source_architecture"] == "DepthAnythingForDepthEstimation"
    speed = json.loads((runs / "bench.json").read_text())["results"]
    assert {"hf", "jetvit"} <= set(speed) and speed["hf"].get("status") in (None, "ok")  # transformers' model beside it
    report = json.loads((runs / "eval.json").read_text())
    assert "vs_ground_truth" in report["depth"]
    card = (model / "README.md").read_text()
    assert "\n# JetViT (hybrid of default_teacher)\n" in card
    assert "| 1 (" in card and "| 2 (" in card  # both search stages
    assert "## Accuracy against the teacher" in card and "| hf |" in card
    types = json.loads((model / "config.json").read_text())["attention_types"]
    assert types.count("full") <= 1 and f"| type | {' | '.join(types)} |" in card
