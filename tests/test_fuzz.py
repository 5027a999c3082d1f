"""Every entry point under random but typed command lines (hypothesis, a fixed seed): a few hundred override sets of
valid and invalid values, extreme numbers, unicode, empty strings and paths that are files, links to nowhere, loops or
read-only. Each runs as a real process (forked from tests/forkserver.py, which has the project imported) with a short
budget, and must exit 0, or print exactly one `error:` line and exit 1 or 2: never a traceback, never a hang, and
nothing on disk changed or created unless it succeeded."""
import dataclasses
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import bench
import sample
import train
import variants
from conftest import REPO, run
from model import GPTConfig
from tools import analysis, eval as evaluate, export

EXAMPLES = 60  # per entry point: 420 command lines
TIMEOUT_S = 90
PATHS = ["{file}", "{dangling}", "{looping}", "/sys/fuzz", "{fresh}", "{run}", "", "  ", "dír ünïcode", "{run}/ckpt.pt"]
READ_PATHS = PATHS + ["{data}", "{text}"]  # read from, never written to
TINY = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32"]


@dataclasses.dataclass
class Entry:
    script: str
    defaults: list  # first: what makes the command work when nothing is fuzzed
    fields: dict  # {key: type} that the fuzz sets
    budget: list  # last: keys that bound its run time, never fuzzed


def fields_of(*classes, without=()):
    return {f.name: f.type for c in classes for f in dataclasses.fields(c) if f.name not in without}


TRAIN_BUDGET = [*TINY, "--device=cpu", "--batch_size=4", "--max_iters=2", "--eval_interval=1000", "--eval_iters=1",
                "--warmup_iters=1", "--lr_decay_iters=2", "--compile=False", "--wandb_log=False", "--ckpt_interval=0",
                "--gradient_accumulation_steps=1", "--activation_checkpointing=False"]
ENTRIES = {
    "train": Entry("train.py", ["--data_dir={data}", "--out_dir={fresh}"],
                   fields_of(train.TrainConfig, GPTConfig, without={a[2:].split("=")[0] for a in TRAIN_BUDGET}),
                   TRAIN_BUDGET),
    "sample": Entry("sample.py", ["--out_dir={run}", "--device=cpu"],
                    fields_of(sample.SampleConfig, without={"max_new_tokens", "num_samples"}),
                    ["--max_new_tokens=4", "--num_samples=1"]),
    "eval": Entry("tools/eval.py", ["--out_dir={run}", "--device=cpu"],
                  fields_of(evaluate.EvalConfig, without={"max_tokens", "attention"}), ["--max_tokens=200"]),
    "bench": Entry("bench.py", ["--out_dir={fresh}", "--device=cpu"],
                   fields_of(bench.BenchConfig, without={"n_layer", "n_head", "n_embd", "block_size", "batch_size",
                                                         "reps", "warmup", "latency_reps", "gen_tokens", "gen_reps",
                                                         "seq_lens", "modes", "vocab_size"}),
                   ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=2", "--reps=2",
                    "--warmup=0", "--latency_reps=2", "--gen_tokens=0", "--gen_reps=1", "--seq_lens=32",
                    "--modes=eager", "--vocab_size=65"]),
    "analysis": Entry("tools/analysis.py", ["--ckpt={run}", "--device=cpu", "--out_dir={fresh}"],
                      fields_of(analysis.AnalysisConfig, without={"batch_size", "seq_len", "crop"}),
                      ["--batch_size=1", "--seq_len=16", "--crop=8"]),
    "export": Entry("tools/export.py", ["--out_dir={run}", "--to={fresh}"], fields_of(export.ExportConfig), []),
    "prepare": Entry("data/shakespeare_char/prepare.py", ["--source={text}", "--out_dir={fresh}"],
                     {"source": str, "out_dir": str}, []),
}
WRITES = {"out_dir", "to"}  # keys whose path is written into


def values(key, kind):
    """Typed values and their edges for one key (a string as the command line gives it)."""
    extremes = st.sampled_from(["", "1e999", "-1e999", "nan", "9" * 25, "-1", "0", "None", "ñ", "[1,2]"])
    if key in WRITES:
        typed = st.sampled_from(PATHS)
    elif key in ("data_dir", "ckpt", "source", "init_from", "start"):
        typed = st.sampled_from(READ_PATHS + ["resume", "scratch", "gpt2", "FILE:{file}", "FILE:{dangling}"])
    elif key == "variant" or key == "variants":
        typed = st.sampled_from([*variants.names(), "gpt,llama", "config/bench/layerwise_half.py", "gpx", ""])
    elif kind is bool or kind == "bool":
        typed = st.sampled_from(["True", "False", "1", "yes"])
    elif kind is float or kind == "float":
        typed = st.floats(-10, 10, allow_nan=False).map(repr) | st.sampled_from(["1e-300", "1e308", "-0.0"])
    elif kind is int or "int" in str(kind):
        typed = st.integers(-3, 48).map(str)
    else:
        typed = st.text(max_size=8)
    return st.one_of(typed, typed, extremes)


def overrides(entry):
    keys = sorted(entry.fields)
    one = st.sampled_from(keys).flatmap(lambda k: values(k, entry.fields[k]).map(lambda v: f"--{k}={v}"))
    typo = st.sampled_from(keys).map(lambda k: f"--{k}x=1")  # an unknown key
    return st.lists(st.one_of(one, one, one, typo), min_size=1, max_size=3)


def snapshot(*roots):
    out = {}
    for root in roots:
        for p in sorted([root, *root.rglob("*")]) if root.exists() or root.is_symlink() else []:
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else p.is_dir()
    return out


class Server:
    """tests/forkserver.py as one long-lived process."""

    def __init__(self):
        self.proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "forkserver.py")], cwd=REPO, text=True,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env={**__import__("os").environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"})
        assert json.loads(self.proc.stdout.readline()) == {"ready": True}

    def run(self, argv, cwd, logs):
        job = {"argv": argv, "cwd": str(cwd), "stdout": str(logs / "stdout"), "stderr": str(logs / "stderr"),
               "timeout": TIMEOUT_S}
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self):
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


@pytest.fixture(scope="module")
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(scope="module")
def template(shakespeare_dir, tmp_path_factory):
    """A finished tiny run on the prepared data, and a source text: copied into each case's directory."""
    root = tmp_path_factory.mktemp("fuzz")
    run(["train.py", f"--data_dir={shakespeare_dir}", f"--out_dir={root / 'run'}", *TRAIN_BUDGET])
    text = root / "text.txt"
    text.write_text((REPO.parent / "shared" / "data" / "shakespeare" / "input.txt").read_text()[:20000])
    return root


counter = iter(range(10 ** 9))


def fill(arg, places):
    """arg with each {name} of places replaced (random text may hold other braces: no str.format)."""
    for name, path in places.items():
        arg = arg.replace("{" + name + "}", str(path))
    return arg


@pytest.mark.parametrize("name", list(ENTRIES))
@settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None, print_blob=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture,
                                 HealthCheck.data_too_large])
@given(data=st.data())
def test_fuzzed_command_lines(name, data, server, template, shakespeare_dir, tmp_path):
    entry = ENTRIES[name]
    fuzzed = data.draw(overrides(entry), label="overrides")
    case = tmp_path / f"case{next(counter)}"
    case.mkdir()
    shutil.copytree(template / "run", case / "run")
    (case / "a_file").write_text("a file\n")
    (case / "dangling").symlink_to(case / "nowhere")
    (case / "looping").symlink_to(case / "looping")
    places = {"run": case / "run", "file": case / "a_file", "dangling": case / "dangling",
              "looping": case / "looping", "fresh": case / "fresh", "data": shakespeare_dir,
              "text": template / "text.txt"}
    argv = [entry.script, *(fill(a, places) for a in [*entry.defaults, *fuzzed, *entry.budget])]
    logs = tmp_path / f"logs{next(counter)}"
    logs.mkdir()
    before = snapshot(case, Path(shakespeare_dir))
    result = server.run(argv, case, logs)
    stderr = (logs / "stderr").read_text(errors="replace")
    where = f"{' '.join(argv)}\n-> {result}\n{stderr[-3000:]}"
    assert not result["timed_out"], where
    assert "Traceback" not in stderr, where
    if result["code"] != 0:
        errors = [line for line in stderr.splitlines() if line.strip()]
        assert result["code"] in (1, 2), where
        assert len(errors) == 1 and errors[0].startswith("error: "), where
        assert snapshot(case, Path(shakespeare_dir)) == before, where
