"""FSDP2 and sharded checkpoints (infra/scaling.py) with real processes: two ranks under torchrun on CPU/gloo against DDP
and one process with twice the accumulation; DCP folders saved, replaced atomically, resumed in fresh processes and
at another world size, consolidated into the single-file format. tests/scaling_worker.py does the torchrun side."""
import json
import os
import shutil
import signal
import sys

import pytest
import torch
from torch.distributed.checkpoint.state_dict import get_state_dict

from infra import checkpoint, loader, scaling
import scaling_worker as W
import train
import variants
from conftest import run

TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
OTHERS = [n for n in variants.names() if n not in W.CASES]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Both torchrun phases once: (folder, train results, resume results)."""
    out = tmp_path_factory.mktemp("scaling")
    for phase in ("train", "resume"):
        run([*TORCHRUN, "tests/scaling_worker.py", phase, str(out)], timeout=900)
    return out, json.loads((out / "train.json").read_text()), json.loads((out / "resume.json").read_text())


@pytest.mark.parametrize("name", W.CASES)
def test_fsdp_equals_ddp_and_one_process_after_every_step(runs, name):
    record = runs[1][name]
    assert len(record["steps"]) == W.STEPS
    for s in record["steps"]:
        assert s["fsdp_vs_ref"] <= 1e-5 and s["ddp_vs_ref"] <= 1e-5 and s["fsdp_vs_ddp"] <= 1e-5, s
        assert s["moved"] > 1e-3  # the steps changed the weights, so agreeing is not vacuous
        ref, ddp, fsdp = s["norms"]  # the total norm over sharded gradients is the unsharded model's
        assert ddp == pytest.approx(ref, rel=1e-5) and fsdp == pytest.approx(ref, rel=1e-5)
        assert min(s["norms"]) > W.CLIP  # so every step clipped
        assert s["evals"][1] == pytest.approx(s["evals"][0], rel=1e-5)
        assert s["evals"][2] == pytest.approx(s["evals"][0], rel=1e-5)


@pytest.mark.parametrize("name", W.CASES)
def test_accumulation_reduces_gradients_on_the_last_micro_step_only(runs, name):
    comms = runs[1][name]["reduce_scatters"]
    assert len(comms) == W.ACCUM and comms[:-1] == [0] * (W.ACCUM - 1) and comms[-1] >= 1


@pytest.mark.parametrize("name", W.CASES)
def test_nonfinite_guard_sees_every_rank(runs, name):
    assert runs[1][name]["finite"] == [True, False]  # rank 0 reports rank 1's NaN


@pytest.mark.parametrize("name", [*OTHERS, "compiled"])
def test_every_variant_and_compiled_blocks_shard(runs, name):
    assert runs[1][name]["steps"][0]["fsdp_vs_ref"] <= 1e-5


def test_parameters_read_outside_the_forward_stay_in_the_root_unit(runs):
    _, model = W.build("adaptive_span")
    kept = {n for n, p in model.named_parameters() if p in scaling.params_used_outside_forward(model)}
    assert kept == {f"transformer.h.{i}.attn.{p}" for i in range(2) for p in ("span_params", "wave.period_w",
                                                                              "wave.ratio_w")}
    assert not scaling.params_used_outside_forward(W.build("gpt")[1])
    metrics = runs[1]["adaptive_span"]["metrics"]  # log_metrics inside scaling.gathered reads whole parameters
    assert metrics["fsdp"] and metrics["fsdp"].keys() == metrics["ref"].keys()
    for key, value in metrics["ref"].items():
        assert metrics["fsdp"][key] == pytest.approx(value, rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize("name", W.CASES)
def test_sharded_resume_in_fresh_processes_is_bit_identical(runs, name):
    assert runs[2][name] == {"extra": True, "rng": True, "model": True, "optimizer": True, "next": True,
                             "from_full": True}  # from_full: the single-file form loads into a sharded model too


def test_sharded_checkpoint_resumes_a_replicated_run(runs):
    assert runs[2]["replicated"] is True


def saved(runs, name):
    return torch.load(runs[0] / name / "full.pt", weights_only=True)


@pytest.mark.parametrize("name", W.CASES)
def test_two_rank_save_loads_into_one_process(runs, name):
    _, model = W.build(name, seed=9)
    optimizer = train.make_optimizer(model, W.CFG, "cpu")
    extra, rank_extra = scaling.load_sharded(runs[0] / name / "ckpt", model, optimizer)
    assert extra == W.extra_of(name, model, W.SAVE_AT) and rank_extra is None  # the ranks' RNG fit no rank here
    model_state, optim_state = get_state_dict(model, optimizer)
    assert W.same(model_state, saved(runs, name)["model"]) and W.same(optim_state, saved(runs, name)["optimizer"])


@pytest.mark.parametrize("name", W.CASES)
def test_consolidated_file_is_a_plain_checkpoint(runs, tmp_path, name):
    scaling.consolidate(runs[0] / name / "ckpt", tmp_path / "ckpt.pt")
    ckpt = checkpoint.load(tmp_path / "ckpt.pt")
    assert ckpt["iter_num"] == W.SAVE_AT and ckpt["variant"] == name and ckpt["rng"] == {"rank": 0, "torch":
                                                                                           ckpt["rng"]["torch"]}
    model = checkpoint.build_model(ckpt, variants.get)
    assert list(ckpt["model"]) == list(W.build(name)[1].state_dict())  # the plain model's keys, tied ones too
    full = saved(runs, name)
    for key, value in model.state_dict().items():
        assert torch.equal(value, full["model"][checkpoint_key(model, key)]), key
    optimizer = train.make_optimizer(model, W.CFG, "cpu")
    optimizer.load_state_dict(ckpt["optimizer"])  # a plain AdamW over the unsharded model takes it
    assert W.same(get_state_dict(model, optimizer)[1], full["optimizer"])


def checkpoint_key(model, key):
    """The name DCP keeps for a weight: the first of its tied names."""
    first = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        first.setdefault(p, name)
    return {name: first[p] for name, p in model.named_parameters(remove_duplicate=False)}.get(key, key)


@pytest.fixture
def ckpt_copy(runs, tmp_path):
    folder = tmp_path / "ckpt"
    shutil.copytree(runs[0] / "gpt" / "ckpt", folder)
    return folder


def test_one_reader_for_both_formats(ckpt_copy, tmp_path):
    scaling.consolidate(ckpt_copy, tmp_path / "ckpt.pt")
    from_file, from_folder = scaling.load_checkpoint(tmp_path / "ckpt.pt"), scaling.load_checkpoint(ckpt_copy, False)
    assert from_folder["optimizer"] is None and from_file["optimizer"] is not None
    assert W.same(from_file["model"], from_folder["model"]) and from_file["iter_num"] == from_folder["iter_num"]
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        scaling.load_checkpoint(tmp_path / "nothing.pt")
    assert scaling.checkpoint_at(tmp_path / "ckpt.pt") == tmp_path / "ckpt.pt"  # the file, when there is one
    (tmp_path / "ckpt.pt").unlink()
    assert scaling.checkpoint_at(tmp_path / "ckpt.pt") == ckpt_copy  # else the folder an FSDP run wrote
    assert scaling.checkpoint_at(tmp_path / "best.pt") == tmp_path / "best.pt"


def test_one_loader_opens_a_file_a_sharded_folder_and_a_run_directory(ckpt_copy, tmp_path, monkeypatch):
    """loader.open_model, behind sample, eval, analysis and export: the sharded folder, the run directory that holds
    it, and its consolidated file give the same model; a file never goes through the sharded reader."""
    folder = loader.open_model(ckpt_copy, variants.get)
    in_run = loader.open_model(tmp_path, variants.get)  # no ckpt.pt there: the folder an FSDP run wrote
    assert in_run.path == ckpt_copy and folder.ckpt["variant"] == "gpt"
    scaling.consolidate(ckpt_copy, tmp_path / "one.pt")
    with pytest.raises(checkpoint.CheckpointError, match="not found"):  # neither a file nor a folder of that name
        loader.open_model(tmp_path / "nothing.pt", variants.get)
    monkeypatch.setattr(scaling, "load_checkpoint", lambda *a, **kw: pytest.fail("a file read as a sharded folder"))
    one = loader.open_model(tmp_path / "one.pt", variants.get, dropout=0.0)
    for opened in (in_run, one):
        assert W.same(folder.model.state_dict(), opened.model.state_dict())
    assert one.model.config.dropout == 0.0 and one.objective is variants.get("gpt").objective


def test_consolidate_command(ckpt_copy, tmp_path, capsys):
    assert scaling.main(["consolidate", str(ckpt_copy), str(tmp_path / "out.pt")]) == 0
    assert checkpoint.load(tmp_path / "out.pt")["iter_num"] == W.SAVE_AT and "out.pt" in capsys.readouterr().out
    (ckpt_copy / scaling.MANIFEST).unlink()  # as a user runs it: one line, exit 1, nothing written
    proc = run([sys.executable, "-m", "infra.scaling", "consolidate", str(ckpt_copy), str(tmp_path / "bad.pt")],
               check=False)
    assert proc.returncode == 1 and not (tmp_path / "bad.pt").exists()
    assert proc.stderr.startswith("error: ") and "incomplete" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def one_line_error(capsys, *argv):
    assert scaling.main(list(argv)) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1
    return err


def test_partial_or_damaged_folders_are_refused(ckpt_copy, tmp_path, capsys):
    out = str(tmp_path / "x.pt")
    assert scaling.is_sharded_checkpoint(ckpt_copy)
    assert "not found" in one_line_error(capsys, "consolidate", str(tmp_path / "nowhere"), out)
    shard = ckpt_copy / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    assert "__1_0.distcp fails its checksum" in one_line_error(capsys, "consolidate", str(ckpt_copy), out)
    shard.write_bytes(bytes(data[:-10]))
    assert "__1_0.distcp has" in one_line_error(capsys, "consolidate", str(ckpt_copy), out)
    (ckpt_copy / scaling.MANIFEST).unlink()  # a save that never finished
    assert not scaling.is_sharded_checkpoint(ckpt_copy)
    _, model = W.build("gpt")
    with pytest.raises(checkpoint.CheckpointError, match="incomplete: no valid manifest.json"):
        scaling.load_sharded(ckpt_copy, model)
    with pytest.raises(checkpoint.CheckpointError, match="incomplete"):
        scaling.read_extra(ckpt_copy)
    assert "is a file" in one_line_error(capsys, "consolidate", str(ckpt_copy / ".metadata"), out)
    assert scaling.main(["consolidate", str(ckpt_copy)]) == 2  # usage


def test_a_save_does_not_replace_a_folder_that_is_not_a_checkpoint(tmp_path):
    mine = tmp_path / "ckpt"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    _, model = W.build("gpt")
    with pytest.raises(checkpoint.CheckpointError, match="not a sharded checkpoint; not replacing it"):
        scaling.save_sharded(mine, model, None, W.extra_of("gpt", model, 0))
    assert (mine / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("point, survivor", [("before_manifest", 1), ("between_renames", 2),
                                             ("before_trash_removed", 2)])
def test_sigkill_during_a_save_leaves_a_loadable_checkpoint(tmp_path, point, survivor):
    proc = run(["tests/scaling_worker.py", "kill", str(tmp_path), point], check=False)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    folder = tmp_path / "ckpt"
    assert scaling.is_sharded_checkpoint(folder)
    spec, model = W.build("gpt", seed=5)
    optimizer = train.make_optimizer(model, W.CFG, "cpu")
    extra, _ = scaling.load_sharded(folder, model, optimizer)
    assert extra["iter_num"] == survivor  # the previous checkpoint, or the new one when it was complete
    assert W.same(W.full(model), torch.load(tmp_path / f"params{survivor}.pt", weights_only=True))
    # the next save puts everything back in order: one folder under its own name, no leftovers
    W.step(spec, model, model, optimizer, survivor, W.ACCUM, 0, 1)
    scaling.save_sharded(folder, model, optimizer, W.extra_of("gpt", model, survivor + 1), {"rank": 0})
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["ckpt"]
    assert scaling.read_extra(folder)["iter_num"] == survivor + 1


def test_keep_copy_links_and_rotates(tmp_path):
    _, model = W.build("gpt")
    for it in (1, 2, 3):
        scaling.save_sharded(tmp_path / "ckpt", model, None, W.extra_of("gpt", model, it), {"rank": 0},
                             keep_copy=tmp_path / f"ckpt_{it:08d}", keep_last=2)
    (tmp_path / "ckpt_1").mkdir()  # another name: never touched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt", "ckpt_00000002", "ckpt_00000003", "ckpt_1"]
    assert scaling.read_extra(tmp_path / "ckpt_00000002")["iter_num"] == 2
    shard = next((tmp_path / "ckpt").glob("*.distcp"))
    assert os.path.samefile(shard, tmp_path / "ckpt_00000003" / shard.name)  # a hard link, not a second write
    with pytest.raises(ValueError, match="<prefix>_<digits>"):
        scaling.save_sharded(tmp_path / "ckpt", model, None, {}, keep_copy=tmp_path / "copy")
    assert scaling.read_extra(tmp_path / "ckpt")["iter_num"] == 3
