"""The data-pipeline, training-throughput and ImageNet-cost tools (issue 20) compute what they claim.

Each runs in its CPU / tiny mode, in this process: the code path the GPU session runs, at sizes that
take seconds. The figures themselves are timings; what is asserted is the arithmetic built on them.
"""
import csv
import io
import json
import statistics
import sys
from pathlib import Path

import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bench_data_pipeline  # noqa: E402
import bench_train_throughput  # noqa: E402
import imagenet_cost  # noqa: E402
import imagenet_train_run  # noqa: E402
import synthetic_images  # noqa: E402


def test_synthetic_jpegs_depend_only_on_seed_split_and_index(tmp_path):
    a = synthetic_images.synthetic_jpeg(0, "train", 3, (50, 30))
    assert a == synthetic_images.synthetic_jpeg(0, "train", 3, (50, 30))
    assert a != synthetic_images.synthetic_jpeg(0, "train", 4, (50, 30))
    assert a != synthetic_images.synthetic_jpeg(0, "validation", 3, (50, 30))
    img = Image.open(io.BytesIO(a))
    assert img.format == "JPEG" and img.size == (50, 30) and img.mode == "RGB"
    stats = synthetic_images.write_image_folder(tmp_path, 3, {"train": 2, "validation": 1}, (40, 30), jobs=2)
    files = sorted(tmp_path.rglob("*.jpg"))
    assert stats["images"] == len(files) == 3 * 2 + 3
    assert sorted(p.name for p in (tmp_path / "train").iterdir()) == ["class_0", "class_1", "class_2"]
    assert stats["mean_kib"] == pytest.approx(sum(p.stat().st_size for p in files) / len(files) / 1024)
    # the image a folder holds is the one synthetic_jpeg gives for its (split, index)
    assert (tmp_path / "train" / "class_1" / "0000004.jpg").read_bytes() == \
        synthetic_images.synthetic_jpeg(0, "train", 4, (40, 30))
    with pytest.raises(ValueError, match="unknown splits"):
        synthetic_images.write_image_folder(tmp_path, 1, {"test": 1})


def test_data_pipeline_quick_table_arithmetic(tmp_path, capsys):
    out = tmp_path / "pipeline.json"
    summary = bench_data_pipeline.main(["--quick", "--workdir", str(tmp_path / "work"), "--json", str(out)])
    assert json.loads(out.read_text())["rows"] == summary["rows"]
    batch, per_worker_batches = 4, 2  # --quick
    (model,) = summary["models"]
    m = summary["models"][model]
    assert m["step_s"] == statistics.median(summary["model_runs"][model])
    assert m["images_per_s"] == pytest.approx(batch / m["step_s"], rel=1e-12)
    runs = {(r["source"], r["workers"]): r["runs"] for r in summary["data_runs"]}
    assert set(runs) == {(s, w) for s in ("image folder", "parquet") for w in (0, 1)}
    table = capsys.readouterr().out
    for row in summary["rows"]:
        w = row["workers"]
        timed = runs[(row["source"], w)]
        # every synthetic image decodes, so each timed batch is a full one
        assert [r["images"] for r in timed] == [per_worker_batches * max(1, w) * batch]
        assert row["images_per_s"] == pytest.approx(statistics.median(r["images"] / r["seconds"] for r in timed))
        assert row["per_worker"] == pytest.approx(row["images_per_s"] / max(1, w), rel=1e-12)
        assert row["workers_needed"][model] == pytest.approx(m["images_per_s"] / row["per_worker"], rel=1e-12)
        label = "0 (main process)" if w == 0 else str(w)
        assert (f"| {row['source']} | {label} | {row['images_per_s']:.1f} | {row['per_worker']:.1f} | "
                f"{row['workers_needed'][model]:.2f} |") in table
    assert f"| {model} | {batch} | {m['step_s']:.3f} | {m['images_per_s']:.1f} |" in table


def test_train_throughput_tiny_step_and_worker_command():
    args = bench_train_throughput.parse(["--device", "cpu", "--tiny", "--models", "kan_test_vgg_gram",
                                         "--compile", "both", "--compile-backend", "eager"])
    assert (args.size, args.batch_list, args.amp, args.channels_last) == (64, [2], False, True)
    # the worker is started with the parent's settings (a flag typo would fail here, not on the GPU)
    cmd = bench_train_throughput.worker_command("kan_test_vgg_gram", "compiled", args)
    child = bench_train_throughput.parse(cmd[2:])
    for key in ("device", "batch_list", "size", "warmup", "steps", "rounds", "compile_backend", "amp",
                "channels_last", "threads"):
        assert getattr(child, key) == getattr(args, key), key
    assert (child.worker, child.variant) == ("kan_test_vgg_gram", "compiled")
    got = bench_train_throughput.worker(child)  # in this process: torch.compile (eager backend) and the step
    (r,) = got["results"]
    assert got["params"] > 0 and r["batch"] == 2 and len(r["window_s"]) == 1
    assert r["images_per_s"] == pytest.approx(2 * 1 / r["window_s"][0], rel=1e-12)
    assert r["step_ms"] == pytest.approx(1e3 * r["window_s"][0], rel=1e-12)
    assert r["peak_mib"] > 0
    cells = bench_train_throughput.row({"model": "m", "variant": "compiled", **r})
    assert cells[:4] == ["m", "compiled", "2", f"{r['images_per_s']:.1f}"] and cells[-1] == "-"
    failed = bench_train_throughput.row({"model": "m", "variant": "eager", "batch": 128, "failed": "OOM | x"})
    assert failed[3] == "failed: OOM / x" and len(failed) == len(bench_train_throughput.HEADER)


def test_imagenet_train_run_tiny_logs_images_per_s_and_peak_memory(tmp_path):
    result = imagenet_train_run.main(["--tiny", "--workdir", str(tmp_path), "--json", str(tmp_path / "r.jsonl")])
    rows = [r for r in csv.DictReader(open(tmp_path / "run" / "logs" / "train" / "metrics.csv"))
            if r.get("train/images_per_s")]
    # --tiny: 40 images, batch 4, 2 epochs -> 20 updates, logged every 2: 10 windows of 8 images
    assert [int(r["step"]) for r in rows] == list(range(2, 21, 2))
    rates = [float(r["train/images_per_s"]) for r in rows]
    assert result["images_per_s"] == pytest.approx(statistics.median(rates[1:]))
    assert result["peak_mib"] == max(float(r["train/peak_memory_mib"]) for r in rows) > 0
    # the windows' training time (8 images / rate each) fits inside the run's wall time
    assert sum(8 / r for r in rates) < result["wall_s"]
    assert json.loads((tmp_path / "r.jsonl").read_text()) == result
    args = json.loads((tmp_path / "run" / "args.json").read_text())
    assert args["channels_last"] is True and args["batch_size"] == 4


def test_recipe_epochs_come_from_each_tags_cfg():
    tags = imagenet_cost.pretrained_tags()
    assert tags == ["kan_vgg11_bottleneck_gram.in1k", "kan_vgg11_gram.in1k", "kan_vgg11_slim_gram.in1k"]
    from kan_zoo.models.kan_vgg import REFERENCE_RECIPE

    assert "200 epochs" in REFERENCE_RECIPE and [imagenet_cost.recipe_epochs(t) for t in tags] == [200] * 3
    with pytest.raises(ValueError, match="not a registered pretrained tag"):
        imagenet_cost.recipe_epochs("kan_resnet18_gram.in1k")


def test_gpu_hours_table_arithmetic():
    ips = imagenet_cost.IMAGENET_TRAIN_IMAGES * 200 / 3600 / 10  # 200 epochs in exactly 10 hours: 7117.6 images/s
    assert imagenet_cost.gpu_hours(200, ips) == pytest.approx(10.0, rel=1e-12)
    with pytest.raises(ValueError):
        imagenet_cost.gpu_hours(200, 0)
    # test inputs, not measurements: the table picks the fastest successful row of the tag's architecture
    step = dict(source="bench_train_throughput", model="kan_vgg11_gram", variant="eager", amp=True,
                channels_last=True, device="GPU X", peak_mib=2048.0)
    results = [dict(step, batch=64, images_per_s=ips / 2), dict(step, batch=128, images_per_s=ips),
               dict(step, batch=256, failed="OutOfMemoryError"),
               dict(step, source="train_imagenet.py", batch=128, images_per_s=ips / 4)]
    rows = imagenet_cost.cost_rows(results, ["kan_vgg11_gram.in1k", "kan_vgg11_slim_gram.in1k"])
    assert rows[0]["step"]["batch"] == 128 and rows[0]["step_hours"] == pytest.approx(10.0)
    assert rows[0]["loop_hours"] == pytest.approx(40.0)
    assert rows[1]["step"] is None and rows[1]["step_hours"] is None
    table = imagenet_cost.cost_table(results, ["kan_vgg11_gram.in1k", "kan_vgg11_slim_gram.in1k"])
    assert (f"| kan_vgg11_gram.in1k | 200 | batch 128, eager, bf16, channels_last | {ips:.0f} | 10.0 | 2.0 | "
            f"{ips / 4:.0f} (batch 128, eager, bf16, channels_last) | 40.0 |") in table
    assert "| kan_vgg11_slim_gram.in1k | 200 |  |  |  |  |  |  |" in table and "measured on: GPU X" in table
    assert "figures left empty" in imagenet_cost.cost_table([], ["kan_vgg11_gram.in1k"])
