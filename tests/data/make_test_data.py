"""Rebuild the small real slices in tests/data from the full data beside the checkout (``../shared/data``), and the
fp32 IFD of the slice's first 200 rows under the embedded student.

    python tests/data/make_test_data.py [--shared SHARED_DATA] [--fp32-scores]

The files are committed; this script only documents (and can repeat) how they were made."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

HERE = Path(__file__).resolve().parent

HEAD = 224  # rows 0..223: the golden 64, and the index ranges the tests read
# Rows past the head that the tests' filters pick in the full file, in file order, so each filter picks the same
# rows from the slice as from the full file:
EXTRA = sorted(
    {
        *(229, 379, 385, 430, 536, 632, 742, 1047, 1344, 1467, 1539, 1572, 1653, 1833),  # short (test_selection_cli)
        *(234, 255, 357, 380, 430),  # with an input the compressed release rewrote, 40-300 chars (write_variant_files)
        247,  # short response (< 300 chars; test_training_resume)
        *(235, 259, 262, 295),  # the first whose compressed instruction makes a prompt of > 80 tokens (test_scoring)
    }
)
EVAL_ITEMS = 8  # the first items of each test set (vicuna's 8 were already here, for the GPU check)
GPU_CHECK_ROWS = 32  # the GPU check's dry run reads the head of both Alpaca files under the full files' names


FP32_ROWS = 200  # tests/test_scoring.py ranks a bfloat16 run of these rows against these fp32 values


def cut_slices(shared: Path) -> None:
    alpaca = json.loads((shared / "cherry_alpaca_5_percent.json").read_text())
    rows = alpaca[:HEAD] + [alpaca[i] for i in EXTRA]
    (HERE / "alpaca_slice.json").write_text(json.dumps(rows, indent=1, ensure_ascii=False) + "\n")
    outputs = {r["output"] for r in rows}
    compressed = json.loads((shared / "cherry_alpaca_5_percent_compressed.json").read_text())
    matching = [r for r in compressed if r["output"] in outputs]  # in the compressed file's own order
    (HERE / "alpaca_slice_compressed.json").write_text(json.dumps(matching, indent=1, ensure_ascii=False) + "\n")
    gpu_rows = alpaca[:GPU_CHECK_ROWS]
    (HERE / "cherry_alpaca_5_percent.json").write_text(json.dumps(gpu_rows, indent=1, ensure_ascii=False) + "\n")
    gpu_outputs = {r["output"] for r in gpu_rows}
    gpu_compressed = [r for r in compressed if r["output"] in gpu_outputs]
    (HERE / "cherry_alpaca_5_percent_compressed.json").write_text(
        json.dumps(gpu_compressed, indent=1, ensure_ascii=False) + "\n"
    )
    golden = shared / "golden_smollm2_vicuna_64.jsonl"
    (HERE / golden.name).write_bytes(golden.read_bytes())
    (HERE / "eval").mkdir(exist_ok=True)
    for path in sorted((shared / "eval").glob("*_test_set.jsonl")):
        lines = path.read_text().splitlines(keepends=True)[:EVAL_ITEMS]
        (HERE / "eval" / path.name).write_text("".join(lines))
    print(f"{len(rows)} alpaca rows, {len(matching)} compressed rows, golden, {EVAL_ITEMS} items per test set")


def fp32_scores() -> None:
    """IFD and r-IFD of the slice's first FP32_ROWS rows: the package's scorer, float32, CPU, the embedded student,
    vicuna template, default settings (what tests/test_scoring.py computes live for the first 64)."""
    from srt_trainer.models import ensure_embedded_model, load_student, load_tokenizer
    from srt_trainer.scoring import IFDScorer

    rows = json.loads((HERE / "alpaca_slice.json").read_text())[:FP32_ROWS]
    folder = ensure_embedded_model()
    model = load_student(folder, dtype="float32", device="cpu")
    stats = IFDScorer(model, load_tokenizer(folder), "vicuna").score(rows)
    lines = [json.dumps({"index": i, "ifd": s["ifd"], "rifd": s["rifd"]}) + "\n" for i, s in enumerate(stats)]
    (HERE / "fp32_ifd_smollm2_vicuna_200.jsonl").write_text("".join(lines))
    print(f"fp32 IFD of {len(lines)} rows")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shared", type=Path, default=HERE.parents[2] / "shared" / "data", help="the full data")
    parser.add_argument("--fp32-scores", action="store_true", help="only (re)compute the fp32 IFD file")
    args = parser.parse_args()
    if args.fp32_scores:
        fp32_scores()
    else:
        cut_slices(args.shared)


if __name__ == "__main__":
    main()
