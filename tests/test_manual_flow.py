"""The README's manual post-training attention search, run as the README shows it: distill stage 1, search stage 1,
distill stage 2, search stage 2, fine-tune, evaluate, benchmark and write the model card, on the default teacher and
rendered scenes on the CPU, with tiny settings in place of the README's CPU-sized ones."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import REPO

# The README's block under "Post-training attention search", verbatim.
README_FLOW = """\
SRC=training/teachers/depth-dinov2-tiny  # the teacher: a source checkpoint directory or Hub id
SEARCH=runs/search_scenes  # scores layouts: a folder or a saved dataset (a depth column is ground truth)
TEST=runs/test_scenes      # reports: disjoint from the search and training scenes, never used to choose
# CPU-sized training at half the teacher's resolution; on a GPU leave it out for the configs' 5000 / 2000 steps
SMALL="--data render:train --image_size 224 --max_steps 32 --warmup_steps 4 --batch_size 8 --learning_rate 3e-4"
# 0. rendered scenes with exact depth and labels from the renderer's search and test splits (training renders its
#    own from the train split as it goes): three disjoint seed ranges
python -c "from jetvit_hf.data.render_stream import render_dataset as r; r('search', 48, 224, 224).save_to_disk('$SEARCH')"
python -c "from jetvit_hf.data.render_stream import render_dataset as r; r('test', 48, 224, 224).save_to_disk('$TEST')"
# 1. distill a stage-1 supernet ({linear, window} per layer), one random subnet per step
python training/distill.py --teacher $SRC $SMALL --student_overrides "{window_size: 8}" --output_dir runs/stage1
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
# The README's settings -> tiny ones: 2 training steps at 56 px, 4 held-out scenes.
TINY = {
    'SMALL="--data render:train --image_size 224 --max_steps 32 --warmup_steps 4 --batch_size 8 --learning_rate 3e-4"':
        'SMALL="--data render:train:8 --image_size 56 --max_steps 2 --warmup_steps 1 --batch_size 4 --report_to none"',
    "r('search', 48, 224, 224)": "r('search', 4, 56, 56)",
    "r('test', 48, 224, 224)": "r('test', 4, 56, 56)",
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

    runs, teacher = tmp_path / "runs", REPO / "training" / "teachers" / "depth-dinov2-tiny"
    model = runs / "finetune" / "model"
    provenance = json.loads((model / "jetvit_conversion.json").read_text())
    assert provenance["source"] == str(teacher.resolve())
    assert provenance["source_architecture"] == "DepthAnythingForDepthEstimation"
    speed = json.loads((runs / "bench.json").read_text())["results"]
    assert {"hf", "jetvit"} <= set(speed) and speed["hf"].get("status") in (None, "ok")  # transformers' model beside it
    report = json.loads((runs / "eval.json").read_text())
    assert "vs_ground_truth" in report["depth"]
    card = (model / "README.md").read_text()
    assert "\n# JetViT (hybrid of depth-dinov2-tiny)\n" in card
    assert "| 1 (" in card and "| 2 (" in card  # both search stages
    assert "## Accuracy against the teacher" in card and "| hf |" in card
    types = json.loads((model / "config.json").read_text())["attention_types"]
    assert types.count("full") <= 1 and f"| type | {' | '.join(types)} |" in card
