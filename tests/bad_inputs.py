"""The bad-input matrix: each case is a command a user might type, the exit code it must get (2: the configuration
is wrong, 1: a file, the data or a device is) and a fragment of the one `error:` line it must print. Running it must
leave every file already on disk byte-identical. tests/test_bad_inputs.py runs every case as a real process;
`python tests/bad_inputs.py` prints the table docs/reliability.md carries (a test keeps them equal).

Placeholders filled in by the test: {data} a prepared tiny-Shakespeare char dataset, {run} a finished training run on
it, {upper} the same text upper-cased (another 39-character vocabulary of the same tokenizer kind), {bytes} a byte-level
dataset, {corrupt} {data} with one id in train.bin beyond the vocabulary (same size), {file} a plain file,
{missing_val} {truncated} {bad_meta} {data} with val.bin deleted, train.bin cut to 1000 bytes, meta.json's dtype
"uint32", {many_chars} a text of 67,952 distinct characters, {exits} a config file that calls sys.exit(0), {out} a
path where nothing exists (and nothing may appear).
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
DEVICE_TOOLS = {"train": RESUME, "sample": SAMPLE, "eval": EVAL, "bench": BENCH}  # each resolves --device itself

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
    *[Case(f"{tool} --device=foo", [*argv, "--device=foo"], 2, "device must be auto, cpu, cuda or cuda:<index>")
      for tool, argv in DEVICE_TOOLS.items()],
    Case("eval --dtype=foo", [*EVAL, "--dtype=foo"], 2, "dtype must be auto, float32, bfloat16, float16"),
    Case("bench --dtype=foo", [*BENCH, "--dtype=foo"], 2, "dtype must be auto, float32, bfloat16, float16"),
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
    *[Case(f"{tool} --device=cuda without CUDA", [*argv, "--device=cuda"], 1, "CUDA is not available here")
      for tool, argv in DEVICE_TOOLS.items()],
    Case("train --out_dir=<a file>", [*TRAIN, "--out_dir={file}"], 1, "is a file, not a directory"),
    Case("train --out_dir=<read-only>", [*TRAIN, "--out_dir=/sys/bad_inputs_run"], 1, "is not writable"),
    Case("eval --out_dir=<a file>", [*EVAL, "--out_dir={file}", "--ckpt={run}/ckpt.pt"], 1,
         "is a file, not a directory"),
    Case("bench --out_dir=<a file> (checked before benchmarking)", [*BENCH, "--out_dir={file}"], 1,
         "is a file, not a directory"),
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
