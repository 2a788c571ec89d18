"""Knowledge distillation: the loss by hand and against timm's task, a frozen eval-mode teacher that sees
the mixed input, errors, and an exact resume."""
from __future__ import annotations

import csv
import math
from argparse import Namespace

import pytest
import torch
from safetensors.torch import load_file

from kan_zoo.training import ConfigError, ModelError
from kan_zoo.training.checkpoint import list_checkpoints
from kan_zoo.training.run import SimulatedKill, main


def _args(folder, out, *extra):
    return ["--dataset", str(folder), "--model", "kan_test_vgg_gram", "--img-size", "16", "--epochs", "1",
            "--batch-size", "4", "--grad-accum", "1", "--workers", "0", "--warmup-steps", "1", "--lr", "3e-3",
            "--log-every", "1", "--no-progress", "--output", str(out), "--cache-dir", str(out.parent / "hf_cache"),
            *extra]


@pytest.fixture(scope="module")
def teacher_export(tiny_folder, tmp_path_factory):
    """A test_resnet with dropout (a teacher left in train mode would not be deterministic), exported."""
    out = tmp_path_factory.mktemp("teacher") / "run"
    main(_args(tiny_folder, out, "--model", "test_resnet", "--drop-rate", "0.5", "--checkpoint-steps", "0",
               "--no-model-ema", "--log-with", "none"))
    return out / "export"


def test_distillation_loss_by_hand_and_against_timms_task():
    from timm.task.distillation import LogitDistillationTask

    from kan_zoo.training.distill import distillation_loss
    from kan_zoo.training.losses import assemble_loss

    student = torch.tensor([[1.0, 0.0, -1.0], [0.5, 2.0, 0.0]], dtype=torch.float64)
    teacher = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 1.0]], dtype=torch.float64)
    T = 2.0
    # by hand: T^2 * mean over the batch of sum_c p_t(c) * (log p_t(c) - log p_s(c)), at temperature T
    expected = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = sum(math.exp(v / T) for v in s_row)
        zt = sum(math.exp(v / T) for v in t_row)
        for s, t in zip(s_row, t_row):
            pt = math.exp(t / T) / zt
            expected += pt * (math.log(pt) - math.log(math.exp(s / T) / zs))
    expected *= T ** 2 / 2
    got = distillation_loss(student, teacher, T)
    assert got.item() == pytest.approx(expected, rel=1e-12)

    target = torch.tensor([0, 1])
    task = torch.nn.functional.cross_entropy(student, target)
    total, terms = assemble_loss(task, got, alpha=0.3)
    assert total.item() == pytest.approx(0.7 * task.item() + 0.3 * expected, rel=1e-12)
    assert set(terms) == {"loss", "loss_distill", "loss_total"}

    # timm's LogitDistillationTask, complementary weights (task 1 - alpha), on modules returning these logits
    class Fixed(torch.nn.Module):
        def __init__(self, logits):
            super().__init__()
            self.logits = logits
            self.pretrained_cfg = dict(mean=(0.5,) * 3, std=(0.5,) * 3)
            self.num_classes, self.in_chans = 3, 3

        def forward(self, x):
            return self.logits

    task_module = LogitDistillationTask(Fixed(student), Fixed(teacher), criterion=torch.nn.CrossEntropyLoss(),
                                        task_loss_weight=0.7, temperature=T, dtype=torch.float64, verbose=False)
    timm_out = task_module(torch.zeros(2, 3, 4, 4, dtype=torch.float64), target)
    assert timm_out["kd_loss"].item() == pytest.approx(expected, rel=1e-12)
    assert timm_out["loss"].item() == pytest.approx(total.item(), rel=1e-12)


def test_teacher_is_frozen_in_eval_mode_and_sees_the_mixed_input(tiny_folder, teacher_export, tmp_path,
                                                                 monkeypatch, capsys):
    from kan_zoo.training import distill

    seen = []
    original = distill.Teacher.forward

    def spy(self, x):
        out = original(self, x)
        seen.append(dict(teacher=self, x=x.detach().clone(), training=[m.training for m in self.modules()],
                         out_grad=out.requires_grad))
        return out

    student_inputs = []
    import timm

    create = timm.create_model

    def create_spy(*a, **k):  # the student: record what its forward gets
        m = create(*a, **k)
        if a and a[0] == "kan_test_vgg_gram":
            m.register_forward_pre_hook(lambda mod, inp: student_inputs.append(inp[0].detach().clone())
                                        if mod.training else None)
        return m

    monkeypatch.setattr(distill.Teacher, "forward", spy)
    monkeypatch.setattr(timm, "create_model", create_spy)
    out = tmp_path / "run"
    main(_args(tiny_folder, out, "--teacher-path", str(teacher_export), "--distill-alpha", "0.25",
               "--distill-temperature", "3", "--mixup", "0.4", "--no-model-ema"))
    assert "distilling from teacher test_resnet" in capsys.readouterr().out
    assert len(seen) == len(student_inputs) == 9
    teacher = seen[0]["teacher"]
    for call, x in zip(seen, student_inputs):
        assert not any(call["training"]) and not call["out_grad"]  # eval mode, no graph (ran under no_grad)
        torch.testing.assert_close(call["x"], x, rtol=0, atol=0)  # mixed batch, exactly what the student got
    # frozen: no gradients, and the weights are the exported ones
    exported = load_file(str(teacher_export / "model.safetensors"))
    for name, p in teacher.wrapped.model.named_parameters():
        assert not p.requires_grad and p.grad is None
        torch.testing.assert_close(p.detach().cpu(), exported[name], rtol=0, atol=0)
    rows = [r for r in csv.DictReader(open(out / "logs" / "train" / "metrics.csv")) if r.get("train/loss")]
    for r in rows:  # the logged total is the weighted sum of the logged terms
        assert float(r["train/loss_total"]) == pytest.approx(
            0.75 * float(r["train/loss"]) + 0.25 * float(r["train/loss_distill"]), rel=1e-5)


def test_distilled_run_resumes_exactly(tiny_folder, teacher_export, tmp_path):
    extra = ["--teacher-path", str(teacher_export), "--epochs", "2", "--checkpoint-steps", "3",
             "--keep-checkpoints", "1", "--log-with", "none", "--model-ema-decay", "0.9"]
    main(_args(tiny_folder, tmp_path / "full", *extra))
    with pytest.raises(SimulatedKill):
        main(_args(tiny_folder, tmp_path / "killed", *extra, "--crash-after-steps", "13"))
    assert list_checkpoints(tmp_path / "killed")[-1].name == "step_000000012"
    main(_args(tiny_folder, tmp_path / "killed", *extra, "--resume"))
    last = list_checkpoints(tmp_path / "full")[-1].name
    for name in ("model.safetensors", "ema.safetensors"):
        a = load_file(str(tmp_path / "full" / "checkpoints" / last / name))
        b = load_file(str(tmp_path / "killed" / "checkpoints" / last / name))
        for k in a:
            torch.testing.assert_close(a[k], b[k], rtol=0, atol=0, msg=k)


def test_teacher_errors(tiny_folder, two_class_folder, teacher_export, tmp_path):
    from kan_zoo.training.config import parse_args

    base = ["--model", "test_resnet", "--dataset", "x"]
    with pytest.raises(ConfigError, match=r"--distill-alpha needs a teacher"):
        parse_args(base + ["--distill-alpha", "0.5"])
    with pytest.raises(ConfigError, match=r"--distill-alpha must be in \[0, 1\], got 1.5"):
        parse_args(base + ["--teacher", "test_resnet", "--distill-alpha", "1.5"])
    with pytest.raises(ConfigError, match=r"--distill-temperature must be > 0"):
        parse_args(base + ["--teacher", "test_resnet", "--distill-temperature", "0"])
    args = parse_args(base + ["--teacher-path", "t"])
    assert (args.distill_alpha, args.distill_temperature) == (0.5, 4.0)

    from kan_zoo.training.distill import build_teacher

    def teacher(**flags):
        args = Namespace(**{"teacher": None, "teacher_path": None, **flags})
        return build_teacher(args, 3, 3, dict(mean=(0.5,) * 3, std=(0.5,) * 3))

    with pytest.raises(ModelError, match=r"--teacher-path '/no/such' does not exist"):
        teacher(teacher_path="/no/such")
    with pytest.raises(ModelError, match=r"--teacher-path .* holds a 'test_resnet', not --teacher 'kan_test_vgg_gram'"):
        teacher(teacher="kan_test_vgg_gram", teacher_path=str(teacher_export))
    with pytest.raises(ModelError, match=r"--teacher: unknown model 'test_resnett'"):
        teacher(teacher="test_resnett")
    with pytest.raises(ModelError, match=r"'kan_test_vgg_gram' has no published weights"):
        teacher(teacher="kan_test_vgg_gram")
    with pytest.raises(ModelError, match=r"its published head has 1000 classes but the data has 3"):
        teacher(teacher="test_resnet")
    # a 3-class teacher on 2-class data
    with pytest.raises(ModelError, match=r"the teacher predicts 3 classes but the data has 2"):
        main(_args(two_class_folder, tmp_path / "run", "--teacher-path", str(teacher_export)))
    ok = teacher(teacher_path=str(teacher_export))
    assert not ok.training and not ok.train().training  # stays in eval mode
