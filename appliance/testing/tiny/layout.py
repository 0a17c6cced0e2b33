"""A generated PP-DocLayoutV2: the real layout model's signature, boxes a function of the page.

The real PaddleOCR-VL repo keeps its layout model in `PP-DocLayoutV2/` as `inference.pdmodel`
(Paddle's legacy program format) + `inference.pdiparams` + `inference.yml` + `config.json`
(manifests/facts/paddleocr-vl.yaml). PaddleX takes `inference.json` first and the `.pdmodel` only
when there is no JSON (paddlex/inference/models/utils/model_paths.py), so we write the `.pdmodel`:
CI loads the model through the same loader production does. A fresh `paddle.jit.save` writes PIR
JSON, hence `paddle.static` with `FLAGS_enable_pir_api=0`, in a child process (the flag is read at
paddle's import, and the gateway's process must keep its defaults).

Signature (DESIGN §14): inputs `im_shape`, `image`, `scale_factor` ([B,2], [B,3,800,800], [B,2]);
outputs `bbox` [B·K, 8] rows `cls, score, x1, y1, x2, y2, order_seq, order_votes` in the original
page's pixels (page size = floor(im_shape / scale_factor + 0.5)) and `bbox_num` [B]. The K boxes are
fixed fractions of the page: a page read with another page's `scale_factor` gets other boxes.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from appliance.testing.tiny._files import dump_json

MODEL_NAME = "PP-DocLayoutV2"
SUBDIR = "PP-DocLayoutV2"
# (PaddleX label id, label, x1, y1, x2, y2 as fractions of the page) in reading order; disjoint
# boxes so NMS and PaddleX's merging keep every one.
REGIONS: tuple[tuple[int, str, float, float, float, float], ...] = (
    (6, "doc_title", 0.10, 0.04, 0.90, 0.10),
    (22, "text", 0.10, 0.13, 0.90, 0.28),
    (21, "table", 0.10, 0.31, 0.90, 0.52),
    (5, "display_formula", 0.25, 0.55, 0.75, 0.62),
    (14, "image", 0.10, 0.65, 0.45, 0.90),
    (22, "text", 0.55, 0.65, 0.90, 0.90),
)
SCORE = 0.9

_CHILD = r"""
import json, sys
import numpy as np
import paddle
paddle.enable_static()
paddle.seed(0)
out, regions, score = sys.argv[1], json.loads(sys.argv[2]), float(sys.argv[3])
main, startup = paddle.static.Program(), paddle.static.Program()
main.random_seed = startup.random_seed = 0
with paddle.static.program_guard(main, startup):
    im_shape = paddle.static.data("im_shape", [-1, 2], "float32")
    image = paddle.static.data("image", [-1, 3, -1, -1], "float32")
    scale_factor = paddle.static.data("scale_factor", [-1, 2], "float32")
    k = len(regions)
    frac = paddle.static.create_parameter(
        [k, 4], "float32", name="frac",
        default_initializer=paddle.nn.initializer.Assign(np.array([r[1:] for r in regions], "float32")))
    head = paddle.static.create_parameter(
        [k, 2], "float32", name="head",
        default_initializer=paddle.nn.initializer.Assign(np.array([[r[0], score] for r in regions], "float32")))
    order = paddle.static.create_parameter(
        [k, 2], "float32", name="order",
        default_initializer=paddle.nn.initializer.Assign(np.array([[i + 1, 1] for i in range(k)], "float32")))
    # floor(im_shape / scale_factor + 0.5) = (h, w) of the original page; a cast truncates (> 0),
    # paddle.floor has no legacy-program kernel binding in paddle 3.3
    size = paddle.cast(paddle.cast(im_shape / scale_factor + 0.5, "int64"), "float32")
    wh = paddle.concat([size[:, 1:2], size[:, 0:1], size[:, 1:2], size[:, 0:1]], axis=1)
    boxes = paddle.unsqueeze(wh, 1) * paddle.unsqueeze(frac, 0)  # [B, K, 4]
    ones = paddle.ones_like(boxes[:, :, 0:2])
    # `image` is otherwise unused and the exporter would prune the input: keep it alive.
    alive = paddle.mean(image) * 0.0
    rows = paddle.concat([ones * head + alive, boxes, ones * order], axis=2)
    bbox = paddle.reshape(rows, [-1, 8])
    bbox_num = paddle.cast(paddle.ones_like(size[:, 0]) * k, "int32")
exe = paddle.static.Executor(paddle.CPUPlace())
exe.run(startup)
paddle.static.save_inference_model(out, [im_shape, image, scale_factor], [bbox, bbox_num], exe, program=main)
# Every op records the Python stack that created it (`op_callstack`: paddle's own file paths, i.e.
# where the venv is): drop it, or the same generator gives other bytes in another checkout.
saved = paddle.static.Program.parse_from_string(open(out + ".pdmodel", "rb").read())
for block in saved.blocks:
    for op in block.ops:
        if op.desc.has_attr("op_callstack"):
            op.desc.remove_attr("op_callstack")
open(out + ".pdmodel", "wb").write(saved.desc.serialize_to_string())
"""


def build_files() -> dict[str, bytes]:
    """The layout sub-folder's files (relative to `PP-DocLayoutV2/`), built by a child paddle."""
    return dict(_build())


@functools.cache  # a paddle child process (~4 s): once per process
def _build() -> dict[str, bytes]:
    from paddlex.modules.base.utils.pdparams2safetensors.inference_meta import build_inference_meta

    meta = {"Global": {"model_name": MODEL_NAME}, **build_inference_meta(MODEL_NAME)}
    with tempfile.TemporaryDirectory(prefix="tiny-layout-") as tmp:
        env = {**os.environ, "FLAGS_enable_pir_api": "0", "OMP_NUM_THREADS": "1"}
        regions = json.dumps([[r[0], *r[2:]] for r in REGIONS])
        child = subprocess.run(
            [sys.executable, "-c", _CHILD, str(Path(tmp) / "inference"), regions, str(SCORE)],
            env=env,
            capture_output=True,
            text=True,
            check=False,
        )
        if child.returncode != 0:
            tail = " ".join(child.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"generating the tiny {MODEL_NAME} failed (paddle, exit {child.returncode}): {tail}")
        files = {name: (Path(tmp) / name).read_bytes() for name in ("inference.pdmodel", "inference.pdiparams")}
    files["inference.yml"] = yaml.safe_dump(meta, sort_keys=True).encode()
    files["config.json"] = dump_json(meta).encode()
    return files
