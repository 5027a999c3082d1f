"""The bad-input matrix: each case is a command a user might type, the exit code it must get (2: the configuration
is wrong, 1: a file, the data or a device is) and a fragment of the one `error:` line it must print. Running it must
leave every file already on disk byte-identical. tests/test_bad_inputs.py runs every case as a real process;
`python tests/bad_inputs.py` prints the table docs/reliability.md carries (a test keeps them equal).

Placeholders filled in by the test: {data} a prepared tiny-Shakespeare char dataset, {run} a finished training run on
it, {upper} the same text upper-cased (another 39-character vocabulary of the same tokenizer kind), {bytes} a byte-level
dataset, {corrupt} {data} with one id in train.bin beyond the vocabulary (same size), {file} a plain file,
{missing_val} {truncated} {bad_meta} {data} with val.bin deleted, train.bin cut to 1000 bytes, meta.json's dtype
"uint32", {many_chars} a text of 67,952 distinct characters, {exits} a config file that calls sys.exit(0), {out} a
path where nothing exists (and nothing may appear), {text} a valid source text, {dangling} a symbolic link to nowhere,
{looping} one that points at itself, {broken} a run directory whose ckpt.pt is not a checkpoint.

The check classes every entry point that has the option answers alike (device, dtype, the directory it writes, the
checkpoint it reads) are one table, CHECKS x ENTRY_POINTS.
"""
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, for python tests/bad_inputs.py
from infra.markdown import table  # noqa: E402


@dataclass
class Case:
    what: str  # the input, as docs/reliability.md shows it
    argv: list  # the command, with placeholders
    code: int
    message: str  # part of the error line


T = ["--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--batch_size=4", "--max_iters=2",
     "--eval_interval=1000", "--eval_iters=1", "--device=cpu", "--warmup_iters=1", "--lr_decay_iters=2"]
TRAIN = ["train.py", *T, "--data_dir={data}", "--out_dir={run}"]
RESUME = [*TRAIN, "--init_from=resume", "--max_iters=4"]
EVAL = ["tools/eval.py", "--out_dir={run}", "--device=cpu", "--max_tokens=200"]
SAMPLE = ["sample.py", "--out_dir={run}", "--device=cpu", "--max_new_tokens=4", "--num_samples=1"]
BENCH = ["bench.py", "--variants=gpt", "--n_layer=1", "--n_head=2", "--n_embd=32", "--block_size=32", "--reps=2",
         "--device=cpu", "--out_dir={out}"]
ANALYSIS = ["tools/analysis.py", "--ckpt={run}", "--device=cpu", "--out_dir={out}"]
EXPORT = ["tools/export.py", "--out_dir={run}", "--to={out}/hf"]
PREPARE = ["data/shakespeare_char/prepare.py", "--source={text}", "--out_dir={out}"]


@dataclass
class EntryPoint:
    argv: list  # a command that would succeed (writing only under {out})
    writes: str = ""  # the option naming the directory it writes into ("" = writes nothing)
    device: bool = False  # has --device (and then --dtype, unless it runs in float32 only)
    dtype: bool = False
    checkpoint: str = ""  # the option naming the run (or checkpoint) it reads ("" = reads none)
    blank_is_default: bool = False  # an empty `writes` means its default place, not an error


ENTRY_POINTS = {
    "train": EntryPoint(RESUME, "--out_dir", True, True, "--out_dir"),
    "sample": EntryPoint(SAMPLE, "", True, True, "--out_dir"),
    "eval": EntryPoint([*EVAL, "--ckpt={run}/ckpt.pt"], "--out_dir", True, True, "--ckpt"),
    "bench": EntryPoint(BENCH, "--out_dir", True, True),
    "analysis": EntryPoint(ANALYSIS, "--out_dir", True, False, "--ckpt", blank_is_default=True),
    "export": EntryPoint(EXPORT, "--to", checkpoint="--out_dir", blank_is_default=True),
    "prepare": EntryPoint(PREPARE, "--out_dir"),
}
# check class -> (which entry points have it, the option's value, exit code, fragment of the error line)
CHECKS = {
    "--device=foo": ("device", "--device=foo", 2, "device must be auto, cpu, cuda or cuda:<index>"),
    "--device=cuda without CUDA": ("device", "--device=cuda", 1, "CUDA is not available here"),
    "--dtype=foo": ("dtype", "--dtype=foo", 2, "dtype must be auto, float32, bfloat16, float16"),
    "--dtype=float16 on CPU": ("dtype", "--dtype=float16", 2, "dtype=float16 on CPU"),
    "{writes}=<a file>": ("writes", "{file}", 1, "is a file, not a directory"),
    "{writes}=<read-only>": ("writes", "/sys/bad_inputs_run", 1, "is not writable"),
    "{writes}=<a dangling link>": ("writes", "{dangling}", 1, "is a symbolic link that leads nowhere"),
    "{writes}=<a looping link>": ("writes", "{looping}", 1, "is a symbolic link that leads nowhere"),
    "{writes}='' (an unset variable)": ("writes", "", 2, "is empty"),
    "{checkpoint}=<no checkpoint there>": ("checkpoint", "{out}", 1, "not found"),
    "{checkpoint}=<a corrupt checkpoint>": ("checkpoint", "{broken}", 1, "is unreadable"),
}


def check_matrix():
    """Every entry point x every check class it has: the command with the one bad value, its exit code, its message."""
    cases = []
    for check, (has, value, code, message) in CHECKS.items():
        for name, entry in ENTRY_POINTS.items():
            option = getattr(entry, has)
            if not option or (has == "writes" and not value and entry.blank_is_default):
                continue
            flag = value if has in ("device", "dtype") else f"{option}={value}"
            what = f"{name} " + check.format(writes=option, checkpoint=option)
            cases.append(Case(what, [*entry.argv, flag], code, message))
    return cases


# optimizer settings train.py refuses before anything is written (also run by tests/test_train_validation.py)
OPTIMIZER = [
    (["--min_lr=-1"], "min_lr must be >= 0, got -1"),
    (["--min_lr=0.01"], "min_lr (0.01) must not exceed learning_rate (0.002)"),
    (["--weight_decay=-1"], "weight_decay must be >= 0, got -1"),
    (["--grad_clip=-1"], "grad_clip must be >= 0"),
    (["--beta1=1.5"], "beta1 must be in [0, 1), got 1.5"),
    (["--beta1=-0.1"], "beta1 must be in [0, 1), got -0.1"),
    (["--beta2=1.0"], "beta2 must be in [0, 1), got 1.0"),
    (["--warmup_iters=-1"], "warmup_iters must be >= 0, got -1"),
    (["--lr_decay_iters=-5", "--decay_lr=False"], "lr_decay_iters must be >= 0, got -5"),
    (["--learning_rate=1e999"], "learning_rate must be a finite number, got inf"),
    (["--max_skipped_steps=0"], "max_skipped_steps must be >= 1, got 0"),
]

CASES = [
    # configuration
    *check_matrix(),
    Case("bench --batch_size=0", [*BENCH, "--batch_size=0"], 2, "batch_size, n_layer, n_head, n_embd and vocab_size"),
    Case("train: a config file that calls sys.exit(0)", [*RESUME, "{exits}"], 2, "called sys.exit(0)"),
    Case("train --init_from=resum (a typo)", [*TRAIN, "--init_from=resum"], 2, "did you mean 'resume'?"),
    *[Case(f"train --init_from=resume {' '.join(extra)}", [*RESUME, "--learning_rate=2e-3", "--min_lr=2e-4", *extra],
           2, message) for extra, message in OPTIMIZER],
    Case("train --n_layers=3 (a typo)", [*TRAIN, "--n_layers=3"], 2,
         "unknown config key 'n_layers' for variant 'gpt'; did you mean n_layer"),
    Case("train --learning_rate=fast", [*RESUME, "--learning_rate=fast"], 2, "learning_rate expects float, got 'fast'"),
    Case("train --n_head=5 (with n_embd=32)", [*TRAIN, "--out_dir={out}", "--n_head=5"], 2,
         "n_head=5 must divide n_embd=32"),
    Case("train --variant=parallel --n_layer=3", [*TRAIN, "--out_dir={out}", "--variant=parallel", "--n_layer=3"], 2,
         "n_layer must be even, got 3"),
    Case("train --init_from=resume --block_size=64 (checkpoint: 32)", [*RESUME, "--block_size=64"], 2,
         "block_size=64 exceeds the checkpoint's 32"),
    Case("train --init_from=resume --n_embd=64", [*RESUME, "--n_embd=64"], 2,
         "n_embd=64 differs from the checkpoint's 32"),
    Case("train --init_from=resume --variant=parallel (a gpt checkpoint)", [*RESUME, "--variant=parallel"], 2,
         "is a 'gpt' checkpoint but variant='parallel'"),
    Case("train --init_from=scratch where a ckpt.pt exists", TRAIN, 2, "ckpt.pt exists; use --init_from=resume"),
    Case("train --init_from=resume on data of another vocabulary (same tokenizer kind)",
         [*RESUME, "--data_dir={upper}"], 2, "was trained on a different vocabulary than"),
    Case("train --init_from=gpt2 on char data", [*TRAIN, "--init_from=gpt2", "--out_dir={out}"], 2,
         "holds GPT-2 weights, whose ids are GPT-2 BPE tokens"),
    # files, data and devices
    Case("train --init_from=resume, val.bin missing", [*RESUME, "--data_dir={missing_val}"], 1,
         "val.bin not found but meta.json lists split 'val'"),
    Case("train --init_from=resume, train.bin truncated", [*RESUME, "--data_dir={truncated}"], 1,
         "train.bin has 1000 bytes but meta.json says"),
    Case("train --init_from=resume, meta.json dtype uint32", [*RESUME, "--data_dir={bad_meta}"], 1,
         "dtype must be one of"),
    Case("sample --start=''", [*SAMPLE, "--start="], 1, "the prompt is empty"),
    Case("sample --start='Zeus ⚡'", [*SAMPLE, "--start=Zeus ⚡"], 1,
         "'⚡' (U+26A1) is not in this dataset's 65-character vocabulary"),
    Case("sample --start=<33 characters> (context 32)", [*SAMPLE, "--start=" + "a" * 33], 1,
         "the prompt is 33 tokens but the model's context is 32"),
    Case("eval --data_dir=<data of another vocabulary>", [*EVAL, "--data_dir={upper}"], 1,
         "was trained on a different vocabulary than"),
    Case("eval --data_dir=<byte-level data>", [*EVAL, "--data_dir={bytes}"], 1,
         "char-tokenized vs byte-tokenized data"),
    Case("analysis --data_dir=<data of another vocabulary>",
         ["tools/analysis.py", "--ckpt={run}", "--data_dir={upper}", "--out_dir={out}", "--device=cpu"], 1,
         "was trained on a different vocabulary than"),
    Case("train --data_dir=<.bin with ids beyond the vocabulary>", [*TRAIN, "--data_dir={corrupt}", "--out_dir={out}"],
         1, "but meta.json says its largest id is"),
    Case("prepare shakespeare_char with 67,952 distinct characters",
         ["data/shakespeare_char/prepare.py", "--source={many_chars}", "--out_dir={out}"], 1,
         "a char vocabulary holds at most 65,536"),
]


def markdown():
    return table(["input", "exit", "error line contains"],
                 [[case.what, case.code, "`" + case.message.replace("|", "\\|") + "`"] for case in CASES])


if __name__ == "__main__":
    sys.stdout.write(markdown() + "\n")
